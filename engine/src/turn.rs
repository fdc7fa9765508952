//! The turn detector, built on the VAD's per-frame decisions ([`crate::vad`]).
//!
//! The turn detector is pure logic over `(frame start in media ms, frame length, voiced?)`, so it
//! is tested without audio. Hysteresis: speech starts only after `start_voiced_ms` of voiced
//! frames within a `start_window_ms` window (a lone click does not start a turn), and ends only
//! after `stop_ms` of unbroken non-voiced frames (a short pause inside a sentence does not end it).
//!
//! With [`EndOfTurn::SmartTurn`] the silence rule changes: after `model_probe_ms` of silence the
//! detector asks whether the turn is complete ([`TurnEvent::AskModel`]); the answer
//! ([`TurnDetector::on_model_answer`]) ends the turn at once ("complete"), or makes it wait for
//! `model_stop_ms` of silence ("unfinished", or no answer yet). No answer possible (the model is
//! busy or off): `stop_ms`, as without it.

use std::collections::VecDeque;

use crate::config::{EndOfTurn, TurnConfig};
pub use crate::vad::VoiceDetector;

/// What the turn detector reports after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnEvent {
    /// The caller started speaking at `start_ms` (the start of the first voiced frame of the
    /// window that confirmed it).
    SpeechStart {
        /// Media time of the first voiced frame, ms from stream start.
        start_ms: u64,
    },
    /// The caller's turn ended: `stop_ms` of silence followed the last voiced frame.
    SpeechEnd {
        /// Media time of the first voiced frame.
        start_ms: u64,
        /// Media time at the end of the last voiced frame.
        end_ms: u64,
        /// True when `max_utterance_ms` forced the end.
        forced: bool,
    },
    /// [`EndOfTurn::SmartTurn`]: `model_probe_ms` of silence followed the last voiced frame;
    /// ask the end-of-turn model whether the turn is complete and feed the answer to
    /// [`TurnDetector::on_model_answer`]. At most one per pause: a voiced frame starts a new one.
    AskModel {
        /// Media time of the first voiced frame.
        start_ms: u64,
        /// Media time at the end of the last voiced frame.
        end_ms: u64,
    },
    /// Speech that ended before reaching `min_utterance_ms`: noise, a cough, a click.
    Discarded {
        /// Media time of the first voiced frame.
        start_ms: u64,
        /// Media time at the end of the last voiced frame.
        end_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Silent,
    Speaking {
        start_ms: u64,
        last_voiced_end_ms: u64,
        voiced_ms: u64,
        /// The end-of-turn model for this pause: not asked, asked, or its answer.
        model: Model,
    },
}

/// The end-of-turn model's part in the current pause ([`EndOfTurn::SmartTurn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    NotAsked,
    Asked,
    /// It called the turn unfinished: wait for `model_stop_ms`.
    Unfinished,
    /// It could not answer: `stop_ms` applies.
    NoAnswer,
}

/// The turn detector: hysteresis over per-frame VAD decisions. See the module docs.
#[derive(Debug, Clone)]
pub struct TurnDetector {
    cfg: TurnConfig,
    state: State,
    /// Recent frames while silent: (start_ms, len_ms, voiced).
    window: VecDeque<(u64, u32, bool)>,
}

impl TurnDetector {
    /// A detector with `cfg`'s thresholds.
    pub fn new(cfg: TurnConfig) -> Self {
        TurnDetector {
            cfg,
            state: State::Silent,
            window: VecDeque::with_capacity(16),
        }
    }

    /// Whether the caller is currently speaking (between `SpeechStart` and its end).
    pub fn is_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Media time at which the current speech started, if speaking.
    pub fn speech_start_ms(&self) -> Option<u64> {
        match self.state {
            State::Speaking { start_ms, .. } => Some(start_ms),
            State::Silent => None,
        }
    }

    /// Voiced ms in the current speech (0 when silent).
    pub fn voiced_ms(&self) -> u64 {
        match self.state {
            State::Speaking { voiced_ms, .. } => voiced_ms,
            State::Silent => 0,
        }
    }

    /// Media ms from the first to the end of the last voiced frame of the current speech (0
    /// when silent).
    pub fn voiced_span_ms(&self) -> u64 {
        match self.state {
            State::Speaking {
                start_ms,
                last_voiced_end_ms,
                ..
            } => last_voiced_end_ms.saturating_sub(start_ms),
            State::Silent => 0,
        }
    }

