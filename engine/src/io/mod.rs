//! The async driver (feature `io`): runs a [`Call`] on a Twilio socket with tokio timers.
//!
//! The driver is the only place that reads the clock: each input is stamped with
//! `tokio::time::Instant::now()` (so tests can pause tokio's clock), fed to the call, and the call's
//! outputs are carried out — text frames sent, provider commands handed to the connectors,
//! events passed to the [`Observer`], and the next [`Output::Timeout`] armed.
//!
//! [`Call`] owns webrtc-vad's state, which is not `Send`; the future returned by [`drive`] is
//! therefore not `Send` either and runs on a single-threaded runtime (the gateway runs one per
//! core with a `LocalSet`, and hands each accepted call to one of them).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::agent::{OpenSpec, PeerId, ProviderCommand, ProviderEvent, ProviderMessage};

pub mod http;
pub mod turn_model;
pub mod ws;
use crate::call::{Call, CallNotice, CloseReason, Event, Input, Output, TransferOutcome};

/// What one read from the Twilio socket gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// A text frame; its text was written into the caller's buffer.
    Text,
    /// A binary frame of this many bytes (Twilio never sends one).
    Binary(usize),
    /// The peer closed the socket, or it ended.
    Closed,
}

/// Errors from a Twilio socket. Each ends the call (its record says why).
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The connection failed (reset, ended without a close frame).
    #[error("websocket: {0}")]
    Io(String),
    /// The peer broke the WebSocket protocol (RFC 6455): the socket was closed with `code`
    /// (1002 protocol error, 1009 message too big).
    #[error("websocket protocol: {reason} (closed with {code})")]
    Protocol {
        /// The close status code sent (RFC 6455 §7.4.1).
        code: u16,
        /// What was wrong.
        reason: String,
    },
    /// Sending took longer than the driver's send timeout: Twilio is not reading.
    #[error("send timed out after {0:?}")]
    SendTimeout(Duration),
    /// No `start` message within the driver's start timeout: not a Media Stream (or a stuck
    /// one). The socket was closed with 1008 (policy violation).
    #[error("no start message within {0:?}")]
    NoStart(Duration),
    /// No message at all for the driver's idle timeout (Twilio sends a `media` every 20 ms).
    #[error("no message from Twilio for {0:?}")]
    Idle(Duration),
}

impl SocketError {
    /// A short label for metrics (`io`, `protocol`, `send_timeout`, `no_start`, `idle`).
    pub fn kind(&self) -> &'static str {
        match self {
            SocketError::Io(_) => "io",
            SocketError::Protocol { .. } => "protocol",
            SocketError::SendTimeout(_) => "send_timeout",
            SocketError::NoStart(_) => "no_start",
            SocketError::Idle(_) => "idle",
        }
    }
}

