//! Silero VAD, 8 kHz branch: a hand-written, pure-Rust forward pass (f32, no dependencies).
//!
//! [`SileroVad::probability`] takes one window of [`WINDOW`] = 256 samples at 8000 Hz (32 ms) and
//! returns the probability in `[0, 1]` that it holds speech, carrying the model's recurrent state
//! (and the last [`CONTEXT`] = 32 samples) from one window to the next, exactly as silero-vad's
//! own `OnnxWrapper.__call__` does for `sr=8000` (`silero_vad/utils_vad.py`).
//!
//! # Model and provenance
//!
//! Silero VAD v6 (snakers4/silero-vad, MIT licence), the `silero_vad.onnx` shipped in the PyPI
//! wheel `silero-vad` 6.2.3. `engine/models/silero/extract.py` copies the weights of the graph's
//! 8 kHz branch (the `else` of its top-level `If(sr == 16000)`) into `silero_vad_8k.bin`, which
//! is compiled in with `include_bytes!` and parsed once per process into a shared weight set.
//! `engine/models/silero/PROVENANCE.md` has the wheel's URL and sha256, the commands and the
//! licence; `golden.py` there made the onnxruntime reference outputs the tests compare against.
//!
//! # The network (as read from the ONNX graph, 8 kHz branch)
//!
//! 1. Input `x`: the 32-sample context then the 256 new samples, 288 samples.
//! 2. `Pad(mode=reflect)` on the right only by 32 samples (PyTorch `F.pad(x, (0, 32),
//!    'reflect')`, the edge sample not repeated): `x[288 + k] = x[286 - k]`, 320 samples.
//! 3. STFT as `Conv1d(1 → 130, kernel 128, stride 64, no padding)` with a fixed basis: rows
//!    0..65 are `hann(n) · cos(2πkn/128)`, rows 65..130 `−hann(n) · sin(2πkn/128)` (periodic
//!    Hann); 4 frames. Magnitude `sqrt(re² + im²)`: `[65 bins, 4 frames]`.
//! 4. Encoder, 4 × (`Conv1d(kernel 3, padding 1)` + ReLU): 65 → 128 (stride 1, 4 frames),
//!    128 → 64 (stride 2, 2 frames), 64 → 64 (stride 2, 1 frame), 64 → 128 (stride 1, 1 frame).
//! 5. `LSTMCell(128, 128)` (PyTorch gate order i, f, g, o; σ, tanh, tanh); state `[h, c]`, which
//!    the ONNX model takes and returns as `state` / `stateN` `[2, 1, 128]`.
//! 6. Decoder: ReLU(h) → `Conv1d(128 → 1, kernel 1)` → sigmoid: the probability.
//!
//! # How it is computed
//!
//! - The STFT basis in the file is exactly symmetric (real rows) and antisymmetric (imaginary
//!   rows) about sample 64 (checked when parsed), so each frame `f` is folded first
//!   (`f[n] ± f[128 − n]`) and multiplied by half the basis: 65 × 65 + 65 × 63 multiply-adds per
//!   frame instead of 130 × 128.
//! - Convolution taps that would read the zero padding are skipped: tap 0 of frame 0 and tap 2
//!   of frame 3 in layer 1, tap 0 of frame 0 in layer 2, tap 0 in layer 3, taps 0 and 2 in
//!   layer 4 (whose single input frame only meets the centre tap).
//! - Every matrix product goes through one kernel ([`Matrix::apply`]): weights in panels of 32
//!   outputs, input-major, so the 32 running sums stay in eight SSE registers and each input
//!   adds 128 contiguous bytes of weights to them. Plain loops the compiler vectorises (no
//!   `unsafe`, no intrinsics, no reordered sums); the frames of a convolution share each panel.
//! - σ and tanh use a polynomial `exp` (Cephes `expf`, relative error ≈ 1e-7) that vectorises,
//!   instead of libm calls.
//!
//! Against onnxruntime 1.32.0 on the fixtures the probabilities differ by at most 2.6e-6
//! (`jfk-8k.ulaw`, 422 windows) and 1.4e-7 (`line-noise-8k.ulaw`, 94 windows); the tests allow
//! 1e-4.
//!
//! # Weight file format (`silero_vad_8k.bin`, little-endian)
//!
//! | field | type | value |
//! |---|---|---|
//! | magic | 8 bytes | `HSVAD8K\0` |
//! | version | u32 | 1 |
//! | count | u32 | number of tensors (15) |
//! | count × manifest entry | u16 name length, UTF-8 name, u8 ndim, ndim × u32 dims | ONNX names and shapes |
//! | data | f32 × Σ dims products | the tensors in manifest order, row-major (ONNX layout) |
//!
//! # Memory and speed
//!
//! A [`SileroVad`] is 1,152 bytes (h, c: 128 f32 each; context: 32 f32). A call of
//! [`SileroVad::probability`] uses about 12 KiB of stack scratch (3,084 f32). The shared
//! weights, parsed on first use, are 226,817 f32 (≈ 0.91 MB; the file holds 235,649, the
//! unfolded STFT basis included). `benches/benches/silero.rs` (`silero/window_256`) measures one
//! window: about 20 µs on a 2-core AMD EPYC (Zen 4) VM, for 32 ms of audio.

