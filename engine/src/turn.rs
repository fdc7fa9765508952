//! Voice activity detection (webrtc-vad) and the turn detector built on its per-frame decisions.
//!
//! The turn detector is pure logic over `(frame start in media ms, frame length, voiced?)`, so it
//! is tested without audio. Hysteresis: speech starts only after `start_voiced_ms` of voiced
//! frames within a `start_window_ms` window (a lone click does not start a turn), and ends only
//! after `stop_ms` of unbroken non-voiced frames (a short pause inside a sentence does not end it).

use std::collections::VecDeque;

use hark_codecs::SampleRate;
use webrtc_vad::{SampleRate as VadRate, Vad, VadMode};

use crate::config::{TurnConfig, VadAggressiveness, VadConfig};

/// webrtc-vad (the WebRTC project's GMM voice detector, through the `webrtc-vad` crate) over
/// 20 ms frames at 8 or 16 kHz.
///
/// `Vad` holds a raw pointer to the C state and is therefore neither `Send` nor `Sync`; a
/// [`crate::Call`] that owns one lives on one thread (the driver runs calls on per-core
/// single-threaded runtimes).
pub struct VoiceDetector {
    vad: Vad,
    frame: usize,
    gate: NoiseGate,
}

/// Level gate over a noise floor tracked by minimum statistics: the floor is the quietest frame
/// level in the last `window` (kept as per-100 ms minima, so it follows a rising background
/// within one window and drops at once when the line gets quieter).
#[derive(Debug, Clone)]
struct NoiseGate {
    margin_db: f64,
    min_level_db: f64,
    buckets: VecDeque<f64>,
    max_buckets: usize,
    current: f64,
    in_current: u32,
}

impl NoiseGate {
    const FRAMES_PER_BUCKET: u32 = 5;

    fn new(cfg: &VadConfig) -> Self {
        NoiseGate {
            margin_db: cfg.noise_margin_db as f64,
            min_level_db: cfg.min_level_dbfs as f64,
            buckets: VecDeque::with_capacity(64),
            max_buckets: (cfg.noise_window_ms / 100).max(1) as usize,
            current: f64::INFINITY,
            in_current: 0,
        }
    }

    /// Feeds a frame's level (dBFS) and says whether it is loud enough to be speech.
    fn pass(&mut self, level_db: f64) -> bool {
        // Digital silence has no level; count it as very quiet.
        let level = level_db.max(-120.0);
        self.current = self.current.min(level);
        self.in_current += 1;
        let floor = self.buckets.iter().copied().fold(self.current, f64::min);
        if self.in_current == Self::FRAMES_PER_BUCKET {
            if self.buckets.len() == self.max_buckets {
                self.buckets.pop_front();
            }
            self.buckets.push_back(self.current);
            self.current = f64::INFINITY;
            self.in_current = 0;
        }
        level >= self.min_level_db && (self.margin_db == 0.0 || level >= floor + self.margin_db)
    }
}

impl std::fmt::Debug for VoiceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDetector")
            .field("frame", &self.frame)
            .finish()
    }
}

impl VoiceDetector {
    /// A detector for `cfg.rate` (8000 or 16000 Hz; anything else is treated as 8000).
    pub fn new(cfg: &VadConfig) -> Self {
        let (rate, hz) = if cfg.rate == SampleRate::HZ_16000 {
            (VadRate::Rate16kHz, SampleRate::HZ_16000)
        } else {
            (VadRate::Rate8kHz, SampleRate::HZ_8000)
        };
        let mode = match cfg.aggressiveness {
            VadAggressiveness::Quality => VadMode::Quality,
            VadAggressiveness::LowBitrate => VadMode::LowBitrate,
            VadAggressiveness::Aggressive => VadMode::Aggressive,
            VadAggressiveness::VeryAggressive => VadMode::VeryAggressive,
        };
        VoiceDetector {
            vad: Vad::new_with_rate_and_mode(rate, mode),
            frame: hz.samples_in_ms(20),
            gate: NoiseGate::new(cfg),
        }
    }

