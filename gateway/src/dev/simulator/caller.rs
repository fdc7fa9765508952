//! The caller's side of a simulated call: its audio ([`load_audio`]: WAV, μ-law or a recorded
//! `.jsonl` session, resampled to 8 kHz), its speech ([`UserSpeech`]: annotated or found by
//! hark's VAD), and the 20 ms frames sent (`FrameSource`: the audio, then quiet line noise).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hark_codecs::resample::SUPPORTED_RATES;
use hark_codecs::wav;
use hark_codecs::{ResampleError, Resampler, SampleRate, mulaw};
use hark_engine::config::{TurnConfig, VadConfig};
use hark_engine::turn::{TurnDetector, TurnEvent, VoiceDetector};
use hark_engine::twilio::{self, Inbound, Start, Track};
use serde::{Deserialize, Serialize};

use super::{FRAME_BYTES, FRAME_MS, SimError};

/// One stretch of caller speech, ms of media time since `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Speech {
    /// Start of the first voiced frame (or the annotated start).
    pub start_ms: u64,
    /// End of the last voiced frame (or the annotated end).
    pub end_ms: u64,
    /// Whether it is a caller turn the agent should answer. VAD speech discarded as too short
    /// (a cough, a click) or cut off by the end of the stream is `false`: it can still cause a
    /// barge-in, but no answer is expected.
    pub turn: bool,
}

/// Where the caller's turns in a [`Report`](super::Report) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnSource {
    /// An annotation file's `segments`.
    Annotation,
    /// hark's VAD and turn detector with default settings, run over the audio sent.
    #[default]
    Vad,
}

/// The caller's speech in a call, shared between calls that send the same audio.
#[derive(Debug, Clone)]
pub struct UserSpeech {
    /// Where it comes from.
    pub source: TurnSource,
    /// Stretches of speech, sorted by start.
    pub spans: Arc<[Speech]>,
}

#[derive(Deserialize)]
struct Annotation {
    segments: Vec<AnnotatedSegment>,
}

#[derive(Deserialize)]
struct AnnotatedSegment {
    start_ms: u64,
    end_ms: u64,
}

impl UserSpeech {
    /// Finds the caller's speech with hark's VAD (webrtc-vad behind the noise gate) and turn
    /// detector, default [`VadConfig`] and [`TurnConfig`], over exactly the frames a call sends:
    /// `mulaw` (μ-law 8 kHz mono) followed by `tail_ms` of the simulator's line noise, in 20 ms
    /// frames. Costs about 2 µs per frame; compute it once for many calls.
    pub fn detect(mulaw: &[u8], tail_ms: u64) -> Self {
        let mut vad = VoiceDetector::new(&VadConfig::default());
        let mut turns = TurnDetector::new(TurnConfig::default());
        let mut frames = FrameSource::new(mulaw, tail_ms);
        let mut frame = [0u8; FRAME_BYTES];
        let mut pcm = [0i16; FRAME_BYTES];
        let mut spans = Vec::new();
        for k in 0..frames.count() {
            frames.fill(k, &mut frame);
            mulaw::decode(&frame, &mut pcm);
            let voiced = vad.is_voiced(&pcm);
            match turns.on_frame(k * FRAME_MS, FRAME_MS as u32, voiced) {
                Some(TurnEvent::SpeechEnd {
                    start_ms, end_ms, ..
                }) => spans.push(Speech {
                    start_ms,
                    end_ms,
                    turn: true,
                }),
                Some(TurnEvent::Discarded { start_ms, end_ms }) => spans.push(Speech {
                    start_ms,
                    end_ms,
                    turn: false,
                }),
                // The simulator's turn detector runs the silence rule only: no model asks.
                Some(TurnEvent::SpeechStart { .. } | TurnEvent::AskModel { .. }) | None => {}
            }
        }
        if let Some(start_ms) = turns.speech_start_ms() {
            spans.push(Speech {
                start_ms,
                end_ms: frames.count() * FRAME_MS,
                turn: false,
            });
        }
        UserSpeech {
            source: TurnSource::Vad,
            spans: spans.into(),
        }
    }

