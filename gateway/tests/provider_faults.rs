//! Provider faults over real sockets (issue 12 §7): `hark serve` in process (port 0) with
//! `HARK_AGENT=cascade` and its shipped deadlines and filler, against the OpenAI-compatible
//! double at realistic latencies (STT 150 ms, TTFT 300 ms, 25 ms per token, TTS first byte
//! 150 ms) with one injected fault per call, each call made by the Twilio simulator with the
//! first caller turn of the real-speech session:
//!
//! - hangs: STT, LLM or TTS never answers;
//! - stalls after one event: the first SSE event (for the LLM, its `role` chunk) or the first
//!   audio chunk, then nothing, the connection held open;
//! - TTS dropped after 100 ms of audio (4800 bytes), on every request of the answer;
//! - 200 with `Content-Type: text/html` and `<html>502 Bad Gateway</html>`, for each stage;
//! - LLM 429 with `Retry-After: 1`.
//!
//! For each, measured at the virtual phone on the media clock: from hark's end-of-turn decision
//! (the record's end of the caller's last voiced frame plus the endpointing silence,
//! `HARK_STOP_MS`) to the first agent audio the caller heard: at most 2.0 s. What was heard
//! first (the filler or the answer) is read from the call record, and each fault is counted in
//! `/metrics`, in `hark_provider_faults_total` and as the connector's outcome in
//! `hark_provider_requests_total{stage,outcome}`. Run with `--nocapture` for the per-fault
//! figures.

mod in_process;

use std::sync::Arc;
use std::time::Duration;

use hark_gateway::agents::AgentSettings;
use hark_gateway::agents::cascade::Settings;
use hark_gateway::config::{AgentKind, Config};
use hark_gateway::doubles::openai::{
    self, Endpoint, Fault, FaultRule, Latency, OpenAiDouble, Reply, Rule, Script,
};
use hark_gateway::simulator::{self, CallSetup, Report};
use in_process::{Server, memory_api};
use serde_json::Value;

const REPLY: &str = "I'm sorry to hear that. Let me check your order.";
const GREETING: &str = "Hello!";
const FILLER: &str = "One moment.";

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

fn first_transcript() -> String {
    let text = std::fs::read_to_string(fixture("sessions/multi-turn.json")).unwrap();
    let ann: Value = serde_json::from_str(&text).unwrap();
    ann["segments"][0]["text"].as_str().unwrap().to_string()
}

async fn serve(double: &OpenAiDouble) -> (Server, u64) {
    let vars: Vec<(String, String)> = vec![
        ("OPENAI_BASE_URL".into(), double.base_url()),
        ("OPENAI_API_KEY".into(), "sk-double".into()),
        ("HARK_GREETING".into(), GREETING.into()),
    ];
    let settings =
        Settings::from_lookup(&mut |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap();
    assert_eq!(settings.config.filler_text.as_deref(), Some(FILLER));
    let config = Config {
        workers: 1,
        agent: AgentKind::Cascade,
        agent_settings: AgentSettings::Cascade(settings),
        ..Config::default()
    };
    let stop_ms = u64::from(config.call.turn.stop_ms);
    (
        Server::start(config, Some(memory_api().await)).await,
        stop_ms,
    )
}

/// The first caller turn of the multi-turn session (1000–5100 ms), then silence long enough
/// to hear the filler and the answer (3.3 s) or the fallback.
fn setup(url: &str) -> CallSetup {
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(6_600 * 8);
    let mut s = CallSetup::new(url, Arc::from(audio));
    s.tail_ms = 6_000;
    s.keep_heard = true;
    s.close_timeout = Duration::from_secs(10);
    s
}

/// What the caller should hear first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Filler,
    Answer,
}

struct Case {
    name: &'static str,
    rule: FaultRule,
    first: First,
    /// `(provider, kind)` counted in `hark_provider_faults_total`.
    fault: (&'static str, &'static str),
}

/// Speech requests before the answer: the greeting, the fallback phrase and the filler.
const SPEECH_AT_START: usize = 3;

fn on(endpoint: Endpoint, fault: Fault) -> FaultRule {
    let skip = if endpoint == Endpoint::Speech {
        SPEECH_AT_START
    } else {
        0
    };
    FaultRule {
        endpoint,
        skip,
        times: 1,
        fault,
    }
}

struct Outcome {
    name: &'static str,
    /// hark's end-of-turn decision → first audio heard at the phone, ms of media time.
    heard_after_ms: i64,
    agent_text: String,
    report: Report,
    double: OpenAiDouble,
}

