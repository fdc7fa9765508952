//! The ElevenLabs relay in virtual time with a scripted Conversational AI socket (no network):
//! μ-law passthrough both ways byte for byte, PCM formats, initiation with dynamic variables,
//! interruption → `clear` and stale audio dropped by `event_id`, ping → pong, transcripts,
//! `end_call`, close codes and `error` events; the signed-URL lookup as an HTTP pipe (the
//! URL then opened verbatim; 401, a hang and malformed answers end the call).

mod common;

use std::time::Instant;

use common::*;
use hark_codecs::SampleRate;
use hark_engine::agent::{
    AgentReport, FaultKind, HttpBody, OpenSpec, ProviderCommand, ProviderEvent, ProviderFault,
    ProviderMessage, ResponseMode, Role, Stage,
};
use hark_engine::agents::elevenlabs::{
    ElevenLabsAgent, ElevenLabsConfig, Overrides, PEER, SIGNED_URL_PEER, SignedUrlLookup,
};
use hark_engine::{CallConfig, CloseReason, Event, TurnId};
use serde_json::{Value, json};

fn metadata(input: &str, output: &str) -> String {
    json!({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": "conv_1", "agent_output_audio_format": output, "user_input_audio_format": input}})
    .to_string()
}

fn audio(bytes: &[u8], event_id: i64) -> String {
    json!({"type": "audio", "audio_event": {"audio_base_64": b64(bytes), "event_id": event_id}})
        .to_string()
}

/// Opens on request after 40 ms, answers the initiation with metadata after 30 ms.
struct El {
    input: &'static str,
    output: &'static str,
}

impl Provider for El {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        match cmd {
            ProviderCommand::Open { peer, .. } => out.push((now + ms(40), upgraded(*peer))),
            ProviderCommand::Send {
                peer,
                message: ProviderMessage::Text(t),
            } if t.contains("conversation_initiation_client_data") => {
                out.push((now + ms(30), text(*peer, metadata(self.input, self.output))))
            }
            _ => {}
        }
    }
}

fn agent() -> Box<ElevenLabsAgent> {
    Box::new(ElevenLabsAgent::new(ElevenLabsConfig {
        url: Some(
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&conversation_signature=s"
                .into(),
        ),
        ..ElevenLabsConfig::default()
    }))
}

fn user_chunks(run: &Run) -> Vec<Vec<u8>> {
    run.json_sent()
        .into_iter()
        .filter_map(|(_, v)| v.get("user_audio_chunk").and_then(Value::as_str).map(unb64))
        .collect()
}

#[test]
fn ulaw_passes_through_both_ways_byte_for_byte() {
    let t0 = Instant::now();
    let mut caller = speech();
    caller.truncate(4_000 * 8);
    let lines = session(t0, &[("CallSid", CALL_SID)], &caller);
    // Agent audio: 1.5 s in 7 events of odd sizes, arriving faster than real time.
    let reply: Vec<u8> = (0..12_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut timed = Vec::new();
    let mut id = 0;
    for (k, chunk) in reply.chunks(1_777).enumerate() {
        id += 1;
        timed.push((t0 + ms(600 + 30 * k as u64), text(PEER, audio(chunk, id))));
    }
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);

    // Caller → ElevenLabs: every byte, in order, untouched (audio from before the socket
    // opened included), one chunk per 20 ms frame.
    let chunks = user_chunks(&run);
    assert_eq!(
        chunks.concat(),
        caller,
        "caller audio relayed byte for byte"
    );
    assert!(chunks.iter().all(|c| c.len() == 160));
    // ElevenLabs → caller: exactly the agent's bytes, no clear, everything marked and played.
    let out: Vec<u8> = run.media().into_iter().flat_map(|(_, b)| b).collect();
    assert_eq!(out, reply, "agent audio relayed byte for byte");
    assert!(run.clears().is_empty());
    assert_eq!(run.call.stats().malformed_total(), 0);
    // No hark barge-in although the caller talks over the agent (ElevenLabs decides).
    assert!(run.barge_ins().is_empty());
    // The greeting latency is reported (no caller turn before it).
    assert!(run.reports().iter().any(|r| matches!(
        r,
        AgentReport::Latency {
            stage: Stage::Greeting,
            ms: 600
        }
    )));
}

#[test]
fn initiation_goes_first_with_dynamic_variables_and_overrides() {
    let t0 = Instant::now();
    let lines = session(
        t0,
        &[
            ("CallSid", CALL_SID),
            ("payerId", "P-42"),
            ("first_message", "Hello P-42"),
        ],
        &vec![0xFF; 8 * 600],
    );
    let agent = Box::new(ElevenLabsAgent::new(ElevenLabsConfig {
        url: Some("ws://127.0.0.1:1/v1/convai/conversation?agent_id=a".into()),
        overrides: Overrides {
            prompt: Some("You are hark's test agent.".into()),
            language: Some("en".into()),
            ..Overrides::default()
        },
        ..ElevenLabsConfig::default()
    }));
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent, el, vec![]);
    let (open_at, open) = run.commands[0].clone();
    assert_eq!(run.at(open_at), 0, "connects at stream start");
    match open {
        ProviderCommand::Open {
            spec: OpenSpec::WebSocket(ws),
            ..
        } => {
            assert_eq!(ws.url, "ws://127.0.0.1:1/v1/convai/conversation?agent_id=a");
            assert!(ws.headers.is_empty(), "a signed URL needs no auth header");
        }
        other => panic!("{other:?}"),
    }
    let sent = run.json_sent();
    let (t, init) = &sent[0];
    assert_eq!(run.at(*t), 40, "initiation as soon as the socket opens");
    assert_eq!(
        *init,
        json!({
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {"agent": {
                "prompt": {"prompt": "You are hark's test agent."},
                "first_message": "Hello P-42",
                "language": "en"}},
            "dynamic_variables": {"CallSid": CALL_SID, "payerId": "P-42", "first_message": "Hello P-42"}
        })
    );
    // Audio starts with the metadata (70 ms): the frames held while connecting go first.
    let first_audio = sent
        .iter()
        .find(|(_, v)| v.get("user_audio_chunk").is_some())
        .expect("audio sent");
    assert_eq!(
        run.at(first_audio.0),
        70,
        "held frames flushed at the metadata"
    );
    // Twilio's stop closes the socket.
    assert!(matches!(
        run.commands.last(),
        Some((_, ProviderCommand::Close { .. }))
    ));
}

