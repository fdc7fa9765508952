//! HTTP provider pipes ([`crate::agent::HttpRequest`]): STT, LLM and TTS calls, with reqwest
//! (rustls on the **ring** provider only, see `shared/reference/crates.md`; plain `http://` for
//! local servers and doubles).
//!
//! One [`Client`] per process: it is a handle to reqwest's connection pool, so every call's
//! requests to the same provider reuse warm keep-alive connections. [`run`] carries out one
//! request as one pipe and reports through the driver's event channel:
//!
//! - `Opened { status }` when a 2xx response's headers arrive, then the body as
//!   [`ProviderEvent::Message`]s according to [`ResponseMode`], then `Closed` at its end:
//!   - `Whole`: one message with the whole body (`Text` if it is UTF-8, else `Binary`);
//!   - `Sse`: one `Text` message per server-sent event's `data` (lines split on `\n`, `\r\n` or
//!     `\r`; `data:` with or without one leading space; several `data` lines joined with `\n`;
//!     comments and `event:`/`id:`/`retry:` lines skipped; `[DONE]` passed on as data; a last
//!     event without its blank line is still delivered at the end of the body), sent as soon as
//!     the blank line ending the event arrives (WHATWG HTML "server-sent events" §9.2.6). A 2xx
//!     answer whose `Content-Type` is not `text/event-stream` (e.g. a server that ignores
//!     `stream=true` and answers JSON, as `whisper-1` does) is passed on whole, as one message;
//!   - `Chunks`: each body chunk as a `Binary` message as it arrives (streamed audio).
//! - `Failed` otherwise; terminal, nothing follows. Its [`ProviderFault`] has a [`FaultKind`]
//!   so agents classify faults without reading text:
//!   - [`FaultKind::Status`] — a non-2xx answer: `retry_after_ms` comes from `retry-after-ms`
//!     (float ms, what OpenAI's SDKs read first) or else `Retry-After` (integer seconds; an
//!     HTTP date is not parsed), and `detail` holds the start of the body (at most
//!     [`ERROR_BODY_BYTES`], e.g. OpenAI's `{"error":{"message":…,"code":…}}`);
//!   - [`FaultKind::Timeout`] — no complete answer within the request's `timeout_ms` (default
//!     [`ClientConfig::default_timeout`]) or no connection within
//!     [`ClientConfig::connect_timeout`];
//!   - [`FaultKind::Connect`] — the connection could not be made (refused, DNS, TLS);
//!   - [`FaultKind::Dropped`] — the connection broke while the body was streaming;
//!   - [`FaultKind::Request`] — the request could not be built or sent (bad method, URL,
//!     header or body);
//!   - [`FaultKind::ContentType`] — a 2xx answer whose `Content-Type` is not one the request
//!     accepts ([`HttpRequest::accept`]): e.g. a proxy's `<html>502 Bad Gateway</html>` page
//!     sent with 200 where JSON, SSE or audio was asked for. No status (the status was fine);
//!     `detail` names the type received and the types accepted, then the start of the body.
//!     No `Opened` is sent: nothing of such a body reaches the agent.
//!
//! Cancellation: the driver aborts the task on `ProviderCommand::Close`; dropping the reqwest
//! future drops the connection, which is how a provider learns to stop generating (OpenAI stops
//! a streamed completion when the client goes away).
//!
//! Metrics (through the `metrics` facade; the embedding server installs the recorder), by
//! [`HttpRequest::stage`], here and in [`super::ws`]:
//!
//! - [`REQUESTS_TOTAL`] `{stage, outcome}`, counted once when a request ends: `ok` (the whole
//!   answer was passed on), the fault's [`outcome`] (`status`, `timeout`, `connect`,
//!   `dropped`, `request`, `content_type`; [`HTTP_OUTCOMES`]), or `cancelled` when the task was
//!   aborted (`ProviderCommand::Close`, e.g. at barge-in) or the call went away first;
//! - [`RESPONSE_SECONDS`] `{stage}`: the request's start → its response headers (any status).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::agent::{
    FaultKind, HttpBody, HttpRequest, MultipartPart, PeerId, ProviderEvent, ProviderFault,
    ProviderMessage, ResponseMode,
};

