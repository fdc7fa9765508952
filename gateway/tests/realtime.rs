//! `HARK_AGENT=realtime` end to end over real sockets on 127.0.0.1: `hark serve` in-process, the
//! OpenAI Realtime double, and `hark call` playing the multi-turn real-speech session at real
//! time. Server VAD (GA names) and hark's own turn detection (beta names). Every event both
//! ways is checked against the OpenAI spec; the barge-in's `conversation.item.truncate`
//! must carry exactly the audio heard according to Twilio's mark echoes (as stored in the
//! call record), within the audio generated.

mod in_process;
use in_process::{fixture, speech};
mod provider_doubles;
#[path = "elevenlabs_realtime_specs.rs"]
mod specs;

use std::sync::Arc;
use std::time::Duration;

use hark_gateway::agents::AgentSettings;
use hark_gateway::config::{AgentKind, Config};
use hark_gateway::simulator::{self, CallSetup, Report};
use in_process::Server;
use provider_doubles::realtime::{RealtimeDouble, Reply, Script, Session, Turn};
use serde_json::Value;
use specs::{Api, check_realtime};

fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn settings(double: &RealtimeDouble, extra: &[(&str, &str)]) -> AgentSettings {
    let mut env: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), "sk-test".into()),
        ("HARK_REALTIME_URL".into(), double.base_url()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    AgentSettings::from_lookup(AgentKind::Realtime, &mut |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .expect("settings")
}

/// Reply `k`'s audio: bytes `16k .. 16k+15` repeating (recognisable in what was heard).
fn audio(k: u8, ms: usize) -> Arc<[u8]> {
    (0..ms * 8)
        .map(|i| k * 16 + (i % 16) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The multi-turn session's turns (A 1 000–5 100, B 6 800–8 580 over A's answer, C 13 360–
/// 15 380, D 20 400–22 520 ms) with their answers.
fn turns() -> Vec<Turn> {
    let t = |s, e, user: &str, k, ms, say: &str| Turn {
        start_ms: s,
        end_ms: e,
        user_transcript: user.into(),
        reply: Some(Reply {
            transcript: say.into(),
            audio: audio(k, ms),
        }),
    };
    vec![
        t(
            1_000,
            5_100,
            "Hi, I'm calling about my order, it was supposed to arrive yesterday.",
            1,
            4_000,
            "I'm sorry to hear that. Let me look up your order and see where it is right now.",
        ),
        t(
            6_800,
            8_580,
            "And so my fellow Americans",
            2,
            2_500,
            "Yes, go on.",
        ),
        t(
            13_360,
            15_380,
            "ask what you can do for your country",
            3,
            2_500,
            "Noted.",
        ),
        t(
            20_400,
            22_520,
            "Okay, thank you. Goodbye.",
            4,
            2_000,
            "Goodbye!",
        ),
    ]
}

async fn start(settings: AgentSettings) -> Server {
    let config = Config {
        workers: 2,
        agent: AgentKind::Realtime,
        agent_settings: settings,
        ..Config::default()
    };
    Server::start(config, Some(in_process::memory_api().await)).await
}

fn check_spec(api: Api, s: &Session) {
    for (_, m) in &s.received {
        let e = check_realtime(api, true, m);
        assert!(
            e.is_empty(),
            "hark sent an event the spec refuses: {m}\n{e:?}"
        );
    }
    for (_, m) in &s.sent {
        let e = check_realtime(api, false, m);
        assert!(
            e.is_empty(),
            "the double sent an event the spec refuses: {m}\n{e:?}"
        );
    }
    assert!(s.violations.is_empty(), "{:?}", s.violations);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    (0..hay.len().saturating_sub(needle.len() - 1))
        .filter(|&i| hay[i] == first)
        .find(|&i| hay[i..i + needle.len()] == *needle)
}

/// Runs `audio_ms` of the multi-turn session through the server and returns the report,
/// the double's session and the stored call.
async fn call(
    server: &Server,
    double: &RealtimeDouble,
    audio_ms: usize,
) -> (Report, Session, hark_gateway::api::store::CallDetail) {
    call_at(&server.url, server, double, audio_ms).await
}

/// [`call`], dialling `url` (e.g. a chaos proxy in front of the server).
async fn call_at(
    url: &str,
    server: &Server,
    double: &RealtimeDouble,
    audio_ms: usize,
) -> (Report, Session, hark_gateway::api::store::CallDetail) {
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(audio_ms * 8);
    let mut setup = CallSetup::new(url, Arc::from(audio.clone()));
    let mut sp = speech("multi-turn");
    sp.spans = sp
        .spans
        .iter()
        .filter(|s| (s.end_ms as usize) < audio_ms)
        .cloned()
        .collect();
    setup.speech = Some(sp);
    setup.tail_ms = 300;
    setup.keep_heard = true;
    let call_sid = setup.start.call_sid.clone();
    let r = simulator::run_call(setup).await.unwrap();
    eprintln!("{}", simulator::format_table(&r));
    let sessions = double.wait_ended(1, Duration::from_secs(5)).await;
    assert_eq!(sessions.len(), 1);
    let s = sessions[0].clone();
    assert!(s.audio_in.len() >= audio.len());
    assert!(
        s.audio_in[..audio.len()] == audio[..],
        "caller μ-law appended untouched"
    );
    let detail = server.record(&call_sid, Duration::from_secs(5)).await;
    (r, s, detail)
}

/// The multi-turn session's outcome with server VAD: no errors, every mark echoed, every event
/// spec-clean, four answered turns (each within 450..=`max_latency_ms` of the caller's end),
/// the first one cut by the one barge-in.
fn check_four_turns_one_barge_in(r: &Report, s: &Session, max_latency_ms: u64) {
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(r.marks_sent, r.marks_echoed);
    check_spec(Api::Ga, s);
    assert_eq!(r.turns.len(), 4);
    for (i, t) in r.turns.iter().enumerate() {
        let lat = t
            .latency_ms
            .unwrap_or_else(|| panic!("turn {i} got no answer"));
        assert!(
            (450..=max_latency_ms).contains(&lat),
            "turn {i} latency {lat} ms"
        );
        assert_eq!(t.interrupted, i == 0, "turn {i}");
    }
    assert_eq!(r.clears, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_vad_multi_turn_through_the_media_stream() {
    tls();
    let double = RealtimeDouble::start(Script {
        turns: turns(),
        ..Script::default()
    })
    .await
    .unwrap();
    let server = start(settings(&double, &[])).await;
    let (r, s, detail) = call(&server, &double, 27_640).await;

    // 500 ms of server VAD silence + 50 ms to the first delta.
    check_four_turns_one_barge_in(&r, &s, 900);

    // One truncate, of the first answer, at exactly the heard audio the call recorded (from
    // mark echoes), within what was generated: the server accepted it.
    assert_eq!(s.truncates.len(), 1, "{:?}", s.truncates);
    let t = &s.truncates[0];
    assert_eq!(t.item_id, "item_a1");
    assert!(!t.refused && t.audio_end_ms <= t.generated_ms, "{t:?}");
    let turn0 = &detail.turns[0];
    assert!(turn0.interrupted);
    assert_eq!(
        Some(t.audio_end_ms as i64),
        turn0.heard_ms,
        "truncate = heard (marks)"
    );
    assert!(t.audio_end_ms > 0 && t.audio_end_ms.is_multiple_of(100));
    assert_eq!(s.sent_of("conversation.item.truncated").len(), 1);
    assert!(s.sent_of("error").is_empty(), "{:?}", s.sent_of("error"));
    // The transcripts, each in its own turn: the caller's words (input transcription) and
    // the answers; the cut answer keeps only its heard words, a prefix of what was generated.
    let said: Vec<(Option<&str>, Option<&str>)> = detail
        .turns
        .iter()
        .map(|t| (t.text.as_deref(), t.agent_text.as_deref()))
        .collect();
    let full = "I'm sorry to hear that. Let me look up your order and see where it is right now.";
    let heard0 = said[0].1.expect("the heard words of the cut answer");
    assert!(
        !heard0.is_empty() && heard0.len() < full.len() && full.starts_with(heard0),
        "{heard0:?}"
    );
    assert_eq!(
        said,
        [
            (
                Some("Hi, I'm calling about my order, it was supposed to arrive yesterday."),
                Some(heard0)
            ),
            (Some("And so my fellow Americans"), Some("Yes, go on.")),
            (Some("ask what you can do for your country"), Some("Noted.")),
            (Some("Okay, thank you. Goodbye."), Some("Goodbye!")),
        ]
    );
    // Voice-to-voice per turn from the marks, as the phone heard it.
    for (i, t) in detail.turns.iter().enumerate() {
        let phone = r.turns[i].agent_start_ms.unwrap() as i64 - t.user_end_ms;
        let heard = t.heard_latency_ms.expect("voice-to-voice from the marks");
        assert!(
            (heard - phone).abs() <= 25,
            "turn {i}: marks {heard} ms, phone {phone} ms"
        );
        assert!(t.first_audio_ms.is_some(), "turn {i}: {t:?}");
    }
    // Answers heard byte for byte; nothing of the first after the clear.
    let heard = r.heard.as_deref().unwrap();
    for (k, ms) in [(2u8, 2_500), (3, 2_500), (4, 2_000)] {
        assert!(
            find(heard, &audio(k, ms)).is_some(),
            "reply {k} heard byte for byte"
        );
    }
    let clear_ms = r.barge_ins[0].clear_ms as usize;
    assert!(
        !heard[clear_ms * 8..]
            .iter()
            .any(|b| (0x10..0x20).contains(b))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hark_turn_detection_with_beta_names() {
    tls();
    let double = RealtimeDouble::start(Script {
        beta: true,
        turns: turns(),
        ..Script::default()
    })
    .await
    .unwrap();
    let server = start(settings(
        &double,
        &[
            ("HARK_REALTIME_API", "beta"),
            // The beta spec lists only the preview models.
            ("HARK_REALTIME_MODEL", "gpt-4o-realtime-preview-2024-12-17"),
            ("HARK_REALTIME_TURN_DETECTION", "hark"),
        ],
    ))
    .await;
    let (r, s, detail) = call(&server, &double, 12_500).await;
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    check_spec(Api::Beta, &s);
    assert_eq!(
        s.received_of("session.update")[0]["session"]["turn_detection"],
        Value::Null
    );
    // hark committed each turn and asked for each answer.
    assert_eq!(s.received_of("input_audio_buffer.commit").len(), 2);
    assert_eq!(s.received_of("response.create").len(), 2);
    assert_eq!(r.turns.len(), 2);
    assert!(r.turns.iter().all(|t| t.latency_ms.is_some()));
    // hark's own VAD barged in on the first answer.
    assert_eq!(r.clears, 1);
    assert_eq!(s.truncates.len(), 1);
    let t = &s.truncates[0];
    assert!(!t.refused);
    assert_eq!(Some(t.audio_end_ms as i64), detail.turns[0].heard_ms);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_ends_the_call() {
    tls();
    let double = RealtimeDouble::start(Script {
        api_key: "sk-other".into(),
        ..Script::default()
    })
    .await
    .unwrap();
    let server = start(settings(&double, &[])).await;
    let mut setup = CallSetup::new(&server.url, Arc::from(vec![0xFFu8; 8 * 3_000]));
    setup.speed = 4.0;
    setup.tail_ms = 0;
    let r = simulator::run_call(setup).await.unwrap();
    assert_eq!(r.outbound_frames, 0);
    assert!(r.inbound_frames < 150, "ended early: {}", r.inbound_frames);
    assert_eq!(double.refused(), 1);
    server.stop().await;
}

/// The same call with both WebSockets re-segmented at random (1 byte to 1,000 bytes, each
/// segment held 0–20 ms, seeded): Twilio ↔ hark and hark ↔ the Realtime provider. The
/// provider pipe's reads (tokio-tungstenite's stream, which keeps partial frames in its own
/// buffer) and hark's Twilio socket must both survive it with the same turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_vad_multi_turn_through_chaos_on_both_websockets() {
    use hark_gateway::chaos::{ChaosConfig, ChaosProxy};
    tls();
    let double = RealtimeDouble::start(Script {
        turns: turns(),
        ..Script::default()
    })
    .await
    .unwrap();
    let base = double.base_url();
    let provider_addr = base
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("the double's address");
    let provider_proxy = ChaosProxy::start(provider_addr, ChaosConfig::new(11))
        .await
        .unwrap();
    let proxied_base = provider_proxy.url(&base).expect("ws:// URL");
    let env: Vec<(String, String)> = vec![
        ("OPENAI_API_KEY".into(), "sk-test".into()),
        ("HARK_REALTIME_URL".into(), proxied_base),
    ];
    let settings = AgentSettings::from_lookup(AgentKind::Realtime, &mut |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .expect("settings");
    let server = start(settings).await;
    let twilio_proxy = ChaosProxy::start(server.addr, ChaosConfig::new(12))
        .await
        .unwrap();
    let url = twilio_proxy.url(&server.url).expect("ws:// URL");
    let (r, s, detail) = call_at(&url, &server, &double, 27_640).await;
    // As without the proxies, plus up to 20 ms of hold per hop and direction.
    check_four_turns_one_barge_in(&r, &s, 1000);
    assert_eq!(s.truncates.len(), 1, "{:?}", s.truncates);
    assert_eq!(detail.turns.len(), 4);
    for p in [&provider_proxy, &twilio_proxy] {
        let st = p.stats();
        assert_eq!(st.connections, 1, "{st:?}");
        assert!(st.cuts > 100, "the proxy must really cut: {st:?}");
    }
}
