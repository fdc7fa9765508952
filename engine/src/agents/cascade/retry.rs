//! Retries: the one [`Attempt`] type every retried request uses (a transcription, a chat round,
//! a TTS sentence, a pre-rendered phrase), and the agent's one fault path
//! ([`CascadeAgent::fault`]): report, then retry or give up. Faults are [`ProviderFault`]s: a
//! failed pipe's own, or one the agent finds itself (a deadline, a bad body, a short stream);
//! [`ProviderFault::label`] names them for metrics and [`ProviderFault::retryable`] says
//! whether a retry may help.

use std::time::Instant;

use super::fallback::Phrase;
use super::pipes::Pipe;
use super::{CascadeAgent, Owner, RetryPolicy, ms, report};
use crate::agent::{Action, AgentReport, FaultKind, PeerId, ProviderFault};
use crate::playout::UtteranceId;

/// One request that may be tried again: the pipe carrying it now and its retry state.
#[derive(Debug, Clone)]
pub(super) struct Attempt {
    /// The pipe carrying the request now; `None` between tries.
    pub peer: Option<PeerId>,
    /// Retries made so far.
    pub retries: u32,
    /// When the next try is due; `None` when no retry is waiting.
    pub retry_at: Option<Instant>,
    /// Retries start only until then.
    pub budget_until: Instant,
}

impl Attempt {
    /// A first try, whose retries may start until `budget_until`.
    pub fn new(budget_until: Instant) -> Self {
        Attempt {
            peer: None,
            retries: 0,
            retry_at: None,
            budget_until,
        }
    }

    /// The request went out on `peer`.
    pub fn sent(&mut self, peer: PeerId) {
        self.peer = Some(peer);
        self.retry_at = None;
    }

    /// Nothing more is wanted: no retry waits; returns the pipe to close.
    pub fn stop(&mut self) -> Option<PeerId> {
        self.retry_at = None;
        self.peer.take()
    }

    /// A retry is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|t| t <= now)
    }

    /// When a retry is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The delay before a retry after `fault`, ms, if one is allowed: the fault is retryable,
    /// retries are left and the retry would start within the budget. Timeouts and stalls retry
    /// at once (their time is already spent), a `Retry-After` is waited for, else the backoff
    /// doubles per retry.
    pub fn retry_delay(
        &self,
        now: Instant,
        policy: &RetryPolicy,
        fault: &ProviderFault,
    ) -> Option<u64> {
        if !fault.retryable() || self.retries >= policy.max_retries {
            return None;
        }
        let d = match (fault.kind, fault.retry_after_ms) {
            (FaultKind::Timeout | FaultKind::Stall, _) => 0,
            (_, Some(ra)) => ra,
            _ => policy.backoff_ms.saturating_mul(1 << self.retries.min(10)),
        };
        (now + ms(d) <= self.budget_until).then_some(d)
    }

    /// The request failed: when a retry is allowed, forgets the pipe and schedules the retry;
    /// returns its delay, ms (0: retry now).
    pub fn fault(
        &mut self,
        now: Instant,
        policy: &RetryPolicy,
        fault: &ProviderFault,
    ) -> Option<u64> {
        let d = self.retry_delay(now, policy, fault)?;
        self.peer = None;
        self.retries += 1;
        self.retry_at = Some(now + ms(d));
        Some(d)
    }
}

impl CascadeAgent {
    /// The one fault path: reports `f` on the request `role` carries, then retries it (within
    /// [`RetryPolicy`]) or gives it up — the turn ends with the fallback phrase, a phrase that
    /// cannot be rendered becomes the chime. A TTS sentence that has started playing asks only
    /// for the rest of its words ([`CascadeAgent::resume_sentence`]); an LLM round whose
    /// sentences already went to TTS is never asked again (it would repeat them).
    pub(super) fn fault(
        &mut self,
        now: Instant,
        role: Pipe,
        f: ProviderFault,
        out: &mut Vec<Action>,
    ) {
        let detail = match role {
            Pipe::Phrase(k) => format!("rendering the {} phrase: {f}", k.name()),
            _ => f.to_string(),
        };
        report(
            out,
            AgentReport::ProviderFault {
                provider: role.provider().into(),
                kind: f.label().into_owned(),
                detail,
            },
        );
        if let Pipe::Tts { utt, sid } = role
            && self
                .sentence(utt, sid)
                .is_some_and(|s| s.spoken_ix.is_some())
        {
            // It has started playing: hand out what arrived (so the cut falls after it), then
            // ask for the rest of the sentence only — never the words already played.
            self.pump_utterance(now, utt, out);
            self.resume_sentence(now, utt, sid, &f, out);
            return;
        }
        let emitted = matches!(role, Pipe::Llm { .. })
            && self
                .turn
                .as_ref()
                .and_then(|t| t.chat.as_ref())
                .is_some_and(|c| c.emitted);
        let policy = self.cfg.retry;
        let Some(attempt) = self.attempt_mut(role) else {
            return;
        };
        let delay = if emitted {
            None
        } else {
            attempt.fault(now, &policy, &f)
        };
        match delay {
            Some(d) => self.retry(now, role, d, out),
            None => self.give_up(now, role, out),
        }
    }