/// The Twilio side of a call as the driver needs it. Implemented by the gateway for its
/// WebSocket, and by tests for in-memory pipes.
pub trait TwilioSocket {
    /// Waits for the next frame. For a text frame the text is written to `buf` (cleared first).
    ///
    /// **Must be cancel-safe**: the driver races it against timers and provider events and
    /// drops it whenever one of those comes first, so dropping the future at any await point
    /// must lose no bytes and no frame (read into a buffer; take a frame out only once it is
    /// complete).
    fn recv(&mut self, buf: &mut String) -> impl Future<Output = Result<Recv, SocketError>>;
    /// Sends one text frame.
    fn send(&mut self, text: &str) -> impl Future<Output = Result<(), SocketError>>;
    /// Queues one text frame to go out with the next [`TwilioSocket::flush`] (or the next
    /// `send` or `recv`), so the frames of one turn of the driver's loop (an answer's first
    /// 200 ms, a frame and its mark) leave in one write: one system call, and with
    /// `TCP_NODELAY` one TCP segment, instead of one each. It waits for the network only when
    /// much is queued already. By default the same as [`TwilioSocket::send`].
    fn queue(&mut self, text: &str) -> impl Future<Output = Result<(), SocketError>> {
        self.send(text)
    }
    /// Writes everything [`TwilioSocket::queue`]d. By default nothing is held: nothing to do.
    fn flush(&mut self) -> impl Future<Output = Result<(), SocketError>> {
        std::future::ready(Ok(()))
    }
    /// Closes the socket (normal closure, code 1000).
    fn close(&mut self) -> impl Future<Output = ()>;
    /// Closes the socket with a status `code` (RFC 6455 §7.4.1: 1001 going away when the server
    /// shuts down, 1008 policy violation) and a short `reason` (at most 123 bytes are sent).
    /// By default the same as [`TwilioSocket::close`].
    fn close_with(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> {
        let _ = (code, reason);
        self.close()
    }
}

/// Tells running calls that the server is shutting down (a `tokio::sync::watch` of `bool`:
/// `true` = stop now). Each [`drive`] holds a receiver.
pub type ShutdownSignal = tokio::sync::watch::Receiver<bool>;

/// Close code sent to Twilio when the server shuts a live call down (RFC 6455: going away).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a socket that broke the Media Streams contract (RFC 6455: policy violation).
pub const CLOSE_POLICY: u16 = 1008;

/// Provider connectors: carry out [`ProviderCommand`]s and report [`ProviderEvent`]s.
pub trait Providers {
    /// Starts carrying out a command (must not block; spawn work as needed).
    fn execute(&mut self, command: ProviderCommand);
    /// Waits for the next provider event. Pending forever when there is nothing in flight.
    fn next(&mut self) -> impl Future<Output = ProviderEvent>;
}

/// Connectors for agents that use no providers (the echo agent).
#[derive(Debug, Default)]
pub struct NoProviders;

impl Providers for NoProviders {
    fn execute(&mut self, _command: ProviderCommand) {}
    async fn next(&mut self) -> ProviderEvent {
        std::future::pending().await
    }
}

/// The real provider connectors: HTTP requests (reqwest) and WebSockets (tokio-tungstenite),
/// each pipe a tokio task feeding one event channel. `Close` aborts the task, which drops the
/// connection: that is how an in-flight LLM or TTS request is cancelled on barge-in.
pub struct Connectors {
    tx: mpsc::UnboundedSender<ProviderEvent>,
    rx: mpsc::UnboundedReceiver<ProviderEvent>,
    pipes: HashMap<PeerId, Pipe>,
    http: http::Client,
}

struct Pipe {
    task: tokio::task::JoinHandle<()>,
    /// Outgoing messages for a WebSocket pipe.
    outgoing: Option<mpsc::UnboundedSender<ProviderMessage>>,
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connectors")
            .field("pipes", &self.pipes.len())
            .finish()
    }
}

impl Connectors {
    /// Connectors sharing `http` (one client per process keeps connection pools warm).
    pub fn new(http: http::Client) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Connectors {
            tx,
            rx,
            pipes: HashMap::new(),
            http,
        }
    }

    /// Pipes currently open.
    pub fn open_pipes(&self) -> usize {
        self.pipes
            .iter()
            .filter(|(_, p)| !p.task.is_finished())
            .count()
    }
}

impl Drop for Connectors {
    fn drop(&mut self) {
        for (_, p) in self.pipes.drain() {
            p.task.abort();
        }
    }
}

impl Providers for Connectors {
    fn execute(&mut self, command: ProviderCommand) {
        // Forget pipes whose tasks ended.
        self.pipes.retain(|_, p| !p.task.is_finished());
        match command {
            ProviderCommand::Open { peer, spec } => {
                if let Some(old) = self.pipes.remove(&peer) {
                    old.task.abort();
                }
                let tx = self.tx.clone();
                let pipe = match spec {
                    OpenSpec::Http(req) => {
                        let span = request_span("http", req.stage, &req.url, peer);
                        let run = http::run(self.http.clone(), peer, req, tx);
                        Pipe {
                            task: tokio::spawn(run.instrument(span)),
                            outgoing: None,
                        }
                    }
                    OpenSpec::WebSocket(req) => {
                        let (otx, orx) = mpsc::unbounded_channel();
                        let span = request_span("ws", req.stage, &req.url, peer);
                        Pipe {
                            task: tokio::spawn(ws::run(peer, req, orx, tx).instrument(span)),
                            outgoing: Some(otx),
                        }
                    }
                };
                self.pipes.insert(peer, pipe);
            }
            ProviderCommand::Send { peer, message } => {
                let sent = self
                    .pipes
                    .get(&peer)
                    .and_then(|p| p.outgoing.as_ref())
                    .is_some_and(|o| o.send(message).is_ok());
                if !sent {
                    let _ = self.tx.send(ProviderEvent::Failed {
                        peer,
                        fault: crate::agent::ProviderFault::new(
                            crate::agent::FaultKind::Request,
                            "send on a pipe that is not an open WebSocket",
                        ),
                    });
                }
            }
            ProviderCommand::Close { peer } => {
                if let Some(p) = self.pipes.remove(&peer) {
                    p.task.abort();
                }
            }
        }
    }

