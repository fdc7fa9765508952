//! The word check: a short caller turn over the agent ([`crate::Agent::on_backchannel_check`])
//! is transcribed, and its transcript decides whether it was a backchannel
//! ([`crate::agents::backchannel::is_backchannel`] over
//! [`super::CascadeConfig::backchannel_words`]).
//!
//! - A backchannel (or no words): [`Action::BackchannelVerdict`] `true`; the call resumes the
//!   agent's audio and the words never enter the history.
//! - Anything else: verdict `false`; the call confirms the barge-in and hands the same turn
//!   over ([`crate::Agent::on_user_turn`]), which takes the words kept here instead of
//!   transcribing the audio again.
//! - The STT failing, timing out (the STT stage's deadlines) or answering with something that
//!   is not a transcript: verdict `false` — better to stop for a caller who may have said "No"
//!   than to talk over them; the turn is then transcribed with the usual retries.
//!
//! One check at a time: the call asks again only after a verdict.

use std::time::Instant;

use super::pipes::Pipe;
use super::turn::report_transcript;
use super::wire::{self, SttEvent};
use super::{CascadeAgent, audio, report, since_ms};
use crate::agent::{Action, AgentReport, FaultKind, PeerId, ProviderFault, UserTurn};
use crate::agents::backchannel::is_backchannel;
use crate::agents::cascade::PROVIDER_STT;

/// A short caller turn's transcription in flight, or its words kept for the turn.
#[derive(Debug)]
pub(super) struct WordCheck {
    /// The STT request, until it answered.
    peer: Option<PeerId>,
    /// When the call asked.
    asked: Instant,
    /// The turn's media times, to match it when it is handed over.
    span: (u64, u64),
    /// The transcript of a turn that was not a backchannel, for [`CascadeAgent::checked_words`].
    text: Option<String>,
}

impl CascadeAgent {
    /// Starts transcribing `turn` for its words. A turn that cannot be encoded is a turn.
    pub(super) fn check_words(&mut self, now: Instant, turn: &UserTurn, out: &mut Vec<Action>) {
        // The caller's turn is over, whatever it turns out to be.
        self.caller_speaking = false;
        if let Some(old) = self.words.take() {
            self.pipes.close(old.peer, out);
        }
        let wav = match audio::wav_16k(&turn.audio, turn.rate) {
            Ok(w) if !turn.audio.is_empty() => w,
            _ => {
                out.push(Action::BackchannelVerdict { backchannel: false });
                return;
            }
        };
        let req = wire::transcription_request(&self.cfg, wav);
        let peer = self.open(now, Pipe::Words, req, out);
        self.words = Some(WordCheck {
            peer: Some(peer),
            asked: now,
            span: (turn.start_ms, turn.end_ms),
            text: None,
        });
    }

    /// A message on the check's STT pipe.
    pub(super) fn on_words_message(
        &mut self,
        now: Instant,
        peer: PeerId,
        data: &str,
        out: &mut Vec<Action>,
    ) {
        if self.words.as_ref().is_none_or(|w| w.peer != Some(peer)) {
            return;
        }
        match wire::parse_stt(data) {
            SttEvent::Done(text) => {
                self.pipes.ended(peer);
                self.words_heard(now, text.trim().to_string(), out);
            }
            SttEvent::Error(e) => {
                self.pipes.close(Some(peer), out);
                let f = ProviderFault::new(FaultKind::StreamError, e);
                self.words_failed(peer, &f, out);
            }
            SttEvent::NotJson(e) => {
                self.pipes.close(Some(peer), out);
                let f = ProviderFault::new(FaultKind::ContentType, e);
                self.words_failed(peer, &f, out);
            }
            // Deltas only move the stall deadline (`on_message`); the verdict needs the whole
            // transcript.
            SttEvent::Delta(_) | SttEvent::Ignore => {}
        }
    }

    /// The check's transcript: the verdict, and a turn's words kept for it.
    fn words_heard(&mut self, now: Instant, text: String, out: &mut Vec<Action>) {
        let Some(w) = self.words.as_mut() else {
            return;
        };
        w.peer = None;
        let backchannel = is_backchannel(&text, &self.cfg.backchannel_words);
        let asked = w.asked;
        if backchannel {
            self.words = None;
        } else {
            w.text = Some(text.clone());
            report_transcript(out, since_ms(now, asked), text);
        }
        out.push(Action::BackchannelVerdict { backchannel });
    }

    /// The check's STT pipe `peer` failed with `f`, timed out or closed without a transcript
    /// (the pipe is already closed or ended): the turn stands.
    pub(super) fn words_failed(&mut self, peer: PeerId, f: &ProviderFault, out: &mut Vec<Action>) {
        if self.words.as_ref().is_none_or(|w| w.peer != Some(peer)) {
            return;
        }
        self.words = None;
        report(
            out,
            AgentReport::ProviderFault {
                provider: PROVIDER_STT.into(),
                kind: f.label().into_owned(),
                detail: format!("backchannel check, the turn stands: {}", f.detail),
            },
        );
        out.push(Action::BackchannelVerdict { backchannel: false });
    }

    /// The words of `turn` if the check transcribed them. A check still in flight is dropped
    /// (the call did not wait for it: the caller spoke again, or its time ran out), and the
    /// turn goes through the usual transcription with its retries.
    pub(super) fn checked_words(
        &mut self,
        turn: &UserTurn,
        out: &mut Vec<Action>,
    ) -> Option<String> {
        let w = self.words.take()?;
        if w.peer.is_some() {
            self.pipes.close(w.peer, out);
            return None;
        }
        w.text.filter(|_| w.span == (turn.start_ms, turn.end_ms))
    }
}
