//! [`DtmfMenu`]: a keypad menu in front of the configured agent.
//!
//! The caller hears a prompt (three rising tones, reported as the text of [`PROMPT`]), then:
//! - `1` hands the call to the configured agent (`HARK_AGENT`: echo, cascade, …): from then on
//!   every callback goes to it, and it starts as if the call had just begun (its greeting);
//! - `0` transfers the call to the operator's number, when one is set;
//! - `#` hangs up;
//! - any other key, or speech, plays the prompt again (once it has finished).
//!
//! A key pressed while the prompt plays cuts it ([`Action::Interrupt`]: `clear`, as a barge-in).
//!
//! Two things every agent that wraps another must do, shown here:
//! - [`Agent::needs`] and [`Agent::vad_barge_in`] are read once, when the call is created, so
//!   the wrapper answers with the inner agent's from the start;
//! - utterance ids must grow through the whole call (a barge-in cancels every id seen so far),
//!   so the inner agent's ids are moved past the menu's own ([`DtmfMenu::base`]), in the
//!   actions it returns and back in the callbacks it gets.

use std::time::Instant;

use hark_codecs::SampleRate;
use hark_engine::agent::{AgentNeeds, AudioFrame, CallInfo, ProviderEvent, UserTurn};
use hark_engine::playout::Interrupted;
use hark_engine::{Action, Agent, AgentAudio, UtteranceId};
use hark_gateway::serve::{AgentContext, BuildError};

/// What the prompt says, as reported for the call record (the caller hears tones).
pub const PROMPT: &str = "Press 1 for the assistant, 0 for an operator, or # to hang up.";

/// Said before the prompt again when the transfer to the operator failed.
pub const NO_OPERATOR: &str = "The operator cannot be reached.";

/// The hang-up reason when the caller presses `#`.
pub const HANGUP_REASON: &str = "caller pressed #";

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The menu answers.
    Menu,
    /// `1` was pressed while the prompt played: the prompt is being cut; the inner agent starts
    /// once it is ([`Agent::on_barge_in`]), so the cut does not cancel its first words.
    HandingOver,
    /// The inner agent answers.
    Inner,
}

/// A keypad menu that hands over to `inner` on `1` (see the module docs).
pub struct DtmfMenu {
    inner: Box<dyn Agent>,
    operator: Option<String>,
    mode: Mode,
    info: Option<CallInfo>,
    /// The menu's last utterance id (1, 2, …).
    last_id: u64,
    /// The prompt while it plays (queued, not yet played to its end or cut).
    playing: Option<UtteranceId>,
    /// Inner utterance `n` plays as `base + n`: past every id the menu used.
    base: u64,
}

impl DtmfMenu {
    /// A menu in front of `inner`; `0` transfers to `operator` (E.164 or SIP URI) when given.
    pub fn new(inner: Box<dyn Agent>, operator: Option<String>) -> Self {
        DtmfMenu {
            inner,
            operator,
            mode: Mode::Menu,
            info: None,
            last_id: 0,
            playing: None,
            base: 0,
        }
    }

    /// Plays the prompt, `before` it when given.
    fn prompt(&mut self, before: Option<&str>, out: &mut Vec<Action>) {
        self.last_id += 1;
        let id = UtteranceId(self.last_id);
        let text = match before {
            Some(b) => format!("{b} {PROMPT}"),
            None => PROMPT.to_string(),
        };
        out.push(Action::Play {
            id,
            audio: AgentAudio::Pcm {
                rate: SampleRate::HZ_8000,
                samples: chime(),
            },
            text: Some(text),
        });
        out.push(Action::Finish(id));
        self.playing = Some(id);
    }

    /// Cuts the prompt if it still plays. Returns whether it did.
    fn cut(&mut self, out: &mut Vec<Action>) -> bool {
        if self.playing.is_some() {
            out.push(Action::Interrupt);
            return true;
        }
        false
    }

    /// From now on the inner agent answers; it starts as if the call had just begun.
    fn hand_over(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.mode = Mode::Inner;
        self.base = self.last_id;
        let info = self.info.take().unwrap_or_default();
        self.forward(out, |a, out| a.on_start(now, &info, out));
    }

    /// Runs `f` on the inner agent and moves the utterance ids of the actions it adds.
    fn forward(&mut self, out: &mut Vec<Action>, f: impl FnOnce(&mut dyn Agent, &mut Vec<Action>)) {
        let from = out.len();
        f(self.inner.as_mut(), out);
        for a in &mut out[from..] {
            if let Action::Play { id, .. } | Action::Finish(id) = a {
                id.0 += self.base;
            }
        }
    }

    /// `heard` as the inner agent knows it (its own ids), or `None` when none of its
    /// utterances was cut.
    fn to_inner(&self, heard: &Interrupted) -> Option<Interrupted> {
        let base = self.base;
        let mut dropped = heard
            .dropped
            .iter()
            .filter(|d| d.0 > base)
            .map(|d| UtteranceId(d.0 - base));
        if heard.id.0 > base {
            return Some(Interrupted {
                id: UtteranceId(heard.id.0 - base),
                dropped: dropped.collect(),
                ..heard.clone()
            });
        }
        // The menu's own audio was playing; the inner agent's queued behind it never played.
        let id = dropped.next()?;
        Some(Interrupted {
            id,
            heard_ms: 0,
            sent_ms: 0,
            produced_ms: 0,
            heard_text: None,
            dropped: dropped.collect(),
        })
    }
}

