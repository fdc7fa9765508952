//! OpenTelemetry traces over OTLP/HTTP (feature `otlp`), end to end on 127.0.0.1: an OTLP
//! receiver in the test (`POST /v1/traces`, protobuf decoded with opentelemetry-proto's
//! types), hark's logs and traces started towards it, `hark serve` in process with
//! `HARK_AGENT=cascade` against the OpenAI-compatible double, and one simulated Twilio call
//! (the multi-turn real-speech session's first turns). The receiver then holds:
//!
//! - one `call` span, a root, with the call's `call_sid` and `stream_sid`, under the
//!   configured `service.name`;
//! - `turn` spans, children of the call span, with the turn's number, media times and
//!   latency;
//! - `provider_request` spans (the greeting's TTS, then STT, LLM and TTS per turn), children
//!   of the call span, with `kind`, `stage`, the double's address and the path without query.
//!
//! `cargo test -p hark-gateway --features otlp --test otlp`. The subscriber is the process's
//! global default (the call workers' threads must see it, and `set_default` is per thread):
//! hence one test function in this binary.

mod in_process;
use in_process::{Server, fixture, speech};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hark_gateway::agents::AgentSettings;
use hark_gateway::agents::cascade::Settings;
use hark_gateway::config::{AgentKind, Config, LogFormat};
use hark_gateway::doubles::openai::{self, Latency, Reply, Rule, Script};
use hark_gateway::simulator::{self, CallSetup};
use hark_gateway::telemetry::{self, OtlpSettings};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;

/// A span as received: its resource's `service.name`, ids, name, attributes (as text).
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attrs: HashMap<String, String>,
    start_ns: u64,
    end_ns: u64,
}

impl Got {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The OTLP/HTTP receiver: every span of every export, and the content types seen.
#[derive(Default)]
struct Received {
    spans: Vec<Got>,
    content_types: Vec<String>,
}

async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut g = g.lock().unwrap();
                    let ct = headers.get("content-type").map(|v| v.to_str().unwrap());
                    g.content_types.push(ct.unwrap_or("").to_string());
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .map(|a| text(a.value.as_ref()))
                            .unwrap_or_default();
                        for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                            g.spans.push(Got {
                                service: service.clone(),
                                trace_id: s.trace_id,
                                span_id: s.span_id,
                                parent: s.parent_span_id,
                                name: s.name,
                                attrs: s
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(a.value.as_ref())))
                                    .collect(),
                                start_ns: s.start_time_unix_nano,
                                end_ns: s.end_time_unix_nano,
                            });
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

const GREETING: &str = "Hello!";

async fn cascade(double: &openai::OpenAiDouble) -> Server {
    let vars = [
        ("OPENAI_BASE_URL", double.base_url()),
        ("OPENAI_API_KEY", "sk-double".to_string()),
        ("HARK_GREETING", GREETING.to_string()),
    ];
    let settings =
        Settings::from_lookup(&mut |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .unwrap();
    let config = Config {
        workers: 1,
        agent: AgentKind::Cascade,
        agent_settings: AgentSettings::Cascade(settings),
        ..Config::default()
    };
    Server::start(config, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_turns_and_its_provider_requests_are_exported_as_spans() {
    let (base, got) = receiver().await;
    // OTEL_EXPORTER_OTLP_ENDPOINT=<base>, OTEL_SERVICE_NAME=hark-test (without touching this
    // process's environment).
    let settings = OtlpSettings::from_lookup(|k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(base.clone()),
        "OTEL_SERVICE_NAME" => Some("hark-test".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(settings.traces_endpoint, format!("{base}/v1/traces"));
    telemetry::init(LogFormat::Text, Some(&settings)).unwrap();

    let double = openai::start(Script {
        latency: Latency::ZERO,
        transcripts: vec!["I am calling about my order.".into()],
        rules: vec![Rule::new("order", Reply::text("Let me check."))],
        ..Script::default()
    })
    .await;
    let server = cascade(&double).await;
    // The session's first 6.6 s (the first turn or two), then 3 s of line noise to hear the
    // answer out.
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(6_600 * 8);
    let mut setup = CallSetup::new(&server.url, Arc::from(audio));
    setup.speech = Some(speech("multi-turn"));
    setup.tail_ms = 3_000;
    setup.close_timeout = Duration::from_secs(10);
    let (call_sid, stream_sid) = (setup.start.call_sid.clone(), setup.start.stream_sid.clone());
    let report = simulator::run_call(setup).await.unwrap();
    eprintln!("{}", simulator::format_table(&report));
    assert!(
        report.turns.iter().any(|t| t.latency_ms.is_some()),
        "no turn was answered: {report:?}"
    );
    // Once the call's worker is done its span is closed; then the last batch is sent.
    server.stop().await;
    tokio::task::spawn_blocking(telemetry::flush).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = got.lock().unwrap().spans.clone();
        if spans.iter().any(|s| s.name == "call") {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no call span received: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for s in &spans {
        eprintln!("{} {:?}", s.name, s.attrs);
    }
    let types = got.lock().unwrap().content_types.clone();
    assert!(
        types.iter().all(|t| t == "application/x-protobuf"),
        "{types:?}"
    );
    assert!(spans.iter().all(|s| s.service == "hark-test"));

    // ---- The call.
    let calls: Vec<&Got> = spans.iter().filter(|s| s.name == "call").collect();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    let call = calls[0];
    assert_eq!(call.attr("call_sid"), Some(call_sid.as_str()));
    assert_eq!(call.attr("stream_sid"), Some(stream_sid.as_str()));
    assert!(call.parent.is_empty(), "the call span is a root");
    assert_eq!(call.span_id.len(), 8);
    let under_call = |s: &Got| {
        s.parent == call.span_id
            && s.trace_id == call.trace_id
            && s.start_ns >= call.start_ns
            && s.end_ns <= call.end_ns
    };

    // ---- Its turns.
    let turns: Vec<&Got> = spans.iter().filter(|s| s.name == "turn").collect();
    assert!(!turns.is_empty(), "no turn span");
    assert!(turns.iter().all(|t| under_call(t)), "{turns:#?}");
    let answered = turns
        .iter()
        .find(|t| t.attr("latency_ms").is_some())
        .unwrap_or_else(|| panic!("no turn span with a latency: {turns:#?}"));
    // Turns are numbered from 0, as in the call record.
    assert_eq!(answered.attr("turn"), Some("0"), "{answered:?}");
    let (start, end): (u64, u64) = (
        answered.attr("start_ms").unwrap().parse().unwrap(),
        answered.attr("end_ms").unwrap().parse().unwrap(),
    );
    assert!(start < end, "{answered:?}");
    assert!(answered.attr("interrupted").is_some());

    // ---- Its provider requests: the greeting's TTS, then STT, LLM and TTS for the turn.
    let requests: Vec<&Got> = spans
        .iter()
        .filter(|s| s.name == "provider_request")
        .collect();
    assert!(requests.iter().all(|r| under_call(r)), "{requests:#?}");
    let double_addr = double.base_url();
    let double_host = double_addr
        .split("://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    for stage in ["stt", "llm", "tts"] {
        let r = requests
            .iter()
            .find(|r| r.attr("stage") == Some(stage))
            .unwrap_or_else(|| panic!("no {stage} request span: {requests:#?}"));
        assert_eq!(r.attr("kind"), Some("http"), "{r:?}");
        assert_eq!(r.attr("server.address"), Some(double_host), "{r:?}");
        let path = r.attr("url.path").unwrap();
        assert!(path.starts_with('/') && !path.contains('?'), "{r:?}");
    }
    double.stop().await;
}
