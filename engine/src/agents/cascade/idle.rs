//! A silent caller and keys pressed: the re-prompt and the idle hang-up
//! ([`super::CascadeConfig::idle_reprompt_ms`], [`super::CascadeConfig::idle_hangup_ms`]), and
//! DTMF digits handed to the model as the caller's words.
//!
//! **Silence** counts from when the agent has nothing left to say or play (its last utterance
//! played out, no turn being answered, no tool out) and the caller is quiet; it is looked at
//! after every event ([`CascadeAgent::idle_settle`]), so it starts at the event that made the
//! agent quiet (the playout's `Played` of its last utterance, most of the time). The caller
//! starting to speak, or pressing a key, ends it; the agent talking on its own (a notice after
//! a failed transfer) starts it over, but the re-prompt does not: the hang-up counts from the
//! same start. The re-prompt is made once per silence, and only to a quiet agent.
//!
//! **Keys** pressed within [`DTMF_GAP_MS`] of each other are sent together (at once on `#`)
//! as a user message, `(The caller pressed 12 on the keypad.)`: a turn of its own, or added to
//! the turn being transcribed or thought about, as speech would be.

use std::collections::BTreeSet;
use std::time::Instant;

use super::utterance::Owner;
use super::{CALLER_QUIET_MS, CascadeAgent, ms};
use crate::agent::Action;
use crate::playout::UtteranceId;

/// Keys pressed within this long of each other go to the model together, ms.
pub const DTMF_GAP_MS: u64 = 1_500;
/// Keys kept for one message at most (more are dropped).
const MAX_KEYS: usize = 32;
/// An idle hang-up happens at most this long after its goodbye started, ms, even when the
/// playout never says the goodbye played (it could not be synthesised).
const GOODBYE_MAX_MS: u64 = 15_000;
/// The hang-up reason of an idle caller.
pub const IDLE_REASON: &str = "idle";

/// The caller's silence and the keys they pressed.
#[derive(Debug, Default)]
pub(super) struct Idle {
    /// Since when the caller has been silent with the agent done; `None` while either is busy.
    since: Option<Instant>,
    /// This silence's re-prompt was made.
    reprompted: bool,
    /// Utterances handed to the playout and not yet played out or cleared.
    playing: BTreeSet<UtteranceId>,
    /// A talking caller may have stopped (no voice for [`CALLER_QUIET_MS`]) at this time.
    recheck_at: Option<Instant>,
    /// The idle goodbye being said, and when to hang up at the latest.
    goodbye: Option<(UtteranceId, Instant)>,
    /// The idle hang-up was asked for.
    hung_up: bool,
    /// Keys pressed and not sent yet.
    keys: String,
    /// When `keys` go to the model.
    keys_at: Option<Instant>,
}

impl CascadeAgent {
    /// Whether the caller is talking (the turn detector heard them start and the VAD heard
    /// voice in the last [`CALLER_QUIET_MS`]) or has keys waiting to be sent.
    fn caller_active(&self, now: Instant) -> bool {
        let talking = self.caller_speaking
            && self
                .caller_voiced_at
                .is_some_and(|v| now < v + ms(CALLER_QUIET_MS));
        talking || !self.idle.keys.is_empty()
    }

    /// Whether the agent has nothing to say or play and nothing under way.
    fn agent_quiet(&self) -> bool {
        self.utterances.is_empty()
            && self.turn.is_none()
            && self.tool_runs.is_empty()
            && self.idle.playing.is_empty()
    }

    /// After every event, with the event's actions `out`: notes what went to the playout, then
    /// starts or ends the silence.
    pub(super) fn idle_settle(&mut self, now: Instant, out: &[Action]) {
        for a in out {
            if let Action::Play { id, .. } = a {
                self.idle.playing.insert(*id);
            }
        }
        self.idle.recheck_at = None;
        if self.stopped || self.idle.hung_up {
            return;
        }
        if self.caller_active(now) {
            self.idle.since = None;
            self.idle.reprompted = false;
            if self.idle.keys.is_empty() {
                self.idle.recheck_at = self.caller_voiced_at.map(|v| v + ms(CALLER_QUIET_MS));
            }
        } else if self.agent_quiet() {
            self.idle.since.get_or_insert(now);
        } else if !self.idle.reprompted && self.idle.goodbye.is_none() {
            // The agent is talking on its own: the silence starts when it is done.
            self.idle.since = None;
        }
    }

    /// Utterance `id` played to the end: an idle goodbye hangs up.
    pub(super) fn idle_played(&mut self, id: UtteranceId, out: &mut Vec<Action>) {
        self.idle.playing.remove(&id);
        if self.idle.goodbye.is_some_and(|(g, _)| g == id) {
            self.hang_up_idle(out);
        }
    }

