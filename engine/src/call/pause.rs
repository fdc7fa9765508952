//! False interruptions: a barge-in first only holds the agent's audio; it is confirmed when
//! the caller keeps talking, and undone (the agent plays on from what was heard) when the
//! speech was a backchannel, a blip, or nothing came of it within
//! [`crate::config::TurnConfig::resume_after_ms`].
//!
//! Timeline of a hold: the VAD's barge-in decision → Twilio `clear`, the playout held with the
//! unheard audio kept ([`crate::playout::Playout::pause`]), [`Event::PlaybackPaused`]. Then
//! one of:
//! - the caller's voice spans `backchannel_max_ms` (or, with that off, `min_utterance_ms`: it
//!   is speech, not a blip), or their turn ends longer than that →
//!   confirmed: the playout is cut, the agent told ([`crate::Agent::on_barge_in`]) and
//!   [`Event::BargeIn`] emitted with the hold's decision time (so its delay is the `clear`'s);
//! - the turn ends shorter than `backchannel_max_ms` (a backchannel, when that is set) or is
//!   dropped as a blip → resumed, and a backchannel is not a turn
//!   ([`Event::UserSpeechDiscarded`]);
//! - with an agent that knows a backchannel by its words ([`crate::Agent::checks_backchannels`])
//!   the turn ends shorter than `backchannel_check_ms` → the hold stays and the agent is asked
//!   ([`crate::Agent::on_backchannel_check`]); its [`Action::BackchannelVerdict`] resumes (a
//!   backchannel, not a turn) or confirms and hands the turn over. No verdict within
//!   `resume_after_ms` of the question, or the caller speaking again first: the turn stands.
//!   Voice spanning `backchannel_check_ms` confirms at once, and so does `resume_after_ms`
//!   passing while the caller still speaks, voice spanning `min_utterance_ms` (a real barge-in
//!   of a second or so would otherwise be resumed before its turn ends); passing in the
//!   silence before such a turn's end (an end-of-turn model's "unfinished"), the hold waits
//!   for that end and its check;
//! - `resume_after_ms` pass without either → resumed (noise held the turn open).
//!
//! Resumed: [`Event::PlaybackResumed`], and the agent's audio goes on from the last echoed
//! mark; the agent never learns of the hold (only, with a word check, of the check).

use std::time::{Duration, Instant};

use super::{Call, Event, Pending};
use crate::agent::{Action, UserTurn};
use crate::twilio;

/// A held barge-in.
#[derive(Debug, Clone)]
pub(super) struct Hold {
    /// When the audio was held.
    pub(super) at: Instant,
    /// Media time of the caller's first voiced frame.
    pub(super) speech_start_ms: u64,
    /// Media time of the decision.
    pub(super) decided_ms: u64,
    /// The short turn the agent is checking the words of, if it was asked.
    pub(super) check: Option<WordCheck>,
    /// The time ran out in the silence before the caller's turn ended: the hold waits for
    /// that end (and its word check) instead.
    pub(super) until_turn_end: bool,
}

/// Caller silence after the last voiced frame from which a speaker is taken to have stopped
/// (the hold's time running out then waits for the turn's end), ms of media.
const TRAILING_SILENCE_MS: u64 = 100;

/// A caller turn that ended over a hold, waiting for the agent's
/// [`Action::BackchannelVerdict`].
#[derive(Debug, Clone)]
pub(super) struct WordCheck {
    /// When the agent was asked.
    asked: Instant,
    /// When the caller's voice ended (the turn's end-of-turn latency counts from here).
    speech_end_at: Instant,
    /// The turn as handed to the agent, again, if it stands.
    turn: UserTurn,
}

impl Call {
    /// The VAD heard enough of the caller over the agent: holds the agent's audio (Twilio
    /// `clear`) and waits for the verdict (module docs). With `resume_after_ms` = 0, or when
    /// nothing is unplayed, it is an immediate barge-in as before.
    pub(super) fn hold_for_caller(
        &mut self,
        at: Instant,
        speech_start_ms: u64,
        decided_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        if self.cfg.turn.resume_after_ms == 0 {
            self.barge_in(at, speech_start_ms, decided_ms, actions);
            return;
        }
        if !self.playout.pause() {
            return;
        }
        let mut s = self.buf();
        if let Some(info) = &self.info {
            twilio::encode_clear(&info.stream_sid, &mut s);
        }
        self.out.push_back(Pending::Tx(s));
        self.hold = Some(Hold {
            at,
            speech_start_ms,
            decided_ms,
            check: None,
            until_turn_end: false,
        });
        self.event(Event::PlaybackPaused {
            speech_start_ms,
            decided_ms,
            at,
        });
    }

    /// The held barge-in is real: cut the playout (the `clear` already went out), tell the
    /// agent.
    pub(super) fn confirm_hold(&mut self, at: Instant, actions: &mut Vec<Action>) {
        let Some(h) = self.hold.take() else {
            return;
        };
        self.barge_in_cut(at, h.speech_start_ms, h.decided_ms, false, actions);
    }