use std::sync::LazyLock;

/// Samples per window at 8000 Hz (32 ms): the only length [`SileroVad::probability`] accepts.
pub const WINDOW: usize = 256;
/// Samples of the previous window prepended to each window (4 ms at 8000 Hz), as silero-vad does.
pub const CONTEXT: usize = 32;
/// The sample rate of this branch of the model, in Hz.
pub const SAMPLE_RATE_HZ: u32 = 8000;

/// Hidden size of the LSTM cell.
const HIDDEN: usize = 128;
/// Context + window: the model's input length.
const INPUT: usize = CONTEXT + WINDOW;
/// Right reflect-padding of the STFT input.
const PAD: usize = 32;
const N_FFT: usize = 128;
const HOP: usize = 64;
const HALF: usize = N_FFT / 2;
const BINS: usize = HALF + 1;
const FRAMES: usize = (INPUT + PAD - N_FFT) / HOP + 1;

/// The committed weight file (see the module doc for its format and provenance).
static WEIGHT_FILE: &[u8] = include_bytes!("../../models/silero/silero_vad_8k.bin");

/// The weights, parsed once per process and shared by every [`SileroVad`].
static WEIGHTS: LazyLock<Weights> = LazyLock::new(|| {
    Weights::parse(WEIGHT_FILE).unwrap_or_else(|e| panic!("silero_vad_8k.bin: {e}"))
});

/// One Silero VAD stream (one call leg): the LSTM state and the 32-sample context.
///
/// Cheap to create (1,152 bytes, no allocation; the shared weights are parsed by the first
/// [`SileroVad::new`] of the process). Feed consecutive 256-sample windows of one stream.
#[derive(Clone)]
pub struct SileroVad {
    /// LSTM hidden state `h` (ONNX `state[0, 0, :]`).
    h: [f32; HIDDEN],
    /// LSTM cell state `c` (ONNX `state[1, 0, :]`).
    c: [f32; HIDDEN],
    /// The last [`CONTEXT`] samples of the previous window (zeros before the first).
    context: [f32; CONTEXT],
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").finish_non_exhaustive()
    }
}

impl Default for SileroVad {
    fn default() -> Self {
        Self::new()
    }
}

impl SileroVad {
    /// A stream in its initial state (zero LSTM state, zero context), like silero-vad's
    /// `reset_states()`. The first call in the process parses the shared weights (≈ 1 ms).
    pub fn new() -> Self {
        LazyLock::force(&WEIGHTS);
        SileroVad {
            h: [0.0; HIDDEN],
            c: [0.0; HIDDEN],
            context: [0.0; CONTEXT],
        }
    }

    /// Back to the initial state (zero LSTM state, zero context): the next window is scored as
    /// the first of a new stream.
    pub fn reset(&mut self) {
        self.h = [0.0; HIDDEN];
        self.c = [0.0; HIDDEN];
        self.context = [0.0; CONTEXT];
    }

