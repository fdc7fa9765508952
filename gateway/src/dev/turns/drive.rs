//! One scene through a real [`Call`] in virtual time: Twilio's `media` messages every 20 ms of
//! caller audio, a virtual phone ([`Phone`]) that plays hark's audio and echoes its marks, the
//! call's timeouts fired at their times. No sockets and no waiting: a scene of minutes runs in
//! well under a second, and every run of the same audio gives the same events.
//!
//! While the agent scene plays, [`Talker`] keeps the agent talking: it speaks at the start,
//! again when an answer has played out, after a caller turn ends, and [`TALKER_RESUME`] after a
//! barge-in that left no turn; so a sound the caller makes finds the agent speaking. Like the
//! cascade agent it can check a short turn over its held audio by its words
//! ([`Talker::with_words`]): its "STT" knows the scene's annotations (module docs there).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hark_engine::agent::{Action, Agent, AgentNeeds, AudioFrame, CallInfo, UserTurn};
use hark_engine::agents::backchannel::{DEFAULT_WORDS, is_backchannel};
use hark_engine::playout::{AgentAudio, Interrupted, UtteranceId};
use hark_engine::sim::{Phone, Received};
use hark_engine::smart_turn::SmartTurn;
use hark_engine::twilio::{self, Start};
use hark_engine::{Call, CallConfig, Event, Input, Output, TurnCheck};

use super::corpus::{EventKind, SceneEvent};

/// The stream's SID in every bench call (the phone checks every message carries it).
const SID: &str = "MZ7e11a9c0b1e0d6f3a2c4b5d6e7f80912";

/// How long an end-of-turn model check takes to come back in virtual time
/// (`HARK_END_OF_TURN=smart-turn`): about one Smart Turn inference on one core of the 2-core
/// AMD EPYC machine the README's figures come from (`cargo bench -p hark-benches --bench
/// smart_turn`, `smart_turn/predict_8k_8s`), rounded up. The model itself runs for real, outside
/// the call's timed work.
pub const MODEL_LATENCY: Duration = Duration::from_millis(150);

/// How long [`Talker`] waits after a barge-in that no caller turn followed before it talks again.
pub const TALKER_RESUME: Duration = Duration::from_millis(2_000);

/// How long [`Talker`]'s word check takes to answer in virtual time by default (`hark bench
/// turns --stt-ms`): a transcription of a clip under a second from an OpenAI-compatible STT
/// (the cascade's word check sends one such request).
pub const DEFAULT_STT_MS: u64 = 300;

/// What [`Talker`]'s word check "hears" for a turn that overlaps none of the scene's
/// backchannels or barge-ins (noise, a cough, a click): not a backchannel, as an STT that
/// transcribes something from noise would make it. So the check helps only where a real STT
/// would hear the words; it never hides a false barge-in.
pub const NOT_WORDS: &str = "[unintelligible]";

/// One of the call's events, stamped with the media time (ms of caller audio fed so far) at
/// which the call emitted it.
#[derive(Debug, Clone)]
pub struct Stamped {
    /// Media ms when emitted (the end of the frame that caused it, or a timer's time).
    pub media_ms: u64,
    /// The event.
    pub event: Event,
}

/// What running a scene produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Every event the call emitted, in order.
    pub events: Vec<Stamped>,
    /// Wall time spent inside the call (`handle_input` and the `poll_output` drain).
    pub busy: Duration,
    /// 20 ms frames fed.
    pub frames: u64,
    /// End-of-turn model checks answered, and the wall time the model took for them (not in
    /// `busy`).
    pub model_checks: u64,
    /// See `model_checks`.
    pub model_busy: Duration,
}

/// The agent for the caller-only scenes: listens, never speaks, and keeps the call's own VAD
/// verdict of every frame (from the streamed [`AudioFrame`]s), for frame-level precision and
/// recall.
#[derive(Debug, Default)]
pub struct Listener {
    voiced: Rc<RefCell<Vec<bool>>>,
}

impl Listener {
    /// A listener, and where it will put the verdicts (one per 20 ms frame, in order).
    pub fn new() -> (Listener, Rc<RefCell<Vec<bool>>>) {
        let l = Listener::default();
        let voiced = l.voiced.clone();
        (l, voiced)
    }
}

impl Agent for Listener {
    fn name(&self) -> &'static str {
        "listener"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: false,
            streaming_audio: true,
        }
    }
    fn on_audio(&mut self, _: Instant, frame: &AudioFrame<'_>, _: &mut Vec<Action>) {
        self.voiced.borrow_mut().push(frame.voiced);
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, _: &mut Vec<Action>) {}
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
    fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
}