    /// The held barge-in was none: play on.
    pub(super) fn resume_hold(&mut self, at: Instant, backchannel: bool) {
        let Some(h) = self.hold.take() else {
            return;
        };
        self.playout.resume();
        self.stats.resumed += 1;
        self.event(Event::PlaybackResumed {
            at,
            held: at.saturating_duration_since(h.at),
            backchannel,
        });
    }

    /// When a hold runs out (or, with a word check waiting, the agent's time to answer), if
    /// one is in place.
    pub(super) fn hold_deadline(&self) -> Option<Instant> {
        let h = self.hold.as_ref()?;
        if h.until_turn_end && h.check.is_none() {
            return None;
        }
        let from = h.check.as_ref().map_or(h.at, |c| c.asked);
        Some(from + Duration::from_millis(self.cfg.turn.resume_after_ms as u64))
    }

    /// After each frame and timeout: confirms a hold once the caller's voice is long enough,
    /// resumes one whose time ran out (a word check whose time ran out: the turn stands).
    pub(super) fn check_hold(&mut self, at: Instant, actions: &mut Vec<Action>) {
        let Some(h) = &self.hold else {
            return;
        };
        let t = &self.cfg.turn;
        let bound = if self.words_check {
            t.backchannel_check_ms
        } else {
            t.backchannel_max_ms
        };
        let need = bound.max(t.min_utterance_ms) as u64;
        let (long, speech, trailing) = match self.turn.speech_start_ms() {
            Some(start) => {
                let span = self.turn.voiced_span_ms();
                let silent = self.media_ms.saturating_sub(start + span);
                (
                    span >= need,
                    span >= t.min_utterance_ms as u64,
                    silent > TRAILING_SILENCE_MS,
                )
            }
            None => (false, false, false),
        };
        let due = self.hold_deadline().is_some_and(|d| d <= at);
        if h.check.is_some() {
            if due {
                self.settle_word_check(at, false, actions);
            }
        } else if long {
            self.confirm_hold(at, actions);
        } else if due && speech && self.words_check {
            // Speech (voice spanning `min_utterance_ms`) when the time runs out. Still
            // talking: a real barge-in of a second or so, confirmed. In the silence before
            // its turn ends (an end-of-turn model's "unfinished" waits a second): that end
            // decides, by the words.
            if trailing {
                if let Some(h) = self.hold.as_mut() {
                    h.until_turn_end = true;
                }
            } else {
                self.confirm_hold(at, actions);
            }
        } else if due {
            self.resume_hold(at, false);
        }
    }

    /// Whether a turn that just ended over a hold goes to the agent's word check: the agent
    /// can tell, none is waiting, the turn was not forced and is shorter than
    /// `backchannel_check_ms`.
    pub(super) fn asks_for_words(&self, start_ms: u64, end_ms: u64, forced: bool) -> bool {
        self.words_check
            && !forced
            && self.hold.as_ref().is_some_and(|h| h.check.is_none())
            && end_ms.saturating_sub(start_ms) < self.cfg.turn.backchannel_check_ms as u64
    }

    /// Keeps the hold and asks the agent whether the turn that just ended was a backchannel.
    pub(super) fn ask_for_words(
        &mut self,
        at: Instant,
        start_ms: u64,
        end_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let (turn, speech_end_at) = self.closed_turn(at, start_ms, end_ms);
        self.agent.on_backchannel_check(at, &turn, actions);
        if let Some(h) = self.hold.as_mut() {
            h.check = Some(WordCheck {
                asked: at,
                speech_end_at,
                turn,
            });
        }
    }

    /// The word check's outcome (the agent's verdict, its time running out, or the caller
    /// speaking again): a backchannel resumes the agent and is no turn; otherwise the barge-in
    /// is confirmed and the turn handed over. Nothing when no check is waiting.
    pub(super) fn settle_word_check(
        &mut self,
        at: Instant,
        backchannel: bool,
        actions: &mut Vec<Action>,
    ) {
        let Some(c) = self.hold.as_mut().and_then(|h| h.check.take()) else {
            return;
        };
        let (start_ms, end_ms) = (c.turn.start_ms, c.turn.end_ms);
        if backchannel {
            self.resume_hold(at, true);
            self.discard(start_ms, end_ms);
        } else {
            self.confirm_hold(at, actions);
            self.hand_word_checked(at, c, actions);
        }
    }

    /// Hands the turn of a word check over as a turn.
    pub(super) fn hand_word_checked(
        &mut self,
        at: Instant,
        c: WordCheck,
        actions: &mut Vec<Action>,
    ) {
        self.hand_turn(at, c.turn, c.speech_end_at, false, actions);
    }

    /// Whether a turn that just ended over a hold was a backchannel (shorter than
    /// `backchannel_max_ms` when that is set, not forced).
    pub(super) fn is_backchannel(&self, start_ms: u64, end_ms: u64, forced: bool) -> bool {
        self.hold.is_some()
            && !forced
            && self.cfg.turn.backchannel_max_ms > 0
            && end_ms.saturating_sub(start_ms) < self.cfg.turn.backchannel_max_ms as u64
    }
}
