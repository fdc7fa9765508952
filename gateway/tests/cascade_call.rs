//! End to end, real sockets on 127.0.0.1, real time: `hark serve` (in-process, port 0) with
//! `HARK_AGENT=cascade` against the OpenAI-compatible double at realistic latencies (STT
//! 150 ms, TTFT 300 ms, 25 ms per token, TTS first byte 150 ms), called by the Twilio
//! simulator with the multi-turn real-speech session:
//!
//! - the greeting is heard, and every turn is answered, the first sentence playing before the
//!   model has finished writing the answer;
//! - the caller barges in on the first answer: its in-flight requests are cancelled and the
//!   history sent with the next turn keeps only what the caller heard, marked as interrupted;
//! - the caller says goodbye: the model calls `end_call`, hark says it and hangs up;
//! - the stage latencies reported in `/metrics` match the double's configured latencies;
//! - in a second call, the LLM fails with 503 until retries run out: the caller hears the
//!   fallback phrase rendered at call start, and the faults are counted in `/metrics`.
//!
//! Voice-to-voice at the phone is printed per turn (run with `--nocapture`).

mod in_process;
use in_process::{fixture, speech};

use std::sync::Arc;
use std::time::Duration;

use hark_gateway::agents::AgentSettings;
use hark_gateway::agents::cascade::Settings;
use hark_gateway::config::{AgentKind, Config};
use hark_gateway::doubles::openai::{
    self, Endpoint, Fault, FaultRule, Latency, OpenAiDouble, Reply, Rule, Script,
};
use hark_gateway::simulator::{self, CallSetup, Report};
use in_process::Server;
use serde_json::Value;

const REPLY_A: &str = "I'm sorry to hear that. Let me check the status of your order right away. \
It looks like it left our warehouse on Monday and is now with the local courier.";
const REPLY_B: &str = "Could you give me your order number, please?";
const REPLY_C: &str = "Thank you. I will look into it.";
const REPLY_D: &str = "You're welcome, goodbye!";
const GREETING: &str = "Hello!";

