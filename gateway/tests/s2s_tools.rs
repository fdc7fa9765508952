//! The operator's HTTP tools in the speech-to-speech agents, over real sockets on 127.0.0.1:
//! `hark serve` in process with `[[tools]]` read from a `hark.toml` text, a call from the
//! simulator (the virtual Twilio phone), the provider double (OpenAI Realtime or ElevenLabs)
//! and an operator double that checks every request's `X-Hark-Signature` with its own HMAC
//! (ring's, not hark's).
//!
//! - Realtime: the `session.update` offers the tools as functions; the double's model calls
//!   `lookup_balance` (the backend answers) and then `record_promise` (the backend fails with a
//!   500); each result comes back as a `function_call_output` item followed by a
//!   `response.create`, and the caller hears the answer that follows each (the call goes on).
//! - ElevenLabs: `client_tool_call`s of `get_balance` (answered) and `slow_lookup` (the
//!   backend is slower than `timeout_ms`) go to the backend; each gets its
//!   `client_tool_result` (`is_error` false, then true) and the conversation goes on.
//!
//! Every provider message both ways is checked against the vendor's spec.

mod in_process;
mod provider_doubles;
#[path = "elevenlabs_realtime_specs.rs"]
mod specs;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use hark_gateway::agents::AgentSettings;
use hark_gateway::config::{AgentKind, Config, Values};
use hark_gateway::simulator::{self, CallSetup, Report};
use in_process::{Server, fixture, speech};
use provider_doubles::{elevenlabs, realtime};
use serde_json::{Value, json};
use specs::{Api, Dir, check_elevenlabs, check_realtime};

const SECRET: &str = "whsec_s2s_tools_0123456789";
const BALANCE: &str = r#"{"balance":"120 dollars","due":"May 3"}"#;
/// The caller's first two turns of the multi-turn session (1 000–5 100, 6 800–8 580 ms).
const CALLER: [&str; 2] = [
    "Hi, I'm calling about my order, it was supposed to arrive yesterday.",
    "And so my fellow Americans",
];
/// The agent's answers after each tool result.
const ANSWERS: [&str; 2] = [
    "You owe 120 dollars, due May 3.",
    "Sorry, I cannot record that now.",
];

fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One request the operator double received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    /// The signature verified (independently of hark).
    signed: bool,
    body: Value,
}

/// The receiver's check, written independently of hark's `operator` module: HMAC-SHA256
/// (ring) over `{timestamp}.{raw body}`, `v1=` + hex, compared in constant time; at most 5
/// minutes old.
fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("x-hark-timestamp"), header("x-hark-signature")) else {
        return false;
    };
    let Ok(t) = ts.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let Some(hex) = sig.strip_prefix("v1=") else {
        return false;
    };
    let tag: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    now.abs_diff(t) <= 300 && tag.is_some_and(|t| ring::hmac::verify(&key, &msg, &t).is_ok())
}

