//! The operator's own tools over real sockets: `hark serve` (in process, port 0) with the
//! cascade agent and a `[[tools]]` entry read from a `hark.toml` text, the OpenAI-compatible
//! double asking for `lookup_balance {payerId}`, and an operator double on 127.0.0.1:0 that
//! checks every request's `X-Hark-Signature` with its own HMAC (ring's, not hark's) and
//! answers the balance. The next chat request carries the result and the caller hears the
//! answer that uses it.

mod in_process;
use in_process::{Server, fixture, speech};

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hark_gateway::agents::AgentSettings;
use hark_gateway::agents::cascade::Settings;
use hark_gateway::config::{AgentKind, Config, Values};
use hark_gateway::doubles::openai::{self, Endpoint, Latency, Reply, Rule, Script};
use hark_gateway::simulator::{self, CallSetup};
use serde_json::{Value, json};

const SECRET: &str = "whsec_0123456789abcdef";

/// What the operator double received: (headers checked, body).
type Seen = Arc<Mutex<Vec<(bool, Value)>>>;

/// The receiver's check, written independently of hark's `operator` module: HMAC-SHA256
/// (ring) over `{timestamp}.{raw body}`, hex, compared in constant time; at most 5 minutes old.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers
            .get("x-hark-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-hark-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(t) = ts.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    let Some(hex) = sig.strip_prefix("v1=") else {
        return false;
    };
    let tag: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    tag.is_some_and(|t| ring::hmac::verify(&key, &msg, &t).is_ok())
}

/// The operator's backend: `POST /tools/balance`.
async fn operator(seen: Seen) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/tools/balance",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let ok = verified(&headers, &body);
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push((ok, v));
                if !ok {
                    return json_answer(StatusCode::UNAUTHORIZED, r#"{"error":"bad signature"}"#);
                }
                json_answer(StatusCode::OK, r#"{"balance":"120 dollars","due":"May 3"}"#)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

/// A JSON answer with `status`.
fn json_answer(status: StatusCode, body: &'static str) -> axum::response::Response {
    axum::response::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_call_uses_the_operators_tool_over_http() {
    let seen: Seen = Arc::default();
    let (ops, _task) = operator(seen.clone()).await;
    let double = openai::start(Script {
        latency: Latency::REALISTIC,
        transcripts: vec!["Hi, I'm calling about my order.".into()],
        rules: vec![Rule::new(
            "calling about my order",
            Reply::text("").with_tool("lookup_balance", r#"{"payerId":"p-42"}"#),
        )],
        after_tool: Reply::text("Your balance is 120 dollars, due May 3."),
        ..Script::default()
    })
    .await;
    let file = format!(
        r#"
[openai]
base_url = "{base}"
api_key = "sk-double"

[operator]
secret = "{SECRET}"

[[tools]]
name = "lookup_balance"
description = "The payer's open balance and due date."
url = "{ops}/tools/balance"
timeout_ms = 2000
parameters = {{ type = "object", required = ["payerId"], properties = {{ payerId = {{ type = "string" }} }} }}
"#,
        base = double.base_url()
    );
    let (values, unknown) = Values::from_toml("hark.toml", "hark.toml", &file).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    let config = Config {
        workers: 1,
        agent: AgentKind::Cascade,
        agent_settings: AgentSettings::Cascade(Settings::from_values(&values).unwrap()),
        ..Config::default()
    };
    let server = Server::start(config, None).await;
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(6_600 * 8);
    let mut setup = CallSetup::new(&server.url, Arc::from(audio));
    setup.speech = Some(speech("multi-turn"));
    setup.start = simulator::fresh_start(vec![("payerId".into(), "p-42".into())]);
    setup.tail_ms = 5_000;
    setup.close_timeout = Duration::from_secs(10);
    let report = simulator::run_call(setup).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one tool request: {seen:?}");
    let (signed, body) = &seen[0];
    assert!(signed, "the signature verifies independently");
    assert_eq!(body["tool"], "lookup_balance");
    assert_eq!(body["arguments"], json!({"payerId": "p-42"}));
    assert_eq!(body["parameters"]["payerId"], "p-42");
    assert!(body["call_sid"].as_str().unwrap().starts_with("CA"));

    let chats = double.exchanges_with(Endpoint::ChatCompletions);
    assert_eq!(chats.len(), 2, "the round after the tool's result");
    let last = chats[1].request["messages"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["role"], "tool");
    assert_eq!(
        last["content"],
        r#"{"balance":"120 dollars","due":"May 3"}"#
    );
    let spoken: Vec<String> = double
        .exchanges_with(Endpoint::Speech)
        .iter()
        .map(|e| e.request["input"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        spoken.iter().any(|s| s.contains("120 dollars")),
        "the caller hears the answer: {spoken:?}"
    );
    server.stop().await;
    double.stop().await;
}
