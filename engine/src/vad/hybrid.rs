//! The hybrid detector: a cheap level stage, Silero where that stage is unsure, and a
//! foreground gate.
//!
//! 1. **Level stage.** A frame whose level (RMS, dBFS) is below `min_level_dbfs` or less than
//!    [`CANDIDATE_MARGIN_DB`] above the noise floor (minimum statistics over
//!    `noise_window_ms`, as [`super::webrtc`]'s gate) is not speech, and costs no inference. A
//!    silent or quiet line never runs the network.
//! 2. **Silero.** On a line whose background is not far below the caller ([`CLEAN_LINE_DB`]),
//!    from the first frame above that, Silero scores every 32 ms window, until
//!    [`HANGOVER_FRAMES`] frames in a row fall back below (then it idles again). On waking it
//!    first scores the window before, so its state has one window of history.
//! 3. **Foreground gate.** A phone caller is close to the microphone; background talkers are
//!    not. The gate tracks the caller's level (an upper envelope of its frames' levels) and
//!    the background's, and calls a frame the caller's only when it is within half their
//!    distance (clamped to [`FOREGROUND_MIN_DB`]..=[`FOREGROUND_MAX_DB`]) of the caller's
//!    level, or Silero's speech within [`FOREGROUND_HOLD_FRAMES`] of such a frame (the soft
//!    ends of the caller's words). Background voices 10 dB down stop holding the caller's turn
//!    open. On a noisy line the background the gate measures is a slow mean of the power of
//!    every frame that does not pass it: silence, noise, and the voices Silero hears below the
//!    caller's level, the frames the hold keeps included. A conversation behind the caller is
//!    voiced much of the time; left out, it would pull that mean down and widen the gate until
//!    the conversation passed it (`hark bench turns`, `talkers` at 10 dB: 63 % of turns over
//!    1.5 s counting only unvoiced frames, 9 % counting these, before the slower release
//!    below). On a clean line the gate uses the mean of the unvoiced frames only (the caller's
//!    soft word ends would otherwise narrow it), which is also what decides whether the line is
//!    clean. Where the background is voices ([`VOICES_SHARE`]) the caller's envelope releases
//!    slower ([`VOICES_CALLER_RELEASE`]).
//!
//! 4. **Stationary noise.** Where the background has few voices ([`STATIONARY_SHARE`]: hiss,
//!    hum, pink or brown noise), Silero's verdict alone counts within
//!    [`STATIONARY_HOLD_FRAMES`] of a foreground frame, below the level stage too: the soft
//!    ends of words sink under the noise floor + 3 dB there while Silero still hears them
//!    (`hark bench turns`, when it came with a 400 ms hold and a 0.25 share: F1 in pink, brown
//!    and line noise at 10/5 dB 0.88/0.83, 0.92/0.91, 0.82/0.75 → 0.93/0.91, 0.94/0.93,
//!    0.90/0.82; 600 ms inner pauses cut 12, 10, 17 of 18 → 7, 9, 6 at 10 dB; today's figures
//!    are in the constants' docs and the README).
//!
//! 5. **Fast onset.** Silero needs a window or two to rise; webrtc-vad (about 1 µs a frame)
//!    answers at once but also to noise. A frame webrtc-vad calls voice that also passes the
//!    level stage and the foreground gate counts as voiced even before Silero agrees, for the
//!    first [`FAST_ONSET_FRAMES`] of a run (after that only with Silero's agreement in the
//!    run): loud speech near the caller's level starts a turn, and a barge-in, 30–60 ms
//!    sooner. In the hold after a foreground frame it counts only once Silero has agreed in
//!    the run (or where Silero is idle, a clean line): a cough or a click reaches the caller's
//!    level for a frame or two, and webrtc-vad, which hears voice in most bursts, carried its
//!    tail on until it barged in (`hark bench turns`, coughs and clicks that cut the agent at
//!    10 dB: babble 13 → 2, café 15 → 3, brown 7 → 0 of 20; at 20 dB 8–15 → 0 but with a
//!    background conversation, 19 → 18; pink noise at 5 dB 11.8 → 2.9 false barge-ins per
//!    minute). Noise and background voices rarely reach the caller's level, and a barge-in
//!    that turns out to be nothing only holds the agent's audio
//!    ([`crate::config::TurnConfig::resume_after_ms`]).
//!
//! A frame is voiced when the level stage, the foreground gate and Silero or the fast onset
//! say so, or when Silero (or the fast onset, once Silero has agreed in the run) says so
//! within the hold after a foreground frame (on stationary noise, Silero alone within its own
//! hold, below the level stage too).
//! On a clean line Silero is idle and webrtc-vad's verdict stands in for it.

