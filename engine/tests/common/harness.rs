//! [`TestCall`]: one `Call` driven in virtual time (the model is str0m's `TestRtc`). It owns
//! the call, the virtual clock `now`, the virtual phone (which plays hark's audio and echoes
//! its marks as Twilio would) and, for the agents that talk to providers, a scripted provider
//! side ([`Provider`]) whose answers are delivered at their virtual times.
//!
//! Everything hark outputs is recorded with its time: Twilio messages (parsed strictly, for
//! the stream's sid), events, provider commands, close requests and mark echoes.
//!
//! Driving it:
//! - step by step: [`TestCall::text`] / [`TestCall::input`] feed one input at `now` and drain
//!   the outputs; [`TestCall::advance_to`] lets time pass, firing echoes, provider answers and
//!   the call's timeouts on the way;
//! - a whole session: [`TestCall::replay`] feeds timed Twilio lines, interleaved with the rest,
//!   until the call closes or everything is done.

use std::time::{Duration, Instant};

use hark_engine::agent::{Agent, AgentReport, PeerId, ProviderCommand, ProviderEvent};
use hark_engine::agent::{ProviderMessage, Stage};
use hark_engine::sim::{Phone, Received};
use hark_engine::twilio::{self, Outbound, Start};
use hark_engine::{BargeIn, Call, CallConfig, CloseReason, Event, Input, Output, TurnCheck};

pub fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// A `start` message's fields for `stream_sid` / `call_sid`, μ-law 8 kHz mono, inbound track.
pub fn start(stream_sid: &str, call_sid: &str, params: &[(&str, &str)]) -> Start {
    Start {
        stream_sid: stream_sid.into(),
        call_sid: call_sid.into(),
        account_sid: "AC00000000000000000000000000000001".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        encoding: "audio/x-mulaw".into(),
        sample_rate: 8000,
        channels: 1,
    }
}

/// The provider side of a call: sees every command the agent issues and answers with events.
pub trait Provider {
    /// The agent issued `cmd` at `now`; queue the answers on `out`.
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending);
}

/// No provider: commands are recorded, never answered.
pub struct NoProvider;

impl Provider for NoProvider {
    fn command(&mut self, _: Instant, _: &ProviderCommand, _: &mut Pending) {}
}

impl<P: Provider + ?Sized> Provider for Box<P> {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        (**self).command(now, cmd, out)
    }
}

/// Provider events waiting for their time, delivered in time order, ties in queue order.
#[derive(Default)]
pub struct Pending {
    now: Option<Instant>,
    queue: Vec<(Instant, u64, ProviderEvent)>,
    order: u64,
}

impl Pending {
    /// Queues `event` for `at` (never before the command that caused it).
    pub fn push(&mut self, (at, event): (Instant, ProviderEvent)) {
        self.order += 1;
        let at = self.now.map_or(at, |now| at.max(now));
        self.queue.push((at, self.order, event));
    }

    pub fn extend(&mut self, events: impl IntoIterator<Item = (Instant, ProviderEvent)>) {
        for e in events {
            self.push(e);
        }
    }

    /// Drops everything queued on `peer` (the pipe was closed).
    pub fn cancel(&mut self, peer: PeerId) {
        self.queue.retain(|(_, _, e)| match e {
            ProviderEvent::Opened { peer: p, .. }
            | ProviderEvent::Message { peer: p, .. }
            | ProviderEvent::Closed { peer: p }
            | ProviderEvent::Failed { peer: p, .. } => *p != peer,
        });
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.iter().map(|(t, _, _)| *t).min()
    }

