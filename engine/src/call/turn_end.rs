//! The end of a caller turn: handed to the agent with its audio, or dropped (too short to be
//! a turn, or a backchannel over the agent).

use std::time::Instant;

use super::{Call, Event};
use crate::agent::{Action, UserTurn};

impl Call {
    /// Speech dropped: too short to be a turn, or a backchannel over the agent.
    pub(super) fn discard(&mut self, start_ms: u64, end_ms: u64) {
        self.stats.discarded += 1;
        self.open_turn_answered = false;
        self.utterance.clear();
        let (turn, kept) = self.book.discard();
        self.event(Event::UserSpeechDiscarded {
            turn,
            kept,
            start_ms,
            end_ms,
        });
    }

    /// Endpointing ended the caller's turn (media time `start_ms`–`end_ms`): its audio goes to
    /// the agent.
    pub(super) fn end_turn(
        &mut self,
        at: Instant,
        start_ms: u64,
        end_ms: u64,
        forced: bool,
        actions: &mut Vec<Action>,
    ) {
        let (turn, speech_end_at) = self.closed_turn(at, start_ms, end_ms);
        self.hand_turn(at, turn, speech_end_at, forced, actions);
    }

    /// The turn that just ended (media time `start_ms`–`end_ms`, its audio taken out of the
    /// call), and when the caller's voice ended (`at` if it never was voiced).
    pub(super) fn closed_turn(
        &mut self,
        at: Instant,
        start_ms: u64,
        end_ms: u64,
    ) -> (UserTurn, Instant) {
        let speech_end_at = self.last_voiced_at.unwrap_or(at);
        let turn = UserTurn {
            start_ms,
            end_ms,
            audio: self.take_utterance(end_ms),
            rate: self.cfg.agent_rate,
        };
        (turn, speech_end_at)
    }

    /// The open utterance's audio up to media time `end_ms` (empty when the agent does not
    /// ask for it), taken out of the call.
    fn take_utterance(&mut self, end_ms: u64) -> Vec<i16> {
        if !self.needs.utterance_audio {
            return Vec::new();
        }
        let keep_ms = end_ms.saturating_sub(self.utterance_start_ms);
        let keep = self
            .cfg
            .agent_rate
            .samples_in_ms(keep_ms)
            .min(self.utterance.len());
        self.utterance.truncate(keep);
        std::mem::take(&mut self.utterance)
    }

    /// Records the end of `turn` (the caller's voice ended at `speech_end_at`) and hands it to
    /// the agent.
    pub(super) fn hand_turn(
        &mut self,
        at: Instant,
        turn: UserTurn,
        speech_end_at: Instant,
        forced: bool,
        actions: &mut Vec<Action>,
    ) {
        self.stats.turns += 1;
        // Unless its answer has already begun (a provider endpointed first).
        if !std::mem::take(&mut self.open_turn_answered) {
            self.user_end_at = Some(speech_end_at);
        }
        let id = self.book.end();
        self.event(Event::UserTurnEnded {
            turn: id,
            start_ms: turn.start_ms,
            end_ms: turn.end_ms,
            speech_end_at,
            at,
            forced,
        });
        self.agent.on_user_turn(at, turn, actions);
    }
}
