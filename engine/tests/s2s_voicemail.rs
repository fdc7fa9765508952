//! Answering machines for the speech-to-speech agents, in virtual time with scripted provider
//! sockets (no network): on `machine_end_*` the answer under way is cut at once (`clear`), the
//! provider is asked for the voicemail message (placeholders filled), no caller audio reaches
//! it any more, and the call hangs up with reason `voicemail` once the message has played;
//! without a message it hangs up at once (`machine`), on a fax `fax`; `human` changes nothing.
//! (The cascade's own policy is in `voicemail.rs`.)

mod common;

use std::time::Instant;

use common::*;
use hark_engine::Agent;
use hark_engine::agent::{ProviderCommand, ProviderEvent, ProviderMessage};
use hark_engine::agents::elevenlabs::{self, ElevenLabsAgent, ElevenLabsConfig};
use hark_engine::agents::realtime::{PEER, RealtimeAgent, RealtimeConfig};
use hark_engine::{AnsweredBy, CallConfig, CloseReason, Input, MachineEnd};
use serde_json::{Value, json};

const VOICEMAIL: &str = "Hi {{name}}, this is Acme about order {{order}}. Please call us back.";
const VOICEMAIL_FILLED: &str = "Hi Ann, this is Acme about order 42. Please call us back.";
/// μ-law bytes of the greeting the model starts with (3 s) and of the message (1.5 s).
const GREETING_BYTES: usize = 3_000 * 8;
const MESSAGE_BYTES: usize = 1_500 * 8;

fn ev(v: Value) -> ProviderEvent {
    text(PEER, v.to_string())
}

/// A Realtime socket: opens after 40 ms, answers `session.update`; each `response.create`
/// gets a response (`resp_<n>`) whose audio streams in 100 ms deltas, 20 ms apart, then its
/// `output_audio.done`, transcript and `response.done`; a `response.cancel` ends the active
/// one with `status: cancelled` (no more deltas).
#[derive(Default)]
struct Rt {
    responses: u32,
}

