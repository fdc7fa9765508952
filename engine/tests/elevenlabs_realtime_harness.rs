//! Virtual-time harness for the speech-to-speech agents (no sockets): a synthetic Twilio
//! session goes into a `Call`, hark's output plays on the virtual phone (which echoes marks as
//! Twilio would), and the provider is a script: it sees every `ProviderCommand` the agent
//! issues and answers with `ProviderEvent`s at chosen virtual times.
//!
//! Included as a module by `elevenlabs.rs` and `realtime.rs` (and built alone as an empty
//! test target).
#![allow(dead_code)]
// Built alone as a test target too, where its helpers count as a crate's public items.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hark_engine::agent::{Agent, PeerId, ProviderCommand, ProviderEvent, ProviderMessage};
use hark_engine::sim::{Phone, Received};
use hark_engine::twilio::{self, Outbound, Start};
use hark_engine::{Call, CallConfig, CloseReason, Event, Input, Output};

pub const STREAM_SID: &str = "MZ00000000000000000000000000000001";
pub const CALL_SID: &str = "CA00000000000000000000000000000001";

pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

pub fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// A Twilio session: `connected` and `start` (with `params`) at `t0`, one 20 ms `media` per
/// 160 bytes of `audio` arriving when recorded (`t0 + 20(k+1)` ms), then `stop`.
pub fn session(t0: Instant, params: &[(&str, &str)], audio: &[u8]) -> Vec<(Instant, String)> {
    let start = Start {
        stream_sid: STREAM_SID.into(),
        call_sid: CALL_SID.into(),
        account_sid: "AC00000000000000000000000000000001".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        encoding: "audio/x-mulaw".into(),
        sample_rate: 8000,
        channels: 1,
    };
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

/// The scripted provider: reacts to commands, and delivers events at their times.
pub trait Script {
    /// The agent issued `cmd` at `now`; push `(when, event)` answers (`when >= now`).
    fn command(
        &mut self,
        now: Instant,
        cmd: &ProviderCommand,
        out: &mut Vec<(Instant, ProviderEvent)>,
    );
}

pub struct Run {
    pub t0: Instant,
    pub events: Vec<(Instant, Event)>,
    /// Every Twilio message hark sent, parsed strictly, with its time.
    pub sent: Vec<(Instant, Outbound)>,
    /// Every provider command, with its time.
    pub commands: Vec<(Instant, ProviderCommand)>,
    pub phone: Phone,
    pub call: Call,
    pub closed: Option<CloseReason>,
}

impl Run {
    pub fn at(&self, t: Instant) -> u64 {
        t.duration_since(self.t0).as_millis() as u64
    }

    /// Texts sent on provider pipes, with their times.
    pub fn texts_sent(&self) -> Vec<(Instant, String)> {
        self.commands
            .iter()
            .filter_map(|(t, c)| match c {
                ProviderCommand::Send {
                    message: ProviderMessage::Text(s),
                    ..
                } => Some((*t, s.clone())),
                _ => None,
            })
            .collect()
    }

    /// Sent texts parsed as JSON.
    pub fn json_sent(&self) -> Vec<(Instant, serde_json::Value)> {
        self.texts_sent()
            .into_iter()
            .map(|(t, s)| {
                (
                    t,
                    serde_json::from_str(&s).expect("provider messages are JSON"),
                )
            })
            .collect()
    }

    /// Outbound μ-law sent to Twilio, in order, with the time of each `media`.
    pub fn media(&self) -> Vec<(Instant, Vec<u8>)> {
        self.sent
            .iter()
            .filter_map(|(t, o)| match o {
                Outbound::Media { mulaw, .. } => Some((*t, mulaw.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn clears(&self) -> Vec<Instant> {
        self.sent
            .iter()
            .filter_map(|(t, o)| matches!(o, Outbound::Clear { .. }).then_some(*t))
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

    pub fn reports(&self) -> Vec<hark_engine::agent::AgentReport> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Agent(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Runs the session `lines` through a call with `agent` and the scripted provider, playing
/// hark's output on a virtual phone, until the call closes or every line and event is done.
/// `timed` events are delivered at their times whatever the agent does.
pub fn run(
    lines: &[(Instant, String)],
    cfg: CallConfig,
    agent: Box<dyn Agent>,
    script: &mut dyn Script,
    timed: Vec<(Instant, ProviderEvent)>,
) -> Run {
    let t0 = lines[0].0;
    let mut call = Call::new(cfg, agent).expect("valid config");
    let mut phone = Phone::new(STREAM_SID, t0);
    let mut run_sent = Vec::new();
    let mut events = Vec::new();
    let mut commands: Vec<(Instant, ProviderCommand)> = Vec::new();
    let mut closed = None;
    let mut pending: Vec<(Instant, u64, ProviderEvent)> = Vec::new();
    let mut order = 0u64;
    for (t, e) in timed {
        order += 1;
        pending.push((t, order, e));
    }
    let mut timeout: Option<Instant> = None;
    let mut idx = 0;
    let mut now = t0;
    let mut seq = 100_000u64;
    let mut guard = 0u64;

    let mut drain = |call: &mut Call,
                     phone: &mut Phone,
                     now: Instant,
                     pending: &mut Vec<(Instant, u64, ProviderEvent)>,
                     order: &mut u64,
                     closed: &mut Option<CloseReason>|
     -> Option<Instant> {
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
                Output::Provider(c) => {
                    let mut answers = Vec::new();
                    script.command(now, &c, &mut answers);
                    for (t, e) in answers {
                        *order += 1;
                        pending.push((t.max(now), *order, e));
                    }
                    commands.push((now, c));
                }
                Output::Close(r) => *closed = Some(r),
                Output::Timeout(t) => return t,
            }
        }
    };

    loop {
        guard += 1;
        assert!(guard < 5_000_000, "harness did not terminate");
        if closed.is_some() {
            break;
        }
        pending.sort_by_key(|(t, o, _)| (*t, *o));
        let ti = lines.get(idx).map(|l| l.0);
        let te = phone.next_echo_at();
        let tp = pending.first().map(|p| p.0);
        let Some(t) = [ti, te, tp, timeout].into_iter().flatten().min() else {
            break;
        };
        now = now.max(t);
        phone.advance(now);
        loop {
            let echoes = phone.take_echoes();
            if echoes.is_empty() {
                break;
            }
            for name in echoes {
                seq += 1;
                let msg = twilio::inbound::mark(seq, STREAM_SID, &name);
                call.handle_input(Input::Twilio {
                    at: now,
                    text: &msg,
                });
                timeout = drain(
                    &mut call,
                    &mut phone,
                    now,
                    &mut pending,
                    &mut order,
                    &mut closed,
                );
            }
        }
        if ti.is_some_and(|ti| ti <= now) {
            call.handle_input(Input::Twilio {
                at: now,
                text: &lines[idx].1,
            });
            idx += 1;
        } else if tp.is_some_and(|tp| tp <= now) {
            let (_, _, ev) = pending.remove(0);
            call.handle_input(Input::Provider { at: now, event: ev });
        } else if timeout.is_some_and(|tt| tt <= now) {
            call.handle_input(Input::Timeout(now));
        } else if te.is_some_and(|te| te <= now) {
            continue;
        }
        timeout = drain(
            &mut call,
            &mut phone,
            now,
            &mut pending,
            &mut order,
            &mut closed,
        );
        if idx >= lines.len() && call.is_stopped() && pending.is_empty() {
            break;
        }
    }
    Run {
        t0,
        events,
        sent: run_sent,
        commands,
        phone,
        call,
        closed,
    }
}

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
