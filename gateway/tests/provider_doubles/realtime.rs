//! A local double of the OpenAI Realtime WebSocket on 127.0.0.1:0, speaking the
//! `RealtimeServerEvent*` schemas of `fixtures/specs/openai/openapi.yaml` (GA names; beta names
//! from `openapi-manual_spec-2025-04-29.yaml` with [`Script::beta`]). The tests validate every
//! event it sends and receives against those specs.
//!
//! - `GET /v1/realtime?model=…` (WebSocket) with `Authorization: Bearer <key>` (401 otherwise;
//!   beta also needs `OpenAI-Beta: realtime=v1`). It sends `session.created` at once and
//!   answers each `session.update` with `session.updated` (the session merged).
//! - **Server VAD** (the session's `turn_detection` is an object): the script's [`Turn`]s run
//!   on the **caller's audio clock** (μ-law appended, 8 bytes per ms): at `start_ms +`
//!   [`Script::detect_ms`] → `input_audio_buffer.speech_started` (`audio_start_ms` =
//!   `start_ms`; an active response is cancelled first when `interrupt_response`); at `end_ms +`
//!   [`Script::silence_ms`] → `speech_stopped`, `committed`, the caller's transcript, then the
//!   turn's reply: `response.created`, transcript deltas, `response.output_audio.delta`s of
//!   [`Script::chunk_ms`] paced at [`Script::speed`] × real time, then the `.done` events and
//!   `response.done`.
//! - **No turn detection** (`turn_detection: null`): `input_audio_buffer.commit` →
//!   `committed`; `response.create` → the next turn's reply.
//! - `response.cancel` stops the active response (`response.done` with status `cancelled`), or
//!   answers `error` `response_cancel_not_active`.
//! - `conversation.item.truncate` past the audio generated for the item is refused with an
//!   `error` as the real API does ("Audio content of X ms is already shorter than Y ms");
//!   otherwise `conversation.item.truncated` echoes it. Every truncate is recorded with the
//!   generated length ([`Session::truncates`]).
//! - [`Script::function_calls`]: a turn's first response is a function call instead of its
//!   reply; `conversation.item.create` (the client's `function_call_output`) is echoed as
//!   `conversation.item.added` + `.done` (beta: `.created`), and the next `response.create`
//!   plays the turn's reply.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
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

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The transcript of the answer (sent as deltas, word by word, ahead of the audio).
    pub transcript: String,
    /// μ-law 8 kHz audio.
    pub audio: Arc<[u8]>,
}

/// One caller turn, ms of caller audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Speech start.
    pub start_ms: u64,
    /// Speech end.
    pub end_ms: u64,
    /// The caller's words (`input_audio_transcription.completed`).
    pub user_transcript: String,
    /// The answer; `None`: no answer.
    pub reply: Option<Reply>,
}

/// What the double does.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// The API key it accepts.
    pub api_key: String,
    /// Emit beta event names and expect the beta header.
    pub beta: bool,
    /// The caller's turns.
    pub turns: Vec<Turn>,
    /// Speech detected this long after it starts, ms (default 100).
    pub detect_ms: u64,
    /// Silence that ends a turn, ms (default 500, the server's default).
    pub silence_ms: u64,
    /// Audio per delta, ms (default 100).
    pub chunk_ms: u64,
    /// Pace of the deltas relative to real time (default 4).
    pub speed: f64,
    /// From `response.created` to the first delta, ms (default 50).
    pub first_audio_delay_ms: u64,
    /// (turn index, function name, arguments JSON text): that turn's first response is this
    /// call (`call_id` `call_<k>` for entry `k`), its reply comes at the next `response.create`.
    pub function_calls: Vec<(usize, String, String)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            api_key: "sk-test".into(),
            beta: false,
            turns: Vec::new(),
            detect_ms: 100,
            silence_ms: 500,
            chunk_ms: 100,
            speed: 4.0,
            first_audio_delay_ms: 50,
            function_calls: Vec::new(),
        }
    }
}

/// A truncate the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `item_id`.
    pub item_id: String,
    /// `audio_end_ms` asked for.
    pub audio_end_ms: u64,
    /// Audio generated for the item when it arrived, ms.
    pub generated_ms: u64,
    /// Refused (past the generated audio).
    pub refused: bool,
}