    /// Speech probability in `[0, 1]` of one window of [`WINDOW`] = 256 samples at 8000 Hz
    /// (32 ms), samples as f32 in `[-1, 1]` (i16 / 32768), the next 256 samples of the stream.
    ///
    /// Updates the LSTM state and the context. A window of any other length is not scored: the
    /// result is `0.0` and the state is left unchanged (no panic). Non-finite samples do not
    /// panic either; their score is meaningless and may spoil the state until [`Self::reset`].
    pub fn probability(&mut self, window: &[f32]) -> f32 {
        let Ok(window) = <&[f32; WINDOW]>::try_from(window) else {
            return 0.0;
        };
        forward(&WEIGHTS, self, window)
    }

    /// [`SileroVad::probability`] for 16-bit PCM: each sample is divided by 32768. A window of
    /// a length other than [`WINDOW`] gives `0.0` and leaves the state unchanged.
    pub fn probability_i16(&mut self, window: &[i16]) -> f32 {
        let Ok(window) = <&[i16; WINDOW]>::try_from(window) else {
            return 0.0;
        };
        let samples: [f32; WINDOW] = window.map(|s| f32::from(s) / 32768.0);
        forward(&WEIGHTS, self, &samples)
    }
}

/// One `Conv1d(kernel 3, padding 1)` layer followed by ReLU.
struct Conv {
    c_in: usize,
    c_out: usize,
    stride: usize,
    /// One `c_out × c_in` matrix per tap: tap `k` multiplies input frame `t·stride + k − 1`.
    taps: [Matrix; 3],
    /// `[c_out]`.
    b: Vec<f32>,
}

impl Conv {
    /// From ONNX `weight [c_out, c_in, 3]` and `bias [c_out]`.
    fn new(w: &[f32], b: Vec<f32>, c_out: usize, c_in: usize, stride: usize) -> Self {
        let tap = |k: usize| Matrix::new(c_out, c_in, |o, i| w[(o * c_in + i) * 3 + k]);
        let taps = [tap(0), tap(1), tap(2)];
        Conv {
            c_in,
            c_out,
            stride,
            taps,
            b,
        }
    }

    /// Output frames for `t_in` input frames.
    fn t_out(&self, t_in: usize) -> usize {
        (t_in - 1) / self.stride + 1
    }

    /// `x`: time-major `[t_in][c_in]`; writes ReLU(conv(x)) time-major `[t_out][c_out]` into
    /// `y`. Taps that fall on the zero padding are skipped.
    fn forward(&self, x: &[f32], t_in: usize, y: &mut [f32]) {
        let (c_in, c_out, s) = (self.c_in, self.c_out, self.stride);
        let t_out = self.t_out(t_in);
        for out in y[..t_out * c_out].chunks_exact_mut(c_out) {
            out.copy_from_slice(&self.b);
        }
        for k in 0..3 {
            // Output frame t reads input frame t·s + k − 1 through tap k: the frames
            // [first, end) of the output keep it inside [0, t_in).
            let first = usize::from(k == 0);
            let Some(end) = (t_in + 1).checked_sub(k).map(|n| n.div_ceil(s).min(t_out)) else {
                continue;
            };
            if first >= end {
                continue;
            }
            let x0 = (first * s + k - 1) * c_in;
            self.taps[k].apply(&x[x0..], s * c_in, &mut y[first * c_out..end * c_out]);
        }
        for o in &mut y[..t_out * c_out] {
            *o = o.max(0.0);
        }
    }
}

/// The 8 kHz branch's weights, laid out for the forward pass.
struct Weights {
    /// STFT basis, real rows, folded: `65 bins × 65 samples n = 0..=64`, applied to
    /// `f[n] + f[128 − n]` (`f[0]` and `f[64]` alone).
    stft_re: Matrix,
    /// STFT basis, imaginary rows, folded: `65 bins × 63 samples n = 1..=63`, applied to
    /// `f[n] − f[128 − n]`.
    stft_im: Matrix,
    encoder: [Conv; 4],
    /// LSTM `512 gates × 256 inputs`: inputs 0..128 are `W_ih` (the encoder output), 128..256
    /// `W_hh` (h); gates i, f, g, o × 128 (PyTorch order).
    lstm: Matrix,
    /// `b_ih + b_hh`, `[512]`.
    lstm_b: Vec<f32>,
    /// Decoder `Conv1d(128 → 1, kernel 1)` weight `[128]` and bias.
    dec_w: Vec<f32>,
    dec_b: f32,
}