    /// Samples per frame this detector takes (160 at 8 kHz, 320 at 16 kHz: 20 ms).
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Whether a 20 ms frame holds speech: webrtc-vad says so and the frame passes the level
    /// gate (see [`VadConfig::noise_margin_db`]). A frame of the wrong length (webrtc-vad takes
    /// only 10, 20 or 30 ms; an empty slice would make it panic) counts as not voiced.
    pub fn is_voiced(&mut self, frame: &[i16]) -> bool {
        if frame.len() != self.frame {
            return false;
        }
        let loud = self.gate.pass(hark_codecs::pcm::rms_dbfs(frame));
        // Run the VAD on every frame so its own noise model keeps adapting.
        let vad = self.vad.is_voice_segment(frame).unwrap_or(false);
        vad && loud
    }
}

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
    },
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
                    };
                    return Some(TurnEvent::SpeechStart { start_ms: first });
                }
                None
            }
            State::Speaking {
                start_ms: s,
                last_voiced_end_ms,
                voiced_ms,
            } => {
                let s = *s;
                if voiced {
                    *last_voiced_end_ms = end_ms;
                    *voiced_ms += len_ms as u64;
                }
                let last = *last_voiced_end_ms;
                let forced = last - s >= self.cfg.max_utterance_ms as u64;
                if end_ms - last >= self.cfg.stop_ms as u64 || forced {
                    self.state = State::Silent;
                    return Some(if last - s < self.cfg.min_utterance_ms as u64 {
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
                    });
                }
                None
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
    fn speech_starts_after_60_ms_of_voice_in_100_ms() {
        let mut d = TurnDetector::new(TurnConfig::default());
        // Two voiced frames, a gap, one more: 60 ms voiced within 100 ms.
        let ev = run(&mut d, "..##.#", 0);
        assert_eq!(ev, vec![(120, TurnEvent::SpeechStart { start_ms: 40 })]);
    }

    #[test]
    fn isolated_clicks_do_not_start_speech() {
        let mut d = TurnDetector::new(TurnConfig::default());
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

    #[test]
    fn gate_follows_the_noise_floor() {
        let mut g = NoiseGate::new(&VadConfig::default());
        // Quiet line, then a -40 dBFS background: the background stops passing within the
        // window, speech 20 dB above it passes.
        for _ in 0..50 {
            assert!(!g.pass(-64.0));
        }
        let mut passed_late = false;
        for i in 0..200 {
            let p = g.pass(-40.0);
            if i > 80 {
                passed_late |= p;
            }
        }
        assert!(
            !passed_late,
            "steady background still passes after the window"
        );
        assert!(g.pass(-20.0));
        assert!(!g.pass(-33.0));
        assert!(!g.pass(f64::NEG_INFINITY));
    }

    #[test]
    fn vad_hears_a_voice_like_tone_and_not_line_noise() {
        let mut v = VoiceDetector::new(&VadConfig::default());
        assert_eq!(v.frame_samples(), 160);
        assert!(!v.is_voiced(&[]));
        assert!(!v.is_voiced(&[0; 100]));
        let quiet: Vec<i16> = (0..160).map(|i| ((i * 7919) % 17) as i16 - 8).collect();
        for _ in 0..10 {
            assert!(!v.is_voiced(&quiet));
        }
        // A loud harmonic-rich signal around speech frequencies.
        let mut voiced = 0;
        for k in 0..50 {
            let f: Vec<i16> = (0..160)
                .map(|i| {
                    let t = (k * 160 + i) as f64 / 8000.0;
                    let v: f64 = (1..8)
                        .map(|h| {
                            (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64
                        })
                        .sum();
                    (v * 6000.0) as i16
                })
                .collect();
            voiced += v.is_voiced(&f) as u32;
        }
        assert!(voiced > 40, "voiced {voiced}/50");
    }
}