    async fn next(&mut self) -> ProviderEvent {
        match self.rx.recv().await {
            Some(ev) => ev,
            // Unreachable while `self.tx` lives; stay pending rather than spin.
            None => std::future::pending().await,
        }
    }
}

/// The `provider_request` span of a provider pipe, a child of the current span (the gateway's
/// `call`): `kind` (`http` or `ws`), `stage` ([`crate::agent::HttpRequest::stage`]), the
/// URL's `server.address` (host) and `url.path` (never the query, which may hold a key), and
/// the agent's `peer` id. It lasts as long as the pipe's task: the request and its whole
/// response, or the socket's life.
fn request_span(kind: &'static str, stage: &'static str, url: &str, peer: PeerId) -> tracing::Span {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let path = path.split(['?', '#']).next().unwrap_or("");
    tracing::info_span!(
        "provider_request",
        otel.kind = "client",
        kind,
        stage,
        server.address = host.rsplit('@').next().unwrap_or(host),
        url.path = format_args!("/{path}"),
        peer = peer.0,
    )
}

/// A transfer in flight: polled by the driver alongside the socket (not `Send`: calls run on
/// a single-threaded runtime).
pub type TransferFuture = Pin<Box<dyn Future<Output = TransferOutcome>>>;

/// Call control the driver carries out for the call, outside the media socket: today the
/// transfer ([`Output::Transfer`]), which the gateway does with a Twilio REST call update.
pub trait CallControl {
    /// Starts redirecting the call `call_sid` (`None` if the stream gave none) to `to`. The
    /// returned future must not borrow `self`; the driver polls it while the call goes on and
    /// feeds its outcome to the call as [`Input::Transfer`]. It should end on its own within a
    /// few seconds (give the REST request a timeout): a call whose socket closes meanwhile
    /// waits for it.
    fn transfer(&mut self, call_sid: Option<&str>, to: &str) -> TransferFuture;
    /// Waits for the next fact about the call from outside its media stream (Twilio's
    /// answering machine verdict), which the driver feeds in as an input. Pending forever by
    /// default. **Must be cancel-safe**: the driver races it against the socket and drops it
    /// whenever something else comes first.
    fn next_notice(&mut self) -> impl Future<Output = CallNotice> {
        std::future::pending()
    }
}

/// Call control `control` plus a channel of [`CallNotice`]s for the call (the gateway sends
/// Twilio's answering machine verdict into it). Transfers go to `control`.
#[derive(Debug)]
pub struct WithNotices<C> {
    /// Carries out transfers.
    pub control: C,
    /// Notices for this call; once every sender is gone, none come.
    pub notices: mpsc::UnboundedReceiver<CallNotice>,
}

impl<C: CallControl> CallControl for WithNotices<C> {
    fn transfer(&mut self, call_sid: Option<&str>, to: &str) -> TransferFuture {
        self.control.transfer(call_sid, to)
    }

    async fn next_notice(&mut self) -> CallNotice {
        match self.notices.recv().await {
            Some(n) => n,
            // Nobody can send any more.
            None => std::future::pending().await,
        }
    }
}

/// Call control for calls that cannot be transferred (tests, the simulator without a gateway
/// API): every transfer fails at once and the call goes on.
#[derive(Debug, Default)]
pub struct NoCallControl;

impl CallControl for NoCallControl {
    fn transfer(&mut self, _call_sid: Option<&str>, _to: &str) -> TransferFuture {
        Box::pin(std::future::ready(TransferOutcome::Failed {
            reason: "transfers are not available here".into(),
        }))
    }
}

/// Receives what happens in a driven call: events, and the engine's own processing time.
pub trait Observer {
    /// An event from the call.
    fn event(&mut self, call: &Call, event: &Event);
    /// Time the engine spent in `handle_input` for one Twilio message (socket writes not
    /// included), for the "engine share" of latency.
    fn processed(&mut self, _took: Duration) {}
}

/// How a driven call ended.
#[derive(Debug)]
pub enum Ended {
    /// The call asked to close (after `stop`, an agent hang-up, or a transfer that redirected
    /// it: [`CloseReason::Transfer`]): the socket is closed.
    Closed(CloseReason),
    /// Twilio closed the socket.
    PeerClosed,
    /// The server is shutting down: the call was stopped (its agent's pipes closed) and the
    /// socket closed with [`CLOSE_GOING_AWAY`].
    Shutdown,
    /// The socket failed, or broke the protocol or a deadline (see [`SocketError`]).
    Failed(SocketError),
}

