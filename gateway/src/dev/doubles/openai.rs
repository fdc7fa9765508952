//! An in-process OpenAI-compatible server for tests, `hark bench` and trying the cascade agent
//! offline: `POST /v1/audio/transcriptions`, `POST /v1/chat/completions` and
//! `POST /v1/audio/speech`, on 127.0.0.1 (port 0), speaking the wire formats of
//! `shared/specs/openai/openapi.yaml` (summarised in `shared/reference/providers.md` §1–3):
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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// Latencies of the double, ms (all 0 = as fast as possible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Transcription: request received → final transcript sent.
    pub stt_ms: u64,
    /// Chat: request received → first content token.
    pub ttft_ms: u64,
    /// Chat: between tokens (words).
    pub token_ms: u64,
    /// Speech: request received → first audio byte.
    pub ttfb_ms: u64,
    /// Speech audio is sent this many times faster than real time (e.g. 4); 0 sends it all
    /// at once after the first byte.
    pub audio_speed: f64,
    /// Speech audio per chunk, ms.
    pub chunk_ms: u64,
}

impl Latency {
    /// Realistic hosted-API figures: STT 150 ms, TTFT 300 ms, 25 ms per token, TTS first byte
    /// 150 ms, audio streamed at 4× real time in 40 ms chunks.
    pub const REALISTIC: Latency = Latency {
        stt_ms: 150,
        ttft_ms: 300,
        token_ms: 25,
        ttfb_ms: 150,
        audio_speed: 4.0,
        chunk_ms: 40,
    };
    /// No waiting at all (audio in one go).
    pub const ZERO: Latency = Latency {
        stt_ms: 0,
        ttft_ms: 0,
        token_ms: 0,
        ttfb_ms: 0,
        audio_speed: 0.0,
        chunk_ms: 40,
    };
}

impl Default for Latency {
    fn default() -> Self {
        Latency::REALISTIC
    }
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedToolCall {
    /// Function name.
    pub name: String,
    /// Arguments (JSON text, sent in two fragments).
    pub arguments: String,
}

/// A scripted assistant reply: text (streamed word by word), then tool calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Content.
    pub text: String,
    /// Tool calls after the content.
    pub tool_calls: Vec<ScriptedToolCall>,
}

impl Reply {
    /// A reply with only text.
    pub fn text(t: impl Into<String>) -> Self {
        Reply {
            text: t.into(),
            tool_calls: Vec::new(),
        }
    }

    /// Adds a tool call.
    pub fn with_tool(mut self, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        self.tool_calls.push(ScriptedToolCall {
            name: name.into(),
            arguments: arguments.into(),
        });
        self
    }
}

/// Answer with `reply` when the last user message contains `when` (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Substring to look for.
    pub when: String,
    /// The reply.
    pub reply: Reply,
}

impl Rule {
    /// A rule.
    pub fn new(when: impl Into<String>, reply: Reply) -> Self {
        Rule {
            when: when.into(),
            reply,
        }
    }
}

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/audio/transcriptions`.
    Transcriptions,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/audio/speech`.
    Speech,
}

/// An injected fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status with OpenAI's error body (`invalid_api_key` for 401, `rate_limit_exceeded`
    /// for 429, `server_error` otherwise), after the endpoint's first latency.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, whole seconds.
        retry_after_s: Option<u64>,
        /// `retry-after-ms`.
        retry_after_ms: Option<f64>,
    },
    /// 429 `insufficient_quota` (out of credit: clients must not retry).
    InsufficientQuota,
    /// No answer for an hour (the client's timeout must act).
    Hang,
    /// 200, then an `{"error":…}` object inside the stream (chat and transcription; for speech
    /// the same as [`Fault::Drop`]).
    StreamError,
    /// 200, part of the answer, then the connection is dropped.
    Drop,
    /// 200, the first `n` pieces of the normal answer (SSE events — for chat the first is the
    /// `role` chunk —, or audio chunks of [`Latency::chunk_ms`]; a JSON answer is one piece),
    /// then nothing for an hour: the connection stays open.
    StallAfter(usize),
    /// 200, the first `n` bytes of the normal answer (e.g. 4800 bytes = 100 ms of 24 kHz
    /// speech), then the connection is dropped.
    DropAfterBytes(usize),
    /// 200 with `Content-Type: text/html` and [`HTML_ERROR_PAGE`], as a proxy in front of a
    /// failing server answers.
    Html,
}

