//! `hark serve`: the HTTP server — TwiML for Twilio's voice webhook, the Media Streams WebSocket,
//! health and metrics.
//!
//! Routes:
//! - `GET /healthz` → `ok`.
//! - `GET /metrics` → Prometheus text format (see [`crate::metrics`]).
//! - `POST /voice` (alias `/api/twilio/voice`; GET accepted too) → TwiML connecting the call to
//!   `wss://<public host>/media-stream`, or `<Dial>` for browser clients.
//! - `GET /media-stream` → WebSocket upgrade; each call runs the engine on a call worker.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use fastwebsockets::upgrade::IncomingUpgrade;
use hark_engine::{Call, Event};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{Instrument, info, warn};

use crate::config::Config;
use crate::pool::CallPool;
use crate::signature::{self, Validator};
use crate::twiml::{self, Connect, Stream};
use crate::ws;

/// Path of the Media Streams WebSocket.
pub const STREAM_PATH: &str = "/media-stream";

/// Shared state of a running server.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    pool: CallPool,
    active: AtomicUsize,
    idle: Notify,
    validator: Option<Validator>,
    api: Option<Arc<crate::api::ApiState>>,
    /// One HTTP client for every call's provider requests (shared connection pools).
    http: hark_engine::io::http::Client,
    /// Open connections by state (see [`crate::conns`]).
    conns: Arc<crate::conns::Connections>,
    /// `true` stops every live call (after the shutdown timeout).
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("active", &self.active.load(Ordering::Relaxed))
            .field("pool", &self.pool)
            .finish()
    }
}

impl AppState {
    /// State for `config`, with its call workers started.
    ///
    /// # Errors
    /// An I/O error if the worker threads cannot start.
    pub fn new(config: Config) -> std::io::Result<Arc<Self>> {
        Self::build(config, None)
    }

    /// State for `config` with the gateway API (tokens, outbound calls, callbacks, records,
    /// Conversations): its routes are served too, `/voice` follows its signature policy, and
    /// calls are recorded through it.
    ///
    /// # Errors
    /// An I/O error if the worker threads cannot start.
    pub fn with_api(config: Config, api: Arc<crate::api::ApiState>) -> std::io::Result<Arc<Self>> {
        Self::build(config, Some(api))
    }