#[test]
fn interruption_clears_twilio_and_drops_stale_audio_by_event_id() {
    let t0 = Instant::now();
    let caller = speech();
    let lines = session(t0, &[], &caller[..6_000 * 8]);
    let mut timed = Vec::new();
    // A 3 s answer in 30 events of 100 ms (bytes = event id), all at 1 s.
    for id in 1..=30i64 {
        timed.push((t0 + ms(1_000), text(PEER, audio(&[id as u8; 800], id))));
    }
    // ElevenLabs decides the caller interrupted at 2 s (after event 30 was sent).
    timed.push((
        t0 + ms(2_000),
        text(
            PEER,
            json!({"type": "interruption", "interruption_event": {"event_id": 30}}).to_string(),
        ),
    ));
    // A late chunk of the interrupted answer, then the next answer.
    timed.push((t0 + ms(2_050), text(PEER, audio(&[29u8; 800], 29))));
    timed.push((t0 + ms(2_100), text(PEER, audio(&[0x55; 4_000], 31))));
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);

    let clears = run.clears();
    assert_eq!(clears.len(), 1);
    assert_eq!(run.at(clears[0]), 2_000, "clear at the interruption");
    let bi = run.barge_ins();
    assert_eq!(bi.len(), 1, "{bi:?}");
    // Heard = audio before the last mark echoed before the clear (marks every 100 ms; the
    // phone started playing at 1 000 ms and Twilio queues at most 200 ms ahead).
    let heard = bi[0].interrupted.heard_ms;
    assert!((800..=1_000).contains(&heard), "heard {heard} ms");
    assert_eq!(heard % 100, 0, "heard comes from marks, not a clock");
    let after: Vec<u8> = run
        .media()
        .into_iter()
        .filter(|(t, _)| *t > clears[0])
        .flat_map(|(_, b)| b)
        .collect();
    assert_eq!(
        after,
        vec![0x55; 4_000],
        "only the fresh answer plays after the clear"
    );
    assert!(
        !run.media()
            .iter()
            .any(|(t, b)| *t >= clears[0] && b.contains(&29)),
        "stale event 29 dropped"
    );
    // The phone heard the start of the first answer, then the whole second one.
    let bursts = run.phone.bursts();
    assert_eq!(bursts.last().map(|b| b.audio_ms), Some(500));
}