use super::SileroStream;
use super::webrtc::{NoiseGate, WebrtcVad};
use crate::config::VadConfig;

/// dB above the noise floor from which the level stage asks Silero.
pub const CANDIDATE_MARGIN_DB: u8 = 3;
/// Frames (20 ms) below the level stage after which Silero idles: 500 ms.
pub const HANGOVER_FRAMES: u32 = 25;
/// Least distance, dB, kept below the caller's level by the foreground gate.
pub const FOREGROUND_MIN_DB: f64 = 6.0;
/// The caller's level assumed before they speak, dBFS: about the upper envelope of speech at an
/// active level of −26 dBFS (the benchmark corpus's; the bench sessions' speech peaks at −10 to
/// −15 dBFS). A background talking before the caller does is not taken for them;
/// the envelope follows the caller within a few frames once they speak, and a quieter line
/// pulls it down (see [`HybridVad`]).
pub const CALLER_PRIOR_DBFS: f64 = -20.0;
/// Frames (20 ms) of a run of voice the fast onset may carry alone on a noisy line (100 ms):
/// real speech has Silero's agreement by then; a cough or a knock does not.
pub const FAST_ONSET_FRAMES: u32 = 5;
/// A line whose background is this far below the caller's level, dB, is clean: Silero stays
/// idle there (webrtc-vad's F1 on clean speech is as good as Silero's: `hark bench turns`).
pub const CLEAN_LINE_DB: f64 = 30.0;
/// Most distance, dB, kept below the caller's level by the foreground gate.
pub const FOREGROUND_MAX_DB: f64 = 24.0;
/// Frames (20 ms) after a foreground frame during which Silero's speech counts as the caller's
/// whatever its level (300 ms): the soft ends of the caller's words stay in the turn, a
/// background voice never near the caller's level does not.
pub const FOREGROUND_HOLD_FRAMES: u32 = 15;
/// Per frame, the share of its distance by which the caller's level falls toward a quieter
/// foreground frame: the envelope's release.
pub const CALLER_RELEASE: f64 = 0.01;
/// The release on a background of voices ([`VOICES_SHARE`]): five times slower, so the
/// envelope stays at the caller's loud frames and voices close below them stay outside the gate
/// (`hark bench turns` at 5 dB: babble 27.6 → 8.6 and café 28.8 → 5.6 false barge-ins per
/// minute, turns over 1.5 s 11 → 4 % and 13 → 7 %). Not on other lines: there it made `clear`
/// 20–50 ms later (the first frames of a barge-in are quieter than the envelope).
pub const VOICES_CALLER_RELEASE: f64 = 0.002;
/// A background is voices (babble, a café, a conversation) when Silero hears speech in at least
/// this share of the frames that pass the level stage away from the caller's speech (more than
/// [`FOREGROUND_HOLD_FRAMES`] after a foreground frame), averaged over about
/// [`VOICES_FRAMES`].
pub const VOICES_SHARE: f64 = 0.4;
/// Frames (20 ms) the share of [`VOICES_SHARE`] is averaged over: 5 s.
pub const VOICES_FRAMES: f64 = 250.0;
/// Below this share of voices in the background ([`VOICES_SHARE`]'s measure) a noisy line's
/// noise is taken as stationary (hiss, hum, pink or brown noise): there Silero's speech counts
/// alone, even under the level stage, within [`STATIONARY_HOLD_FRAMES`] of a foreground frame.
/// Measured per 10 s on the benchmark's scenes, the share is 0.00–0.12 (p10–p90) in pink and
/// brown noise but 0.00–0.46 in telephone line noise (its crackle sounds like speech to Silero
/// now and then), 0.00–0.34 in babble and café at 10 dB, 0.24–0.99 at 5 dB and 0.72–0.99 with a
/// background conversation. At 0.25 (until 2026-12-04) line noise often fell out of the hold:
/// F1 0.90/0.82 at 10/5 dB (Silero 0.93/0.92); at 0.6, 0.92/0.91, 600 ms inner pauses cut 6 → 5
/// and 10 → 4 of 18, babble and café at 5 dB F1 +0.01, café at 5 dB 5.3 → 5.9 false
/// barge-ins per minute, `talkers` unchanged (`hark bench turns --vad hybrid`).
pub const STATIONARY_SHARE: f64 = 0.6;
/// See [`STATIONARY_SHARE`]: 600 ms (`hark bench turns`, 2026-12-04 night, with the fast onset
/// held to Silero's agreement in the hold: at 400 ms, F1 in line noise at 10/5 dB 0.924/0.907
/// and brown at 10 dB 0.936, under Silero's 0.927/0.918/0.940; at 600 ms 0.929/0.916/0.941.
/// The price: babble and café at 10 dB count as stationary much of the time (their share
/// of voices is 0.00–0.34), and hold some of their background as the caller's word ends:
/// end of turn p90 797 → 879 ms in babble and 797 → 1,033 in café, F1 −0.003 and −0.007,
/// still far above Silero's, café's backchannels cutting the agent 0 → 3 of 40 (9 at 800 ms).
pub const STATIONARY_HOLD_FRAMES: u32 = 30;

