//! The OpenAI Realtime agent in virtual time with a scripted Realtime socket (no network):
//! `audio/pcmu` passthrough both ways byte for byte, barge-in on `speech_started` → `clear`,
//! `response.cancel` and `conversation.item.truncate` at the audio heard according to the mark
//! echoes (clamped to the audio generated, never the clock), stale deltas dropped, hark's own
//! turn detection, transcripts, latency, beta event names, errors and closes.

mod common;

use std::time::Instant;

use common::*;
use hark_engine::agent::{
    AgentReport, FaultKind, ProviderCommand, ProviderEvent, ProviderFault, ProviderMessage, Role,
    Stage,
};
use hark_engine::agents::realtime::{
    ApiVersion, PEER, RealtimeAgent, RealtimeConfig, TurnDetection,
};
use hark_engine::{CallConfig, CloseReason};
use serde_json::{Value, json};

/// Opens after 40 ms; answers `session.update` with `session.updated` (echoing the output
/// format) after 20 ms.
struct Rt;

impl Provider for Rt {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        match cmd {
            ProviderCommand::Open { peer, .. } => out.push((now + ms(40), upgraded(*peer))),
            ProviderCommand::Send {
                peer,
                message: ProviderMessage::Text(t),
            } if t.contains("\"session.update\"") => {
                let v: Value = serde_json::from_str(t).unwrap();
                let mut session = v["session"].clone();
                session["id"] = json!("sess_1");
                out.push((
                    now + ms(20),
                    text(
                        *peer,
                        json!({"type": "session.updated", "event_id": "ev_s", "session": session})
                            .to_string(),
                    ),
                ))
            }
            _ => {}
        }
    }
}

fn agent(td: TurnDetection) -> Box<RealtimeAgent> {
    Box::new(RealtimeAgent::new(RealtimeConfig {
        url: "ws://127.0.0.1:1/v1/realtime".into(),
        api_key: "sk-test".into(),
        turn_detection: td,
        ..RealtimeConfig::default()
    }))
}

fn server_vad() -> TurnDetection {
    TurnDetection::ServerVad {
        threshold: None,
        prefix_padding_ms: None,
        silence_duration_ms: None,
    }
}

fn ev(v: Value) -> ProviderEvent {
    text(PEER, v.to_string())
}

fn created(resp: &str) -> ProviderEvent {
    ev(
        json!({"type": "response.created", "event_id": "e", "response": {"object": "realtime.response", "id": resp, "status": "in_progress", "output": []}}),
    )
}

fn delta(resp: &str, item: &str, bytes: &[u8]) -> ProviderEvent {
    ev(
        json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": resp, "item_id": item,
        "output_index": 0, "content_index": 0, "delta": b64(bytes)}),
    )
}

fn sent_of(run: &Run, kind: &str) -> Vec<(u64, Value)> {
    run.json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == kind)
        .map(|(t, v)| (run.at(t), v))
        .collect()
}

