//! An in-process OpenAI-compatible server for tests, `hark bench` and trying the cascade agent
//! offline: `POST /v1/audio/transcriptions`, `POST /v1/chat/completions` and
//! `POST /v1/audio/speech`, on 127.0.0.1 (port 0), speaking the wire formats of
//! `fixtures/specs/openai/openapi.yaml` (summarised in `shared/reference/providers.md` §1–3):
//!
//! - **Transcriptions**: `multipart/form-data` with `file` and `model` (400 otherwise). With
//!   `stream=true`, SSE `transcript.text.delta` events (one per word) then
//!   `transcript.text.done` with `usage` — followed by `data: [DONE]` only when
//!   [`Script::stt_done_marker`] is set (OpenAI sends none; some compatible servers do); else the
//!   JSON `{"text":…,"usage":…}`. The text is the next of [`Script::transcripts`] (cycling).
//! - **Chat completions**: JSON with `model` and `messages`, `stream: true` only (400
//!   otherwise). The reply is chosen by [`Rule`]s on the last user message (or
//!   [`Script::after_tool`] when the last message is a tool result), streamed as
//!   `chat.completion.chunk`s — a first chunk with `role`, one per word of content,
//!   tool calls as fragments (`id`/`type`/`name` first, then the `arguments` in pieces), a
//!   chunk with `finish_reason` (`stop` or `tool_calls`), a usage chunk (`choices: []`) when
//!   `stream_options.include_usage` is set, then `data: [DONE]`.
//! - **Speech**: JSON with `model`, `input`, `voice`, `response_format: "pcm"` (400 for other
//!   formats): raw 24 kHz s16le mono, streamed in [`Latency::chunk_ms`] chunks paced at
//!   [`Latency::audio_speed`] × real time. The audio is speech-like — each syllable of the text
//!   a voiced tone with harmonics and an attack/decay envelope, words and sentences separated
//!   by pauses — so its length follows the text (about 14 characters per second) and a VAD
//!   hears it as voice.
//!
//! Latencies ([`Latency`]) are applied per request: STT until the final transcript, time to
//! first token and per token for the LLM, time to first byte for TTS. Faults ([`FaultRule`]):
//! a status with OpenAI's error body (401 `invalid_api_key`, 429 `rate_limit_exceeded` with
//! `Retry-After`/`retry-after-ms`, 429 `insufficient_quota`, 5xx), an answer that never comes,
//! an error object inside a 200 stream, a connection dropped mid-answer (after the first piece,
//! or after a given number of bytes), a stream that stalls after a given number of events or
//! chunks (the connection stays open), and a 200 with a proxy's HTML error page.
//!
//! Every exchange is recorded ([`OpenAiDouble::exchanges`]): the request as JSON (multipart
//! fields as strings, the file as its length) and each JSON payload of the response, so tests
//! can check both against the spec.
//!
//! ```no_run
//! # async fn demo() {
//! use hark_gateway::doubles::openai::{self, Reply, Rule, Script};
//! let double = openai::start(Script {
//!     transcripts: vec!["What time is it?".into()],
//!     rules: vec![Rule::new("time", Reply::text("It is noon."))],
//!     ..Script::default()
//! })
//! .await;
//! // OPENAI_BASE_URL=<double.base_url()> HARK_AGENT=cascade …
//! println!("{}", double.base_url());
//! double.stop().await;
//! # }
//! ```
//!
//! ## Layout
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the server: [`start`], [`OpenAiDouble`] (address, exchanges, faults injected while running) |
//! | `script.rs` | what the double answers and how: [`Script`], [`Latency`], [`Reply`], [`Rule`], [`Fault`], [`FaultRule`], and the record [`Exchange`] |
//! | `plan.rs` | what the three endpoints share: a planned response (status, headers, body pieces each after a delay) and how it is streamed, cut by a fault, and recorded |
//! | `transcription.rs` | `POST /v1/audio/transcriptions` (multipart in, JSON or SSE out) |
//! | `chat.rs` | `POST /v1/chat/completions` (streamed chunks, tool calls, usage) |
//! | `speech.rs` | `POST /v1/audio/speech` and the speech-like audio it sends ([`speech_pcm`]) |

mod chat;
mod plan;
mod script;
mod speech;
mod transcription;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;

pub use script::{
    Endpoint, Exchange, Fault, FaultRule, HTML_ERROR_PAGE, Latency, Reply, Rule, Script,
    ScriptedToolCall,
};
pub use speech::speech_pcm;

use chat::chat;
use speech::speech;
use transcription::transcriptions;

/// What the endpoints share: the script, the fault rules, the record.
struct State {
    script: Script,
    /// Requests seen per endpoint since each fault rule was added: (rule, seen).
    rules: Vec<(FaultRule, usize)>,
    next_transcript: usize,
    exchanges: Vec<Exchange>,
    seq: u64,
}

/// A running double. Dropping it leaves the server running until the runtime ends; call
/// [`OpenAiDouble::stop`] to stop it.
#[derive(Debug)]
pub struct OpenAiDouble {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("exchanges", &self.exchanges.len())
            .finish()
    }
}

/// Starts the double on 127.0.0.1 (a free port).
///
/// # Panics
/// If no loopback port can be bound (the machine has no network stack to test with).
pub async fn start(script: Script) -> OpenAiDouble {
    // Documented panic: a test or bench without a loopback interface cannot run anyway.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the OpenAI double binds a loopback port");
    // A listener that bound has a local address.
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let rules = script.faults.iter().map(|r| (r.clone(), 0)).collect();
    let state = Arc::new(Mutex::new(State {
        script,
        rules,
        next_transcript: 0,
        exchanges: Vec::new(),
        seq: 0,
    }));
    let s1 = state.clone();
    let s2 = state.clone();
    let s3 = state.clone();
    let app = Router::new()
        .route(
            "/v1/audio/transcriptions",
            post(move |h: HeaderMap, b: Bytes| transcriptions(s1.clone(), h, b)),
        )
        .route(
            "/v1/chat/completions",
            post(move |h: HeaderMap, b: Bytes| chat(s2.clone(), h, b)),
        )
        .route(
            "/v1/audio/speech",
            post(move |h: HeaderMap, b: Bytes| speech(s3.clone(), h, b)),
        );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    OpenAiDouble {
        addr,
        state,
        stop: Some(tx),
        task,
    }
}

impl OpenAiDouble {
    /// The base URL to configure (`OPENAI_BASE_URL`, `HARK_*_BASE_URL`):
    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every exchange so far, in arrival order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.lock().exchanges.clone()
    }

    /// Exchanges with one endpoint.
    pub fn exchanges_with(&self, endpoint: Endpoint) -> Vec<Exchange> {
        self.lock()
            .exchanges
            .iter()
            .filter(|e| e.endpoint == endpoint)
            .cloned()
            .collect()
    }

    /// Adds a fault rule now (its `skip` counts from now).
    pub fn inject(&self, rule: FaultRule) {
        self.lock().rules.push((rule, 0));
    }

    /// Changes the latencies for requests from now on.
    pub fn set_latency(&self, latency: Latency) {
        self.lock().script.latency = latency;
    }

    /// Stops the server (in-flight answers are dropped).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test; the data is still
        // usable for its report.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Locks the state (usable after a panic elsewhere: the record is still worth reading).
fn lock(state: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}
