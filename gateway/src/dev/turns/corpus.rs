//! The turn-taking corpus (`fixtures/turns/`): its annotation (`scenes.json`), the clean scene
//! audio, the noises, and the mixing of one with the other at a given SNR through μ-law.
//!
//! Levels: every foreground utterance in the scenes is normalised to the annotation's active
//! speech level (`active_level_dbfs`, −26 dBFS: RMS over its labelled speech, full scale
//! 32,768), so noise at `snr` dB is noise scaled to an RMS of `active_level_dbfs − snr` dBFS
//! over the whole noise file. The SNR is thus active speech level over noise level, the usual
//! definition for speech-in-noise tests (ITU-T P.56 measures the active level the same way, with
//! a more careful activity detector).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `scenes.json`: what the scenes hold and where the noises are.
#[derive(Debug, Clone, Deserialize)]
pub struct Annotation {
    /// Sample rate of every file, Hz (8000).
    pub rate_hz: u32,
    /// Active speech level of the foreground utterances, dBFS.
    pub active_level_dbfs: f64,
    /// The three scenes.
    pub scenes: Scenes,
    /// The noises, mixed under the scenes.
    pub noises: Vec<NoiseRef>,
}

/// The three scenes of the corpus.
#[derive(Debug, Clone, Deserialize)]
pub struct Scenes {
    /// Caller turns with the agent silent.
    pub turns: Scene,
    /// Sentences with one inner pause (400, 600, 800 ms) each.
    pub pauses: Scene,
    /// What the caller sends while the agent talks: backchannels, coughs, clicks, barge-ins.
    pub agent: Scene,
}

/// One scene: a WAV file and its truth.
#[derive(Debug, Clone, Deserialize)]
pub struct Scene {
    /// The WAV file, relative to the corpus folder.
    pub file: String,
    /// Its length, ms.
    pub ms: u64,
    /// Caller utterances (`turns`, `pauses`).
    #[serde(default)]
    pub utterances: Vec<Utterance>,
    /// Sounds made while the agent talks (`agent`).
    #[serde(default)]
    pub events: Vec<SceneEvent>,
    /// Frame-level truth: `[start_ms, end_ms)` intervals with the caller's voice.
    pub speech: Vec<[u64; 2]>,
}

/// One caller utterance.
#[derive(Debug, Clone, Deserialize)]
pub struct Utterance {
    /// First speech sample, ms.
    pub start_ms: u64,
    /// Last speech sample, ms.
    pub end_ms: u64,
    /// Who speaks.
    #[serde(default)]
    pub speaker: String,
    /// The transcript, when known.
    #[serde(default)]
    pub text: String,
    /// The inner pause `[start_ms, end_ms)` (`pauses` only).
    #[serde(default)]
    pub pause: Option<[u64; 2]>,
    /// The inner pause's length, ms (`pauses` only).
    #[serde(default)]
    pub pause_ms: Option<u64>,
}

/// What kind of sound a [`SceneEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// "uh-huh", "mm-hmm", "yeah", "okay", "right": must not interrupt.
    Backchannel,
    /// A cough: must not interrupt.
    Cough,
    /// A click or knock: must not interrupt.
    Click,
    /// The caller really starts talking: must interrupt, fast.
    BargeIn,
}

/// A sound the caller makes while the agent talks.
#[derive(Debug, Clone, Deserialize)]
pub struct SceneEvent {
    /// What it is.
    pub kind: EventKind,
    /// Start, ms.
    pub start_ms: u64,
    /// End, ms.
    pub end_ms: u64,
    /// e.g. "uh-huh".
    #[serde(default)]
    pub label: String,
    /// Made by a synthesiser rather than recorded.
    #[serde(default)]
    pub synthetic: bool,
}

/// A noise file.
#[derive(Debug, Clone, Deserialize)]
pub struct NoiseRef {
    /// Its name (`babble`, `talkers`, `cafe`, `pink`, `brown`, `line`).
    pub name: String,
    /// The WAV file, relative to the corpus folder.
    pub file: String,
    /// What it is, one line.
    #[serde(default)]
    pub what: String,
}

/// The corpus in memory: the annotation, the scenes' PCM and the noises' PCM (8 kHz).
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Where it was read from.
    pub dir: PathBuf,
    /// The annotation.
    pub annotation: Annotation,
    /// `turns`, `pauses`, `agent` PCM.
    pub turns: Vec<i16>,
    /// See [`Corpus::turns`].
    pub pauses: Vec<i16>,
    /// See [`Corpus::turns`].
    pub agent: Vec<i16>,
    /// Each noise's name and PCM.
    pub noises: Vec<(String, Vec<i16>)>,
}