    /// Feeds one frame's decision: it starts at `start_ms` (media time) and lasts `len_ms`.
    pub fn on_frame(&mut self, start_ms: u64, len_ms: u32, voiced: bool) -> Option<TurnEvent> {
        let end_ms = start_ms + len_ms as u64;
        match &mut self.state {
            State::Silent => {
                self.window.push_back((start_ms, len_ms, voiced));
                while let Some(&(s, _, _)) = self.window.front() {
                    if s + (self.cfg.start_window_ms as u64) < end_ms {
                        self.window.pop_front();
                    } else {
                        break;
                    }
                }
                // Leading unvoiced frames never start speech.
                while matches!(self.window.front(), Some(&(_, _, false))) {
                    self.window.pop_front();
                }
                let voiced_ms: u64 = self.window.iter().filter(|f| f.2).map(|f| f.1 as u64).sum();
                if voiced_ms >= self.cfg.start_voiced_ms as u64 {
                    let first = self.window.front().map_or(start_ms, |f| f.0);
                    let last_voiced_end_ms = self
                        .window
                        .iter()
                        .rev()
                        .find(|f| f.2)
                        .map_or(end_ms, |f| f.0 + f.1 as u64);
                    self.window.clear();
                    self.state = State::Speaking {
                        start_ms: first,
                        last_voiced_end_ms,
                        voiced_ms,
                        model: Model::NotAsked,
                    };
                    return Some(TurnEvent::SpeechStart { start_ms: first });
                }
                None
            }
            State::Speaking {
                start_ms: s,
                last_voiced_end_ms,
                voiced_ms,
                model,
            } => {
                let s = *s;
                if voiced {
                    *last_voiced_end_ms = end_ms;
                    *voiced_ms += len_ms as u64;
                    *model = Model::NotAsked;
                }
                let last = *last_voiced_end_ms;
                let silence = end_ms - last;
                let forced = last - s >= self.cfg.max_utterance_ms as u64;
                let semantic = self.cfg.end_of_turn == EndOfTurn::SmartTurn;
                if semantic
                    && !forced
                    && *model == Model::NotAsked
                    && silence >= self.cfg.model_probe_ms as u64
                    && last - s >= self.cfg.min_utterance_ms as u64
                {
                    *model = Model::Asked;
                    return Some(TurnEvent::AskModel {
                        start_ms: s,
                        end_ms: last,
                    });
                }
                let stop_ms = match model {
                    Model::Asked | Model::Unfinished if semantic => self.cfg.model_stop_ms,
                    _ => self.cfg.stop_ms,
                };
                if silence >= stop_ms as u64 || forced {
                    return Some(self.end(s, last, forced));
                }
                None
            }
        }
    }

    /// The end-of-turn model's answer to the last [`TurnEvent::AskModel`], at media time
    /// `now_ms`: `Some(true)` complete (the turn ends now), `Some(false)` unfinished (it ends
    /// after `model_stop_ms` of silence), `None` no answer possible (`stop_ms`). Ignored, with
    /// `None` returned, unless the detector is still in the pause it asked about (the caller
    /// spoke again meanwhile: that answer is stale).
    pub fn on_model_answer(&mut self, now_ms: u64, complete: Option<bool>) -> Option<TurnEvent> {
        let State::Speaking {
            start_ms: s,
            last_voiced_end_ms: last,
            model,
            ..
        } = &mut self.state
        else {
            return None;
        };
        if *model != Model::Asked {
            return None;
        }
        let (s, last) = (*s, *last);
        let silence = now_ms.saturating_sub(last);
        let wait_ms = match complete {
            Some(true) => 0,
            Some(false) => {
                *model = Model::Unfinished;
                self.cfg.model_stop_ms
            }
            None => {
                *model = Model::NoAnswer;
                self.cfg.stop_ms
            }
        };
        (silence >= wait_ms as u64).then(|| self.end(s, last, false))
    }

    /// Ends the speech in progress (media time `s`–`last`): a turn, or a blip too short to be
    /// one.
    fn end(&mut self, s: u64, last: u64, forced: bool) -> TurnEvent {
        self.state = State::Silent;
        if last - s < self.cfg.min_utterance_ms as u64 {
            TurnEvent::Discarded {
                start_ms: s,
                end_ms: last,
            }
        } else {
            TurnEvent::SpeechEnd {
                start_ms: s,
                end_ms: last,
                forced,
            }
        }
    }