/// Driver settings.
#[derive(Debug, Clone, Copy)]
pub struct DriveConfig {
    /// A send that takes longer than this ends the call (a dead or stuck Twilio socket must
    /// not keep the call's memory forever). Default 5 s.
    pub send_timeout: Duration,
    /// With no message from Twilio for this long, the call ends (Twilio sends a `media` every
    /// 20 ms while a call is up). Counted from the last message received, whatever else
    /// happens meanwhile. Default 30 s.
    pub idle_timeout: Duration,
    /// A socket that has not sent `start` this long after [`drive`] began is closed with
    /// [`CLOSE_POLICY`] (Twilio sends `connected` and `start` at once). Default 5 s.
    pub start_timeout: Duration,
}

impl Default for DriveConfig {
    fn default() -> Self {
        DriveConfig {
            send_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(5),
        }
    }
}

/// The driver's clock (tokio's, so a paused test clock applies): use it for inputs fed to a
/// driven [`Call`] between [`drive`] runs.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs `call` on `socket` until it ends, or until `shutdown` turns `true` (then the call is
/// stopped and the socket closed with [`CLOSE_GOING_AWAY`]). See the module docs.
///
/// Provider commands go to `providers`; a transfer ([`Output::Transfer`]) goes to `control`
/// and its outcome comes back into the loop as [`Input::Transfer`]; notices from outside the
/// stream ([`CallControl::next_notice`]) come in as [`Input::AnsweredBy`]. If the socket closes
/// while a transfer is in flight, the driver waits for its outcome: a redirected call ends as
/// [`Ended::Closed`] with [`CloseReason::Transfer`].
///
/// The socket's [`TwilioSocket::recv`] is raced against provider events, the transfer, the
/// call's timer, the idle and start deadlines and `shutdown`, and dropped when one of those
/// wins: it must be cancel-safe.
pub async fn drive<S: TwilioSocket, P: Providers, C: CallControl, O: Observer>(
    call: &mut Call,
    socket: &mut S,
    providers: &mut P,
    control: &mut C,
    observer: &mut O,
    cfg: DriveConfig,
    shutdown: &mut ShutdownSignal,
) -> Ended {
    let mut buf = String::with_capacity(512);
    let began = tokio::time::Instant::now();
    let mut last_rx = began;
    let mut in_flight = InFlight::default();
    let mut timers = CallTimers::new(began, cfg);
    let stop = stop_requested(shutdown);
    tokio::pin!(stop);
    loop {
        // Carry out everything the call has to say.
        let next = match carry_out(
            call,
            socket,
            providers,
            control,
            observer,
            &mut in_flight,
            cfg,
        )
        .await
        {
            Ok(next) => next,
            Err(ended) => return ended,
        };
        timers.arm(next.map(tokio::time::Instant::from_std));
        // Before `start`, the start deadline; after it, the idle deadline.
        let (watchdog, fault) = if call.info().is_none() {
            (
                (began + cfg.start_timeout).min(last_rx + cfg.idle_timeout),
                SocketError::NoStart(cfg.start_timeout),
            )
        } else {
            (
                last_rx + cfg.idle_timeout,
                SocketError::Idle(cfg.idle_timeout),
            )
        };
        tokio::select! {
            biased;
            r = socket.recv(&mut buf) => {
                let at = now();
                last_rx = tokio::time::Instant::from_std(at);
                let t = Instant::now();
                match r {
                    Ok(Recv::Text) => call.handle_input(Input::Twilio { at, text: &buf }),
                    Ok(Recv::Binary(len)) => call.handle_input(Input::TwilioBinary { at, len }),
                    Ok(Recv::Closed) => {
                        call.handle_input(Input::TwilioClosed { at });
                        drain_events(call, observer, providers);
                        return peer_gone(call, observer, providers, in_flight.transfer, Ended::PeerClosed)
                            .await;
                    }
                    Err(e) => {
                        call.handle_input(Input::TwilioClosed { at });
                        drain_events(call, observer, providers);
                        return peer_gone(call, observer, providers, in_flight.transfer, Ended::Failed(e))
                            .await;
                    }
                }
                observer.processed(t.elapsed());
                // A large message must not keep its buffer for the rest of the call.
                if buf.capacity() > MESSAGE_BUFFER_KEEP_BYTES {
                    buf = String::with_capacity(512);
                }
            }
            ev = providers.next() => {
                call.handle_input(Input::Provider { at: now(), event: ev });
            }
            (id, probability) = turn_model::answer(&mut in_flight.check) => {
                call.handle_input(Input::TurnCheck { at: now(), id, probability });
            }
            outcome = transfer_outcome(&mut in_flight.transfer) => {
                call.handle_input(Input::Transfer { at: now(), outcome });
            }
            notice = control.next_notice() => {
                let CallNotice::AnsweredBy(answered_by) = notice;
                call.handle_input(Input::AnsweredBy { at: now(), answered_by });
            }
            () = timers.call.as_mut(), if timers.armed.is_some() => {
                timers.armed = None;
                call.handle_input(Input::Timeout(now()));
            }
            () = &mut stop => {
                call.handle_input(Input::TwilioClosed { at: now() });
                drain_events(call, observer, providers);
                socket.close_with(CLOSE_GOING_AWAY, "server shutting down").await;
                return Ended::Shutdown;
            }
            () = timers.watchdog.as_mut() => {
                if !timers.watchdog_due(watchdog) {
                    continue;
                }
                call.handle_input(Input::TwilioClosed { at: now() });
                drain_events(call, observer, providers);
                let (code, why) = match fault {
                    SocketError::NoStart(_) => (CLOSE_POLICY, "no start message"),
                    _ => (1000, "no message for too long"),
                };
                socket.close_with(code, why).await;
                return Ended::Failed(fault);
            }
        }
    }
}

