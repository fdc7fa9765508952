//! An answering machine: Twilio's answering machine detection said the machine's greeting is
//! over ([`AnsweredBy::MachineEnd`]), so the agent leaves its message
//! ([`super::CascadeConfig::voicemail_text`]) and hangs up.
//!
//! On the verdict, everything under way stops: the utterances being said or prepared are
//! cancelled (what was heard of them is still reported, through the call's clear), the turn
//! being answered and the operator's tools out are dropped, and the playout is cleared
//! ([`Action::Clear`]). Then the message is said as an utterance of its own, and once it has
//! played, [`Action::Hangup`] with reason [`VOICEMAIL_REASON`]. Meanwhile the agent is deaf:
//! caller turns, keys and the idle re-prompt are ignored (the machine is recording). Without a
//! message, or for a fax, it hangs up at once ([`MACHINE_REASON`], [`FAX_REASON`]). `human`,
//! `machine_start` and `unknown` change nothing: the conversation goes on (with
//! `MachineDetection=Enable`, `machine_start` is the only machine verdict and the agent talks
//! on; ask for `DetectMessageEnd` to leave messages).

use std::time::Instant;

use super::utterance::Owner;
use super::{CascadeAgent, ms};
use crate::agent::Action;
use crate::agents::context;
use crate::call::AnsweredBy;
use crate::playout::{Interrupted, UtteranceId};

/// Hang-up reason after the voicemail message played.
pub const VOICEMAIL_REASON: &str = "voicemail";
/// Hang-up reason on a machine with no voicemail message configured.
pub const MACHINE_REASON: &str = "machine";
/// Hang-up reason on a fax.
pub const FAX_REASON: &str = "fax";
/// The hang-up comes at most this long after the message started, ms, even when the playout
/// never says it played (it could not be synthesised).
const VOICEMAIL_MAX_MS: u64 = 60_000;

/// The message being left on a machine.
#[derive(Debug)]
pub(super) struct Voicemail {
    /// The message's utterance (`None`: no message).
    utt: Option<UtteranceId>,
    /// The hang-up comes by then at the latest.
    until: Option<Instant>,
    /// The hang-up was asked for.
    hung_up: bool,
}

impl CascadeAgent {
    /// Answering machine detection's verdict (see the module docs).
    pub(super) fn on_answered(&mut self, now: Instant, by: AnsweredBy, out: &mut Vec<Action>) {
        if self.stopped || self.voicemail.is_some() {
            return;
        }
        match by {
            AnsweredBy::Human | AnsweredBy::MachineStart | AnsweredBy::Unknown => {}
            AnsweredBy::Fax => {
                self.stop_everything(out);
                self.voicemail = Some(Voicemail {
                    utt: None,
                    until: None,
                    hung_up: true,
                });
                out.push(Action::Hangup {
                    reason: FAX_REASON.into(),
                });
            }
            AnsweredBy::MachineEnd(_) => self.leave_voicemail(now, out),
        }
    }

    /// Whether the agent is leaving a message (or hanging up on a machine): it no longer
    /// listens.
    pub(super) fn on_machine(&self) -> bool {
        self.voicemail.is_some()
    }

    /// Stops what is said or prepared, then says the message (templated) or hangs up.
    fn leave_voicemail(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.stop_everything(out);
        let text = self
            .cfg
            .voicemail_text
            .as_deref()
            .map(|t| context::fill(t, &self.variables, &self.facts.parameters))
            .filter(|t| !t.trim().is_empty());
        let Some(text) = text else {
            self.voicemail = Some(Voicemail {
                utt: None,
                until: None,
                hung_up: true,
            });
            out.push(Action::Hangup {
                reason: MACHINE_REASON.into(),
            });
            return;
        };
        let utt = self.say(now, Owner::Notice, &text, out);
        self.voicemail = Some(Voicemail {
            utt: Some(utt),
            until: Some(now + ms(VOICEMAIL_MAX_MS)),
            hung_up: false,
        });
    }

    /// Cancels every utterance, the turn being answered and the tools out, then clears the
    /// playout.
    fn stop_everything(&mut self, out: &mut Vec<Action>) {
        let utts: Vec<UtteranceId> = self.utterances.iter().map(|u| u.utt).collect();
        for u in utts {
            self.cancel_utterance(u, out);
        }
        if let Some(turn) = self.turn.take() {
            self.close_turn_pipes(&turn, out);
        }
        self.tool_runs.close_all(out);
        self.tool_fillers.clear();
        self.end_after = None;
        out.push(Action::Clear);
    }

    /// Utterance `id` played to the end: after the message, the hang-up.
    pub(super) fn voicemail_played(&mut self, id: UtteranceId, out: &mut Vec<Action>) {
        if self.voicemail.as_ref().is_some_and(|v| v.utt == Some(id)) {
            self.voicemail_hang_up(out);
        }
    }

    /// A clear cut the message (noise on the machine's line taken for a barge-in): the
    /// hang-up still comes, at once.
    pub(super) fn voicemail_cut(&mut self, heard: &Interrupted, out: &mut Vec<Action>) {
        let Some(utt) = self.voicemail.as_ref().and_then(|v| v.utt) else {
            return;
        };
        if heard.id == utt || heard.dropped.contains(&utt) {
            self.voicemail_hang_up(out);
        }
    }

    /// The message's latest hang-up time has come.
    pub(super) fn voicemail_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self
            .voicemail
            .as_ref()
            .and_then(|v| v.until)
            .is_some_and(|t| t <= now)
        {
            self.voicemail_hang_up(out);
        }
    }

    /// When the message's hang-up is due at the latest.
    pub(super) fn voicemail_poll_timeout(&self) -> Option<Instant> {
        self.voicemail
            .as_ref()
            .filter(|v| !v.hung_up)
            .and_then(|v| v.until)
    }

    fn voicemail_hang_up(&mut self, out: &mut Vec<Action>) {
        let Some(v) = self.voicemail.as_mut() else {
            return;
        };
        if std::mem::replace(&mut v.hung_up, true) {
            return;
        }
        v.until = None;
        out.push(Action::Hangup {
            reason: VOICEMAIL_REASON.into(),
        });
    }
}
