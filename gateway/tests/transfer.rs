//! Call transfer end to end: `hark serve` (in process, port 0) with the cascade agent against
//! the OpenAI-compatible double, Twilio's REST API played by the spec-checked Twilio double,
//! called by the Twilio simulator with the first turn of the real-speech session.
//!
//! The model answers the caller with a sentence and a `transfer_call` tool call. hark says the
//! sentence, waits until the caller has heard all of it (mark echoes), then redirects the call
//! with `POST …/Calls/{CallSid}.json` and `Twiml=<Response><Dial><Number>…`
//! (`UpdateCallRequest`, checked against Twilio's OpenAPI spec by the double), and closes the
//! stream. A failing update is tried once more; if that fails too, the caller is told and the
//! conversation goes on, and the call record says why.

mod in_process;
mod twilio_double;

use std::sync::Arc;
use std::time::Duration;

use hark_gateway::agents::AgentSettings;
use hark_gateway::agents::cascade::Settings;
use hark_gateway::api::store::CallDetail;
use hark_gateway::config::{AgentKind, Config};
use hark_gateway::doubles::openai::{self, Endpoint, Latency, OpenAiDouble, Reply, Rule, Script};
use hark_gateway::simulator::{self, CallSetup, Report, UserSpeech};
use in_process::Server;
use serde_json::json;
use twilio_double::Double;
use twilio_double::harness::{API_KEY_SID, API_SECRET, env_with, state};

const TO: &str = "+14155550100";
const SAID: &str = "Let me put you through to a colleague.";

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

