//! Smart Turn v3.2 (pipecat-ai 1.14.0, BSD-2-Clause), pure Rust: the probability that a
//! caller's turn is complete, from the last 8 s of their audio.
//!
//! - [`log_mel`] (`mel.rs`): pipecat's Whisper log-mel front end, 80 × 800 features.
//! - `model.rs`: the network (a Whisper-Tiny encoder, attention pooling, a small classifier) on
//!   the int8 weights of pipecat's `smart-turn-v3.2-cpu.onnx` dequantised to f32. Activations
//!   stay f32: this is the ONNX graph with its QuantizeLinear/DequantizeLinear activation pairs
//!   removed (`engine/models/smart_turn/float_onnx.py`), not onnxruntime's uint8 activation
//!   quantisation; `engine/models/smart_turn/PROVENANCE.md` gives how far the two differ.
//!
//! The weights (8.6 MB, `engine/models/smart_turn/smart_turn_v3_2.bin`) are compiled in and
//! parsed once per process ([`SmartTurn::shared`]). One inference is about 3.5 G multiply-adds
//! (single-threaded GEMMs through `ndarray`/`matrixmultiply`); it allocates its own scratch.

mod mel;
mod model;

use std::sync::OnceLock;

use hark_codecs::{Resampler, SampleRate};

pub use mel::log_mel;
pub use mel::{N_FRAMES, N_MELS, SAMPLE_RATE, SAMPLES};

use crate::Error;

static WEIGHT_FILE: &[u8] = include_bytes!("../../models/smart_turn/smart_turn_v3_2.bin");

/// The Smart Turn v3.2 network with its weights, f32. Immutable: share one across threads
/// ([`SmartTurn::shared`]).
pub struct SmartTurn {
    net: model::Network,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn").finish_non_exhaustive()
    }
}

impl SmartTurn {
    /// The process-wide model, parsed and dequantised from the compiled-in weight file on first
    /// use (about 10 ms; later calls are free).
    ///
    /// # Errors
    /// [`Error::Model`] if the compiled-in weight file is corrupt (every call then returns the
    /// same error).
    pub fn shared() -> Result<&'static SmartTurn, Error> {
        static SHARED: OnceLock<Result<SmartTurn, String>> = OnceLock::new();
        match SHARED.get_or_init(|| SmartTurn::from_bytes(WEIGHT_FILE).map_err(|e| e.to_string())) {
            Ok(m) => Ok(m),
            Err(e) => Err(Error::Model(e.clone())),
        }
    }

    /// A model from a weight file in `extract.py`'s format (see `model.rs`).
    ///
    /// # Errors
    /// [`Error::Model`] if the file is malformed or does not hold exactly this network's
    /// tensors with their shapes.
    pub fn from_bytes(bytes: &[u8]) -> Result<SmartTurn, Error> {
        Ok(SmartTurn {
            net: model::Network::parse(bytes)?,
        })
    }

    /// Probability (0..1) that the turn is complete, from caller audio at 8 kHz (`pcm`: i16
    /// samples, any length; only the last 8 s are used, shorter audio is zero-padded at the
    /// start). Resamples 8 → 16 kHz with [`hark_codecs::Resampler`] (its delay removed), then
    /// [`log_mel`], then the network.
    pub fn predict_8k(&self, pcm: &[i16]) -> f32 {
        self.predict_16k(&upsample_8k(pcm))
    }

    /// Probability (0..1) that the turn is complete, from 16 kHz samples in [-1, 1] (any
    /// length; only the last 8 s are used).
    pub fn predict_16k(&self, audio: &[f32]) -> f32 {
        self.predict_features(&log_mel(audio))
    }

    /// The network alone on log-mel features `[80 mel][800 frames]` row-major (as [`log_mel`]
    /// returns them). A slice of any other length gives 0.5 (no opinion) rather than a panic.
    pub fn predict_features(&self, features: &[f32]) -> f32 {
        if features.len() != N_MELS * N_FRAMES {
            return 0.5;
        }
        self.net.forward(features)
    }
}