    fn build(config: Config, api: Option<Arc<crate::api::ApiState>>) -> std::io::Result<Arc<Self>> {
        let pool = CallPool::new(config.workers)?;
        let validator = config.twilio_auth_token.as_ref().map(Validator::new);
        // Install the recorder before the first call records anything.
        let _ = crate::metrics::handle();
        Ok(Arc::new(AppState {
            config,
            pool,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            validator,
            api,
            http: hark_engine::io::http::Client::default(),
            conns: Arc::new(crate::conns::Connections::default()),
            shutdown: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Open connections by state.
    pub fn connections(&self) -> &crate::conns::Connections {
        &self.conns
    }

    /// Calls with an open media stream.
    pub fn active_calls(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Waits until no call is active, or `timeout` passes. Returns the calls still active.
    pub async fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            let n = self.active_calls();
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active_calls();
            }
        }
    }
}

/// The router (used by `hark serve` and by tests without a socket).
pub fn router(state: Arc<AppState>) -> Router {
    let api = state.api.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/voice", any(voice))
        .route("/api/twilio/voice", any(voice))
        .route(STREAM_PATH, get(media_stream))
        .with_state(state);
    match api {
        Some(api) => app.merge(crate::api::router(api)),
        None => app,
    }
}

/// Serves `router(state)` on `listener` until `shutdown` resolves. Then it stops accepting,
/// closes idle HTTP connections, lets live calls finish for up to `config.shutdown_timeout`,
/// stops the calls still live (each closed with 1001 "going away" and recorded with
/// `ended: shutdown`), waits for their tasks to end, and drains the call records.
///
/// Each connection is served by hyper's HTTP/1 server with [`crate::conns::Limits`]: a
/// header-read deadline (which also closes idle keep-alive connections) and a cap on
/// connections that are not calls (one more gets 503 at once). Accept errors (e.g. out of file
/// descriptors) are logged and retried after 100 ms; they never end the server.
///
/// # Errors
/// None today (kept for callers that may add I/O set-up).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let limits = state.config.limits;
    let (close_idle, close_idle_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or a connection aborted before
                    // accept: never spin, never stop serving live calls.
                    metrics::counter!("hark_accept_errors_total").increment(1);
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if state.conns.pending() >= limits.max_pending_connections {
            tokio::spawn(crate::conns::refuse_busy(tcp));
            continue;
        }
        // Small frames both ways: without TCP_NODELAY, Nagle holds each outbound `media` until
        // the peer's next packet (~20 ms of added latency measured on loopback).
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let slot = state.conns.open(crate::conns::ConnState::Http);
        tokio::spawn(serve_connection(
            tcp,
            app.clone(),
            limits,
            close_idle_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    info!("shutdown: no new connections; idle HTTP connections closing");
    let _ = close_idle.send(true);
    let left = state.wait_idle(state.config.shutdown_timeout).await;
    if left > 0 {
        warn!(
            calls = left,
            "shutdown timeout: stopping live calls (closed with 1001, recorded as ended: shutdown)"
        );
        let _ = state.shutdown.send(true);
        let still = state.wait_idle(CALL_STOP_GRACE).await;
        if still > 0 {
            warn!(calls = still, "calls did not stop in time");
        }
    } else {
        info!("all calls finished");
    }
    if let Some(api) = &state.api {
        // Waits for the call tasks' recorders, writes every queued record, closes any stream
        // of this run still open as `ended: shutdown`, then stops the writer.
        let report = api.shutdown(CALL_STOP_GRACE).await;
        if report.calls_still_running > 0 || report.stats.dropped > 0 {
            warn!(?report, "some call records may be incomplete");
        }
    }
    Ok(())
}

/// How long stopped calls have to close their sockets and hand in their records.
const CALL_STOP_GRACE: Duration = Duration::from_secs(5);

/// Serves one HTTP/1 connection (upgrades allowed). On shutdown, an idle keep-alive connection
/// is closed and a busy one closed after its response.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    app: Router,
    limits: crate::conns::Limits,
    mut close_idle: tokio::sync::watch::Receiver<bool>,
    slot: crate::conns::Slot,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
            return;
        }
        _ = close_idle.wait_for(|c| *c) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.header_timeout, conn).await;
    drop(slot);
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}

/// The URL Twilio requested (for signatures): public base URL + path + query.
fn request_url(cfg: &Config, headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let base = cfg.base_url(host(headers))?;
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    Some(format!("{base}{pq}"))
}

/// `POST /voice`: Twilio's voice webhook.
async fn voice(
    State(st): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    // A form POST, or a JSON body Twilio signed with `bodySHA256` in the query.
    let body: &[u8] = if method == Method::POST { &body } else { &[] };
    let form: Vec<(String, String)> = if let Some(api) = &st.api {
        match api.verify_twilio("voice", &headers, &uri, body) {
            Ok(params) => params,
            Err(e) => {
                warn!(error = %e, "voice webhook refused");
                return e.into_response();
            }
        }
    } else {
        match crate::api::webhook_params(&headers, &uri, body) {
            Ok(f) => f,
            Err(e) => return e.into_response(),
        }
    };
    if st.api.is_none()
        && let Some(v) = &st.validator
    {
        let Some(url) = request_url(&st.config, &headers, &uri) else {
            return bad_request("no Host header and HARK_PUBLIC_URL is unset");
        };
        let sig = headers.get(signature::HEADER).and_then(|h| h.to_str().ok());
        let res = v.validate_webhook(&url, &form, body, sig);
        if let Err(e) = res {
            metrics::counter!("hark_signature_failures_total", "route" => "voice").increment(1);
            warn!(error = %e, "voice webhook refused");
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN);
            return (status, format!("X-Twilio-Signature check failed: {e}")).into_response();
        }
    }
    // HARK_AGENT=elevenlabs-direct: Twilio connects to ElevenLabs itself.
    if st.config.agent == crate::config::AgentKind::ElevenLabsDirect
        && let crate::agents::AgentSettings::ElevenLabs(s) = &st.config.agent_settings
    {
        return crate::agents::elevenlabs::direct_voice(s, &form, &st.config.after_connect).await;
    }
    let param = |name: &str| -> Option<&str> {
        form.iter()
            .chain(query.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let xml = |s: String| ([(header::CONTENT_TYPE, twiml::CONTENT_TYPE)], s).into_response();

    // A Voice SDK (browser) client dialling a phone number: bridge it with <Dial>.
    let from = param("From").unwrap_or_default();
    if from.starts_with("client:")
        && let Some(to) = param("To").filter(|t| crate::api::calls::is_e164(t))
    {
        let Some(caller_id) = &st.config.twilio_phone_number else {
            warn!("browser call to {to}: TWILIO_PHONE_NUMBER is unset");
            return xml(twiml::say_hangup_lossy(
                "This line is not configured for outgoing calls. Goodbye.",
            ));
        };
        return match twiml::dial_number(to, caller_id) {
            Ok(s) => xml(s),
            Err(e) => bad_request(format!("cannot dial {to}: {e}")),
        };
    }

    let Some(base) = st.config.base_url(host(&headers)) else {
        return bad_request(
            "no Host header and HARK_PUBLIC_URL is unset: cannot build the stream URL",
        );
    };
    let base_for_callbacks = base.clone();
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base
    };
    let mut stream = Stream::new(format!("{ws_base}{STREAM_PATH}"));
    if st.api.is_some() {
        stream = stream.status_callback(
            format!("{base_for_callbacks}/api/twilio/stream-status"),
            None,
        );
    }
    for name in ["CallSid", "From", "To"]
        .into_iter()
        .chain(st.config.stream_params.iter().map(String::as_str))
    {
        if let Some(v) = param(name) {
            stream = stream.parameter(name, v);
        }
    }
    match twiml::agent_connect(&Connect::new(stream), &st.config.after_connect) {
        Ok(s) => xml(s),
        Err(e) => bad_request(format!("cannot build TwiML: {e}")),
    }
}

/// `GET /media-stream`: the Media Streams WebSocket.
async fn media_stream(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<
        IncomingUpgrade,
        <IncomingUpgrade as axum::extract::FromRequestParts<Arc<AppState>>>::Rejection,
    >,
) -> Response {
    if let Some(refused) = check_media_stream_signature(&st, &headers, &uri) {
        return refused;
    }
    let Ok(upgrade) = upgrade else {
        return bad_request("expected a WebSocket upgrade (Twilio Media Streams connects here)");
    };
    let (response, fut) = match upgrade.upgrade() {
        Ok(x) => x,
        Err(e) => {
            metrics::counter!("hark_ws_errors_total", "kind" => "upgrade").increment(1);
            return bad_request(format!("websocket upgrade failed: {e}"));
        }
    };
    st.active.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!("hark_calls_active").increment(1.0);
    metrics::counter!("hark_calls_total").increment(1);
    let st2 = st.clone();
    // Counted as not yet a call until Twilio's `start` arrives.
    let slot = st.conns.open(crate::conns::ConnState::WebSocketPending);
    st.pool.spawn(move || {
        let span = tracing::info_span!(
            "call",
            call_sid = tracing::field::Empty,
            stream_sid = tracing::field::Empty
        );
        async move {
            let handshake = st2.config.limits.handshake_timeout;
            match tokio::time::timeout(handshake, fut).await {
                Ok(Ok(socket)) => run_call(&st2, socket, slot).await,
                Ok(Err(e)) => {
                    metrics::counter!("hark_ws_errors_total", "kind" => "upgrade").increment(1);
                    warn!(error = %e, "websocket upgrade failed");
                }
                Err(_) => {
                    metrics::counter!("hark_ws_errors_total", "kind" => "handshake_timeout")
                        .increment(1);
                    warn!(?handshake, "websocket upgrade did not complete in time");
                }
            }
            st2.active.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("hark_calls_active").decrement(1.0);
            st2.idle.notify_waiters();
        }
        .instrument(span)
    });
    response.map(axum::body::Body::new).into_response()
}

/// The `/media-stream` upgrade's signature policy, the same as `/voice`'s and the callbacks':
/// - `HARK_DEV_INSECURE=no-signatures`: accepted unsigned (development only);
/// - `TWILIO_AUTH_TOKEN` unset: refused, 503 naming the variable (an open media socket lets
///   anyone who finds the URL talk to the agent on the operator's provider bill);
/// - else `X-Twilio-Signature` must match the URL Twilio was given (`wss://` +
///   `HARK_PUBLIC_URL`'s host and path + `/media-stream`; without `HARK_PUBLIC_URL`, the `Host`
///   header with `wss://` or `ws://`), 403 when it is missing or does not.
///
/// Refusals are counted in `hark_media_stream_refused_total{reason}` (`no_token`,
/// `missing_signature`, `bad_signature`); the 403s also in
/// `hark_signature_failures_total{route="media-stream"}`.
///
/// Returns the refusal to send instead of upgrading, or `None` to go on.
fn check_media_stream_signature(
    st: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Option<Response> {
    if st.config.dev_insecure.no_signatures {
        return None;
    }
    let Some(v) = &st.validator else {
        metrics::counter!("hark_media_stream_refused_total", "reason" => "no_token").increment(1);
        warn!("media stream upgrade refused: TWILIO_AUTH_TOKEN is unset");
        return Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "media stream refused: TWILIO_AUTH_TOKEN is unset, so X-Twilio-Signature cannot be \
             checked; set TWILIO_AUTH_TOKEN (or HARK_DEV_INSECURE=no-signatures for development)",
        )
            .into_response());
    };
    let sig = headers.get(signature::HEADER).and_then(|h| h.to_str().ok());
    // Twilio was told wss://<public host>/media-stream (see /voice). Without
    // HARK_PUBLIC_URL (local runs, the simulator over plain ws://), try both schemes.
    let pq = uri
        .path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .to_string();
    let candidates: Vec<String> = match &st.config.public_url {
        Some(u) => {
            let rest = u
                .strip_prefix("https://")
                .map(|r| format!("wss://{r}"))
                .or_else(|| u.strip_prefix("http://").map(|r| format!("ws://{r}")))
                .unwrap_or_else(|| u.clone());
            vec![format!("{rest}{pq}")]
        }
        None => match host(headers) {
            Some(h) => vec![format!("wss://{h}{pq}"), format!("ws://{h}{pq}")],
            None => vec![],
        },
    };
    if candidates
        .iter()
        .any(|u| v.validate_websocket(u, sig).is_ok())
    {
        return None;
    }
    metrics::counter!("hark_signature_failures_total", "route" => "media-stream").increment(1);
    let (reason, kind) = if sig.is_none() {
        ("missing X-Twilio-Signature", "missing_signature")
    } else {
        ("X-Twilio-Signature does not match", "bad_signature")
    };
    metrics::counter!("hark_media_stream_refused_total", "reason" => kind).increment(1);
    warn!(reason, "media stream upgrade refused");
    Some((StatusCode::FORBIDDEN, reason).into_response())
}