/// Counter: provider requests (HTTP requests and WebSockets) by `stage` and `outcome`, each
/// counted once when it ends (see the module docs).
pub const REQUESTS_TOTAL: &str = "hark_provider_requests_total";
/// Histogram, seconds, by `stage`: a request's start → its response headers (HTTP, any
/// status), or a WebSocket's start → its handshake done.
pub const RESPONSE_SECONDS: &str = "hark_provider_response_seconds";
/// `outcome` of a request that ended well: the whole answer passed on, or a WebSocket that
/// opened and later closed normally.
pub const OUTCOME_OK: &str = "ok";
/// `outcome` of a request whose task was aborted (or whose call went away) before it ended.
pub const OUTCOME_CANCELLED: &str = "cancelled";
/// Every `outcome` an HTTP request can end with.
pub const HTTP_OUTCOMES: [&str; 8] = [
    OUTCOME_OK,
    "status",
    "timeout",
    "connect",
    "dropped",
    "request",
    "content_type",
    OUTCOME_CANCELLED,
];

/// The `outcome` label of a request that failed with `kind`: its snake_case name, without the
/// status or close code (`status`, `close`, `timeout`, `connect`, `dropped`, `request`,
/// `content_type`; the agents' own kinds by their [`crate::agent::ProviderFault::label`]).
pub fn outcome(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Status(_) => "status",
        FaultKind::Close(_) => "close",
        FaultKind::Timeout => "timeout",
        FaultKind::Connect => "connect",
        FaultKind::Dropped => "dropped",
        FaultKind::Request => "request",
        FaultKind::ContentType => "content_type",
        FaultKind::Stall => "stall",
        FaultKind::StreamError => "stream_error",
        FaultKind::EmptyAudio => "empty_audio",
    }
}

/// Counts one provider request in [`REQUESTS_TOTAL`] when dropped: with the outcome given to
/// [`RequestMetric::end`], else `cancelled` (the task was aborted before the request ended).
#[derive(Debug)]
pub(crate) struct RequestMetric {
    stage: &'static str,
    start: Instant,
    outcome: Option<&'static str>,
}

impl RequestMetric {
    /// A request of `stage` starts now.
    pub(crate) fn start(stage: &'static str) -> Self {
        RequestMetric {
            stage,
            start: Instant::now(),
            outcome: None,
        }
    }

    /// The response headers (or the WebSocket handshake) arrived: records the time since the
    /// start in [`RESPONSE_SECONDS`].
    pub(crate) fn responded(&self) {
        metrics::histogram!(RESPONSE_SECONDS, "stage" => self.stage)
            .record(self.start.elapsed().as_secs_f64());
    }

    /// The request ended with `outcome` (counted when `self` is dropped).
    pub(crate) fn end(&mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for RequestMetric {
    fn drop(&mut self) {
        let outcome = self.outcome.unwrap_or(OUTCOME_CANCELLED);
        metrics::counter!(REQUESTS_TOTAL, "stage" => self.stage, "outcome" => outcome).increment(1);
    }
}

/// At most this many bytes of a non-2xx body are put in the fault's `detail`.
pub const ERROR_BODY_BYTES: usize = 2048;
/// How long reading a non-2xx body may take before the error is reported without it.
const ERROR_BODY_WAIT: Duration = Duration::from_millis(500);

/// Settings of the shared [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// TCP connect (and TLS handshake) timeout. Default 3 s.
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect, headers and the whole body) when a request gives none.
    /// Default 60 s: long enough for a streamed reply, short enough to free a stuck pipe.
    pub default_timeout: Duration,
    /// Idle keep-alive connections are closed after this long. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections kept per host. Default 64.
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(3),
            default_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
        }
    }
}

/// Errors building a [`Client`]. The server cannot make provider requests without one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// reqwest could not build the client (its TLS backend failed to initialise).
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// The shared HTTP client: a cheap handle (clone it per call) to one connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
    cfg: ClientConfig,
}

impl Default for Client {
    /// [`Client::new`] with [`ClientConfig::default`].
    fn default() -> Self {
        // Building only fails when the TLS backend cannot initialise; `new` installs ring as
        // the process's rustls provider first, so that cannot happen here.
        Self::new(ClientConfig::default()).expect("reqwest client with rustls on ring")
    }
}