/// The operator's backend on 127.0.0.1:0: `POST /tools/balance` answers [`BALANCE`],
/// `/tools/promise` fails with a 500, `/tools/slow` answers after 3 s; a bad signature is a
/// 401. Returns its base URL and what it received.
async fn operator() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler = move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let log = log.clone();
        async move {
            let signed = verified(&headers, &body);
            let path = uri.path().to_string();
            log.lock().unwrap().push(Seen {
                path: path.clone(),
                signed,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            let (status, answer) = match path.as_str() {
                _ if !signed => (StatusCode::UNAUTHORIZED, r#"{"error":"bad signature"}"#),
                "/tools/balance" => (StatusCode::OK, BALANCE),
                "/tools/slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    (StatusCode::OK, BALANCE)
                }
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"error":"database down"}"#,
                ),
            };
            axum::response::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(answer))
                .unwrap()
        }
    };
    let app = axum::Router::new().route("/tools/{name}", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// `[operator]` and two `[[tools]]` (`first` → `/tools/balance`, `second` → `second_path`
/// with `second_timeout_ms`) after `head`, read as `hark.toml` for agent `kind`.
fn settings(
    kind: AgentKind,
    head: &str,
    ops: &str,
    names: [&str; 2],
    second: &str,
) -> AgentSettings {
    let [first, second_name] = names;
    let (second_path, second_timeout_ms) = match second {
        "slow" => ("slow", 300),
        _ => ("promise", 2_000),
    };
    let file = format!(
        r#"{head}
[operator]
secret = "{SECRET}"

[[tools]]
name = "{first}"
description = "The payer's open balance and due date."
url = "{ops}/tools/balance"
timeout_ms = 2000
parameters = {{ type = "object", required = ["payerId"], properties = {{ payerId = {{ type = "string" }} }} }}

[[tools]]
name = "{second_name}"
description = "Records the payer's promise to pay."
url = "{ops}/tools/{second_path}"
timeout_ms = {second_timeout_ms}
parameters = {{ type = "object", required = ["amount", "date"], properties = {{ amount = {{ type = "number" }}, date = {{ type = "string" }} }} }}
"#
    );
    let (values, unknown) = Values::from_toml("hark.toml", "hark.toml", &file).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    AgentSettings::from_values(kind, &values).unwrap()
}

async fn start(kind: AgentKind, settings: AgentSettings) -> Server {
    let config = Config {
        workers: 2,
        agent: kind,
        agent_settings: settings,
        ..Config::default()
    };
    Server::start(config, Some(in_process::memory_api().await)).await
}

/// Reply `k`'s audio: bytes `16k .. 16k+15` repeating (recognisable in what was heard).
fn audio(k: u8, ms: usize) -> Arc<[u8]> {
    (0..ms * 8)
        .map(|i| k * 16 + (i % 16) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn heard(r: &Report, a: &[u8]) -> bool {
    let hay = r.heard.as_deref().expect("heard timeline");
    hay.windows(a.len()).any(|w| w == a)
}

/// The first `ms` of the multi-turn real-speech session, called in with `payerId=p-42` at
/// real time; returns the report and the SIDs.
async fn call(server: &Server, ms: usize) -> (Report, String, String) {
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(ms * 8);
    let mut setup = CallSetup::new(&server.url, Arc::from(audio));
    let mut sp = speech("multi-turn");
    sp.spans = sp
        .spans
        .iter()
        .filter(|s| (s.end_ms as usize) < ms)
        .cloned()
        .collect();
    setup.speech = Some(sp);
    setup.start = simulator::fresh_start(vec![("payerId".into(), "p-42".into())]);
    setup.tail_ms = 300;
    setup.keep_heard = true;
    let sids = (setup.start.call_sid.clone(), setup.start.stream_sid.clone());
    let r = simulator::run_call(setup).await.unwrap();
    eprintln!("{}", simulator::format_table(&r));
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(r.marks_sent, r.marks_echoed);
    (r, sids.0, sids.1)
}

/// The requests to the backend: every one signed, for this call and payer.
fn check_requests(seen: &[Seen], call_sid: &str, stream_sid: &str) {
    for s in seen {
        assert!(s.signed, "the signature verifies independently: {s:?}");
        assert_eq!(s.body["call_sid"], call_sid, "{s:?}");
        assert_eq!(s.body["stream_sid"], stream_sid, "{s:?}");
        assert_eq!(s.body["parameters"], json!({"payerId": "p-42"}), "{s:?}");
    }
}

/// The call's two turns, each answered (not cut) by the answer after its tool result, in
/// the report and in the stored call record.
async fn check_record(server: &Server, r: &Report, call_sid: &str) {
    assert_eq!(r.turns.len(), 2);
    assert!(
        r.turns
            .iter()
            .all(|t| t.latency_ms.is_some() && !t.interrupted)
    );
    let detail = server.record(call_sid, Duration::from_secs(5)).await;
    let said: Vec<(Option<&str>, Option<&str>, bool)> = detail
        .turns
        .iter()
        .map(|t| (t.text.as_deref(), t.agent_text.as_deref(), t.interrupted))
        .collect();
    assert_eq!(
        said,
        [
            (Some(CALLER[0]), Some(ANSWERS[0]), false),
            (Some(CALLER[1]), Some(ANSWERS[1]), false),
        ]
    );
}

/// The value of the Prometheus series `series` (0 when absent).
fn metric(series: &str) -> f64 {
    hark_gateway::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_offers_the_tools_and_sends_their_results_back() {
    tls();
    let (ops, seen) = operator().await;
    let turn = |s, e, user: &str, k, say: &str| realtime::Turn {
        start_ms: s,
        end_ms: e,
        user_transcript: user.into(),
        reply: Some(realtime::Reply {
            transcript: say.into(),
            audio: audio(k, 800),
        }),
    };
    let double = realtime::RealtimeDouble::start(realtime::Script {
        turns: vec![
            turn(1_000, 5_100, CALLER[0], 1, ANSWERS[0]),
            turn(6_800, 8_580, CALLER[1], 2, ANSWERS[1]),
        ],
        function_calls: vec![
            (0, "lookup_balance".into(), r#"{"payerId":"p-42"}"#.into()),
            (
                1,
                "record_promise".into(),
                r#"{"amount":120,"date":"Friday"}"#.into(),
            ),
        ],
        ..realtime::Script::default()
    })
    .await
    .unwrap();
    let head = format!(
        "[openai]\napi_key = \"sk-test\"\n\n[agent.realtime]\nurl = \"{}\"\n",
        double.base_url()
    );
    let names = ["lookup_balance", "record_promise"];
    let server = start(
        AgentKind::Realtime,
        settings(AgentKind::Realtime, &head, &ops, names, "promise"),
    )
    .await;
    let (r, call_sid, stream_sid) = call(&server, 11_000).await;
    let sessions = double.wait_ended(1, Duration::from_secs(5)).await;
    assert_eq!(sessions.len(), 1);
    let s = &sessions[0];
    for (to_server, m) in
        (s.received.iter().map(|m| (true, &m.1))).chain(s.sent.iter().map(|m| (false, &m.1)))
    {
        let e = check_realtime(Api::Ga, to_server, m);
        assert!(e.is_empty(), "refused by the spec: {m}\n{e:?}");
    }
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(s.sent_of("error").is_empty(), "{:?}", s.sent_of("error"));

    // The tools offered as functions, exactly as configured.
    let update = s.received_of("session.update")[0]["session"].clone();
    assert_eq!(
        update["tools"],
        json!([
            {"type": "function", "name": "lookup_balance",
             "description": "The payer's open balance and due date.",
             "parameters": {"type": "object", "required": ["payerId"],
                            "properties": {"payerId": {"type": "string"}}}},
            {"type": "function", "name": "record_promise",
             "description": "Records the payer's promise to pay.",
             "parameters": {"type": "object", "required": ["amount", "date"],
                            "properties": {"amount": {"type": "number"},
                                           "date": {"type": "string"}}}},
        ])
    );
    assert_eq!(update["tool_choice"], "auto");

    // Each call POSTed to the backend, signed, with the model's call id and arguments.
    let seen = seen.lock().unwrap().clone();
    check_requests(&seen, &call_sid, &stream_sid);
    let asked: Vec<(&str, &Value, &Value, &Value)> = seen
        .iter()
        .map(|s| {
            (
                s.path.as_str(),
                &s.body["tool"],
                &s.body["call_id"],
                &s.body["arguments"],
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            (
                "/tools/balance",
                &json!("lookup_balance"),
                &json!("call_0"),
                &json!({"payerId": "p-42"})
            ),
            (
                "/tools/promise",
                &json!("record_promise"),
                &json!("call_1"),
                &json!({"amount": 120, "date": "Friday"})
            ),
        ]
    );

    // Each result back as a function_call_output, then a response.create: the answer; the
    // backend's 500 as an error the model sees.
    let after_calls: Vec<&Value> = s
        .received
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["type"] == "conversation.item.create" || v["type"] == "response.create")
        .collect();
    assert_eq!(after_calls.len(), 4, "{after_calls:?}");
    let output = |i: usize, call_id: &str| {
        let ev = after_calls[i];
        assert_eq!(ev["type"], "conversation.item.create", "{ev}");
        assert_eq!(ev["item"]["type"], "function_call_output", "{ev}");
        assert_eq!(ev["item"]["call_id"], call_id, "{ev}");
        assert_eq!(after_calls[i + 1]["type"], "response.create");
        ev["item"]["output"].as_str().unwrap().to_string()
    };
    assert_eq!(output(0, "call_0"), BALANCE);
    let failed = output(2, "call_1");
    assert!(
        failed.starts_with("error:") && failed.contains("HTTP 500"),
        "{failed}"
    );
    // The answers after each result, heard byte for byte: the call went on after the error.
    assert!(heard(&r, &audio(1, 800)), "the answer using the balance");
    assert!(heard(&r, &audio(2, 800)), "the answer after the failure");
    assert!(metric("hark_tool_calls_total{name=\"lookup_balance\"}") == 1.0);
    check_record(&server, &r, &call_sid).await;
    assert!(metric("hark_provider_faults_total{provider=\"tool\",kind=\"http_5xx\"}") == 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_client_tool_calls_go_to_the_webhooks() {
    tls();
    let (ops, seen) = operator().await;
    let reply = |k, user: &str, say: &str| elevenlabs::Reply {
        user_text: Some(user.into()),
        agent_text: say.into(),
        audio: audio(k, 800),
    };
    let double = elevenlabs::ElevenLabsDouble::start(elevenlabs::Script {
        steps: vec![
            elevenlabs::Step::ToolCall {
                at_ms: 5_300,
                tool_name: "get_balance".into(),
                parameters: json!({"payerId": "p-42"}),
            },
            elevenlabs::Step::Reply {
                at_ms: 5_700,
                reply: reply(1, CALLER[0], ANSWERS[0]),
            },
            elevenlabs::Step::ToolCall {
                at_ms: 8_800,
                tool_name: "slow_lookup".into(),
                parameters: json!({"amount": 120, "date": "Friday"}),
            },
            elevenlabs::Step::Reply {
                at_ms: 9_400,
                reply: reply(2, CALLER[1], ANSWERS[1]),
            },
        ],
        ..elevenlabs::Script::default()
    })
    .await
    .unwrap();
    let head = format!(
        "[agent.elevenlabs]\nagent_id = \"agent_double\"\napi_key = \"xi-test-key\"\napi_base = \"{}\"\n",
        double.base_url()
    );
    let names = ["get_balance", "slow_lookup"];
    let server = start(
        AgentKind::ElevenLabs,
        settings(AgentKind::ElevenLabs, &head, &ops, names, "slow"),
    )
    .await;
    let (r, call_sid, stream_sid) = call(&server, 11_000).await;
    let convs = double.wait_ended(1, Duration::from_secs(5)).await;
    assert_eq!(convs.len(), 1);
    let c = &convs[0];
    for (dir, m) in (c.received.iter().map(|m| (Dir::ToServer, &m.1)))
        .chain(c.sent.iter().map(|m| (Dir::ToClient, &m.1)))
    {
        let e = check_elevenlabs(dir, m);
        assert!(e.is_empty(), "refused by the spec: {m}\n{e:?}");
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);

    // Each call POSTed to its tool's webhook, signed, with ElevenLabs' id and parameters.
    let calls: Vec<(tokio::time::Instant, Value)> = c
        .sent
        .iter()
        .filter(|(_, v)| v["type"] == "client_tool_call")
        .map(|(t, v)| (*t, v["client_tool_call"].clone()))
        .collect();
    assert_eq!(calls.len(), 2);
    let seen = seen.lock().unwrap().clone();
    check_requests(&seen, &call_sid, &stream_sid);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, (path, call)) in seen.iter().zip([
        ("/tools/balance", &calls[0].1),
        ("/tools/slow", &calls[1].1),
    ]) {
        assert_eq!(s.path, path);
        assert_eq!(s.body["tool"], call["tool_name"]);
        assert_eq!(s.body["call_id"], call["tool_call_id"]);
        assert_eq!(s.body["arguments"], call["parameters"]);
    }

    // The answers: the backend's JSON, then the timeout as an error, each for its call.
    let results: Vec<(tokio::time::Instant, &Value)> = c
        .received
        .iter()
        .filter(|(_, v)| v["type"] == "client_tool_result")
        .map(|(t, v)| (*t, v))
        .collect();
    assert_eq!(results.len(), 2, "{results:?}");
    let (ok, timed_out) = (results[0].1, results[1].1);
    assert_eq!(ok["tool_call_id"], calls[0].1["tool_call_id"]);
    assert_eq!(ok["result"], BALANCE);
    assert_eq!(ok["is_error"], false);
    assert_eq!(timed_out["tool_call_id"], calls[1].1["tool_call_id"]);
    assert_eq!(timed_out["is_error"], true);
    let text = timed_out["result"].as_str().unwrap();
    assert!(
        text.starts_with("error:") && text.contains("timeout"),
        "{text}"
    );
    // Given up at the tool's timeout_ms (300), not at the backend's 3 s.
    let waited = results[1].0 - calls[1].0;
    assert!(
        (Duration::from_millis(300)..Duration::from_millis(1_300)).contains(&waited),
        "{waited:?}"
    );
    // The conversation went on: both answers heard byte for byte.
    assert!(heard(&r, &audio(1, 800)));
    assert!(heard(&r, &audio(2, 800)));
    assert!(metric("hark_tool_calls_total{name=\"slow_lookup\"}") == 1.0);
    check_record(&server, &r, &call_sid).await;
    assert!(metric("hark_provider_faults_total{provider=\"tool\",kind=\"timeout\"}") == 1.0);
    server.stop().await;
}