/// The hybrid detector (module docs). 8 kHz, 20 ms frames of 160 samples.
#[derive(Debug)]
pub struct HybridVad {
    silero: SileroStream,
    /// webrtc-vad without its own level gate: the fast onset for loud, near frames.
    webrtc: WebrtcVad,
    gate: NoiseGate,
    running: bool,
    below: u32,
    /// Upper envelope of the caller's frame levels, dBFS ([`CALLER_PRIOR_DBFS`] before any).
    caller_db: f64,
    /// Slow mean of the power of the frames not voiced: whether the line is clean.
    background: SlowPower,
    /// Slow mean of the power of the frames not taken for the caller's: the gate's background
    /// on a noisy line.
    gate_background: SlowPower,
    /// Frames since the last frame that passed the foreground gate.
    since_foreground: u32,
    /// Slow mean of Silero's verdict on the background alone ([`VOICES_SHARE`]).
    voices: f64,
    /// Voiced frames in a row so far.
    run_frames: u32,
    /// Silero agreed on a frame of that run.
    run_silero: bool,
}

impl HybridVad {
    /// A detector with `cfg`'s floor window, level minimum and Silero threshold.
    pub fn new(cfg: &VadConfig) -> Self {
        let gate_cfg = VadConfig {
            noise_margin_db: CANDIDATE_MARGIN_DB,
            ..*cfg
        };
        let fast_cfg = VadConfig {
            noise_margin_db: 0,
            rate: hark_codecs::SampleRate::HZ_8000,
            ..*cfg
        };
        HybridVad {
            silero: SileroStream::new(cfg.speech_threshold_pct),
            webrtc: WebrtcVad::new(&fast_cfg),
            gate: NoiseGate::new(&gate_cfg),
            running: false,
            below: 0,
            caller_db: CALLER_PRIOR_DBFS,
            background: SlowPower::default(),
            gate_background: SlowPower::default(),
            since_foreground: u32::MAX,
            voices: 0.0,
            run_frames: 0,
            run_silero: false,
        }
    }

    /// Silero windows scored so far.
    pub fn neural_windows(&self) -> u64 {
        self.silero.windows
    }

