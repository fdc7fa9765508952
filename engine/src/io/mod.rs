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
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::agent::{OpenSpec, PeerId, ProviderCommand, ProviderEvent, ProviderMessage};

pub mod http;
pub mod ws;
use crate::call::{Call, CloseReason, Event, Input, Output};

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

/// Errors from a Twilio socket. The call ends (its record says why).
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket failed (reset, protocol error).
    #[error("websocket: {0}")]
    Io(String),
    /// Sending took longer than the driver's send timeout: Twilio is not reading.
    #[error("send timed out after {0:?}")]
    SendTimeout(Duration),
}

/// The Twilio side of a call as the driver needs it. Implemented by the gateway for its
/// WebSocket, and by tests for in-memory pipes.
pub trait TwilioSocket {
    /// Waits for the next frame. For a text frame the text is written to `buf` (cleared first).
    fn recv(&mut self, buf: &mut String) -> impl Future<Output = Result<Recv, SocketError>>;
    /// Sends one text frame.
    fn send(&mut self, text: &str) -> impl Future<Output = Result<(), SocketError>>;
    /// Closes the socket (normal closure, code 1000).
    fn close(&mut self) -> impl Future<Output = ()>;
}

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
                    OpenSpec::Http(req) => Pipe {
                        task: tokio::spawn(http::run(self.http.clone(), peer, req, tx)),
                        outgoing: None,
                    },
                    OpenSpec::WebSocket(req) => {
                        let (otx, orx) = mpsc::unbounded_channel();
                        Pipe {
                            task: tokio::spawn(ws::run(peer, req, orx, tx)),
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
                        error: "send on a pipe that is not an open WebSocket".into(),
                        status: None,
                        retry_after_ms: None,
                        close_code: None,
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
    /// The call asked to close (after `stop`, or an agent hang-up): the socket is closed. For
    /// [`CloseReason::Transfer`] it is left open for the caller of [`drive`] to redirect the
    /// call first and close it after.
    Closed(CloseReason),
    /// Twilio closed the socket.
    PeerClosed,
    /// The socket failed.
    Failed(SocketError),
}

/// Driver settings.
#[derive(Debug, Clone, Copy)]
pub struct DriveConfig {
    /// A send that takes longer than this ends the call (a dead or stuck Twilio socket must
    /// not keep the call's memory forever). Default 5 s.
    pub send_timeout: Duration,
    /// With no message from Twilio for this long, the call ends (Twilio sends a `media` every
    /// 20 ms while a call is up). Default 30 s.
    pub idle_timeout: Duration,
}

impl Default for DriveConfig {
    fn default() -> Self {
        DriveConfig {
            send_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The driver's clock (tokio's, so a paused test clock applies): use it for inputs fed to a
/// driven [`Call`] between [`drive`] runs.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs `call` on `socket` until it ends. See the module docs.
pub async fn drive<S: TwilioSocket, P: Providers, O: Observer>(
    call: &mut Call,
    socket: &mut S,
    providers: &mut P,
    observer: &mut O,
    cfg: DriveConfig,
) -> Ended {
    let mut buf = String::with_capacity(512);
    loop {
        // Carry out everything the call has to say.
        let next = loop {
            match call.poll_output() {
                Output::Transmit(text) => {
                    let r = tokio::time::timeout(cfg.send_timeout, socket.send(text)).await;
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return finish(call, observer, Ended::Failed(e)),
                        Err(_) => {
                            return finish(
                                call,
                                observer,
                                Ended::Failed(SocketError::SendTimeout(cfg.send_timeout)),
                            );
                        }
                    }
                }
                Output::Provider(c) => providers.execute(c),
                Output::Event(e) => observer.event(call, &e),
                Output::Close(reason) => {
                    // A transfer keeps the socket open until the call is redirected.
                    if !matches!(reason, CloseReason::Transfer(_)) {
                        socket.close().await;
                    }
                    return Ended::Closed(reason);
                }
                Output::Timeout(t) => break t,
            }
        };
        let deadline = next.map(tokio::time::Instant::from_std);
        let idle = tokio::time::sleep(cfg.idle_timeout);
        tokio::select! {
            biased;
            r = socket.recv(&mut buf) => {
                let at = now();
                let t = Instant::now();
                match r {
                    Ok(Recv::Text) => call.handle_input(Input::Twilio { at, text: &buf }),
                    Ok(Recv::Binary(len)) => call.handle_input(Input::TwilioBinary { at, len }),
                    Ok(Recv::Closed) => {
                        call.handle_input(Input::TwilioClosed { at });
                        drain_events(call, observer, providers);
                        return Ended::PeerClosed;
                    }
                    Err(e) => {
                        call.handle_input(Input::TwilioClosed { at });
                        drain_events(call, observer, providers);
                        return Ended::Failed(e);
                    }
                }
                observer.processed(t.elapsed());
            }
            ev = providers.next() => {
                call.handle_input(Input::Provider { at: now(), event: ev });
            }
            _ = sleep_until_opt(deadline) => {
                call.handle_input(Input::Timeout(now()));
            }
            _ = idle => {
                call.handle_input(Input::TwilioClosed { at: now() });
                drain_events(call, observer, providers);
                socket.close().await;
                return Ended::Failed(SocketError::Io(format!("no message from Twilio for {:?}", cfg.idle_timeout)));
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn drain_events<O: Observer, P: Providers>(call: &mut Call, observer: &mut O, providers: &mut P) {
    loop {
        match call.poll_output() {
            Output::Event(e) => observer.event(call, &e),
            Output::Provider(c) => providers.execute(c),
            Output::Transmit(_) | Output::Close(_) => {}
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
mod tests {
    use super::*;
    use crate::agent::{Action, Agent, AgentNeeds, CallInfo, UserTurn};
    use crate::playout::Interrupted;
    use crate::{CallConfig, twilio};

    /// Twilio's side: `connected`, `start`, then nothing (the call waits); records closes.
    struct Script {
        inbound: std::collections::VecDeque<String>,
        closed: bool,
    }

    impl TwilioSocket for Script {
        async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
            match self.inbound.pop_front() {
                Some(m) => {
                    buf.clear();
                    buf.push_str(&m);
                    Ok(Recv::Text)
                }
                None => std::future::pending().await,
            }
        }
        async fn send(&mut self, _text: &str) -> Result<(), SocketError> {
            Ok(())
        }
        async fn close(&mut self) {
            self.closed = true;
        }
    }

    /// Asks, at once, for the close given.
    struct Closer(Option<Action>);

    impl Agent for Closer {
        fn name(&self) -> &'static str {
            "closer"
        }
        fn needs(&self) -> AgentNeeds {
            AgentNeeds::default()
        }
        fn on_start(&mut self, _: Instant, _: &CallInfo, out: &mut Vec<Action>) {
            out.extend(self.0.take());
        }
        fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
        fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
    }

    struct Quiet;
    impl Observer for Quiet {
        fn event(&mut self, _: &Call, _: &Event) {}
    }

    async fn drive_until_closed(action: Action) -> (Ended, bool) {
        let start = twilio::Start {
            stream_sid: "MZ00000000000000000000000000000001".into(),
            call_sid: "CA00000000000000000000000000000001".into(),
            account_sid: "AC00000000000000000000000000000001".into(),
            tracks: vec!["inbound".into()],
            custom_parameters: vec![],
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        };
        let mut socket = Script {
            inbound: [
                twilio::inbound::connected(),
                twilio::inbound::start(1, &start),
            ]
            .into_iter()
            .collect(),
            closed: false,
        };
        let mut call = Call::new(CallConfig::default(), Box::new(Closer(Some(action))))
            .expect("default config");
        let ended = drive(
            &mut call,
            &mut socket,
            &mut NoProviders,
            &mut Quiet,
            DriveConfig::default(),
        )
        .await;
        (ended, socket.closed)
    }

    #[tokio::test]
    async fn a_transfer_leaves_the_socket_open_a_hang_up_closes_it() {
        let (ended, closed) = drive_until_closed(Action::Transfer {
            to: "+14155550100".into(),
        })
        .await;
        assert!(
            matches!(&ended, Ended::Closed(CloseReason::Transfer(to)) if to == "+14155550100"),
            "{ended:?}"
        );
        assert!(
            !closed,
            "closing first would make Twilio hang up before the transfer"
        );
        let (ended, closed) = drive_until_closed(Action::Hangup {
            reason: "done".into(),
        })
        .await;
        assert!(matches!(ended, Ended::Closed(CloseReason::Hangup(_))));
        assert!(closed);
    }
}
