//! The cascade agent's idle caller and keys, in virtual time: the re-prompt after
//! `idle_reprompt_ms` of caller silence (a set text, or a turn in which the model is told), the
//! goodbye and hang-up after `idle_hangup_ms`, caller speech and keys starting the count over,
//! and DTMF digits coalesced into one user message for the model. The provider side is a small
//! OpenAI-compatible fake answering at fixed latencies, so every time is exact.

mod common;

use std::collections::VecDeque;
use std::time::Instant;

use common::{Pending, Provider, TestCall, ms, speech};
use hark_engine::agent::{
    AgentReport, HttpBody, OpenSpec, PeerId, ProviderCommand, ProviderEvent, ProviderMessage, Role,
};
use hark_engine::agents::cascade::{CascadeAgent, CascadeConfig, Endpoint};
use hark_engine::call::CloseReason;
use hark_engine::twilio;
use hark_engine::{CallConfig, Event, UtteranceId};
use serde_json::{Value, json};

const SID: &str = "MZ00000000000000000000000000000077";
/// Latency of every answer, ms.
const LATENCY: u64 = 100;
const REPROMPT: &str = "Are you still there?";
const GOODBYE: &str = "Goodbye for now.";
const ANSWER: &str = "Sure, happy to help.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stt,
    Llm,
    Tts,
}

/// A request the fake got: when, what, and its JSON body (`null` for STT).
struct Req {
    at: Instant,
    kind: Kind,
    body: Value,
}

/// STT, LLM and TTS answering the OpenAI-compatible wire formats after [`LATENCY`]: the STT
/// with `{"text": …}`, the LLM with one content chunk of [`ANSWER`] then `stop` and `[DONE]`,
/// TTS with 400 ms of 24 kHz PCM.
#[derive(Default)]
struct Fake {
    requests: Vec<Req>,
    stt: VecDeque<String>,
}

impl Fake {
    fn answer(peer: PeerId, kind: Kind) -> Vec<ProviderEvent> {
        let text = |s: String| ProviderEvent::Message {
            peer,
            message: ProviderMessage::Text(s),
        };
        let mut ev = vec![ProviderEvent::Opened {
            peer,
            status: Some(200),
        }];
        match kind {
            Kind::Stt => unreachable!("answered in `respond`"),
            Kind::Llm => {
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
            }
            Kind::Tts => {
                let pcm: Vec<u8> = (0..9_600)
                    .map(|i| ((i as f64 / 24.0).sin() * 6_000.0) as i16)
                    .flat_map(i16::to_le_bytes)
                    .collect();
                ev.push(ProviderEvent::Message {
                    peer,
                    message: ProviderMessage::Binary(pcm),
                });
            }
        }
        ev.push(ProviderEvent::Closed { peer });
        ev
    }

