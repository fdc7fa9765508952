//! The phrases rendered once per call so they play even when TTS is down later — the fallback
//! that ends an answer that cannot be given, and the filler that breaks a long silence — and
//! the chime that stands in for either when it could not be rendered.

use std::time::Instant;

use hark_codecs::SampleRate;

use super::audio::{self, Pcm16Stream};
use super::pipes::Pipe;
use super::retry::Attempt;
use super::{CALLER_QUIET_MS, CascadeAgent, Owner, ms, wire};
use crate::agent::{Action, FaultKind, ProviderFault};
use crate::playout::UtteranceId;

/// A phrase rendered once per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PhraseKind {
    /// [`super::CascadeConfig::fallback_text`].
    Fallback,
    /// [`super::CascadeConfig::filler_text`].
    Filler,
}

impl PhraseKind {
    /// Both kinds, the fallback first.
    pub const ALL: [PhraseKind; 2] = [PhraseKind::Fallback, PhraseKind::Filler];

    /// For fault details.
    pub fn name(self) -> &'static str {
        match self {
            PhraseKind::Fallback => "fallback",
            PhraseKind::Filler => "filler",
        }
    }
}

/// Where a phrase's audio stands.
#[derive(Debug)]
pub(super) enum Phrase {
    /// Not asked for (yet), or not wanted.
    Pending,
    /// Being synthesised (or waiting for a retry).
    Rendering {
        attempt: Attempt,
        pcm: Pcm16Stream,
        /// Audio received so far, 24 kHz.
        samples: Vec<i16>,
    },
    /// Its audio, 24 kHz.
    Ready(Vec<i16>),
    /// Could not be rendered: the chime stands in.
    Chime,
}

impl Phrase {
    /// When a retry of its rendering is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Phrase::Rendering { attempt, .. } => attempt.poll_timeout(),
            _ => None,
        }
    }
}

impl CascadeAgent {
    pub(super) fn phrase(&self, k: PhraseKind) -> &Phrase {
        match k {
            PhraseKind::Fallback => &self.fallback,
            PhraseKind::Filler => &self.filler,
        }
    }

    pub(super) fn phrase_mut(&mut self, k: PhraseKind) -> &mut Phrase {
        match k {
            PhraseKind::Fallback => &mut self.fallback,
            PhraseKind::Filler => &mut self.filler,
        }
    }

    fn phrase_text(&self, k: PhraseKind) -> String {
        match k {
            PhraseKind::Fallback => self.cfg.fallback_text.clone(),
            PhraseKind::Filler => self.cfg.filler_text.clone().unwrap_or_default(),
        }
    }

    /// What plays for phrase `k`: its audio and text, or the chime (no text).
    fn phrase_audio(&self, k: PhraseKind) -> (SampleRate, Vec<i16>, String) {
        match self.phrase(k) {
            Phrase::Ready(pcm) => (audio::TTS_RATE, pcm.clone(), self.phrase_text(k)),
            _ => (audio::CHIME_RATE, audio::chime(), String::new()),
        }
    }

    /// Starts rendering phrase `k` (a first try: its budget runs from now).
    pub(super) fn start_phrase(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        if self.phrase_text(k).trim().is_empty() {
            *self.phrase_mut(k) = Phrase::Pending;
            return;
        }
        *self.phrase_mut(k) = Phrase::Rendering {
            attempt: Attempt::new(now + ms(self.cfg.retry.budget_ms)),
            pcm: Pcm16Stream::default(),
            samples: Vec::new(),
        };
        self.render_phrase(now, k, out);
    }

    /// Asks TTS for phrase `k` (again).
    pub(super) fn render_phrase(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        let req = wire::speech_request(&self.cfg, &self.phrase_text(k));
        let peer = self.open(now, Pipe::Phrase(k), req, out);
        if let Phrase::Rendering {
            attempt,
            pcm,
            samples,
        } = self.phrase_mut(k)
        {
            attempt.sent(peer);
            *pcm = Pcm16Stream::default();
            samples.clear();
        }
    }