/// The body of [`Fault::Html`].
pub const HTML_ERROR_PAGE: &str = "<html>502 Bad Gateway</html>";

impl Fault {
    /// A plain status fault.
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            retry_after_s: None,
            retry_after_ms: None,
        }
    }
}

/// Apply `fault` to requests of `endpoint`: skip the first `skip` that reach it (counted from
/// when the rule was added), then fault the next `times`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// Requests to let through first.
    pub skip: usize,
    /// Requests to fault.
    pub times: usize,
    /// The fault.
    pub fault: Fault,
}

impl FaultRule {
    /// Faults the next `times` requests to `endpoint`.
    pub fn next(endpoint: Endpoint, times: usize, fault: Fault) -> Self {
        FaultRule {
            endpoint,
            skip: 0,
            times,
            fault,
        }
    }
}

/// What the double answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Latencies.
    pub latency: Latency,
    /// Transcripts, one per transcription request, in order (cycling; `"Hello."` when empty).
    pub transcripts: Vec<String>,
    /// Reply rules, first match wins.
    pub rules: Vec<Rule>,
    /// The reply when no rule matches.
    pub default_reply: Reply,
    /// The reply when the last message is a tool result.
    pub after_tool: Reply,
    /// Fault rules.
    pub faults: Vec<FaultRule>,
    /// When set, requests must carry `Authorization: Bearer <this>` (else 401).
    pub api_key: Option<String>,
    /// Send `data: [DONE]` after `transcript.text.done`.
    pub stt_done_marker: bool,
    /// Speech audio per character of input, ms (default 70, about 14 characters per second).
    pub ms_per_char: u64,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            latency: Latency::REALISTIC,
            transcripts: Vec::new(),
            rules: Vec::new(),
            default_reply: Reply::text("I see. Tell me more."),
            after_tool: Reply::text("Done."),
            faults: Vec::new(),
            api_key: None,
            stt_done_marker: false,
            ms_per_char: 70,
        }
    }
}