    fn respond(
        &mut self,
        now: Instant,
        peer: PeerId,
        url: &str,
        body: &HttpBody,
    ) -> Vec<ProviderEvent> {
        let (kind, body) = match body {
            HttpBody::Json(v) if url.ends_with("/chat/completions") => (Kind::Llm, v.clone()),
            HttpBody::Json(v) if url.ends_with("/audio/speech") => (Kind::Tts, v.clone()),
            HttpBody::Multipart(_) if url.ends_with("/audio/transcriptions") => {
                (Kind::Stt, Value::Null)
            }
            other => panic!("unexpected request to {url}: {other:?}"),
        };
        self.requests.push(Req {
            at: now,
            kind,
            body,
        });
        if kind == Kind::Stt {
            let words = self.stt.pop_front().unwrap_or_default();
            return vec![
                ProviderEvent::Opened {
                    peer,
                    status: Some(200),
                },
                ProviderEvent::Message {
                    peer,
                    message: ProviderMessage::Text(json!({ "text": words }).to_string()),
                },
                ProviderEvent::Closed { peer },
            ];
        }
        Fake::answer(peer, kind)
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

fn config() -> CascadeConfig {
    let ep = |m: &str| Endpoint::new("http://openai.test", Some("sk-test".into()), m);
    let mut c = CascadeConfig::default();
    c.stt.endpoint = ep("whisper-1");
    c.stt.stream = false;
    c.llm.endpoint = ep("gpt-4o-mini");
    c.tts.endpoint = ep("gpt-4o-mini-tts");
    c.greeting = Some("Hello!".into());
    c.filler_text = None;
    c.idle_reprompt_ms = Some(8_000);
    c.idle_reprompt_text = Some(REPROMPT.into());
    c.idle_hangup_ms = Some(20_000);
    c.idle_goodbye_text = Some(GOODBYE.into());
    c
}

/// A call with the cascade agent on `cfg`, started; time runs until the greeting has played.
/// Returns the call and the time the agent was told the greeting played.
fn call(cfg: CascadeConfig, stt: &[&str]) -> (Run, Instant) {
    let fake = Fake {
        stt: stt.iter().map(|s| s.to_string()).collect(),
        ..Fake::default()
    };
    let agent = CascadeAgent::new(cfg).unwrap();
    let t0 = Instant::now();
    let mut r = TestCall::with_provider(CallConfig::default(), Box::new(agent), SID, t0, fake);
    r.start_stream(&[]);
    while played(&r).is_empty() {
        assert!(r.now < t0 + ms(3_000), "the greeting did not play");
        let next = r.next_wake().expect("something to wait for");
        r.advance_to(next);
    }
    let greeting = played(&r)[0];
    assert_eq!(
        greeting.1,
        UtteranceId(1),
        "the greeting is the first utterance"
    );
    (r, greeting.0)
}

/// Utterances played to the end, with the time the agent was told.
fn played(r: &Run) -> Vec<(Instant, UtteranceId)> {
    r.pick(|t, e| match e {
        Event::UtterancePlayed { id, .. } => Some((t, *id)),
        _ => None,
    })
}

/// TTS requests of `text`, ms after `from`.
fn tts_of(r: &Run, text: &str, from: Instant) -> Vec<u64> {
    r.provider
        .requests
        .iter()
        .filter(|q| q.kind == Kind::Tts && q.body["input"] == text)
        .map(|q| q.at.saturating_duration_since(from).as_millis() as u64)
        .collect()
}

fn llm(r: &Run) -> Vec<&Req> {
    r.provider
        .requests
        .iter()
        .filter(|q| q.kind == Kind::Llm)
        .collect()
}

/// The last message of a chat request.
fn last_message(q: &Req) -> Value {
    q.body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

/// When the utterances saying `text` played to the end (the agent's transcripts), in order.
fn played_all(r: &Run, text: &str) -> Vec<Instant> {
    r.pick(|t, e| match e {
        Event::Agent {
            report:
                AgentReport::Transcript {
                    role: Role::Agent,
                    text: said,
                    interrupted: false,
                },
            ..
        } if said == text => Some(t),
        _ => None,
    })
}

/// When the first utterance saying `text` played to the end.
fn played_at(r: &Run, text: &str) -> Instant {
    *played_all(r, text)
        .first()
        .unwrap_or_else(|| panic!("{text:?} never played"))
}

fn dtmf(r: &mut Run, digit: &str) {
    r.seq += 1;
    let msg = twilio::inbound::dtmf(r.seq, SID, digit);
    r.text(&msg);
}

#[test]
fn silence_after_the_greeting_reprompts_then_says_goodbye_and_hangs_up() {
    let (mut r, greeted) = call(config(), &[]);
    r.advance_to(greeted + ms(40_000));
    // Exactly at the configured times, counted from the greeting's end.
    assert_eq!(tts_of(&r, REPROMPT, greeted), [8_000]);
    assert_eq!(tts_of(&r, GOODBYE, greeted), [20_000]);
    assert!(llm(&r).is_empty(), "a set re-prompt text needs no model");
    // The goodbye was heard whole before the call ended.
    let bye = played_at(&r, GOODBYE);
    assert!(bye > greeted + ms(20_000));
    assert_eq!(r.closes, [CloseReason::Hangup("idle".into())]);
    // The re-prompt played too, once.
    assert!(played_at(&r, REPROMPT) < bye);
    assert_eq!(played(&r).len(), 3, "greeting, re-prompt, goodbye");
}

#[test]
fn caller_speech_starts_the_count_over() {
    let (mut r, greeted) = call(config(), &["I have a question."]);
    // The caller speaks from 5 s after the greeting (1 s of silence, then 4 s of speech):
    // over the time the re-prompt would have come.
    r.advance_to(greeted + ms(5_000));
    let audio = speech();
    r.feed_audio(&audio[..6_000 * 8], 160);
    r.advance_to(greeted + ms(60_000));
    assert_eq!(r.turns().len(), 1, "one caller turn");
    let answered = played_at(&r, ANSWER);
    assert!(answered > greeted + ms(8_000));
    // Counted from the answer's end, not the greeting's.
    assert_eq!(tts_of(&r, REPROMPT, answered), [8_000]);
    assert_eq!(tts_of(&r, GOODBYE, answered), [20_000]);
    assert_eq!(r.closes, [CloseReason::Hangup("idle".into())]);
}

#[test]
fn without_a_reprompt_text_the_model_is_told_the_caller_is_silent() {
    let mut cfg = config();
    cfg.idle_reprompt_text = None;
    cfg.idle_goodbye_text = None;
    let (mut r, greeted) = call(cfg, &[]);
    r.advance_to(greeted + ms(40_000));
    let reqs = llm(&r);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].at, greeted + ms(8_000));
    let last = last_message(reqs[0]);
    assert_eq!(last["role"], "user");
    assert_eq!(
        last["content"],
        "(The caller has been silent for 8 seconds.)"
    );
    // The model's words are the re-prompt; the hang-up still counts from the greeting's end,
    // with the general goodbye.
    assert_eq!(tts_of(&r, ANSWER, greeted), [8_000 + LATENCY]);
    assert_eq!(tts_of(&r, "Goodbye!", greeted), [20_000]);
    assert_eq!(r.closes, [CloseReason::Hangup("idle".into())]);
}

#[test]
fn keys_pressed_together_are_one_message_for_the_model_and_reset_the_silence() {
    let (mut r, greeted) = call(config(), &[]);
    r.advance_to(greeted + ms(1_000));
    dtmf(&mut r, "1");
    r.advance_to(greeted + ms(1_900));
    dtmf(&mut r, "2");
    r.advance_to(greeted + ms(20_000));
    let reqs = llm(&r);
    assert_eq!(reqs.len(), 1, "one turn for both keys");
    // 1.5 s after the last key.
    assert_eq!(reqs[0].at, greeted + ms(3_400));
    let last = last_message(reqs[0]);
    assert_eq!(last["role"], "user");
    assert_eq!(last["content"], "(The caller pressed 12 on the keypad.)");
    // The silence counts from the answer to the keys.
    let answered = played_at(&r, ANSWER);
    assert_eq!(tts_of(&r, REPROMPT, answered), [8_000]);
    assert!(r.closes.is_empty());
    // `#` sends at once.
    let at = r.now;
    dtmf(&mut r, "3");
    dtmf(&mut r, "#");
    let reqs = llm(&r);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].at, at);
    assert_eq!(
        last_message(reqs[1])["content"],
        "(The caller pressed 3# on the keypad.)"
    );
    // The history keeps the first keys and the answer.
    let m = reqs[1].body["messages"].as_array().unwrap();
    assert!(
        m.iter()
            .any(|x| x["content"] == "(The caller pressed 12 on the keypad.)")
    );
    // The keys started the silence over: the re-prompt and the hang-up count from the
    // second answer's end.
    r.advance_to(at + ms(40_000));
    let second = played_all(&r, ANSWER)[1];
    assert_eq!(
        tts_of(&r, REPROMPT, second),
        [0, 8_000],
        "the first one was before"
    );
    assert_eq!(tts_of(&r, GOODBYE, second), [20_000]);
    assert_eq!(r.closes, [CloseReason::Hangup("idle".into())]);
}

#[test]
fn idle_handling_is_off_unless_configured() {
    let mut cfg = config();
    cfg.idle_reprompt_ms = None;
    cfg.idle_hangup_ms = None;
    let (mut r, greeted) = call(cfg, &[]);
    r.advance_to(greeted + ms(120_000));
    assert!(tts_of(&r, REPROMPT, greeted).is_empty());
    assert!(tts_of(&r, GOODBYE, greeted).is_empty());
    assert!(r.closes.is_empty());
    assert!(CascadeConfig::default().idle_reprompt_ms.is_none());
}