    /// The caller barged in: the playout is empty, and an idle goodbye they cut is called off
    /// (they are back).
    pub(super) fn idle_barge_in(&mut self) {
        self.idle.playing.clear();
        self.idle.goodbye = None;
        self.idle.since = None;
        self.idle.reprompted = false;
    }

    /// The caller pressed `digit`: kept to go to the model with the keys pressed soon after.
    pub(super) fn on_key(&mut self, now: Instant, digit: &str, out: &mut Vec<Action>) {
        let digit = digit.trim();
        if digit.is_empty() || self.idle.hung_up {
            return;
        }
        if self.idle.keys.chars().count() < MAX_KEYS {
            self.idle.keys.push_str(digit);
        }
        self.idle.since = None;
        self.idle.reprompted = false;
        if digit == "#" {
            self.send_keys(now, out);
        } else {
            self.idle.keys_at = Some(now + ms(DTMF_GAP_MS));
        }
    }

    /// The keys pressed go to the model as the caller's words: a turn of their own, or added
    /// to the turn whose answer has no audio yet.
    fn send_keys(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.idle.keys_at = None;
        let keys = std::mem::take(&mut self.idle.keys);
        if keys.is_empty() {
            return;
        }
        let text = format!("(The caller pressed {keys} on the keypad.)");
        let restart = self.may_restart();
        self.stop_other_utterances(now, restart, out);
        let filler = self.filler_times(now);
        self.take_text_turn(now, text, filler, restart, out);
    }

    /// Whatever of the silence and the keys is due.
    pub(super) fn idle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.idle.keys_at.is_some_and(|t| t <= now) {
            self.send_keys(now, out);
        }
        if self.idle.goodbye.is_some_and(|(_, t)| t <= now) {
            self.hang_up_idle(out);
        }
        if self.idle.hung_up || self.caller_active(now) {
            return;
        }
        let Some(since) = self.idle.since else {
            return;
        };
        let due = |d: Option<u64>| d.is_some_and(|d| since + ms(d) <= now);
        if self.idle.goodbye.is_none() && due(self.cfg.idle_hangup_ms) {
            self.idle_goodbye(now, out);
        } else if !self.idle.reprompted && due(self.cfg.idle_reprompt_ms) {
            self.reprompt(now, since, out);
        }
    }

    /// The caller has been silent for `idle_reprompt_ms`: the configured text, or a turn in
    /// which the model is told so.
    fn reprompt(&mut self, now: Instant, since: Instant, out: &mut Vec<Action>) {
        self.idle.reprompted = true;
        let text = self.cfg.idle_reprompt_text.clone();
        match text.filter(|t| !t.trim().is_empty()) {
            Some(t) => {
                self.say(now, Owner::Notice, &t, out);
            }
            None => {
                let secs = now.saturating_duration_since(since).as_secs().max(1);
                let note = format!("(The caller has been silent for {secs} seconds.)");
                self.take_text_turn(now, note, (None, None), false, out);
            }
        }
    }

    /// The caller has been silent for `idle_hangup_ms`: the goodbye, then the hang-up once it
    /// has played (at once without one).
    fn idle_goodbye(&mut self, now: Instant, out: &mut Vec<Action>) {
        let text = self
            .cfg
            .idle_goodbye_text
            .clone()
            .unwrap_or_else(|| self.cfg.goodbye_text.clone());
        if text.trim().is_empty() {
            self.hang_up_idle(out);
            return;
        }
        let utt = self.say(now, Owner::Notice, &text, out);
        self.idle.goodbye = Some((utt, now + ms(GOODBYE_MAX_MS)));
    }

    fn hang_up_idle(&mut self, out: &mut Vec<Action>) {
        if std::mem::replace(&mut self.idle.hung_up, true) {
            return;
        }
        self.idle.goodbye = None;
        self.idle.since = None;
        out.push(Action::Hangup {
            reason: IDLE_REASON.into(),
        });
    }

    /// The next time something of the silence or the keys is due.
    pub(super) fn idle_poll_timeout(&self) -> Option<Instant> {
        let i = &self.idle;
        let mut at = vec![i.keys_at, i.recheck_at, i.goodbye.map(|(_, t)| t)];
        if let Some(since) = i.since.filter(|_| !i.hung_up) {
            if i.goodbye.is_none() {
                at.push(self.cfg.idle_hangup_ms.map(|d| since + ms(d)));
            }
            if !i.reprompted {
                at.push(self.cfg.idle_reprompt_ms.map(|d| since + ms(d)));
            }
        }
        at.into_iter().flatten().min()
    }
}