/// Reads a mono 16-bit WAV at `rate_hz`.
fn read_wav(path: &Path, rate_hz: u32) -> Result<Vec<i16>, String> {
    let mut r = hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = r.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 || spec.sample_rate != rate_hz {
        return Err(format!(
            "{}: want mono 16-bit {rate_hz} Hz, found {} channel(s), {} bits, {} Hz",
            path.display(),
            spec.channels,
            spec.bits_per_sample,
            spec.sample_rate
        ));
    }
    r.samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl Corpus {
    /// Reads `dir/scenes.json` and every file it names. Errors name the file and what is wrong.
    pub fn load(dir: &Path) -> Result<Corpus, String> {
        let path = dir.join("scenes.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let annotation: Annotation =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if annotation.rate_hz != 8000 {
            return Err(format!("{}: rate_hz must be 8000", path.display()));
        }
        let rate = annotation.rate_hz;
        let s = &annotation.scenes;
        let turns = read_wav(&dir.join(&s.turns.file), rate)?;
        let pauses = read_wav(&dir.join(&s.pauses.file), rate)?;
        let agent = read_wav(&dir.join(&s.agent.file), rate)?;
        let mut noises = Vec::new();
        for n in &annotation.noises {
            noises.push((n.name.clone(), read_wav(&dir.join(&n.file), rate)?));
        }
        Ok(Corpus {
            dir: dir.to_path_buf(),
            annotation,
            turns,
            pauses,
            agent,
            noises,
        })
    }

    /// The PCM of a noise by name.
    pub fn noise(&self, name: &str) -> Option<&[i16]> {
        self.noises
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_slice())
    }
}

/// RMS of `pcm` in dBFS (full scale 32,768); −∞ for silence.
pub fn rms_dbfs(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    10.0 * (sum / pcm.len() as f64 / (32768.0 * 32768.0)).log10()
}

/// A listening condition: a noise at an SNR, or clean.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The noise's name, `None` for clean audio.
    pub noise: Option<String>,
    /// Active speech level over noise level, dB (ignored when clean).
    pub snr_db: f64,
}

impl Condition {
    /// `clean`, or `<noise> <snr> dB`.
    pub fn label(&self) -> String {
        match &self.noise {
            None => "clean".into(),
            Some(n) => format!("{n} {} dB", self.snr_db),
        }
    }
}

/// `clean` (the scene's own samples) or the scene with `noise` looped under it at `snr_db`
/// below `level_dbfs`, starting `offset` samples into the noise; then G.711 μ-law encoded, as
/// a Twilio Media Stream carries it. Output: one μ-law byte per sample, padded with μ-law
/// silence to a whole number of 20 ms frames (160 bytes).
pub fn mix(
    clean: &[i16],
    noise: Option<&[i16]>,
    snr_db: f64,
    level_dbfs: f64,
    offset: usize,
) -> Vec<u8> {
    let frames = clean.len().div_ceil(160);
    let mut pcm = vec![0i16; frames * 160];
    pcm[..clean.len()].copy_from_slice(clean);
    if let Some(noise) = noise.filter(|n| !n.is_empty()) {
        let have = rms_dbfs(noise);
        let gain = 10f64.powf((level_dbfs - snr_db - have) / 20.0);
        for (i, s) in pcm.iter_mut().enumerate() {
            let n = noise[(offset + i) % noise.len()] as f64 * gain;
            *s = (*s as f64 + n).round().clamp(-32768.0, 32767.0) as i16;
        }
    }
    let mut ulaw = vec![0u8; pcm.len()];
    hark_codecs::mulaw::encode(&pcm, &mut ulaw);
    ulaw
}

/// A stable offset into a noise of `len` samples for a (scene, noise) pair, so every run and
/// every VAD hears the same mix, and the scenes do not all start at the same noise sample.
pub fn offset_for(scene: &str, noise: &str, len: usize) -> usize {
    // FNV-1a: stable across runs and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scene.bytes().chain([0]).chain(noise.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % len.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_scaled_to_the_snr() {
        // A steady tone as "speech" at −26 dBFS and white-ish noise mixed 10 dB below it.
        let noise: Vec<i16> = (0..8000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 16) as i16) / 4)
            .collect();
        let silence = vec![0i16; 8000];
        let mixed = mix(&silence, Some(&noise), 10.0, -26.0, 123);
        let mut pcm = vec![0i16; mixed.len()];
        hark_codecs::mulaw::decode(&mixed, &mut pcm);
        let level = rms_dbfs(&pcm);
        assert!((level - -36.0).abs() < 0.3, "noise at {level:.2} dBFS");
        let clean = mix(&silence, None, 10.0, -26.0, 0);
        assert!(clean.iter().all(|&b| b == 0xFF), "μ-law silence");
    }

    #[test]
    fn offsets_are_stable_and_differ_by_scene() {
        let a = offset_for("turns", "babble", 480_000);
        assert_eq!(a, offset_for("turns", "babble", 480_000));
        assert_ne!(a, offset_for("agent", "babble", 480_000));
    }
}
