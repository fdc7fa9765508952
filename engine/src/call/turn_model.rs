//! Asking the end-of-turn model ([`EndOfTurn::SmartTurn`]): the caller's last seconds of
//! audio go out as [`Output::TurnCheck`](super::Output::TurnCheck); the driver's answer comes
//! back as [`Input::TurnCheck`](super::Input::TurnCheck) and may end the turn at once.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Call, Event, Pending, TurnCheck};
use crate::agent::Action;
use crate::config::EndOfTurn;

/// Most audio the model looks at: 8 s (Smart Turn's input window).
pub(super) const MODEL_WINDOW_MS: u64 = 8_000;
/// Audio from before the detected speech start included in a check (pipecat's
/// `pre_speech_ms`).
const PRE_SPEECH_MS: u64 = 500;

/// The model's side of a call: the last [`MODEL_WINDOW_MS`] of 8 kHz PCM and the check in
/// flight.
#[derive(Debug, Default)]
pub(super) struct ModelState {
    /// Last 8 s of inbound PCM at 8 kHz (empty unless the model is on).
    ring: VecDeque<i16>,
    /// Id of the latest check (0: none yet); its answer is the only one heeded.
    last_id: u64,
    /// When the latest check went out, until its answer came.
    asked_at: Option<Instant>,
}

impl ModelState {
    /// Keeps `pcm8` (one 20 ms frame at 8 kHz) in the window.
    pub(super) fn push(&mut self, pcm8: &[i16]) {
        let cap = (MODEL_WINDOW_MS * 8) as usize;
        let over = (self.ring.len() + pcm8.len()).saturating_sub(cap);
        self.ring.drain(..over.min(self.ring.len()));
        self.ring.extend(pcm8);
    }
}

impl Call {
    /// Whether the end-of-turn model is on for this call.
    pub(super) fn model_on(&self) -> bool {
        self.cfg.turn.end_of_turn == EndOfTurn::SmartTurn
    }

    /// The turn detector asks: send the audio from 500 ms before `start_ms` (media time) to now,
    /// at most 8 s, to the driver.
    pub(super) fn ask_model(&mut self, at: Instant, start_ms: u64) {
        let from = start_ms
            .saturating_sub(PRE_SPEECH_MS)
            .max(self.media_ms.saturating_sub(MODEL_WINDOW_MS));
        let want = ((self.media_ms - from.min(self.media_ms)) * 8) as usize;
        let ring = &self.model.ring;
        let audio: Vec<i16> = ring
            .range(ring.len() - want.min(ring.len())..)
            .copied()
            .collect();
        self.model.last_id += 1;
        self.model.asked_at = Some(at);
        self.stats.turn_checks += 1;
        let id = self.model.last_id;
        self.out
            .push_back(Pending::TurnCheck(TurnCheck { id, audio }));
    }

    /// The driver's answer to check `id`: the probability that the turn is complete, or `None`
    /// when the model could not run (busy pool, load failure). Stale answers are dropped.
    pub(super) fn on_model_answer(
        &mut self,
        at: Instant,
        id: u64,
        probability: Option<f32>,
        actions: &mut Vec<Action>,
    ) {
        if id != self.model.last_id {
            return;
        }
        let Some(asked_at) = self.model.asked_at.take() else {
            return;
        };
        let threshold = f32::from(self.cfg.turn.model_threshold_pct) / 100.0;
        let complete = probability.map(|p| p >= threshold);
        if complete.is_none() {
            self.stats.turn_checks_unanswered += 1;
        }
        self.event(Event::TurnModelAnswered {
            turn: self.book.current(),
            probability_pct: probability.map(|p| (p * 100.0).round().clamp(0.0, 100.0) as u8),
            complete,
            waited: at.saturating_duration_since(asked_at),
        });
        if let Some(ev) = self.turn.on_model_answer(self.media_ms, complete) {
            self.on_turn_event(at, ev, actions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_8_s() {
        let mut m = ModelState::default();
        for i in 0..500 {
            m.push(&[i as i16; 160]);
        }
        assert_eq!(m.ring.len(), 64_000);
        assert_eq!(m.ring.front(), Some(&100));
        assert_eq!(m.ring.back(), Some(&499));
    }
}
