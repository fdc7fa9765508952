//! The caller sessions `hark bench` plays: the committed `fixtures/bench/*` (compiled into the
//! binary, so `hark bench` runs from anywhere) or any annotation file in the same format.
//!
//! A session is μ-law 8 kHz caller audio plus an annotation (`fixtures/bench/<name>.json`):
//! `segments[]` with `start_ms`, `end_ms` (media ms since `start`) and `barge_in` (the segment is
//! meant to talk over the agent's answer to the previous one). Provenance of the committed
//! sessions: `fixtures/README.md` (`bench/`), made by `fixtures/bench/make_bench.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hark_codecs::mulaw;
use hark_engine::config::CallConfig;
use hark_engine::turn::{TurnDetector, TurnEvent, VoiceDetector};
use serde::Deserialize;

use super::BenchError;
use crate::simulator::{FRAME_BYTES, FRAME_MS, UserSpeech};

/// The sessions compiled into the binary: (name, μ-law 8 kHz audio, annotation JSON).
pub const EMBEDDED: &[(&str, &[u8], &str)] = &[
    (
        "support",
        include_bytes!("../../../../fixtures/bench/support.ulaw"),
        include_str!("../../../../fixtures/bench/support.json"),
    ),
    (
        "interrupts",
        include_bytes!("../../../../fixtures/bench/interrupts.ulaw"),
        include_str!("../../../../fixtures/bench/interrupts.json"),
    ),
    (
        "calm",
        include_bytes!("../../../../fixtures/bench/calm.ulaw"),
        include_str!("../../../../fixtures/bench/calm.json"),
    ),
    (
        "short",
        include_bytes!("../../../../fixtures/bench/short.ulaw"),
        include_str!("../../../../fixtures/bench/short.json"),
    ),
];

/// Sessions played when none is named: the three ~30 s ones (`short` is for smoke tests).
pub const DEFAULT_SESSIONS: &[&str] = &["support", "interrupts", "calm"];

#[derive(Deserialize)]
struct Annotation {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    audio: Option<String>,
    segments: Vec<Segment>,
}

#[derive(Deserialize)]
struct Segment {
    start_ms: u64,
    end_ms: u64,
    #[serde(default)]
    barge_in: bool,
}

/// One caller session, loaded once and shared by every call that plays it.
#[derive(Debug, Clone)]
pub struct BenchSession {
    /// Its name (`support`, … or the annotation's `name`, else the file stem).
    pub name: String,
    /// Caller audio, μ-law 8 kHz mono (8 bytes per ms), a whole number of 20 ms frames.
    pub audio: Arc<[u8]>,
    /// The annotated caller turns (every segment is a turn).
    pub speech: UserSpeech,
    /// `start_ms` of the segments annotated `barge_in`: a `clear` is expected for each.
    pub barge_in_starts: Vec<u64>,
    /// When hark's endpointing ends each caller turn, media ms (see [`endpoints`]), ascending.
    pub endpoints_ms: Vec<u64>,
}

impl BenchSession {
    /// Length of the audio, ms.
    pub fn duration_ms(&self) -> u64 {
        self.audio.len() as u64 / 8
    }

    /// Annotated caller turns.
    pub fn turns(&self) -> usize {
        self.speech.spans.len()
    }

    /// A session from its parts; `call` gives the VAD and turn settings the server uses, for
    /// [`endpoints`].
    ///
    /// # Errors
    /// [`BenchError::Session`] if the annotation is not valid or has no segments.
    pub fn from_parts(
        name: &str,
        audio: Vec<u8>,
        annotation: &str,
        call: &CallConfig,
    ) -> Result<Self, BenchError> {
        let err = |message: String| BenchError::Session {
            name: name.to_string(),
            message,
        };
        let ann: Annotation = serde_json::from_str(annotation).map_err(|e| err(e.to_string()))?;
        if ann.segments.is_empty() {
            return Err(err("the annotation has no segments".into()));
        }
        let speech =
            UserSpeech::from_annotation_json(annotation).map_err(|e| err(e.to_string()))?;
        let mut audio = audio;
        // The simulator pads a short last frame with line noise; keep whole frames here so the
        // endpoints below see exactly what the server sees.
        audio.truncate(audio.len() / FRAME_BYTES * FRAME_BYTES);
        let endpoints_ms = endpoints(&audio, call);
        Ok(BenchSession {
            name: ann.name.unwrap_or_else(|| name.to_string()),
            barge_in_starts: ann
                .segments
                .iter()
                .filter(|s| s.barge_in && s.end_ms >= s.start_ms)
                .map(|s| s.start_ms)
                .collect(),
            audio: audio.into(),
            speech,
            endpoints_ms,
        })
    }