async fn one_call(c: &Case) -> Outcome {
    let double = openai::start(Script {
        latency: Latency::REALISTIC,
        transcripts: vec![first_transcript()],
        rules: vec![Rule::new("calling about my order", Reply::text(REPLY))],
        faults: vec![c.rule.clone()],
        ..Script::default()
    })
    .await;
    let (server, stop_ms) = serve(&double).await;
    let s = setup(&server.url);
    let call_sid = s.start.call_sid.clone();
    let report = tokio::time::timeout(Duration::from_secs(40), simulator::run_call(s))
        .await
        .expect("the call ends")
        .unwrap();
    let detail = server.record(&call_sid, Duration::from_secs(10)).await;
    server.stop().await;
    let name = c.name;
    assert_eq!(detail.turns.len(), 1, "{name}: {:?}", detail.turns);
    let turn = &detail.turns[0];
    // hark decided the turn had ended `stop_ms` after the caller's last voiced frame.
    let decided_ms = turn.user_end_ms + stop_ms as i64;
    let heard_ms = report
        .turns
        .first()
        .and_then(|t| t.agent_start_ms)
        .unwrap_or_else(|| panic!("{name}: nothing heard after the turn: {report:?}"));
    Outcome {
        name,
        heard_after_ms: heard_ms as i64 - decided_ms,
        agent_text: turn.agent_text.clone().unwrap_or_default(),
        report,
        double,
    }
}