#[test]
fn ping_is_answered_with_the_same_event_id() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 1_000]);
    let timed = vec![
        (
            t0 + ms(300),
            text(
                PEER,
                json!({"type": "ping", "ping_event": {"event_id": 12345, "ping_ms": null}})
                    .to_string(),
            ),
        ),
        (
            t0 + ms(500),
            text(
                PEER,
                json!({"type": "ping", "ping_event": {"event_id": 7, "ping_ms": 50}}).to_string(),
            ),
        ),
    ];
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);
    let pongs: Vec<(u64, Value)> = run
        .json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == "pong")
        .map(|(t, v)| (run.at(t), v))
        .collect();
    assert_eq!(
        pongs,
        vec![
            (300, json!({"type": "pong", "event_id": 12345})),
            (500, json!({"type": "pong", "event_id": 7}))
        ]
    );
}

#[test]
fn transcripts_and_latency_are_reported() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 3_000]);
    let timed = vec![
        (
            t0 + ms(1_000),
            text(PEER, json!({"type": "user_transcript", "user_transcription_event": {"user_transcript": "I need help.", "event_id": 2}}).to_string()),
        ),
        (
            t0 + ms(1_100),
            text(PEER, json!({"type": "agent_response", "agent_response_event": {"agent_response": "Sure, what do you need?", "event_id": 3}}).to_string()),
        ),
        (t0 + ms(1_250), text(PEER, audio(&[0x11; 800], 3))),
        (
            t0 + ms(1_600),
            text(PEER, json!({"type": "agent_response_correction", "agent_response_correction_event": {
                "original_agent_response": "Sure, what do you need?", "corrected_agent_response": "Sure,", "event_id": 3}}).to_string()),
        ),
        (
            t0 + ms(1_700),
            text(PEER, json!({"type": "vad_score", "vad_score_event": {"vad_score": 0.5}}).to_string()),
        ),
    ];
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);
    let transcripts: Vec<(Role, String, bool)> = run
        .reports()
        .into_iter()
        .filter_map(|r| match r {
            AgentReport::Transcript {
                role,
                text,
                interrupted,
            } => Some((role, text, interrupted)),
            _ => None,
        })
        .collect();
    assert_eq!(
        transcripts,
        vec![
            (Role::User, "I need help.".into(), false),
            (Role::Agent, "Sure, what do you need?".into(), false),
            (Role::Agent, "Sure,".into(), true),
        ]
    );
    assert!(run.reports().contains(&AgentReport::Latency {
        stage: Stage::FirstAudio,
        ms: 250
    }));
    // The utterance ends after a second without audio, so it is marked played.
    assert!(
        run.events
            .iter()
            .any(|(_, e)| matches!(e, Event::UtterancePlayed { heard_ms: 100, .. }))
    );
}

#[test]
fn end_call_tool_answers_and_hangs_up_after_the_goodbye() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 5_000]);
    let timed = vec![
        (t0 + ms(500), text(PEER, audio(&[0x22; 4_000], 1))),
        (
            t0 + ms(520),
            text(PEER, json!({"type": "client_tool_call", "client_tool_call": {
                "tool_name": "end_call", "tool_call_id": "tc_1", "parameters": {"reason": "done"}, "event_id": 2}}).to_string()),
        ),
        (
            t0 + ms(530),
            text(PEER, json!({"type": "client_tool_call", "client_tool_call": {
                "tool_name": "lookup", "tool_call_id": "tc_2", "parameters": {}, "event_id": 3}}).to_string()),
        ),
    ];
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);
    let results: Vec<Value> = run
        .json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == "client_tool_result")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["tool_call_id"], "tc_1");
    assert_eq!(results[0]["is_error"], false);
    assert_eq!(results[1]["tool_call_id"], "tc_2");
    assert_eq!(results[1]["is_error"], true);
    assert!(run.reports().contains(&AgentReport::ToolCall {
        name: "end_call".into(),
        arguments: r#"{"reason":"done"}"#.into()
    }));
    match &run.closed() {
        Some(CloseReason::Hangup(r)) => assert!(r.contains("end_call"), "{r}"),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    // The goodbye (500 ms) played to the end before the stream closed.
    let heard: u64 = run.phone.bursts().iter().map(|b| b.audio_ms).sum();
    assert_eq!(heard, 500);
}