#[test]
fn pcmu_passes_through_both_ways_byte_for_byte() {
    let t0 = Instant::now();
    let mut caller = speech();
    caller.truncate(3_000 * 8);
    let lines = session(t0, &[], &caller);
    let reply: Vec<u8> = (0..9_600u32).map(|i| (i * 13 % 253) as u8).collect();
    let mut timed = vec![(t0 + ms(500), created("resp_1"))];
    for (k, c) in reply.chunks(1_111).enumerate() {
        timed.push((t0 + ms(520 + 10 * k as u64), delta("resp_1", "item_1", c)));
    }
    timed.push((
        t0 + ms(700),
        ev(json!({"type": "response.output_audio.done", "event_id": "e", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0})),
    ));
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Rt,
        timed,
    );

    let appended: Vec<u8> = sent_of(&run, "input_audio_buffer.append")
        .iter()
        .flat_map(|(_, v)| unb64(v["audio"].as_str().unwrap()))
        .collect();
    assert_eq!(appended, caller, "caller μ-law appended byte for byte");
    let out: Vec<u8> = run.media().into_iter().flat_map(|(_, b)| b).collect();
    assert_eq!(out, reply, "model μ-law played byte for byte");
    // The session asks for μ-law both ways, and the key goes in the header.
    let (_, update) = &sent_of(&run, "session.update")[0];
    assert_eq!(
        update["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(
        update["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );
    match &run.commands[0].1 {
        ProviderCommand::Open {
            spec: hark_engine::agent::OpenSpec::WebSocket(ws),
            ..
        } => {
            assert_eq!(ws.url, "ws://127.0.0.1:1/v1/realtime?model=gpt-realtime");
            assert!(
                ws.headers
                    .contains(&("Authorization".into(), "Bearer sk-test".into()))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(run.clears().is_empty());
}

/// A 3 s answer arrives at once at 1 s; the server hears the caller at `speech_at`.
fn barge_in_run(speech_at: u64, extra: Vec<(u64, ProviderEvent)>) -> Run {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 5_000]);
    let mut timed = vec![(t0 + ms(1_000), created("resp_1"))];
    for k in 0..30u8 {
        timed.push((t0 + ms(1_000), delta("resp_1", "item_1", &[k + 1; 800])));
    }
    timed.push((
        t0 + ms(speech_at),
        ev(json!({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": speech_at - 300, "item_id": "item_2"})),
    ));
    for (t, e) in extra {
        timed.push((t0 + ms(t), e));
    }
    run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Rt,
        timed,
    )
}

#[test]
fn speech_started_clears_cancels_and_truncates_at_the_heard_audio() {
    let run = barge_in_run(
        2_000,
        vec![
            // Deltas still in flight for the cancelled response: dropped.
            (2_010, delta("resp_1", "item_1", &[0xEE; 800])),
            (
                2_030,
                ev(
                    json!({"type": "response.done", "event_id": "e", "response": {"object": "realtime.response", "id": "resp_1", "status": "cancelled", "output": []}}),
                ),
            ),
        ],
    );
    let clears = run.clears();
    assert_eq!(clears.len(), 1);
    assert_eq!(run.at(clears[0]), 2_000);
    let bi = run.barge_ins();
    assert_eq!(bi.len(), 1);
    let heard = bi[0].interrupted.heard_ms;

    let cancels = sent_of(&run, "response.cancel");
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].0, 2_000);
    assert_eq!(cancels[0].1["response_id"], "resp_1");
    let truncs = sent_of(&run, "conversation.item.truncate");
    assert_eq!(truncs.len(), 1, "{truncs:?}");
    let (at, t) = &truncs[0];
    assert_eq!(*at, 2_000);
    assert_eq!(t["item_id"], "item_1");
    assert_eq!(t["content_index"], 0);
    // What the caller heard by the marks echoed before the clear, not the 1 000 ms since the
    // answer began (the official sample's estimate), nor the 3 000 ms generated.
    assert_eq!(t["audio_end_ms"].as_u64(), Some(heard));
    assert!(
        (800..=1_000).contains(&heard) && heard.is_multiple_of(100),
        "heard {heard}"
    );
    // Nothing of the cancelled response went out after the clear.
    let clear_at = run
        .sent
        .iter()
        .position(|(_, o)| matches!(o, hark_engine::twilio::Outbound::Clear { .. }))
        .unwrap();
    assert!(
        !run.sent[clear_at..]
            .iter()
            .any(|(_, o)| matches!(o, hark_engine::twilio::Outbound::Media { .. })),
        "audio after the clear"
    );
    assert!(run.reports().contains(&AgentReport::Transcript {
        role: Role::Agent,
        text: String::new(),
        interrupted: true,
    }));
}

#[test]
fn truncate_is_clamped_to_the_audio_generated() {
    // 500 ms generated at 1 s, all played and echoed by 1.6 s; the response goes on (no
    // audio.done) and the caller speaks at 3 s: the clock says 2 000 ms, the marks 500 ms.
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 4_000]);
    let timed = vec![
        (t0 + ms(1_000), created("resp_1")),
        (t0 + ms(1_000), delta("resp_1", "item_1", &[0x42; 4_000])),
        (
            t0 + ms(3_000),
            ev(
                json!({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 2_700, "item_id": "item_2"}),
            ),
        ),
    ];
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Rt,
        timed,
    );
    let truncs = sent_of(&run, "conversation.item.truncate");
    assert_eq!(truncs.len(), 1);
    assert_eq!(
        truncs[0].1["audio_end_ms"], 500,
        "clamped to the 500 ms generated"
    );
    assert_eq!(
        run.clears().len(),
        1,
        "the utterance was still open: clear sent"
    );
}

