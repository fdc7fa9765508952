//! The driver's tests: deadlines, shutdown, transfers and notices, on scripted sockets.

use super::*;
use crate::agent::{Action, Agent, AgentNeeds, CallInfo, UserTurn};
use crate::playout::Interrupted;
use crate::{CallConfig, twilio};

/// Twilio's side: `connected`, `start`, then nothing (the call waits); records closes.
struct Script {
    inbound: std::collections::VecDeque<String>,
    closed: bool,
    close_code: Option<u16>,
    /// Set on close, for a transfer to look at.
    closed_flag: std::rc::Rc<std::cell::Cell<bool>>,
    /// Wait this long before each message (none: all at once).
    pace: Option<Duration>,
    /// Where writing stops: a Twilio that stopped reading.
    stall: Stall,
    /// Frames handed to `send` or `queue` (and accepted).
    written: usize,
    /// Frames queued since the last flush.
    queued: usize,
}

/// Where a [`Script`] socket's writes stop completing.
#[derive(Clone, Copy, PartialEq)]
enum Stall {
    /// Every write completes.
    Never,
    /// `send` and `queue` never complete.
    Write,
    /// `send` and `queue` complete, `flush` never does once something is queued.
    Flush,
}

impl TwilioSocket for Script {
    async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
        if let Some(pace) = self.pace.filter(|_| !self.inbound.is_empty()) {
            tokio::time::sleep(pace).await;
        }
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
        if self.stall == Stall::Write {
            return std::future::pending().await;
        }
        self.written += 1;
        Ok(())
    }
    async fn queue(&mut self, text: &str) -> Result<(), SocketError> {
        self.send(text).await?;
        self.queued += 1;
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), SocketError> {
        if self.stall == Stall::Flush && self.queued > 0 {
            return std::future::pending().await;
        }
        self.queued = 0;
        Ok(())
    }
    async fn close(&mut self) {
        self.closed = true;
        self.closed_flag.set(true);
        self.close_code = Some(1000);
    }
    async fn close_with(&mut self, code: u16, _reason: &str) {
        self.closed = true;
        self.closed_flag.set(true);
        self.close_code = Some(code);
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

async fn drive_until_closed(action: Action, control: &mut impl CallControl) -> (Ended, bool) {
    let (_keep, mut shutdown) = tokio::sync::watch::channel(false);
    let agent = Box::new(Closer(Some(action)));
    let (ended, socket, _) = run_with(started(), agent, control, &mut shutdown).await;
    (ended, socket.closed)
}

/// Redirects every call after 50 ms, noting whether Twilio's socket was still open then
/// and which call it was asked to redirect.
#[derive(Default)]
struct Redirect {
    socket_closed: std::rc::Rc<std::cell::Cell<bool>>,
    closed_at_redirect: std::rc::Rc<std::cell::Cell<Option<bool>>>,
    asked: Vec<(Option<String>, String)>,
}

impl CallControl for Redirect {
    fn transfer(&mut self, call_sid: Option<&str>, to: &str) -> TransferFuture {
        self.asked
            .push((call_sid.map(str::to_owned), to.to_owned()));
        let (closed, seen) = (self.socket_closed.clone(), self.closed_at_redirect.clone());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen.set(Some(closed.get()));
            TransferOutcome::Redirected
        })
    }
}

#[tokio::test]
async fn a_transfer_keeps_the_socket_open_until_redirected_a_hang_up_closes_it() {
    let mut control = Redirect::default();
    let (_keep, mut shutdown) = tokio::sync::watch::channel(false);
    let agent = Box::new(Closer(Some(Action::Transfer {
        to: "+14155550100".into(),
    })));
    let mut socket = script(started());
    socket.closed_flag = control.socket_closed.clone();
    let (ended, socket) = run_on(socket, agent, &mut control, &mut shutdown).await;
    assert!(
        matches!(&ended, Ended::Closed(CloseReason::Transfer(to)) if to == "+14155550100"),
        "{ended:?}"
    );
    assert_eq!(
        control.closed_at_redirect.get(),
        Some(false),
        "closing first would make Twilio hang up before the transfer"
    );
    assert_eq!(
        control.asked,
        vec![(
            Some("CA00000000000000000000000000000001".to_string()),
            "+14155550100".to_string()
        )]
    );
    assert!(socket.closed, "closed once Twilio took the redirect");
    let (ended, closed) = drive_until_closed(
        Action::Hangup {
            reason: "done".into(),
        },
        &mut NoCallControl,
    )
    .await;
    assert!(matches!(ended, Ended::Closed(CloseReason::Hangup(_))));
    assert!(closed);
}

