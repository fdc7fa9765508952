//! A local double of ElevenLabs Conversational AI on 127.0.0.1:0: the signed-URL REST endpoint
//! and the conversation WebSocket, speaking `fixtures/specs/elevenlabs/agent.asyncapi.yaml`
//! (the tests validate every message it sends and receives against that spec).
//!
//! - `GET /v1/convai/conversation/get-signed-url?agent_id=…` with `xi-api-key`:
//!   `200 {"signed_url":"ws://127.0.0.1:<port>/v1/convai/conversation?agent_id=…&conversation_signature=…"}`,
//!   401 for a wrong key, 404 for another agent, or the status set with
//!   [`ElevenLabsDouble::fail_signed_url`] (401/429/500 with ElevenLabs-shaped bodies).
//! - `GET /v1/convai/conversation?agent_id=…&conversation_signature=…` (WebSocket): a
//!   signature is good once; a public agent ([`Script::api_key`] `None`) needs none. The first
//!   client message must be `conversation_initiation_client_data` (else close 1008
//!   `missing_fields`); the double answers `conversation_initiation_metadata` with the
//!   script's formats, then plays [`Script::first_message`].
//! - The script runs on the **caller's audio clock**: each [`Step`] fires when the
//!   `user_audio_chunk`s received add up to its `at_ms` (bytes ÷ 8 for `ulaw_8000`, ÷ 2·rate/1000
//!   for `pcm_*`), so a scripted conversation lines up with a recorded session whatever the
//!   socket timing. A reply sends `user_transcript`, `agent_response`, then its audio as
//!   `audio` events of [`Script::chunk_ms`] each with rising `event_id`s, paced at
//!   [`Script::speed`] × real time after [`Script::first_audio_delay_ms`]. An interruption stops
//!   the reply, sends `interruption` with the last audio `event_id`, then (to test the client's
//!   rule) re-sends the last `stale_chunks` audio events with their old ids, then
//!   `agent_response_correction` when given.
//! - Everything sent and received is recorded with its time ([`ElevenLabsDouble::conversations`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Sent first as `user_transcript` (none for a greeting).
    pub user_text: Option<String>,
    /// Sent as `agent_response`.
    pub agent_text: String,
    /// The audio, already in the script's `agent_output_audio_format`.
    pub audio: Arc<[u8]>,
}

/// One step of the script, fired at `at_ms` of caller audio received.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Answer: transcript, response text, audio.
    Reply {
        /// Caller audio position, ms.
        at_ms: u64,
        /// The answer.
        reply: Reply,
    },
    /// The caller interrupted the reply being sent (nothing if none is).
    Interrupt {
        /// Caller audio position, ms.
        at_ms: u64,
        /// Audio events of the interrupted reply re-sent after the `interruption` with their
        /// old (stale) ids.
        stale_chunks: usize,
        /// Sent as `agent_response_correction.corrected_agent_response`.
        correction: Option<String>,
    },
    /// A `ping` with this `event_id`.
    Ping {
        /// Caller audio position, ms.
        at_ms: u64,
        /// The ping's id.
        event_id: i64,
    },
    /// A `client_tool_call`.
    ToolCall {
        /// Caller audio position, ms.
        at_ms: u64,
        /// Tool name (`end_call` ends the call in hark).
        tool_name: String,
        /// Parameters object.
        parameters: Value,
    },
    /// An `error` event, then a close with `code`.
    Error {
        /// Caller audio position, ms.
        at_ms: u64,
        /// Close code (1002, 1008, 1011; 1000 for `max_duration_exceeded`).
        code: u16,
        /// `error_type`, e.g. `llm_timeout`.
        error_type: String,
        /// `message`.
        message: String,
    },
    /// A close frame with `code` and no `error` event.
    Close {
        /// Caller audio position, ms.
        at_ms: u64,
        /// Close code.
        code: u16,
    },
}

impl Step {
    fn at_ms(&self) -> u64 {
        match self {
            Step::Reply { at_ms, .. }
            | Step::Interrupt { at_ms, .. }
            | Step::Ping { at_ms, .. }
            | Step::ToolCall { at_ms, .. }
            | Step::Error { at_ms, .. }
            | Step::Close { at_ms, .. } => *at_ms,
        }
    }
}