/// One request and what the double answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// When the request arrived.
    pub at: Instant,
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The request: the JSON body, or the multipart fields (the file as
    /// `{"filename","content_type","bytes"}`).
    pub request: Value,
    /// The response status.
    pub status: u16,
    /// The response's JSON payloads in order: the whole body, each SSE event (without
    /// `[DONE]`), or the error body. Speech audio is not included.
    pub response: Vec<Value>,
    /// Bytes of speech audio in the response.
    pub audio_bytes: usize,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

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

fn lock(state: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fault for the next request to `endpoint`, advancing the rules.
fn take_fault(st: &mut State, endpoint: Endpoint) -> Option<Fault> {
    let mut hit = None;
    for (rule, seen) in st.rules.iter_mut() {
        if rule.endpoint != endpoint {
            continue;
        }
        let n = *seen;
        *seen += 1;
        if hit.is_none() && n >= rule.skip && n < rule.skip.saturating_add(rule.times) {
            hit = Some(rule.fault.clone());
        }
    }
    hit
}

fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A planned response: status, headers, body pieces each after a delay, and an optional
/// connection drop at the end.
struct Plan {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    pieces: Vec<(Duration, Vec<u8>)>,
    drop_at_end: bool,
    /// Wait before the headers.
    head_delay: Duration,
}

async fn respond(plan: Plan) -> Response {
    let head_delay = plan.head_delay;
    if !head_delay.is_zero() {
        tokio::time::sleep(head_delay).await;
    }
    let Plan {
        status,
        content_type,
        headers,
        pieces,
        drop_at_end,
        ..
    } = plan;
    let stream = futures_util::stream::unfold(
        (0usize, pieces, drop_at_end),
        |(i, pieces, drop_at_end)| async move {
            if i >= pieces.len() {
                if drop_at_end && i == pieces.len() {
                    return Some((
                        Err(std::io::Error::other("connection dropped by the double")),
                        (i + 1, pieces, false),
                    ));
                }
                return None;
            }
            let (delay, bytes) = &pieces[i];
            if !delay.is_zero() {
                tokio::time::sleep(*delay).await;
            }
            let b = Bytes::from(bytes.clone());
            Some((Ok(b), (i + 1, pieces, drop_at_end)))
        },
    );
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r.body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn sse(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// The plan for a faulted request (`None`: the fault applies inside the normal stream).
fn fault_plan(fault: &Fault, first: Duration) -> Option<(Plan, Vec<Value>)> {
    let json_plan = |status: u16, headers: Vec<(&'static str, String)>, body: Value| Plan {
        status,
        content_type: "application/json",
        headers,
        pieces: vec![(Duration::ZERO, body.to_string().into_bytes())],
        drop_at_end: false,
        head_delay: first,
    };
    match fault {
        Fault::Status {
            status,
            retry_after_s,
            retry_after_ms,
        } => {
            let body = match status {
                401 => error_body(
                    "Incorrect API key provided: sk-test. You can find your API key at https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                ),
                429 => error_body(
                    "Rate limit reached for requests. Please try again in 6ms.",
                    "requests",
                    Some("rate_limit_exceeded"),
                ),
                _ => error_body(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                ),
            };
            let mut h = Vec::new();
            if let Some(s) = retry_after_s {
                h.push(("retry-after", s.to_string()));
            }
            if let Some(m) = retry_after_ms {
                h.push(("retry-after-ms", m.to_string()));
            }
            Some((json_plan(*status, h, body.clone()), vec![body]))
        }
        Fault::InsufficientQuota => {
            let body = error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                Some("insufficient_quota"),
            );
            Some((json_plan(429, Vec::new(), body.clone()), vec![body]))
        }
        Fault::Hang => Some((
            Plan {
                status: 200,
                content_type: "text/plain",
                headers: Vec::new(),
                pieces: Vec::new(),
                drop_at_end: false,
                head_delay: Duration::from_secs(3600),
            },
            Vec::new(),
        )),
        Fault::Html => Some((
            Plan {
                status: 200,
                content_type: "text/html; charset=utf-8",
                headers: Vec::new(),
                pieces: vec![(Duration::ZERO, HTML_ERROR_PAGE.as_bytes().to_vec())],
                drop_at_end: false,
                head_delay: first,
            },
            Vec::new(),
        )),
        Fault::StreamError | Fault::Drop | Fault::StallAfter(_) | Fault::DropAfterBytes(_) => None,
    }
}

/// Cuts a normal answer as [`Fault::StallAfter`] or [`Fault::DropAfterBytes`] ask.
fn cut(mut plan: Plan, fault: Option<&Fault>) -> Plan {
    match fault {
        Some(Fault::StallAfter(n)) if plan.status == 200 => {
            plan.pieces.truncate(*n);
            plan.pieces.push((Duration::from_secs(3600), Vec::new()));
            plan.drop_at_end = false;
        }
        Some(Fault::DropAfterBytes(n)) if plan.status == 200 => {
            let mut left = *n;
            let mut kept = Vec::new();
            for (d, mut b) in std::mem::take(&mut plan.pieces) {
                if left == 0 {
                    break;
                }
                b.truncate(left);
                left -= b.len();
                kept.push((d, b));
            }
            plan.pieces = kept;
            plan.drop_at_end = true;
        }
        _ => {}
    }
    plan
}

fn check_auth(st: &State, headers: &HeaderMap) -> Option<(Plan, Vec<Value>)> {
    let want = st.script.api_key.as_ref()?;
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if got == format!("Bearer {want}") {
        return None;
    }
    fault_plan(&Fault::status(401), Duration::ZERO)
}

fn bad_request(message: &str) -> (Plan, Vec<Value>) {
    let body = error_body(message, "invalid_request_error", None);
    (
        Plan {
            status: 400,
            content_type: "application/json",
            headers: Vec::new(),
            pieces: vec![(Duration::ZERO, body.to_string().into_bytes())],
            drop_at_end: false,
            head_delay: Duration::ZERO,
        },
        vec![body],
    )
}

fn record(
    state: &Arc<Mutex<State>>,
    at: Instant,
    endpoint: Endpoint,
    request: Value,
    plan: Plan,
    response: Vec<Value>,
    fault: Option<Fault>,
) -> Plan {
    let plan = cut(plan, fault.as_ref());
    let audio_bytes = if endpoint == Endpoint::Speech
        && plan.status == 200
        && plan.content_type.starts_with("audio/")
    {
        plan.pieces.iter().map(|(_, b)| b.len()).sum()
    } else {
        0
    };
    lock(state).exchanges.push(Exchange {
        at,
        endpoint,
        request,
        status: plan.status,
        response,
        audio_bytes,
        fault,
    });
    plan
}

/// Parses a `multipart/form-data` body into fields (file parts as an object).
fn parse_multipart(headers: &HeaderMap, body: &[u8]) -> Result<(Value, Vec<u8>), String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = ct
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .filter(|_| ct.to_ascii_lowercase().starts_with("multipart/form-data"))
        .ok_or_else(|| format!("Content-Type must be multipart/form-data, got {ct:?}"))?;
    let delim = format!("--{boundary}").into_bytes();
    let mut fields = serde_json::Map::new();
    let mut file = Vec::new();
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos = find(body, &delim, 0).ok_or("no multipart boundary in the body")?;
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        pos += 2; // CRLF
        let head_end = find(body, b"\r\n\r\n", pos).ok_or("a part without headers")?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).to_string();
        let data_start = head_end + 4;
        let next = find(body, &delim, data_start).ok_or("an unterminated part")?;
        let data = &body[data_start..next.saturating_sub(2)];
        let attr = |name: &str| -> Option<String> {
            let key = format!("{name}=\"");
            let i = head.find(&key)? + key.len();
            let j = head[i..].find('"')? + i;
            Some(head[i..j].to_string())
        };
        let name = attr("name").ok_or("a part without a name")?;
        if let Some(filename) = attr("filename") {
            let ctype = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("content-type:")
                        .then(|| l[13..].trim().to_string())
                })
                .unwrap_or_default();
            fields.insert(
                name,
                json!({"filename": filename, "content_type": ctype, "bytes": data.len()}),
            );
            file = data.to_vec();
        } else {
            fields.insert(name, json!(String::from_utf8_lossy(data)));
        }
        pos = next;
    }
    Ok((Value::Object(fields), file))
}