impl Rt {
    fn respond(&mut self, now: Instant, bytes: usize, words: &str, out: &mut Pending) {
        self.responses += 1;
        let (resp, item) = (
            format!("resp_{}", self.responses),
            format!("item_{}", self.responses),
        );
        let at = |k: usize| now + ms(10 + 20 * k as u64);
        out.push((at(0), ev(json!({"type": "response.created", "event_id": "e",
            "response": {"object": "realtime.response", "id": resp, "status": "in_progress", "output": []}}))));
        let audio = vec![0x55u8; bytes];
        let chunks: Vec<&[u8]> = audio.chunks(800).collect();
        for (k, c) in chunks.iter().enumerate() {
            out.push((
                at(k + 1),
                ev(
                    json!({"type": "response.output_audio.delta", "event_id": "e",
                "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0,
                "delta": b64(c)}),
                ),
            ));
        }
        let end = at(chunks.len() + 1);
        out.push((
            end,
            ev(
                json!({"type": "response.output_audio.done", "event_id": "e",
            "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0}),
            ),
        ));
        out.push((
            end,
            ev(
                json!({"type": "response.output_audio_transcript.done", "event_id": "e",
            "response_id": resp, "item_id": item, "output_index": 0, "content_index": 0,
            "transcript": words}),
            ),
        ));
        out.push((
            end,
            ev(json!({"type": "response.done", "event_id": "e",
            "response": {"object": "realtime.response", "id": resp, "status": "completed",
            "output": []}})),
        ));
    }
}

impl Provider for Rt {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        let text_sent = match cmd {
            ProviderCommand::Open { peer, .. } => {
                return out.push((now + ms(40), upgraded(*peer)));
            }
            ProviderCommand::Send {
                message: ProviderMessage::Text(t),
                ..
            } => t,
            _ => return,
        };
        let v: Value = serde_json::from_str(text_sent).unwrap();
        match v["type"].as_str().unwrap() {
            "session.update" => {
                let session = v["session"].clone();
                out.push((
                    now + ms(20),
                    ev(json!({"type": "session.updated", "event_id": "e", "session": session})),
                ));
            }
            "response.create" => {
                let instructions = v["response"]["instructions"].as_str().unwrap_or("");
                if instructions.contains("voicemail") {
                    self.respond(now, MESSAGE_BYTES, VOICEMAIL_FILLED, out);
                } else {
                    self.respond(now, GREETING_BYTES, "Hello, this is Acme calling.", out);
                }
            }
            "response.cancel" => {
                // The cancelled response stops at once: its pending events are dropped (the
                // harness cannot pick them, so only the last response is ever cancelled here
                // and the test checks no audio of it plays after the clear).
                let resp = format!("resp_{}", self.responses);
                out.push((
                    now + ms(5),
                    ev(json!({"type": "response.done", "event_id": "e",
                    "response": {"object": "realtime.response", "id": resp, "status": "cancelled",
                    "output": []}})),
                ));
            }
            _ => {}
        }
    }
}

fn realtime(voicemail: Option<&str>) -> Box<RealtimeAgent> {
    Box::new(RealtimeAgent::new(RealtimeConfig {
        url: "ws://127.0.0.1:1/v1/realtime".into(),
        api_key: "sk-test".into(),
        greeting: Some("Greet the caller.".into()),
        voicemail_text: voicemail.map(str::to_owned),
        ..RealtimeConfig::default()
    }))
}

/// A started call (parameters `name=Ann`, `order=42`) with `agent` and its provider `script`,
/// the greeting playing; the verdict `by` arrives at 1 s while caller audio (the machine's
/// line) keeps coming until 4 s.
fn machine_call(agent: Box<dyn Agent>, script: Box<dyn Provider>, by: AnsweredBy) -> Run {
    let t0 = Instant::now();
    let mut r = TestCall::with_provider(CallConfig::default(), agent, STREAM_SID, t0, script);
    r.start_stream(&[("name", "Ann"), ("order", "42")]);
    r.feed_audio(&[0xFF; 8 * 1_000], 160);
    let at = r.now;
    r.input(Input::AnsweredBy {
        at,
        answered_by: by,
    });
    r.feed_audio(&[0xFF; 8 * 3_000], 160);
    r.advance_to(t0 + ms(10_000));
    r
}

fn realtime_call(voicemail: Option<&str>, by: AnsweredBy) -> Run {
    machine_call(realtime(voicemail), Box::new(Rt::default()), by)
}

fn sent_of(run: &Run, kind: &str) -> Vec<(u64, Value)> {
    run.json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == kind)
        .map(|(t, v)| (run.at(t), v))
        .collect()
}

fn media_ms(run: &Run, from: u64, to: u64) -> u64 {
    let bytes: usize = run
        .media()
        .into_iter()
        .filter(|(t, _)| (from..to).contains(&run.at(*t)))
        .map(|(_, b)| b.len())
        .sum();
    bytes as u64 / 8
}

#[test]
fn realtime_machine_end_cuts_the_greeting_leaves_the_message_then_hangs_up() {
    let r = realtime_call(Some(VOICEMAIL), AnsweredBy::MachineEnd(MachineEnd::Beep));
    // The greeting (generated whole by 0.7 s, faster than it plays) is cut at the verdict
    // (1 s): cleared, and truncated in the model's history at what was heard.
    assert_eq!(
        r.clears().iter().map(|t| r.at(*t)).collect::<Vec<_>>(),
        [1_000]
    );
    let truncates = sent_of(&r, "conversation.item.truncate");
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    assert_eq!(truncates[0].1["item_id"], "item_1");
    let heard = truncates[0].1["audio_end_ms"].as_u64().unwrap();
    assert!((500..1_000).contains(&heard), "{heard}");
    // The model is asked for the message, placeholders filled.
    let creates = sent_of(&r, "response.create");
    assert_eq!(creates.len(), 2, "greeting and message: {creates:?}");
    assert_eq!(creates[1].0, 1_000);
    let instructions = creates[1].1["response"]["instructions"].as_str().unwrap();
    assert!(instructions.contains(VOICEMAIL_FILLED), "{instructions}");
    // Deaf from the verdict on: no caller audio reaches the model any more.
    let appends = sent_of(&r, "input_audio_buffer.append");
    assert!(!appends.is_empty());
    assert!(
        appends.iter().all(|(t, _)| *t <= 1_000),
        "{:?}",
        appends.last()
    );
    // The message played whole, then the call hung up.
    assert_eq!(r.closes, [CloseReason::Hangup("voicemail".into())]);
    assert_eq!(
        media_ms(&r, 1_001, 10_000),
        1_500,
        "the whole message, nothing else"
    );
    assert!(
        r.barge_ins().is_empty(),
        "the machine's line never barged in"
    );
}