/// What the double does.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The agent id it serves.
    pub agent_id: String,
    /// The `xi-api-key` it accepts; `None`: a public agent, no signature needed.
    pub api_key: Option<String>,
    /// `user_input_audio_format` reported in the metadata (default `ulaw_8000`).
    pub user_input_audio_format: String,
    /// `agent_output_audio_format` (default `ulaw_8000`).
    pub agent_output_audio_format: String,
    /// Played right after the metadata.
    pub first_message: Option<Reply>,
    /// Steps, in caller-audio order.
    pub steps: Vec<Step>,
    /// Audio per `audio` event, ms (default 100).
    pub chunk_ms: u64,
    /// Pace of the audio events relative to real time (default 4: 100 ms every 25 ms).
    pub speed: f64,
    /// From a reply's transcript to its first audio, ms (default 50).
    pub first_audio_delay_ms: u64,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            agent_id: "agent_double".into(),
            api_key: Some("xi-test-key".into()),
            user_input_audio_format: "ulaw_8000".into(),
            agent_output_audio_format: "ulaw_8000".into(),
            first_message: None,
            steps: Vec::new(),
            chunk_ms: 100,
            speed: 4.0,
            first_audio_delay_ms: 50,
        }
    }
}

/// Bytes per ms of an ElevenLabs audio format (`ulaw_8000`: 8; `pcm_<rate>`: 2·rate/1000).
pub fn bytes_per_ms(format: &str) -> f64 {
    match format
        .strip_prefix("pcm_")
        .and_then(|r| r.parse::<f64>().ok())
    {
        Some(rate) => rate * 2.0 / 1000.0,
        None => 8.0,
    }
}

/// One conversation as the double saw it.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// The signature it connected with (empty for a public agent).
    pub signature: String,
    /// Client → double messages (parsed JSON), with arrival times.
    pub received: Vec<(Instant, Value)>,
    /// Double → client messages, with send times.
    pub sent: Vec<(Instant, Value)>,
    /// Caller audio received, bytes (decoded `user_audio_chunk`s).
    pub audio_in: Vec<u8>,
    /// Each decoded `user_audio_chunk` with its arrival time.
    pub chunks_in: Vec<(Instant, Vec<u8>)>,
    /// Close code received from or sent to the client, if any.
    pub close_code: Option<u16>,
    /// Messages that were not valid JSON or broke the protocol.
    pub violations: Vec<String>,
    /// The client's socket ended.
    pub ended: bool,
}

impl Conversation {
    /// Client messages of a `type` (`user_audio` for the untyped audio chunks).
    pub fn received_of(&self, kind: &str) -> Vec<&Value> {
        self.received
            .iter()
            .map(|(_, v)| v)
            .filter(|v| match v.get("type").and_then(Value::as_str) {
                Some(t) => t == kind,
                None => kind == "user_audio" && v.get("user_audio_chunk").is_some(),
            })
            .collect()
    }

    /// Messages the double sent of a `type`.
    pub fn sent_of(&self, kind: &str) -> Vec<&Value> {
        self.sent
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v.get("type").and_then(Value::as_str) == Some(kind))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    script: Option<Script>,
    signed_url_status: Option<u16>,
    signed_url_requests: u64,
    issued: HashSet<String>,
    next_sig: u64,
    conversations: Vec<Conversation>,
}

/// The running double. Stops when dropped.
#[derive(Debug)]
pub struct ElevenLabsDouble {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

/// Handler state: the recordings and the double's own address (for signed URLs).
type AppState = (Arc<Mutex<Shared>>, SocketAddr);

impl Drop for ElevenLabsDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic in a handler must not hide what was recorded.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ElevenLabsDouble {
    /// Starts the double on 127.0.0.1:0 with `script`.
    ///
    /// # Errors
    /// An I/O error if it cannot listen.
    pub async fn start(script: Script) -> std::io::Result<ElevenLabsDouble> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            script: Some(script),
            ..Shared::default()
        }));
        let app = Router::new()
            .route("/v1/convai/conversation/get-signed-url", get(signed_url))
            .route("/v1/convai/conversation", get(conversation))
            .with_state((shared.clone(), addr));
        // No Nagle: small frames (20 ms of audio) must not wait for the peer's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ElevenLabsDouble { addr, shared, task })
    }

    /// `http://127.0.0.1:<port>`: the value for `ELEVENLABS_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes every later signed-URL request fail with `status` (401, 429, 500, …); `None`
    /// restores normal answers.
    pub fn fail_signed_url(&self, status: Option<u16>) {
        lock(&self.shared).signed_url_status = status;
    }

    /// Signed-URL requests so far.
    pub fn signed_url_requests(&self) -> u64 {
        lock(&self.shared).signed_url_requests
    }

    /// Every conversation so far, in connection order.
    pub fn conversations(&self) -> Vec<Conversation> {
        lock(&self.shared).conversations.clone()
    }

    /// Waits until `n` conversations have ended (or `timeout` passes); returns them.
    pub async fn wait_ended(&self, n: usize, timeout: Duration) -> Vec<Conversation> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.conversations();
            if c.iter().filter(|c| c.ended).count() >= n || Instant::now() >= deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn detail(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"detail": {"status": code, "message": message}})),
    )
        .into_response()
}

