//! Virtual-time harness: replays a recorded Twilio session (`.jsonl`) into a `Call` and plays
//! its output on the virtual phone (`hark_engine::sim::Phone`), with exact timings.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hark_engine::agent::Agent;
use hark_engine::sim::{Phone, Received};
use hark_engine::twilio::{self, Outbound};
use hark_engine::{Call, CallConfig, Event, Input, Output};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(rel)
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

pub struct Run {
    pub t0: Instant,
    pub events: Vec<(Instant, Event)>,
    /// Every message hark sent, parsed strictly, with its send time.
    pub sent: Vec<(Instant, Outbound)>,
    /// Mark names echoed to the call, with the time.
    pub echoed: Vec<(Instant, String)>,
    pub phone: Phone,
    pub call: Call,
    pub closed: bool,
}

impl Run {
    pub fn ms(&self, t: Instant) -> u64 {
        t.duration_since(self.t0).as_millis() as u64
    }
    pub fn turns(&self) -> Vec<(u64, u64)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::UserTurnEnded {
                    start_ms, end_ms, ..
                } => Some((*start_ms, *end_ms)),
                _ => None,
            })
            .collect()
    }
    pub fn barge_ins(&self) -> Vec<hark_engine::BargeIn> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::BargeIn(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }
}

fn drain(
    call: &mut Call,
    phone: &mut Phone,
    now: Instant,
    run_sent: &mut Vec<(Instant, Outbound)>,
    events: &mut Vec<(Instant, Event)>,
    closed: &mut bool,
) -> Option<Instant> {
    loop {
        match call.poll_output() {
            Output::Transmit(text) => {
                let parsed = twilio::parse_outbound(text)
                    .unwrap_or_else(|e| panic!("invalid outbound {text}: {e}"));
                run_sent.push((now, parsed));
                if let Received::Invalid(e) = phone.receive(now, text) {
                    panic!("phone rejected {text}: {e}");
                }
            }
            Output::Event(e) => events.push((now, e)),
            Output::Provider(_) => {}
            Output::Close(_) => *closed = true,
            Output::Timeout(t) => return t,
        }
    }
}

/// Replays `lines` into a call with `agent`, playing hark's output on a virtual phone.
/// `extra` appends silence-free idle time after the last line (for the phone to play out).
pub fn run(lines: &[String], cfg: CallConfig, agent: Box<dyn Agent>, stream_sid: &str) -> Run {
    let t0 = Instant::now();
    let times = arrival_times(lines, t0);
    let mut call = Call::new(cfg, agent).unwrap();
    let mut phone = Phone::new(stream_sid, t0);
    let mut sent = Vec::new();
    let mut events = Vec::new();
    let mut echoed = Vec::new();
    let mut closed = false;
    let mut timeout: Option<Instant> = None;
    let mut idx = 0;
    let mut now = t0;
    let mut seq = 100_000u64;
    let mut guard = 0u64;
    loop {
        guard += 1;
        assert!(guard < 10_000_000, "harness did not terminate");
        let ti = times.get(idx).copied();
        let te = phone.next_echo_at();
        let t = [ti, te, timeout].into_iter().flatten().min();
        let Some(t) = t else { break };
        if idx >= lines.len() && closed {
            break;
        }
        now = now.max(t);
        phone.advance(now);
        // Echoes due now go first.
        loop {
            let echoes = phone.take_echoes();
            if echoes.is_empty() {
                break;
            }
            for name in echoes {
                seq += 1;
                echoed.push((now, name.clone()));
                let msg = twilio::inbound::mark(seq, stream_sid, &name);
                call.handle_input(Input::Twilio {
                    at: now,
                    text: &msg,
                });
                timeout = drain(
                    &mut call,
                    &mut phone,
                    now,
                    &mut sent,
                    &mut events,
                    &mut closed,
                );
            }
        }
        if ti.is_some_and(|ti| ti <= now) {
            call.handle_input(Input::Twilio {
                at: now,
                text: &lines[idx],
            });
            idx += 1;
        } else if timeout.is_some_and(|tt| tt <= now) {
            call.handle_input(Input::Timeout(now));
        } else if te.is_some_and(|te| te <= now) {
            continue;
        } else if ti.is_none() && timeout.is_none() && te.is_none() {
            break;
        }
        timeout = drain(
            &mut call,
            &mut phone,
            now,
            &mut sent,
            &mut events,
            &mut closed,
        );
        if idx >= lines.len() && call.is_stopped() {
            break;
        }
    }
    Run {
        t0,
        events,
        sent,
        echoed,
        phone,
        call,
        closed,
    }
}