/// The tensors of the file, in order, with their shapes (as `extract.py` writes them).
const MANIFEST: [(&str, &[usize]); 15] = [
    ("stft.forward_basis_buffer", &[130, 1, 128]),
    ("encoder.0.reparam_conv.weight", &[128, 65, 3]),
    ("encoder.0.reparam_conv.bias", &[128]),
    ("encoder.1.reparam_conv.weight", &[64, 128, 3]),
    ("encoder.1.reparam_conv.bias", &[64]),
    ("encoder.2.reparam_conv.weight", &[64, 64, 3]),
    ("encoder.2.reparam_conv.bias", &[64]),
    ("encoder.3.reparam_conv.weight", &[128, 64, 3]),
    ("encoder.3.reparam_conv.bias", &[128]),
    ("decoder.rnn.weight_ih", &[512, 128]),
    ("decoder.rnn.weight_hh", &[512, 128]),
    ("decoder.rnn.bias_ih", &[512]),
    ("decoder.rnn.bias_hh", &[512]),
    ("decoder.decoder.2.weight", &[1, 128, 1]),
    ("decoder.decoder.2.bias", &[1]),
];

/// A little-endian cursor over the weight file.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl Weights {
    /// Parses the weight file and checks every name and shape against [`MANIFEST`].
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes };
        if r.take(8)? != b"HSVAD8K\0" {
            return Err("bad magic".into());
        }
        let (version, count) = (r.u32()?, r.u32()?);
        if version != 1 || count as usize != MANIFEST.len() {
            return Err(format!(
                "version {version}, {count} tensors: expected 1, 15"
            ));
        }
        for (name, dims) in MANIFEST {
            let len = r.take(2)?;
            let got = r.take(usize::from(u16::from_le_bytes([len[0], len[1]])))?;
            let ndim = r.take(1)?[0];
            let got_dims = (0..ndim)
                .map(|_| r.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            if got != name.as_bytes() || got_dims != dims {
                return Err(format!(
                    "expected {name} {dims:?}, found {}",
                    String::from_utf8_lossy(got)
                ));
            }
        }
        let mut tensors = Vec::with_capacity(MANIFEST.len());
        for (_, dims) in MANIFEST {
            let raw = r.take(4 * dims.iter().product::<usize>())?;
            let (words, _) = raw.as_chunks::<4>();
            tensors.push(
                words
                    .iter()
                    .map(|w| f32::from_le_bytes(*w))
                    .collect::<Vec<f32>>(),
            );
        }
        if !r.bytes.is_empty() {
            return Err(format!("{} trailing bytes", r.bytes.len()));
        }
        let mut t = tensors.into_iter();
        let mut next = || t.next().unwrap_or_default();
        let (stft_re, stft_im) = fold_basis(&next())?;
        let mut encoder = Vec::with_capacity(4);
        for (c_out, c_in, stride) in [(128, 65, 1), (64, 128, 2), (64, 64, 2), (128, 64, 1)] {
            let w = next();
            encoder.push(Conv::new(&w, next(), c_out, c_in, stride));
        }
        let (w_ih, w_hh, b_ih, b_hh) = (next(), next(), next(), next());
        let lstm = Matrix::new(4 * HIDDEN, 2 * HIDDEN, |o, i| match i.checked_sub(HIDDEN) {
            None => w_ih[o * HIDDEN + i],
            Some(i) => w_hh[o * HIDDEN + i],
        });
        let lstm_b = b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect();
        let (dec_w, dec_b) = (next(), next()[0]);
        let encoder = encoder
            .try_into()
            .map_err(|_| "encoder layers".to_string())?;
        Ok(Weights {
            stft_re,
            stft_im,
            encoder,
            lstm,
            lstm_b,
            dec_w,
            dec_b,
        })
    }
}

