//! Cutting the agent's audio — for the caller (a barge-in) or at the agent's own request
//! ([`Action::Clear`]) — and facts from outside the media stream ([`Input::AnsweredBy`]).

use std::time::Instant;

use super::{Call, Event, Pending};
use crate::agent::Action;
use crate::call::{AnsweredBy, BargeIn, TurnId};
use crate::playout::Interrupted;
use crate::twilio;

impl Call {
    /// Empties the playout and, with `send_clear`, queues Twilio's `clear` ahead of anything
    /// queued after it (a held playout's `clear` went out when it was held). `None` when no
    /// agent audio was unplayed.
    fn cut_playout(&mut self, send_clear: bool) -> Option<(Option<TurnId>, Interrupted)> {
        self.hold = None;
        let interrupted = self.playout.clear()?;
        let turn = self.book.answer_event();
        if send_clear {
            let mut s = self.buf();
            if let Some(info) = &self.info {
                twilio::encode_clear(&info.stream_sid, &mut s);
            }
            self.out.push_back(Pending::Tx(s));
        }
        Some((turn, interrupted))
    }

    pub(super) fn barge_in(
        &mut self,
        at: Instant,
        speech_start_ms: u64,
        decided_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        self.barge_in_cut(at, speech_start_ms, decided_ms, true, actions);
    }

    /// [`Call::barge_in`], with or without sending Twilio's `clear`.
    pub(super) fn barge_in_cut(
        &mut self,
        at: Instant,
        speech_start_ms: u64,
        decided_ms: u64,
        send_clear: bool,
        actions: &mut Vec<Action>,
    ) {
        let Some((turn, interrupted)) = self.cut_playout(send_clear) else {
            return;
        };
        self.stats.barge_ins += 1;
        // An answer that began before hark ended the turn was cut: the caller had not
        // finished. The provider's next answer to this turn is timed again.
        if self.open_turn_answered {
            self.open_turn_answered = false;
            self.answer_of = None;
        }
        self.agent.on_barge_in(at, &interrupted, actions);
        self.event(Event::BargeIn(BargeIn {
            at,
            speech_start_ms,
            decided_ms,
            turn,
            interrupted,
        }));
    }

    /// [`Action::Clear`]: the agent cuts its own audio. It hears what was heard through
    /// [`crate::Agent::on_barge_in`]; its answer runs at once, in order with the actions that
    /// asked for the clear.
    pub(super) fn clear_for_agent(&mut self, at: Instant) {
        if self.stopped {
            return;
        }
        // A caller turn waiting for the agent's word check loses its hold here, not its words:
        // it is handed over after the clear.
        let waiting = self.hold.as_mut().and_then(|h| h.check.take());
        let mut more = Vec::new();
        if let Some((_, interrupted)) = self.cut_playout(true) {
            self.answer_of = None;
            self.open_turn_answered = false;
            self.agent.on_barge_in(at, &interrupted, &mut more);
        }
        if let Some(c) = waiting {
            self.hand_word_checked(at, c, &mut more);
        }
        if !more.is_empty() {
            self.run_actions(at, &mut more);
        }
    }

    /// Answering machine detection's verdict: reported, then handed to the agent (not before
    /// `start`, after the stream stopped, or while the call holds for a transfer).
    pub(super) fn on_answered_by(&mut self, at: Instant, answered_by: AnsweredBy) {
        if self.info.is_none() || self.stopped || self.transferring.is_some() {
            return;
        }
        self.event(Event::AnsweredBy { answered_by, at });
        if matches!(answered_by, AnsweredBy::MachineEnd(_)) {
            self.machine = true;
        }
        let mut actions = std::mem::take(&mut self.actions);
        self.agent.on_answered_by(at, answered_by, &mut actions);
        self.run_actions(at, &mut actions);
        self.actions = actions;
    }
}