/// The agent for the agent scene: talks whenever it may (module docs). Its voice is a 30 s
/// vowel-like buzz at about −20 dBFS; what it says does not matter, only that it is playing.
#[derive(Debug)]
pub struct Talker {
    audio: Vec<u8>,
    next: u64,
    /// The utterance playing, if any.
    current: Option<UtteranceId>,
    /// When to talk again after a barge-in that no turn followed.
    resume_at: Option<Instant>,
    /// The word check, when on.
    words: Option<Words>,
}

/// [`Talker`]'s word check: an STT that hears exactly the annotated words.
#[derive(Debug)]
struct Words {
    /// How long it takes to answer.
    latency: Duration,
    /// The scene's sounds with words (backchannels, barge-ins): start and end ms, label.
    said: Vec<(u64, u64, String)>,
    /// The verdict due, and when.
    due: Option<(Instant, bool)>,
}

impl Words {
    /// The words of the sounds overlapping `start_ms`–`end_ms` (100 ms of slack for the
    /// VAD's edges), or [`NOT_WORDS`].
    fn transcript(&self, start_ms: u64, end_ms: u64) -> String {
        let heard: Vec<&str> = self
            .said
            .iter()
            .filter(|(s, e, _)| *s < end_ms + 100 && *e + 100 > start_ms)
            .map(|(_, _, w)| w.as_str())
            .collect();
        if heard.is_empty() {
            NOT_WORDS.to_string()
        } else {
            heard.join(" ")
        }
    }
}

impl Talker {
    /// A talker with its 30 s of audio ready.
    pub fn new() -> Self {
        // 120 Hz pulse train through a crude formant: harmonics 1..30 with falling amplitude.
        let pcm: Vec<i16> = (0..8000 * 30)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let v: f64 = (1..30)
                    .map(|h| (2.0 * std::f64::consts::PI * 120.0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (v * 1800.0) as i16
            })
            .collect();
        let mut audio = vec![0u8; pcm.len()];
        hark_codecs::mulaw::encode(&pcm, &mut audio);
        Talker {
            audio,
            next: 0,
            current: None,
            resume_at: None,
            words: None,
        }
    }

    /// A talker that checks short turns over its held audio by their words
    /// ([`Agent::checks_backchannels`]) as the cascade does, with the default phrases
    /// ([`hark_engine::agents::backchannel::DEFAULT_WORDS`]): its "STT" answers after `latency`
    /// with the labels of the scene's `events` the turn overlaps (backchannels and barge-ins;
    /// coughs and clicks have no words), else [`NOT_WORDS`].
    pub fn with_words(events: &[SceneEvent], latency: Duration) -> Self {
        let said = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Backchannel | EventKind::BargeIn))
            .map(|e| (e.start_ms, e.end_ms, e.label.clone()))
            .collect();
        Talker {
            words: Some(Words {
                latency,
                said,
                due: None,
            }),
            ..Talker::new()
        }
    }

    fn talk(&mut self, out: &mut Vec<Action>) {
        if self.current.is_some() {
            return;
        }
        self.next += 1;
        let id = UtteranceId(self.next);
        self.current = Some(id);
        self.resume_at = None;
        out.push(Action::Play {
            id,
            audio: AgentAudio::Mulaw(self.audio.clone()),
            text: None,
        });
        out.push(Action::Finish(id));
    }
}

impl Default for Talker {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent for Talker {
    fn name(&self) -> &'static str {
        "talker"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: false,
            streaming_audio: false,
        }
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, out: &mut Vec<Action>) {
        self.talk(out);
    }
    fn checks_backchannels(&self) -> bool {
        self.words.is_some()
    }
    fn on_backchannel_check(&mut self, now: Instant, turn: &UserTurn, out: &mut Vec<Action>) {
        let Some(w) = self.words.as_mut() else {
            return;
        };
        let text = w.transcript(turn.start_ms, turn.end_ms);
        let at = now + w.latency;
        w.due = Some((at, is_backchannel(&text, DEFAULT_WORDS)));
        out.push(Action::WakeAt(at));
    }
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, out: &mut Vec<Action>) {
        self.talk(out);
    }
    fn on_barge_in(&mut self, now: Instant, _: &Interrupted, out: &mut Vec<Action>) {
        self.current = None;
        let at = now + TALKER_RESUME;
        self.resume_at = Some(at);
        out.push(Action::WakeAt(at));
    }
    fn on_played(&mut self, _: Instant, id: UtteranceId, out: &mut Vec<Action>) {
        if self.current == Some(id) {
            self.current = None;
            self.talk(out);
        }
    }
    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(w) = self.words.as_mut()
            && let Some((_, backchannel)) = w.due.filter(|(t, _)| *t <= now)
        {
            w.due = None;
            out.push(Action::BackchannelVerdict { backchannel });
        }
        if self.resume_at.is_some_and(|t| t <= now) {
            self.talk(out);
        }
    }
}