    /// Loads `spec`: the name of an embedded session ([`EMBEDDED`]) or the path of an annotation
    /// `.json` whose audio is `<stem>.ulaw` beside it (else its `audio` field, relative to the
    /// current directory).
    ///
    /// # Errors
    /// [`BenchError::Session`] if it cannot be read or is not valid.
    pub fn load(spec: &str, call: &CallConfig) -> Result<Self, BenchError> {
        if let Some((name, audio, ann)) = EMBEDDED.iter().find(|(n, _, _)| *n == spec) {
            return Self::from_parts(name, audio.to_vec(), ann, call);
        }
        let path = Path::new(spec);
        let err = |message: String| BenchError::Session {
            name: spec.to_string(),
            message,
        };
        if !path.is_file() {
            let names: Vec<&str> = EMBEDDED.iter().map(|(n, _, _)| *n).collect();
            return Err(err(format!(
                "neither a bundled session ({}) nor an annotation file",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let ann: Annotation = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let beside = path.with_extension("ulaw");
        let audio_path = if beside.is_file() {
            beside
        } else if let Some(a) = ann.audio {
            PathBuf::from(a)
        } else {
            return Err(err(format!(
                "no audio: {} does not exist",
                beside.display()
            )));
        };
        let audio = std::fs::read(&audio_path)
            .map_err(|e| err(format!("reading {}: {e}", audio_path.display())))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(spec)
            .to_string();
        Self::from_parts(&stem, audio, &text, call)
    }
}

/// When hark's endpointing ends each caller turn in `mulaw` (μ-law 8 kHz, whole 20 ms frames),
/// with `call`'s VAD and turn settings: for each turn, the media time (ms since `start`) at the
/// end of the frame whose arrival completes `stop_ms` of silence — which is when the simulator
/// sends that frame (frame `k` at `20(k+1)` ms). The engine hands the turn to the agent as it
/// processes that frame, so `first answer heard − endpoint − provider latency` is the engine's
/// share of the voice-to-voice latency (plus the loopback hops and the simulator's timer).
///
/// Runs the same detectors as the engine, over the same frames, from the same state, so it
/// finds the same turns. Only 8 kHz VAD is modelled: with `vad.rate` 16 kHz the engine
/// resamples first and may decide a frame later or earlier.
pub fn endpoints(mulaw: &[u8], call: &CallConfig) -> Vec<u64> {
    let mut vad = VoiceDetector::new(&call.vad);
    let mut turns = TurnDetector::new(call.turn);
    let mut pcm = [0i16; FRAME_BYTES];
    let mut out = Vec::new();
    for (k, frame) in mulaw.chunks_exact(FRAME_BYTES).enumerate() {
        mulaw::decode(frame, &mut pcm);
        let voiced = vad.is_voiced(&pcm);
        let start = k as u64 * FRAME_MS;
        if let Some(TurnEvent::SpeechEnd { .. }) = turns.on_frame(start, FRAME_MS as u32, voiced) {
            out.push(start + FRAME_MS);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sessions_load_with_their_turns_and_barge_ins() {
        let call = CallConfig::default();
        for (name, turns, barge_ins) in [
            ("support", 5, 1),
            ("interrupts", 6, 4),
            ("calm", 5, 0),
            ("short", 2, 1),
        ] {
            let s = BenchSession::load(name, &call).unwrap();
            assert_eq!(s.name, name);
            assert_eq!(s.turns(), turns, "{name}");
            assert_eq!(s.barge_in_starts.len(), barge_ins, "{name}");
            assert_eq!(s.audio.len() % FRAME_BYTES, 0);
            // hark's VAD ends each annotated turn once, stop_ms after its end (± the VAD's view
            // of where speech ended).
            assert_eq!(s.endpoints_ms.len(), turns, "{name}: {:?}", s.endpoints_ms);
            for (span, end) in s.speech.spans.iter().zip(&s.endpoints_ms) {
                let wait = *end as i64 - span.end_ms as i64;
                assert!(
                    (500..=720).contains(&wait),
                    "{name}: {span:?} ended at {end}"
                );
            }
        }
        assert!(BenchSession::load("nope", &call).is_err());
    }
}
