//! `GET /media-stream`: the Media Streams WebSocket. The upgrade's signature policy, then each
//! call's life on a call worker: the agent, the engine driven on the socket
//! (`hark_engine::io::drive`), transfers, its place among the node's live calls (for Twilio's
//! answering machine verdict, [`crate::api::amd`]), and the call's summary in the record.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use fastwebsockets::upgrade::IncomingUpgrade;
use hark_engine::Call;
use tracing::{Instrument, info, warn};

use super::observer::CallObserver;
use super::transfer::Transfers;
use super::{AppState, bad_request, host};
use crate::{signature, ws};

/// `GET /media-stream`: the Media Streams WebSocket.
pub(super) async fn media_stream(
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
/// - a console ticket (`?console_ticket=`, [`crate::console::Console::admits_media_stream`]):
///   accepted (the browser phone);
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
fn check_media_stream_signature(st: &AppState, headers: &HeaderMap, uri: &Uri) -> Option<Response> {
    // The browser phone (`/phone`): a single-use console ticket instead of a signature.
    if st.console.admits_media_stream(uri) {
        return None;
    }
    if st.config.dev_insecure.no_signatures {
        return None;
    }
    let Some(v) = &st.validator else {
        metrics::counter!("hark_media_stream_refused_total", "reason" => "no_token").increment(1);
        warn!("media stream upgrade refused: TWILIO_AUTH_TOKEN is unset");
        let why = "media stream refused: TWILIO_AUTH_TOKEN is unset, so X-Twilio-Signature \
                   cannot be checked; set TWILIO_AUTH_TOKEN (or HARK_DEV_INSECURE=no-signatures \
                   for development)";
        return Some((StatusCode::SERVICE_UNAVAILABLE, why).into_response());
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

/// The call's observer, plus its place among the node's live calls: registered by `CallSid`
/// once `start` names it, so `POST /api/twilio/amd` reaches the call (see
/// [`crate::api::amd`]); out again when this is dropped.
struct Live<'a> {
    inner: &'a mut CallObserver,
    calls: Option<Arc<crate::api::amd::LiveCalls>>,
    tx: Option<tokio::sync::mpsc::UnboundedSender<hark_engine::CallNotice>>,
    registered: Option<crate::api::amd::LiveCall>,
}

impl hark_engine::io::Observer for Live<'_> {
    fn event(&mut self, call: &Call, event: &hark_engine::Event) {
        match event {
            hark_engine::Event::Started(info) => {
                if let (Some(calls), Some(tx)) = (&self.calls, self.tx.take()) {
                    self.registered = Some(calls.register(&info.call_sid, tx));
                }
            }
            hark_engine::Event::AnsweredBy { answered_by, .. } => {
                info!(
                    answered_by = answered_by.as_str(),
                    "answering machine verdict reached the call"
                );
            }
            _ => {}
        }
        self.inner.event(call, event);
    }

    fn processed(&mut self, took: std::time::Duration) {
        self.inner.processed(took);
    }
}

thread_local! {
    /// This call worker's HTTP client (its own connection pool).
    static WORKER_HTTP: std::cell::OnceCell<hark_engine::io::http::Client> =
        const { std::cell::OnceCell::new() };
}

/// The HTTP client for provider requests of calls on this worker thread: one per worker, made
/// with `shared`'s settings. A pooled connection's I/O task runs on the runtime that opened
/// it, so one pool shared by the workers' single-threaded runtimes ties a call's provider
/// requests to another worker's load, and fails them ("dropped") when that runtime stops —
/// `cargo bench -p hark-benches --bench tools` showed both with two current-thread runtimes
/// on one client. Falls back to `shared` if a client cannot be built.
fn worker_http(shared: &hark_engine::io::http::Client) -> hark_engine::io::http::Client {
    WORKER_HTTP.with(|c| {
        c.get_or_init(|| {
            hark_engine::io::http::Client::new(shared.config()).unwrap_or_else(|_| shared.clone())
        })
        .clone()
    })
}

/// The upgraded connection on this worker's runtime from here (its reads and writes wake this
/// thread only); `None`, counted and logged, when it cannot be moved.
fn take_over(socket: ws::UpgradedSocket) -> Option<ws::Socket> {
    match ws::Socket::from_upgraded(socket) {
        Ok(s) => Some(s),
        Err(e) => {
            metrics::counter!("hark_ws_errors_total", "kind" => "upgrade").increment(1);
            warn!(error = %e, "cannot move the call's connection to its worker: call refused");
            None
        }
    }
}

async fn run_call(st: &AppState, socket: ws::UpgradedSocket, slot: crate::conns::Slot) {
    let agent = match (st.agents)(&crate::serve::AgentContext::new(&st.config)) {
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
    let Some(socket) = take_over(socket) else {
        return;
    };
    // Copies the call's audio when it is recorded (`HARK_RECORD`, `hark_record`).
    let mut socket = crate::recording::RecordingSocket::new(
        socket,
        st.config.recording.enabled,
        crate::recording::MAX_RECORD_MS,
    );
    let mut shutdown = st.shutdown.subscribe();
    let mut observer = CallObserver {
        recorder: st.api.as_ref().map(|a| a.recorder()),
        turns: crate::api::turns::TurnLog::new(),
        slot: Some(slot),
        ..CallObserver::default()
    };
    let drive_cfg = hark_engine::io::DriveConfig {
        start_timeout: st.config.limits.start_timeout,
        idle_timeout: st.config.limits.idle_timeout,
        ..hark_engine::io::DriveConfig::default()
    };
    let started = Instant::now();
    let mut connectors = hark_engine::io::Connectors::new(worker_http(&st.http));
    let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
    let mut control = hark_engine::io::WithNotices {
        control: Transfers {
            api: st.api.clone(),
        },
        notices,
    };
    let mut live = Live {
        inner: &mut observer,
        calls: st.api.as_ref().map(|a| a.live_calls().clone()),
        tx: Some(tx),
        registered: None,
    };
    let ended = hark_engine::io::drive(
        &mut call,
        &mut socket,
        &mut connectors,
        &mut control,
        &mut live,
        drive_cfg,
        &mut shutdown,
    )
    .await;
    // Over: Twilio's later callbacks no longer reach it.
    drop(live);
    let audio = match socket.take() {
        Some(rec) => {
            let rec_cfg = &st.config.recording;
            let public = st.config.public_url.as_deref();
            crate::recording::save(rec, rec_cfg, public, Instant::now()).await
        }
        None => None,
    };
    let ended = match ended {
        hark_engine::io::Ended::Closed(hark_engine::CloseReason::Transfer(to)) => {
            format!("transferred to {to}")
        }
        hark_engine::io::Ended::Closed(r) => format!("closed: {r:?}"),
        hark_engine::io::Ended::PeerClosed => "peer closed".into(),
        hark_engine::io::Ended::Shutdown => "shutdown".into(),
        hark_engine::io::Ended::Failed(e) => {
            metrics::counter!("hark_ws_errors_total", "kind" => e.kind()).increment(1);
            warn!(error = %e, "call ended by a socket failure");
            format!("failed: {e}")
        }
    };
    // Failed transfers, for the record: the call went on after each.
    let ended = if observer.failed_transfers.is_empty() {
        ended
    } else {
        format!("{ended} (after: {})", observer.failed_transfers.join("; "))
    };
    observer.flush(&call);
    metrics::histogram!("hark_call_duration_seconds").record(started.elapsed().as_secs_f64());
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
                audio,
                greeting: observer.turns.greeting(),
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