/// Installs rustls' ring provider as the process default unless one is installed already
/// (reqwest is built with `rustls-no-provider` and panics without one). Idempotent.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one meanwhile: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Client {
    /// A client with `cfg` (installs the ring crypto provider if none is installed yet, so it
    /// works in tests and tools as in `hark serve`).
    ///
    /// # Errors
    /// [`HttpError::Build`] if reqwest cannot build it.
    pub fn new(cfg: ClientConfig) -> Result<Self, HttpError> {
        install_crypto_provider();
        let inner = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| HttpError::Build(e.to_string()))?;
        Ok(Client { inner, cfg })
    }

    /// Its settings.
    pub fn config(&self) -> ClientConfig {
        self.cfg
    }
}

/// Runs one request to completion, reporting through `tx` (see the module docs). Returns when
/// the pipe has ended (its last event sent) or the receiver is gone.
pub async fn run(
    client: Client,
    peer: PeerId,
    req: HttpRequest,
    tx: mpsc::UnboundedSender<ProviderEvent>,
) {
    let mut metric = RequestMetric::start(req.stage);
    let timeout = req
        .timeout_ms
        .map_or(client.cfg.default_timeout, Duration::from_millis);
    let fut = execute(&client, peer, req, &tx, &metric);
    let result = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ProviderFault::new(
            FaultKind::Timeout,
            format!("no complete response within {} ms", timeout.as_millis()),
        )),
    };
    let (end, label) = match result {
        Ok(()) => (ProviderEvent::Closed { peer }, OUTCOME_OK),
        Err(fault) => {
            let label = outcome(fault.kind);
            (ProviderEvent::Failed { peer, fault }, label)
        }
    };
    // A call that went away first (its events unread) cancelled the request: left unended.
    if tx.send(end).is_ok() {
        metric.end(label);
    }
}

/// A reqwest error as a fault: a timeout, a failed connection, a request that could not be
/// built, else a connection that broke.
fn fault(e: &reqwest::Error) -> ProviderFault {
    let kind = if e.is_timeout() {
        FaultKind::Timeout
    } else if e.is_connect() {
        FaultKind::Connect
    } else if e.is_builder() {
        FaultKind::Request
    } else {
        FaultKind::Dropped
    };
    ProviderFault::new(kind, describe(e))
}

/// The full error text of `e` with its sources (reqwest's own message is terse).
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The bytes of a request body and their content type.
fn encode_body(peer: PeerId, body: HttpBody) -> Result<(Option<String>, Vec<u8>), ProviderFault> {
    Ok(match body {
        HttpBody::Empty => (None, Vec::new()),
        HttpBody::Json(v) => {
            let data = serde_json::to_vec(&v)
                .map_err(|e| ProviderFault::new(FaultKind::Request, e.to_string()))?;
            (Some("application/json".to_string()), data)
        }
        HttpBody::Bytes { content_type, data } => (Some(content_type), data),
        HttpBody::Multipart(parts) => {
            let boundary = boundary(peer, &parts);
            let data = multipart_body(&parts, &boundary);
            let ct = format!("multipart/form-data; boundary={boundary}");
            (Some(ct), data)
        }
    })
}

