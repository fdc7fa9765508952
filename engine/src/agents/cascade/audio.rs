//! Audio for the cascade agent: the WAV sent to STT, the PCM streamed back by TTS, and the
//! synthesized chime played when no spoken fallback could be rendered.

use hark_codecs::{ResampleError, Resampler, SampleRate};

/// OpenAI speech `response_format: pcm`: signed 16-bit little-endian mono at 24 kHz
/// (OpenAI text-to-speech guide; `shared/reference/providers.md` §3).
pub const TTS_RATE: SampleRate = SampleRate::HZ_24000;
/// Rate of the WAV sent for transcription (what Whisper-family models work at).
pub const STT_RATE: SampleRate = SampleRate::HZ_16000;

/// A 16 kHz, 16-bit mono WAV (RIFF, 44-byte header) of `samples` at `rate`, resampled with
/// hark's FFT resampler when `rate` is not 16 kHz (its filter delay removed, so the WAV is
/// exactly as long as the input).
///
/// # Errors
/// [`ResampleError`] if `rate` is not one the resampler supports.
pub fn wav_16k(samples: &[i16], rate: SampleRate) -> Result<Vec<u8>, ResampleError> {
    let pcm = if rate == STT_RATE {
        samples.to_vec()
    } else {
        let mut r = Resampler::new(rate, STT_RATE)?;
        let delay = r.delay_samples();
        let mut out = Vec::with_capacity(samples.len() * 2 + delay + 1024);
        r.process(samples, &mut out)?;
        r.flush(&mut out)?;
        out.drain(..delay.min(out.len()));
        out
    };
    Ok(wav_bytes(&pcm, STT_RATE))
}

/// A 16-bit mono PCM WAV of `samples` at `rate`.
pub fn wav_bytes(samples: &[i16], rate: SampleRate) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut v = Vec::with_capacity(44 + samples.len() * 2);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVE");
    v.extend_from_slice(b"fmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&rate.hz().to_le_bytes());
    v.extend_from_slice(&(rate.hz() * 2).to_le_bytes()); // byte rate
    v.extend_from_slice(&2u16.to_le_bytes()); // block align
    v.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// Turns a stream of s16le bytes, split anywhere, into samples: an odd byte at the end of a
/// chunk is carried over to the next (`providers.md` §3: "chunks may split a 16-bit sample").
#[derive(Debug, Default, Clone)]
pub struct Pcm16Stream {
    carry: Option<u8>,
}

impl Pcm16Stream {
    /// Appends the samples completed by `bytes` to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) {
        let mut rest = bytes;
        if let Some(lo) = self.carry.take() {
            match rest.split_first() {
                Some((&hi, tail)) => {
                    out.push(i16::from_le_bytes([lo, hi]));
                    rest = tail;
                }
                None => {
                    self.carry = Some(lo);
                    return;
                }
            }
        }
        let mut it = rest.chunks_exact(2);
        out.extend(it.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
        self.carry = it.remainder().first().copied();
    }

    /// Whether half a sample is waiting.
    pub fn has_carry(&self) -> bool {
        self.carry.is_some()
    }
}

/// A gentle two-note chime (E5 then A5, 560 ms, about -14 dBFS, 8 kHz), played in place of the
/// spoken fallback when even that could not be rendered: the caller hears that the line is
/// alive rather than silence.
pub fn chime() -> Vec<i16> {
    let rate = 8_000.0f64;
    let notes = [(659.25f64, 0.24f64), (880.0, 0.32)];
    let amp = 0.2 * i16::MAX as f64;
    let mut out = Vec::new();
    for (freq, secs) in notes {
        let n = (rate * secs) as usize;
        for i in 0..n {
            let t = i as f64 / rate;
            // 10 ms attack, exponential decay: a bell-like note without clicks.
            let attack = (t / 0.010).min(1.0);
            let decay = (-t * 6.0).exp();
            let tail = ((n - i) as f64 / (rate * 0.010)).min(1.0);
            let v = (2.0 * std::f64::consts::PI * freq * t).sin()
                + 0.25 * (4.0 * std::f64::consts::PI * freq * t).sin();
            out.push((v * amp * attack * decay * tail / 1.25) as i16);
        }
    }
    out
}

/// Rate of [`chime`].
pub const CHIME_RATE: SampleRate = SampleRate::HZ_8000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_header_and_length() {
        let pcm: Vec<i16> = (0..8000).map(|i| ((i % 50) * 100) as i16).collect();
        let wav = wav_16k(&pcm, SampleRate::HZ_8000).unwrap();
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(
            u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
            16_000
        );
        let data = u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]) as usize;
        assert_eq!(data, wav.len() - 44);
        // One second in, one second out (16 000 samples), delay removed.
        assert_eq!(data / 2, 16_000);
        let same = wav_16k(&pcm[..100], STT_RATE).unwrap();
        assert_eq!(same.len(), 44 + 200);
    }

    #[test]
    fn pcm_stream_carries_odd_bytes() {
        let samples: Vec<i16> = vec![1, -2, 300, -32768, 32767];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        for split in 1..4 {
            let mut p = Pcm16Stream::default();
            let mut out = Vec::new();
            for c in bytes.chunks(split) {
                p.push(c, &mut out);
            }
            p.push(&[], &mut out);
            assert_eq!(out, samples, "chunks of {split}");
            assert!(!p.has_carry());
        }
    }

    #[test]
    fn chime_is_audible_and_short() {
        let c = chime();
        assert!((4000..5000).contains(&c.len()));
        let db = hark_codecs::pcm::rms_dbfs(&c);
        assert!((-30.0..-10.0).contains(&db), "{db} dBFS");
    }
}