#[test]
fn speech_started_without_agent_audio_changes_nothing() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 2_000]);
    let timed = vec![(
        t0 + ms(1_000),
        ev(
            json!({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 700, "item_id": "item_2"}),
        ),
    )];
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Rt,
        timed,
    );
    assert!(run.clears().is_empty());
    assert!(sent_of(&run, "response.cancel").is_empty());
    assert!(sent_of(&run, "conversation.item.truncate").is_empty());
}

#[test]
fn hark_turn_detection_commits_and_barges_in_itself() {
    let t0 = Instant::now();
    let caller = speech();
    let lines = session(t0, &[], &caller[..9_000 * 8]);
    // The answer to turn A (ends 5 100 ms; hark's endpointing ≈ 600 ms later): 4 s of audio,
    // interrupted by turn B at 6 800 ms.
    struct Answer {
        inner: Rt,
    }
    impl Provider for Answer {
        fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
            self.inner.command(now, cmd, out);
            if let ProviderCommand::Send {
                message: ProviderMessage::Text(t),
                ..
            } = cmd
                && t.contains("\"response.create\"")
            {
                out.push((now + ms(100), created("resp_a")));
                for k in 0..40u8 {
                    out.push((now + ms(150), delta("resp_a", "item_a", &[k + 1; 800])));
                }
            }
        }
    }
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(TurnDetection::Hark),
        Answer { inner: Rt },
        vec![],
    );
    let (_, update) = &sent_of(&run, "session.update")[0];
    assert_eq!(
        update["session"]["audio"]["input"]["turn_detection"],
        Value::Null
    );
    let commits = sent_of(&run, "input_audio_buffer.commit");
    let creates = sent_of(&run, "response.create");
    assert!(!commits.is_empty() && commits.len() == creates.len());
    let first = commits[0].0;
    assert!((5_500..=5_900).contains(&first), "commit at {first} ms");
    // hark's VAD barged in on B: cancel + truncate at the heard audio.
    let bi = run.barge_ins();
    assert_eq!(bi.len(), 1, "{bi:?}");
    let truncs = sent_of(&run, "conversation.item.truncate");
    assert_eq!(
        truncs[0].1["audio_end_ms"].as_u64(),
        Some(bi[0].interrupted.heard_ms)
    );
    assert_eq!(
        sent_of(&run, "response.cancel")[0].1["response_id"],
        "resp_a"
    );
    assert!(run.reports().iter().any(|r| matches!(
        r,
        AgentReport::Latency {
            stage: Stage::FirstAudio,
            ms: 150
        }
    )));
}

#[test]
fn transcripts_latency_and_heard_words() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 6_000]);
    let d = |t: u64, s: &str| {
        (
            t,
            ev(
                json!({"type": "response.output_audio_transcript.delta", "event_id": "e", "response_id": "resp_1",
                "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": s}),
            ),
        )
    };
    let mut timed: Vec<(u64, ProviderEvent)> = vec![
        (
            900,
            ev(
                json!({"type": "input_audio_buffer.speech_stopped", "event_id": "e", "audio_end_ms": 800, "item_id": "item_0"}),
            ),
        ),
        (
            950,
            ev(
                json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "e",
                "item_id": "item_0", "content_index": 0, "transcript": "Where is my order? "}),
            ),
        ),
        (1_000, created("resp_1")),
        d(1_100, "Your order "),
        d(1_100, "left the warehouse "),
        d(1_100, "this morning and "),
        d(1_100, "arrives tomorrow."),
    ];
    for k in 0..20u64 {
        timed.push((1_120 + k, delta("resp_1", "item_1", &[0x30; 800])));
    }
    timed.push((
        2_100,
        ev(json!({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 1_800, "item_id": "item_2"})),
    ));
    timed.push((
        2_200,
        ev(json!({"type": "response.output_audio_transcript.done", "event_id": "e", "response_id": "resp_1",
            "item_id": "item_1", "output_index": 0, "content_index": 0, "transcript": "Your order left the warehouse this morning and arrives tomorrow."})),
    ));
    let timed = timed.into_iter().map(|(t, e)| (t0 + ms(t), e)).collect();
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Rt,
        timed,
    );
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
    assert_eq!(transcripts.len(), 2, "{transcripts:?}");
    assert_eq!(
        transcripts[0],
        (Role::User, "Where is my order?".into(), false)
    );
    let (role, heard, interrupted) = &transcripts[1];
    assert_eq!((*role, *interrupted), (Role::Agent, true));
    assert!(
        "Your order left the warehouse this morning and arrives tomorrow."
            .starts_with(heard.as_str())
            && !heard.is_empty()
            && heard.len() < 50,
        "heard words {heard:?}"
    );
    assert!(run.reports().contains(&AgentReport::Latency {
        stage: Stage::FirstAudio,
        ms: 220
    }));
}