async fn execute(
    client: &Client,
    peer: PeerId,
    req: HttpRequest,
    tx: &mpsc::UnboundedSender<ProviderEvent>,
    metric: &RequestMetric,
) -> Result<(), ProviderFault> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| {
        ProviderFault::new(FaultKind::Request, format!("method {:?}: {e}", req.method))
    })?;
    let mut rb = client.inner.request(method, &req.url);
    for (k, v) in &req.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let (content_type, data) = encode_body(peer, req.body)?;
    if let Some(secret) = &req.sign {
        // Signed over the exact bytes sent, at this node's clock (the receiver checks both).
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (k, v) in secret.headers(now_s, &data) {
            rb = rb.header(k, v);
        }
    }
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    if !data.is_empty() {
        rb = rb.body(data);
    }
    let mut resp = rb.send().await.map_err(|e| fault(&e))?;
    metric.responded();
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let retry_after_ms = retry_after_ms(resp.headers());
        let body = read_prefix(&mut resp).await;
        return Err(ProviderFault::status(status, body, retry_after_ms));
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(ct) = &content_type
        && !accepts(&req.accept, ct)
    {
        let body = read_prefix(&mut resp).await;
        return Err(ProviderFault::new(
            FaultKind::ContentType,
            format!(
                "{status} answered with {ct:?}, expected {}: {body}",
                req.accept.join(" or ")
            ),
        ));
    }
    let sse = req.response == ResponseMode::Sse
        && resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
    let mode = match req.response {
        ResponseMode::Sse if !sse => ResponseMode::Whole,
        m => m,
    };
    let gone = |_| ProviderFault::new(FaultKind::Dropped, "the call is gone");
    let send = |message: ProviderMessage| -> Result<(), ProviderFault> {
        tx.send(ProviderEvent::Message { peer, message })
            .map_err(gone)
    };
    tx.send(ProviderEvent::Opened {
        peer,
        status: Some(status),
    })
    .map_err(gone)?;
    let body_err = |e: reqwest::Error| fault(&e);
    match mode {
        ResponseMode::Whole => {
            let mut all = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(body_err)? {
                all.extend_from_slice(&chunk);
            }
            send(match String::from_utf8(all) {
                Ok(s) => ProviderMessage::Text(s),
                Err(e) => ProviderMessage::Binary(e.into_bytes()),
            })?;
        }
        ResponseMode::Chunks => {
            while let Some(chunk) = resp.chunk().await.map_err(body_err)? {
                if !chunk.is_empty() {
                    send(ProviderMessage::Binary(chunk.to_vec()))?;
                }
            }
        }
        ResponseMode::Sse => {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(body_err)? {
                parser.push(&chunk, &mut events);
                for data in events.drain(..) {
                    send(ProviderMessage::Text(data))?;
                }
            }
            parser.finish(&mut events);
            for data in events.drain(..) {
                send(ProviderMessage::Text(data))?;
            }
        }
    }
    Ok(())
}

/// Whether a response of `content_type` (a `Content-Type` value, parameters allowed) is one of
/// `accept` (`type/subtype` or `type/*`, case-insensitive). An empty `accept` takes anything.
pub fn accepts(accept: &[String], content_type: &str) -> bool {
    if accept.is_empty() {
        return true;
    }
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (ty, sub) = mime.split_once('/').unwrap_or((mime.as_str(), ""));
    accept.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        match a.split_once('/') {
            Some((aty, "*")) => aty == ty,
            Some((aty, asub)) => aty == ty && asub == sub,
            None => false,
        }
    })
}

/// A boundary that occurs in none of the parts' data (RFC 2046 §5.1.1).
fn boundary(peer: PeerId, parts: &[MultipartPart]) -> String {
    let mut n = 0u32;
    loop {
        let b = format!(
            "hark-boundary-{:016x}-{:08x}-{n}",
            peer.0,
            std::process::id()
        );
        let clash = parts
            .iter()
            .any(|p| p.data.windows(b.len()).any(|w| w == b.as_bytes()));
        if !clash {
            return b;
        }
        n += 1;
    }
}