#[test]
fn realtime_without_a_message_or_on_a_fax_hangs_up_at_once() {
    for (message, by, reason) in [
        (None, AnsweredBy::MachineEnd(MachineEnd::Silence), "machine"),
        (
            Some("{{unknown}}"),
            AnsweredBy::MachineEnd(MachineEnd::Other),
            "machine",
        ),
        (Some(VOICEMAIL), AnsweredBy::Fax, "fax"),
    ] {
        let r = realtime_call(message, by);
        assert_eq!(r.closes, [CloseReason::Hangup(reason.into())], "{by:?}");
        assert_eq!(
            r.clears().iter().map(|t| r.at(*t)).collect::<Vec<_>>(),
            [1_000]
        );
        assert_eq!(
            sent_of(&r, "response.create").len(),
            1,
            "no message asked for"
        );
        assert!(
            media_ms(&r, 1_001, 10_000) == 0,
            "nothing plays after the verdict"
        );
    }
}

#[test]
fn realtime_human_or_machine_start_changes_nothing() {
    for by in [
        AnsweredBy::Human,
        AnsweredBy::MachineStart,
        AnsweredBy::Unknown,
    ] {
        let r = realtime_call(Some(VOICEMAIL), by);
        assert!(r.closes.is_empty(), "{by:?}: {:?}", r.closes);
        assert!(r.clears().is_empty());
        assert_eq!(sent_of(&r, "response.create").len(), 1);
        assert!(sent_of(&r, "response.cancel").is_empty());
        // The caller's audio still goes to the model after the verdict; the greeting plays.
        assert!(
            sent_of(&r, "input_audio_buffer.append")
                .iter()
                .any(|(t, _)| *t > 3_000)
        );
        assert_eq!(media_ms(&r, 0, 10_000), 3_000);
    }
}

/// An ElevenLabs socket per pipe: opens after 40 ms, answers the initiation with μ-law
/// metadata after 30 ms, then speaks its `first_message` as `audio` events (100 ms each, 20 ms
/// apart): the voicemail message (1.5 s) if that is the first message, else a greeting
/// (3 s). A closed pipe's pending events are dropped.
struct El;

impl Provider for El {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        let (peer, t) = match cmd {
            ProviderCommand::Open { peer, .. } => {
                return out.push((now + ms(40), upgraded(*peer)));
            }
            ProviderCommand::Close { peer } => return out.cancel(*peer),
            ProviderCommand::Send {
                peer,
                message: ProviderMessage::Text(t),
            } if t.contains("conversation_initiation_client_data") => (*peer, t),
            _ => return,
        };
        let v: Value = serde_json::from_str(t).unwrap();
        let first = v["conversation_config_override"]["agent"]["first_message"]
            .as_str()
            .unwrap_or("");
        let bytes = if first == VOICEMAIL_FILLED {
            MESSAGE_BYTES
        } else {
            GREETING_BYTES
        };
        let meta = json!({"type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {"conversation_id": "conv_1",
            "agent_output_audio_format": "ulaw_8000", "user_input_audio_format": "ulaw_8000"}});
        out.push((now + ms(30), text(peer, meta.to_string())));
        for (k, c) in vec![0x55u8; bytes].chunks(800).enumerate() {
            let a = json!({"type": "audio", "audio_event": {"audio_base_64": b64(c), "event_id": k + 1}});
            out.push((now + ms(50 + 20 * k as u64), text(peer, a.to_string())));
        }
    }
}

