//! Twilio's asynchronous answering machine detection reaching a live cascade call, in virtual
//! time: `machine_end_*` cuts what the agent is saying, the voicemail message (its
//! `{{placeholders}}` filled) is synthesised and played, then the call hangs up; `human` changes
//! nothing. The provider side is a small OpenAI-compatible fake answering at fixed latencies.

mod common;

use std::collections::VecDeque;
use std::time::Instant;

use common::{Pending, Provider, TestCall, ms, speech};
use hark_engine::agent::{HttpBody, OpenSpec, PeerId, ProviderCommand, ProviderEvent};
use hark_engine::agent::{ProviderMessage, Role};
use hark_engine::agents::cascade::{CascadeAgent, CascadeConfig, Endpoint};
use hark_engine::call::CloseReason;
use hark_engine::{AnsweredBy, CallConfig, Event, Input, MachineEnd, UtteranceId};
use serde_json::{Value, json};

const SID: &str = "MZ00000000000000000000000000000078";
/// Latency of every answer, ms.
const LATENCY: u64 = 100;
const GREETING: &str = "Hello, this is Acme calling about your order.";
const VOICEMAIL: &str = "Hi {{name}}, this is Acme about order {{order}}, please call us back.";
const VOICEMAIL_FILLED: &str = "Hi Ann, this is Acme about order 42, please call us back.";
const FALLBACK: &str = "Sorry, trouble.";
const ANSWER: &str = "Sure, happy to help.";

/// STT, LLM and TTS fakes: the STT answers the queued words, the LLM [`ANSWER`], TTS 400 ms
/// of 24 kHz PCM per sentence. Requests are kept: (when, url, JSON body).
#[derive(Default)]
struct Fake {
    requests: Vec<(Instant, String, Value)>,
    stt: VecDeque<String>,
}

impl Fake {
    fn respond(
        &mut self,
        now: Instant,
        peer: PeerId,
        url: &str,
        body: &HttpBody,
    ) -> Vec<ProviderEvent> {
        let text = |s: String| ProviderEvent::Message {
            peer,
            message: ProviderMessage::Text(s),
        };
        let json = match body {
            HttpBody::Json(v) => v.clone(),
            _ => Value::Null,
        };
        self.requests.push((now, url.to_string(), json));
        let mut ev = vec![ProviderEvent::Opened {
            peer,
            status: Some(200),
        }];
        if url.ends_with("/audio/transcriptions") {
            let words = self.stt.pop_front().unwrap_or_default();
            ev.push(text(json!({ "text": words }).to_string()));
        } else if url.ends_with("/chat/completions") {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                    "model": "m", "choices": [{"index": 0, "delta": delta,
                    "finish_reason": finish}]})
                .to_string()
            };
            ev.push(text(chunk(json!({"role": "assistant"}), Value::Null)));
            ev.push(text(chunk(json!({"content": ANSWER}), Value::Null)));
            ev.push(text(chunk(json!({}), json!("stop"))));
            ev.push(text("[DONE]".into()));
        } else if url.ends_with("/audio/speech") {
            let pcm: Vec<u8> = (0..9_600)
                .map(|i| ((i as f64 / 24.0).sin() * 6_000.0) as i16)
                .flat_map(i16::to_le_bytes)
                .collect();
            ev.push(ProviderEvent::Message {
                peer,
                message: ProviderMessage::Binary(pcm),
            });
        } else {
            panic!("unexpected request to {url}");
        }
        ev.push(ProviderEvent::Closed { peer });
        ev
    }
}

impl Provider for Fake {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        match cmd {
            ProviderCommand::Open { peer, spec } => {
                let OpenSpec::Http(req) = spec else {
                    panic!("cascade opens only HTTP pipes")
                };
                for e in self.respond(now, *peer, &req.url, &req.body) {
                    out.push((now + ms(LATENCY), e));
                }
            }
            ProviderCommand::Close { peer } => out.cancel(*peer),
            other => panic!("unexpected {other:?}"),
        }
    }
}

type Run = TestCall<Fake>;

fn config(voicemail: Option<&str>) -> CascadeConfig {
    let ep = |m: &str| Endpoint::new("http://openai.test", Some("sk-test".into()), m);
    let mut c = CascadeConfig::default();
    c.stt.endpoint = ep("whisper-1");
    c.stt.stream = false;
    c.llm.endpoint = ep("gpt-4o-mini");
    c.tts.endpoint = ep("gpt-4o-mini-tts");
    c.greeting = Some(GREETING.into());
    c.filler_text = None;
    c.fallback_text = FALLBACK.into();
    c.voicemail_text = voicemail.map(str::to_owned);
    c
}