/// One session as the double saw it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Client events (JSON) with arrival times.
    pub received: Vec<(Instant, Value)>,
    /// Server events with send times.
    pub sent: Vec<(Instant, Value)>,
    /// Caller audio appended (decoded).
    pub audio_in: Vec<u8>,
    /// Truncates received.
    pub truncates: Vec<Truncate>,
    /// Protocol problems (bad JSON, bad base64, a format other than μ-law, …).
    pub violations: Vec<String>,
    /// The socket ended.
    pub ended: bool,
}

impl Session {
    /// Client events of a `type`.
    pub fn received_of(&self, kind: &str) -> Vec<&Value> {
        self.received
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// Server events of a `type`.
    pub fn sent_of(&self, kind: &str) -> Vec<&Value> {
        self.sent
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["type"] == kind)
            .collect()
    }
}

#[derive(Debug, Default)]
struct Shared {
    sessions: Vec<Session>,
    refused: u64,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic in a handler must not hide what was recorded.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running double. Stops when dropped.
#[derive(Debug)]
pub struct RealtimeDouble {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RealtimeDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type AppState = (Arc<Mutex<Shared>>, Arc<Script>);

impl RealtimeDouble {
    /// Starts the double on 127.0.0.1:0 with `script`.
    ///
    /// # Errors
    /// An I/O error if it cannot listen.
    pub async fn start(script: Script) -> std::io::Result<RealtimeDouble> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new()
            .route("/v1/realtime", get(connect))
            .with_state((shared.clone(), Arc::new(script)));
        // No Nagle: small frames (20 ms of audio) must not wait for the peer's delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RealtimeDouble { addr, shared, task })
    }

    /// `ws://127.0.0.1:<port>/v1/realtime`: the value for `HARK_REALTIME_URL`.
    pub fn base_url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// Every session so far.
    pub fn sessions(&self) -> Vec<Session> {
        lock(&self.shared).sessions.clone()
    }

    /// Upgrades refused (bad key or header).
    pub fn refused(&self) -> u64 {
        lock(&self.shared).refused
    }

    /// Waits until `n` sessions have ended (or `timeout` passes); returns them.
    pub async fn wait_ended(&self, n: usize, timeout: Duration) -> Vec<Session> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.sessions();
            if s.iter().filter(|s| s.ended).count() >= n || Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})),
    )
        .into_response()
}

async fn connect(State((shared, script)): State<AppState>, req: Request) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", script.api_key) {
        lock(&shared).refused += 1;
        return error_body(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided",
        );
    }
    let beta_header = req
        .headers()
        .get("openai-beta")
        .and_then(|v| v.to_str().ok())
        == Some("realtime=v1");
    if script.beta != beta_header {
        lock(&shared).refused += 1;
        return error_body(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "OpenAI-Beta: realtime=v1 is required for the beta API (and only for it)",
        );
    }
    let model = req
        .uri()
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "model")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let Some((resp, ws)) = super::elevenlabs::upgrade(req) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response();
    };
    let idx = {
        let mut s = lock(&shared);
        s.sessions.push(Session::default());
        s.sessions.len() - 1
    };
    tokio::spawn(async move {
        if let Some(ws) = ws.await {
            Conn::new((*script).clone(), shared.clone(), idx, model)
                .run(ws)
                .await;
        }
        lock(&shared).sessions[idx].ended = true;
    });
    resp
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The response being generated.
struct Active {
    id: String,
    item: String,
    audio: Arc<[u8]>,
    transcript: String,
    offset: usize,
    next_at: Instant,
}

struct Conn {
    script: Script,
    shared: Arc<Mutex<Shared>>,
    idx: usize,
    session: Value,
    seq: u64,
    in_bytes: u64,
    /// Per turn: speech started sent, stopped sent.
    progress: Vec<(bool, bool)>,
    replies_given: usize,
    active: Option<Active>,
    /// (item id, generated bytes) of every assistant item.
    items: Vec<(String, u64)>,
    /// The last item added to the conversation (for `previous_item_id`).
    last_item: Option<String>,
    /// Entries of [`Script::function_calls`] already made.
    calls_made: Vec<usize>,
    /// Items the client created.
    created: u64,
}