    fn pop(&mut self) -> Option<ProviderEvent> {
        let i = (0..self.queue.len()).min_by_key(|&i| (self.queue[i].0, self.queue[i].1))?;
        Some(self.queue.remove(i).2)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One call in virtual time, with the phone and the provider side around it (module doc).
pub struct TestCall<P: Provider = NoProvider> {
    pub call: Call,
    /// Virtual time zero (the phone's too).
    pub t0: Instant,
    /// Virtual now.
    pub now: Instant,
    /// The stream's sid: every message hark sends must carry it; marks are echoed with it.
    pub sid: String,
    /// The caller's phone. With `play` off it hears nothing and echoes no marks.
    pub phone: Phone,
    pub play: bool,
    /// The scripted provider side.
    pub provider: P,
    /// Provider events not delivered yet.
    pub pending: Pending,
    pub events: Vec<(Instant, Event)>,
    /// Every Twilio message hark sent, parsed strictly, with its send time.
    pub sent: Vec<(Instant, Outbound)>,
    /// Every provider command, with its time.
    pub commands: Vec<(Instant, ProviderCommand)>,
    /// Mark names echoed to the call, with the time.
    pub echoed: Vec<(Instant, String)>,
    pub closes: Vec<CloseReason>,
    /// Transfers the call asked for ([`Output::Transfer`]), in order.
    pub transfers: Vec<String>,
    /// End-of-turn model checks the call asked for ([`Output::TurnCheck`]), with the time.
    pub turn_checks: Vec<(Instant, TurnCheck)>,
    /// The call's next deadline.
    pub timeout: Option<Instant>,
    /// Sequence number of the last message the harness built.
    pub seq: u64,
    /// `media` messages built by [`TestCall::inbound_media`].
    pub chunk: u64,
    /// Inbound μ-law bytes in them, for their `timestamp`.
    pub media_bytes: u64,
    last_wake: Option<Instant>,
    same_wake: u32,
}

impl TestCall<NoProvider> {
    /// A call with `agent` on stream `sid`, at virtual time zero, its phone playing.
    pub fn new(cfg: CallConfig, agent: Box<dyn Agent>, sid: &str) -> Self {
        TestCall::with_provider(cfg, agent, sid, Instant::now(), NoProvider)
    }
}

impl<P: Provider> TestCall<P> {
    /// A call with `agent` on stream `sid` whose provider side is `provider`, starting at `t0`.
    pub fn with_provider(
        cfg: CallConfig,
        agent: Box<dyn Agent>,
        sid: &str,
        t0: Instant,
        provider: P,
    ) -> Self {
        TestCall {
            call: Call::new(cfg, agent).expect("valid config"),
            t0,
            now: t0,
            sid: sid.into(),
            phone: Phone::new(sid, t0),
            play: true,
            provider,
            pending: Pending::default(),
            events: Vec::new(),
            sent: Vec::new(),
            commands: Vec::new(),
            echoed: Vec::new(),
            closes: Vec::new(),
            transfers: Vec::new(),
            turn_checks: Vec::new(),
            timeout: None,
            seq: 100_000,
            chunk: 0,
            media_bytes: 0,
            last_wake: None,
            same_wake: 0,
        }
    }

    /// No phone: hark's output is recorded but not played, and no mark is echoed.
    pub fn without_phone(mut self) -> Self {
        self.play = false;
        self
    }

    /// Provider events delivered at their times whatever the agent does.
    pub fn timed(mut self, events: Vec<(Instant, ProviderEvent)>) -> Self {
        self.pending.extend(events);
        self
    }

    /// Feeds a Twilio text message at `now`; returns the events it caused.
    pub fn text(&mut self, text: &str) -> Vec<Event> {
        let at = self.now;
        self.input(Input::Twilio { at, text })
    }

    /// Feeds `input` and drains the outputs; returns the events it caused.
    pub fn input(&mut self, input: Input<'_>) -> Vec<Event> {
        self.call.handle_input(input);
        self.drain()
    }

    /// `connected` and `start` (call `CA1`, with `params`).
    pub fn start_stream(&mut self, params: &[(&str, &str)]) -> Vec<Event> {
        let mut ev = self.text(&twilio::inbound::connected());
        let start = start(&self.sid.clone(), "CA1", params);
        ev.extend(self.text(&twilio::inbound::start(1, &start)));
        ev
    }

    /// A valid inbound `media` message carrying `bytes`, its `timestamp` the audio built so far.
    pub fn inbound_media(&mut self, bytes: &[u8]) -> String {
        self.seq += 1;
        self.chunk += 1;
        let mut s = String::new();
        twilio::inbound::media(
            self.seq,
            &self.sid,
            self.chunk,
            self.media_bytes / 8,
            bytes,
            &mut s,
        );
        self.media_bytes += bytes.len() as u64;
        s
    }

    /// Feeds `ulaw` as `media` messages of `size` bytes, each arriving when its audio has been
    /// recorded (8 bytes per ms), time passing in between.
    pub fn feed_audio(&mut self, ulaw: &[u8], size: usize) -> Vec<Event> {
        let mut ev = Vec::new();
        for piece in ulaw.chunks(size) {
            let to = self.now + Duration::from_micros(piece.len() as u64 * 125);
            ev.extend(self.advance_to(to));
            let msg = self.inbound_media(piece);
            ev.extend(self.text(&msg));
        }
        ev
    }

    /// Polls the call until `Timeout`, recording and checking every output.
    pub fn drain(&mut self) -> Vec<Event> {
        let mut new = Vec::new();
        for _ in 0..100_000 {
            match self.call.poll_output() {
                Output::Transmit(text) => {
                    let m = twilio::parse_outbound(text)
                        .unwrap_or_else(|e| panic!("invalid outbound {text}: {e}"));
                    let sid = match &m {
                        Outbound::Media { stream_sid, .. }
                        | Outbound::Mark { stream_sid, .. }
                        | Outbound::Clear { stream_sid } => stream_sid,
                    };
                    assert_eq!(sid, &self.sid);
                    if self.play
                        && let Received::Invalid(e) = self.phone.receive(self.now, text)
                    {
                        panic!("phone rejected {text}: {e}");
                    }
                    self.sent.push((self.now, m));
                }
                Output::Event(e) => new.push(e),
                Output::Provider(c) => {
                    self.pending.now = Some(self.now);
                    self.provider.command(self.now, &c, &mut self.pending);
                    self.commands.push((self.now, c));
                }
                Output::Close(r) => self.closes.push(r),
                Output::Transfer { to } => self.transfers.push(to),
                Output::TurnCheck(c) => self.turn_checks.push((self.now, c)),
                Output::Timeout(t) => {
                    if let Some(t) = t {
                        assert!(t >= self.now, "timeout in the past");
                    }
                    self.timeout = t;
                    self.events
                        .extend(new.iter().map(|e| (self.now, e.clone())));
                    return new;
                }
            }
        }
        panic!("poll_output never returned Timeout");
    }

    /// The next instant something happens without new input: a mark echo, a provider event
    /// or the call's timeout.
    pub fn next_wake(&self) -> Option<Instant> {
        let echo = self.play.then(|| self.phone.next_echo_at()).flatten();
        [echo, self.pending.next_at(), self.timeout]
            .into_iter()
            .flatten()
            .min()
    }

    /// Moves the clock (and the phone) to `t`, never backwards.
    fn tick(&mut self, t: Instant) {
        self.now = self.now.max(t);
        if self.play {
            self.phone.advance(self.now);
        }
    }

    /// Feeds the mark echoes due now; whether there were any.
    fn echo_marks(&mut self, ev: &mut Vec<Event>) -> bool {
        let mut any = false;
        while self.play {
            let echoes = self.phone.take_echoes();
            if echoes.is_empty() {
                break;
            }
            any = true;
            for name in echoes {
                self.seq += 1;
                let msg = twilio::inbound::mark(self.seq, &self.sid, &name);
                self.echoed.push((self.now, name));
                ev.extend(self.text(&msg));
            }
        }
        any
    }

    /// Delivers one provider event due now, else fires the call's timeout if due.
    fn fire(&mut self, ev: &mut Vec<Event>) {
        let now = self.now;
        if self.pending.next_at().is_some_and(|t| t <= now) {
            let event = self.pending.pop().expect("an event is due");
            ev.extend(self.input(Input::Provider { at: now, event }));
        } else if self.timeout.is_some_and(|t| t <= now) {
            // The call must not ask to be woken again and again at the same instant.
            if self.last_wake == Some(now) {
                self.same_wake += 1;
                assert!(self.same_wake < 100, "busy wake-ups at {} ms", self.at(now));
            } else {
                self.last_wake = Some(now);
                self.same_wake = 0;
            }
            ev.extend(self.input(Input::Timeout(now)));
        }
    }

    /// Lets virtual time pass to `to`: mark echoes, provider events and the call's timeouts
    /// due on the way happen at their times. Returns the events.
    pub fn advance_to(&mut self, to: Instant) -> Vec<Event> {
        let mut ev = Vec::new();
        let mut guard = 0;
        while let Some(t) = self.next_wake().filter(|t| *t <= to) {
            guard += 1;
            assert!(guard < 1_000_000, "virtual time does not advance");
            self.tick(t);
            if !self.echo_marks(&mut ev) {
                self.fire(&mut ev);
            }
        }
        self.tick(to);
        ev
    }

    /// Replays `lines` (Twilio messages with their arrival times) with everything else at its
    /// time, until the call closes, or every line is in, the call stopped and no provider event
    /// is pending. At one instant: mark echoes first, then a line, a provider event, the
    /// timeout.
    pub fn replay(&mut self, lines: &[(Instant, String)]) {
        let mut ev = Vec::new();
        let mut idx = 0;
        let mut guard = 0u64;
        loop {
            guard += 1;
            assert!(guard < 10_000_000, "harness did not terminate");
            if !self.closes.is_empty()
                || (idx >= lines.len() && self.call.is_stopped() && self.pending.is_empty())
            {
                break;
            }
            let line = lines.get(idx).map(|l| l.0);
            let Some(t) = [line, self.next_wake()].into_iter().flatten().min() else {
                break;
            };
            self.tick(t);
            if self.echo_marks(&mut ev) {
                continue;
            }
            if line.is_some_and(|t| t <= self.now) {
                self.text(&lines[idx].1);
                idx += 1;
            } else {
                self.fire(&mut ev);
            }
        }
    }

    /// `t` as ms since `t0`.
    pub fn at(&self, t: Instant) -> u64 {
        t.duration_since(self.t0).as_millis() as u64
    }

    /// The last close hark asked for.
    pub fn closed(&self) -> Option<CloseReason> {
        self.closes.last().cloned()
    }

    /// What `f` picks from the events, in order.
    pub fn pick<T>(&self, mut f: impl FnMut(Instant, &Event) -> Option<T>) -> Vec<T> {
        self.events.iter().filter_map(|(t, e)| f(*t, e)).collect()
    }

    /// Caller turns as (start_ms, end_ms) of media time.
    pub fn turns(&self) -> Vec<(u64, u64)> {
        self.pick(|_, e| match e {
            Event::UserTurnEnded {
                start_ms, end_ms, ..
            } => Some((*start_ms, *end_ms)),
            _ => None,
        })
    }

    pub fn barge_ins(&self) -> Vec<BargeIn> {
        self.pick(|_, e| match e {
            Event::BargeIn(b) => Some(b.clone()),
            _ => None,
        })
    }

    /// The agent's reports with their times.
    pub fn timed_reports(&self) -> Vec<(Instant, AgentReport)> {
        self.pick(|t, e| match e {
            Event::Agent { report, .. } => Some((t, report.clone())),
            _ => None,
        })
    }

    pub fn reports(&self) -> Vec<AgentReport> {
        self.timed_reports().into_iter().map(|(_, r)| r).collect()
    }

    /// Latencies reported for `stage`, ms.
    pub fn latencies(&self, stage: Stage) -> Vec<u64> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                AgentReport::Latency { stage: s, ms } if s == stage => Some(ms),
                _ => None,
            })
            .collect()
    }

    /// Provider faults reported, as (provider, kind).
    pub fn faults(&self) -> Vec<(String, String)> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                AgentReport::ProviderFault { provider, kind, .. } => Some((provider, kind)),
                _ => None,
            })
            .collect()
    }

    /// Texts sent on provider pipes, with their times.
    pub fn texts_sent(&self) -> Vec<(Instant, String)> {
        self.commands
            .iter()
            .filter_map(|(t, c)| match c {
                ProviderCommand::Send {
                    message: ProviderMessage::Text(s),
                    ..
                } => Some((*t, s.clone())),
                _ => None,
            })
            .collect()
    }

    /// Sent texts parsed as JSON.
    pub fn json_sent(&self) -> Vec<(Instant, serde_json::Value)> {
        self.texts_sent()
            .into_iter()
            .map(|(t, s)| {
                (
                    t,
                    serde_json::from_str(&s).expect("provider messages are JSON"),
                )
            })
            .collect()
    }

    /// Outbound μ-law sent to Twilio, in order, with the time of each `media`.
    pub fn media(&self) -> Vec<(Instant, Vec<u8>)> {
        self.sent
            .iter()
            .filter_map(|(t, o)| match o {
                Outbound::Media { mulaw, .. } => Some((*t, mulaw.clone())),
                _ => None,
            })
            .collect()
    }

    /// When hark sent `clear`.
    pub fn clears(&self) -> Vec<Instant> {
        self.sent
            .iter()
            .filter_map(|(t, o)| matches!(o, Outbound::Clear { .. }).then_some(*t))
            .collect()
    }
}