impl Agent for DtmfMenu {
    fn name(&self) -> &'static str {
        "dtmf-menu"
    }

    fn needs(&self) -> AgentNeeds {
        self.inner.needs()
    }

    fn vad_barge_in(&self) -> bool {
        self.inner.vad_barge_in()
    }

    fn on_start(&mut self, _now: Instant, info: &CallInfo, out: &mut Vec<Action>) {
        self.info = Some(info.clone());
        self.prompt(None, out);
    }

    fn on_audio(&mut self, now: Instant, frame: &AudioFrame<'_>, out: &mut Vec<Action>) {
        if self.mode == Mode::Inner {
            self.forward(out, |a, out| a.on_audio(now, frame, out));
        }
    }

    fn on_user_speech_start(&mut self, now: Instant, media_ms: u64, out: &mut Vec<Action>) {
        if self.mode == Mode::Inner {
            self.forward(out, |a, out| a.on_user_speech_start(now, media_ms, out));
        }
    }

    fn on_user_turn(&mut self, now: Instant, turn: UserTurn, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Inner => self.forward(out, |a, out| a.on_user_turn(now, turn, out)),
            // The caller talked instead of pressing a key.
            Mode::Menu if self.playing.is_none() => self.prompt(None, out),
            Mode::Menu | Mode::HandingOver => {}
        }
    }

    fn on_barge_in(&mut self, now: Instant, heard: &Interrupted, out: &mut Vec<Action>) {
        self.playing = None;
        match self.mode {
            Mode::Menu => {}
            Mode::HandingOver => self.hand_over(now, out),
            Mode::Inner => {
                if let Some(h) = self.to_inner(heard) {
                    self.forward(out, |a, out| a.on_barge_in(now, &h, out));
                }
            }
        }
    }

    fn on_played(&mut self, now: Instant, id: UtteranceId, out: &mut Vec<Action>) {
        if self.playing == Some(id) {
            self.playing = None;
        }
        if self.mode == Mode::Inner && id.0 > self.base {
            let inner = UtteranceId(id.0 - self.base);
            self.forward(out, |a, out| a.on_played(now, inner, out));
        }
    }

    fn on_dtmf(&mut self, now: Instant, digit: &str, out: &mut Vec<Action>) {
        match (self.mode, digit) {
            (Mode::Inner, _) => self.forward(out, |a, out| a.on_dtmf(now, digit, out)),
            (Mode::HandingOver, _) => {}
            (Mode::Menu, "1") => {
                if self.cut(out) {
                    self.mode = Mode::HandingOver;
                } else {
                    self.hand_over(now, out);
                }
            }
            (Mode::Menu, "0") if self.operator.is_some() => {
                self.cut(out);
                let to = self.operator.clone().unwrap_or_default();
                out.push(Action::Transfer { to });
            }
            (Mode::Menu, "#") => {
                self.cut(out);
                out.push(Action::Hangup {
                    reason: HANGUP_REASON.to_string(),
                });
            }
            (Mode::Menu, _) if self.playing.is_none() => self.prompt(None, out),
            (Mode::Menu, _) => {}
        }
    }

    fn on_provider(&mut self, now: Instant, event: ProviderEvent, out: &mut Vec<Action>) {
        // The menu opens no pipes: every provider event is the inner agent's.
        self.forward(out, |a, out| a.on_provider(now, event, out));
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.mode == Mode::Inner {
            self.forward(out, |a, out| a.on_timeout(now, out));
        }
    }

    fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.mode == Mode::Inner {
            self.forward(out, |a, out| a.on_stop(now, out));
        }
    }

    fn on_transfer_failed(&mut self, now: Instant, to: &str, reason: &str, out: &mut Vec<Action>) {
        match self.mode {
            Mode::Inner => self.forward(out, |a, out| a.on_transfer_failed(now, to, reason, out)),
            _ => self.prompt(Some(NO_OPERATOR), out),
        }
    }
}

/// The prompt's sound: C5, E5, G5 (523, 659, 784 Hz), 200 ms each with 40 ms between, at
/// 8 kHz (4 160 samples, 520 ms), a quarter of full scale.
pub fn chime() -> Vec<i16> {
    const RATE: f32 = 8_000.0;
    let mut samples = Vec::with_capacity(4_160);
    for (i, hz) in [523.25_f32, 659.25, 783.99].into_iter().enumerate() {
        if i > 0 {
            samples.extend(std::iter::repeat_n(0, 320));
        }
        for n in 0..1_600 {
            let t = n as f32 / RATE;
            // 5 ms fades against clicks.
            let fade = (n.min(1_599 - n) as f32 / 40.0).min(1.0);
            let s = (2.0 * std::f32::consts::PI * hz * t).sin() * fade * 8_192.0;
            samples.push(s as i16);
        }
    }
    samples
}

/// The factory `hark serve` runs: a [`DtmfMenu`] in front of a new configured agent for each
/// call, `0` transferring to `operator`.
pub fn factory(
    operator: Option<String>,
) -> impl Fn(&AgentContext<'_>) -> Result<Box<dyn Agent>, BuildError> + Send + Sync + 'static {
    move |cx: &AgentContext<'_>| {
        let inner = cx.configured_agent()?;
        Ok(Box::new(DtmfMenu::new(inner, operator.clone())))
    }
}
