//! [`Call`]: one Twilio Media Stream's state machine, sans-IO.
//!
//! The driver feeds [`Input`]s (each with its `Instant`) to [`Call::handle_input`] and drains
//! [`Call::poll_output`] until it returns [`Output::Timeout`]; then it waits for the Twilio
//! socket, the provider pipes, or that deadline. The call never reads the clock and never
//! touches a socket, so a whole call runs in virtual time in tests.
//!
//! Inbound path per `media`: base64 → μ-law → PCM 8 kHz → 20 ms frames (payloads of any size
//! are re-framed; 8 bytes = 1 ms) → optional 8 → 16 kHz resampling → VAD → turn detector →
//! agent. Outbound: agent audio → [`Playout`] → `media` + `mark` messages; barge-in → `clear`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hark_codecs::{Resampler, SampleRate, mulaw};

use crate::agent::{
    Action, Agent, AgentNeeds, AudioFrame, CallInfo, ProviderCommand, ProviderEvent,
};
use crate::config::CallConfig;
use crate::playout::{Playout, PlayoutEvent, Send, UtteranceId};
use crate::turn::{TurnDetector, TurnEvent, VoiceDetector};
use crate::twilio::{self, Inbound, Track};

mod events;
mod outside;
mod pause;
mod turn_book;
mod turn_end;
mod turn_model;

pub use events::*;
use turn_book::TurnBook;

enum Pending {
    Tx(String),
    Provider(ProviderCommand),
    Event(Event),
    Close(CloseReason),
    Transfer(String),
    TurnCheck(TurnCheck),
}

const FRAME_8K: usize = 160;