/// A started call with the cascade agent on `cfg` (stream parameters `name=Ann`, `order=42`).
fn call(cfg: CascadeConfig, stt: &[&str]) -> Run {
    let fake = Fake {
        stt: stt.iter().map(|s| s.to_string()).collect(),
        ..Fake::default()
    };
    let agent = CascadeAgent::new(cfg).unwrap();
    let t0 = Instant::now();
    let mut r = TestCall::with_provider(CallConfig::default(), Box::new(agent), SID, t0, fake);
    r.start_stream(&[("name", "Ann"), ("order", "42")]);
    r
}

fn answered_by(r: &mut Run, by: AnsweredBy) -> Vec<Event> {
    let at = r.now;
    r.input(Input::AnsweredBy {
        at,
        answered_by: by,
    })
}

/// TTS requests but the fallback phrase's: (ms since the call began, text).
fn tts(r: &Run) -> Vec<(u64, String)> {
    r.provider
        .requests
        .iter()
        .filter(|(_, url, _)| url.ends_with("/audio/speech"))
        .map(|(t, _, b)| (r.at(*t), b["input"].as_str().unwrap_or("").to_string()))
        .filter(|(_, text)| text != FALLBACK)
        .collect()
}

fn llm_requests(r: &Run) -> usize {
    r.provider
        .requests
        .iter()
        .filter(|(_, url, _)| url.ends_with("/chat/completions"))
        .count()
}

/// Utterances played to the end, with the time the agent was told.
fn played(r: &Run) -> Vec<(Instant, UtteranceId)> {
    r.pick(|t, e| match e {
        Event::UtterancePlayed { id, .. } => Some((t, *id)),
        _ => None,
    })
}

/// The agent's transcripts: (text, interrupted).
fn agent_lines(r: &Run) -> Vec<(String, bool)> {
    r.pick(|_, e| match e {
        Event::Agent {
            report:
                hark_engine::agent::AgentReport::Transcript {
                    role: Role::Agent,
                    text,
                    interrupted,
                },
            ..
        } => Some((text.clone(), *interrupted)),
        _ => None,
    })
}

#[test]
fn a_machine_end_cuts_the_greeting_leaves_the_message_then_hangs_up() {
    let mut r = call(config(Some(VOICEMAIL)), &[]);
    let t0 = r.t0;
    // The greeting's audio (400 ms) arrives at 100 ms; the beep is heard at 250 ms.
    r.advance_to(t0 + ms(250));
    assert_eq!(tts(&r), [(0, GREETING.to_string())]);
    let ev = answered_by(&mut r, AnsweredBy::MachineEnd(MachineEnd::Beep));
    assert!(ev.contains(&Event::AnsweredBy {
        answered_by: AnsweredBy::MachineEnd(MachineEnd::Beep),
        at: t0 + ms(250),
    }));
    // The greeting is cut at once, not as a caller's barge-in.
    assert_eq!(r.clears(), [t0 + ms(250)]);
    assert!(r.barge_ins().is_empty());
    assert_eq!(r.call.stats().barge_ins, 0);
    // The message, its placeholders filled, goes to TTS at once.
    assert_eq!(
        tts(&r),
        [
            (0, GREETING.to_string()),
            (250, VOICEMAIL_FILLED.to_string())
        ]
    );
    r.advance_to(t0 + ms(5_000));
    // It played whole, then the call hung up; the greeting never played to its end.
    let played = played(&r);
    assert_eq!(
        played.len(),
        1,
        "only the message played to its end: {played:?}"
    );
    assert_ne!(played[0].1, UtteranceId(1), "the greeting was cut");
    assert!(played[0].0 >= t0 + ms(250 + LATENCY + 400));
    assert_eq!(r.closes, [CloseReason::Hangup("voicemail".into())]);
    let lines = agent_lines(&r);
    assert!(
        lines.contains(&(VOICEMAIL_FILLED.to_string(), false)),
        "{lines:?}"
    );
    // Nothing after the message: no model, no other speech.
    assert_eq!(llm_requests(&r), 0);
    assert_eq!(tts(&r).len(), 2);
}

