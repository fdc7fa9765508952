//! The Smart Turn v3.2 network: its weight file and its f32 forward pass.
//!
//! Whisper-Tiny's encoder (conv 80→384 k3 + GELU, conv 384→384 k3 stride 2 + GELU, + 400×384
//! learned positions, four pre-LN transformer layers of width 384 with 6 heads of 64 and an MLP
//! of 1536, a final LayerNorm), attention pooling over the 400 steps (384→256 tanh →1, softmax
//! over time) and a classifier (384→256, LayerNorm, GELU, →64, GELU, →1, sigmoid). The numpy
//! reference is `forward()` in `engine/models/smart_turn/extract.py`; this is the same
//! computation on dequantised f32 weights, with no activation quantisation.
//!
//! Weight file (little-endian, written by `extract.py`): `b"HSTW"`, u32 version = 1, u32 tensor
//! count, then per tensor: u16 name length, the ASCII name, u8 kind (0 = f32, 1 = int8 with one
//! f32 scale per output column), u8 rank, u32 dims[rank], for kind 1 f32 scales[dims[-1]], then
//! the row-major data (f32 or i8). Linear and convolution weights are `[inputs, outputs]` (a
//! convolution's inputs are `in_channels * 3`, index `c * 3 + k`), so `y = x · W + b`.

use std::collections::HashMap;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, Axis, Slice};

use super::mel::{N_FRAMES, N_MELS};
use crate::Error;
use crate::vad::silero::exp;

const WIDTH: usize = 384;
const HEADS: usize = 6;
const HEAD: usize = WIDTH / HEADS;
const STEPS: usize = N_FRAMES / 2;
const LAYERS: usize = 4;
const MLP: usize = 1536;
const LN_EPS: f32 = 1e-5;

/// A parsed tensor: shape and dequantised f32 data, row-major.
struct Tensor {
    dims: Vec<usize>,
    data: Vec<f32>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Model(format!("smart_turn_v3_2.bin: {what}"))
}

/// A cursor over the weight file that fails instead of reading past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt(format!("truncated at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, Error> {
        let b = self.take(
            n.checked_mul(4)
                .ok_or_else(|| corrupt("tensor too large"))?,
        )?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Every tensor of a weight file by name, dequantised.
///
/// # Errors
/// [`Error::Model`] on a bad magic or version, a truncated file, an unknown tensor kind, a
/// duplicate name, or bytes left over after the last tensor.
fn parse(bytes: &[u8]) -> Result<HashMap<String, Tensor>, Error> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != b"HSTW" {
        return Err(corrupt("not an HSTW file"));
    }
    let version = r.u32()?;
    if version != 1 {
        return Err(corrupt(format!("version {version}, expected 1")));
    }
    let count = r.u32()?;
    let mut out = HashMap::new();
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let name = String::from_utf8_lossy(r.take(len)?).into_owned();
        let kind = r.u8()?;
        let rank = usize::from(r.u8()?);
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            dims.push(r.u32()? as usize);
        }
        let size = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= bytes.len())
            .ok_or_else(|| corrupt(format!("{name}: dims {dims:?} too large")))?;
        let data = match kind {
            0 => r.f32s(size)?,
            1 => {
                let cols = *dims.last().unwrap_or(&1);
                let scales = r.f32s(cols)?;
                let q = r.take(size)?;
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| f32::from(v as i8) * scales[i % cols.max(1)])
                    .collect()
            }
            k => return Err(corrupt(format!("{name}: unknown tensor kind {k}"))),
        };
        if out.insert(name.clone(), Tensor { dims, data }).is_some() {
            return Err(corrupt(format!("{name}: twice")));
        }
    }
    if r.at != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the last tensor",
            bytes.len() - r.at
        )));
    }
    Ok(out)
}

/// `y = x · w + b`, `w` as `[inputs, outputs]`.
struct Linear {
    w: Array2<f32>,
    b: Array1<f32>,
}

struct Norm {
    w: Array1<f32>,
    b: Array1<f32>,
}