    /// Reads an annotation: JSON with `segments`, each with `start_ms` and `end_ms` (media ms
    /// from the start of the audio); other fields are ignored.
    ///
    /// # Errors
    /// [`SimError::Annotation`] if the file cannot be read, is not such JSON, or has a segment
    /// ending before it starts.
    pub fn from_annotation(path: &Path) -> Result<Self, SimError> {
        let err = |message: String| SimError::Annotation {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_annotation_json(&text).map_err(|e| match e {
            SimError::Annotation { message, .. } => err(message),
            other => other,
        })
    }

    /// Like [`UserSpeech::from_annotation`], from the annotation's JSON text (e.g. a fixture
    /// compiled into the binary).
    ///
    /// # Errors
    /// [`SimError::Annotation`] (with an empty path) if the text is not such JSON.
    pub fn from_annotation_json(text: &str) -> Result<Self, SimError> {
        let err = |message: String| SimError::Annotation {
            path: PathBuf::new(),
            message,
        };
        let ann: Annotation = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut spans = Vec::with_capacity(ann.segments.len());
        for s in ann.segments {
            if s.end_ms < s.start_ms {
                return Err(err(format!(
                    "segment ends ({} ms) before it starts ({} ms)",
                    s.end_ms, s.start_ms
                )));
            }
            spans.push(Speech {
                start_ms: s.start_ms,
                end_ms: s.end_ms,
                turn: true,
            });
        }
        spans.sort_by_key(|s| s.start_ms);
        Ok(UserSpeech {
            source: TurnSource::Annotation,
            spans: spans.into(),
        })
    }
}

/// Caller audio loaded from a file by [`load_audio`].
#[derive(Debug, Clone)]
pub struct CallerAudio {
    /// μ-law 8 kHz mono, 8 bytes per ms.
    pub mulaw: Arc<[u8]>,
    /// The `start` of a recorded `.jsonl` session (SIDs, customParameters), if the file was one.
    pub start: Option<Start>,
    /// The annotation found next to a `.jsonl` (`<stem>.json`), if it exists.
    pub annotation: Option<PathBuf>,
}

/// Loads caller audio: a `.jsonl` Twilio session (inbound `media` payloads concatenated in file
/// order; timestamps are not used, so a recording with gaps is replayed without them), a
/// headerless `.ulaw`/`.mulaw`/`.raw` file or a μ-law 8 kHz mono WAV (bytes untouched), or any
/// other WAV (mixed to mono, resampled to 8 kHz with hark's FFT resampler and its delay removed,
/// or by linear interpolation for rates it does not support, then μ-law encoded).
///
/// # Errors
/// [`SimError::Audio`], [`SimError::Resample`] or [`SimError::Session`].
pub fn load_audio(path: &Path) -> Result<CallerAudio, SimError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "jsonl" {
        let (mulaw, start) = load_session(path)?;
        let ann = path.with_extension("json");
        return Ok(CallerAudio {
            mulaw: mulaw.into(),
            start,
            annotation: ann.is_file().then_some(ann),
        });
    }
    let audio = wav::read_file(path).map_err(|source| SimError::Audio {
        path: path.to_path_buf(),
        source,
    })?;
    let mulaw = match audio.mulaw {
        Some(m) => m,
        None => {
            let pcm = to_8k(audio.rate, audio.samples).map_err(|source| SimError::Resample {
                path: path.to_path_buf(),
                source,
            })?;
            let mut out = vec![0u8; pcm.len()];
            mulaw::encode(&pcm, &mut out);
            out
        }
    };
    Ok(CallerAudio {
        mulaw: mulaw.into(),
        start: None,
        annotation: None,
    })
}

/// Reads a recorded session: the inbound `media` payloads in order, and its `start`.
fn load_session(path: &Path) -> Result<(Vec<u8>, Option<Start>), SimError> {
    let err = |line: usize, message: String| SimError::Session {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(0, e.to_string()))?;
    let mut mulaw = Vec::new();
    let mut start = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = twilio::parse(line).map_err(|e| err(i + 1, e.to_string()))?;
        match parsed.message {
            Inbound::Start(s) => start = Some(*s),
            Inbound::Media(m) if m.track == Track::Inbound => {
                twilio::decode_payload(&m.payload, &mut mulaw)
                    .map_err(|e| err(i + 1, format!("media.payload: {e}")))?;
            }
            _ => {}
        }
    }
    Ok((mulaw, start))
}

/// Resamples mono PCM to 8 kHz, aligned in time with the input (resampler delay removed).
fn to_8k(rate: SampleRate, samples: Vec<i16>) -> Result<Vec<i16>, ResampleError> {
    let to = SampleRate::TWILIO;
    if rate == to || samples.is_empty() {
        return Ok(samples);
    }
    if !SUPPORTED_RATES.contains(&rate.hz()) {
        return Ok(linear_to_8k(rate, &samples));
    }
    let mut r = Resampler::new(rate, to)?;
    let delay = r.delay_samples();
    let mut out = Vec::with_capacity(samples.len() * 8_000 / rate.hz() as usize + delay + 1);
    r.process(&samples, &mut out)?;
    r.flush(&mut out)?;
    out.drain(..delay.min(out.len()));
    Ok(out)
}

/// Fallback for rates the FFT resampler does not take: a box filter as wide as the decimation
/// ratio (a crude anti-alias filter), then linear interpolation.
fn linear_to_8k(rate: SampleRate, samples: &[i16]) -> Vec<i16> {
    let from = rate.hz().max(1) as f64;
    let ratio = from / 8_000.0;
    let width = ratio.ceil().max(1.0) as usize;
    let smoothed: Vec<f64> = if width > 1 {
        let mut acc = 0f64;
        let mut out = Vec::with_capacity(samples.len());
        for (i, &s) in samples.iter().enumerate() {
            acc += s as f64;
            if i >= width {
                acc -= samples[i - width] as f64;
            }
            out.push(acc / (i + 1).min(width) as f64);
        }
        out
    } else {
        samples.iter().map(|&s| s as f64).collect()
    };
    let n = ((samples.len() as f64) / ratio).round() as usize;
    (0..n)
        .map(|i| {
            let pos = i as f64 * ratio;
            let j = pos.floor() as usize;
            let frac = pos - j as f64;
            let a = smoothed[j.min(smoothed.len() - 1)];
            let b = smoothed[(j + 1).min(smoothed.len() - 1)];
            (a + (b - a) * frac)
                .round()
                .clamp(i16::MIN as f64, i16::MAX as f64) as i16
        })
        .collect()
}

