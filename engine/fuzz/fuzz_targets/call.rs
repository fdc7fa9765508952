//! Fuzzes [`Call::handle_input`] with arbitrary input, in virtual time.
//!
//! The input is split into lines; each line is one input to the call. Its first byte picks
//! the kind, so the fuzzer can reach deep states without having to invent valid base64 JSON:
//! - `S`: a valid `start`;
//! - `M`: a valid inbound `media` whose μ-law payload is the rest of the line (time advances by
//!   its duration, 8 bytes per ms);
//! - `K`: the echo of a mark the call sent (the next byte picks which);
//! - `T`: time passes (next byte × 5 ms), then `Input::Timeout`;
//! - `F`: the call's own timeout fires;
//! - `B`: a binary frame; `C`: the socket closes;
//! - anything else: the whole line as a text frame.
//!
//! Properties, beyond "never panics": every drain of `poll_output` ends with `Timeout` (never
//! in the past), and every message sent to Twilio passes [`twilio::parse_outbound`] with the
//! stream's `streamSid`, and nothing is sent after the stream stopped.
#![no_main]

use std::time::{Duration, Instant};

use hark_engine::twilio::{self, Outbound, Start};
use hark_engine::{Call, CallConfig, EchoAgent, Input, Output};
use libfuzzer_sys::fuzz_target;

const SID: &str = "MZfuzz";

fn drain(call: &mut Call, now: Instant, marks: &mut Vec<String>) -> Option<Instant> {
    let sid = call.info().map(|i| i.stream_sid.clone());
    let stopped = call.is_stopped();
    for _ in 0..1_000_000 {
        match call.poll_output() {
            Output::Transmit(text) => {
                assert!(!stopped, "sent after stop: {text}");
                let m = twilio::parse_outbound(text)
                    .unwrap_or_else(|e| panic!("invalid outbound {text}: {e}"));
                let s = match &m {
                    Outbound::Media { stream_sid, .. }
                    | Outbound::Mark { stream_sid, .. }
                    | Outbound::Clear { stream_sid } => stream_sid,
                };
                assert_eq!(Some(s), sid.as_ref(), "{text}");
                if let Outbound::Mark { name, .. } = m {
                    marks.push(name);
                }
            }
            Output::Timeout(t) => {
                if let Some(t) = t {
                    assert!(t >= now, "timeout in the past");
                }
                return t;
            }
            Output::Event(_)
            | Output::Provider(_)
            | Output::Close(_)
            | Output::Transfer { .. }
            | Output::TurnCheck(_) => {}
        }
    }
    panic!("poll_output never returned Timeout");
}

fuzz_target!(|data: &[u8]| {
    let mut call = Call::new(CallConfig::default(), Box::new(EchoAgent::new()))
        .expect("the default config is valid");
    let mut now = Instant::now();
    let mut marks: Vec<String> = Vec::new();
    let mut timeout = None;
    let mut seq = 0u64;
    let mut media = String::new();
    for line in data.split(|&b| b == b'\n') {
        seq += 1;
        let (op, rest) = line.split_first().map_or((0, &[][..]), |(o, r)| (*o, r));
        match op {
            b'S' => {
                let start = Start {
                    stream_sid: SID.into(),
                    call_sid: "CAfuzz".into(),
                    account_sid: "ACfuzz".into(),
                    tracks: vec!["inbound".into()],
                    custom_parameters: Vec::new(),
                    encoding: "audio/x-mulaw".into(),
                    sample_rate: 8000,
                    channels: 1,
                };
                let text = twilio::inbound::start(seq, &start);
                call.handle_input(Input::Twilio {
                    at: now,
                    text: &text,
                });
            }
            b'M' => {
                now += Duration::from_micros(rest.len() as u64 * 125);
                twilio::inbound::media(seq, SID, seq, 0, rest, &mut media);
                call.handle_input(Input::Twilio {
                    at: now,
                    text: &media,
                });
            }
            b'K' => {
                let name = match rest.first() {
                    Some(&i) if !marks.is_empty() => marks[i as usize % marks.len()].clone(),
                    _ => "hark-1".to_string(),
                };
                let text = twilio::inbound::mark(seq, SID, &name);
                call.handle_input(Input::Twilio {
                    at: now,
                    text: &text,
                });
            }
            b'T' => {
                now += Duration::from_millis(rest.first().map_or(20, |&b| b as u64 * 5));
                call.handle_input(Input::Timeout(now));
            }
            b'F' => {
                if let Some(t) = timeout {
                    now = now.max(t);
                    call.handle_input(Input::Timeout(now));
                }
            }
            b'B' => call.handle_input(Input::TwilioBinary {
                at: now,
                len: rest.len(),
            }),
            b'C' => call.handle_input(Input::TwilioClosed { at: now }),
            _ => {
                let text = String::from_utf8_lossy(line);
                call.handle_input(Input::Twilio {
                    at: now,
                    text: &text,
                });
            }
        }
        timeout = drain(&mut call, now, &mut marks);
    }
    let st = call.stats();
    assert_eq!(call.media_ms(), st.frames * 20);
    assert!(st.playout.marks_echoed <= st.playout.marks_sent);
});