    /// The attempt of the request `role` carries, if it is still wanted.
    fn attempt_mut(&mut self, role: Pipe) -> Option<&mut Attempt> {
        match role {
            Pipe::Stt { seg, .. } => self.transcription_mut(seg).map(|s| &mut s.attempt),
            Pipe::Llm { .. } => self.turn.as_mut().map(|t| &mut t.llm),
            Pipe::Tts { utt, sid } => self.sentence_mut(utt, sid).map(|s| &mut s.attempt),
            Pipe::Phrase(k) => match self.phrase_mut(k) {
                Phrase::Rendering { attempt, .. } => Some(attempt),
                _ => None,
            },
            // The context is not retried: its deadline is the greeting's. A word check that
            // fails is a turn (`words.rs`), transcribed again as one.
            Pipe::Context | Pipe::Words => None,
        }
    }

    /// A retry was scheduled `d` ms from now: what was received of the failed try is dropped,
    /// and a retry due now starts.
    fn retry(&mut self, now: Instant, role: Pipe, d: u64, out: &mut Vec<Action>) {
        match role {
            Pipe::Stt { seg, .. } => {
                if d == 0 {
                    self.start_stt(now, seg, out);
                }
            }
            Pipe::Llm { .. } => {
                if let Some(t) = self.turn.as_mut() {
                    t.chat = None;
                }
                if d == 0 {
                    self.start_llm(now, out);
                }
            }
            Pipe::Tts { utt, sid } => {
                if let Some(s) = self.sentence_mut(utt, sid) {
                    // Nothing of it was heard: start over.
                    s.clear_audio();
                }
                self.pump_utterance(now, utt, out);
            }
            Pipe::Phrase(k) => {
                if d == 0 {
                    self.render_phrase(now, k, out);
                }
            }
            Pipe::Context | Pipe::Words => {}
        }
    }

    /// No retry is allowed: the turn ends with the fallback phrase (an utterance outside the
    /// current turn ends with it too), a phrase becomes the chime.
    fn give_up(&mut self, now: Instant, role: Pipe, out: &mut Vec<Action>) {
        match role {
            Pipe::Stt { .. } | Pipe::Llm { .. } => self.give_up_turn(now, out),
            Pipe::Tts { utt, sid } => self.give_up_utterance(now, utt, sid, out),
            Pipe::Phrase(k) => {
                *self.phrase_mut(k) = Phrase::Chime;
                self.phrase_settled(now, k, out);
            }
            Pipe::Context | Pipe::Words => {}
        }
    }

    /// Sentence `sid` of `utt` cannot be synthesised: the current turn's answer ends with the
    /// fallback phrase; any other utterance too, after what already played.
    pub(super) fn give_up_utterance(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        let owner = self.utterances[i].owner;
        match owner {
            Owner::Reply(tid) if self.turn.as_ref().is_some_and(|t| t.id == tid) => {
                self.give_up_turn(now, out)
            }
            _ => {
                let round = self.sentence(utt, sid).map_or(0, |s| s.round);
                self.end_with_fallback(now, utt, round, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 2,
            budget_ms: 3_000,
            backoff_ms: 150,
        }
    }

    #[test]
    fn backoff_doubles_within_the_budget_and_retries() {
        let t0 = Instant::now();
        let mut a = Attempt::new(t0 + Duration::from_millis(3_000));
        a.sent(PeerId(7));
        let f = ProviderFault::status(503, "", None);
        assert_eq!(a.fault(t0, &policy(), &f), Some(150));
        assert_eq!((a.peer, a.retries), (None, 1));
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_millis(150)));
        assert!(!a.is_due(t0) && a.is_due(t0 + Duration::from_millis(150)));
        a.sent(PeerId(8));
        assert_eq!(a.retry_at, None);
        assert_eq!(a.fault(t0, &policy(), &f), Some(300));
        // Out of retries.
        assert_eq!(a.fault(t0, &policy(), &f), None);
    }

    #[test]
    fn timeouts_retry_at_once_retry_after_is_honoured_within_the_budget() {
        let t0 = Instant::now();
        let a = Attempt::new(t0 + Duration::from_millis(1_000));
        let timeout = ProviderFault::new(FaultKind::Timeout, "no audio in time");
        assert_eq!(a.retry_delay(t0, &policy(), &timeout), Some(0));
        let stall = ProviderFault::new(FaultKind::Stall, "no more audio for 1000 ms");
        assert_eq!(a.retry_delay(t0, &policy(), &stall), Some(0));
        let soon = ProviderFault::status(429, "", Some(800));
        assert_eq!(a.retry_delay(t0, &policy(), &soon), Some(800));
        let late = ProviderFault::status(429, "", Some(1_200));
        assert_eq!(a.retry_delay(t0, &policy(), &late), None);
        let auth = ProviderFault::status(401, "", None);
        assert_eq!(a.retry_delay(t0, &policy(), &auth), None);
    }
}