fn ends_with_fault(timed_event: ProviderEvent, kind: &str) {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 3_000]);
    let timed = vec![
        (t0 + ms(300), text(PEER, audio(&[0x33; 1_600], 1))),
        (t0 + ms(400), timed_event),
    ];
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);
    let faults: Vec<String> = run
        .reports()
        .into_iter()
        .filter_map(|r| match r {
            AgentReport::ProviderFault { provider, kind, .. } => {
                assert_eq!(provider, "elevenlabs");
                Some(kind)
            }
            _ => None,
        })
        .collect();
    assert_eq!(faults, vec![kind.to_string()]);
    match &run.closed() {
        Some(CloseReason::Hangup(r)) => assert!(r.contains(kind), "{r}"),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    // The audio already queued still played (a clean end).
    assert_eq!(
        run.phone.bursts().iter().map(|b| b.audio_ms).sum::<u64>(),
        200
    );
}

#[test]
fn close_codes_and_errors_end_the_call_cleanly() {
    for code in [1002u16, 1008, 1011] {
        ends_with_fault(
            ProviderEvent::Failed {
                peer: PEER,
                fault: ProviderFault::new(FaultKind::Close(code), "x"),
            },
            &format!("close_{code}"),
        );
    }
    ends_with_fault(
        text(
            PEER,
            json!({"type": "error", "error_event": {"code": 1002, "message": "LLM timed out",
            "error_type": "llm_timeout", "reason": null}})
            .to_string(),
        ),
        "llm_timeout",
    );

    // A normal close (1000) ends the call without a fault.
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 2_000]);
    let timed = vec![(t0 + ms(300), ProviderEvent::Closed { peer: PEER })];
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);
    assert!(matches!(run.closed(), Some(CloseReason::Hangup(_))));
    assert!(
        !run.reports()
            .iter()
            .any(|r| matches!(r, AgentReport::ProviderFault { .. }))
    );

    // A refused connection (e.g. an expired signed URL) too.
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 2_000]);
    struct Refuse;
    impl Provider for Refuse {
        fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
            if let ProviderCommand::Open { peer, .. } = cmd {
                out.push((
                    now + ms(20),
                    ProviderEvent::Failed {
                        peer: *peer,
                        fault: ProviderFault::status(403, "", None),
                    },
                ));
            }
        }
    }
    let run = run_scripted(&lines, CallConfig::default(), agent(), Refuse, vec![]);
    assert!(matches!(run.closed(), Some(CloseReason::Hangup(ref r)) if r.contains("http_403")));
}

#[test]
fn pcm_formats_are_converted_both_ways() {
    let t0 = Instant::now();
    let caller = speech();
    let caller = &caller[..2_000 * 8];
    let lines = session(t0, &[], caller);
    // 22.05 kHz agent audio: 1 s of a 440 Hz tone, split at odd byte offsets.
    let tone: Vec<u8> = (0..22_050)
        .flat_map(|i| {
            let s = (8_000.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 22_050.0).sin()) as i16;
            s.to_le_bytes()
        })
        .collect();
    let mut timed = Vec::new();
    for (k, chunk) in tone.chunks(4_411).enumerate() {
        timed.push((
            t0 + ms(300 + k as u64),
            text(PEER, audio(chunk, k as i64 + 1)),
        ));
    }
    let cfg = CallConfig {
        agent_rate: SampleRate::HZ_16000,
        ..CallConfig::default()
    };
    let el = El {
        input: "pcm_16000",
        output: "pcm_22050",
    };
    let run = run_scripted(&lines, cfg, agent(), el, timed);
    let chunks = user_chunks(&run);
    assert!(
        chunks.iter().all(|c| c.len() == 640),
        "20 ms of s16le at 16 kHz each"
    );
    assert_eq!(chunks.len(), caller.len() / 160);
    let played: usize = run.media().iter().map(|(_, b)| b.len()).sum();
    // 1 s at 22.05 kHz → 8 000 μ-law bytes (± the resampler's block).
    assert!((7_800..=8_200).contains(&played), "{played} bytes");
}