    /// Whether the 160-sample frame is the caller's speech (module docs).
    pub fn is_voiced(&mut self, frame: &[i16]) -> bool {
        let level = hark_codecs::pcm::rms_dbfs(frame).max(-120.0);
        let candidate = self.gate.pass(level);
        // A clean line (the background far below the caller) needs no network.
        let unsure = candidate && !self.clean_line();
        if unsure {
            self.below = 0;
            if !self.running {
                self.running = true;
                self.silero.warm_up();
            }
        } else {
            self.below += 1;
            if self.running && self.below > HANGOVER_FRAMES {
                self.running = false;
                self.silero.idle();
            }
        }
        self.silero.feed(frame, self.running);
        let speech = candidate && self.running && self.silero.speech();
        // webrtc-vad runs on every frame (its noise model adapts), about 1 µs.
        // On a noisy line the fast onset only opens a run of voice: after FAST_ONSET_FRAMES
        // without Silero's agreement (a cough, a knock, a burst of noise) it stops counting.
        let fast = self.webrtc.is_voiced(frame)
            && candidate
            && (!self.running || self.run_silero || self.run_frames < FAST_ONSET_FRAMES);
        let near = (speech || fast) && self.foreground(level);
        self.since_foreground = if near {
            0
        } else {
            self.since_foreground.saturating_add(1)
        };
        // On stationary noise the soft ends of the caller's words sink under the level stage's
        // floor + 3 dB while Silero still hears them: its verdict holds alone there.
        // Cheapest tests first: on a clean line Silero is idle, and the line's levels (a
        // logarithm) are not computed for this.
        let stationary_hold = || {
            self.running
                && self.since_foreground <= STATIONARY_HOLD_FRAMES
                && self.silero.speech()
                && self.voices < STATIONARY_SHARE
                && !self.clean_line()
        };
        // In the hold webrtc-vad counts only where Silero is idle (a clean line) or has agreed
        // in this run: otherwise a cough's or a click's tail (webrtc-vad hears voice in most
        // bursts) carried the run on long enough to barge in.
        let held_fast = fast && (self.run_silero || !self.running);
        let voiced = near
            || ((speech || held_fast) && self.since_foreground <= FOREGROUND_HOLD_FRAMES)
            || stationary_hold();
        if voiced {
            self.run_frames = self.run_frames.saturating_add(1);
            self.run_silero |= speech;
        } else {
            self.run_frames = 0;
            self.run_silero = false;
        }
        if candidate && self.since_foreground > FOREGROUND_HOLD_FRAMES {
            let heard = if speech { 1.0 } else { 0.0 };
            self.voices += (heard - self.voices) / VOICES_FRAMES;
        }
        self.track(level, near, voiced);
        voiced
    }

    /// Whether the background is at least [`CLEAN_LINE_DB`] below the caller: then webrtc-vad
    /// with the level stage and the foreground gate decides alone (about 1 µs a frame).
    fn clean_line(&self) -> bool {
        self.background
            .db()
            .is_some_and(|bg| self.caller_db - bg >= CLEAN_LINE_DB)
    }

    /// The foreground gate's verdict on a frame at `level` dBFS.
    fn foreground(&self, level: f64) -> bool {
        let background = if self.clean_line() {
            &self.background
        } else {
            &self.gate_background
        };
        let Some(bg) = background.db() else {
            return true;
        };
        let keep = ((self.caller_db - bg) / 2.0).clamp(FOREGROUND_MIN_DB, FOREGROUND_MAX_DB);
        level >= self.caller_db - keep
    }

    /// Updates the caller's level with a foreground frame's (`near`), the background's with a
    /// frame not voiced, and the gate's background with any frame not `near` (module docs).
    fn track(&mut self, level: f64, near: bool, voiced: bool) {
        // Slow means (about 3 s, 150 frames) in power, not dB: the gaps of a background
        // conversation must not drag them down.
        let power = 10f64.powf(level / 10.0);
        if !voiced {
            self.background.add(power);
        }
        if !near {
            self.gate_background.add(power);
        }
        let bg = self.background.db().unwrap_or(level);
        if near {
            if level > self.caller_db {
                // Fast attack: the envelope reaches a louder caller within a few frames.
                self.caller_db += 0.3 * (level - self.caller_db);
            } else {
                let release = if self.voices >= VOICES_SHARE {
                    VOICES_CALLER_RELEASE
                } else {
                    CALLER_RELEASE
                };
                self.caller_db -= release * (self.caller_db - level);
            }
        } else {
            // A caller silent for long fades 0.25 dB/s toward the background, never closer than
            // twice the least distance (so the background itself stays outside the gate).
            let least = bg + 2.0 * FOREGROUND_MIN_DB;
            if self.caller_db > least {
                self.caller_db = (self.caller_db - 0.005).max(least);
            }
        }
    }
}

/// A slow running mean of frame power (full scale = 1) over about 150 frames (3 s).
#[derive(Debug, Default)]
struct SlowPower {
    mean: Option<f64>,
}

impl SlowPower {
    fn add(&mut self, power: f64) {
        let mean = self.mean.get_or_insert(power);
        *mean += (power - *mean) / 150.0;
    }