/// Caller audio as 20 ms frames: the audio, then line noise to `tail_ms` and to a whole frame.
pub(super) struct FrameSource<A> {
    audio: A,
    frames: u64,
    noise: LineNoise,
}

impl<A: AsRef<[u8]>> FrameSource<A> {
    pub(super) fn new(audio: A, tail_ms: u64) -> Self {
        let bytes = audio.as_ref().len() as u64 + tail_ms.saturating_mul(8);
        FrameSource {
            frames: bytes.div_ceil(FRAME_BYTES as u64),
            audio,
            noise: LineNoise::new(),
        }
    }

    /// Number of frames.
    pub(super) fn count(&self) -> u64 {
        self.frames
    }

    /// Writes frame `k` into `out`. Frames must be asked for in order (the noise is a stream).
    pub(super) fn fill(&mut self, k: u64, out: &mut [u8; FRAME_BYTES]) {
        let audio = self.audio.as_ref();
        let start = (k as usize).saturating_mul(FRAME_BYTES);
        let from_audio = audio.len().saturating_sub(start).min(FRAME_BYTES);
        if from_audio > 0 {
            out[..from_audio].copy_from_slice(&audio[start..start + from_audio]);
        }
        for b in &mut out[from_audio..] {
            *b = self.noise.next_code();
        }
    }
}

/// White noise at about −65 dBFS RMS (a quiet phone line), μ-law coded: an Irwin–Hall sum of
/// four uniforms from splitmix64, as `fixtures/sessions/make_sessions.py` makes its line noise.
/// Below the VAD's −55 dBFS floor, but not bit-silent (about 10 % of its codes are 0xFF/0x7F).
struct LineNoise {
    state: u64,
}

impl LineNoise {
    /// Scale of the sum of four uniforms in [−0.5, 0.5) (σ = 1/√3) for 18.4 LSB RMS, i.e.
    /// −65 dBFS re 32768.
    const SCALE: f64 = 31.9;

    fn new() -> Self {
        LineNoise { state: 0x6861_726B }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_code(&mut self) -> u8 {
        let r = self.next_u64();
        let sum: f64 = (0..4)
            .map(|i| ((r >> (16 * i)) & 0xFFFF) as f64 / 65_536.0 - 0.5)
            .sum();
        mulaw::encode_sample((sum * Self::SCALE).round() as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_audio_then_line_noise() {
        let audio: Arc<[u8]> = Arc::from(vec![0x10u8; 200]);
        let mut f = FrameSource::new(audio, 100);
        // 200 bytes + 800 bytes of tail = 1000 bytes -> 7 frames (last padded).
        assert_eq!(f.count(), 7);
        let mut frame = [0u8; FRAME_BYTES];
        f.fill(0, &mut frame);
        assert!(frame.iter().all(|&b| b == 0x10));
        f.fill(1, &mut frame);
        assert!(frame[..40].iter().all(|&b| b == 0x10));
        assert!(frame[40..].iter().any(|&b| b != 0xFF && b != 0x10));
    }

    #[test]
    fn line_noise_is_quiet_but_not_silent() {
        let mut n = LineNoise::new();
        let codes: Vec<u8> = (0..8000).map(|_| n.next_code()).collect();
        let mut pcm = vec![0i16; codes.len()];
        mulaw::decode(&codes, &mut pcm);
        let db = hark_codecs::pcm::rms_dbfs(&pcm);
        assert!((-68.0..-61.0).contains(&db), "{db} dBFS");
        let silent = codes.iter().filter(|&&c| c == 0xFF || c == 0x7F).count();
        assert!(silent < codes.len() / 4, "{silent} silent codes");
        // The VAD does not hear it.
        let s = UserSpeech::detect(&codes, 0);
        assert!(s.spans.is_empty(), "{:?}", s.spans);
    }

    #[test]
    fn resampling_keeps_duration_and_timing() {
        // 100 ms of a 16 kHz tone starting at 50 ms.
        let mut pcm = vec![0i16; 1600];
        for (i, s) in pcm.iter_mut().enumerate().skip(800) {
            *s = ((i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 16_000.0).sin() * 8000.0) as i16;
        }
        let out = to_8k(SampleRate::HZ_16000, pcm.clone()).unwrap();
        assert_eq!(out.len(), 800);
        let onset = out.iter().position(|s| s.abs() > 1000).unwrap();
        assert!((395..=415).contains(&onset), "onset at sample {onset}");
        // A rate the FFT resampler does not take.
        let out = linear_to_8k(SampleRate(11_025), &vec![100i16; 11_025]);
        assert_eq!(out.len(), 8000);
        assert!(out.iter().all(|&s| s == 100));
    }
}