    /// Audio of phrase `k` arrived.
    pub(super) fn on_phrase_bytes(&mut self, k: PhraseKind, bytes: &[u8]) {
        if let Phrase::Rendering { pcm, samples, .. } = self.phrase_mut(k) {
            pcm.push(bytes, samples);
        }
    }

    /// The rendering of phrase `k` ended: it is ready, or (no audio) a fault.
    pub(super) fn on_phrase_closed(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        let phrase = self.phrase_mut(k);
        match phrase {
            Phrase::Rendering { samples, .. } if !samples.is_empty() => {
                let s = std::mem::take(samples);
                *phrase = Phrase::Ready(s);
                self.phrase_settled(now, k, out);
            }
            _ => self.fault(
                now,
                Pipe::Phrase(k),
                ProviderFault::new(FaultKind::EmptyAudio, "no audio"),
                out,
            ),
        }
    }

    /// Phrase `k` is rendered (`Ready`) or given up (`Chime`): the filler is rendered after the
    /// fallback, so a TTS that is down at the start costs one failed request, not two.
    pub(super) fn phrase_settled(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        if k != PhraseKind::Fallback || !matches!(self.filler, Phrase::Pending) {
            return;
        }
        match self.fallback {
            Phrase::Ready(_) => self.start_phrase(now, PhraseKind::Filler, out),
            _ => self.filler = Phrase::Chime,
        }
    }

    /// Renders the phrases whose retry is due.
    pub(super) fn retry_phrases(&mut self, now: Instant, out: &mut Vec<Action>) {
        for k in PhraseKind::ALL {
            if matches!(self.phrase(k), Phrase::Rendering { attempt, .. } if attempt.is_due(now)) {
                self.render_phrase(now, k, out);
            }
        }
    }

    /// Drops what is not yet playing of `utt`, appends the fallback, closes the utterance.
    pub(super) fn end_with_fallback(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        round: usize,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        let peers = self.utterances[i].stop_generating();
        for p in peers {
            self.pipes.close(p, out);
        }
        let (rate, samples, text) = self.phrase_audio(PhraseKind::Fallback);
        self.add_prerendered(utt, text, round, rate, samples, now);
        self.pump_utterance(now, utt, out);
    }

    /// Plays the filler (or the chime standing in for it) as an utterance of its own, queued
    /// before the answer's audio.
    fn play_filler(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (rate, samples, text) = self.phrase_audio(PhraseKind::Filler);
        let utt = self.new_utterance(Owner::Filler);
        self.add_prerendered(utt, text, 0, rate, samples, now);
        if let Some(i) = self.utt_ix(utt) {
            self.utterances[i].closed = true;
        }
        self.pump_utterance(now, utt, out);
    }

    /// Plays the filler if the current turn's answer has not been heard by its time, unless
    /// the caller is talking again (then it waits until they have been quiet for
    /// [`CALLER_QUIET_MS`], at most [`super::FILLER_MAX_DEFER_MS`] past its time).
    pub(super) fn maybe_filler(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(t) = self.turn.as_ref() else {
            return;
        };
        let Some(due) = t.filler_at.filter(|d| *d <= now) else {
            return;
        };
        let answered = t
            .answer
            .and_then(|u| self.utt_ix(u))
            .is_some_and(|i| self.utterances[i].started);
        if answered {
            if let Some(t) = self.turn.as_mut() {
                t.filler_at = None;
            }
            return;
        }
        let cap = t.filler_cap.unwrap_or(due);
        if self.caller_speaking
            && let Some(v) = self.caller_voiced_at
        {
            let quiet_at = v + ms(CALLER_QUIET_MS);
            if now < quiet_at && now < cap {
                if let Some(t) = self.turn.as_mut() {
                    t.filler_at = Some(quiet_at.min(cap));
                }
                return;
            }
        }
        if let Some(t) = self.turn.as_mut() {
            t.filler_at = None;
        }
        self.play_filler(now, out);
    }

    /// When a retry of either phrase's rendering is due.
    pub(super) fn phrases_poll_timeout(&self) -> Option<Instant> {
        PhraseKind::ALL
            .iter()
            .filter_map(|k| self.phrase(*k).poll_timeout())
            .min()
    }
}