/// Splits the STFT basis `[130][128]` (rows 0..65 real, 65..130 imaginary) into its folded
/// halves (see [`Weights::stft_re`]), after checking the symmetry that folding relies on:
/// `re[k][n] = re[k][128 − n]`, `im[k][n] = −im[k][128 − n]`, `im[k][0] = im[k][64] = 0`
/// (exactly, as the periodic-Hann DFT basis in the file is).
fn fold_basis(basis: &[f32]) -> Result<(Matrix, Matrix), String> {
    let (re, im) = basis.split_at(BINS * N_FFT);
    for (k, (re, im)) in re
        .chunks_exact(N_FFT)
        .zip(im.chunks_exact(N_FFT))
        .enumerate()
    {
        let symmetric = (1..HALF).all(|n| re[n] == re[N_FFT - n] && im[n] == -im[N_FFT - n]);
        if !symmetric || im[0] != 0.0 || im[HALF] != 0.0 {
            return Err(format!("STFT basis row {k} is not a real DFT row"));
        }
    }
    let folded_re = Matrix::new(BINS, BINS, |k, n| re[k * N_FFT + n]);
    let folded_im = Matrix::new(BINS, HALF - 1, |k, n| im[k * N_FFT + n + 1]);
    Ok((folded_re, folded_im))
}

/// Outputs per panel of a [`Matrix`]: 32 f32 sums, eight SSE registers.
const PANEL: usize = 32;

/// A dense `n_out × n_in` weight matrix laid out for [`Matrix::apply`]: the first
/// `n_out / PANEL · PANEL` outputs in panels of [`PANEL`] outputs, each panel input-major
/// `[n_in][PANEL]` (one input's 32 weights are 128 contiguous bytes, a panel one contiguous
/// run), then the other `n_out % PANEL` outputs row-major `[n_in]` each.
struct Matrix {
    n_in: usize,
    n_out: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// From the elements `w(o, i)` of an `n_out × n_in` matrix.
    fn new(n_out: usize, n_in: usize, w: impl Fn(usize, usize) -> f32) -> Self {
        let full = n_out / PANEL * PANEL;
        let mut data = Vec::with_capacity(n_out * n_in);
        for p in (0..full).step_by(PANEL) {
            data.extend(
                (0..n_in)
                    .flat_map(|i| (p..p + PANEL).map(move |o| (o, i)))
                    .map(|(o, i)| w(o, i)),
            );
        }
        data.extend(
            (full..n_out)
                .flat_map(|o| (0..n_in).map(move |i| (o, i)))
                .map(|(o, i)| w(o, i)),
        );
        Matrix { n_in, n_out, data }
    }

    /// `out[r·n_out + o] += Σ_i W[o][i] · x[r·x_stride + i]` for every row `r` of `out`
    /// (`out.len() / n_out` rows; `x` holds each row's `n_in` inputs at stride `x_stride`).
    ///
    /// A panel's 32 sums stay in registers across all inputs and run in input order, as a
    /// plain dot product would (no reassociation, so it vectorises without fast-math): the
    /// inner loop is eight vector multiplies and adds on 128 contiguous bytes of weights.
    /// Further rows reuse a panel while it is in L1.
    fn apply(&self, x: &[f32], x_stride: usize, out: &mut [f32]) {
        let (n_in, n_out) = (self.n_in, self.n_out);
        let full = n_out / PANEL * PANEL;
        let (panels, rest) = self.data.split_at(full * n_in);
        for (p, panel) in panels.chunks_exact(PANEL * n_in).enumerate() {
            let (cols, _) = panel.as_chunks::<PANEL>();
            for (r, row) in out.chunks_exact_mut(n_out).enumerate() {
                let xr = &x[r * x_stride..][..n_in];
                let Some(sums) = row[p * PANEL..].first_chunk_mut::<PANEL>() else {
                    continue;
                };
                let mut acc = *sums;
                for (w, xi) in cols.iter().zip(xr) {
                    for (a, w) in acc.iter_mut().zip(w) {
                        *a += w * xi;
                    }
                }
                *sums = acc;
            }
        }
        for (o, w) in (full..n_out).zip(rest.chunks_exact(n_in)) {
            for (r, row) in out.chunks_exact_mut(n_out).enumerate() {
                let xr = &x[r * x_stride..][..n_in];
                row[o] += w.iter().zip(xr).map(|(w, x)| w * x).sum::<f32>();
            }
        }
    }
}