/// ElevenLabs ends the turn before hark does (300 ms of silence vs hark's 600 ms `stop_ms`):
/// its answer is timed from the caller's last voiced frame and marked as coming before hark's
/// `UserTurnEnded`, which follows and does not time it again.
#[test]
fn an_answer_before_hark_ends_the_turn_is_timed_from_that_turn() {
    let t0 = Instant::now();
    let caller = speech();
    // The first turn (speech 1 000–5 100 ms), then silence.
    let lines = session(t0, &[], &caller[..7_000 * 8]);
    let timed: Vec<_> = (1..=10i64)
        .map(|id| (t0 + ms(5_400), text(PEER, audio(&[0x33; 800], id))))
        .collect();
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent(), el, timed);
    let started: Vec<_> = run
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::AgentAudioStarted {
                since_user_end,
                before_turn_end,
                ..
            } => Some((run.at(*t), *since_user_end, *before_turn_end)),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    let (at, since, early) = started[0];
    assert!(early, "the answer began before hark's endpointing");
    let since = since.expect("timed as an answer").as_millis() as u64;
    assert!(
        (250..=450).contains(&since),
        "{since} ms after the last voiced frame"
    );
    let ended_at = run
        .events
        .iter()
        .find_map(|(t, e)| matches!(e, Event::UserTurnEnded { .. }).then(|| run.at(*t)))
        .expect("hark still ends the turn");
    assert!(
        ended_at > at,
        "turn ended at {ended_at} ms, answer at {at} ms"
    );
    // The caller began hearing it (first mark echo) still before hark's turn end.
    let heard: Vec<_> = run
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::AgentAudioHeard {
                since_user_end: Some(d),
                before_turn_end,
                ..
            } => Some((d.as_millis() as u64, *before_turn_end)),
            _ => None,
        })
        .collect();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert!(heard[0].0 >= since && heard[0].0 <= since + 50, "{heard:?}");
    assert!(heard[0].1);
    // The engine names the turn: the early answer, its first echo, its end and the turn's
    // end all carry the turn the caller's speech opened, though the answer came first.
    let turns: Vec<(&str, Option<TurnId>)> = run
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::UserSpeechStarted { turn, .. } => Some(("speech", Some(*turn))),
            Event::AgentAudioStarted { turn, .. } => Some(("answer", *turn)),
            Event::AgentAudioHeard { turn, .. } => Some(("heard", *turn)),
            Event::UserTurnEnded { turn, .. } => Some(("ended", Some(*turn))),
            Event::UtterancePlayed { turn, .. } => Some(("played", *turn)),
            _ => None,
        })
        .collect();
    let first = TurnId(0);
    assert_eq!(
        turns[..4],
        [
            ("speech", Some(first)),
            ("answer", Some(first)),
            ("heard", Some(first)),
            ("ended", Some(first)),
        ],
        "{turns:?}"
    );
    assert_eq!(turns[4], ("played", Some(first)), "{turns:?}");
}

// ---- The signed-URL lookup (private agents): an HTTP pipe, then the WebSocket ----

const LOOKUP_URL: &str =
    "https://api.elevenlabs.io/v1/convai/conversation/get-signed-url?agent_id=agent_1";
const SIGNED: &str =
    "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_1&conversation_signature=sig";

/// A private agent: no URL, a signed-URL lookup with a 5 s deadline.
fn private_agent() -> Box<ElevenLabsAgent> {
    Box::new(ElevenLabsAgent::new(ElevenLabsConfig {
        url: None,
        signed_url: Some(SignedUrlLookup {
            url: LOOKUP_URL.into(),
            api_key: "xi-test-key".into(),
            timeout_ms: 5_000,
        }),
        ..ElevenLabsConfig::default()
    }))
}

