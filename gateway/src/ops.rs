//! Operations: readiness for a load balancer, the `/metrics` access token, and the metrics
//! every request and process gets (HTTP requests by route and status, build info, process CPU,
//! memory and descriptors).
//!
//! - `GET /healthz`: `ok` while the process serves (liveness).
//! - `GET /readyz`: `ready` (200) when hark takes new calls: not draining, and its database
//!   answers `SELECT 1` within [`DB_CHECK_TIMEOUT`]; else 503 with the reason (`draining`,
//!   `database: …`). On SIGINT/SIGTERM it fails **first**: for `HARK_DRAIN_S` seconds hark
//!   still accepts and serves requests while `/readyz` answers 503, so a load balancer that
//!   polls it stops sending new calls before the listener closes; live calls then finish
//!   (`HARK_SHUTDOWN_TIMEOUT_S`).
//! - `GET /metrics`: open unless `HARK_METRICS_TOKEN` is set; then it wants
//!   `Authorization: Bearer <token>` (401 otherwise; compared in constant time). With
//!   `HARK_METRICS_ADDR` it is served on that address alone (with `/healthz` and `/readyz`),
//!   not on the public one: a private port for the scraper, out of the load balancer's reach.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Values};
use crate::server::AppState;

/// How long `/readyz` waits for the database.
pub const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Operations settings (`[server]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpsSettings {
    /// `HARK_DRAIN_S` (`server.drain_s`): on SIGINT/SIGTERM, how long `/readyz` answers 503
    /// while hark still accepts connections, before it stops accepting (default 0: stop at
    /// once). Set it to a few health-check intervals of the load balancer.
    pub drain: Duration,
    /// `HARK_METRICS_TOKEN` (`server.metrics_token`): bearer token `/metrics` wants; `None`:
    /// open.
    pub metrics_token: Option<String>,
    /// `HARK_METRICS_ADDR` (`server.metrics_addr`): serve `/metrics` (and `/healthz`,
    /// `/readyz`) on this address instead of the public one, e.g. `127.0.0.1:9100`; port 0
    /// picks one ([`AppState::metrics_addr`] tells which). `None`: on the public address.
    pub metrics_addr: Option<SocketAddr>,
}

impl OpsSettings {
    /// Reads the settings from `v`.
    ///
    /// # Errors
    /// [`ConfigError`] when `HARK_DRAIN_S` is not a number of seconds in 0–3600, or
    /// `HARK_METRICS_ADDR` not an `ip:port`.
    pub fn from_values(v: &Values) -> Result<OpsSettings, ConfigError> {
        let metrics_addr = match v.text("HARK_METRICS_ADDR").filter(|t| !t.is_empty()) {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|e| {
                ConfigError::new(
                    "HARK_METRICS_ADDR",
                    format!("{a:?} is not an ip:port address ({e})"),
                )
            })?),
        };
        Ok(OpsSettings {
            drain: Duration::from_secs(v.num_in::<u64>("HARK_DRAIN_S", 0, 3_600)?.unwrap_or(0)),
            metrics_token: v.text("HARK_METRICS_TOKEN").filter(|t| !t.is_empty()),
            metrics_addr,
        })
    }
}

/// The private metrics listener's routes: `/metrics`, `/healthz`, `/readyz`.
fn metrics_router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .with_state(state)
}

/// With `HARK_METRICS_ADDR`: binds it and serves [`metrics_router`] there in a task of its own
/// (the caller aborts it when the server stops), recording the bound address in `state`.
///
/// # Errors
/// The address cannot be bound.
pub(crate) async fn start_metrics_listener(
    state: &Arc<AppState>,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = state.config.ops.metrics_addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    state.set_metrics_addr(bound);
    tracing::info!(addr = %bound, "metrics listening");
    let app = metrics_router(state.clone());
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    })))
}

/// `GET /readyz` (see the module docs).
pub(crate) async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if let Some(api) = st.api() {
        let ping = sqlx::query("SELECT 1").execute(api.store().pool());
        match tokio::time::timeout(DB_CHECK_TIMEOUT, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let why = format!("database: {e}");
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
            Err(_) => {
                let why = format!("database: no answer within {DB_CHECK_TIMEOUT:?}");
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
        }
    }
    "ready".into_response()
}

/// `GET /metrics`: the Prometheus text, behind `HARK_METRICS_TOKEN` when set.
pub(crate) async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(token) = &st.config.ops.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need Authorization: Bearer <HARK_METRICS_TOKEN>",
            )
                .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

/// Middleware: counts each request in `hark_http_requests_total{route, status}` (the route's
/// template, e.g. `/calls/{sid}`, or `unmatched`: bounded labels) and times it in
/// `hark_http_request_seconds{route}` (to the response head; a WebSocket upgrade counts as
/// its `101`).
pub(crate) async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("hark_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("hark_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// This process's CPU time (s), resident memory (bytes) and open descriptors, from
/// `/proc/self` (Linux; `None` elsewhere or when unreadable). `stat` fields 14–15 are user and
/// system time in clock ticks (`proc(5)`; 100 per second on Linux), field 24 the resident set
/// in pages (4096 bytes on x86-64 and arm64 Linux).
pub fn process_stats() -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let cpu = (field(14)? + field(15)?) as f64 / 100.0;
    let rss = field(24)? * 4096;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Some((cpu, rss, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        let (cpu, rss, fds) = process_stats().expect("Linux /proc");
        assert!(cpu >= 0.0);
        // A test binary maps at least a few MB and holds stdin/stdout/stderr.
        assert!(rss > 1 << 20, "{rss}");
        assert!(fds >= 3, "{fds}");
    }

    #[test]
    fn settings_parse_and_refuse_bad_values() {
        let v = |pairs: &'static [(&'static str, &'static str)]| {
            Values::from_lookup(|k| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_string())
            })
        };
        let s = OpsSettings::from_values(&v(&[])).unwrap();
        assert_eq!(s, OpsSettings::default());
        let s =
            OpsSettings::from_values(&v(&[("HARK_DRAIN_S", "10"), ("HARK_METRICS_TOKEN", "t0k")]))
                .unwrap();
        assert_eq!(s.drain, Duration::from_secs(10));
        assert_eq!(s.metrics_token.as_deref(), Some("t0k"));
        let e = OpsSettings::from_values(&v(&[("HARK_DRAIN_S", "soon")])).unwrap_err();
        assert!(e.to_string().contains("HARK_DRAIN_S"), "{e}");
    }
}