async fn signed_url(
    State((shared, addr)): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let mut s = lock(&shared);
    s.signed_url_requests += 1;
    let Some(script) = s.script.clone() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Some(status) = s.signed_url_status {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return match status {
            401 => detail(code, "invalid_api_key", "Invalid API key"),
            429 => detail(
                code,
                "too_many_concurrent_requests",
                "Too many concurrent conversations for this agent.",
            ),
            _ => detail(code, "internal_error", "The double was told to fail."),
        };
    }
    let key = headers.get("xi-api-key").and_then(|v| v.to_str().ok());
    if script.api_key.is_none() || key != script.api_key.as_deref() {
        return detail(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Invalid API key",
        );
    }
    let agent = q
        .iter()
        .find(|(k, _)| k == "agent_id")
        .map(|(_, v)| v.as_str());
    if agent != Some(script.agent_id.as_str()) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"detail": [{"loc": ["query", "agent_id"], "msg": "unknown agent", "type": "value_error"}]})),
        )
            .into_response();
    }
    s.next_sig += 1;
    let sig = format!("sig_{}_{}", s.next_sig, std::process::id());
    s.issued.insert(sig.clone());
    let url = format!(
        "ws://{}/v1/convai/conversation?agent_id={}&conversation_signature={sig}",
        addr, script.agent_id
    );
    axum::Json(json!({ "signed_url": url })).into_response()
}