async fn serve(double: &OpenAiDouble, extra: &[(&str, &str)]) -> Server {
    let base = double.base_url();
    let mut vars: Vec<(String, String)> = vec![
        ("OPENAI_BASE_URL".into(), base),
        ("OPENAI_API_KEY".into(), "sk-double".into()),
        ("HARK_GREETING".into(), GREETING.into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings =
        Settings::from_lookup(&mut |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap();
    let config = Config {
        workers: 1,
        agent: AgentKind::Cascade,
        agent_settings: AgentSettings::Cascade(settings),
        ..Config::default()
    };
    Server::start(config, None).await
}

fn segment_texts() -> Vec<String> {
    let text = std::fs::read_to_string(fixture("sessions/multi-turn.json")).unwrap();
    let ann: Value = serde_json::from_str(&text).unwrap();
    ann["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect()
}

fn setup(url: &str, until_ms: Option<u64>, tail_ms: u64) -> CallSetup {
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    if let Some(u) = until_ms {
        audio.truncate(u as usize * 8);
    }
    let mut s = CallSetup::new(url, Arc::from(audio));
    s.speech = Some(speech("multi-turn"));
    s.tail_ms = tail_ms;
    s.keep_heard = true;
    s.close_timeout = Duration::from_secs(10);
    s
}

/// Media ms of the first agent audio the caller heard.
fn first_heard_ms(r: &Report) -> u64 {
    let heard = r.heard.as_deref().unwrap_or(&[]);
    heard.iter().position(|&b| b != 0xFF).unwrap_or(usize::MAX) as u64 / 8
}

/// `(sum, count)` of a summary/histogram series in the Prometheus text.
fn series(text: &str, name: &str, label: &str) -> (f64, f64) {
    let get = |suffix: &str| {
        text.lines()
            .find(|l| {
                (l.starts_with(&format!("{name}_{suffix}{{"))
                    || l.starts_with(&format!("{name}_{suffix} ")))
                    && l.contains(label)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("sum"), get("count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_call_over_the_media_stream_against_the_openai_double() {
    let lat = Latency::REALISTIC;
    let script = Script {
        latency: lat,
        transcripts: segment_texts(),
        rules: vec![
            Rule::new("calling about my order", Reply::text(REPLY_A)),
            Rule::new("fellow americans", Reply::text(REPLY_B)),
            Rule::new("your country", Reply::text(REPLY_C)),
            Rule::new(
                "goodbye",
                Reply::text(REPLY_D)
                    .with_tool("end_call", r#"{"reason":"the caller said goodbye"}"#),
            ),
        ],
        ..Script::default()
    };
    let good = openai::start(script.clone()).await;
    let faulty = openai::start(Script {
        faults: vec![FaultRule::next(
            Endpoint::ChatCompletions,
            3,
            Fault::status(503),
        )],
        ..script
    })
    .await;
    let s1 = serve(&good, &[]).await;
    let s2 = serve(&faulty, &[]).await;
    let (full, fault) = tokio::join!(
        simulator::run_call(setup(&s1.url, None, 300)),
        // The first turn only, and time to hear the fallback.
        simulator::run_call(setup(&s2.url, Some(6_600), 6_000)),
    );
    let full = full.unwrap();
    let fault = fault.unwrap();
    eprintln!("{}", simulator::format_table(&full));
    eprintln!("{}", simulator::format_table(&fault));

    // ---- The full call.
    // The greeting is heard first, one TTS first byte (plus loopback) after the start.
    let greeting_ms = first_heard_ms(&full);
    eprintln!("greeting: first audio heard at {greeting_ms} ms");
    assert!(
        (lat.ttfb_ms..lat.ttfb_ms + 350).contains(&greeting_ms),
        "greeting heard at {greeting_ms} ms"
    );
    // The call ended with hark's hang-up after the goodbye (the simulator notes that the
    // server closed before `stop`, as Twilio would see it).
    assert_eq!(full.errors.len(), 1, "{:?}", full.errors);
    assert!(
        full.errors[0].contains("closed the WebSocket"),
        "{:?}",
        full.errors
    );
    assert_eq!(full.marks_sent, full.marks_echoed);
    assert_eq!(full.turns.len(), 4);
    let mut v2v = Vec::new();
    for (i, t) in full.turns.iter().enumerate() {
        let l = t
            .latency_ms
            .unwrap_or_else(|| panic!("turn {i} got no answer"));
        v2v.push(l);
        assert_eq!(t.interrupted, i == 0, "turn {i}");
    }
    // Streaming: the answer starts before the model could have finished writing it. Answer A
    // has 30 words; written in full it would take TTFT + 30 × 25 ms.
    let a_words = REPLY_A.split(' ').count() as u64;
    let unstreamed = 600 + lat.stt_ms + lat.ttft_ms + a_words * lat.token_ms + lat.ttfb_ms;
    // Expected with sentence streaming: endpointing + STT + TTFT + the rest of the first
    // sentence's words + TTS first byte.
    let first_words = ["I'm sorry to hear that.", REPLY_B, "Thank you.", REPLY_D]
        .map(|s| s.split(' ').count() as u64);
    let expected: Vec<u64> = first_words
        .iter()
        .map(|w| 600 + lat.stt_ms + lat.ttft_ms + (w - 1) * lat.token_ms + lat.ttfb_ms)
        .collect();
    eprintln!(
        "voice-to-voice at the phone per turn (ms): {v2v:?}; expected from endpointing (600) + \
         the double's latencies: {expected:?}; the rest (VAD vs annotation, loopback, pacing, \
         engine): {:?}",
        v2v.iter()
            .zip(&expected)
            .map(|(l, e)| *l as i64 - *e as i64)
            .collect::<Vec<_>>()
    );
    assert!(v2v[0] < unstreamed, "turn A {} ms ≥ {unstreamed}", v2v[0]);
    for (l, e) in v2v.iter().zip(&expected) {
        assert!((e - 200..e + 600).contains(l), "{v2v:?} vs {expected:?}");
    }
    let chats = good.exchanges_with(Endpoint::ChatCompletions);
    let speech = good.exchanges_with(Endpoint::Speech);
    assert_eq!(chats.len(), 4);
    // The first sentence of answer A went to TTS while the chat stream was still running.
    let a_done = chats[0].at + Duration::from_millis(lat.ttft_ms + a_words * lat.token_ms);
    let a_tts = speech
        .iter()
        .find(|e| e.request["input"] == "I'm sorry to hear that.")
        .expect("first sentence synthesised");
    assert!(
        a_tts.at < a_done,
        "TTS of the first sentence after the LLM finished"
    );
    // The greeting and the fallback phrase were synthesised at the start (in either order).
    let first_two: Vec<&str> = speech[..2]
        .iter()
        .map(|e| e.request["input"].as_str().unwrap())
        .collect();
    assert!(first_two.contains(&GREETING), "{first_two:?}");
    assert!(
        first_two.iter().any(|t| t.starts_with("Sorry")),
        "{first_two:?}"
    );

    // Barge-in on answer A: turn B's request carries only what was heard of it.
    assert_eq!(full.clears, 1);
    assert_eq!(full.barge_ins[0].speech_start_ms, Some(6800));
    let m = chats[1].request["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "assistant", "user", "assistant", "user"]);
    assert_eq!(m[1]["content"], GREETING);
    let cut = m[3]["content"].as_str().unwrap();
    eprintln!("history after the barge-in: {cut:?}");
    let heard = cut
        .strip_suffix("[interrupted by the caller]")
        .expect("marked as interrupted")
        .trim();
    assert!(REPLY_A.starts_with(heard), "{heard:?}");
    assert!(!cut.contains("Monday"), "{cut:?}");
    // Turn C's request has answer B whole.
    let m = chats[2].request["messages"].as_array().unwrap();
    assert!(m.iter().any(|x| x["content"] == REPLY_B));
    // Goodbye: said, then the call ended.
    assert!(speech.iter().any(|e| e.request["input"] == REPLY_D));
    let last = full.turns.last().unwrap();
    assert!(last.agent_audio_ms >= 1_000, "{last:?}");

    // ---- The faulty call: three 503s (one try + two retries), then the fallback phrase.
    assert!(fault.errors.is_empty(), "{:?}", fault.errors);
    let fchats = faulty.exchanges_with(Endpoint::ChatCompletions);
    assert_eq!(fchats.len(), 3);
    assert!(fchats.iter().all(|e| e.status == 503));
    // Backoff 150 ms, then 300 ms.
    let gaps: Vec<u64> = fchats
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis() as u64)
        .collect();
    eprintln!("retries after 503 at intervals of {gaps:?} ms");
    assert!(
        gaps[0] >= 150 + lat.ttft_ms && gaps[1] >= 300 + lat.ttft_ms,
        "{gaps:?}"
    );
    let t = &fault.turns[0];
    let l = t.latency_ms.expect("the fallback answers the turn");
    eprintln!(
        "fallback heard {l} ms after the caller stopped, {} ms long",
        t.agent_audio_ms
    );
    let fallback_ms = hark_gateway::doubles::openai::speech_pcm(
        &hark_engine::agents::cascade::CascadeConfig::default().fallback_text,
        70,
    )
    .len() as u64
        / 24;
    assert!(
        t.agent_audio_ms.abs_diff(fallback_ms) < 100,
        "heard {} ms of the {fallback_ms} ms fallback",
        t.agent_audio_ms
    );

    // ---- Telemetry in /metrics: stage latencies match the double's; faults are counted.
    let text = hark_gateway::metrics::render();
    for (stage, want, n_min) in [
        ("stt", lat.stt_ms, 5.0),
        ("llm_ttft", lat.ttft_ms, 4.0),
        ("tts_ttfb", lat.ttfb_ms, 4.0),
        ("greeting", lat.ttfb_ms, 2.0),
    ] {
        let (sum, count) = series(
            &text,
            "hark_stage_latency_seconds",
            &format!("stage=\"{stage}\""),
        );
        assert!(count >= n_min, "{stage}: {count} reports\n{text}");
        let avg_ms = sum / count * 1000.0;
        eprintln!("{stage}: mean {avg_ms:.0} ms over {count} (double: {want} ms)");
        assert!(
            avg_ms >= want as f64 - 1.0 && avg_ms < want as f64 + 120.0,
            "{stage}: mean {avg_ms} ms, double {want} ms"
        );
    }
    let (sum, count) = series(&text, "hark_engine_message_seconds", "");
    eprintln!(
        "engine: {:.1} µs per Twilio message on average ({count} sampled)",
        sum / count.max(1.0) * 1e6
    );
    let faults = text
        .lines()
        .find(|l| {
            l.starts_with("hark_provider_faults_total{")
                && l.contains("provider=\"llm\"")
                && l.contains("kind=\"http_5xx\"")
        })
        .unwrap_or_else(|| panic!("no fault counter\n{text}"));
    assert!(faults.ends_with(" 3"), "{faults}");
    assert!(
        text.contains("hark_tool_calls_total{name=\"end_call\"} 1"),
        "{text}"
    );

    tokio::join!(s1.stop(), s2.stop());
    good.stop().await;
    faulty.stop().await;
}