    /// Forgets any speech in progress (e.g. at stream stop).
    pub fn reset(&mut self) {
        self.state = State::Silent;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(det: &mut TurnDetector, pattern: &str, t0: u64) -> Vec<(u64, TurnEvent)> {
        let mut out = vec![];
        for (i, c) in pattern.chars().enumerate() {
            let t = t0 + 20 * i as u64;
            if let Some(e) = det.on_frame(t, 20, c == '#') {
                out.push((t + 20, e));
            }
        }
        out
    }

    #[test]
    fn speech_starts_after_start_voiced_ms_of_voice_in_the_window() {
        // The default: 40 ms voiced within 100 ms, i.e. two voiced frames.
        let mut d = TurnDetector::new(TurnConfig::default());
        let ev = run(&mut d, "..##", 0);
        assert_eq!(ev, vec![(80, TurnEvent::SpeechStart { start_ms: 40 })]);
        // At 60 ms: two voiced frames, a gap, one more.
        let mut d = TurnDetector::new(TurnConfig {
            start_voiced_ms: 60,
            ..TurnConfig::default()
        });
        assert!(run(&mut d, "..##.", 0).is_empty());
        let mut d = TurnDetector::new(TurnConfig {
            start_voiced_ms: 60,
            ..TurnConfig::default()
        });
        let ev = run(&mut d, "..##.#", 0);
        assert_eq!(ev, vec![(120, TurnEvent::SpeechStart { start_ms: 40 })]);
    }

    #[test]
    fn isolated_clicks_do_not_start_speech() {
        // One-frame clicks 100 ms apart never put two voiced frames in one window.
        let mut d = TurnDetector::new(TurnConfig::default());
        assert!(run(&mut d, "#....#....#....#....", 0).is_empty());
        assert!(!d.is_speaking());
        // At 60 ms, two-frame clicks do not either.
        let mut d = TurnDetector::new(TurnConfig {
            start_voiced_ms: 60,
            ..TurnConfig::default()
        });
        assert!(run(&mut d, "#....#....#....##...", 0).is_empty());
        assert!(!d.is_speaking());
    }

    #[test]
    fn turn_ends_after_stop_ms_of_silence_and_pauses_do_not_end_it() {
        let mut d = TurnDetector::new(TurnConfig::default());
        // 400 ms speech, 300 ms pause, 200 ms speech, then silence.
        let p = format!(
            "{}{}{}{}",
            "#".repeat(20),
            ".".repeat(15),
            "#".repeat(10),
            ".".repeat(40)
        );
        let ev = run(&mut d, &p, 1000);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0].1, TurnEvent::SpeechStart { start_ms: 1000 });
        // Last voiced frame ends at 1000 + 45*20 = 1900; the end is reported 600 ms later.
        assert_eq!(
            ev[1],
            (
                2500,
                TurnEvent::SpeechEnd {
                    start_ms: 1000,
                    end_ms: 1900,
                    forced: false
                }
            )
        );
    }

    #[test]
    fn short_blips_are_discarded() {
        let mut d = TurnDetector::new(TurnConfig::default());
        let ev = run(&mut d, &format!("###{}", ".".repeat(40)), 0);
        assert_eq!(
            ev[1].1,
            TurnEvent::Discarded {
                start_ms: 0,
                end_ms: 60
            }
        );
    }

    fn semantic() -> TurnDetector {
        TurnDetector::new(TurnConfig {
            end_of_turn: EndOfTurn::SmartTurn,
            ..TurnConfig::default()
        })
    }

    #[test]
    fn the_model_is_asked_once_per_pause_and_its_answer_decides() {
        // 400 ms of speech, then silence: asked after 200 ms of it.
        let mut d = semantic();
        let ev = run(&mut d, &format!("{}{}", "#".repeat(20), ".".repeat(10)), 0);
        assert_eq!(
            ev[1],
            (
                600,
                TurnEvent::AskModel {
                    start_ms: 0,
                    end_ms: 400
                }
            )
        );
        // Complete: the turn ends when the answer comes.
        assert_eq!(
            d.on_model_answer(620, Some(true)),
            Some(TurnEvent::SpeechEnd {
                start_ms: 0,
                end_ms: 400,
                forced: false
            })
        );
        // Unfinished: the 600 ms rule no longer ends it; 1000 ms of silence does.
        let mut d = semantic();
        run(&mut d, &format!("{}{}", "#".repeat(20), ".".repeat(10)), 0);
        assert_eq!(d.on_model_answer(620, Some(false)), None);
        let ev = run(&mut d, &".".repeat(60), 600);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].0, 1400);
        // No answer possible: the 600 ms rule, at once if it is already due.
        let mut d = semantic();
        run(&mut d, &format!("{}{}", "#".repeat(20), ".".repeat(30)), 0);
        assert!(matches!(
            d.on_model_answer(1000, None),
            Some(TurnEvent::SpeechEnd { .. })
        ));
    }

    #[test]
    fn a_stale_answer_changes_nothing_and_speech_asks_again() {
        let mut d = semantic();
        run(&mut d, &format!("{}{}", "#".repeat(20), ".".repeat(10)), 0);
        // The caller speaks again before the answer comes.
        run(&mut d, "###", 600);
        assert_eq!(d.on_model_answer(680, Some(true)), None);
        assert!(d.is_speaking());
        let ev = run(&mut d, &".".repeat(10), 660);
        assert_eq!(
            ev,
            vec![(
                860,
                TurnEvent::AskModel {
                    start_ms: 0,
                    end_ms: 660
                }
            )]
        );
        // Blips shorter than min_utterance_ms are not asked about.
        let mut d = semantic();
        let ev = run(&mut d, &format!("####{}", ".".repeat(40)), 0);
        assert!(
            ev.iter()
                .all(|e| !matches!(e.1, TurnEvent::AskModel { .. })),
            "{ev:?}"
        );
    }

    #[test]
    fn long_speech_is_cut_at_max_utterance() {
        let cfg = TurnConfig {
            max_utterance_ms: 2000,
            ..TurnConfig::default()
        };
        let mut d = TurnDetector::new(cfg);
        let ev = run(&mut d, &"#".repeat(200), 0);
        assert_eq!(
            ev[1].1,
            TurnEvent::SpeechEnd {
                start_ms: 0,
                end_ms: 2000,
                forced: true
            }
        );
    }
}