/// How the scripted REST endpoint answers the lookup, 80 ms after the request.
enum Lookup {
    /// `200` with this whole body (`Opened`, one text `Message`, `Closed`).
    Body(String),
    /// `200` with a binary body.
    Binary,
    /// A non-2xx answer: the connector's `Failed` with the status.
    Status(u16, &'static str),
    /// No answer at all.
    Hang,
}

/// The signed-URL endpoint and then the conversation socket ([`El`], ulaw both ways).
struct Private {
    lookup: Lookup,
    el: El,
}

impl Provider for Private {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        let ProviderCommand::Open {
            peer,
            spec: OpenSpec::Http(_),
        } = cmd
        else {
            return self.el.command(now, cmd, out);
        };
        let peer = *peer;
        let at = now + ms(80);
        let opened = ProviderEvent::Opened {
            peer,
            status: Some(200),
        };
        match &self.lookup {
            Lookup::Body(body) => out.extend([
                (at, opened),
                (at, text(peer, body.clone())),
                (at, ProviderEvent::Closed { peer }),
            ]),
            Lookup::Binary => out.extend([
                (at, opened),
                (
                    at,
                    ProviderEvent::Message {
                        peer,
                        message: ProviderMessage::Binary(vec![0x89, 0x50, 0x4e, 0x47]),
                    },
                ),
                (at, ProviderEvent::Closed { peer }),
            ]),
            Lookup::Status(status, body) => out.push((
                at,
                ProviderEvent::Failed {
                    peer,
                    fault: ProviderFault::status(*status, *body, None),
                },
            )),
            Lookup::Hang => {}
        }
    }
}

fn run_private(lookup: Lookup, call_ms: u64) -> Run {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * call_ms as usize]);
    let script = Private {
        lookup,
        el: El {
            input: "ulaw_8000",
            output: "ulaw_8000",
        },
    };
    run_scripted(
        &lines,
        CallConfig::default(),
        private_agent(),
        script,
        vec![],
    )
}

fn faults(run: &Run) -> Vec<(String, String)> {
    run.reports()
        .into_iter()
        .filter_map(|r| match r {
            AgentReport::ProviderFault {
                provider,
                kind,
                detail,
            } => {
                assert_eq!(provider, "elevenlabs");
                Some((kind, detail))
            }
            _ => None,
        })
        .collect()
}

/// The lookup failed: one fault of `kind`, the call hung up with it as the reason, no
/// WebSocket opened and no caller audio sent anywhere.
fn assert_ended_by_lookup(run: &Run, kind: &str) {
    let f = faults(run);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, kind, "{f:?}");
    match &run.closed() {
        Some(CloseReason::Hangup(r)) => assert!(r.contains(kind), "{r}"),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    assert!(
        !run.commands.iter().any(|(_, c)| matches!(
            c,
            ProviderCommand::Open {
                spec: OpenSpec::WebSocket(_),
                ..
            }
        )),
        "no conversation without a signed URL"
    );
    assert!(run.texts_sent().is_empty(), "nothing sent to ElevenLabs");
}

#[test]
fn signed_url_is_looked_up_then_opened_verbatim() {
    let body = json!({ "signed_url": SIGNED }).to_string();
    let run = run_private(Lookup::Body(body), 1_000);

    // At stream start: one GET with the key, the whole body asked for, nothing else.
    let (at, first) = &run.commands[0];
    assert_eq!(run.at(*at), 0, "looked up at stream start");
    match first {
        ProviderCommand::Open {
            peer,
            spec: OpenSpec::Http(req),
        } => {
            assert_eq!(*peer, SIGNED_URL_PEER);
            assert_eq!(req.method, "GET");
            assert_eq!(req.url, LOOKUP_URL);
            assert!(
                req.headers
                    .contains(&("xi-api-key".into(), "xi-test-key".into()))
            );
            assert_eq!(req.body, HttpBody::Empty);
            assert_eq!(req.response, ResponseMode::Whole);
            assert!(
                req.timeout_ms.is_some_and(|t| t > 5_000),
                "the agent's own 5 s deadline fires before the connector's: {:?}",
                req.timeout_ms
            );
        }
        other => panic!("{other:?}"),
    }
    // The answer (80 ms) opens the WebSocket at once, on the signed URL as given.
    let (at, second) = &run.commands[1];
    assert_eq!(run.at(*at), 80);
    match second {
        ProviderCommand::Open {
            peer,
            spec: OpenSpec::WebSocket(ws),
        } => {
            assert_eq!(*peer, PEER);
            assert_eq!(ws.url, SIGNED);
            assert!(ws.headers.is_empty(), "a signed URL needs no auth header");
        }
        other => panic!("{other:?}"),
    }
    // Then the usual start: initiation at open (120 ms), audio from the metadata (150 ms),
    // every caller byte held since stream start relayed; the finished lookup is not closed.
    let sent = run.json_sent();
    assert_eq!(sent[0].1["type"], "conversation_initiation_client_data");
    assert_eq!(run.at(sent[0].0), 120);
    let chunks = user_chunks(&run);
    assert_eq!(run.at(sent[1].0), 150);
    assert_eq!(chunks.concat(), vec![0xFF; 8 * 1_000]);
    assert!(faults(&run).is_empty());
    assert!(!run.commands.iter().any(|(_, c)| matches!(
        c,
        ProviderCommand::Close { peer } if *peer == SIGNED_URL_PEER
    )));
    // Twilio's stop closes the conversation.
    assert!(matches!(
        run.commands.last(),
        Some((_, ProviderCommand::Close { peer })) if *peer == PEER
    ));
}

