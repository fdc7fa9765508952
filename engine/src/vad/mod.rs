//! Voice activity detection: one verdict per 20 ms frame, from one of three detectors
//! ([`crate::config::VadKind`]), measured against each other by `hark bench turns`:
//!
//! | kind | what | cost per 20 ms frame |
//! |---|---|---|
//! | `webrtc` | webrtc-vad behind an adaptive level gate ([`webrtc`]) | ~1 µs |
//! | `silero` | Silero VAD (v6, silero-vad 6.2.3) on every 32 ms window ([`silero`]) | one Silero window per 32 ms |
//! | `hybrid` | a level stage; Silero only when unsure; a foreground gate ([`HybridVad`]) | ~1 µs in silence, Silero's in speech and noise |
//!
//! Silero decides per 256-sample window (32 ms at 8 kHz); a frame takes the verdict of the
//! latest window scored, so a frame's verdict can lag its audio by up to 32 ms.

mod hybrid;
pub mod silero;
pub mod webrtc;

pub use hybrid::HybridVad;

use hark_codecs::SampleRate;

use crate::config::{VadConfig, VadKind};
use silero::{SileroVad, WINDOW};

/// Per-frame voice detection for a call: the detector [`VadConfig::kind`] names.
#[derive(Debug)]
pub struct VoiceDetector {
    inner: Inner,
    frame: usize,
}

#[derive(Debug)]
enum Inner {
    Webrtc(webrtc::WebrtcVad),
    Silero(Box<SileroStream>),
    Hybrid(Box<HybridVad>),
}

impl VoiceDetector {
    /// A detector for `cfg`. `webrtc` runs at `cfg.rate` (8000 or 16000 Hz; anything else is
    /// treated as 8000); `silero` and `hybrid` always take 8 kHz frames.
    pub fn new(cfg: &VadConfig) -> Self {
        match cfg.kind {
            VadKind::Webrtc => {
                let w = webrtc::WebrtcVad::new(cfg);
                VoiceDetector {
                    frame: w.frame_samples(),
                    inner: Inner::Webrtc(w),
                }
            }
            VadKind::Silero => VoiceDetector {
                inner: Inner::Silero(Box::new(SileroStream::new(cfg.speech_threshold_pct))),
                frame: 160,
            },
            VadKind::Hybrid => VoiceDetector {
                inner: Inner::Hybrid(Box::new(HybridVad::new(cfg))),
                frame: 160,
            },
        }
    }

    /// The rate this detector's frames are at (8000 Hz but for `webrtc` at 16 kHz).
    pub fn rate(&self) -> SampleRate {
        if self.frame == 320 {
            SampleRate::HZ_16000
        } else {
            SampleRate::HZ_8000
        }
    }

    /// Samples per frame this detector takes (160 at 8 kHz, 320 at 16 kHz: 20 ms).
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Whether a 20 ms frame holds the caller's speech. A frame of the wrong length counts as
    /// not voiced and changes nothing.
    pub fn is_voiced(&mut self, frame: &[i16]) -> bool {
        if frame.len() != self.frame {
            return false;
        }
        match &mut self.inner {
            Inner::Webrtc(w) => w.is_voiced(frame),
            Inner::Silero(s) => s.push(frame),
            Inner::Hybrid(h) => h.is_voiced(frame),
        }
    }

    /// Silero windows scored so far (0 for `webrtc`): what the neural stage cost.
    pub fn neural_windows(&self) -> u64 {
        match &self.inner {
            Inner::Webrtc(_) => 0,
            Inner::Silero(s) => s.windows,
            Inner::Hybrid(h) => h.neural_windows(),
        }
    }
}

/// Silero over a stream of 20 ms frames: samples gathered into 256-sample windows, each scored,
/// and a speech/non-speech verdict with Silero's hysteresis (speech from the threshold up, and
/// it stays speech down to 15 points below it).
#[derive(Debug)]
pub(crate) struct SileroStream {
    model: SileroVad,
    buf: [i16; WINDOW],
    fill: usize,
    on: f32,
    off: f32,
    speech: bool,
    /// The latest window's probability.
    pub(crate) prob: f32,
    /// Windows scored.
    pub(crate) windows: u64,
    /// The last window completed without being scored, for [`SileroStream::warm_up`].
    skipped: Option<Box<[i16; WINDOW]>>,
}

impl SileroStream {
    pub(crate) fn new(threshold_pct: u8) -> Self {
        let on = f32::from(threshold_pct) / 100.0;
        SileroStream {
            model: SileroVad::new(),
            buf: [0; WINDOW],
            fill: 0,
            on,
            off: (on - 0.15).max(0.01),
            speech: false,
            prob: 0.0,
            windows: 0,
            skipped: None,
        }
    }

    /// Adds `samples`, scoring each window completed (when `score`; else the window is dropped
    /// unscored). Returns whether a window was completed.
    pub(crate) fn feed(&mut self, samples: &[i16], score: bool) -> bool {
        let mut completed = false;
        let mut rest = samples;
        while !rest.is_empty() {
            let n = (WINDOW - self.fill).min(rest.len());
            self.buf[self.fill..self.fill + n].copy_from_slice(&rest[..n]);
            self.fill += n;
            rest = &rest[n..];
            if self.fill == WINDOW {
                self.fill = 0;
                completed = true;
                if score {
                    self.score_buffered();
                } else {
                    **self.skipped.get_or_insert_with(|| Box::new([0; WINDOW])) = self.buf;
                }
            }
        }
        completed
    }

    /// Scores the last completed window (again, or for the first time).
    pub(crate) fn score_buffered(&mut self) {
        self.prob = self.model.probability_i16(&self.buf);
        self.windows += 1;
        self.speech = if self.speech {
            self.prob >= self.off
        } else {
            self.prob >= self.on
        };
    }

    /// Starts the model afresh on the window completed just before (if one was skipped), so
    /// the next window is scored with one window of history, as in a continuous stream.
    pub(crate) fn warm_up(&mut self) {
        self.model.reset();
        self.speech = false;
        self.prob = 0.0;
        if let Some(w) = self.skipped.take() {
            self.prob = self.model.probability_i16(&w[..]);
            self.windows += 1;
            self.speech = self.prob >= self.on;
        }
    }

    /// Leaves the verdict at non-speech (the caller has been quiet long enough).
    pub(crate) fn idle(&mut self) {
        self.speech = false;
        self.prob = 0.0;
    }

    /// The verdict of the latest window scored.
    pub(crate) fn speech(&self) -> bool {
        self.speech
    }

    fn push(&mut self, frame: &[i16]) -> bool {
        self.feed(frame, true);
        self.speech
    }
}