/// Encodes `multipart/form-data` (RFC 7578): one part per field, `\r\n` line ends.
pub fn multipart_body(parts: &[MultipartPart], boundary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\nContent-Disposition: form-data; name=\"");
        out.extend_from_slice(quote(&p.name).as_bytes());
        out.push(b'"');
        if let Some(f) = &p.filename {
            out.extend_from_slice(b"; filename=\"");
            out.extend_from_slice(quote(f).as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = &p.content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(ct.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

/// Escapes a multipart name or filename as browsers do (`"` → `%22`, CR/LF → `%0D`/`%0A`).
fn quote(s: &str) -> String {
    s.replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// `retry-after-ms` (float ms, rounded up) or else `Retry-After` (integer seconds).
fn retry_after_ms(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(ms.ceil() as u64);
    }
    get("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000))
}

/// Up to [`ERROR_BODY_BYTES`] of the body, lossy UTF-8, within [`ERROR_BODY_WAIT`].
async fn read_prefix(resp: &mut reqwest::Response) -> String {
    let mut buf = Vec::new();
    let read = async {
        while buf.len() < ERROR_BODY_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => buf.extend_from_slice(&c),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_WAIT, read).await;
    buf.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// An incremental server-sent-events parser: bytes in, each event's `data` out.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    /// The previous byte was `\r` (a following `\n` belongs to the same line end).
    after_cr: bool,
}

impl SseParser {
    /// Feeds bytes; appends the `data` of every event completed by them to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<String>) {
        for &b in bytes {
            match b {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(out);
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(b);
                }
            }
        }
    }

    /// The body ended: delivers a last event that had no blank line after it.
    pub fn finish(&mut self, out: &mut Vec<String>) {
        if !self.line.is_empty() {
            self.end_line(out);
        }
        self.dispatch(out);
    }

    fn end_line(&mut self, out: &mut Vec<String>) {
        if self.line.is_empty() {
            self.dispatch(out);
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        let (field, value) = match line.find(':') {
            Some(0) => ("", ""),
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        self.line.clear();
    }

    fn dispatch(&mut self, out: &mut Vec<String>) {
        if self.has_data {
            out.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }
}

/// A `metrics` recorder for tests.
#[cfg(test)]
pub(crate) mod test_recorder;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::STAGE_LLM;
    use test_recorder::with_log;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server on 127.0.0.1:0 that reads each request's head and answers it with `answer`
    /// (raw HTTP), or holds the connection without answering when `None`.
    async fn double(answer: Option<&'static str>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    match answer {
                        Some(a) => {
                            let _ = s.write_all(a.as_bytes()).await;
                            let _ = s.shutdown().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        format!("http://{addr}/v1/chat/completions")
    }

    fn get(url: &str) -> HttpRequest {
        HttpRequest {
            stage: STAGE_LLM,
            method: "GET".into(),
            url: url.to_string(),
            headers: Vec::new(),
            body: HttpBody::Empty,
            response: ResponseMode::Whole,
            timeout_ms: Some(300),
            accept: Vec::new(),
            sign: None,
        }
    }

    /// Runs `req` to its end; returns its last event.
    async fn last_event(req: HttpRequest) -> ProviderEvent {
        let (tx, mut rx) = mpsc::unbounded_channel();
        run(Client::default(), PeerId(1), req, tx).await;
        let mut last = None;
        while let Ok(ev) = rx.try_recv() {
            last = Some(ev);
        }
        last.expect("an event")
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    const BUSY: &str =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy";

    #[test]
    fn each_request_is_counted_once_by_stage_and_outcome() {
        let ((), log) = with_log(|| async {
            let ok = last_event(get(&double(Some(OK)).await)).await;
            assert_eq!(ok, ProviderEvent::Closed { peer: PeerId(1) });
            let busy = last_event(get(&double(Some(BUSY)).await)).await;
            assert!(
                matches!(&busy, ProviderEvent::Failed { fault, .. } if fault.http_status() == Some(503)),
                "{busy:?}"
            );
            let hang = last_event(get(&double(None).await)).await;
            assert!(
                matches!(&hang, ProviderEvent::Failed { fault, .. } if fault.kind == FaultKind::Timeout),
                "{hang:?}"
            );
            // Nothing listens on a port just released.
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let refused = format!("http://{}/", l.local_addr().expect("addr"));
            drop(l);
            let refused = last_event(get(&refused)).await;
            assert!(
                matches!(&refused, ProviderEvent::Failed { fault, .. } if fault.kind == FaultKind::Connect),
                "{refused:?}"
            );
            // Aborted in flight, as the driver does on `ProviderCommand::Close`.
            let (tx, _rx) = mpsc::unbounded_channel();
            let mut req = get(&double(None).await);
            req.timeout_ms = Some(60_000);
            let task = tokio::spawn(run(Client::default(), PeerId(2), req, tx));
            tokio::time::sleep(Duration::from_millis(100)).await;
            task.abort();
            assert!(task.await.expect_err("aborted").is_cancelled());
        });
        let count = |outcome| log.sum(REQUESTS_TOTAL, &[("stage", "llm"), ("outcome", outcome)]);
        for outcome in ["ok", "status", "timeout", "connect", "cancelled"] {
            assert_eq!(count(outcome), 1.0, "{outcome}: {log:?}");
        }
        assert_eq!(log.sum(REQUESTS_TOTAL, &[]), 5.0, "{log:?}");
        // Response headers came for the 200 and the 503 only, each within the test.
        let times = log.values(RESPONSE_SECONDS, &[("stage", "llm")]);
        assert_eq!(times.len(), 2, "{times:?}");
        assert!(times.iter().all(|t| (0.0..5.0).contains(t)), "{times:?}");
    }

    #[test]
    fn a_request_whose_call_went_away_is_cancelled_and_outcomes_name_kinds() {
        let ((), log) = with_log(|| async {
            let (tx, rx) = mpsc::unbounded_channel();
            drop(rx);
            run(
                Client::default(),
                PeerId(1),
                get(&double(Some(OK)).await),
                tx,
            )
            .await;
        });
        let labels = [("stage", "llm"), ("outcome", "cancelled")];
        assert_eq!(log.sum(REQUESTS_TOTAL, &labels), 1.0, "{log:?}");
        assert_eq!(outcome(FaultKind::Status(429)), "status");
        assert_eq!(outcome(FaultKind::Close(1011)), "close");
        assert_eq!(outcome(FaultKind::ContentType), "content_type");
        for k in [
            FaultKind::Status(500),
            FaultKind::Timeout,
            FaultKind::Connect,
            FaultKind::Dropped,
            FaultKind::Request,
            FaultKind::ContentType,
        ] {
            assert!(HTTP_OUTCOMES.contains(&outcome(k)), "{k:?}");
        }
    }

    fn parse_in_pieces(body: &[u8], piece: usize) -> Vec<String> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in body.chunks(piece.max(1)) {
            p.push(c, &mut out);
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn sse_events_whatever_the_chunking() {
        let body = b": comment\r\nevent: x\r\ndata: {\"a\":1}\r\n\r\ndata:{\"b\":2}\n\ndata: one\ndata: two\rid: 3\r\rdata: [DONE]\n\ndata: tail";
        let want = vec![
            "{\"a\":1}".to_string(),
            "{\"b\":2}".to_string(),
            "one\ntwo".to_string(),
            "[DONE]".to_string(),
            "tail".to_string(),
        ];
        for piece in 1..body.len() {
            assert_eq!(parse_in_pieces(body, piece), want, "pieces of {piece}");
        }
    }

    #[test]
    fn sse_blank_events_and_non_utf8_do_not_panic() {
        assert!(parse_in_pieces(b"\n\n\r\n:\n\n", 3).is_empty());
        assert_eq!(
            parse_in_pieces(b"data: \xff\xfe\n\n", 1),
            vec!["\u{fffd}\u{fffd}"]
        );
        assert_eq!(parse_in_pieces(b"data\n\n", 2), vec![""]);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after_ms(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert("retry-after-ms", "150.2".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(151));
        h.insert("retry-after-ms", "soon".parse().unwrap());
        assert_eq!(retry_after_ms(&h), Some(2000));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_ms(&h), None);
    }

    #[test]
    fn content_types_accepted() {
        let audio = vec![
            "audio/*".to_string(),
            "application/octet-stream".to_string(),
        ];
        assert!(accepts(&audio, "audio/pcm"));
        assert!(accepts(&audio, "Audio/L16; rate=24000"));
        assert!(accepts(&audio, "application/octet-stream"));
        assert!(!accepts(&audio, "text/html; charset=utf-8"));
        assert!(!accepts(&audio, "application/json"));
        let text = vec![
            "text/event-stream".to_string(),
            "application/json".to_string(),
        ];
        assert!(accepts(&text, "text/event-stream; charset=utf-8"));
        assert!(accepts(&text, "application/json"));
        assert!(!accepts(&text, "text/html"));
        assert!(!accepts(&text, "text/plain"));
        assert!(!accepts(&text, ""));
        assert!(accepts(&[], "text/html"));
    }

    #[test]
    fn multipart_shape() {
        let parts = vec![
            MultipartPart {
                name: "model".into(),
                filename: None,
                content_type: None,
                data: b"whisper-1".to_vec(),
            },
            MultipartPart {
                name: "file".into(),
                filename: Some("audio.wav".into()),
                content_type: Some("audio/wav".into()),
                data: vec![0, 1, 2],
            },
        ];
        let body = multipart_body(&parts, "XYZ");
        let want = b"--XYZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\n\x00\x01\x02\r\n--XYZ--\r\n";
        assert_eq!(body, want.to_vec());
    }
}