#[test]
fn a_refused_lookup_ends_the_call() {
    let run = run_private(
        Lookup::Status(401, r#"{"detail":{"status":"invalid_api_key"}}"#),
        3_000,
    );
    assert_ended_by_lookup(&run, "signed_url_http_401");
    let (_, detail) = &faults(&run)[0];
    assert!(detail.contains("invalid_api_key"), "{detail}");
    // Ended when the answer came, and the failed pipe is not closed again.
    let closed_at = run.events.last().map(|(t, _)| run.at(*t));
    assert_eq!(closed_at, Some(80));
    assert_eq!(run.commands.len(), 1, "{:?}", run.commands);
}

#[test]
fn a_lookup_that_hangs_is_given_up_at_its_deadline() {
    let run = run_private(Lookup::Hang, 8_000);
    assert_ended_by_lookup(&run, "signed_url_timeout");
    // The request is cancelled (its pipe closed) at the 5 s deadline, and the call ends then.
    let closes: Vec<u64> = run
        .commands
        .iter()
        .filter(|(_, c)| matches!(c, ProviderCommand::Close { peer } if *peer == SIGNED_URL_PEER))
        .map(|(t, _)| run.at(*t))
        .collect();
    assert_eq!(closes, vec![5_000]);
    assert_eq!(run.events.last().map(|(t, _)| run.at(*t)), Some(5_000));
}

#[test]
fn a_malformed_lookup_answer_ends_the_call() {
    for body in [
        "<html>502 Bad Gateway</html>",
        "{}",
        r#"{"signed_url": 42}"#,
        r#"{"signed_url": "https://api.elevenlabs.io/v1/convai/conversation?agent_id=a"}"#,
        "",
    ] {
        let run = run_private(Lookup::Body(body.to_string()), 2_000);
        assert_ended_by_lookup(&run, "signed_url_bad_answer");
        assert_eq!(
            run.events.last().map(|(t, _)| run.at(*t)),
            Some(80),
            "{body}"
        );
    }
    let run = run_private(Lookup::Binary, 2_000);
    assert_ended_by_lookup(&run, "signed_url_bad_answer");
}

#[test]
fn a_public_agent_connects_without_a_lookup() {
    // No key: the public agent URL is opened directly at stream start, as before.
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 500]);
    let public = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_1";
    let agent = Box::new(ElevenLabsAgent::new(ElevenLabsConfig {
        url: Some(public.into()),
        ..ElevenLabsConfig::default()
    }));
    let el = El {
        input: "ulaw_8000",
        output: "ulaw_8000",
    };
    let run = run_scripted(&lines, CallConfig::default(), agent, el, vec![]);
    assert!(matches!(
        &run.commands[0],
        (_, ProviderCommand::Open { peer, spec: OpenSpec::WebSocket(ws) })
            if *peer == PEER && ws.url == public
    ));
    assert!(!run.commands.iter().any(|(_, c)| matches!(
        c,
        ProviderCommand::Open {
            spec: OpenSpec::Http(_),
            ..
        }
    )));
}