/// A call's two timers, kept for the whole call and moved only when needed (instead of two
/// new timer registrations per message): the call's own deadline, re-armed when it changes
/// (e.g. once per outbound frame while audio plays), and the start/idle watchdog, which a frame
/// never moves later (that would re-arm it 50 times a second): when it fires early it is moved
/// to the real deadline instead. The watchdog's deadline only ever moves later.
struct CallTimers {
    call: Pin<Box<tokio::time::Sleep>>,
    /// What `call` is set to; `None`: not armed (fired, or the call has no deadline).
    armed: Option<tokio::time::Instant>,
    watchdog: Pin<Box<tokio::time::Sleep>>,
}

impl CallTimers {
    fn new(began: tokio::time::Instant, cfg: DriveConfig) -> CallTimers {
        CallTimers {
            call: Box::pin(tokio::time::sleep_until(began)),
            armed: None,
            watchdog: Box::pin(tokio::time::sleep_until(
                began + cfg.start_timeout.min(cfg.idle_timeout),
            )),
        }
    }

    /// Sets the call's timer to `deadline` (`None`: no deadline) unless it is set to it.
    fn arm(&mut self, deadline: Option<tokio::time::Instant>) {
        if deadline != self.armed {
            if let Some(d) = deadline {
                self.call.as_mut().reset(d);
            }
            self.armed = deadline;
        }
    }

    /// The watchdog fired: whether the real deadline `at` has passed; if not (frames came
    /// since it was set), it is moved to `at`.
    fn watchdog_due(&mut self, at: tokio::time::Instant) -> bool {
        if tokio::time::Instant::now() < at {
            self.watchdog.as_mut().reset(at);
            return false;
        }
        true
    }
}

/// Carries out what the call has to say until it waits: text frames sent, provider commands
/// and a transfer started, events observed. Returns the call's next deadline, or how the call
/// ended (a close, or a socket that failed or stalled on a send).
async fn carry_out<S: TwilioSocket, P: Providers, C: CallControl, O: Observer>(
    call: &mut Call,
    socket: &mut S,
    providers: &mut P,
    control: &mut C,
    observer: &mut O,
    in_flight: &mut InFlight,
    cfg: DriveConfig,
) -> Result<Option<Instant>, Ended> {
    loop {
        match call.poll_output() {
            // Queued; everything this turn of the loop transmits leaves in one write below.
            Output::Transmit(text) => {
                bounded(cfg, socket.queue(text))
                    .await
                    .map_err(|e| finish(call, observer, Ended::Failed(e)))?;
            }
            Output::Provider(c) => providers.execute(c),
            Output::Event(e) => observer.event(call, &e),
            Output::Transfer { to } => {
                let sid = call.info().map(|i| i.call_sid.clone());
                let fut = control.transfer(sid.as_deref(), &to);
                in_flight.transfer = Some((to, fut));
            }
            Output::Close(reason) => {
                // What was queued goes out now, not after a transfer in flight settles.
                bounded(cfg, socket.flush())
                    .await
                    .map_err(|e| finish(call, observer, Ended::Failed(e)))?;
                let reason = match in_flight.transfer.take() {
                    Some(t) => settle_transfer(call, observer, providers, t)
                        .await
                        .map_or(reason, CloseReason::Transfer),
                    None => reason,
                };
                socket.close().await;
                return Err(Ended::Closed(reason));
            }
            // A newer check replaces the one in flight (whose answer would be stale).
            Output::TurnCheck(c) => {
                in_flight.check = Some((c.id, turn_model::pool().check(c.audio)));
            }
            Output::Timeout(t) => {
                bounded(cfg, socket.flush())
                    .await
                    .map_err(|e| finish(call, observer, Ended::Failed(e)))?;
                return Ok(t);
            }
        }
    }
}