async fn run_call(st: &AppState, socket: ws::UpgradedSocket, slot: crate::conns::Slot) {
    let agent = match st.config.agent_settings.build() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot build the agent: call refused");
            return;
        }
    };
    let mut call = match Call::new(st.config.call, agent) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot start call");
            return;
        }
    };
    let mut socket = ws::Socket::from_upgraded(socket);
    let mut shutdown = st.shutdown.subscribe();
    let mut observer = CallObserver {
        recorder: st.api.as_ref().map(|a| a.recorder()),
        turns: crate::api::turns::TurnLog::new(call.provider_ends_turns()),
        slot: Some(slot),
        ..CallObserver::default()
    };
    let drive_cfg = hark_engine::io::DriveConfig {
        start_timeout: st.config.limits.start_timeout,
        idle_timeout: st.config.limits.idle_timeout,
        ..hark_engine::io::DriveConfig::default()
    };
    let started = Instant::now();
    let mut connectors = hark_engine::io::Connectors::new(st.http.clone());
    // Failed transfers, for the record: the call went on after each.
    let mut failed_transfers: Vec<String> = Vec::new();
    let ended = loop {
        let ended = hark_engine::io::drive(
            &mut call,
            &mut socket,
            &mut connectors,
            &mut observer,
            drive_cfg,
            &mut shutdown,
        )
        .await;
        if let hark_engine::io::Ended::Closed(hark_engine::CloseReason::Transfer(to)) = &ended {
            match transfer(st, observer.call_sid.as_deref(), to).await {
                // Redirected: Twilio ends the stream itself; the socket closes now.
                Ok(()) => {
                    hark_engine::io::TwilioSocket::close(&mut socket).await;
                    break format!("transferred to {to}");
                }
                // The call goes on: the agent tells the caller (the socket is still open).
                // An agent that keeps asking is stopped after a few tries.
                Err(why) => {
                    failed_transfers.push(format!("transfer to {to} failed: {why}"));
                    if failed_transfers.len() >= MAX_FAILED_TRANSFERS {
                        hark_engine::io::TwilioSocket::close(&mut socket).await;
                        break format!("{MAX_FAILED_TRANSFERS} transfers failed");
                    }
                    call.handle_input(hark_engine::Input::TransferFailed {
                        at: hark_engine::io::now(),
                        reason: why,
                    });
                    tokio::task::yield_now().await;
                    continue;
                }
            }
        }
        break match ended {
            hark_engine::io::Ended::Closed(r) => format!("closed: {r:?}"),
            hark_engine::io::Ended::PeerClosed => "peer closed".into(),
            hark_engine::io::Ended::Shutdown => "shutdown".into(),
            hark_engine::io::Ended::Failed(e) => {
                metrics::counter!("hark_ws_errors_total", "kind" => e.kind()).increment(1);
                warn!(error = %e, "call ended by a socket failure");
                format!("failed: {e}")
            }
        };
    };
    let ended = if failed_transfers.is_empty() {
        ended
    } else {
        format!("{ended} (after: {})", failed_transfers.join("; "))
    };
    observer.flush(&call);
    let stats = call.stats();
    observer.finish_turns(call.media_ms());
    info!(ended, "call ended");
    if let (Some(rec), Some(sid)) = (&observer.recorder, &observer.call_sid) {
        rec.stream_stopped(
            sid,
            crate::api::recorder::StreamSummary {
                duration_ms: started.elapsed().as_millis() as u64,
                inbound_ms: stats.inbound_ms,
                sent_ms: stats.playout.sent_ms,
                turns: stats.turns,
                barge_ins: stats.barge_ins,
                malformed: stats.malformed_total(),
                ended,
            },
        );
    }
    info!(
        secs = started.elapsed().as_secs_f64(),
        inbound_ms = stats.inbound_ms,
        turns = stats.turns,
        barge_ins = stats.barge_ins,
        malformed = stats.malformed_total(),
        sent_ms = stats.playout.sent_ms,
        "call summary"
    );
}