#[test]
fn while_the_message_plays_the_agent_does_not_listen() {
    // Three sentences: 1.2 s of audio.
    let message = "Hi {{name}}. This is Acme. Please call us back.";
    let mut r = call(
        config(Some(message)),
        &["Leave your message after the tone."],
    );
    let t0 = r.t0;
    // The machine's greeting speaks over the agent's; the beep comes as it ends, before hark's
    // endpointing has ended that turn.
    r.advance_to(t0 + ms(600));
    let audio = speech();
    r.feed_audio(&audio[..5_000 * 8], 160);
    assert!(
        r.call.user_turn_open_since_ms().is_some(),
        "the turn is open"
    );
    answered_by(&mut r, AnsweredBy::MachineEnd(MachineEnd::Silence));
    // Silence on the line while the message plays.
    r.feed_audio(&[0xFF; 3_000 * 8], 160);
    r.advance_to(r.now + ms(10_000));
    // The turn ended while the message played, and was not answered.
    assert_eq!(r.turns().len(), 1);
    assert_eq!(llm_requests(&r), 0, "no turn answered on a machine");
    assert!(tts(&r).iter().any(|(_, t)| t == "Hi Ann."));
    // The open speech did not barge in on the message: it played whole, then the hang-up.
    assert!(
        r.barge_ins()
            .iter()
            .all(|b| b.interrupted.id == UtteranceId(1))
    );
    assert!(
        played(&r).iter().any(|p| p.1 != UtteranceId(1)),
        "the message played"
    );
    assert_eq!(r.closes, [CloseReason::Hangup("voicemail".into())]);
}

#[test]
fn without_a_message_a_machine_is_hung_up_on_at_once() {
    let mut r = call(config(None), &[]);
    let t0 = r.t0;
    r.advance_to(t0 + ms(250));
    answered_by(&mut r, AnsweredBy::MachineEnd(MachineEnd::Other));
    assert_eq!(r.clears(), [t0 + ms(250)]);
    assert_eq!(r.closes, [CloseReason::Hangup("machine".into())]);
    assert_eq!(tts(&r).len(), 1, "only the greeting was asked for");
}

#[test]
fn a_fax_is_hung_up_on() {
    let mut r = call(config(Some(VOICEMAIL)), &[]);
    r.advance_to(r.t0 + ms(1_000));
    answered_by(&mut r, AnsweredBy::Fax);
    assert_eq!(r.closes, [CloseReason::Hangup("fax".into())]);
    assert_eq!(tts(&r).len(), 1);
}

#[test]
fn a_human_or_a_machine_start_changes_nothing() {
    for by in [
        AnsweredBy::Human,
        AnsweredBy::MachineStart,
        AnsweredBy::Unknown,
    ] {
        let mut r = call(config(Some(VOICEMAIL)), &["I have a question."]);
        let t0 = r.t0;
        r.advance_to(t0 + ms(250));
        let ev = answered_by(&mut r, by);
        assert!(matches!(ev[..], [Event::AnsweredBy { answered_by, .. }] if answered_by == by));
        r.advance_to(t0 + ms(1_000));
        // The greeting played whole.
        assert_eq!(played(&r).first().map(|p| p.1), Some(UtteranceId(1)));
        assert!(r.clears().is_empty());
        // The conversation goes on: the caller's turn is answered.
        let audio = speech();
        r.feed_audio(&audio[..6_000 * 8], 160);
        r.advance_to(r.now + ms(5_000));
        assert_eq!(llm_requests(&r), 1, "{by:?}: the caller was answered");
        assert!(tts(&r).iter().any(|(_, t)| t == ANSWER));
        assert!(r.closes.is_empty(), "{by:?}: {:?}", r.closes);
    }
}

#[test]
fn a_verdict_before_start_is_ignored() {
    let agent = CascadeAgent::new(config(Some(VOICEMAIL))).unwrap();
    let mut r = TestCall::with_provider(
        CallConfig::default(),
        Box::new(agent),
        SID,
        Instant::now(),
        Fake::default(),
    );
    let ev = answered_by(&mut r, AnsweredBy::MachineEnd(MachineEnd::Beep));
    assert!(ev.is_empty());
    r.start_stream(&[]);
    r.advance_to(r.t0 + ms(2_000));
    assert!(r.closes.is_empty());
    assert_eq!(played(&r).len(), 1, "the greeting played");
}