struct Layer {
    attn_ln: Norm,
    /// q, k, v side by side (`[384, 1152]`); q pre-scaled by 1/√64 = 1/8 (exact in binary), and
    /// k's absent bias is zero.
    qkv: Linear,
    o: Linear,
    ffn_ln: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// The whole network's weights, f32.
pub(crate) struct Network {
    conv1: Linear,
    conv2: Linear,
    pos: Array2<f32>,
    layers: Vec<Layer>,
    ln: Norm,
    pool0: Linear,
    pool2: Linear,
    cls0: Linear,
    cls_ln: Norm,
    cls4: Linear,
    cls6: Linear,
}

/// Takes tensors out of a parsed file, checking each one's shape.
struct Tensors(HashMap<String, Tensor>);

impl Tensors {
    fn take(&mut self, name: &str, dims: &[usize]) -> Result<Vec<f32>, Error> {
        let t = self
            .0
            .remove(name)
            .ok_or_else(|| corrupt(format!("no tensor {name}")))?;
        if t.dims != dims {
            return Err(corrupt(format!("{name}: {:?}, expected {dims:?}", t.dims)));
        }
        Ok(t.data)
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, Error> {
        let data = self.take(name, &[rows, cols])?;
        Array2::from_shape_vec((rows, cols), data).map_err(corrupt)
    }

    fn vector(&mut self, name: &str, n: usize) -> Result<Array1<f32>, Error> {
        Ok(Array1::from(self.take(name, &[n])?))
    }

    fn linear(&mut self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, Error> {
        Ok(Linear {
            w: self.matrix(&format!("{name}.w"), inputs, outputs)?,
            b: self.vector(&format!("{name}.b"), outputs)?,
        })
    }

    fn norm(&mut self, name: &str, n: usize) -> Result<Norm, Error> {
        Ok(Norm {
            w: self.vector(&format!("{name}.w"), n)?,
            b: self.vector(&format!("{name}.b"), n)?,
        })
    }

    fn layer(&mut self, i: usize) -> Result<Layer, Error> {
        let p = format!("layers.{i}");
        let mut q = self.linear(&format!("{p}.q"), WIDTH, WIDTH)?;
        q.w *= 0.125;
        q.b *= 0.125;
        let k = self.matrix(&format!("{p}.k.w"), WIDTH, WIDTH)?;
        let v = self.linear(&format!("{p}.v"), WIDTH, WIDTH)?;
        let w =
            ndarray::concatenate(Axis(1), &[q.w.view(), k.view(), v.w.view()]).map_err(corrupt)?;
        let b = ndarray::concatenate(
            Axis(0),
            &[q.b.view(), Array1::zeros(WIDTH).view(), v.b.view()],
        )
        .map_err(corrupt)?;
        Ok(Layer {
            attn_ln: self.norm(&format!("{p}.attn_ln"), WIDTH)?,
            qkv: Linear { w, b },
            o: self.linear(&format!("{p}.o"), WIDTH, WIDTH)?,
            ffn_ln: self.norm(&format!("{p}.ffn_ln"), WIDTH)?,
            fc1: self.linear(&format!("{p}.fc1"), WIDTH, MLP)?,
            fc2: self.linear(&format!("{p}.fc2"), MLP, WIDTH)?,
        })
    }
}

impl Network {
    /// Parses and dequantises a weight file (format: module docs).
    ///
    /// # Errors
    /// [`Error::Model`] if the file is malformed, a tensor is missing or has the wrong shape,
    /// or there are tensors the network does not use.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Network, Error> {
        let mut t = Tensors(parse(bytes)?);
        let net = Network {
            conv1: t.linear("conv1", N_MELS * 3, WIDTH)?,
            conv2: t.linear("conv2", WIDTH * 3, WIDTH)?,
            pos: t.matrix("pos", STEPS, WIDTH)?,
            layers: (0..LAYERS).map(|i| t.layer(i)).collect::<Result<_, _>>()?,
            ln: t.norm("ln", WIDTH)?,
            pool0: t.linear("pool0", WIDTH, 256)?,
            pool2: t.linear("pool2", 256, 1)?,
            cls0: t.linear("cls0", WIDTH, 256)?,
            cls_ln: t.norm("cls.ln", 256)?,
            cls4: t.linear("cls4", 256, 64)?,
            cls6: t.linear("cls6", 64, 1)?,
        };
        let mut left: Vec<_> = t.0.into_keys().collect();
        if !left.is_empty() {
            left.sort();
            return Err(corrupt(format!("unused tensors {left:?}")));
        }
        Ok(net)
    }

    /// Probability that the turn is complete, from log-mel features `[80][800]` row-major.
    /// Panics only if `features.len() != 80 * 800` (the caller checks).
    pub(crate) fn forward(&self, features: &[f32]) -> f32 {
        // conv1 (k3, pad 1) as one GEMM: cols[t][c*3 + k] = features[c][t + k - 1].
        let mut cols = Array2::<f32>::zeros((N_FRAMES, N_MELS * 3));
        for c in 0..N_MELS {
            let row = &features[c * N_FRAMES..(c + 1) * N_FRAMES];
            for k in 0..3 {
                let mut col = cols.column_mut(c * 3 + k);
                for t in 0..N_FRAMES {
                    if let Some(&v) = (t + k).checked_sub(1).and_then(|i| row.get(i)) {
                        col[t] = v;
                    }
                }
            }
        }
        let mut x1 = linear(&cols.view(), &self.conv1);
        gelu(x1.as_slice_mut().unwrap_or_default());
        // conv2 (k3, pad 1, stride 2): cols[i][c*3 + k] = x1[2i + k - 1][c].
        let mut cols = Array2::<f32>::zeros((STEPS, WIDTH * 3));
        for i in 0..STEPS {
            let mut row = cols.row_mut(i);
            for k in 0..3 {
                let Some(t) = (2 * i + k).checked_sub(1).filter(|&t| t < N_FRAMES) else {
                    continue;
                };
                for (c, &v) in x1.row(t).iter().enumerate() {
                    row[c * 3 + k] = v;
                }
            }
        }
        let mut x = linear(&cols.view(), &self.conv2);
        gelu(x.as_slice_mut().unwrap_or_default());
        x += &self.pos;

        let mut scores = Array2::<f32>::zeros((STEPS, STEPS));
        let mut attn = Array2::<f32>::zeros((STEPS, WIDTH));
        for l in &self.layers {
            let h = layer_norm(&x, &l.attn_ln);
            let qkv = linear(&h.view(), &l.qkv);
            for head in 0..HEADS {
                // (`s![]` is not usable: it expands to an `allow(unsafe_code)`.)
                let cols = |at: usize| Slice::from(at + head * HEAD..at + (head + 1) * HEAD);
                let q = qkv.slice_axis(Axis(1), cols(0));
                let k = qkv.slice_axis(Axis(1), cols(WIDTH));
                let v = qkv.slice_axis(Axis(1), cols(2 * WIDTH));
                general_mat_mul(1.0, &q, &k.t(), 0.0, &mut scores);
                for mut row in scores.rows_mut() {
                    softmax(row.as_slice_mut().unwrap_or_default());
                }
                let mut out = attn.slice_axis_mut(Axis(1), cols(0));
                general_mat_mul(1.0, &scores, &v, 0.0, &mut out);
            }
            x += &linear(&attn.view(), &l.o);
            let h = layer_norm(&x, &l.ffn_ln);
            let mut m = linear(&h.view(), &l.fc1);
            gelu(m.as_slice_mut().unwrap_or_default());
            x += &linear(&m.view(), &l.fc2);
        }
        let x = layer_norm(&x, &self.ln);

        // Attention pooling: a softmax over time of tanh(x · W0 + b0) · W2 + b2.
        let mut e = linear(&x.view(), &self.pool0);
        e.mapv_inplace(f32::tanh);
        let mut w: Vec<f32> = linear(&e.view(), &self.pool2).into_iter().collect();
        softmax(&mut w);
        let pooled = Array1::from(w).dot(&x);

        let h = pooled.dot(&self.cls0.w) + &self.cls0.b;
        let mut h = layer_norm(&h.insert_axis(Axis(0)), &self.cls_ln);
        gelu(h.as_slice_mut().unwrap_or_default());
        let mut h = linear(&h.view(), &self.cls4);
        gelu(h.as_slice_mut().unwrap_or_default());
        let z = linear(&h.view(), &self.cls6)[[0, 0]];
        1.0 / (1.0 + (-z).exp())
    }
}

/// `x · l.w + l.b` for every row of `x`.
fn linear(x: &ArrayView2<'_, f32>, l: &Linear) -> Array2<f32> {
    let mut y = Array2::<f32>::zeros((x.nrows(), l.w.ncols()));
    y += &l.b;
    general_mat_mul(1.0, x, &l.w, 1.0, &mut y);
    y
}

/// LayerNorm over each row (eps 1e-5), statistics in f32 as the reference.
fn layer_norm(x: &Array2<f32>, n: &Norm) -> Array2<f32> {
    let mut y = x.clone();
    let width = x.ncols() as f32;
    for mut row in y.rows_mut() {
        let mean = row.sum() / width;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / width;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        for ((v, &w), &b) in row.iter_mut().zip(&n.w).zip(&n.b) {
            *v = (*v - mean) * inv * w + b;
        }
    }
    y
}

/// In-place softmax of one row.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    // Eight running sums so the loop vectorises (the 2,400 rows per layer add up).
    let mut lanes = [0.0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let inv = 1.0 / (lanes.iter().sum::<f32>() + tail);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// erf(x): a rational approximation, x·P(x²)/Q(x²) on x clamped to [-4, 4] (Eigen's
/// `generic_fast_erf_float` coefficients), evaluated in f64: max |error| 6.5e-8 against the
/// exact erf (checked in the tests), branch-free so it vectorises.
#[inline]
pub(crate) fn erf(x: f32) -> f32 {
    let x = f64::from(x).clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = -2.726_142_258_013_06e-10;
    let p = p * x2 + 2.770_681_424_959_02e-8;
    let p = p * x2 - 2.101_024_020_825_08e-6;
    let p = p * x2 - 5.692_506_394_623_46e-5;
    let p = p * x2 - 7.349_906_303_268_55e-4;
    let p = p * x2 - 2.954_599_808_540_25e-3;
    let p = p * x2 - 1.609_603_332_624_15e-2;
    let q = -1.456_607_184_649_96e-5;
    let q = q * x2 - 2.133_740_552_789_05e-4;
    let q = q * x2 - 1.682_826_974_382_03e-3;
    let q = q * x2 - 7.373_329_167_204_68e-3;
    let q = q * x2 - 1.426_473_905_141_89e-2;
    (x * p / q) as f32
}

/// Exact (erf) GELU in place: x/2 · (1 + erf(x/√2)).
fn gelu(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_within_1e7_of_libm() {
        let mut worst = 0.0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((f64::from(erf(x)) - libm::erf(f64::from(x))).abs());
        }
        // The f32 rounding of the result adds up to 6e-8 on top of the approximation's 6.5e-8.
        assert!(worst < 1.3e-7, "max |erf error| {worst:e}");
    }

    #[test]
    fn exp_is_within_2e7_relative() {
        let mut worst = 0.0f64;
        for i in 0..=860_000 {
            let x = -(i as f32) * 1e-4;
            let want = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - want).abs() / want);
        }
        assert!(worst < 2e-7, "max relative exp error {worst:e}");
        assert!(exp(-1e6) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn corrupt_weight_files_are_errors() {
        let good = include_bytes!("../../models/smart_turn/smart_turn_v3_2.bin");
        assert!(Network::parse(good).is_ok());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("magic", [b"HSTX".as_slice(), &good[4..]].concat()),
            ("truncated header", good[..10].to_vec()),
            ("truncated data", good[..good.len() / 2].to_vec()),
            ("one byte short", good[..good.len() - 1].to_vec()),
            ("trailing byte", [good.as_slice(), &[0]].concat()),
            ("version", {
                let mut v = good.to_vec();
                v[4] = 2;
                v
            }),
            ("huge dims", {
                // The first tensor's first dimension, after magic, version, count, name length,
                // name, kind and rank.
                let mut v = good.to_vec();
                let name_len = usize::from(u16::from_le_bytes([v[12], v[13]]));
                let at = 14 + name_len + 2;
                v[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                v
            }),
        ];
        for (what, bytes) in cases {
            match Network::parse(&bytes) {
                Err(Error::Model(msg)) => assert!(msg.contains("smart_turn"), "{what}: {msg}"),
                Err(e) => panic!("{what}: wrong error {e}"),
                Ok(_) => panic!("{what}: parsed"),
            }
        }
    }
}
