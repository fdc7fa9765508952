//! webrtc-vad (the WebRTC project's GMM voice detector, through the `webrtc-vad` crate) behind
//! an adaptive level gate: hark's first VAD, `HARK_VAD=webrtc`.

use std::collections::VecDeque;

use hark_codecs::SampleRate;
use webrtc_vad::{SampleRate as VadRate, Vad, VadMode};

use crate::config::{VadAggressiveness, VadConfig};

/// webrtc-vad (the WebRTC project's GMM voice detector, through the `webrtc-vad` crate) over
/// 20 ms frames at 8 or 16 kHz.
///
/// `Vad` holds a raw pointer to the C state and is therefore neither `Send` nor `Sync`; a
/// [`crate::Call`] that owns one lives on one thread (the driver runs calls on per-core
/// single-threaded runtimes).
pub struct WebrtcVad {
    vad: Vad,
    frame: usize,
    gate: NoiseGate,
}

/// Level gate over a noise floor tracked by minimum statistics: the floor is the quietest frame
/// level in the last `window` (kept as per-100 ms minima, so it follows a rising background
/// within one window and drops at once when the line gets quieter).
#[derive(Debug, Clone)]
pub(crate) struct NoiseGate {
    margin_db: f64,
    min_level_db: f64,
    buckets: VecDeque<f64>,
    max_buckets: usize,
    current: f64,
    in_current: u32,
}

impl NoiseGate {
    const FRAMES_PER_BUCKET: u32 = 5;

    pub(crate) fn new(cfg: &VadConfig) -> Self {
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
    pub(crate) fn pass(&mut self, level_db: f64) -> bool {
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

impl std::fmt::Debug for WebrtcVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebrtcVad")
            .field("frame", &self.frame)
            .finish()
    }
}

impl WebrtcVad {
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
        WebrtcVad {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut v = WebrtcVad::new(&VadConfig::default());
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