#[test]
fn beta_event_names_are_accepted() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 2_000]);
    let timed = vec![
        (t0 + ms(500), created("resp_1")),
        (
            t0 + ms(510),
            ev(
                json!({"type": "response.audio.delta", "event_id": "e", "response_id": "resp_1", "item_id": "item_1",
                "output_index": 0, "content_index": 0, "delta": b64(&[0x21; 1_600])}),
            ),
        ),
        (
            t0 + ms(520),
            ev(
                json!({"type": "response.audio.done", "event_id": "e", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}),
            ),
        ),
        (
            t0 + ms(530),
            ev(
                json!({"type": "response.audio_transcript.done", "event_id": "e", "response_id": "resp_1",
                "item_id": "item_1", "output_index": 0, "content_index": 0, "transcript": "Hi."}),
            ),
        ),
    ];
    let beta = Box::new(RealtimeAgent::new(RealtimeConfig {
        url: "ws://127.0.0.1:1/v1/realtime".into(),
        api: ApiVersion::Beta,
        ..RealtimeConfig::default()
    }));
    let run = run_scripted(&lines, CallConfig::default(), beta, Rt, timed);
    assert_eq!(
        run.media().iter().map(|(_, b)| b.len()).sum::<usize>(),
        1_600
    );
    let (_, update) = &sent_of(&run, "session.update")[0];
    assert_eq!(update["session"]["output_audio_format"], "g711_ulaw");
    assert!(run.reports().contains(&AgentReport::Transcript {
        role: Role::Agent,
        text: "Hi.".into(),
        interrupted: false
    }));
}

#[test]
fn errors_are_reported_and_closes_end_the_call() {
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 3_000]);
    let timed = vec![
        (
            t0 + ms(300),
            ev(
                json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "response_cancel_not_active", "message": "no active response", "param": null, "event_id": "hark_3"}}),
            ),
        ),
        (
            t0 + ms(400),
            ev(
                json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "Audio content of 13600ms is already shorter than 55960ms", "param": null, "event_id": "hark_4"}}),
            ),
        ),
        (
            t0 + ms(1_000),
            ProviderEvent::Failed {
                peer: PEER,
                fault: ProviderFault::new(FaultKind::Close(1011), "internal"),
            },
        ),
    ];
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Rt,
        timed,
    );
    let faults: Vec<String> = run
        .reports()
        .into_iter()
        .filter_map(|r| match r {
            AgentReport::ProviderFault { provider, kind, .. } => {
                assert_eq!(provider, "realtime");
                Some(kind)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        faults,
        vec!["invalid_value".to_string(), "close_1011".to_string()]
    );
    match &run.closed() {
        Some(CloseReason::Hangup(r)) => assert!(r.contains("close_1011"), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(run.at(run.events.last().unwrap().0) >= 1_000);

    // A session that will not speak μ-law ends the call.
    struct Pcm;
    impl Provider for Pcm {
        fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
            match cmd {
                ProviderCommand::Open { peer, .. } => out.push((now, upgraded(*peer))),
                ProviderCommand::Send { peer, message: ProviderMessage::Text(t) } if t.contains("session.update") => out.push((
                    now + ms(10),
                    text(*peer, json!({"type": "session.updated", "event_id": "e", "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}}}).to_string()),
                )),
                _ => {}
            }
        }
    }
    let t0 = Instant::now();
    let lines = session(t0, &[], &vec![0xFF; 8 * 1_000]);
    let run = run_scripted(
        &lines,
        CallConfig::default(),
        agent(server_vad()),
        Pcm,
        vec![],
    );
    assert!(matches!(&run.closed(), Some(CloseReason::Hangup(r)) if r.contains("audio_format")));
}