fn counted(metrics: &str, provider: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("hark_provider_faults_total{")
                && l.contains(&format!("provider=\"{provider}\""))
                && l.contains(&format!("kind=\"{kind}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `hark_provider_requests_total{stage,outcome}` in the `/metrics` text (0 when absent).
fn requests(metrics: &str, stage: &str, outcome: &str) -> f64 {
    sample(
        metrics,
        "hark_provider_requests_total{",
        &[("stage", stage), ("outcome", outcome)],
    )
}

/// The value of the first sample of `prefix` with all `labels` (0 when absent).
fn sample(metrics: &str, prefix: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(prefix)
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The connectors counted each request's outcome by stage (increments over the run: the
/// recorder is process-wide).
fn assert_request_outcomes(before: &str, after: &str) {
    let moved = |stage, outcome| requests(after, stage, outcome) - requests(before, stage, outcome);
    // Every stage answered well at least once; the injected faults, as the connector saw them.
    let want = [
        ("stt", "ok"),
        ("llm", "ok"),
        ("tts", "ok"),
        ("llm", "status"),
        ("stt", "content_type"),
        ("llm", "content_type"),
        ("tts", "content_type"),
        ("tts", "dropped"),
        // A hung or stalled request is closed by the agent's deadline first.
        ("stt", "cancelled"),
        ("llm", "cancelled"),
        ("tts", "cancelled"),
    ];
    for (stage, outcome) in want {
        assert!(
            moved(stage, outcome) >= 1.0,
            "{stage} {outcome} not counted\n{after}"
        );
    }
    // hark's own requests are well-formed, and the doubles were up throughout.
    for stage in ["stt", "llm", "tts"] {
        for outcome in ["request", "connect"] {
            assert_eq!(moved(stage, outcome), 0.0, "{stage} {outcome}\n{after}");
        }
    }
    // The 429 and the 200s all had response headers.
    let timed = |m: &str| {
        sample(
            m,
            "hark_provider_response_seconds_count{",
            &[("stage", "llm")],
        )
    };
    assert!(
        timed(after) - timed(before) >= moved("llm", "ok") + moved("llm", "status"),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_every_provider_fault_the_caller_hears_something_within_two_seconds() {
    use Endpoint::*;
    use First::*;
    let cases = vec![
        Case {
            name: "stt hangs",
            rule: on(Transcriptions, Fault::Hang),
            first: Filler,
            fault: ("stt", "timeout"),
        },
        Case {
            name: "llm hangs",
            rule: on(ChatCompletions, Fault::Hang),
            first: Filler,
            fault: ("llm", "timeout"),
        },
        Case {
            name: "tts hangs",
            rule: on(Speech, Fault::Hang),
            first: Filler,
            fault: ("tts", "timeout"),
        },
        Case {
            name: "stt stalls after one event",
            rule: on(Transcriptions, Fault::StallAfter(1)),
            first: Filler,
            fault: ("stt", "stall"),
        },
        Case {
            name: "llm stalls after one event",
            rule: on(ChatCompletions, Fault::StallAfter(1)),
            first: Filler,
            fault: ("llm", "timeout"),
        },
        Case {
            name: "tts stalls after one chunk",
            rule: on(Speech, Fault::StallAfter(1)),
            first: Answer,
            fault: ("tts", "stall"),
        },
        Case {
            name: "tts drops after 100 ms, every time",
            rule: FaultRule {
                times: usize::MAX,
                ..on(Speech, Fault::DropAfterBytes(4_800))
            },
            first: Answer,
            fault: ("tts", "dropped"),
        },
        Case {
            name: "stt 200 text/html",
            rule: on(Transcriptions, Fault::Html),
            first: Answer,
            fault: ("stt", "content_type"),
        },
        Case {
            name: "llm 200 text/html",
            rule: on(ChatCompletions, Fault::Html),
            first: Answer,
            fault: ("llm", "content_type"),
        },
        Case {
            name: "tts 200 text/html",
            rule: on(Speech, Fault::Html),
            first: Answer,
            fault: ("tts", "content_type"),
        },
        Case {
            name: "llm 429 retry-after 1 s",
            rule: on(
                ChatCompletions,
                Fault::Status {
                    status: 429,
                    retry_after_s: Some(1),
                    retry_after_ms: None,
                },
            ),
            first: Filler,
            fault: ("llm", "http_429"),
        },
    ];
    let before = hark_gateway::metrics::render();
    // Two at a time: the 2 s budget is the spec, so keep the shared machine's load moderate.
    let mut outcomes = Vec::new();
    for pair in cases.chunks(2) {
        let got = futures_util::future::join_all(pair.iter().map(one_call)).await;
        outcomes.extend(got);
    }
    let metrics = hark_gateway::metrics::render();
    let mut lines = Vec::new();
    for (c, o) in cases.iter().zip(&outcomes) {
        let name = o.name;
        lines.push(format!(
            "{name:<36} end of turn → first heard {:>5} ms; heard: {:?}",
            o.heard_after_ms, o.agent_text
        ));
        assert!(
            (0..=2_000).contains(&o.heard_after_ms),
            "{name}: first audio heard {} ms after hark's end of the turn",
            o.heard_after_ms
        );
        match c.first {
            Filler => assert!(
                o.agent_text.starts_with(FILLER),
                "{name}: {:?}",
                o.agent_text
            ),
            Answer => {
                assert!(
                    o.agent_text.starts_with("I'm"),
                    "{name}: {:?}",
                    o.agent_text
                );
                assert!(!o.agent_text.contains(FILLER), "{name}: {:?}", o.agent_text);
            }
        }
        // Then the whole answer (but for the TTS that always breaks: see below).
        if !name.contains("every time") {
            assert!(
                o.agent_text.ends_with(REPLY),
                "{name}: the answer followed: {:?}",
                o.agent_text
            );
        }
        // The filler was rendered when the call started, after the greeting and fallback.
        let speech = o.double.exchanges_with(Speech);
        assert!(
            speech[..SPEECH_AT_START]
                .iter()
                .any(|e| e.request["input"] == FILLER),
            "{name}: filler not rendered at the start"
        );
        // HTML is never taken as the caller's words.
        assert!(
            o.double
                .exchanges_with(ChatCompletions)
                .iter()
                .all(|e| !e.request.to_string().contains("Bad Gateway")),
            "{name}: HTML went to the model"
        );
        assert!(
            counted(&metrics, c.fault.0, c.fault.1) >= 1.0,
            "{name}: {:?} not counted\n{metrics}",
            c.fault
        );
        assert!(o.report.errors.is_empty(), "{name}: {:?}", o.report.errors);
    }
    // A TTS stream broken after 100 ms of audio is asked again for the rest of its sentence,
    // and when that breaks too, the answer ends with the fallback phrase.
    let drop = &outcomes[6];
    let inputs: Vec<String> = drop
        .double
        .exchanges_with(Speech)
        .iter()
        .map(|e| e.request["input"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        inputs.contains(&"sorry to hear that.".to_string()),
        "{inputs:?}"
    );
    assert!(
        drop.agent_text.contains("Sorry, I'm having trouble"),
        "{:?}",
        drop.agent_text
    );
    assert_request_outcomes(&before, &metrics);
    eprintln!("{}", lines.join("\n"));
    for o in outcomes {
        o.double.stop().await;
    }
}