/// A socket write bounded by the send timeout; a stalled write is
/// [`SocketError::SendTimeout`]. Either error ends the call.
async fn bounded(
    cfg: DriveConfig,
    write: impl Future<Output = Result<(), SocketError>>,
) -> Result<(), SocketError> {
    tokio::time::timeout(cfg.send_timeout, write)
        .await
        .unwrap_or(Err(SocketError::SendTimeout(cfg.send_timeout)))
}

/// What a call waits for besides its socket, providers and timers.
#[derive(Default)]
struct InFlight {
    /// The transfer in flight ([`Output::Transfer`]), with its target.
    transfer: Option<(String, TransferFuture)>,
    /// The end-of-turn check in flight ([`Output::TurnCheck`]), with its id.
    check: Option<(u64, turn_model::Answer)>,
}

/// The outcome of the transfer in flight; pending forever when there is none. Cancel-safe:
/// the transfer's future lives in `transfer`, not in this one.
async fn transfer_outcome(transfer: &mut Option<(String, TransferFuture)>) -> TransferOutcome {
    let Some((_, fut)) = transfer.as_mut() else {
        return std::future::pending().await;
    };
    let outcome = fut.await;
    *transfer = None;
    outcome
}

/// Waits for a transfer still in flight when the call ends and feeds its outcome to the call.
/// Returns the target when the call was redirected.
async fn settle_transfer<O: Observer, P: Providers>(
    call: &mut Call,
    observer: &mut O,
    providers: &mut P,
    (to, fut): (String, TransferFuture),
) -> Option<String> {
    let outcome = fut.await;
    let redirected = outcome == TransferOutcome::Redirected;
    call.handle_input(Input::Transfer { at: now(), outcome });
    drain_events(call, observer, providers);
    redirected.then_some(to)
}

/// Twilio's socket is gone: `ended`, unless a transfer in flight redirected the call (Twilio
/// ends the stream of a call it redirects).
async fn peer_gone<O: Observer, P: Providers>(
    call: &mut Call,
    observer: &mut O,
    providers: &mut P,
    transfer: Option<(String, TransferFuture)>,
    ended: Ended,
) -> Ended {
    match transfer {
        Some(t) => match settle_transfer(call, observer, providers, t).await {
            Some(to) => Ended::Closed(CloseReason::Transfer(to)),
            None => ended,
        },
        None => ended,
    }
}

/// Resolves once shutdown is asked for; never if the sender is gone (nobody can ask).
async fn stop_requested(shutdown: &mut ShutdownSignal) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The message buffer is replaced by a small one after a message larger than this (bytes).
const MESSAGE_BUFFER_KEEP_BYTES: usize = 64 * 1024;

fn drain_events<O: Observer, P: Providers>(call: &mut Call, observer: &mut O, providers: &mut P) {
    loop {
        match call.poll_output() {
            Output::Event(e) => observer.event(call, &e),
            Output::Provider(c) => providers.execute(c),
            Output::Transmit(_)
            | Output::Close(_)
            | Output::Transfer { .. }
            | Output::TurnCheck(_) => {}
            Output::Timeout(_) => return,
        }
    }
}

fn finish<O: Observer>(call: &mut Call, observer: &mut O, ended: Ended) -> Ended {
    call.handle_input(Input::TwilioClosed { at: now() });
    loop {
        match call.poll_output() {
            Output::Event(e) => observer.event(call, &e),
            Output::Timeout(_) => return ended,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