    /// The mean in dBFS, `None` before any frame.
    fn db(&self) -> Option<f64> {
        self.mean.map(|m| 10.0 * m.max(1e-12).log10())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(k: usize, amp: f64) -> Vec<i16> {
        (0..160)
            .map(|i| {
                let t = (k * 160 + i) as f64 / 8000.0;
                let v: f64 = (1..8)
                    .map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (v * amp) as i16
            })
            .collect()
    }

    #[test]
    fn only_a_noisy_line_runs_the_network() {
        let mut v = HybridVad::new(&VadConfig::default());
        let quiet: Vec<i16> = (0..160).map(|i| ((i * 7919) % 17) as i16 - 8).collect();
        for _ in 0..500 {
            assert!(!v.is_voiced(&quiet));
        }
        // Voice on a quiet line: webrtc-vad alone decides.
        let mut voiced = 0;
        for k in 0..50 {
            voiced += v.is_voiced(&tone(k, 6000.0)) as u32;
        }
        assert!(voiced > 30, "voiced {voiced}/50");
        assert_eq!(v.neural_windows(), 0);
        // A loud background (white-ish noise about −31 dBFS) makes the line unsure, but steady
        // noise alone stays near the floor: still no inference.
        let mut x: u32 = 1;
        let mut noise = || -> Vec<i16> {
            (0..160)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((x >> 16) as i16) / 20
                })
                .collect()
        };
        for _ in 0..300 {
            v.is_voiced(&noise());
        }
        assert_eq!(v.neural_windows(), 0);
        // Voice over it: Silero decides.
        for k in 0..50 {
            let f: Vec<i16> = tone(k, 6000.0)
                .iter()
                .zip(noise())
                .map(|(a, b)| a.saturating_add(b))
                .collect();
            v.is_voiced(&f);
        }
        assert!(v.neural_windows() > 0);
    }

    fn at_db(db: f64) -> SlowPower {
        SlowPower {
            mean: Some(10f64.powf(db / 10.0)),
        }
    }

    #[test]
    fn the_foreground_gate_keeps_frames_near_the_callers_level() {
        let mut v = HybridVad::new(&VadConfig::default());
        v.caller_db = -20.0;
        // A clean line (distance 30): keep 15 dB.
        v.background = at_db(-50.0);
        assert!(v.foreground(-34.0));
        assert!(!v.foreground(-36.0));
        // A background close to the caller: the least distance applies.
        v.background = at_db(-24.0);
        v.gate_background = at_db(-24.0);
        assert!(v.foreground(-25.0));
        assert!(!v.foreground(-27.0));
    }

    #[test]
    fn voices_below_the_gate_raise_its_background_even_when_held() {
        let mut v = HybridVad::new(&VadConfig::default());
        v.caller_db = -20.0;
        // A noisy line: its unvoiced frames 25 dB below the caller, so the gate keeps
        // 12.5 dB and a voice at -32 dBFS passes it.
        v.background = at_db(-45.0);
        v.gate_background = at_db(-45.0);
        assert!(v.foreground(-32.0));
        // A background conversation at -32 dBFS: Silero calls it speech and the hold keeps it
        // in the caller's turn (voiced), but it never passes the gate itself.
        for _ in 0..300 {
            v.track(-32.0, false, true);
        }
        let gate_bg = v.gate_background.db().unwrap();
        assert!(gate_bg > -34.0, "gate background {gate_bg:.1} dBFS");
        assert!((v.background.db().unwrap() + 45.0).abs() < 1e-9);
        // So the gate narrows to the least distance: that conversation is outside it.
        assert!(!v.foreground(-32.0));
        // The caller's own frames move the caller's level, not the backgrounds.
        let caller = v.caller_db;
        v.track(-18.0, true, true);
        assert!(v.caller_db > caller);
        assert_eq!(v.gate_background.db().unwrap(), gate_bg);
    }

    #[test]
    fn a_background_of_voices_slows_the_callers_release() {
        let mut v = HybridVad::new(&VadConfig::default());
        v.caller_db = -20.0;
        v.track(-30.0, true, true);
        let fast = -20.0 - v.caller_db;
        v.caller_db = -20.0;
        v.voices = VOICES_SHARE;
        v.track(-30.0, true, true);
        let slow = -20.0 - v.caller_db;
        assert!(
            (fast - 0.1).abs() < 1e-9 && (slow - 0.02).abs() < 1e-9,
            "{fast} {slow}"
        );
    }
}
