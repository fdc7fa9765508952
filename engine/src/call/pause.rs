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
//! - `resume_after_ms` pass without either → resumed (noise held the turn open).
//!
//! Resumed: [`Event::PlaybackResumed`], and the agent's audio goes on from the last echoed
//! mark; the agent never learns of the hold.

use std::time::{Duration, Instant};

use super::{Call, Event, Pending};
use crate::agent::Action;
use crate::twilio;

/// A held barge-in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hold {
    /// When the audio was held.
    pub(super) at: Instant,
    /// Media time of the caller's first voiced frame.
    pub(super) speech_start_ms: u64,
    /// Media time of the decision.
    pub(super) decided_ms: u64,
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

    /// When a hold runs out, if one is in place.
    pub(super) fn hold_deadline(&self) -> Option<Instant> {
        let h = self.hold?;
        Some(h.at + Duration::from_millis(self.cfg.turn.resume_after_ms as u64))
    }

    /// After each frame and timeout: confirms a hold once the caller's voice is long enough,
    /// resumes one whose time ran out.
    pub(super) fn check_hold(&mut self, at: Instant, actions: &mut Vec<Action>) {
        if self.hold.is_none() {
            return;
        }
        let t = &self.cfg.turn;
        let need = t.backchannel_max_ms.max(t.min_utterance_ms) as u64;
        let long = self.turn.is_speaking() && self.turn.voiced_span_ms() >= need;
        if long {
            self.confirm_hold(at, actions);
        } else if self.hold_deadline().is_some_and(|d| d <= at) {
            self.resume_hold(at, false);
        }
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