/// Failed transfers after which a call ends (the agent keeps asking for one).
const MAX_FAILED_TRANSFERS: usize = 3;

/// Hands the call to `to` after the agent asked for a transfer and its words played: a call
/// update `POST …/Calls/{CallSid}.json` with `Twiml=<Response><Dial><Number|Sip>…` (Twilio REST
/// API, `UpdateCallRequest`; new TwiML ends the `<Connect><Stream>` from Twilio's side). A
/// refusal that surely was not applied (429, 503, or no connection) is tried once more after
/// 500 ms; a timeout or another 5xx is not (Twilio may have applied the update).
/// Counted in `hark_transfers_total{outcome}` (`ok`, `failed`, `not_configured`).
///
/// # Errors
/// Why the call could not be redirected (no credentials or CallSid, Twilio's refusal), for the
/// agent and the call record.
async fn transfer(st: &AppState, call_sid: Option<&str>, to: &str) -> Result<(), String> {
    let outcome = |o: &'static str| metrics::counter!("hark_transfers_total", "outcome" => o);
    // It goes into the request path.
    let call_sid = call_sid.filter(|sid| crate::api::twilio_rest::is_sid(sid, "CA"));
    let target = match (call_sid, st.api.as_ref().map(|a| a.twilio())) {
        (Some(sid), Some(Ok(rest))) => Ok((sid, rest)),
        (None, _) => Err("the stream gave no valid CallSid".to_string()),
        (_, None) => Err("the gateway API is off".to_string()),
        (_, Some(Err(e))) => Err(e.to_string()),
    };
    let (sid, rest) = match target {
        Ok(t) => t,
        Err(why) => {
            outcome("not_configured").increment(1);
            warn!(to, reason = why, "transfer not possible");
            return Err(why);
        }
    };
    let twiml = match twiml::transfer(to) {
        Ok(x) => x,
        Err(e) => {
            outcome("failed").increment(1);
            warn!(to, error = %e, "transfer target cannot go into TwiML");
            return Err(e.to_string());
        }
    };
    let form = [("Twiml".to_string(), twiml)];
    let mut tries = 0;
    loop {
        tries += 1;
        match rest.update_call(sid, &form).await {
            Ok(call) => {
                outcome("ok").increment(1);
                info!(
                    to,
                    status = call.status.as_deref().unwrap_or(""),
                    "call transferred"
                );
                return Ok(());
            }
            Err(e) => {
                // Only when Twilio surely did not apply it (rate limited, unavailable, never
                // reached): a second `<Dial>` would restart a transfer already ringing, and a
                // 500/502/504 may come after the update was applied.
                let retry = match &e {
                    crate::api::ApiError::Twilio(t) => t.status == 429 || t.status == 503,
                    e => crate::api::twilio_rest::is_connect_failure(e),
                };
                if retry && tries < 2 {
                    warn!(to, error = %e, "transfer failed: trying once more");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                outcome("failed").increment(1);
                warn!(to, error = %e, "transfer failed: the call goes on");
                return Err(e.to_string());
            }
        }
    }
}

/// Turns call events into logs, metrics and call records.
#[derive(Default)]
struct CallObserver {
    messages: u64,
    frames_reported: u64,
    out_reported: u64,
    recorder: Option<crate::api::recorder::CallRecorder>,
    call_sid: Option<String>,
    /// The call record's turns, from the events.
    turns: crate::api::turns::TurnLog,
    /// The connection's count: a call once `start` arrived.
    slot: Option<crate::conns::Slot>,
}

impl CallObserver {
    fn record_turn(&self, turn: Option<crate::api::recorder::TurnRecord>) {
        if let (Some(t), Some(rec), Some(sid)) = (turn, &self.recorder, &self.call_sid) {
            rec.turn(sid, t);
        }
    }

    /// The latest turn, if it changed since it was last recorded: stored at once, so a crash
    /// loses at most the store's commit lag (`api::turns::TurnLog::take_update`).
    fn record_open_turn(&mut self) {
        let update = self.turns.take_update();
        self.record_turn(update);
    }

    /// The stream ended at media time `end_ms`: the last turns go to the record.
    fn finish_turns(&mut self, end_ms: u64) {
        for t in self.turns.finish(end_ms) {
            self.record_turn(Some(t));
        }
    }

    fn flush(&mut self, call: &Call) {
        let s = call.stats();
        metrics::counter!("hark_inbound_frames_total").increment(s.frames - self.frames_reported);
        self.frames_reported = s.frames;
        metrics::counter!("hark_outbound_frames_total")
            .increment(s.playout.frames_sent - self.out_reported);
        self.out_reported = s.playout.frames_sent;
    }
}

impl hark_engine::io::Observer for CallObserver {
    fn event(&mut self, call: &Call, event: &Event) {
        match event {
            Event::Started(info) => {
                let span = tracing::Span::current();
                span.record("call_sid", info.call_sid.as_str());
                span.record("stream_sid", info.stream_sid.as_str());
                self.call_sid = Some(info.call_sid.clone());
                if let Some(slot) = &mut self.slot {
                    slot.set(crate::conns::ConnState::Call);
                }
                if let Some(rec) = &self.recorder {
                    rec.stream_started(&info.call_sid, &info.stream_sid, &info.parameters);
                }
                info!(params = ?info.parameters, "stream started");
            }
            Event::UserTurnEnded {
                start_ms, end_ms, ..
            } => {
                metrics::counter!("hark_turns_total").increment(1);
                info!(start_ms, end_ms, "caller turn");
                let done = self.turns.user_turn_ended(*start_ms, *end_ms);
                self.record_turn(done);
            }
            Event::AgentAudioStarted {
                id,
                since_user_end: Some(d),
                before_turn_end,
                ..
            } => {
                metrics::histogram!("hark_turn_latency_seconds").record(d.as_secs_f64());
                info!(utterance = %id, latency_ms = d.as_millis() as u64, "agent speaking");
                self.turns
                    .agent_audio_started(d.as_millis() as u64, *before_turn_end);
            }
            Event::BargeIn(b) => {
                metrics::counter!("hark_barge_ins_total").increment(1);
                self.turns
                    .barge_in(b.interrupted.heard_ms, b.interrupted.heard_text.as_deref());
                metrics::histogram!("hark_barge_in_delay_seconds")
                    .record(b.delay_ms() as f64 / 1000.0);
                info!(
                    utterance = %b.interrupted.id,
                    delay_ms = b.delay_ms(),
                    heard_ms = b.interrupted.heard_ms,
                    heard_text = b.interrupted.heard_text.as_deref().unwrap_or(""),
                    "barge-in"
                );
            }
            Event::Malformed { kind, detail } => {
                metrics::counter!("hark_malformed_messages_total", "kind" => kind.as_str())
                    .increment(1);
                warn!(kind = kind.as_str(), detail, "malformed message skipped");
            }
            Event::UtterancePlayed { heard_ms, .. } => self.turns.utterance_played(*heard_ms),
            Event::AgentAudioHeard {
                since_user_end: Some(d),
                before_turn_end,
                ..
            } => {
                metrics::histogram!("hark_voice_to_voice_seconds").record(d.as_secs_f64());
                self.turns
                    .agent_audio_heard(d.as_millis() as u64, *before_turn_end);
            }
            Event::UserSpeechStarted { media_ms, .. } => self.turns.speech_started(*media_ms),
            Event::UserSpeechDiscarded { start_ms, end_ms } => {
                let done = self.turns.speech_discarded(*start_ms, *end_ms);
                self.record_turn(done);
            }
            Event::Dtmf { digit, .. } => info!(digit, "dtmf"),
            Event::Agent(report) => {
                use hark_engine::agent::{AgentReport, Role};
                match report {
                    AgentReport::Latency { stage, ms } => {
                        metrics::histogram!("hark_stage_latency_seconds", "stage" => stage.as_str())
                            .record(*ms as f64 / 1000.0);
                        info!(stage = stage.as_str(), ms, "stage latency");
                        let open = call.user_turn_open_since_ms().is_some();
                        self.turns.stage_latency(*stage, *ms, open);
                    }
                    AgentReport::ProviderFault {
                        provider,
                        kind,
                        detail,
                    } => {
                        metrics::counter!("hark_provider_faults_total",
                            "provider" => provider.clone(), "kind" => kind.clone())
                        .increment(1);
                        warn!(provider, kind, detail, "provider fault");
                    }
                    AgentReport::Transcript {
                        role,
                        text,
                        interrupted,
                    } => {
                        info!(role = ?role, interrupted, text, "transcript");
                        let open = call.user_turn_open_since_ms().is_some();
                        match role {
                            Role::User => self.turns.user_transcript(text, open),
                            Role::Agent => self.turns.agent_transcript(
                                text,
                                *interrupted,
                                open,
                                call.agent_speaking(),
                            ),
                        }
                    }
                    AgentReport::ToolCall { name, arguments } => {
                        metrics::counter!("hark_tool_calls_total", "name" => name.clone())
                            .increment(1);
                        info!(name, arguments, "tool call");
                    }
                }
            }
            Event::TransferRequested { to } => info!(to, "transfer requested"),
            Event::TransferFailed { to, reason } => {
                warn!(to, reason, "transfer failed: the call goes on");
            }
            Event::Stopped { .. } => {
                self.flush(call);
                info!("stream stopped");
            }
            _ => {}
        }
        // The latest turn goes to the record as soon as it ends and whenever it changes.
        self.record_open_turn();
    }

    fn processed(&mut self, took: Duration) {
        self.messages += 1;
        if self.messages % 50 == 1 {
            metrics::histogram!("hark_engine_message_seconds").record(took.as_secs_f64());
        }
    }
}
