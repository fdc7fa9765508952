//! Connections: limits, deadlines and counts by state, so that a flood of idle, slow or
//! half-open connections cannot starve live calls of file descriptors or memory.
//!
//! Every accepted TCP connection is in one state:
//! - `http`: served by hyper (a webhook, `/healthz`, a WebSocket upgrade request);
//! - `websocket_pending`: upgraded to `/media-stream` but no `start` message yet;
//! - `call`: a Media Stream that sent `start`.
//!
//! Connections that are not (yet) calls are capped at [`Limits::max_pending_connections`]: one
//! more is answered `503 Service Unavailable` at once (without reading its request) and closed,
//! so live calls keep their descriptors and CPU while the server sheds the rest. Deadlines: a
//! request's headers must arrive within [`Limits::header_timeout`] (this also closes idle
//! keep-alive connections: hyper starts the timer when it waits for the next request), an
//! upgrade must complete within [`Limits::handshake_timeout`], and a Media Stream must send
//! `start` within [`Limits::start_timeout`]. Gauge: `hark_connections{state}`; counter:
//! `hark_connections_refused_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connection limits and deadlines (environment variables in brackets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections that are not calls (`http` + `websocket_pending`) at most; one more gets 503
    /// (`HARK_MAX_PENDING_CONNECTIONS`, default 512).
    pub max_pending_connections: usize,
    /// A request's headers (and the next request on a keep-alive connection) must arrive
    /// within this (`HARK_HEADER_TIMEOUT_S`, default 10 s).
    pub header_timeout: Duration,
    /// From the upgrade request to the WebSocket being ready (`HARK_WS_HANDSHAKE_TIMEOUT_S`,
    /// default 10 s).
    pub handshake_timeout: Duration,
    /// From the upgrade to Twilio's `start` message (`HARK_START_TIMEOUT_S`, default 5 s;
    /// Twilio sends `connected` and `start` at once). The socket is closed with 1008.
    pub start_timeout: Duration,
    /// A call with no message from Twilio for this long ends (`HARK_IDLE_TIMEOUT_S`, default
    /// 30 s; Twilio sends a `media` message every 20 ms).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_connections: 512,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection's state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Served by hyper.
    Http,
    /// Upgraded to a Media Stream; no `start` yet.
    WebSocketPending,
    /// A Media Stream that sent `start`.
    Call,
}

impl ConnState {
    fn label(self) -> &'static str {
        match self {
            ConnState::Http => "http",
            ConnState::WebSocketPending => "websocket_pending",
            ConnState::Call => "call",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Counts of open connections by state. Shared by the accept loop and the call tasks.
#[derive(Debug, Default)]
pub struct Connections {
    counts: [AtomicUsize; 3],
}

impl Connections {
    /// Open connections in `state`.
    pub fn count(&self, state: ConnState) -> usize {
        self.counts[state.index()].load(Ordering::Relaxed)
    }

    /// Connections that are not calls.
    pub fn pending(&self) -> usize {
        self.count(ConnState::Http) + self.count(ConnState::WebSocketPending)
    }

    fn add(&self, state: ConnState, delta: isize) {
        let c = &self.counts[state.index()];
        if delta >= 0 {
            c.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            c.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
        metrics::gauge!("hark_connections", "state" => state.label()).increment(delta as f64);
    }

    /// Counts a new connection in `state`; the slot moves it between states and uncounts it
    /// when dropped.
    pub fn open(self: &Arc<Self>, state: ConnState) -> Slot {
        self.add(state, 1);
        Slot {
            conns: self.clone(),
            state: Some(state),
        }
    }
}

/// One counted connection. Dropping it uncounts it.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Connections>,
    state: Option<ConnState>,
}

impl Slot {
    /// Moves the connection to `state`.
    pub fn set(&mut self, state: ConnState) {
        if let Some(old) = self.state.replace(state)
            && old != state
        {
            self.conns.add(old, -1);
            self.conns.add(state, 1);
        }
    }

    /// The connection's state.
    pub fn state(&self) -> Option<ConnState> {
        self.state
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            self.conns.add(s, -1);
        }
    }
}

/// The answer to a connection over [`Limits::max_pending_connections`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 65\r\n\r\n\
server busy: too many connections that are not calls (try again)\n";

/// Answers 503 on `tcp` and closes it, within 1 s. What the client already sent is read and
/// dropped before closing, so its kernel does not turn the answer into a reset.
pub async fn refuse_busy(mut tcp: TcpStream) {
    metrics::counter!("hark_connections_refused_total").increment(1);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(BUSY).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 1024];
        // Until the client closes (or 1 s); at most 64 KiB.
        for _ in 0..64 {
            if tcp.read(&mut sink).await? == 0 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard limit, so each live
/// call's socket (and provider connections) has a descriptor. Returns the new soft limit.
///
/// # Errors
/// The operating system's refusal.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    #[cfg(unix)]
    {
        let (_, hard) = rlimit::Resource::NOFILE.get()?;
        rlimit::increase_nofile_limit(hard)
    }
    #[cfg(not(unix))]
    {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answer_has_the_right_length() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(body.len(), len);
    }

    #[test]
    fn slots_move_between_states_and_uncount_on_drop() {
        let c = Arc::new(Connections::default());
        let mut a = c.open(ConnState::Http);
        let _b = c.open(ConnState::Http);
        assert_eq!(c.pending(), 2);
        a.set(ConnState::WebSocketPending);
        assert_eq!(c.count(ConnState::WebSocketPending), 1);
        a.set(ConnState::Call);
        assert_eq!((c.pending(), c.count(ConnState::Call)), (1, 1));
        drop(a);
        assert_eq!((c.pending(), c.count(ConnState::Call)), (1, 0));
    }
}
