//! Whisper log-mel features as pipecat 1.14.0 computes them for Smart Turn v3
//! (`engine/models/smart_turn/features.py` and `features_pipecat.py`).
//!
//! The last 8 s of 16 kHz audio, zero-padded at the start to 128,000 samples; normalised to zero
//! mean and unit variance (f32, variance + 1e-7); reflect-padded by 200 samples on each side;
//! 801 frames of 400 samples every 160 (periodic Hann, real FFT, power |X|²); 80 Slaney mel
//! filters over 0–8 kHz (area-normalised); `log10(max(1e-10, ·))`; the last frame dropped; each
//! value clamped below at (global max − 8); then `(x + 4) / 4`. Everything after the
//! normalisation runs in f64, as the numpy reference does.

use std::f64::consts::PI;
use std::sync::{Arc, OnceLock};

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Input sample rate in Hz.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples the model sees: the last 8 s at 16 kHz.
pub const SAMPLES: usize = SAMPLE_RATE * 8;
/// Mel bands (rows of the feature matrix).
pub const N_MELS: usize = 80;
/// Frames (columns of the feature matrix): one per 10 ms.
pub const N_FRAMES: usize = 800;

const N_FFT: usize = 400;
const HOP: usize = 160;
const N_BINS: usize = N_FFT / 2 + 1;
const PAD: usize = N_FFT / 2;
const MEL_FLOOR: f64 = 1e-10;
const NORM_EPS: f32 = 1e-7;

/// One triangular mel filter: its non-zero weights over FFT bins `first..first + weights.len()`.
struct Filter {
    first: usize,
    weights: Vec<f64>,
}

/// What every call shares: the window, the filterbank and the FFT plan.
struct Tables {
    window: [f64; N_FFT],
    filters: Vec<Filter>,
    fft: Arc<dyn RealToComplex<f64>>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut window = [0.0; N_FFT];
        for (n, w) in window.iter_mut().enumerate() {
            // np.hanning(401)[:-1]: 0.5 − 0.5 cos(2πn / 400).
            *w = 0.5 - 0.5 * (2.0 * PI * n as f64 / N_FFT as f64).cos();
        }
        Tables {
            window,
            filters: mel_filters(),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
        }
    })
}

fn hz_to_mel(f: f64) -> f64 {
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (m - 15.0)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// `_build_mel_filterbank(201, 80, 0, 8000, 16000)`, stored sparsely.
fn mel_filters() -> Vec<Filter> {
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    // np.linspace(lo, hi, 82): i * step + lo, the last one exactly `hi`.
    let step = (hi - lo) / (N_MELS + 1) as f64;
    let edges: Vec<f64> = (0..N_MELS + 2)
        .map(|i| {
            mel_to_hz(if i == N_MELS + 1 {
                hi
            } else {
                i as f64 * step + lo
            })
        })
        .collect();
    // np.linspace(0, 8000, 201): k * 40 Hz.
    let bin_hz = (SAMPLE_RATE / 2) as f64 / (N_BINS - 1) as f64;
    let fft_freq = |k: usize| k as f64 * bin_hz;
    (0..N_MELS)
        .map(|m| {
            let enorm = 2.0 / (edges[m + 2] - edges[m]);
            let weight = |k: usize| {
                let f = fft_freq(k);
                let down = -(edges[m] - f) / (edges[m + 1] - edges[m]);
                let up = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1]);
                down.min(up).max(0.0) * enorm
            };
            let first = (0..N_BINS).find(|&k| weight(k) > 0.0).unwrap_or(0);
            let last = (0..N_BINS).rev().find(|&k| weight(k) > 0.0).unwrap_or(0);
            Filter {
                first,
                weights: (first..=last.max(first)).map(weight).collect(),
            }
        })
        .collect()
}

/// The 128,000 samples the model sees, normalised: the last 8 s of `audio`, zero-padded at the
/// start, then `(x − mean) / sqrt(var + 1e-7)` in f32 (mean and variance accumulated in f64).
fn normalised(audio: &[f32]) -> Vec<f32> {
    let tail = &audio[audio.len().saturating_sub(SAMPLES)..];
    let mut x = vec![0.0f32; SAMPLES];
    x[SAMPLES - tail.len()..].copy_from_slice(tail);
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / SAMPLES as f64;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / SAMPLES as f64;
    let (mean, std) = (mean as f32, (var as f32 + NORM_EPS).sqrt());
    for v in &mut x {
        *v = (*v - mean) / std;
    }
    x
}

/// Whisper log-mel features of the last 8 s of 16 kHz audio (`audio_16k`: f32 samples in
/// [-1, 1], any length; shorter input is zero-padded at the start), exactly as pipecat 1.14.0
/// computes them for Smart Turn v3: 80 × 800 f32, mel-major (`[mel][frame]`, row-major), values
/// roughly in [-1, 1.5].
pub fn log_mel(audio_16k: &[f32]) -> Vec<f32> {
    let t = tables();
    let x = normalised(audio_16k);
    // Reflect padding (numpy "reflect": the edge sample is not repeated).
    let mut padded = vec![0.0f64; SAMPLES + 2 * PAD];
    for (i, p) in padded.iter_mut().enumerate() {
        let j = i as isize - PAD as isize;
        let j = if j < 0 {
            -j
        } else if j >= SAMPLES as isize {
            2 * (SAMPLES as isize - 1) - j
        } else {
            j
        };
        *p = f64::from(x[j as usize]);
    }
    let mut frame = t.fft.make_input_vec();
    let mut spectrum = t.fft.make_output_vec();
    let mut scratch = t.fft.make_scratch_vec();
    let mut power = [0.0f64; N_BINS];
    let mut mel = vec![0.0f64; N_MELS * N_FRAMES];
    for f in 0..N_FRAMES {
        let start = f * HOP;
        for ((d, &s), &w) in frame
            .iter_mut()
            .zip(&padded[start..start + N_FFT])
            .zip(&t.window)
        {
            *d = s * w;
        }
        // Lengths are the plan's own; the FFT cannot fail on them.
        if t.fft
            .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
            .is_err()
        {
            spectrum.fill(Complex::new(0.0, 0.0));
        }
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.norm_sqr();
        }
        for (m, filt) in t.filters.iter().enumerate() {
            let bins = &power[filt.first..filt.first + filt.weights.len()];
            let e: f64 = bins.iter().zip(&filt.weights).map(|(p, w)| p * w).sum();
            mel[m * N_FRAMES + f] = e.max(MEL_FLOOR).log10();
        }
    }
    let floor = mel.iter().copied().fold(f64::NEG_INFINITY, f64::max) - 8.0;
    mel.iter()
        .map(|&v| ((v.max(floor) + 4.0) / 4.0) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_the_dense_definition() {
        // Every filter is a non-empty triangle inside the 201 bins; area normalisation makes the
        // lowest filters the tallest.
        let f = mel_filters();
        assert_eq!(f.len(), N_MELS);
        for filt in &f {
            assert!(!filt.weights.is_empty());
            assert!(filt.first + filt.weights.len() <= N_BINS);
        }
        let peak = |i: usize| f[i].weights.iter().copied().fold(0.0, f64::max);
        assert!(peak(0) > peak(79));
    }

    #[test]
    fn silence_is_flat() {
        let m = log_mel(&[]);
        assert_eq!(m.len(), N_MELS * N_FRAMES);
        // All zeros: every value is log10(1e-10) = -10, the max is -10, so (−10 + 4) / 4.
        assert!(m.iter().all(|&v| (v - -1.5).abs() < 1e-6));
    }
}