/// The last 8 s of 8 kHz `pcm` at 16 kHz as f32 in [-1, 1], aligned with the input (the
/// resampler's delay dropped). 50 ms more than 8 s go through the resampler so its start-up
/// transient falls outside the window.
fn upsample_8k(pcm: &[i16]) -> Vec<f32> {
    let tail = &pcm[pcm.len().saturating_sub(8 * 8_000 + 400)..];
    let mut out = Vec::with_capacity(2 * tail.len() + 1_000);
    let resampled = Resampler::new(SampleRate::HZ_8000, SampleRate::HZ_16000).and_then(|mut r| {
        r.process(tail, &mut out)?;
        r.flush(&mut out)?;
        Ok(r.delay_samples())
    });
    let start = match resampled {
        Ok(delay) => delay.min(out.len()),
        Err(_) => {
            // Not expected (8 → 16 kHz is supported, blocks are fixed): hold each sample twice.
            out.clear();
            out.extend(tail.iter().flat_map(|&s| [s, s]));
            0
        }
    };
    out[start..]
        .iter()
        .map(|&s| f32::from(s) / 32768.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn model_file(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models/smart_turn")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A 16-bit mono WAV's samples (the committed golden clips: 16 kHz).
    fn wav_16k(name: &str) -> Vec<i16> {
        let bytes = model_file(name);
        assert_eq!(&bytes[..4], b"RIFF");
        let mut at = 12;
        loop {
            let id = &bytes[at..at + 4];
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            if id == b"fmt " {
                let f = &bytes[at + 8..];
                assert_eq!(u16::from_le_bytes([f[2], f[3]]), 1, "mono");
                assert_eq!(u32::from_le_bytes(f[4..8].try_into().unwrap()), 16_000);
                assert_eq!(u16::from_le_bytes([f[14], f[15]]), 16, "16-bit");
            }
            if id == b"data" {
                return bytes[at + 8..at + 8 + len]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
            }
            at += 8 + len + (len & 1);
        }
    }

    fn golden_features(clip: &str) -> Vec<f32> {
        model_file(&format!("golden_{clip}.f32"))
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// golden.json's probability of onnxruntime on the float graph.
    fn golden_probability(clip: &str) -> f32 {
        let json: serde_json::Value =
            serde_json::from_slice(&model_file("golden.json")).expect("golden.json");
        json[format!("golden_{clip}.wav")]["onnxruntime_float"]
            .as_f64()
            .expect("onnxruntime_float") as f32
    }

    fn audio(clip: &str) -> Vec<f32> {
        wav_16k(&format!("golden_{clip}.wav"))
            .iter()
            .map(|&s| f32::from(s) / 32768.0)
            .collect()
    }

    #[test]
    fn log_mel_matches_pipecat() {
        for clip in ["end", "pause"] {
            let ours = log_mel(&audio(clip));
            let theirs = golden_features(clip);
            assert_eq!(ours.len(), theirs.len());
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("{clip}: log-mel max |diff| {worst:e}");
            assert!(worst < 1e-4, "{clip}: log-mel max |diff| {worst:e}");
        }
    }

    #[test]
    fn network_and_end_to_end_match_onnxruntime() {
        let m = SmartTurn::shared().expect("weights");
        for clip in ["end", "pause"] {
            let want = golden_probability(clip);
            let from_features = m.predict_features(&golden_features(clip));
            let from_audio = m.predict_16k(&audio(clip));
            eprintln!("{clip}: onnxruntime {want}, features {from_features}, audio {from_audio}");
            assert!(
                (from_features - want).abs() <= 1e-3,
                "{clip}: {from_features} vs {want}"
            );
            assert!(
                (from_audio - want).abs() <= 1e-3,
                "{clip}: {from_audio} vs {want}"
            );
        }
        // Our clips are 16 kHz upsamplings of 8 kHz audio band-limited to 3.8 kHz: every other
        // sample is the 8 kHz signal back, and through the 8 kHz path the verdict stays.
        let pcm: Vec<i16> = wav_16k("golden_end.wav")
            .iter()
            .step_by(2)
            .copied()
            .collect();
        let p = m.predict_8k(&pcm);
        eprintln!("end via 8 kHz: {p}");
        assert!((p - golden_probability("end")).abs() < 0.05, "{p}");
    }

    #[test]
    fn wrong_feature_length_is_no_opinion() {
        let m = SmartTurn::shared().expect("weights");
        assert_eq!(m.predict_features(&[0.0; 10]), 0.5);
    }

    #[test]
    fn upsampling_keeps_length_and_alignment() {
        // A click at the last sample of 8 kHz input lands at the last two samples of 16 kHz.
        let mut pcm = vec![0i16; 16_000];
        pcm[8_000] = 16_000;
        let up = upsample_8k(&pcm);
        assert_eq!(up.len(), 32_000);
        let peak = up
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i);
        assert_eq!(peak, Some(16_000));
        // Longer input: only the last 8 s and 50 ms are kept.
        assert_eq!(upsample_8k(&vec![0i16; 200_000]).len(), 2 * (64_000 + 400));
    }
}