async fn serve(openai: &OpenAiDouble, twilio: &Double) -> Server {
    let vars = [
        ("OPENAI_BASE_URL".to_string(), openai.base_url()),
        ("OPENAI_API_KEY".to_string(), "sk-double".to_string()),
        ("HARK_GREETING".to_string(), "off".to_string()),
        ("HARK_TRANSFER_ALLOW".to_string(), TO.to_string()),
    ];
    let settings =
        Settings::from_lookup(&mut |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap();
    let config = Config {
        workers: 1,
        agent: AgentKind::Cascade,
        agent_settings: AgentSettings::Cascade(settings),
        ..Config::default()
    };
    let api = state(env_with(&[("HARK_TWILIO_API_BASE", &twilio.base)])).await;
    Server::start(config, Some(api)).await
}

/// The first caller turn of the multi-turn session (1000–5100 ms), then silence.
fn setup(url: &str) -> CallSetup {
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(6_000 * 8);
    let mut s = CallSetup::new(url, Arc::from(audio));
    s.speech = Some(
        UserSpeech::from_annotation_json(
            &json!({"segments": [{"start_ms": 1000, "end_ms": 5100}]}).to_string(),
        )
        .unwrap(),
    );
    // Long enough to hear the answer: the stream must end by hark's transfer, not by `stop`.
    s.tail_ms = 10_000;
    s.keep_heard = true;
    s
}

async fn doubles() -> (OpenAiDouble, Double) {
    let script = Script {
        latency: Latency::REALISTIC,
        transcripts: vec![
            "Hi, I'm calling about my order, it was supposed to arrive yesterday.".into(),
        ],
        rules: vec![Rule::new(
            "calling about my order",
            Reply::text(SAID).with_tool("transfer_call", format!(r#"{{"number":"{TO}"}}"#)),
        )],
        ..Script::default()
    };
    let openai = openai::start(script).await;
    let twilio = Double::start(API_KEY_SID, API_SECRET).await;
    (openai, twilio)
}

/// Runs one call; returns the simulator's report, the call's record and its CallSid.
async fn call(server: &Server) -> (Report, CallDetail, String) {
    let s = setup(&server.url);
    let call_sid = s.start.call_sid.clone();
    let r = tokio::time::timeout(Duration::from_secs(30), simulator::run_call(s))
        .await
        .expect("the call ends")
        .unwrap();
    eprintln!("{}", simulator::format_table(&r));
    let detail = server.record(&call_sid, Duration::from_secs(10)).await;
    (r, detail, call_sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_redirects_the_call_after_the_caller_heard_the_sentence() {
    let (openai, twilio) = doubles().await;
    let server = serve(&openai, &twilio).await;
    let (r, detail, call_sid) = call(&server).await;
    let summary = &detail.summary;

    // The stream ended from hark's side (the real Twilio would also send `stop`), before the
    // simulator's 10 s tail ran out.
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(
        r.errors[0].contains("closed the WebSocket"),
        "{:?}",
        r.errors
    );
    assert!(r.duration_ms < 14_000, "ended at {} ms", r.duration_ms);

    // The sentence played to its end, uncut, and the stream ended right after it.
    assert_eq!(r.turns.len(), 1);
    assert!(!r.turns[0].interrupted);
    assert_eq!(r.clears, 0);
    let spoken_ms = (SAID.chars().count() as u64 * 70) as f64;
    let heard = r.heard_audio_ms as f64;
    assert!(
        (heard - spoken_ms).abs() < 0.1 * spoken_ms,
        "heard {heard} ms of a {spoken_ms} ms sentence"
    );
    assert_eq!(r.marks_sent, r.marks_echoed);
    let played_to = r.turns[0].agent_start_ms.unwrap() + r.heard_audio_ms;
    assert!(
        (played_to..played_to + 500).contains(&r.duration_ms),
        "answer played until {played_to} ms, stream ended at {} ms",
        r.duration_ms
    );

    // One call update, to this call, with the Dial TwiML; valid by Twilio's spec.
    twilio.assert_clean();
    let updates = twilio.requests_to("POST", "/Calls/{Sid}.json");
    assert_eq!(updates.len(), 1, "{updates:?}");
    let u = &updates[0];
    assert!(u.path.ends_with(&format!("/Calls/{}.json", call_sid)));
    assert_eq!(
        u.form,
        vec![(
            "Twiml".to_string(),
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial><Number>{TO}</Number></Dial></Response>"
            )
        )]
    );
    assert_eq!(summary["ended"], format!("transferred to {TO}"));
    // The record's turn: the caller's words (speech-to-text) and the answer as heard.
    assert_eq!(detail.turns.len(), 1);
    assert_eq!(
        detail.turns[0].text.as_deref(),
        Some("Hi, I'm calling about my order, it was supposed to arrive yesterday.")
    );
    assert_eq!(detail.turns[0].agent_text.as_deref(), Some(SAID));
    // Its telemetry: the double's latencies per stage, and voice-to-voice as the phone heard it.
    let t = &detail.turns[0];
    let near = |got: Option<i64>, want: i64, slack: i64| {
        got.is_some_and(|g| (want..=want + slack).contains(&g))
    };
    // The slack is for a loaded machine (tests run in parallel on 2 cores): the point is that
    // each stage is measured on its own, not how fast this machine is (see `hark bench`).
    let lat = Latency::REALISTIC;
    assert!(near(t.stt_ms, lat.stt_ms as i64, 400), "stt {:?}", t.stt_ms);
    assert!(
        near(t.llm_ttft_ms, lat.ttft_ms as i64, 400),
        "ttft {:?}",
        t.llm_ttft_ms
    );
    assert!(
        near(t.tts_ttfb_ms, lat.ttfb_ms as i64, 400),
        "ttfb {:?}",
        t.tts_ttfb_ms
    );
    let phone = r.turns[0].agent_start_ms.unwrap() as i64 - t.user_end_ms;
    let heard = t.heard_latency_ms.expect("voice-to-voice from the marks");
    eprintln!("voice-to-voice: {heard} ms by the marks, {phone} ms at the phone; turn {t:?}");
    assert!(
        (heard - phone).abs() <= 25,
        "marks say {heard} ms, the phone {phone} ms"
    );
    assert!(t.latency_ms.is_some_and(|l| l <= heard));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_transfer_is_retried_once_then_the_caller_is_told_and_the_call_goes_on() {
    let (openai, twilio) = doubles().await;
    // 503 surely was not applied: tried again. 500 may have been: not repeated.
    let unavailable = json!({"code": 20503, "message": "Service Unavailable", "more_info": "https://www.twilio.com/docs/errors/20503", "status": 503});
    let error = json!({"code": 20500, "message": "Internal Server Error", "more_info": "https://www.twilio.com/docs/errors/20500", "status": 500});
    twilio.fail_next_update(503, unavailable);
    twilio.fail_next_update(500, error);
    let server = serve(&openai, &twilio).await;
    let (r, detail, _) = call(&server).await;

    // hark did not end the call: the simulator played its whole 10 s tail and sent `stop`.
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.duration_ms >= 15_000, "ended at {} ms", r.duration_ms);
    twilio.assert_clean();
    assert_eq!(twilio.requests_to("POST", "/Calls/{Sid}.json").len(), 2);
    // The caller heard the transfer sentence, then the failed-transfer sentence (TTS'd after
    // the second refusal), both whole.
    let tts: Vec<String> = openai
        .exchanges_with(Endpoint::Speech)
        .iter()
        .map(|x| x.request["input"].as_str().unwrap_or_default().to_string())
        .collect();
    let sorry = "Sorry, I couldn't transfer your call right now.";
    let said_at = tts.iter().position(|t| t == SAID);
    let sorry_at = tts.iter().position(|t| t == sorry);
    assert!(
        said_at.is_some() && sorry_at.is_some() && said_at < sorry_at,
        "{tts:?}"
    );
    let spoken_ms = ((SAID.chars().count() + sorry.chars().count()) as u64 * 70) as f64;
    let heard = r.heard_audio_ms as f64;
    assert!(
        heard >= 0.9 * spoken_ms,
        "heard {heard} ms, expected ≥ {spoken_ms}"
    );
    assert_eq!(r.clears, 0);
    let ended = detail.summary["ended"].as_str().unwrap();
    assert!(
        ended.starts_with("closed: Stopped (after: transfer to ")
            && ended.contains(&format!("{TO} failed"))
            && ended.contains("20500"),
        "{ended}"
    );
    server.stop().await;
}