#[tokio::test]
async fn a_failed_transfer_goes_back_to_the_agent_inside_the_loop() {
    // The default `on_transfer_failed` hangs up, naming the failure.
    let (ended, closed) = drive_until_closed(
        Action::Transfer {
            to: "+14155550100".into(),
        },
        &mut NoCallControl,
    )
    .await;
    match ended {
        Ended::Closed(CloseReason::Hangup(why)) => {
            assert!(
                why.starts_with("transfer to +14155550100 failed: "),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(closed);
}

/// Wakes itself every 100 ms forever (timers keep firing while Twilio is silent).
struct Ticker;

impl Agent for Ticker {
    fn name(&self) -> &'static str {
        "ticker"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds::default()
    }
    fn on_start(&mut self, at: Instant, _: &CallInfo, out: &mut Vec<Action>) {
        out.push(Action::WakeAt(at + Duration::from_millis(100)));
    }
    fn on_timeout(&mut self, at: Instant, out: &mut Vec<Action>) {
        out.push(Action::WakeAt(at + Duration::from_millis(100)));
    }
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
    fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
}

/// What Twilio sends first: `connected` and `start`.
fn started() -> Vec<String> {
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
    vec![
        twilio::inbound::connected(),
        twilio::inbound::start(1, &start),
    ]
}

fn script(inbound: Vec<String>) -> Script {
    Script {
        inbound: inbound.into_iter().collect(),
        closed: false,
        close_code: None,
        closed_flag: Default::default(),
        pace: None,
        stall: Stall::Never,
        written: 0,
        queued: 0,
    }
}

async fn run(
    inbound: Vec<String>,
    agent: Box<dyn Agent>,
    shutdown: &mut ShutdownSignal,
) -> (Ended, Script, Duration) {
    run_with(inbound, agent, &mut NoCallControl, shutdown).await
}

async fn run_with(
    inbound: Vec<String>,
    agent: Box<dyn Agent>,
    control: &mut impl CallControl,
    shutdown: &mut ShutdownSignal,
) -> (Ended, Script, Duration) {
    let t0 = tokio::time::Instant::now();
    let (ended, socket) = run_on(script(inbound), agent, control, shutdown).await;
    (ended, socket, t0.elapsed())
}

async fn run_on(
    mut socket: Script,
    agent: Box<dyn Agent>,
    control: &mut impl CallControl,
    shutdown: &mut ShutdownSignal,
) -> (Ended, Script) {
    let mut call = Call::new(CallConfig::default(), agent).expect("default config");
    let ended = drive(
        &mut call,
        &mut socket,
        &mut NoProviders,
        control,
        &mut Quiet,
        DriveConfig::default(),
        shutdown,
    )
    .await;
    (ended, socket)
}

/// Hangs up when told who answered, naming the verdict.
struct HangsUpOnVerdict;

impl Agent for HangsUpOnVerdict {
    fn name(&self) -> &'static str {
        "verdict"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds::default()
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, _: &mut Vec<Action>) {}
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
    fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
    fn on_answered_by(
        &mut self,
        _: Instant,
        answered_by: crate::AnsweredBy,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Hangup {
            reason: answered_by.as_str().into(),
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_notice_from_outside_reaches_the_call_inside_the_loop() {
    let (_keep, mut shutdown) = tokio::sync::watch::channel(false);
    let (tx, notices) = mpsc::unbounded_channel();
    let mut control = WithNotices {
        control: NoCallControl,
        notices,
    };
    tx.send(CallNotice::AnsweredBy(crate::AnsweredBy::from_twilio(
        "machine_end_beep",
    )))
    .unwrap();
    let (ended, socket, _) = run_with(
        started(),
        Box::new(HangsUpOnVerdict),
        &mut control,
        &mut shutdown,
    )
    .await;
    assert!(
        matches!(&ended, Ended::Closed(CloseReason::Hangup(r)) if r == "machine_end_beep"),
        "{ended:?}"
    );
    assert!(socket.closed);
    // With every sender gone, the driver waits on the socket as before (no busy loop).
    drop(tx);
    let (_tx, notices) = mpsc::unbounded_channel::<CallNotice>();
    drop(_tx);
    let mut control = WithNotices {
        control: NoCallControl,
        notices,
    };
    let (ended, _, took) = run_with(
        started(),
        Box::new(HangsUpOnVerdict),
        &mut control,
        &mut shutdown,
    )
    .await;
    assert!(
        matches!(ended, Ended::Failed(SocketError::Idle(_))),
        "{ended:?}"
    );
    assert_eq!(took, DriveConfig::default().idle_timeout);
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_never_sends_start_is_closed_with_1008() {
    let (_keep, mut shutdown) = tokio::sync::watch::channel(false);
    let (ended, socket, took) = run(
        vec![twilio::inbound::connected()],
        Box::new(Ticker),
        &mut shutdown,
    )
    .await;
    assert!(
        matches!(ended, Ended::Failed(SocketError::NoStart(_))),
        "{ended:?}"
    );
    assert_eq!(socket.close_code, Some(CLOSE_POLICY));
    assert_eq!(took, DriveConfig::default().start_timeout);
}

#[tokio::test(start_paused = true)]
async fn the_idle_deadline_counts_from_the_last_message_while_timers_fire() {
    let (_keep, mut shutdown) = tokio::sync::watch::channel(false);
    let (ended, _socket, took) = run(started(), Box::new(Ticker), &mut shutdown).await;
    assert!(
        matches!(ended, Ended::Failed(SocketError::Idle(_))),
        "{ended:?}"
    );
    assert_eq!(took, DriveConfig::default().idle_timeout);
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_call_and_closes_with_1001() {
    let (stop, mut shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = stop.send(true);
        // Keep the sender alive: a dropped sender must not count as a request.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let (ended, socket, took) = run(started(), Box::new(Ticker), &mut shutdown).await;
    assert!(matches!(ended, Ended::Shutdown), "{ended:?}");
    assert_eq!(socket.close_code, Some(CLOSE_GOING_AWAY));
    assert_eq!(took, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_shutdown_sender_is_not_a_shutdown() {
    let (stop, mut shutdown) = tokio::sync::watch::channel(false);
    drop(stop);
    let (ended, _socket, _) = run(started(), Box::new(Ticker), &mut shutdown).await;
    assert!(
        matches!(ended, Ended::Failed(SocketError::Idle(_))),
        "{ended:?}"
    );
}

/// Records events; asks for shutdown once the model has answered with a probability.
struct ModelWatch {
    events: Vec<Event>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Observer for ModelWatch {
    fn event(&mut self, _: &Call, e: &Event) {
        if matches!(
            e,
            Event::TurnModelAnswered {
                probability_pct: Some(_),
                ..
            }
        ) {
            let _ = self.stop.send(true);
        }
        self.events.push(e.clone());
    }
}

#[tokio::test]
async fn the_end_of_turn_model_runs_on_its_pool_and_its_answer_reaches_the_call() {
    let ulaw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/audio/jfk-8k.ulaw"
    ))
    .expect("jfk fixture");
    let mut inbound = started();
    let mut msg = String::new();
    let sid = "MZ00000000000000000000000000000001";
    let silence = [0xFF_u8; 160];
    // Silence after the speech long enough (2 s at this pace) for an answer from a loaded
    // machine: the test ends as soon as one comes.
    let frames = ulaw
        .chunks(160)
        .chain(std::iter::repeat_n(&silence[..], 1_000));
    for (i, frame) in frames.enumerate() {
        twilio::inbound::media(
            i as u64 + 2,
            sid,
            i as u64 + 1,
            20 * i as u64,
            frame,
            &mut msg,
        );
        inbound.push(msg.clone());
    }
    let mut cfg = CallConfig::default();
    cfg.turn.end_of_turn = crate::config::EndOfTurn::SmartTurn;
    let mut call = Call::new(cfg, Box::new(crate::EchoAgent::new())).expect("valid config");
    let (stop, mut shutdown) = tokio::sync::watch::channel(false);
    let mut watch = ModelWatch {
        events: Vec::new(),
        stop,
    };
    // Media at 10× real time: a burst of checks (one per pause, all at once) would find the
    // pool's queue full and be answered "could not run".
    let mut socket = script(inbound);
    socket.pace = Some(Duration::from_millis(2));
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        drive(
            &mut call,
            &mut socket,
            &mut NoProviders,
            &mut NoCallControl,
            &mut watch,
            DriveConfig::default(),
            &mut shutdown,
        ),
    )
    .await
    .expect("the model answered within 60 s");
    assert!(matches!(ended, Ended::Shutdown), "{ended:?}");
    let answers: Vec<_> = watch
        .events
        .iter()
        .filter_map(|e| match e {
            Event::TurnModelAnswered {
                probability_pct,
                waited,
                ..
            } => Some((*probability_pct, *waited)),
            _ => None,
        })
        .collect();
    // The model ran (a probability, not "could not run") on a pool thread, and took time.
    let (p, waited) = answers
        .iter()
        .rev()
        .find(|a| a.0.is_some())
        .expect("an answer");
    assert!(
        p.is_some_and(|p| p <= 100) && !waited.is_zero(),
        "{answers:?}"
    );
    assert!(call.stats().turn_checks >= answers.len() as u64);
}

/// Plays a second of audio as soon as the call starts.
struct Greeter;

impl Agent for Greeter {
    fn name(&self) -> &'static str {
        "greeter"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds::default()
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, out: &mut Vec<Action>) {
        let id = crate::playout::UtteranceId(1);
        out.push(Action::Play {
            id,
            audio: crate::playout::AgentAudio::Mulaw(vec![0x55; 8_000]),
            text: None,
        });
        out.push(Action::Finish(id));
    }
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
    fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
}

/// A Twilio socket that stops taking writes (a peer that stopped reading, its TCP window
/// closed) ends the call with `SendTimeout` after `send_timeout`, whether the write that
/// stalls is a frame handed over (`queue`) or the flush of the frames queued in one turn of
/// the loop; the call does not wait on it forever, nor on the idle deadline.
#[tokio::test(start_paused = true)]
async fn a_socket_that_stops_taking_writes_ends_the_call_after_the_send_timeout() {
    let timeout = DriveConfig::default().send_timeout;
    for stall in [Stall::Write, Stall::Flush] {
        let (_keep, mut shutdown) = tokio::sync::watch::channel(false);
        let mut socket = script(started());
        socket.stall = stall;
        let t0 = tokio::time::Instant::now();
        // Bounded, so that a driver waiting on the write forever fails here instead of hanging.
        let (ended, socket) = tokio::time::timeout(
            timeout * 3,
            run_on(socket, Box::new(Greeter), &mut NoCallControl, &mut shutdown),
        )
        .await
        .expect("the call still waits on its stalled socket");
        assert!(
            matches!(ended, Ended::Failed(SocketError::SendTimeout(t)) if t == timeout),
            "{ended:?}"
        );
        assert_eq!(t0.elapsed(), timeout);
        match stall {
            Stall::Write => assert_eq!(socket.written, 0),
            // The greeting's first 200 ms (ten frames) and its marks were queued, then the
            // flush stalled.
            _ => assert!(socket.written >= 10, "{}", socket.written),
        }
    }
}