/// One call's state machine. See the module docs.
pub struct Call {
    cfg: CallConfig,
    agent: Box<dyn Agent>,
    needs: AgentNeeds,
    /// [`Agent::vad_barge_in`], read at creation.
    vad_barge_in: bool,
    vad: VoiceDetector,
    turn: TurnDetector,
    playout: Playout,
    /// 8 → 16 kHz for the VAD and/or the agent, when either runs at 16 kHz.
    up: Option<Resampler>,
    info: Option<CallInfo>,
    stopped: bool,
    closing: Option<CloseReason>,
    now: Option<Instant>,
    agent_wake: Option<Instant>,
    // Inbound buffers (reused: no allocation per frame in steady state).
    ulaw: Vec<u8>,
    frame_ulaw: [u8; FRAME_8K],
    frame_fill: usize,
    pcm8: [i16; FRAME_8K],
    pcm16: Vec<i16>,
    media_ms: u64,
    // Utterance capture (agent rate).
    preroll: VecDeque<i16>,
    utterance: Vec<i16>,
    utterance_start_ms: u64,
    last_voiced_at: Option<Instant>,
    user_end_at: Option<Instant>,
    /// The utterance answering the latest caller turn, with that turn's end, until the caller
    /// is heard to begin hearing it (for [`Event::AgentAudioHeard`]'s latency).
    answer_of: Option<(UtteranceId, Instant, bool)>,
    /// An answer began while the caller's turn was still open (see
    /// [`Event::AgentAudioStarted::before_turn_end`]); that turn's end is not timed again.
    open_turn_answered: bool,
    /// A transfer to this target is in flight ([`Output::Transfer`]): the call holds.
    transferring: Option<String>,
    /// Provider events that came while the call held for a transfer, with their arrival: the
    /// agent gets them if the transfer fails.
    deferred: Vec<(Instant, ProviderEvent)>,
    /// Transfers that failed so far.
    failed_transfers: u32,
    barged_this_speech: bool,
    /// The agent judges short turns over a hold by their words
    /// ([`Agent::checks_backchannels`], with `backchannel_check_ms` set).
    words_check: bool,
    /// A barge-in held, waiting to be confirmed or undone ([`pause`]).
    hold: Option<pause::Hold>,
    /// An answering machine's greeting is over ([`AnsweredBy::MachineEnd`]): its line (the
    /// beep, noise) no longer barges in on the agent.
    machine: bool,
    /// Which caller turn each event and report belongs to.
    book: TurnBook,
    /// The end-of-turn model's window and check in flight ([`crate::config::EndOfTurn::SmartTurn`]).
    model: turn_model::ModelState,
    // Output.
    out: VecDeque<Pending>,
    pool: Vec<String>,
    current: String,
    actions: Vec<Action>,
    pevents: Vec<PlayoutEvent>,
    stats: CallStats,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("agent", &self.agent.name())
            .field("info", &self.info)
            .field("stopped", &self.stopped)
            .field("media_ms", &self.media_ms)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Call {
    /// A call with `cfg`, driven by `agent`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when `cfg` is invalid.
    pub fn new(cfg: CallConfig, agent: Box<dyn Agent>) -> Result<Self, crate::Error> {
        cfg.validate()?;
        let needs = agent.needs();
        let vad_barge_in = agent.vad_barge_in();
        let words_check = agent.checks_backchannels() && cfg.turn.backchannel_check_ms > 0;
        let up = if cfg.vad.rate == SampleRate::HZ_16000 || cfg.agent_rate == SampleRate::HZ_16000 {
            Some(Resampler::new(SampleRate::HZ_8000, SampleRate::HZ_16000)?)
        } else {
            None
        };
        let preroll_cap = cfg
            .agent_rate
            .samples_in_ms(cfg.turn.pre_roll_ms as u64 + cfg.turn.start_window_ms as u64);
        Ok(Call {
            vad: VoiceDetector::new(&cfg.vad),
            turn: TurnDetector::new(cfg.turn),
            playout: Playout::new(cfg.playout),
            cfg,
            agent,
            needs,
            vad_barge_in,
            up,
            info: None,
            stopped: false,
            closing: None,
            now: None,
            agent_wake: None,
            ulaw: Vec::with_capacity(1024),
            frame_ulaw: [0; FRAME_8K],
            frame_fill: 0,
            pcm8: [0; FRAME_8K],
            pcm16: Vec::with_capacity(640),
            media_ms: 0,
            preroll: VecDeque::with_capacity(preroll_cap),
            utterance: Vec::new(),
            utterance_start_ms: 0,
            last_voiced_at: None,
            user_end_at: None,
            answer_of: None,
            open_turn_answered: false,
            transferring: None,
            deferred: Vec::new(),
            failed_transfers: 0,
            barged_this_speech: false,
            words_check,
            hold: None,
            machine: false,
            book: TurnBook::new(!vad_barge_in),
            model: turn_model::ModelState::default(),
            out: VecDeque::with_capacity(16),
            pool: Vec::with_capacity(16),
            current: String::new(),
            actions: Vec::with_capacity(8),
            pevents: Vec::with_capacity(4),
            stats: CallStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> CallStats {
        let mut s = self.stats.clone();
        s.playout = self.playout.stats();
        s
    }

    /// Stream facts once `start` has arrived.
    pub fn info(&self) -> Option<&CallInfo> {
        self.info.as_ref()
    }

    /// Media time so far: ms of inbound audio received.
    pub fn media_ms(&self) -> u64 {
        self.media_ms
    }

    /// Whether the stream has stopped (after `stop` or a socket close).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether the agent's provider ends caller turns itself (it decides interruptions:
    /// [`Agent::vad_barge_in`] is `false`), so its answers and transcripts can come before
    /// hark's endpointing ends the turn (ElevenLabs, OpenAI Realtime with server VAD).
    pub fn provider_ends_turns(&self) -> bool {
        !self.vad_barge_in
    }

    /// For agents whose provider ends turns ([`Call::provider_ends_turns`]): silence after
    /// the caller's last voiced frame before agent audio that starts while hark's turn is still
    /// open counts as the answer to that turn (the provider's endpointing, shorter than hark's
    /// `stop_ms`), rather than more of the previous answer playing while the caller talks.
    pub const EARLY_ANSWER_SILENCE: Duration = Duration::from_millis(150);

    /// After this many failed transfers the call hangs up (an agent that keeps asking for one
    /// would otherwise loop).
    pub const MAX_FAILED_TRANSFERS: u32 = 3;

    /// Whether agent audio is still unplayed (queued or not yet confirmed by a mark).
    pub fn agent_speaking(&self) -> bool {
        self.playout.is_speaking()
    }

    /// Media time (ms) at which the caller's current speech started, while hark's turn
    /// detector has not yet ended that turn (it ends after `stop_ms` of silence, with
    /// [`Event::UserTurnEnded`]); `None` when no caller turn is open.
    pub fn user_turn_open_since_ms(&self) -> Option<u64> {
        self.turn.speech_start_ms()
    }

    /// Feeds one input. Never fails: bad input is counted, reported as [`Event::Malformed`] and
    /// skipped.
    pub fn handle_input(&mut self, input: Input<'_>) {
        match input {
            Input::Twilio { at, text } => {
                self.now = Some(at);
                self.on_twilio(at, text);
            }
            Input::TwilioBinary { at, len } => {
                self.now = Some(at);
                self.malformed(Malformed::Binary, format!("binary frame of {len} bytes"));
            }
            Input::TwilioClosed { at } => {
                self.now = Some(at);
                self.stop(at, false);
            }
            Input::Provider { at, event } => {
                self.now = Some(at);
                if self.transferring.is_some() && !self.stopped {
                    self.deferred.push((at, event));
                } else if !self.stopped {
                    let mut actions = std::mem::take(&mut self.actions);
                    self.agent.on_provider(at, event, &mut actions);
                    self.run_actions(at, &mut actions);
                    self.actions = actions;
                }
            }
            Input::Transfer { at, outcome } => {
                self.now = Some(at);
                if let Some(to) = self.transferring.take() {
                    self.on_transfer(at, to, outcome);
                }
            }
            Input::TurnCheck {
                at,
                id,
                probability,
            } => {
                self.now = Some(at);
                // Holding for a transfer the caller is not listened to: an answer then is dropped,
                // and the turn ends after `model_stop_ms` of silence once the call is back.
                if !self.stopped && self.transferring.is_none() {
                    let mut actions = std::mem::take(&mut self.actions);
                    self.on_model_answer(at, id, probability, &mut actions);
                    self.run_actions(at, &mut actions);
                    self.actions = actions;
                }
            }
            Input::AnsweredBy { at, answered_by } => {
                self.now = Some(at);
                self.on_answered_by(at, answered_by);
            }
            Input::Timeout(at) => {
                self.now = Some(at);
                if !self.stopped {
                    let mut actions = std::mem::take(&mut self.actions);
                    self.check_hold(at, &mut actions);
                    self.run_actions(at, &mut actions);
                    self.actions = actions;
                }
                if self.agent_wake.is_some_and(|w| w <= at)
                    && !self.stopped
                    && self.transferring.is_none()
                {
                    self.agent_wake = None;
                    let mut actions = std::mem::take(&mut self.actions);
                    self.agent.on_timeout(at, &mut actions);
                    self.run_actions(at, &mut actions);
                    self.actions = actions;
                }
            }
        }
        if let Some(now) = self.now {
            self.pump(now);
        }
    }

    /// The next thing for the driver to do. Call until it returns [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output<'_> {
        match self.out.pop_front() {
            Some(Pending::Tx(s)) => {
                let old = std::mem::replace(&mut self.current, s);
                if old.capacity() > 0 && self.pool.len() < 32 {
                    self.pool.push(old);
                }
                Output::Transmit(&self.current)
            }
            Some(Pending::Provider(c)) => Output::Provider(c),
            Some(Pending::Event(e)) => Output::Event(e),
            Some(Pending::Close(r)) => Output::Close(r),
            Some(Pending::Transfer(to)) => Output::Transfer { to },
            Some(Pending::TurnCheck(check)) => Output::TurnCheck(check),
            None => Output::Timeout(self.next_timeout()),
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let now = self.now?;
        let a = self.playout.next_wake(now);
        // The agent sleeps while the call holds for a transfer.
        let agent_wake = self.agent_wake.filter(|_| self.transferring.is_none());
        [a, agent_wake, self.hold_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn buf(&mut self) -> String {
        let mut s = self
            .pool
            .pop()
            .unwrap_or_else(|| String::with_capacity(320));
        s.clear();
        s
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Pending::Event(e));
    }

    fn malformed(&mut self, kind: Malformed, detail: String) {
        if let Some(i) = Malformed::ALL.iter().position(|k| *k == kind) {
            self.stats.malformed[i] += 1;
        }
        self.event(Event::Malformed { kind, detail });
    }

    fn on_twilio(&mut self, at: Instant, text: &str) {
        self.stats.messages += 1;
        if self.stopped {
            self.malformed(Malformed::AfterStop, "message after stop".into());
            return;
        }
        if text.len() > self.cfg.max_message_bytes {
            self.malformed(
                Malformed::TooLarge,
                format!(
                    "{} bytes > limit {}",
                    text.len(),
                    self.cfg.max_message_bytes
                ),
            );
            return;
        }
        let parsed = match twilio::parse(text) {
            Ok(p) => p,
            Err(e) => {
                let kind = match e {
                    twilio::ParseError::Missing { .. } => Malformed::MissingField,
                    _ => Malformed::Json,
                };
                self.malformed(kind, e.to_string());
                return;
            }
        };
        self.stats.ignored_fields += parsed.ignored_fields as u64;
        if let (Some(info), Some(sid)) = (&self.info, &parsed.stream_sid)
            && info.stream_sid != *sid
        {
            let detail = format!("streamSid {sid} != {}", info.stream_sid);
            self.malformed(Malformed::WrongStream, detail);
            return;
        }
        match parsed.message {
            Inbound::Connected => self.event(Event::Connected),
            Inbound::Start(start) => self.on_start(at, *start),
            Inbound::Media(m) => {
                if self.info.is_none() {
                    self.malformed(Malformed::BeforeStart, "media before start".into());
                    return;
                }
                if m.track != Track::Inbound {
                    self.stats.other_track += 1;
                    return;
                }
                self.ulaw.clear();
                let mut ulaw = std::mem::take(&mut self.ulaw);
                match twilio::decode_payload(&m.payload, &mut ulaw) {
                    Err(e) => self.malformed(Malformed::BadBase64, e.to_string()),
                    Ok(0) => self.malformed(Malformed::EmptyPayload, "empty media payload".into()),
                    Ok(_) => {
                        self.stats.media_messages += 1;
                        self.on_audio(at, &ulaw);
                    }
                }
                self.ulaw = ulaw;
            }
            Inbound::Dtmf { digit } => {
                if self.info.is_none() {
                    self.malformed(Malformed::BeforeStart, "dtmf before start".into());
                    return;
                }
                self.event(Event::Dtmf {
                    digit: digit.clone(),
                    at,
                });
                if self.transferring.is_some() {
                    return;
                }
                let mut actions = std::mem::take(&mut self.actions);
                self.agent.on_dtmf(at, &digit, &mut actions);
                self.run_actions(at, &mut actions);
                self.actions = actions;
            }
            Inbound::Mark { name } => {
                if self.info.is_none() {
                    self.malformed(Malformed::BeforeStart, "mark before start".into());
                    return;
                }
                let mut pevents = std::mem::take(&mut self.pevents);
                if !self.playout.on_mark(&name, at, &mut pevents) {
                    self.malformed(
                        Malformed::UnknownMark,
                        format!("mark {name:?} was not sent by hark"),
                    );
                }
                self.playout_events(at, &mut pevents);
                self.pevents = pevents;
            }
            Inbound::Stop => self.stop(at, true),
            Inbound::Unknown { event } => {
                self.stats.unknown_events += 1;
                let _ = event;
            }
        }
    }

    /// `start`: the stream's facts (once), then the agent's greeting.
    fn on_start(&mut self, at: Instant, start: twilio::Start) {
        if self.info.is_some() {
            self.malformed(Malformed::SecondStart, "second start ignored".into());
            return;
        }
        if start.encoding != "audio/x-mulaw" || start.sample_rate != 8000 || start.channels != 1 {
            let detail = format!(
                "mediaFormat {} {} Hz x{}: treating as audio/x-mulaw 8000 Hz mono",
                start.encoding, start.sample_rate, start.channels
            );
            self.malformed(Malformed::UnsupportedFormat, detail);
        }
        // The call's own turn-taking settings (`hark_*` parameters), before any audio.
        let (cfg, errors) = self.cfg.with_parameters(&start.custom_parameters);
        for e in errors {
            self.malformed(Malformed::BadParameter, e);
        }
        if cfg != self.cfg {
            self.vad = VoiceDetector::new(&cfg.vad);
            self.turn = TurnDetector::new(cfg.turn);
            self.cfg = cfg;
        }
        let info = CallInfo {
            call_sid: start.call_sid,
            stream_sid: start.stream_sid,
            parameters: start.custom_parameters,
        };
        self.info = Some(info.clone());
        self.event(Event::Started(info.clone()));
        let mut actions = std::mem::take(&mut self.actions);
        self.agent.on_start(at, &info, &mut actions);
        self.run_actions(at, &mut actions);
        self.actions = actions;
    }

    fn stop(&mut self, at: Instant, by_message: bool) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.turn.reset();
        let mut actions = std::mem::take(&mut self.actions);
        self.agent.on_stop(at, &mut actions);
        // Only provider commands still make sense (closing pipes).
        for a in actions.drain(..) {
            if let Action::Provider(c) = a {
                self.out.push_back(Pending::Provider(c));
            }
        }
        self.actions = actions;
        self.event(Event::Stopped { at });
        if by_message {
            self.out.push_back(Pending::Close(CloseReason::Stopped));
        }
    }

    /// The outcome of the transfer to `to` came back.
    fn on_transfer(&mut self, at: Instant, to: String, outcome: TransferOutcome) {
        let deferred = std::mem::take(&mut self.deferred);
        let reason = match outcome {
            TransferOutcome::Redirected => {
                if !self.stopped {
                    self.stop(at, false);
                    self.out
                        .push_back(Pending::Close(CloseReason::Transfer(to)));
                }
                return;
            }
            TransferOutcome::Failed { reason } => reason,
        };
        self.failed_transfers += 1;
        self.event(Event::TransferFailed {
            to: to.clone(),
            reason: reason.clone(),
        });
        if self.stopped {
            return;
        }
        if self.failed_transfers >= Self::MAX_FAILED_TRANSFERS {
            self.stop(at, false);
            let why = format!("{} transfers failed", self.failed_transfers);
            self.out.push_back(Pending::Close(CloseReason::Hangup(why)));
            return;
        }
        // The call goes on: the agent is told, then gets what its providers said meanwhile.
        let mut actions = std::mem::take(&mut self.actions);
        self.agent
            .on_transfer_failed(at, &to, &reason, &mut actions);
        self.run_actions(at, &mut actions);
        for (t, event) in deferred {
            self.agent.on_provider(t, event, &mut actions);
            self.run_actions(t, &mut actions);
        }
        self.actions = actions;
    }

    fn on_audio(&mut self, at: Instant, ulaw: &[u8]) {
        let mut rest = ulaw;
        while !rest.is_empty() {
            let n = (FRAME_8K - self.frame_fill).min(rest.len());
            self.frame_ulaw[self.frame_fill..self.frame_fill + n].copy_from_slice(&rest[..n]);
            self.frame_fill += n;
            rest = &rest[n..];
            if self.frame_fill == FRAME_8K {
                self.frame_fill = 0;
                self.on_frame(at);
            }
        }
    }

    fn on_frame(&mut self, at: Instant) {
        self.stats.frames += 1;
        mulaw::decode(&self.frame_ulaw, &mut self.pcm8);
        let frame_start = self.media_ms;
        self.media_ms += 20;
        self.stats.inbound_ms += 20;
        // Holding for a transfer: the caller is not listened to.
        if self.transferring.is_some() {
            return;
        }
        if let Some(up) = self.up.as_mut() {
            self.pcm16.clear();
            if up.process(&self.pcm8, &mut self.pcm16).is_err() {
                self.pcm16.resize(320, 0);
            }
        }
        if self.model_on() {
            self.model.push(&self.pcm8);
        }
        let vad_16 = self.vad.rate() == SampleRate::HZ_16000;
        let voiced = self.vad.is_voiced(at_rate(vad_16, &self.pcm8, &self.pcm16));
        if voiced {
            self.last_voiced_at = Some(at);
        }
        let agent_16 = self.cfg.agent_rate == SampleRate::HZ_16000;
        let mut actions = std::mem::take(&mut self.actions);
        if self.needs.streaming_audio {
            let frame = AudioFrame {
                media_ms: frame_start,
                mulaw: &self.frame_ulaw,
                pcm: at_rate(agent_16, &self.pcm8, &self.pcm16),
                voiced,
            };
            self.agent.on_audio(at, &frame, &mut actions);
        }
        if self.needs.utterance_audio {
            self.capture(agent_16);
        }
        if let Some(ev) = self.turn.on_frame(frame_start, 20, voiced) {
            self.on_turn_event(at, ev, &mut actions);
        }
        // Barge-in: enough caller voice while agent audio is unplayed.
        if self.vad_barge_in
            && !self.machine
            && self.turn.is_speaking()
            && !self.barged_this_speech
            && self.turn.voiced_ms() >= self.cfg.turn.min_interruption_ms as u64
            && self.playout.is_speaking()
        {
            self.barged_this_speech = true;
            let speech_start_ms = self.turn.speech_start_ms().unwrap_or(frame_start);
            self.hold_for_caller(at, speech_start_ms, self.media_ms, &mut actions);
        }
        self.check_hold(at, &mut actions);
        self.run_actions(at, &mut actions);
        self.actions = actions;
    }

    /// Utterance capture at the agent rate: the open turn's audio, or the pre-roll before it.
    fn capture(&mut self, agent_16: bool) {
        let pcm = at_rate(agent_16, &self.pcm8, &self.pcm16);
        if self.turn.is_speaking() {
            self.utterance.extend_from_slice(pcm);
        } else {
            let cap = self.preroll.capacity().max(1);
            for &s in pcm {
                if self.preroll.len() == cap {
                    self.preroll.pop_front();
                }
                self.preroll.push_back(s);
            }
        }
    }

    /// The turn detector's verdict on this frame: speech started, a turn ended (handed to the
    /// agent), or speech too short dropped.
    fn on_turn_event(&mut self, at: Instant, ev: TurnEvent, actions: &mut Vec<Action>) {
        match ev {
            TurnEvent::SpeechStart { start_ms } => {
                // The caller speaks again before the agent judged their last words: they stand.
                self.settle_word_check(at, false, actions);
                self.barged_this_speech = false;
                if self.needs.utterance_audio {
                    self.utterance.clear();
                    self.utterance.extend(self.preroll.drain(..));
                    let have_ms = self.cfg.agent_rate.ms_of(self.utterance.len());
                    self.utterance_start_ms = self.media_ms.saturating_sub(have_ms);
                }
                self.event(Event::UserSpeechStarted {
                    turn: self.book.current(),
                    media_ms: start_ms,
                    at,
                });
                self.agent.on_user_speech_start(at, start_ms, actions);
            }
            TurnEvent::SpeechEnd {
                start_ms,
                end_ms,
                forced,
            } if self.is_backchannel(start_ms, end_ms, forced) => {
                // Over a held answer: a backchannel, not a turn; the agent plays on.
                self.resume_hold(at, true);
                self.discard(start_ms, end_ms);
            }
            TurnEvent::SpeechEnd {
                start_ms,
                end_ms,
                forced,
            } if self.asks_for_words(start_ms, end_ms, forced) => {
                self.ask_for_words(at, start_ms, end_ms, actions);
            }
            TurnEvent::SpeechEnd {
                start_ms,
                end_ms,
                forced,
            } => {
                self.confirm_hold(at, actions);
                self.end_turn(at, start_ms, end_ms, forced, actions)
            }
            TurnEvent::Discarded { start_ms, end_ms } => {
                self.resume_hold(at, false);
                self.discard(start_ms, end_ms);
            }
            TurnEvent::AskModel { start_ms, .. } => self.ask_model(at, start_ms),
        }
    }

    fn run_actions(&mut self, at: Instant, actions: &mut Vec<Action>) {
        let mut interrupt = false;
        let mut verdict = None;
        for a in actions.drain(..) {
            match a {
                Action::Play { id, audio, text } => {
                    if let Err(e) = self.playout.push(id, audio, text) {
                        self.event(Event::Malformed {
                            kind: Malformed::UnsupportedFormat,
                            detail: format!("agent audio for {id} dropped: {e}"),
                        });
                    }
                }
                Action::Finish(id) => {
                    if let Err(e) = self.playout.finish(id) {
                        self.event(Event::Malformed {
                            kind: Malformed::UnsupportedFormat,
                            detail: format!("tail of {id} lost: {e}"),
                        });
                    }
                }
                Action::Provider(c) => self.out.push_back(Pending::Provider(c)),
                Action::Hangup { reason } => {
                    if self.closing.is_none() {
                        self.closing = Some(CloseReason::Hangup(reason));
                    }
                }
                // A second close request (transfer or hang-up) changes nothing.
                Action::Transfer { to } => {
                    if self.closing.is_none() {
                        self.closing = Some(CloseReason::Transfer(to.clone()));
                        self.event(Event::TransferRequested { to });
                    }
                }
                Action::Report(report) => {
                    let cx = turn_book::ReportContext {
                        turn_open: self.turn.speech_start_ms().is_some(),
                        agent_speaking: self.playout.is_speaking(),
                    };
                    let turn = self.book.report(&report, cx);
                    self.event(Event::Agent { turn, report });
                }
                Action::WakeAt(t) => {
                    self.agent_wake = Some(self.agent_wake.map_or(t, |w| w.min(t)));
                }
                Action::Interrupt => interrupt = true,
                Action::Clear => self.clear_for_agent(at),
                Action::BackchannelVerdict { backchannel } => verdict = Some(backchannel),
            }
        }
        if let Some(backchannel) = verdict.filter(|_| !self.stopped) {
            let mut more = Vec::new();
            self.settle_word_check(at, backchannel, &mut more);
            if !more.is_empty() {
                self.run_actions(at, &mut more);
            }
        }
        // A provider-side interruption: the same path as the VAD's barge-in. The agent's
        // answer to it runs once more through here; a second `Interrupt` finds nothing to
        // clear, so this ends.
        if interrupt && !self.stopped {
            let decided_ms = self.media_ms;
            let speech_start_ms = self
                .turn
                .speech_start_ms()
                .unwrap_or(decided_ms)
                .min(decided_ms);
            let mut more = Vec::new();
            self.barge_in(at, speech_start_ms, decided_ms, &mut more);
            if !more.is_empty() {
                self.run_actions(at, &mut more);
            }
        }
    }

    fn pump(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        // Borrowed, not cloned: this runs after every input (no allocation per frame).
        let Some(sid) = self.info.as_ref().map(|i| i.stream_sid.as_str()) else {
            return;
        };
        let mut pevents = std::mem::take(&mut self.pevents);
        let mut pool = std::mem::take(&mut self.pool);
        let out = &mut self.out;
        self.playout.pump(now, &mut pevents, |send| {
            let mut s = pool.pop().unwrap_or_else(|| String::with_capacity(320));
            match send {
                Send::Media(bytes) => twilio::encode_media(sid, bytes, &mut s),
                Send::Mark(name) => twilio::encode_mark(sid, name, &mut s),
            }
            out.push_back(Pending::Tx(s));
        });
        self.pool = pool;
        self.playout_events(now, &mut pevents);
        self.pevents = pevents;
        if let Some(reason) = self.closing.clone()
            && !self.playout.is_speaking()
        {
            self.closing = None;
            if let CloseReason::Transfer(to) = reason {
                // The socket stays open while the driver redirects the call.
                self.transferring = Some(to.clone());
                self.out.push_back(Pending::Transfer(to));
            } else {
                self.stopped = true;
                self.out.push_back(Pending::Close(reason));
            }
        }
    }

    fn playout_events(&mut self, at: Instant, pevents: &mut Vec<PlayoutEvent>) {
        for e in pevents.drain(..) {
            match e {
                PlayoutEvent::Started { id, at } => {
                    // A provider that ends turns itself (no VAD barge-in: ElevenLabs,
                    // Realtime's server VAD) can answer before hark's endpointing has ended
                    // the turn: the audio answers the open turn, timed from its last voiced
                    // frame (and a turn hark ended that the provider ignored is forgotten).
                    let early = !self.vad_barge_in
                        && self.turn.is_speaking()
                        && !self.open_turn_answered
                        && self.last_voiced_at.is_some_and(|v| {
                            at.saturating_duration_since(v) >= Self::EARLY_ANSWER_SILENCE
                        });
                    let (user_end, before_turn_end) = if early {
                        self.user_end_at = None;
                        self.open_turn_answered = true;
                        (self.last_voiced_at, true)
                    } else {
                        (self.user_end_at.take(), false)
                    };
                    if let Some(u) = user_end {
                        self.answer_of = Some((id, u, before_turn_end));
                    }
                    let since = user_end.map(|u| at.saturating_duration_since(u));
                    let turn = self.book.audio_started(before_turn_end);
                    self.event(Event::AgentAudioStarted {
                        id,
                        turn,
                        at,
                        since_user_end: since,
                        before_turn_end,
                    });
                }
                PlayoutEvent::FirstHeard { id, at, heard_ms } => {
                    let (since_user_end, before_turn_end) = match self.answer_of {
                        Some((a, user_end, early)) if a == id => {
                            self.answer_of = None;
                            let began = at
                                .checked_sub(Duration::from_millis(heard_ms))
                                .unwrap_or(at);
                            // Still before hark's endpointing, or not: the turn log needs to
                            // know which turn this belongs to now.
                            let early = early && self.open_turn_answered;
                            (Some(began.saturating_duration_since(user_end)), early)
                        }
                        _ => (None, false),
                    };
                    let turn = self.book.audio_heard(before_turn_end);
                    self.event(Event::AgentAudioHeard {
                        id,
                        turn,
                        at,
                        since_user_end,
                        before_turn_end,
                    })
                }
                PlayoutEvent::Played { id, heard_ms, .. } => {
                    let turn = self.book.answer_event();
                    self.event(Event::UtterancePlayed { id, turn, heard_ms });
                    let mut actions = std::mem::take(&mut self.actions);
                    self.agent.on_played(at, id, &mut actions);
                    self.run_actions(at, &mut actions);
                    self.actions = actions;
                }
            }
        }
    }
}

/// The frame's PCM at 16 kHz (`sixteen`) or 8 kHz.
fn at_rate<'a>(sixteen: bool, pcm8: &'a [i16], pcm16: &'a [i16]) -> &'a [i16] {
    if sixteen { pcm16 } else { pcm8 }
}