impl Conn {
    fn new(script: Script, shared: Arc<Mutex<Shared>>, idx: usize, model: String) -> Self {
        let turns = script.turns.len();
        let session = if script.beta {
            json!({"id": "sess_double", "model": model,
                "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": null,
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500},
                "tools": [], "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf"})
        } else {
            json!({"type": "realtime", "object": "realtime.session", "id": "sess_double", "model": model,
                "output_modalities": ["audio"], "instructions": "",
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": null, "noise_reduction": null,
                        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200, "idle_timeout_ms": null, "create_response": true, "interrupt_response": true}},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0}},
                "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": null, "prompt": null, "expires_at": 0, "include": null})
        };
        let mut session = session;
        strip_nulls(&mut session);
        Conn {
            script,
            shared,
            idx,
            session,
            seq: 0,
            in_bytes: 0,
            progress: vec![(false, false); turns],
            replies_given: 0,
            active: None,
            items: Vec::new(),
            last_item: None,
            calls_made: Vec::new(),
            created: 0,
        }
    }

    fn record<F: FnOnce(&mut Session)>(&self, f: F) {
        let mut s = lock(&self.shared);
        if let Some(x) = s.sessions.get_mut(self.idx) {
            f(x);
        }
    }

    fn name<'a>(&self, ga: &'a str, beta: &'a str) -> &'a str {
        if self.script.beta { beta } else { ga }
    }

    async fn send(&mut self, ws: &mut Ws, mut v: Value) -> bool {
        self.seq += 1;
        if let Some(m) = v.as_object_mut() {
            m.insert("event_id".into(), json!(format!("event_{}", self.seq)));
        }
        let text = v.to_string();
        self.record(|s| s.sent.push((Instant::now(), v)));
        ws.send(Message::Text(text.into())).await.is_ok()
    }

    async fn error(&mut self, ws: &mut Ws, code: &str, message: String, event_id: Value) -> bool {
        self.send(
            ws,
            json!({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                "message": message, "param": null, "event_id": event_id}}),
        )
        .await
    }

    fn server_vad(&self) -> Option<&Value> {
        let td = if self.script.beta {
            self.session.get("turn_detection")
        } else {
            self.session.pointer("/audio/input/turn_detection")
        };
        td.filter(|t| t.is_object())
    }

    fn response_json(&self, id: &str, status: &str, item: Option<(&str, &str)>) -> Value {
        let output: Vec<Value> = item
            .map(|(item_id, transcript)| {
                let mut item = json!({"id": item_id, "object": "realtime.item", "type": "message",
                    "status": status_item(status), "role": "assistant"});
                // The beta schema has no content type for output audio (`audio` in practice):
                // leave the content out there.
                if !self.script.beta {
                    item["content"] = json!([{"type": "output_audio", "transcript": transcript}]);
                }
                item
            })
            .into_iter()
            .collect();
        let mut r =
            json!({"object": "realtime.response", "id": id, "status": status, "output": output});
        if status == "cancelled" {
            r["status_details"] = json!({"type": "cancelled", "reason": "turn_detected"});
        }
        r
    }

    /// Response `resp_fc<k>`: the model calls function entry `k` of the script.
    async fn function_call(&mut self, ws: &mut Ws, k: usize) -> bool {
        self.calls_made.push(k);
        let (_, name, args) = self.script.function_calls[k].clone();
        let (id, item, call_id) = (
            format!("resp_fc{k}"),
            format!("item_fc{k}"),
            format!("call_{k}"),
        );
        let fc = |status: &str, args: &str| {
            json!({"id": item, "object": "realtime.item", "type": "function_call",
                "status": status, "name": name, "call_id": call_id, "arguments": args})
        };
        let mut args_done = json!({"type": "response.function_call_arguments.done", "response_id": id,
            "item_id": item, "output_index": 0, "call_id": call_id, "arguments": args});
        if !self.script.beta {
            args_done["name"] = json!(name);
        }
        let mut done = self.response_json(&id, "completed", None);
        done["output"] = json!([fc("completed", &args)]);
        let evs = [
            json!({"type": "response.created", "response": self.response_json(&id, "in_progress", None)}),
            json!({"type": "response.output_item.added", "response_id": id, "output_index": 0, "item": fc("in_progress", "")}),
            json!({"type": "response.function_call_arguments.delta", "response_id": id,
                "item_id": item, "output_index": 0, "call_id": call_id, "delta": args}),
            args_done,
            json!({"type": "response.output_item.done", "response_id": id, "output_index": 0, "item": fc("completed", &args)}),
            json!({"type": "response.done", "response": done}),
        ];
        self.last_item = Some(item.clone());
        for ev in evs {
            if !self.send(ws, ev).await {
                return false;
            }
        }
        true
    }

    async fn start_reply(&mut self, ws: &mut Ws) -> bool {
        let turn = self.replies_given;
        let call = (0..self.script.function_calls.len())
            .find(|k| self.script.function_calls[*k].0 == turn && !self.calls_made.contains(k));
        if let Some(k) = call {
            return self.function_call(ws, k).await;
        }
        let Some(reply) = self
            .script
            .turns
            .get(self.replies_given)
            .and_then(|t| t.reply.clone())
        else {
            self.replies_given += 1;
            return true;
        };
        self.replies_given += 1;
        let n = self.replies_given;
        let id = format!("resp_{n}");
        let item = format!("item_a{n}");
        let r = self.response_json(&id, "in_progress", None);
        if !self
            .send(ws, json!({"type": "response.created", "response": r}))
            .await
        {
            return false;
        }
        let delta_name = self
            .name(
                "response.output_audio_transcript.delta",
                "response.audio_transcript.delta",
            )
            .to_string();
        for word in reply.transcript.split_inclusive(' ') {
            let ev = json!({"type": delta_name, "response_id": id, "item_id": item,
                "output_index": 0, "content_index": 0, "delta": word});
            if !self.send(ws, ev).await {
                return false;
            }
        }
        self.items.push((item.clone(), 0));
        self.last_item = Some(item.clone());
        self.active = Some(Active {
            id,
            item,
            audio: reply.audio,
            transcript: reply.transcript,
            offset: 0,
            next_at: Instant::now() + Duration::from_millis(self.script.first_audio_delay_ms),
        });
        true
    }

    async fn finish_active(&mut self, ws: &mut Ws, status: &str) -> bool {
        let Some(a) = self.active.take() else {
            return true;
        };
        if status == "completed" {
            let done = self
                .name("response.output_audio.done", "response.audio.done")
                .to_string();
            let tdone = self
                .name(
                    "response.output_audio_transcript.done",
                    "response.audio_transcript.done",
                )
                .to_string();
            for ev in [
                json!({"type": done, "response_id": a.id, "item_id": a.item, "output_index": 0, "content_index": 0}),
                json!({"type": tdone, "response_id": a.id, "item_id": a.item, "output_index": 0, "content_index": 0, "transcript": a.transcript}),
            ] {
                if !self.send(ws, ev).await {
                    return false;
                }
            }
        }
        let r = self.response_json(&a.id, status, Some((&a.item, &a.transcript)));
        self.send(ws, json!({"type": "response.done", "response": r}))
            .await
    }

    async fn send_delta(&mut self, ws: &mut Ws) -> bool {
        let name = self
            .name("response.output_audio.delta", "response.audio.delta")
            .to_string();
        let chunk = (self.script.chunk_ms * 8) as usize;
        let interval = Duration::from_secs_f64(
            self.script.chunk_ms as f64 / 1000.0 / self.script.speed.max(0.01),
        );
        let Some(a) = self.active.as_mut() else {
            return true;
        };
        let end = (a.offset + chunk).min(a.audio.len());
        let delta = B64.encode(&a.audio[a.offset..end]);
        let n = (end - a.offset) as u64;
        a.offset = end;
        a.next_at += interval;
        let (id, item, done) = (a.id.clone(), a.item.clone(), a.offset >= a.audio.len());
        if let Some(it) = self.items.iter_mut().find(|(i, _)| *i == item) {
            it.1 += n;
        }
        let ev = json!({"type": name, "response_id": id, "item_id": item, "output_index": 0, "content_index": 0, "delta": delta});
        if !self.send(ws, ev).await {
            return false;
        }
        if done {
            return self.finish_active(ws, "completed").await;
        }
        true
    }

    /// `input_audio_buffer.committed` for user item `item` (which becomes the last item).
    /// `previous_item_id` is omitted for the first item (GA); the beta schema requires it, so
    /// there the first one follows a root item id.
    fn committed(&mut self, item: &str) -> Value {
        let mut ev = json!({"type": "input_audio_buffer.committed", "item_id": item});
        match (self.last_item.replace(item.to_string()), self.script.beta) {
            (Some(prev), _) => ev["previous_item_id"] = json!(prev),
            (None, true) => ev["previous_item_id"] = json!("item_root"),
            (None, false) => {}
        }
        ev
    }

    fn in_ms(&self) -> u64 {
        self.in_bytes / 8
    }

    /// Fires the server-VAD events due at the current caller-audio position.
    async fn vad(&mut self, ws: &mut Ws) -> bool {
        let Some(td) = self.server_vad().cloned() else {
            return true;
        };
        let interrupt = td
            .get("interrupt_response")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let now = self.in_ms();
        for i in 0..self.script.turns.len() {
            let t = self.script.turns[i].clone();
            let (started, stopped) = self.progress[i];
            if !started && now >= t.start_ms + self.script.detect_ms {
                self.progress[i].0 = true;
                if interrupt && self.active.is_some() && !self.finish_active(ws, "cancelled").await
                {
                    return false;
                }
                let ev = json!({"type": "input_audio_buffer.speech_started", "audio_start_ms": t.start_ms, "item_id": format!("item_u{}", i + 1)});
                if !self.send(ws, ev).await {
                    return false;
                }
            }
            if started && !stopped && now >= t.end_ms + self.script.silence_ms {
                self.progress[i].1 = true;
                let item = format!("item_u{}", i + 1);
                let committed = self.committed(&item);
                let mut transcribed = json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": item, "content_index": 0, "transcript": t.user_transcript});
                if !self.script.beta {
                    let secs = (t.end_ms - t.start_ms) as f64 / 1000.0;
                    transcribed["usage"] = json!({"type": "duration", "seconds": secs});
                }
                let evs = [
                    json!({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": t.end_ms, "item_id": item}),
                    committed,
                    transcribed,
                ];
                for ev in evs {
                    if !self.send(ws, ev).await {
                        return false;
                    }
                }
                // The reply of turn i (turns without one are skipped).
                self.replies_given = i;
                if !self.start_reply(ws).await {
                    return false;
                }
            }
        }
        true
    }

    fn check_formats(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let (i, o) = if self.script.beta {
            (
                self.session.get("input_audio_format").cloned(),
                self.session.get("output_audio_format").cloned(),
            )
        } else {
            (
                self.session.pointer("/audio/input/format/type").cloned(),
                self.session.pointer("/audio/output/format/type").cloned(),
            )
        };
        let want = if self.script.beta {
            "g711_ulaw"
        } else {
            "audio/pcmu"
        };
        for (what, v) in [("input", i), ("output", o)] {
            if v.as_ref().and_then(Value::as_str) != Some(want) {
                bad.push(format!("{what} format {v:?}, expected {want}"));
            }
        }
        bad
    }

    async fn on_text(&mut self, ws: &mut Ws, text: &str) -> bool {
        let now = Instant::now();
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.record(|s| s.violations.push(format!("not JSON ({e})")));
                return self
                    .error(ws, "invalid_json", format!("{e}"), Value::Null)
                    .await;
            }
        };
        self.record(|s| s.received.push((now, v.clone())));
        let eid = v.get("event_id").cloned().unwrap_or(Value::Null);
        match v["type"].as_str().unwrap_or("") {
            "session.update" => {
                merge(&mut self.session, &v["session"]);
                let bad = self.check_formats();
                if !bad.is_empty() {
                    self.record(|s| s.violations.extend(bad));
                }
                let s = self.session.clone();
                self.send(ws, json!({"type": "session.updated", "session": s}))
                    .await
            }
            "input_audio_buffer.append" => {
                match B64.decode(v["audio"].as_str().unwrap_or("")) {
                    Ok(b) => {
                        self.in_bytes += b.len() as u64;
                        self.record(|s| s.audio_in.extend_from_slice(&b));
                    }
                    Err(e) => self.record(|s| s.violations.push(format!("append: {e}"))),
                }
                self.vad(ws).await
            }
            "input_audio_buffer.commit" => {
                let item = format!("item_u{}", self.replies_given + 1);
                let ev = self.committed(&item);
                self.send(ws, ev).await
            }
            "response.create" => {
                if self.active.is_some() {
                    return self
                        .error(
                            ws,
                            "conversation_already_has_active_response",
                            "Conversation already has an active response".into(),
                            eid,
                        )
                        .await;
                }
                self.start_reply(ws).await
            }
            "response.cancel" => {
                if self.active.is_some() {
                    self.finish_active(ws, "cancelled").await
                } else {
                    self.error(
                        ws,
                        "response_cancel_not_active",
                        "Cancellation failed: no active response found".into(),
                        eid,
                    )
                    .await
                }
            }
            "conversation.item.create" => {
                self.created += 1;
                let id = format!("item_c{}", self.created);
                let mut item = v["item"].clone();
                item["id"] = json!(id);
                item["object"] = json!("realtime.item");
                item["status"] = json!("completed");
                let prev = self.last_item.replace(id);
                let added = self.name("conversation.item.added", "conversation.item.created");
                let ev = json!({"type": added, "previous_item_id": prev, "item": item});
                if !self.send(ws, ev).await {
                    return false;
                }
                self.script.beta
                    || self
                        .send(ws, json!({"type": "conversation.item.done", "previous_item_id": prev, "item": item}))
                        .await
            }
            "conversation.item.truncate" => {
                let item = v["item_id"].as_str().unwrap_or("").to_string();
                let end = v["audio_end_ms"].as_u64().unwrap_or(0);
                let generated = self
                    .items
                    .iter()
                    .find(|(i, _)| *i == item)
                    .map(|(_, b)| b / 8);
                let Some(generated_ms) = generated else {
                    return self
                        .error(ws, "item_not_found", format!("Item {item} not found"), eid)
                        .await;
                };
                let refused = end > generated_ms;
                self.record(|s| {
                    s.truncates.push(Truncate {
                        item_id: item.clone(),
                        audio_end_ms: end,
                        generated_ms,
                        refused,
                    })
                });
                if refused {
                    return self
                        .error(
                            ws,
                            "invalid_value",
                            format!(
                                "Audio content of {generated_ms}ms is already shorter than {end}ms"
                            ),
                            eid,
                        )
                        .await;
                }
                self.send(
                    ws,
                    json!({"type": "conversation.item.truncated", "item_id": item, "content_index": 0, "audio_end_ms": end}),
                )
                .await
            }
            other => {
                let other = other.to_string();
                self.error(
                    ws,
                    "unknown_event",
                    format!("unknown event type {other:?}"),
                    eid,
                )
                .await
            }
        }
    }

    async fn run(mut self, mut ws: Ws) {
        let s = self.session.clone();
        if !self
            .send(&mut ws, json!({"type": "session.created", "session": s}))
            .await
        {
            return;
        }
        loop {
            let due = self.active.as_ref().map(|a| a.next_at);
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(t))) => {
                        if !self.on_text(&mut ws, t.as_str()).await {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
                _ = sleep_until(due) => {
                    if !self.send_delta(&mut ws).await {
                        return;
                    }
                }
            }
        }
    }
}

fn status_item(response_status: &str) -> &'static str {
    if response_status == "in_progress" {
        "in_progress"
    } else {
        "completed"
    }
}

/// Removes `null` members of objects (the schemas type most optional fields without
/// `nullable`; the real API omits or nulls them).
fn strip_nulls(v: &mut Value) {
    if let Some(m) = v.as_object_mut() {
        m.retain(|_, x| !x.is_null());
        for x in m.values_mut() {
            strip_nulls(x);
        }
    }
}

/// Merges `patch` into `base` (objects recursively; anything else replaces).
fn merge(base: &mut Value, patch: &Value) {
    match (base.as_object_mut(), patch.as_object()) {
        (Some(b), Some(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    // A `type`-tagged object (a format, a turn detection) replaces the old one.
                    Some(slot) if slot.is_object() && v.is_object() && v.get("type").is_none() => {
                        merge(slot, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *base = patch.clone(),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