fn start_message() -> String {
    let start = Start {
        stream_sid: SID.into(),
        call_sid: "CA7e11a9c0b1e0d6f3a2c4b5d6e7f80912".into(),
        account_sid: "AC7e11a9c0b1e0d6f3a2c4b5d6e7f80912".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: Vec::new(),
        encoding: "audio/x-mulaw".into(),
        sample_rate: 8000,
        channels: 1,
    };
    twilio::inbound::start(1, &start)
}

/// The call, its phone and the clock.
struct Driver {
    call: Call,
    phone: Phone,
    t0: Instant,
    now: Instant,
    timeout: Option<Instant>,
    seq: u64,
    media_ms: u64,
    run: Run,
    /// The end-of-turn check in flight, with when its answer comes.
    check: Option<(Instant, TurnCheck)>,
}

impl Driver {
    fn input(&mut self, input: Input<'_>) -> Result<(), String> {
        let began = Instant::now();
        self.call.handle_input(input);
        let result = self.drain();
        self.run.busy += began.elapsed();
        result
    }

    fn text(&mut self, text: &str) -> Result<(), String> {
        let at = self.now;
        self.input(Input::Twilio { at, text })
    }

    fn drain(&mut self) -> Result<(), String> {
        loop {
            match self.call.poll_output() {
                Output::Transmit(text) => {
                    if let Received::Invalid(e) = self.phone.receive(self.now, text) {
                        return Err(format!("the phone refused {text}: {e}"));
                    }
                }
                Output::Event(event) => self.run.events.push(Stamped {
                    media_ms: self.media_ms,
                    event,
                }),
                Output::Timeout(t) => {
                    self.timeout = t;
                    return Ok(());
                }
                // A newer check replaces the one in flight, as in the real driver.
                Output::TurnCheck(c) => self.check = Some((self.now + MODEL_LATENCY, c)),
                Output::Provider(_) | Output::Close(_) | Output::Transfer { .. } => {}
            }
        }
    }

    /// Answers the check in flight with the real model (its time kept apart from the call's).
    fn answer_check(&mut self) -> Result<(), String> {
        let Some((_, check)) = self.check.take() else {
            return Ok(());
        };
        let began = Instant::now();
        let probability = SmartTurn::shared().map(|m| m.predict_8k(&check.audio)).ok();
        self.run.model_busy += began.elapsed();
        self.run.model_checks += 1;
        let at = self.now;
        self.input(Input::TurnCheck {
            at,
            id: check.id,
            probability,
        })
    }

    /// Lets virtual time run to `to`: mark echoes and the call's timers at their times.
    fn advance_to(&mut self, to: Instant) -> Result<(), String> {
        loop {
            let check_at = self.check.as_ref().map(|c| c.0);
            let next = [self.phone.next_echo_at(), self.timeout, check_at]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= to);
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            self.phone.advance(self.now);
            if check_at.is_some_and(|c| c <= self.now) {
                self.answer_check()?;
                continue;
            }
            let echoes = self.phone.take_echoes();
            if echoes.is_empty() {
                let at = self.now;
                self.input(Input::Timeout(at))?;
                continue;
            }
            for name in echoes {
                self.seq += 1;
                let msg = twilio::inbound::mark(self.seq, SID, &name);
                self.text(&msg)?;
            }
        }
        self.now = self.now.max(to);
        self.phone.advance(self.now);
        Ok(())
    }
}

/// Plays `ulaw` (whole 20 ms frames) to a new call with `cfg` and `agent`, each frame arriving
/// when it has been recorded, and returns the call's events. Errors: the configuration is
/// invalid, or hark sent something the phone refused (a bug).
pub fn run(cfg: CallConfig, agent: Box<dyn Agent>, ulaw: &[u8]) -> Result<Run, String> {
    let call = Call::new(cfg, agent).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut d = Driver {
        call,
        phone: Phone::new(SID, t0).keep_heard(false),
        t0,
        now: t0,
        timeout: None,
        seq: 1,
        media_ms: 0,
        run: Run::default(),
        check: None,
    };
    d.text(&twilio::inbound::connected())?;
    d.text(&start_message())?;
    let mut msg = String::new();
    for (i, frame) in ulaw.chunks_exact(160).enumerate() {
        let arrives = d.t0 + Duration::from_millis(20 * (i as u64 + 1));
        d.advance_to(arrives)?;
        d.seq += 1;
        twilio::inbound::media(d.seq, SID, i as u64 + 1, 20 * i as u64, frame, &mut msg);
        d.media_ms = 20 * (i as u64 + 1);
        d.text(&msg)?;
        d.run.frames += 1;
    }
    let end = d.now + Duration::from_secs(3);
    d.advance_to(end)?;
    Ok(d.run)
}