fn words(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .filter(|(_, w)| !w.is_empty())
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

async fn transcriptions(state: Arc<Mutex<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let (plan, resp, request, fault) = {
        let mut st = lock(&state);
        let parsed = parse_multipart(&headers, &body);
        let request = parsed.as_ref().map(|p| p.0.clone()).unwrap_or(Value::Null);
        let lat = st.script.latency;
        if let Some((p, r)) = check_auth(&st, &headers) {
            (p, r, request, None)
        } else {
            match parsed {
                Err(e) => {
                    let (p, r) = bad_request(&e);
                    (p, r, request, None)
                }
                Ok((fields, file)) if fields.get("model").is_none() || file.is_empty() => {
                    let (p, r) = bad_request("'file' and 'model' are required");
                    let _ = fields;
                    (p, r, request, None)
                }
                Ok((fields, _)) => {
                    let fault = take_fault(&mut st, Endpoint::Transcriptions);
                    if let Some((p, r)) = fault
                        .as_ref()
                        .and_then(|f| fault_plan(f, ms(lat.stt_ms / 2)))
                    {
                        (p, r, request, fault)
                    } else {
                        let n = st.script.transcripts.len();
                        let text = if n == 0 {
                            "Hello.".to_string()
                        } else {
                            st.script.transcripts[st.next_transcript % n].clone()
                        };
                        // A transcription that never completes is asked again: the retry
                        // gets the same words.
                        if !matches!(fault, Some(Fault::StallAfter(_) | Fault::DropAfterBytes(_))) {
                            st.next_transcript += 1;
                        }
                        let usage = json!({"type": "tokens", "input_tokens": 14,
                            "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                            "output_tokens": 5, "total_tokens": 19});
                        let stream = fields.get("stream").and_then(Value::as_str) == Some("true");
                        let mut resp = Vec::new();
                        let plan = if stream {
                            let mut pieces = Vec::new();
                            let half = ms(lat.stt_ms / 2);
                            for w in words(&text) {
                                let e = json!({"type": "transcript.text.delta", "delta": w});
                                pieces.push((Duration::ZERO, sse(&e)));
                                resp.push(e);
                            }
                            let drop_at_end = matches!(fault, Some(Fault::Drop));
                            if matches!(fault, Some(Fault::StreamError)) {
                                let e = error_body(
                                    "The server had an error while processing your request.",
                                    "server_error",
                                    None,
                                );
                                pieces.push((half, sse(&e)));
                                resp.push(e);
                            } else if !drop_at_end {
                                let done = json!({"type": "transcript.text.done", "text": text, "usage": usage});
                                pieces.push((ms(lat.stt_ms - lat.stt_ms / 2), sse(&done)));
                                resp.push(done);
                                if st.script.stt_done_marker {
                                    pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
                                }
                            }
                            Plan {
                                status: 200,
                                content_type: "text/event-stream",
                                headers: Vec::new(),
                                pieces,
                                drop_at_end,
                                head_delay: half,
                            }
                        } else {
                            let body = json!({"text": text, "usage": usage});
                            resp.push(body.clone());
                            Plan {
                                status: 200,
                                content_type: "application/json",
                                headers: Vec::new(),
                                pieces: if matches!(fault, Some(Fault::Drop | Fault::StreamError)) {
                                    vec![(
                                        Duration::ZERO,
                                        body.to_string().as_bytes()[..5].to_vec(),
                                    )]
                                } else {
                                    vec![(Duration::ZERO, body.to_string().into_bytes())]
                                },
                                drop_at_end: matches!(
                                    fault,
                                    Some(Fault::Drop | Fault::StreamError)
                                ),
                                head_delay: ms(lat.stt_ms),
                            }
                        };
                        (plan, resp, request, fault)
                    }
                }
            }
        }
    };
    let plan = record(
        &state,
        at,
        Endpoint::Transcriptions,
        request,
        plan,
        resp,
        fault,
    );
    respond(plan).await
}

fn chat_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish: Option<&str>,
    usage: bool,
) -> Value {
    let mut c = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": "fp_hark_double",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if usage {
        c["usage"] = Value::Null;
    }
    c
}

async fn chat(state: Arc<Mutex<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (plan, resp, fault) = {
        let mut st = lock(&state);
        let lat = st.script.latency;
        if let Some((p, r)) = check_auth(&st, &headers) {
            (p, r, None)
        } else if !request.is_object()
            || request.get("model").and_then(Value::as_str).is_none()
            || request
                .get("messages")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        {
            let (p, r) = bad_request("'model' and a non-empty 'messages' are required");
            (p, r, None)
        } else if request.get("stream") != Some(&Value::Bool(true)) {
            let (p, r) = bad_request("this double only answers stream: true");
            (p, r, None)
        } else {
            let fault = take_fault(&mut st, Endpoint::ChatCompletions);
            if let Some((p, r)) = fault.as_ref().and_then(|f| fault_plan(f, ms(lat.ttft_ms))) {
                (p, r, fault)
            } else {
                let messages = request["messages"].as_array().cloned().unwrap_or_default();
                let last = messages.last().cloned().unwrap_or(Value::Null);
                let reply = if last["role"] == "tool" {
                    st.script.after_tool.clone()
                } else {
                    let user = messages
                        .iter()
                        .rev()
                        .find(|m| m["role"] == "user")
                        .and_then(|m| m["content"].as_str())
                        .unwrap_or("")
                        .to_lowercase();
                    st.script
                        .rules
                        .iter()
                        .find(|r| user.contains(&r.when.to_lowercase()))
                        .map(|r| r.reply.clone())
                        .unwrap_or_else(|| st.script.default_reply.clone())
                };
                let model = request["model"]
                    .as_str()
                    .unwrap_or("gpt-4o-mini")
                    .to_string();
                let usage = request["stream_options"]["include_usage"] == Value::Bool(true);
                st.seq += 1;
                let id = format!("chatcmpl-double{}", st.seq);
                let created = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut resp = Vec::new();
                let mut pieces = Vec::new();
                let mut push = |delay: Duration, v: Value, resp: &mut Vec<Value>| {
                    pieces.push((delay, sse(&v)));
                    resp.push(v);
                };
                let tok = ms(lat.token_ms);
                push(
                    Duration::ZERO,
                    chat_chunk(
                        &id,
                        created,
                        &model,
                        json!({"role": "assistant", "content": "", "refusal": null}),
                        None,
                        usage,
                    ),
                    &mut resp,
                );
                let fail_mid = matches!(fault, Some(Fault::StreamError | Fault::Drop));
                let ws = words(&reply.text);
                let stop_after = if fail_mid { 0 } else { ws.len() };
                for (i, w) in ws.iter().take(stop_after).enumerate() {
                    push(
                        if i == 0 { Duration::ZERO } else { tok },
                        chat_chunk(&id, created, &model, json!({"content": w}), None, usage),
                        &mut resp,
                    );
                }
                if !fail_mid {
                    for (i, t) in reply.tool_calls.iter().enumerate() {
                        push(
                            tok,
                            chat_chunk(
                                &id,
                                created,
                                &model,
                                json!({"tool_calls": [{"index": i, "id": format!("call_double{}_{i}", st.seq), "type": "function", "function": {"name": t.name, "arguments": ""}}]}),
                                None,
                                usage,
                            ),
                            &mut resp,
                        );
                        let mid = t
                            .arguments
                            .char_indices()
                            .nth(t.arguments.chars().count() / 2)
                            .map_or(0, |(b, _)| b);
                        for piece in [&t.arguments[..mid], &t.arguments[mid..]] {
                            push(
                                tok,
                                chat_chunk(
                                    &id,
                                    created,
                                    &model,
                                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                                    None,
                                    usage,
                                ),
                                &mut resp,
                            );
                        }
                    }
                    let finish = if reply.tool_calls.is_empty() {
                        "stop"
                    } else {
                        "tool_calls"
                    };
                    push(
                        Duration::ZERO,
                        chat_chunk(&id, created, &model, json!({}), Some(finish), usage),
                        &mut resp,
                    );
                    if usage {
                        let completion = (ws.len() + reply.tool_calls.len() * 8) as u64;
                        let prompt = request.to_string().len() as u64 / 4;
                        push(
                            Duration::ZERO,
                            json!({
                                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                                "system_fingerprint": "fp_hark_double", "choices": [],
                                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                          "total_tokens": prompt + completion,
                                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                                          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
                            }),
                            &mut resp,
                        );
                    }
                }
                if matches!(fault, Some(Fault::StreamError)) {
                    push(
                        Duration::ZERO,
                        error_body(
                            "The server had an error while processing your request. Sorry about that!",
                            "server_error",
                            None,
                        ),
                        &mut resp,
                    );
                }
                let drop_at_end = matches!(fault, Some(Fault::Drop));
                if !fail_mid {
                    pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
                }
                (
                    Plan {
                        status: 200,
                        content_type: "text/event-stream; charset=utf-8",
                        headers: vec![("x-request-id", format!("req_double{}", st.seq))],
                        pieces,
                        drop_at_end,
                        head_delay: ms(lat.ttft_ms),
                    },
                    resp,
                    fault,
                )
            }
        }
    };
    let plan = record(
        &state,
        at,
        Endpoint::ChatCompletions,
        request,
        plan,
        resp,
        fault,
    );
    respond(plan).await
}

/// Speech-like PCM (24 kHz s16le mono) for `text`: each syllable (vowel group) of each word a
/// voiced tone (fundamental 120–200 Hz with two harmonics, 10 ms attack, decay), 40 ms between
/// syllables, 90 ms between words, 250 ms after `.`/`!`/`?`. Scaled so its length is about
/// `ms_per_char` per character.
pub fn speech_pcm(text: &str, ms_per_char: u64) -> Vec<i16> {
    const RATE: f64 = 24_000.0;
    let chars = text.chars().count().max(1) as f64;
    let target_s = chars * ms_per_char as f64 / 1000.0;
    // Plan segments: (voiced, seconds) before scaling.
    let mut plan: Vec<(bool, f64)> = Vec::new();
    for word in text.split_whitespace() {
        let lower = word.to_lowercase();
        let mut syllables = 0;
        let mut in_vowel = false;
        for c in lower.chars() {
            let v = "aeiouy".contains(c);
            if v && !in_vowel {
                syllables += 1;
            }
            in_vowel = v;
        }
        let syllables = syllables.max(1);
        for s in 0..syllables {
            if s > 0 {
                plan.push((false, 0.04));
            }
            plan.push((true, 0.16));
        }
        let pause = if word.ends_with(['.', '!', '?']) {
            0.25
        } else {
            0.09
        };
        plan.push((false, pause));
    }
    if plan.is_empty() {
        plan.push((true, 0.2));
    }
    let total: f64 = plan.iter().map(|p| p.1).sum();
    let scale = if total > 0.0 { target_s / total } else { 1.0 };
    let mut out = Vec::with_capacity((target_s * RATE) as usize + 1);
    let mut k = 0usize;
    for (voiced, secs) in plan {
        let n = (secs * scale * RATE) as usize;
        if !voiced {
            out.extend(std::iter::repeat_n(0i16, n));
            continue;
        }
        k += 1;
        let f0 = 120.0 + 80.0 * ((k * 7 % 11) as f64 / 10.0);
        for i in 0..n {
            let t = i as f64 / RATE;
            let attack = (t / 0.010).min(1.0);
            let release = ((n - i) as f64 / (RATE * 0.015)).min(1.0);
            let decay = (-t * 3.0).exp();
            let w = 2.0 * std::f64::consts::PI * f0 * t;
            let v = w.sin() + 0.5 * (2.0 * w).sin() + 0.25 * (3.0 * w).sin();
            out.push((v / 1.75 * 9000.0 * attack * release * decay) as i16);
        }
    }
    out
}

async fn speech(state: Arc<Mutex<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (plan, resp, fault) = {
        let mut st = lock(&state);
        let lat = st.script.latency;
        let input = request.get("input").and_then(Value::as_str);
        if let Some((p, r)) = check_auth(&st, &headers) {
            (p, r, None)
        } else if !request.is_object()
            || request.get("model").and_then(Value::as_str).is_none()
            || input.is_none()
            || request.get("voice").is_none()
        {
            let (p, r) = bad_request("'model', 'input' and 'voice' are required");
            (p, r, None)
        } else if request.get("response_format").and_then(Value::as_str) != Some("pcm") {
            let (p, r) = bad_request("this double only answers response_format: pcm");
            (p, r, None)
        } else {
            let fault = take_fault(&mut st, Endpoint::Speech);
            if let Some((p, r)) = fault.as_ref().and_then(|f| fault_plan(f, ms(lat.ttfb_ms))) {
                (p, r, fault)
            } else {
                let pcm = speech_pcm(input.unwrap_or(""), st.script.ms_per_char);
                let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                let chunk = (48 * lat.chunk_ms.max(1)) as usize;
                let gap = if lat.audio_speed > 0.0 {
                    Duration::from_secs_f64(lat.chunk_ms as f64 / 1000.0 / lat.audio_speed)
                } else {
                    Duration::ZERO
                };
                let mut pieces: Vec<(Duration, Vec<u8>)> = bytes
                    .chunks(chunk)
                    .enumerate()
                    .map(|(i, c)| (if i == 0 { Duration::ZERO } else { gap }, c.to_vec()))
                    .collect();
                let drop_at_end = matches!(fault, Some(Fault::Drop | Fault::StreamError));
                if drop_at_end {
                    pieces.truncate(1);
                }
                (
                    Plan {
                        status: 200,
                        content_type: "audio/pcm",
                        headers: Vec::new(),
                        pieces,
                        drop_at_end,
                        head_delay: ms(lat.ttfb_ms),
                    },
                    Vec::new(),
                    fault,
                )
            }
        }
    };
    let plan = record(&state, at, Endpoint::Speech, request, plan, resp, fault);
    respond(plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_length_follows_the_text() {
        let short = speech_pcm("Hi.", 70);
        let long = speech_pcm("This is a much longer sentence than the first one.", 70);
        assert!((short.len() as f64 / 24.0 - 210.0).abs() < 20.0);
        assert!((long.len() as f64 / 24.0 - 50.0 * 70.0).abs() < 50.0);
        let db = hark_codecs::pcm::rms_dbfs(&long);
        assert!((-30.0..-10.0).contains(&db), "{db} dBFS");
    }

    #[test]
    fn multipart_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=XX".parse().unwrap(),
        );
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XX--\r\n";
        let (f, file) = parse_multipart(&h, body).unwrap();
        assert_eq!(f["model"], "whisper-1");
        assert_eq!(f["file"]["filename"], "audio.wav");
        assert_eq!(f["file"]["content_type"], "audio/wav");
        assert_eq!(file, b"RIFF");
    }

    #[test]
    fn stall_and_drop_cut_the_answer() {
        let plan = || Plan {
            status: 200,
            content_type: "audio/pcm",
            headers: Vec::new(),
            pieces: vec![
                (Duration::ZERO, vec![1; 3000]),
                (ms(10), vec![2; 3000]),
                (ms(10), vec![3; 3000]),
            ],
            drop_at_end: false,
            head_delay: Duration::ZERO,
        };
        let p = cut(plan(), Some(&Fault::StallAfter(1)));
        assert_eq!(p.pieces.len(), 2);
        assert_eq!(p.pieces[0].1, vec![1; 3000]);
        assert!(p.pieces[1].0 >= Duration::from_secs(3600) && p.pieces[1].1.is_empty());
        assert!(!p.drop_at_end);
        let p = cut(plan(), Some(&Fault::DropAfterBytes(4800)));
        let sizes: Vec<usize> = p.pieces.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, [3000, 1800]);
        assert!(p.drop_at_end);
        let p = cut(plan(), None);
        assert_eq!(p.pieces.len(), 3);
        let (html, _) = fault_plan(&Fault::Html, ms(5)).unwrap();
        assert_eq!(
            (html.status, html.content_type),
            (200, "text/html; charset=utf-8")
        );
        assert_eq!(html.pieces[0].1, HTML_ERROR_PAGE.as_bytes());
    }

    #[test]
    fn fault_rules_skip_then_fault() {
        let mut st = State {
            script: Script::default(),
            rules: vec![(
                FaultRule {
                    endpoint: Endpoint::Speech,
                    skip: 1,
                    times: 2,
                    fault: Fault::Hang,
                },
                0,
            )],
            next_transcript: 0,
            exchanges: Vec::new(),
            seq: 0,
        };
        let got: Vec<bool> = (0..4)
            .map(|_| take_fault(&mut st, Endpoint::Speech).is_some())
            .collect();
        assert_eq!(got, [false, true, true, false]);
        assert!(take_fault(&mut st, Endpoint::ChatCompletions).is_none());
    }
}
