//! The virtual-time test harness ([`TestCall`], in `harness.rs`) and the recorded sessions
//! (`fixtures/sessions/*.jsonl` with their annotations) it replays.
#![allow(dead_code)]

mod harness;

pub use harness::*;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hark_engine::CallConfig;
use hark_engine::agent::{Agent, PeerId, ProviderEvent, ProviderMessage};
use hark_engine::twilio;

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(rel)
}

/// The samples of a committed fixture WAV (`rel` under `fixtures/`): a 44-byte canonical
/// header, then s16le mono 8 kHz (`fixtures/README.md`).
pub fn wav_s16(rel: &str) -> Vec<i16> {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

pub struct Session {
    pub lines: Vec<String>,
    pub ann: serde_json::Value,
    pub stream_sid: String,
}

pub fn load(name: &str) -> Session {
    let text = std::fs::read_to_string(fixture(&format!("sessions/{name}.jsonl"))).unwrap();
    let ann: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("sessions/{name}.json"))).unwrap(),
    )
    .unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let stream_sid = ann["call"]["streamSid"].as_str().unwrap().to_string();
    Session {
        lines,
        ann,
        stream_sid,
    }
}

/// One annotated speech segment: (start_ms, end_ms, barge_in, pauses as (start_ms, end_ms)).
pub type Segment = (u64, u64, bool, Vec<(u64, u64)>);

/// Annotated speech segments.
pub fn segments(s: &Session) -> Vec<Segment> {
    s.ann["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let pauses = g["pauses_ms"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .map(|x| (x[0].as_u64().unwrap(), x[1].as_u64().unwrap()))
                        .collect()
                })
                .unwrap_or_default();
            (
                g["start_ms"].as_u64().unwrap(),
                g["end_ms"].as_u64().unwrap(),
                g["barge_in"].as_bool().unwrap_or(false),
                pauses,
            )
        })
        .collect()
}

/// When each line arrives: a `media` line whose audio starts at `timestamp` arrives when its
/// audio has been recorded (timestamp + its duration); control lines with the neighbouring media.
pub fn arrival_times(lines: &[String], t0: Instant) -> Vec<Instant> {
    let mut media_end = 0u64;
    lines
        .iter()
        .map(|l| {
            if let Ok(p) = twilio::parse(l)
                && let twilio::Inbound::Media(m) = &p.message
            {
                let mut buf = Vec::new();
                let n = twilio::decode_payload(&m.payload, &mut buf).unwrap_or(0) as u64;
                media_end = m.timestamp_ms.unwrap_or(media_end) + n / 8;
            }
            t0 + Duration::from_millis(media_end)
        })
        .collect()
}

/// Replays `lines` (a recorded session, each line arriving as [`arrival_times`] says) into a
/// call with `agent`, playing hark's output on the virtual phone.
pub fn run(lines: &[String], cfg: CallConfig, agent: Box<dyn Agent>, stream_sid: &str) -> TestCall {
    let mut call = TestCall::new(cfg, agent, stream_sid);
    let timed: Vec<(Instant, String)> = arrival_times(lines, call.t0)
        .into_iter()
        .zip(lines.iter().cloned())
        .collect();
    call.replay(&timed);
    call
}

pub const STREAM_SID: &str = "MZ00000000000000000000000000000001";
pub const CALL_SID: &str = "CA00000000000000000000000000000001";

/// A synthetic Twilio session: `connected` and `start` (with `params`) at `t0`, one 20 ms
/// `media` per 160 bytes of `audio` arriving when recorded (`t0 + 20(k+1)` ms), then `stop`.
pub fn session(t0: Instant, params: &[(&str, &str)], audio: &[u8]) -> Vec<(Instant, String)> {
    let start = start(STREAM_SID, CALL_SID, params);
    let mut lines = vec![
        (t0, twilio::inbound::connected()),
        (t0, twilio::inbound::start(1, &start)),
    ];
    let mut seq = 2;
    for (k, chunk) in audio.chunks(160).enumerate() {
        let mut s = String::new();
        twilio::inbound::media(seq, STREAM_SID, k as u64 + 1, 20 * k as u64, chunk, &mut s);
        seq += 1;
        lines.push((t0 + ms(20 * (k as u64 + 1)), s));
    }
    let end = t0 + ms(20 * audio.len().div_ceil(160) as u64);
    lines.push((
        end,
        twilio::inbound::stop(seq, STREAM_SID, &start.account_sid, CALL_SID),
    ));
    lines
}

/// A call whose provider side is a script.
pub type Run = TestCall<Box<dyn Provider>>;

/// Replays the session `lines` through a call with `agent` on [`STREAM_SID`] whose provider
/// side is `script`; `timed` events are delivered at their times whatever the agent does.
pub fn run_scripted(
    lines: &[(Instant, String)],
    cfg: CallConfig,
    agent: Box<dyn Agent>,
    script: impl Provider + 'static,
    timed: Vec<(Instant, ProviderEvent)>,
) -> Run {
    let script: Box<dyn Provider> = Box::new(script);
    let mut call = TestCall::with_provider(cfg, agent, STREAM_SID, lines[0].0, script).timed(timed);
    call.replay(lines);
    call
}

/// The provider's WebSocket on `peer` opened (HTTP 101).
pub fn upgraded(peer: PeerId) -> ProviderEvent {
    ProviderEvent::Opened {
        peer,
        status: Some(101),
    }
}

/// A text message from the provider on `peer`.
pub fn text(peer: PeerId, s: impl Into<String>) -> ProviderEvent {
    ProviderEvent::Message {
        peer,
        message: ProviderMessage::Text(s.into()),
    }
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    B64.decode(s).expect("base64")
}

/// The multi-turn real-speech caller audio (μ-law 8 kHz).
pub fn speech() -> Vec<u8> {
    std::fs::read(fixture("audio/multi-turn-8k.ulaw")).expect("fixture audio")
}
