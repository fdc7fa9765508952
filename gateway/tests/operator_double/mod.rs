//! The operator's backend double for call events: axum on 127.0.0.1 (port 0, on a runtime
//! and thread of its own), recording every request and checking its signature with
//! `ring::hmac`, an HMAC-SHA256 independent of hark's (`hmac` + `sha2`).
#![allow(dead_code)] // each test binary uses a part

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hark_gateway::operator::events::Envelope;

/// `HARK_OPERATOR_SECRET` of the hark under test: the double checks signatures with it.
pub const SECRET: &str = "events-test-secret-0123456789abcdef";

/// How the double answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 2xx.
    Up,
    /// 503 to everything.
    Unavailable,
    /// 2xx to this many more requests, then 503.
    AcceptThenFail(usize),
}

/// One request the double received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub envelope: Envelope,
    pub idempotency_key: String,
    pub event_header: String,
    pub status: u16,
}

#[derive(Debug)]
pub struct BackendState {
    pub mode: Mode,
    /// Calls whose events get 503 (with `Retry-After: 0`) whatever the mode.
    pub failing_calls: HashSet<String>,
    /// Events (by id) refused with 400.
    pub refused: HashSet<String>,
    /// Events (by id) answered once with 429 and `Retry-After: 1`.
    pub throttled_once: HashSet<String>,
    pub seen: Vec<Seen>,
    /// Requests whose signature or headers did not check out, and why.
    pub bad: Vec<String>,
}

/// The operator's backend double. It runs on a runtime of its own, on a thread of its own, so
/// it outlives the runtimes of the hark "processes" a test starts and kills.
pub struct Backend {
    port: u16,
    state: Arc<Mutex<BackendState>>,
    rt: tokio::runtime::Handle,
    /// Dropped with the backend: its thread then drops the runtime.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Backend {
    /// A backend whose port is reserved but not listening yet: connections are refused until
    /// [`Backend::listen`].
    pub fn down() -> Backend {
        let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = reserved.local_addr().expect("addr").port();
        drop(reserved);
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            handle_tx.send(rt.handle().clone()).expect("handle");
            // Until the backend is dropped.
            let _ = stopped.recv();
        });
        let rt = handle_rx.recv().expect("backend runtime");
        Backend {
            port,
            state: Arc::new(Mutex::new(BackendState {
                mode: Mode::Up,
                failing_calls: HashSet::new(),
                refused: HashSet::new(),
                throttled_once: HashSet::new(),
                seen: Vec::new(),
                bad: Vec::new(),
            })),
            rt,
            _stop: stop,
        }
    }

    /// A backend listening in `mode`.
    pub fn up(mode: Mode) -> Backend {
        let b = Backend::down();
        b.listen(mode);
        b
    }

    /// Starts listening on the reserved port, answering in `mode`.
    pub fn listen(&self, mode: Mode) {
        self.set(mode);
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .expect("the reserved port binds again");
        listener.set_nonblocking(true).expect("nonblocking");
        let app = axum::Router::new()
            .route("/hark/events", axum::routing::post(receive))
            .with_state(self.state.clone());
        self.rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("serve");
        });
    }

    pub fn set(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, BackendState> {
        self.state.lock().expect("backend lock")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hark/events", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn answered(&self, status: u16) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.status == status)
            .count()
    }
}

/// The independent check of `X-Hark-Signature`: `v1=` + hex HMAC-SHA256(secret,
/// `"{timestamp}." ‖ body`), by `ring`, and a timestamp within 5 minutes of now.
pub fn verify(headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("no {name}"))
    };
    let ts = get("x-hark-timestamp")?;
    let sig = get("x-hark-signature")?;
    let hex = sig.strip_prefix("v1=").ok_or("no v1= prefix")?;
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("signature is not hex: {e}"))?;
    let mut msg = format!("{ts}.").into_bytes();
    msg.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::verify(&key, &msg, &tag).map_err(|_| "signature mismatch".to_owned())?;
    let ts: u64 = ts.parse().map_err(|_| "timestamp is not a number")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if ts.abs_diff(now) > 300 {
        return Err(format!("timestamp {ts} is far from now {now}"));
    }
    Ok(())
}

pub async fn receive(
    State(st): State<Arc<Mutex<BackendState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = st.lock().expect("backend lock");
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if let Err(why) = verify(&headers, &body) {
        st.bad.push(why);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if !header("content-type").starts_with("application/json") {
        st.bad
            .push(format!("content-type {:?}", header("content-type")));
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            st.bad.push(format!("body is not an envelope: {e}"));
            return StatusCode::BAD_REQUEST.into_response();
        }
    };
    let (status, retry_after) = if st.refused.contains(&envelope.id) {
        (400, None)
    } else if st.throttled_once.remove(&envelope.id) {
        (429, Some("1"))
    } else if st.failing_calls.contains(&envelope.call_sid) {
        (503, Some("0"))
    } else {
        match st.mode {
            Mode::Up => (200, None),
            Mode::Unavailable => (503, None),
            Mode::AcceptThenFail(0) => (503, None),
            Mode::AcceptThenFail(n) => {
                st.mode = Mode::AcceptThenFail(n - 1);
                (200, None)
            }
        }
    };
    st.seen.push(Seen {
        at: Instant::now(),
        idempotency_key: header("idempotency-key"),
        event_header: header("x-hark-event"),
        envelope,
        status,
    });
    let mut resp = StatusCode::from_u16(status)
        .expect("status")
        .into_response();
    if let Some(v) = retry_after {
        resp.headers_mut()
            .insert("retry-after", v.parse().expect("header value"));
    }
    resp
}