/// Answers a WebSocket upgrade on `req` with 101 and returns the socket to come (the
/// handshake per RFC 6455 §4.2.2; the accept key from tungstenite). `None` when `req` is not
/// an upgrade. Shared with the Realtime double.
pub(crate) fn upgrade(
    mut req: Request,
) -> Option<(
    Response,
    impl std::future::Future<Output = Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>>,
)> {
    let key = req.headers().get("sec-websocket-key")?.as_bytes().to_vec();
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_ws {
        return None;
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on = hyper::upgrade::on(&mut req);
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(axum::body::Body::empty())
        .ok()?;
    let fut = async move {
        let upgraded = on.await.ok()?;
        Some(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await)
    };
    Some((resp, fut))
}

async fn conversation(State((shared, _)): State<AppState>, req: Request) -> Response {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let signature = get("conversation_signature").unwrap_or_default();
    let script = {
        let mut s = lock(&shared);
        let Some(script) = s.script.clone() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        if get("agent_id").as_deref() != Some(script.agent_id.as_str()) {
            return detail(StatusCode::NOT_FOUND, "agent_not_found", "No such agent");
        }
        if script.api_key.is_some() && !s.issued.remove(&signature) {
            return detail(
                StatusCode::FORBIDDEN,
                "invalid_signature",
                "The conversation signature is invalid or already used",
            );
        }
        script
    };
    let Some((resp, ws)) = upgrade(req) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let idx = {
        let mut s = lock(&shared);
        s.conversations.push(Conversation {
            signature,
            ..Conversation::default()
        });
        s.conversations.len() - 1
    };
    tokio::spawn(async move {
        if let Some(ws) = ws.await {
            Session::new(script, shared.clone(), idx).run(ws).await;
        }
        lock(&shared).conversations[idx].ended = true;
    });
    resp
}

/// The latest reply: being sent, or sent and (for the caller) possibly still playing.
struct Playing {
    audio: Arc<[u8]>,
    /// The reply's text, as characters (spread over the chunks as their alignment).
    chars: Vec<char>,
    offset: usize,
    next_at: Instant,
    /// (event id, byte range) of every chunk sent, for stale re-sends.
    sent: Vec<(i64, usize, usize)>,
}

impl Playing {
    fn sending(&self) -> bool {
        self.offset < self.audio.len()
    }
}

struct Session {
    script: Script,
    shared: Arc<Mutex<Shared>>,
    idx: usize,
    next_event: i64,
    in_bytes: u64,
    step: usize,
    playing: Option<Playing>,
    last_audio_id: i64,
    started: bool,
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

impl Session {
    fn new(script: Script, shared: Arc<Mutex<Shared>>, idx: usize) -> Self {
        Session {
            script,
            shared,
            idx,
            next_event: 0,
            in_bytes: 0,
            step: 0,
            playing: None,
            last_audio_id: 0,
            started: false,
        }
    }

    fn record<F: FnOnce(&mut Conversation)>(&self, f: F) {
        let mut s = lock(&self.shared);
        if let Some(c) = s.conversations.get_mut(self.idx) {
            f(c);
        }
    }

    fn event_id(&mut self) -> i64 {
        self.next_event += 1;
        self.next_event
    }

    async fn send(&self, ws: &mut Ws, v: Value) -> bool {
        let text = v.to_string();
        self.record(|c| c.sent.push((Instant::now(), v)));
        ws.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(&self, ws: &mut Ws, code: u16, reason: &str) {
        self.record(|c| c.close_code = Some(code));
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            }))
            .await;
        // Drain until the client's close reply.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }

    fn chunk_bytes(&self) -> usize {
        let b = (self.script.chunk_ms as f64 * bytes_per_ms(&self.script.agent_output_audio_format))
            as usize;
        // Whole samples for PCM.
        if self.script.agent_output_audio_format.starts_with("pcm_") {
            b & !1
        } else {
            b
        }
        .max(1)
    }

    fn chunk_interval(&self) -> Duration {
        Duration::from_secs_f64(self.script.chunk_ms as f64 / 1000.0 / self.script.speed.max(0.01))
    }

    async fn start_reply(&mut self, ws: &mut Ws, reply: &Reply) -> bool {
        if let Some(text) = &reply.user_text {
            let id = self.event_id();
            if !self
                .send(
                    ws,
                    json!({"type": "user_transcript", "user_transcription_event": {"user_transcript": text, "event_id": id}}),
                )
                .await
            {
                return false;
            }
        }
        let id = self.event_id();
        if !self
            .send(
                ws,
                json!({"type": "agent_response", "agent_response_event": {"agent_response": reply.agent_text, "event_id": id}}),
            )
            .await
        {
            return false;
        }
        self.playing = Some(Playing {
            audio: reply.audio.clone(),
            chars: reply.agent_text.chars().collect(),
            offset: 0,
            next_at: Instant::now() + Duration::from_millis(self.script.first_audio_delay_ms),
            sent: Vec::new(),
        });
        true
    }

    /// Sends the next audio chunk when due; `false` if the socket failed.
    async fn send_chunk(&mut self, ws: &mut Ws) -> bool {
        let n = self.chunk_bytes();
        let interval = self.chunk_interval();
        let id = self.event_id();
        let Some(p) = self.playing.as_mut() else {
            return true;
        };
        let end = (p.offset + n).min(p.audio.len());
        let (from, to) = (p.offset, end);
        let b64 = B64.encode(&p.audio[from..to]);
        // Alignment: the reply's characters in proportion to the audio, evenly timed.
        let total = p.audio.len().max(1);
        let (c0, c1) = (from * p.chars.len() / total, to * p.chars.len() / total);
        let chars: Vec<String> = p.chars[c0..c1].iter().map(|c| c.to_string()).collect();
        let chunk_ms =
            ((to - from) as f64 / bytes_per_ms(&self.script.agent_output_audio_format)) as u64;
        let n = chars.len().max(1) as u64;
        let starts: Vec<u64> = (0..chars.len() as u64).map(|i| i * chunk_ms / n).collect();
        let durations: Vec<u64> = vec![chunk_ms / n; chars.len()];
        p.sent.push((id, from, to));
        p.offset = end;
        p.next_at += interval;
        self.last_audio_id = id;
        self.send(
            ws,
            json!({"type": "audio", "audio_event": {"audio_base_64": b64, "event_id": id,
                "alignment": {"chars": chars, "char_start_times_ms": starts, "char_durations_ms": durations}}}),
        )
        .await
    }

    async fn fire(&mut self, ws: &mut Ws, step: Step) -> bool {
        match step {
            Step::Reply { reply, .. } => self.start_reply(ws, &reply).await,
            Step::Interrupt {
                stale_chunks,
                correction,
                ..
            } => {
                let Some(p) = self.playing.take() else {
                    return true;
                };
                let id = self.last_audio_id;
                if !self
                    .send(
                        ws,
                        json!({"type": "interruption", "interruption_event": {"event_id": id}}),
                    )
                    .await
                {
                    return false;
                }
                let from = p.sent.len().saturating_sub(stale_chunks);
                for &(old, a, b) in &p.sent[from..] {
                    let b64 = B64.encode(&p.audio[a..b]);
                    if !self
                        .send(
                            ws,
                            json!({"type": "audio", "audio_event": {"audio_base_64": b64, "event_id": old}}),
                        )
                        .await
                    {
                        return false;
                    }
                }
                if let Some(text) = correction {
                    let eid = self.event_id();
                    return self
                        .send(
                            ws,
                            json!({"type": "agent_response_correction", "agent_response_correction_event": {
                                "original_agent_response": "", "corrected_agent_response": text, "event_id": eid}}),
                        )
                        .await;
                }
                true
            }
            Step::Ping { event_id, .. } => {
                self.send(
                    ws,
                    json!({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": null}}),
                )
                .await
            }
            Step::ToolCall {
                tool_name,
                parameters,
                ..
            } => {
                let id = self.event_id();
                self.send(
                    ws,
                    json!({"type": "client_tool_call", "client_tool_call": {
                        "tool_name": tool_name, "tool_call_id": format!("toolcall_{id}"),
                        "parameters": parameters, "event_id": id}}),
                )
                .await
            }
            Step::Error {
                code,
                error_type,
                message,
                ..
            } => {
                let _ = self
                    .send(
                        ws,
                        json!({"type": "error", "error_event": {"code": code, "message": message,
                            "error_type": error_type, "reason": message}}),
                    )
                    .await;
                self.close(ws, code, &error_type).await;
                false
            }
            Step::Close { code, .. } => {
                self.close(ws, code, "scripted close").await;
                false
            }
        }
    }

    fn in_ms(&self) -> u64 {
        (self.in_bytes as f64 / bytes_per_ms(&self.script.user_input_audio_format)) as u64
    }

    /// Handles one client text frame; `false` ends the session.
    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> bool {
        let now = Instant::now();
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.record(|c| c.violations.push(format!("not JSON ({e}): {text}")));
                self.close(ws, 1008, "invalid_message").await;
                return false;
            }
        };
        let audio = v
            .get("user_audio_chunk")
            .and_then(Value::as_str)
            .map(|s| B64.decode(s));
        self.record(|c| c.received.push((now, v.clone())));
        if !self.started {
            if v.get("type").and_then(Value::as_str) != Some("conversation_initiation_client_data")
            {
                self.record(|c| {
                    c.violations
                        .push(format!("first message is not the initiation: {text:.80}"))
                });
                let _ = self
                    .send(
                        ws,
                        json!({"type": "error", "error_event": {"code": 1008, "message": "conversation_initiation_client_data must come first", "error_type": "missing_fields"}}),
                    )
                    .await;
                self.close(ws, 1008, "missing_fields").await;
                return false;
            }
            self.started = true;
            let meta = json!({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
                "conversation_id": format!("conv_double_{}", self.idx),
                "agent_output_audio_format": self.script.agent_output_audio_format,
                "user_input_audio_format": self.script.user_input_audio_format}});
            if !self.send(ws, meta).await {
                return false;
            }
            if let Some(first) = self.script.first_message.clone() {
                return self.start_reply(ws, &first).await;
            }
            return true;
        }
        match audio {
            Some(Ok(bytes)) => {
                self.in_bytes += bytes.len() as u64;
                self.record(|c| {
                    c.audio_in.extend_from_slice(&bytes);
                    c.chunks_in.push((now, bytes));
                });
                while let Some(step) = self.script.steps.get(self.step).cloned() {
                    if step.at_ms() > self.in_ms() {
                        break;
                    }
                    self.step += 1;
                    if !self.fire(ws, step).await {
                        return false;
                    }
                }
            }
            Some(Err(e)) => self.record(|c| {
                c.violations
                    .push(format!("user_audio_chunk is not base64: {e}"))
            }),
            None => {}
        }
        true
    }

    async fn run(mut self, mut ws: Ws) {
        loop {
            let due = self
                .playing
                .as_ref()
                .filter(|p| p.sending())
                .map(|p| p.next_at);
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if !self.on_text(&mut ws, t.as_str()).await {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map(|f| u16::from(f.code));
                        self.record(|c| c.close_code = c.close_code.or(code));
                        return;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        self.record(|c| c.violations.push("binary frame".into()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                },
                _ = sleep_until(due) => {
                    if !self.send_chunk(&mut ws).await {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