/// `e^x` without a libm call, so that loops over it vectorise: Cody–Waite reduction
/// `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, then Cephes' `expf` polynomial for `e^r` (relative error
/// about 1e-7) scaled by `2^n` through the exponent bits. `x` is clamped to `[-86, 88]`, where
/// `2^n` stays a normal number (`e^-86 ≈ 4e-38`, `e^88 ≈ 1.7e38`).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    /// 1.5 · 2^23: adding it rounds an f32 below 2^22 to an integer, held in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-86.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // Wrapping: a NaN input yields NaN bits here, never an overflow panic.
    let scale = (t.to_bits() as i32).wrapping_sub(0x4B40_0000) << 23;
    f32::from_bits((e.to_bits() as i32).wrapping_add(scale) as u32)
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh x = 2·sigmoid(2x) − 1` (absolute error about 1e-7).
#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// One window through the network; updates `vad`'s state and context.
fn forward(w: &Weights, vad: &mut SileroVad, window: &[f32; WINDOW]) -> f32 {
    // Context + window, reflect-padded on the right by 32.
    let mut x = [0.0f32; INPUT + PAD];
    x[..CONTEXT].copy_from_slice(&vad.context);
    x[CONTEXT..INPUT].copy_from_slice(window);
    for k in 0..PAD {
        x[INPUT + k] = x[INPUT - 2 - k];
    }
    vad.context.copy_from_slice(&window[WINDOW - CONTEXT..]);

    // STFT magnitude, time-major [4 frames][65 bins].
    // The basis is symmetric (real rows) and antisymmetric (imaginary rows) about n = 64, so
    // each frame f is folded first: sums f[n] + f[128 − n] and differences f[n] − f[128 − n].
    let mut sums = [0.0f32; FRAMES * BINS];
    let mut diffs = [0.0f32; FRAMES * (HALF - 1)];
    let folds = sums
        .chunks_exact_mut(BINS)
        .zip(diffs.chunks_exact_mut(HALF - 1));
    for (t, (sum, diff)) in folds.enumerate() {
        let f = &x[t * HOP..t * HOP + N_FFT];
        let (low, high) = (&f[1..HALF], &f[HALF + 1..]);
        for ((s, d), (a, b)) in sum[1..HALF]
            .iter_mut()
            .zip(diff)
            .zip(low.iter().zip(high.iter().rev()))
        {
            (*s, *d) = (a + b, a - b);
        }
        (sum[0], sum[HALF]) = (f[0], f[HALF]);
    }
    let mut re = [0.0f32; FRAMES * BINS];
    let mut im = [0.0f32; FRAMES * BINS];
    w.stft_re.apply(&sums, BINS, &mut re);
    w.stft_im.apply(&diffs, HALF - 1, &mut im);
    let mut mag = [0.0f32; FRAMES * BINS];
    for ((m, re), im) in mag.iter_mut().zip(&re).zip(&im) {
        *m = (re * re + im * im).sqrt();
    }

    // Encoder: [4][128] → [2][64] → [1][64] → [1][128], time-major.
    let [e0, e1, e2, e3] = &w.encoder;
    let mut a0 = [0.0f32; 4 * 128];
    let mut a1 = [0.0f32; 2 * 64];
    let mut a2 = [0.0f32; 64];
    // LSTM input: [encoder output | h].
    let mut z = [0.0f32; 2 * HIDDEN];
    e0.forward(&mag, FRAMES, &mut a0);
    e1.forward(&a0, 4, &mut a1);
    e2.forward(&a1, 2, &mut a2);
    e3.forward(&a2, 1, &mut z[..HIDDEN]);
    z[HIDDEN..].copy_from_slice(&vad.h);

    // LSTM cell.
    let mut g = [0.0f32; 4 * HIDDEN];
    g.copy_from_slice(&w.lstm_b);
    w.lstm.apply(&z, 0, &mut g);
    let (gi, rest) = g.split_at(HIDDEN);
    let (gf, rest) = rest.split_at(HIDDEN);
    let (gg, go) = rest.split_at(HIDDEN);
    let cells = vad.c.iter_mut().zip(&mut vad.h);
    let gates = gi.iter().zip(gf).zip(gg.iter().zip(go));
    for ((c, h), ((i, f), (g, o))) in cells.zip(gates) {
        *c = sigmoid(*f) * *c + sigmoid(*i) * tanh(*g);
        *h = sigmoid(*o) * tanh(*c);
    }

    // Decoder.
    let logit = vad
        .h
        .iter()
        .zip(&w.dec_w)
        .map(|(h, w)| h.max(0.0) * w)
        .sum::<f32>()
        + w.dec_b;
    sigmoid(logit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest tolerated |Rust − onnxruntime| per window.
    const TOLERANCE: f32 = 1e-4;

    fn read(rel: &str) -> Vec<u8> {
        let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A fixture (`fixtures/audio/*.ulaw`, μ-law 8 kHz) as f32 samples, zero-padded to whole
    /// windows like silero-vad's `audio_forward`.
    fn audio(name: &str) -> Vec<f32> {
        let codes = read(&format!("../fixtures/audio/{name}"));
        let mut pcm = vec![0i16; codes.len()];
        hark_codecs::mulaw::decode(&codes, &mut pcm);
        let mut samples: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
        samples.resize(samples.len().div_ceil(WINDOW) * WINDOW, 0.0);
        samples
    }

    /// The onnxruntime reference probabilities (`engine/models/silero/golden.py`).
    fn golden(name: &str) -> Vec<f32> {
        let bytes = read(&format!("models/silero/{name}"));
        bytes
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect()
    }

    fn run(vad: &mut SileroVad, samples: &[f32]) -> Vec<f32> {
        samples
            .chunks_exact(WINDOW)
            .map(|w| vad.probability(w))
            .collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn weight_file_parses() {
        let w = &*WEIGHTS;
        assert_eq!(WEIGHT_FILE.len(), 943_148);
        assert_eq!(w.stft_re.data.len(), 65 * 65);
        assert_eq!(w.stft_im.data.len(), 63 * 65);
        assert_eq!(w.lstm.data.len(), 512 * 256);
        let convs: usize = w
            .encoder
            .iter()
            .map(|c| c.b.len() + c.taps.iter().map(|t| t.data.len()).sum::<usize>())
            .sum();
        let dense = [&w.stft_re, &w.stft_im, &w.lstm]
            .map(|m| m.data.len())
            .iter()
            .sum::<usize>();
        assert_eq!(convs + dense + w.lstm_b.len() + w.dec_w.len() + 1, 226_817);
        assert_eq!(std::mem::size_of::<SileroVad>(), 1152);
        assert!(Weights::parse(&WEIGHT_FILE[..WEIGHT_FILE.len() - 4]).is_err());
        assert!(Weights::parse(b"HSVAD8K\0").is_err());
    }

    #[test]
    fn jfk_matches_onnxruntime() {
        let got = run(&mut SileroVad::new(), &audio("jfk-8k.ulaw"));
        let want = golden("golden_jfk_8k.f32");
        assert_eq!(got.len(), 422);
        let diff = max_diff(&got, &want);
        eprintln!(
            "jfk: {} windows, max |diff| vs onnxruntime = {diff:e}",
            got.len()
        );
        assert!(diff <= TOLERANCE, "max |diff| {diff}");
    }

    #[test]
    fn line_noise_matches_onnxruntime() {
        let got = run(&mut SileroVad::new(), &audio("line-noise-8k.ulaw"));
        let want = golden("golden_line_noise_8k.f32");
        assert_eq!(got.len(), 94);
        let diff = max_diff(&got, &want);
        eprintln!(
            "line noise: {} windows, max |diff| vs onnxruntime = {diff:e}",
            got.len()
        );
        assert!(diff <= TOLERANCE, "max |diff| {diff}");
    }

    /// Windows whose centre lies in a speech run of `jfk.wav` (fixtures/README.md, energy
    /// analysis; shifted by the 500 ms of line noise in front) are speech; the 500 ms of noise
    /// before and the 2 s after JFK are not.
    #[test]
    fn speech_is_speech_and_noise_is_not() {
        const RUNS_MS: [(usize, usize); 10] = [
            (330, 550),
            (680, 1260),
            (1360, 2110),
            (3290, 3660),
            (4010, 4290),
            (5410, 5850),
            (5970, 7530),
            (8190, 8490),
            (8640, 8760),
            (8910, 10210),
        ];
        let p = run(&mut SileroVad::new(), &audio("jfk-8k.ulaw"));
        let ms = |i: usize| i * 32; // window start, ms
        let speech: Vec<f32> = (0..p.len())
            .filter(|&i| {
                RUNS_MS
                    .iter()
                    .any(|&(a, b)| (a + 500..b + 500).contains(&(ms(i) + 16)))
            })
            .map(|i| p[i])
            .collect();
        let quiet: Vec<f32> = (0..p.len())
            .filter(|&i| ms(i) + 32 <= 500 || ms(i) >= 11_500)
            .map(|i| p[i])
            .collect();
        let noise = run(&mut SileroVad::new(), &audio("line-noise-8k.ulaw"));
        let high = speech.iter().filter(|&&p| p > 0.5).count();
        let low = quiet.iter().chain(&noise).filter(|&&p| p < 0.5).count();
        eprintln!("speech windows > 0.5: {high}/{}", speech.len());
        eprintln!("noise windows < 0.5: {low}/{}", quiet.len() + noise.len());
        assert_eq!((speech.len(), quiet.len() + noise.len()), (185, 171));
        assert!(high * 10 >= speech.len() * 9, "{high}/{}", speech.len());
        assert_eq!(low, quiet.len() + noise.len());
    }

    #[test]
    fn reset_restores_the_initial_state() {
        let samples = audio("jfk-8k.ulaw");
        let fresh = run(&mut SileroVad::new(), &samples[..40 * WINDOW]);
        let mut vad = SileroVad::new();
        run(&mut vad, &samples[100 * WINDOW..150 * WINDOW]);
        assert_ne!(run(&mut vad.clone(), &samples[..40 * WINDOW]), fresh);
        vad.reset();
        assert_eq!(run(&mut vad, &samples[..40 * WINDOW]), fresh);
    }

    #[test]
    fn wrong_length_scores_zero_and_keeps_state() {
        let samples = audio("jfk-8k.ulaw");
        let mut want = SileroVad::new();
        let mut vad = SileroVad::new();
        run(&mut want, &samples[..60 * WINDOW]);
        run(&mut vad, &samples[..60 * WINDOW]);
        for bad in [0, 1, WINDOW - 1, WINDOW + 1, 512] {
            assert_eq!(vad.probability(&samples[..bad]), 0.0);
            assert_eq!(vad.probability_i16(&vec![1000; bad]), 0.0);
        }
        assert_eq!(
            run(&mut vad, &samples[60 * WINDOW..80 * WINDOW]),
            run(&mut want, &samples[60 * WINDOW..80 * WINDOW])
        );
    }

    #[test]
    fn non_finite_samples_do_not_panic() {
        let mut vad = SileroVad::new();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30] {
            let p = vad.probability(&[bad; WINDOW]);
            assert!((0.0..=1.0).contains(&p), "{bad}: {p}");
        }
        vad.reset();
        let samples = audio("jfk-8k.ulaw");
        let fresh = run(&mut SileroVad::new(), &samples[..20 * WINDOW]);
        assert_eq!(run(&mut vad, &samples[..20 * WINDOW]), fresh);
    }

    #[test]
    fn i16_input_is_scaled_by_32768() {
        let codes = read("../fixtures/audio/jfk-8k.ulaw");
        let mut pcm = vec![0i16; 40 * WINDOW];
        hark_codecs::mulaw::decode(&codes[4000..], &mut pcm);
        let (mut a, mut b) = (SileroVad::new(), SileroVad::new());
        for w in pcm.chunks_exact(WINDOW) {
            let f: Vec<f32> = w.iter().map(|&s| f32::from(s) / 32768.0).collect();
            assert_eq!(a.probability_i16(w), b.probability(&f));
        }
    }
}
