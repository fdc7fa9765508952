//! `hark serve`: the HTTP server — TwiML for Twilio's voice webhook, the Media Streams WebSocket,
//! health and metrics.
//!
//! Routes:
//! - `GET /healthz` → `ok`; `GET /readyz` → `ready`, or 503 while draining or when the
//!   database does not answer (see [`crate::ops`]).
//! - `GET /metrics` → Prometheus text format (see [`crate::metrics`]; behind
//!   `HARK_METRICS_TOKEN` when set).
//! - `POST /voice` (alias `/api/twilio/voice`; GET accepted too) → TwiML connecting the call to
//!   `wss://<public host>/media-stream`, or `<Dial>` for browser clients.
//! - `GET /media-stream` → WebSocket upgrade; each call runs the engine on a call worker.
//!
//! One file per job:
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`AppState`] (with the calls' [`crate::serve::AgentFactory`]), the [`router`], [`serve`]: the accept loop with its limits ([`crate::conns`]) and the shutdown sequence |
//! | `voice.rs` | `/voice`: signature check, TwiML |
//! | `media.rs` | `/media-stream`: the upgrade's signature policy, then each call's life (`run_call`) |
//! | `transfer.rs` | redirecting a call for a transfer (Twilio REST call update) |
//! | `observer.rs` | a call's events → logs, metrics and the call record |

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::Config;
use crate::pool::CallPool;
use crate::signature::Validator;

mod media;
mod observer;
mod transfer;
mod voice;

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
    /// The HTTP client settings for calls' provider requests; each call worker makes its own
    /// client (and connection pool) from it (`media.rs`, `worker_http`).
    http: hark_engine::io::http::Client,
    /// Open connections by state (see [`crate::conns`]).
    conns: Arc<crate::conns::Connections>,
    /// `true` stops every live call (after the shutdown timeout).
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Builds each call's agent (the configured agent unless a program gave its own).
    agents: crate::serve::AgentFactory,
    /// The browser console's link, sessions and media-socket tickets ([`crate::console`]).
    console: crate::console::Console,
    /// Shutdown began: `/readyz` answers 503 (see [`crate::ops`]).
    draining: std::sync::atomic::AtomicBool,
    /// Where the private metrics listener is bound (`HARK_METRICS_ADDR`), once it is.
    metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
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
        Self::with_agents(config, None, crate::serve::configured_agents())
    }

    /// State for `config` with the gateway API (tokens, outbound calls, callbacks, records,
    /// Conversations): its routes are served too, `/voice` follows its signature policy, and
    /// calls are recorded through it.
    ///
    /// # Errors
    /// An I/O error if the worker threads cannot start.
    pub fn with_api(config: Config, api: Arc<crate::api::ApiState>) -> std::io::Result<Arc<Self>> {
        Self::with_agents(config, Some(api), crate::serve::configured_agents())
    }

    /// State for `config`, with the gateway API when given, whose calls get their agents from
    /// `agents` (see [`crate::serve::Hark::agents`]).
    ///
    /// # Errors
    /// An I/O error if the worker threads cannot start.
    pub fn with_agents(
        config: Config,
        api: Option<Arc<crate::api::ApiState>>,
        agents: crate::serve::AgentFactory,
    ) -> std::io::Result<Arc<Self>> {
        let pool = CallPool::new(config.workers)?;
        let validator = config.twilio_auth_token.as_ref().map(Validator::new);
        // Install the recorder before the first call records anything.
        let _ = crate::metrics::handle();
        let console = crate::console::Console::new(
            config
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
        );
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
            agents,
            console,
            draining: std::sync::atomic::AtomicBool::new(false),
            metrics_addr: std::sync::OnceLock::new(),
        }))
    }

    /// Shutdown began: no new calls are wanted (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Where `/metrics` is served apart (`HARK_METRICS_ADDR`, the port chosen for port 0), once
    /// [`serve`] has bound it; `None` without it, or before.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr.get().copied()
    }

    pub(crate) fn set_metrics_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.metrics_addr.set(addr);
    }

    /// Marks the server as draining (done by [`serve`] when its shutdown future resolves).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The browser console's access state (its one-time link:
    /// [`crate::console::Console::issue_link`]).
    pub fn console(&self) -> &crate::console::Console {
        &self.console
    }

    /// The gateway API, when the server has one.
    pub(crate) fn api(&self) -> Option<&Arc<crate::api::ApiState>> {
        self.api.as_ref()
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
        .route("/readyz", get(crate::ops::readyz))
        .route("/voice", any(voice::voice))
        .route("/api/twilio/voice", any(voice::voice))
        .route(STREAM_PATH, get(media::media_stream))
        .with_state(state.clone());
    // With HARK_METRICS_ADDR the metrics are served there alone.
    let app = match state.config.ops.metrics_addr {
        Some(_) => app,
        None => app.merge(
            Router::new()
                .route("/metrics", get(crate::ops::metrics))
                .with_state(state.clone()),
        ),
    };
    let app = app.merge(crate::console::router(state));
    let app = match api {
        Some(api) => app.merge(crate::api::router(api)),
        None => app,
    };
    // After the merge, so every route (and the 404 fallback) is counted by its template.
    app.layer(axum::middleware::from_fn(crate::ops::count_requests))
}

/// Serves `router(state)` on `listener` until `shutdown` resolves. Then it drains: `/readyz`
/// answers 503 and, for `HARK_DRAIN_S` (`config.ops.drain`), connections are still accepted
/// and served so a load balancer sees the 503 and stops sending calls. Then it stops accepting,
/// closes idle HTTP connections, lets live calls finish for up to `config.shutdown_timeout`,
/// stops the calls still live (each closed with 1001 "going away" and recorded with
/// `ended: shutdown`), waits for their tasks to end, and drains the call records.
///
/// Each connection is served by hyper's HTTP/1 server with [`crate::conns::Limits`]: a
/// header-read deadline (which also closes idle keep-alive connections) and a cap on
/// connections that are not calls (one more gets 503 at once). Accept errors (e.g. out of file
/// descriptors) are logged and retried after 100 ms; they never end the server.
///
/// With `HARK_METRICS_ADDR` (`config.ops.metrics_addr`), `/metrics` is served on that address
/// instead, until the server has stopped.
///
/// # Errors
/// The metrics address cannot be bound.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let metrics_listener = crate::ops::start_metrics_listener(&state).await?;
    let limits = state.config.limits;
    let (close_idle, close_idle_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    // Until the shutdown future resolves: no deadline; then the end of the drain.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let drain_over = async {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown, if drain_until.is_none() => {
                state.start_draining();
                let drain = state.config.ops.drain;
                if drain.is_zero() {
                    break;
                }
                info!(secs = drain.as_secs(), "shutdown: draining (/readyz answers 503), still accepting");
                drain_until = Some(tokio::time::Instant::now() + drain);
                continue;
            }
            _ = drain_over => break,
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
    if let Some(task) = metrics_listener {
        task.abort();
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

pub(super) fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

pub(super) fn bad_request(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, reason.into()).into_response()
}
