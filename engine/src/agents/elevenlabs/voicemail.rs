//! An answering machine for [`super::ElevenLabsAgent`], with the cascade's policy
//! ([`crate::agents::s2s::on_machine`]). The Conversational AI socket has no "say this text"
//! message, but a conversation's `first_message` is spoken word for word in the agent's voice.
//! So on `machine_end_*`: the playout is cleared ([`Action::Clear`]), the operator's tools out
//! are dropped, the conversation is closed, and a new one is opened on [`VOICEMAIL_PEER`]
//! whose initiation carries the message ([`super::ElevenLabsConfig::voicemail_text`], filled)
//! as `first_message` (the agent's security settings must allow that override, as for a
//! configured greeting). No caller audio goes to it (the machine is recording), so the agent
//! says the message and nothing else; once its utterance has ended and played, the call hangs
//! up (reason `voicemail`, through the `end_call_after` path). At most [`VOICEMAIL_MAX`] after
//! the verdict the call hangs up anyway. Without a message, or for a fax, it hangs up at once
//! (`machine`, `fax`). A verdict that comes while the first conversation is still being
//! looked up or connected just sets the message that conversation opens with.

use std::time::Instant;

use super::{ElevenLabsAgent, Phase, SIGNED_URL_PEER, VOICEMAIL_PEER};
use crate::agent::{Action, ProviderCommand};
use crate::agents::cascade::VOICEMAIL_REASON;
use crate::agents::s2s::{OnMachine, VOICEMAIL_MAX, on_machine};
use crate::call::AnsweredBy;

impl ElevenLabsAgent {
    /// Answering machine detection's verdict (see the module docs).
    pub(super) fn answered_by(&mut self, now: Instant, by: AnsweredBy, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended || self.machine.is_some() {
            return;
        }
        let params: &[(String, String)] = self.info.as_ref().map_or(&[], |i| &i.parameters[..]);
        let message = match on_machine(by, self.cfg.voicemail_text.as_deref(), params) {
            OnMachine::Nothing => return,
            OnMachine::HangUp(reason) => {
                self.machine = Some((None, now));
                out.push(Action::Clear);
                self.runs.close_all(out);
                if let Some(peer) = self.open_pipe() {
                    out.push(Action::Provider(ProviderCommand::Close { peer }));
                }
                self.phase = Phase::Ended;
                out.push(Action::Hangup {
                    reason: reason.to_string(),
                });
                return;
            }
            OnMachine::Leave(m) => m,
        };
        self.machine = Some((Some(message), now + VOICEMAIL_MAX));
        self.pending.clear();
        out.push(Action::Clear);
        self.runs.close_all(out);
        self.finish_utterance(out);
        // The next utterance is the message: the call ends once it has played.
        self.end_after = Some((self.next_id, VOICEMAIL_REASON.to_string()));
        out.push(Action::WakeAt(now + VOICEMAIL_MAX));
        if matches!(self.phase, Phase::Connecting | Phase::Open | Phase::Ready) {
            out.push(Action::Provider(ProviderCommand::Close { peer: self.peer }));
            self.peer = VOICEMAIL_PEER;
            self.input = None;
            self.output = None;
            self.interrupted_upto = None;
            if self.cfg.url.is_some() {
                self.connect(out);
            } else if let Some(lookup) = self.cfg.signed_url.clone() {
                self.look_up(now, &lookup, out);
            }
        }
        // Idle or Signing: the first conversation opens with the message.
        debug_assert_ne!(self.peer, SIGNED_URL_PEER);
    }

    /// The message's latest hang-up time has come.
    pub(super) fn voicemail_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self
            .machine
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
            && let Some((_, reason)) = self.end_after.take()
        {
            out.push(Action::Hangup { reason });
        }
    }
}