fn elevenlabs_call(voicemail: Option<&str>, by: AnsweredBy) -> Run {
    let agent = Box::new(ElevenLabsAgent::new(ElevenLabsConfig {
        url: Some("wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a".into()),
        overrides: elevenlabs::Overrides {
            first_message: Some("Hello, this is Acme calling.".into()),
            ..elevenlabs::Overrides::default()
        },
        voicemail_text: voicemail.map(str::to_owned),
        ..ElevenLabsConfig::default()
    }));
    machine_call(agent, Box::new(El), by)
}

/// Caller audio chunks sent, with their times (ms).
fn user_chunks(r: &Run) -> Vec<u64> {
    r.json_sent()
        .into_iter()
        .filter(|(_, v)| v.get("user_audio_chunk").is_some())
        .map(|(t, _)| r.at(t))
        .collect()
}

/// Pipes opened and closed: (ms, "open"/"close", peer).
fn pipes(r: &Run) -> Vec<(u64, &'static str, u64)> {
    r.commands
        .iter()
        .filter_map(|(t, c)| match c {
            ProviderCommand::Open { peer, .. } => Some((r.at(*t), "open", peer.0)),
            ProviderCommand::Close { peer } => Some((r.at(*t), "close", peer.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn elevenlabs_machine_end_opens_a_conversation_that_leaves_the_message_then_hangs_up() {
    let r = elevenlabs_call(Some(VOICEMAIL), AnsweredBy::MachineEnd(MachineEnd::Beep));
    assert_eq!(
        r.clears().iter().map(|t| r.at(*t)).collect::<Vec<_>>(),
        [1_000]
    );
    // The first conversation is closed and a second opened at the verdict...
    let (first, vm) = (elevenlabs::PEER.0, elevenlabs::VOICEMAIL_PEER.0);
    assert_eq!(
        pipes(&r),
        [
            (0, "open", first),
            (1_000, "close", first),
            (1_000, "open", vm)
        ]
    );
    // ...whose initiation carries the message, filled, as its first message.
    let inits: Vec<Value> = r
        .json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == "conversation_initiation_client_data")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(inits.len(), 2);
    assert_eq!(
        inits[1]["conversation_config_override"]["agent"]["first_message"],
        VOICEMAIL_FILLED
    );
    // Deaf from the verdict on.
    let chunks = user_chunks(&r);
    assert!(
        !chunks.is_empty() && chunks.iter().all(|t| *t <= 1_000),
        "{chunks:?}"
    );
    // The message played whole, then the call hung up.
    assert_eq!(r.closes, [CloseReason::Hangup("voicemail".into())]);
    assert_eq!(media_ms(&r, 1_001, 10_000), 1_500);
    assert!(r.barge_ins().is_empty());
}

#[test]
fn elevenlabs_without_a_message_fax_or_human() {
    for (message, by, reason) in [
        (None, AnsweredBy::MachineEnd(MachineEnd::Silence), "machine"),
        (Some(VOICEMAIL), AnsweredBy::Fax, "fax"),
    ] {
        let r = elevenlabs_call(message, by);
        assert_eq!(r.closes, [CloseReason::Hangup(reason.into())], "{by:?}");
        assert_eq!(
            media_ms(&r, 1_001, 10_000),
            0,
            "nothing plays after the verdict"
        );
        assert_eq!(pipes(&r).len(), 2, "open, then close: {:?}", pipes(&r));
    }
    for by in [
        AnsweredBy::Human,
        AnsweredBy::MachineStart,
        AnsweredBy::Unknown,
    ] {
        let r = elevenlabs_call(Some(VOICEMAIL), by);
        assert!(r.closes.is_empty() && r.clears().is_empty(), "{by:?}");
        assert!(user_chunks(&r).iter().any(|t| *t > 3_000));
        assert_eq!(media_ms(&r, 0, 10_000), 3_000);
    }
}
