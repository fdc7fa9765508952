//! An answering machine for [`super::RealtimeAgent`], with the cascade's policy
//! ([`crate::agents::s2s::on_machine`]): on `machine_end_*` the answer under way is cancelled,
//! the operator's tools out are dropped and the playout cleared ([`Action::Clear`]); then the
//! model is asked (`response.create` with `instructions`) to say
//! [`super::RealtimeConfig::voicemail_text`] word for word in its own voice, and the call hangs
//! up once that response is done and its audio has played (reason `voicemail`, through the
//! `end_call_after` path: `response.done` of the answer → [`Action::Hangup`], which waits for
//! the queued audio). Meanwhile the agent is deaf: no caller audio goes to the model (so its
//! server VAD neither answers nor interrupts the machine's line) and hark's turns are ignored.
//! At most [`VOICEMAIL_MAX`] after the verdict the call hangs up anyway. Without a message, or
//! for a fax, it hangs up at once (`machine`, `fax`).
//!
//! The words are the model's: it is asked to read the message verbatim, which Realtime models
//! do, but nothing forces them to (there is no "say this text" event in the Realtime API).

use std::time::Instant;

use super::wire::ClientEvent;
use super::{Phase, RealtimeAgent};
use crate::agent::Action;
use crate::agents::cascade::{MACHINE_REASON, VOICEMAIL_REASON};
use crate::agents::s2s::{OnMachine, VOICEMAIL_MAX, on_machine};
use crate::call::AnsweredBy;

/// The `instructions` of the response that leaves `message`.
pub(super) fn voicemail_instructions(message: &str) -> String {
    format!(
        "The call reached an answering machine and its beep has sounded. Leave this voicemail \
         message, word for word, in the conversation's language as written, and say nothing \
         else: \"{message}\""
    )
}

impl RealtimeAgent {
    /// Answering machine detection's verdict (see the module docs).
    pub(super) fn answered_by(&mut self, now: Instant, by: AnsweredBy, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended || self.machine_until.is_some() {
            return;
        }
        let decision = on_machine(
            by,
            self.cfg.voicemail_text.as_deref(),
            &self.facts.parameters,
        );
        let (reason, message) = match decision {
            OnMachine::Nothing => return,
            OnMachine::HangUp(reason) => (reason, None),
            OnMachine::Leave(m) => (MACHINE_REASON, Some(m)),
        };
        self.machine_until = Some(now + VOICEMAIL_MAX);
        self.cancel_active(out);
        self.runs.close_all(out);
        self.create_due = false;
        self.end_after = None;
        out.push(Action::Clear);
        match message {
            Some(m) if self.phase == Phase::Open => {
                self.end_after = Some((VOICEMAIL_REASON.to_string(), None));
                let instructions = Some(voicemail_instructions(&m));
                self.send_event(out, ClientEvent::ResponseCreate { instructions });
                out.push(Action::WakeAt(now + VOICEMAIL_MAX));
            }
            // Not connected (yet): nobody can say it.
            _ => out.push(Action::Hangup {
                reason: reason.to_string(),
            }),
        }
    }

    /// Whether a machine answered: the agent no longer listens.
    pub(super) fn on_machine(&self) -> bool {
        self.machine_until.is_some()
    }

    /// The message's latest hang-up time has come.
    pub(super) fn voicemail_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.machine_until.is_some_and(|t| t <= now) && self.end_after.is_some() {
            self.end_after = None;
            out.push(Action::Hangup {
                reason: VOICEMAIL_REASON.to_string(),
            });
        }
    }
}
