//! The operator's backend: the service *you* run next to hark. It stands in for a billing
//! system with one payer (`p-42`, Ada, 120 dollars due May 3) and answers hark's signed
//! requests:
//!
//! - `POST /context`: when the call's media stream starts, hark asks what to say to this payer
//!   (system prompt, greeting, `{{variables}}`);
//! - `POST /tools/balance` and `POST /tools/promise`: the model's `lookup_balance` and
//!   `record_promise` tools (`[[tools]]` in `hark.toml`);
//! - `POST /events`: the call's events (`call.started`, `turn.ended`, `call.ended`).
//!
//! `REMINDER_VERBOSE=1` prints every request body. Every request is checked with this backend's own HMAC-SHA256 (ring, not hark's code) over
//! `{X-Hark-Timestamp}.{raw body}`, before the body is even parsed.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The payer this example calls.
pub const PAYER_ID: &str = "p-42";

/// One request the backend received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The route, e.g. `/tools/balance`.
    pub path: &'static str,
    /// Whether `X-Hark-Signature` verified (requests that fail are answered 401).
    pub signed: bool,
    /// The JSON body (`null` when it was not JSON).
    pub body: Value,
}

/// What the backend has seen so far, shared with [`crate::run`].
#[derive(Debug, Default)]
pub struct Backend {
    secret: String,
    received: Mutex<Vec<Received>>,
    /// Notified when a `call.ended` event arrives.
    pub ended: Notify,
}

impl Backend {
    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// Records a request and says whether it may be answered.
    fn record(&self, path: &'static str, headers: &HeaderMap, body: &[u8]) -> Option<Value> {
        let signed = verified(self.secret.as_bytes(), headers, body);
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        self.received.lock().expect("not poisoned").push(Received {
            path,
            signed,
            body: json.clone(),
        });
        if !signed {
            eprintln!("operator: {path}: bad signature, refused");
        }
        if std::env::var_os("REMINDER_VERBOSE").is_some() {
            println!("operator: POST {path} {json}");
        }
        signed.then_some(json)
    }
}

/// Starts the backend on 127.0.0.1 (port 0), checking signatures with `secret`. Returns its
/// base URL (`http://127.0.0.1:<port>`) and its record.
///
/// # Errors
/// The listener could not be bound.
pub async fn start(secret: &str) -> std::io::Result<(String, Arc<Backend>)> {
    let backend = Arc::new(Backend {
        secret: secret.to_string(),
        ..Backend::default()
    });
    let app = Router::new()
        .route("/context", post(context))
        .route("/tools/balance", post(balance))
        .route("/tools/promise", post(promise))
        .route("/events", post(events))
        .with_state(backend.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, backend))
}

/// `POST /context`: `{"call_sid", "stream_sid", "from", "to", "direction", "parameters"}` →
/// this payer's prompt, greeting and variables (`{{name}}` etc. are filled in by hark).
async fn context(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(req) = b.record("/context", &headers, &body) else {
        return refused();
    };
    let payer = req["parameters"]["payerId"].as_str().unwrap_or("");
    println!("operator: context for payerId {payer:?}");
    if payer != PAYER_ID {
        // No such payer: an empty object keeps hark's configured defaults.
        return answer(json!({}));
    }
    answer(json!({
        "system_prompt": "You are Acme Billing's payment-reminder assistant on a phone call \
            with {{name}}, who owed {{balance}} (due {{due}}) when this call was scheduled. \
            Confirm the current balance with lookup_balance, tell it to them, and record the \
            date they promise to pay with record_promise. Be brief.",
        "greeting": "Hello {{name}}, this is Acme Billing calling about your account.",
        "variables": {"name": "Ada", "balance": "120 dollars", "due": "May 3"},
    }))
}

/// `POST /tools/balance`: the `lookup_balance` tool. `arguments` are the model's, checked by
/// hark against the tool's JSON Schema; `parameters` are the call's `<Parameter>`s.
async fn balance(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(req) = b.record("/tools/balance", &headers, &body) else {
        return refused();
    };
    let payer = req["arguments"]["payerId"].as_str().unwrap_or("");
    println!("operator: lookup_balance {payer:?}");
    if payer != PAYER_ID {
        return answer(json!({"error": "no such payer"}));
    }
    answer(json!({"balance": "120 dollars", "due": "May 3"}))
}

/// `POST /tools/promise`: the `record_promise` tool (`end_call_after = true`: the answer after
/// it is the call's last).
async fn promise(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(req) = b.record("/tools/promise", &headers, &body) else {
        return refused();
    };
    println!("operator: record_promise {}", req["arguments"]);
    answer(json!({"recorded": true}))
}

/// `POST /events`: one call event. Answer 2xx quickly; deduplicate on `id` in real code.
async fn events(State(b): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(event) = b.record("/events", &headers, &body) else {
        return refused();
    };
    let kind = event["type"].as_str().unwrap_or("?");
    match kind {
        "turn.ended" => println!(
            "operator: event turn.ended #{}: caller {:?} / agent {:?}",
            event["data"]["turn"],
            event["data"]["caller_text"].as_str().unwrap_or(""),
            event["data"]["agent_text"].as_str().unwrap_or("")
        ),
        "call.ended" => println!(
            "operator: event call.ended: {}",
            event["data"]["ended"].as_str().unwrap_or("")
        ),
        _ => println!("operator: event {kind}"),
    }
    if kind == "call.ended" {
        b.ended.notify_one();
    }
    StatusCode::NO_CONTENT.into_response()
}

/// A JSON answer.
fn answer(v: Value) -> Response {
    axum::Json(v).into_response()
}

/// 401 for a request whose signature did not verify.
fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "bad signature"})),
    )
        .into_response()
}

/// The receiver's check: `X-Hark-Signature: v1=<hex HMAC-SHA256(secret, "{ts}.{body}")>`,
/// compared in constant time, with `X-Hark-Timestamp` at most 300 s from this clock.
pub fn verified(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("x-hark-timestamp"), header("x-hark-signature")) else {
        return false;
    };
    let Ok(t) = ts.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if now.abs_diff(t) > 300 {
        return false;
    }
    let Some(hex) = sig.strip_prefix("v1=") else {
        return false;
    };
    let tag: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    tag.is_some_and(|t| ring::hmac::verify(&key, &msg, &t).is_ok())
}
