//! `hark call`: a Twilio Media Streams simulator, to try an agent without a phone.
//!
//! It connects to a server's Media Streams WebSocket the way Twilio does for a bidirectional
//! `<Connect><Stream>` (twilio.com/docs/voice/media-streams/websocket-messages;
//! `shared/reference/twilio.md` §1) and plays the caller:
//!
//! 1. the upgrade, signed with `X-Twilio-Signature` when an Auth Token is given (HMAC-SHA1 over
//!    the URL Twilio would have dialled, with no parameters, as [`crate::signature::compute`]
//!    does): the `ws://` URL dialled, or with a public URL ([`CallSetup::public_url`],
//!    `--public-url`) `wss://<public host and path>/<path dialled>`, as a server with
//!    `HARK_PUBLIC_URL` expects;
//! 2. `connected`, then `start` (`sequenceNumber` `"1"`, tracks `["inbound"]`, mediaFormat
//!    `audio/x-mulaw` 8000 Hz mono, `customParameters`, `MZ`/`CA`/`AC` SIDs);
//! 3. one inbound `media` message per 20 ms of audio (160 bytes of μ-law 8 kHz, `sequenceNumber`,
//!    `chunk` and `timestamp` as strings), then a tail of low-level line noise so the agent can
//!    answer, then `stop`;
//! 4. waits (at most [`CallSetup::close_timeout`]) for the server to close, and closes.
//!
//! Meanwhile every text frame from the server goes to the virtual phone
//! ([`hark_engine::sim::Phone`]), which validates it with Twilio's rules, plays outbound audio in
//! real time and decides when marks are echoed; each echo is sent back as a Twilio `mark`.
//! WebSocket pings are answered by tungstenite while the socket is read.
//!
//! ## Media time
//! All times in the [`Report`] are ms of media time since the `start` message, as seen at the
//! simulated phone. Frame `k` (audio `[20k, 20k+20)` ms) is sent when its audio has been
//! "recorded", at media time `20(k+1)`, on an absolute schedule (`t0 + 20(k+1) ms / speed`), so a
//! long call does not drift. With `speed` N the whole call runs N times faster than real time
//! and the phone's clock runs N times faster too; with `speed` 0 frames are sent as fast as the
//! socket takes them and the phone's clock follows the media sent (it stops with the last
//! frame, so audio arriving after that never plays).
//!
//! ## Turns and latency
//! The caller's turns come from an annotation (`segments[].start_ms/end_ms`, the format of
//! `fixtures/sessions/*.json`) or else from hark's own VAD and turn detector with default
//! settings ([`UserSpeech::detect`]). Each turn is matched to the first burst of agent audio
//! heard ([`Phone::bursts`]) that starts at or after the turn's end and before the next turn's
//! end; `latency_ms` is the voice-to-voice time at the phone. For each `clear`, the barge-in
//! delay is measured from the moment the first voiced frame of the speech in progress was sent
//! (`speech start + 20 ms`).
//!
//! ## Sharing between calls
//! [`run_call`] takes an already loaded [`CallSetup`]: the audio is an `Arc<[u8]>` and the
//! caller's speech an `Arc<[Speech]>`, so `hark demo` and `hark bench` can run thousands of
//! calls over one buffer. The tail noise is generated per frame, not stored. A call's own state
//! is the phone, a few counters and one outbound message queue of at most [`OUT_CHANNEL`]
//! messages plus what is due. The phone keeps a timeline of everything it played (8 bytes per
//! ms, up to the last audio heard) whether or not [`CallSetup::keep_heard`] asks for it: it has
//! no switch to turn that off.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hark_codecs::resample::SUPPORTED_RATES;
use hark_codecs::wav::{self, WavError};
use hark_codecs::{ResampleError, Resampler, SampleRate, mulaw};
use hark_engine::config::{TurnConfig, VadConfig};
use hark_engine::sim::{Burst, Phone, Received};
use hark_engine::turn::{TurnDetector, TurnEvent, VoiceDetector};
use hark_engine::twilio::{self, Inbound, Start, Track};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::signature;

/// Audio per inbound `media` message, ms (what Twilio sends in practice; `reference/twilio.md`
/// §1.5 lists it as unverified).
pub const FRAME_MS: u64 = 20;
/// Bytes of μ-law 8 kHz per inbound `media` message (8 bytes per ms).
pub const FRAME_BYTES: usize = 160;
/// Default silence (line noise) sent after the audio, ms.
pub const DEFAULT_TAIL_MS: u64 = 3_000;
/// Default wait for the server to close the WebSocket after `stop`.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for the TCP connect and WebSocket upgrade (Twilio gives up with 31901).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the queue between a call's logic and its socket writer, in messages. Small, so
/// that with `speed` 0 frames go out only as fast as the socket takes them.
pub const OUT_CHANNEL: usize = 8;
/// A `clear` this long (media ms) after a stretch of speech ended is still attributed to it.
pub const BARGE_IN_GRACE_MS: u64 = 1_000;
/// Errors kept in a [`Report`]; more are counted in one last entry.
pub const MAX_ERRORS: usize = 100;
/// Twilio's limit on a `<Parameter>`: name and value together under 500 characters
/// (twilio.com/docs/voice/twiml/stream; `reference/twilio.md` §1.7).
pub const MAX_PARAM_CHARS: usize = 500;

/// How long to keep reading for the server's close reply after hark call closed.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Added to timer deadlines so a conversion between real and media time never wakes the loop
/// a hair before an echo is due (the phone counts audio in 125 µs bytes).
const WAKE_SLACK: Duration = Duration::from_micros(50);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why the simulator could not run a call. Problems during a call (invalid messages, a socket
/// closed early, …) are not errors of this type: they are listed in [`Report::errors`].
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A setting is unusable (URL scheme, query string, speed, parameter). Nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The audio file could not be read or decoded. Nothing was sent.
    #[error("reading audio {path}: {source}")]
    Audio {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: WavError,
    },
    /// The audio could not be resampled to 8 kHz. Nothing was sent.
    #[error("resampling {path} to 8 kHz: {source}")]
    Resample {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: ResampleError,
    },
    /// A recorded session (`.jsonl`) has a line that is not a Twilio message, or a `media`
    /// payload that is not base64. Nothing was sent.
    #[error("{path}:{line}: {message}")]
    Session {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The annotation file could not be read or has no usable `segments`. Nothing was sent.
    #[error("annotation {path}: {message}")]
    Annotation {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The TCP connect or the WebSocket upgrade failed (refused, not 101, …). Nothing was sent.
    #[error("connecting to {url}: {source}{answer}")]
    Connect {
        /// The URL.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<tungstenite::Error>,
        /// The server's answer when it refused the upgrade (`": <body>"`, at most 300
        /// characters; e.g. why a signature was refused), else empty.
        answer: String,
    },
    /// The connect or upgrade took longer than [`CallSetup::connect_timeout`].
    #[error("connecting to {url}: no WebSocket after {after:?}")]
    ConnectTimeout {
        /// The URL.
        url: String,
        /// The time waited.
        after: Duration,
    },
    /// The call ran but `--out` could not be written.
    #[error("writing {path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: WavError,
    },
    /// The report could not be encoded as JSON (not expected).
    #[error("encoding the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `hark call <ws-url>`: the command-line arguments of the simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// WebSocket URL of the server's Media Streams endpoint, e.g.
    /// `ws://127.0.0.1:8080/media-stream`. `ws://` only (this build has no TLS); no query
    /// string (Twilio refuses one: pass data with --param).
    #[arg(value_name = "WS-URL")]
    pub url: String,

    /// Caller audio: a WAV at any rate (resampled and encoded to 8 kHz μ-law), a μ-law WAV or a
    /// headerless `.ulaw` (sent untouched), or a recorded Twilio session `.jsonl` whose `media`
    /// payloads are replayed with its `start` SIDs and customParameters. Without it the caller
    /// stays silent for --tail-ms.
    #[arg(long, value_name = "FILE")]
    pub audio: Option<PathBuf>,

    /// A `customParameters` entry (`<Parameter name=K value=V>`), repeatable; overrides a
    /// parameter of the same name from a `.jsonl`.
    #[arg(long = "param", value_name = "K=V", value_parser = parse_param)]
    pub params: Vec<(String, String)>,

    /// Pace: 1 = real time, 10 = ten times faster, 0 = as fast as the socket takes it.
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,

    /// Write everything the agent said, as the caller heard it, to this 8 kHz μ-law WAV.
    #[arg(long, value_name = "FILE.wav")]
    pub out: Option<PathBuf>,

    /// Sign the upgrade with X-Twilio-Signature using this Auth Token, as Twilio does. A
    /// server without TWILIO_AUTH_TOKEN refuses every upgrade (503) unless it runs with
    /// HARK_DEV_INSECURE=no-signatures.
    #[arg(
        long,
        value_name = "T",
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// The server's public base URL, as in its HARK_PUBLIC_URL (e.g. `https://abc.ngrok.app`):
    /// the upgrade is signed for the URL Twilio would dial, `wss://abc.ngrok.app/media-stream`
    /// (the path of WS-URL appended), while WS-URL is dialled. Without it the ws:// URL dialled
    /// is signed, which a server with HARK_PUBLIC_URL refuses (403).
    #[arg(long, value_name = "URL", requires = "auth_token")]
    pub public_url: Option<String>,

    /// Line noise sent after the audio so the agent can answer, ms.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TAIL_MS)]
    pub tail_ms: u64,

    /// Print the machine-readable report (JSON) instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Speech annotation (`segments[].start_ms/end_ms`, as in fixtures/sessions/*.json) giving
    /// the caller's turns. Default: `<stem>.json` next to a `.jsonl`, if it exists; else hark's
    /// VAD finds the turns.
    #[arg(long, value_name = "FILE")]
    pub annotation: Option<PathBuf>,
}

/// Parses `K=V` for `--param`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected K=V, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty parameter name in {s:?}"));
    }
    if k.chars().count() + v.chars().count() >= MAX_PARAM_CHARS {
        return Err(format!(
            "parameter {k:?}: name and value must be under {MAX_PARAM_CHARS} characters together (Twilio's limit)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Slowest `--speed` other than 0 (a 20 ms frame every 2 s).
pub const MIN_SPEED: f64 = 0.01;
/// Fastest `--speed`; beyond it use 0 (as fast as the socket takes it).
pub const MAX_SPEED: f64 = 1_000_000.0;

/// Parses `--speed`: 0, or a number within [`MIN_SPEED`]..=[`MAX_SPEED`].
fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    check_speed(v)
}

fn check_speed(v: f64) -> Result<f64, String> {
    if v == 0.0 || (MIN_SPEED..=MAX_SPEED).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "speed {v}: must be 0 (as fast as possible) or within {MIN_SPEED}..={MAX_SPEED} (1 = real time)"
        ))
    }
}

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

/// Where the caller's turns in a [`Report`] come from.
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
                Some(TurnEvent::SpeechStart { .. }) | None => {}
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

/// A `start` with fresh random SIDs (`MZ`, `CA`, `AC` + 32 lowercase hex digits), tracks
/// `["inbound"]`, mediaFormat `audio/x-mulaw` 8000 Hz mono, and `params` as customParameters.
pub fn fresh_start(params: Vec<(String, String)>) -> Start {
    Start {
        stream_sid: format!("MZ{}", random_hex32()),
        call_sid: format!("CA{}", random_hex32()),
        account_sid: format!("AC{}", random_hex32()),
        tracks: vec!["inbound".to_string()],
        custom_parameters: params,
        encoding: "audio/x-mulaw".to_string(),
        sample_rate: 8_000,
        channels: 1,
    }
}

/// A fresh Auth Token for a server and its simulated callers in one process (`hark demo`,
/// `hark bench`): 32 lowercase hex digits from [`random_hex32`]. Unguessable enough for a
/// loopback server that lives as long as the process, not for credentials that outlive it.
pub fn random_token() -> String {
    random_hex32()
}

/// 32 lowercase hex digits, unique per process and random across processes (std's randomly
/// keyed SipHash over a counter and the time; not for secrets).
fn random_hex32() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = String::with_capacity(32);
    for half in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u8(half);
        // Writing to a String cannot fail.
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

/// Merges `over` into `base`: a parameter of the same name is replaced, a new one appended.
fn merge_params(base: &mut Vec<(String, String)>, over: &[(String, String)]) {
    for (k, v) in over {
        match base.iter_mut().find(|(bk, _)| bk == k) {
            Some(e) => e.1 = v.clone(),
            None => base.push((k.clone(), v.clone())),
        }
    }
}

/// Everything one simulated call needs, already loaded.
#[derive(Debug, Clone)]
pub struct CallSetup {
    /// The server's `ws://` Media Streams URL (no query string).
    pub url: String,
    /// Caller audio, μ-law 8 kHz mono (8 bytes per ms), shared between calls.
    pub audio: Arc<[u8]>,
    /// The `start` payload: SIDs, customParameters, tracks, media format.
    pub start: Start,
    /// 1 = real time, N = N times faster, 0 = as fast as the socket takes it; otherwise within
    /// [`MIN_SPEED`]..=[`MAX_SPEED`].
    pub speed: f64,
    /// Line noise sent after `audio`, ms (the last frame is padded with it to 20 ms anyway).
    pub tail_ms: u64,
    /// Auth Token to sign the upgrade with (`X-Twilio-Signature`), if any.
    pub auth_token: Option<String>,
    /// The server's public base URL (its `HARK_PUBLIC_URL`, `https://…` or `http://…`, a
    /// `wss://`/`ws://` URL is taken as is): the signature covers
    /// [`signed_url`]`(url, public_url)` instead of `url`. `None`: `url` is signed.
    pub public_url: Option<String>,
    /// The caller's speech; `None` runs [`UserSpeech::detect`] in [`run_call`] (share one
    /// result instead when running many calls with the same audio).
    pub speech: Option<UserSpeech>,
    /// Return the heard timeline in [`Report::heard`] (8 bytes per ms of call: leave it off for
    /// load tests).
    pub keep_heard: bool,
    /// Wait at most this long (real time) for the server to close after `stop`, to finish the
    /// closing handshake, or for the socket to take a message (a server that stops reading).
    pub close_timeout: Duration,
    /// Wait at most this long (real time) for the TCP connect and the upgrade.
    pub connect_timeout: Duration,
}

impl CallSetup {
    /// A setup with defaults: fresh SIDs, no parameters, real time, [`DEFAULT_TAIL_MS`], no
    /// signature, speech found by VAD, no heard timeline, [`DEFAULT_CLOSE_TIMEOUT`],
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(url: impl Into<String>, audio: Arc<[u8]>) -> Self {
        CallSetup {
            url: url.into(),
            audio,
            start: fresh_start(Vec::new()),
            speed: 1.0,
            tail_ms: DEFAULT_TAIL_MS,
            auth_token: None,
            public_url: None,
            speech: None,
            keep_heard: false,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// One caller turn and the agent's answer, ms of media time at the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnReport {
    /// When the caller started speaking.
    pub user_start_ms: u64,
    /// When the caller stopped speaking (end of the last voiced frame).
    pub user_end_ms: u64,
    /// When the caller first heard the agent's answer, if it answered.
    pub agent_start_ms: Option<u64>,
    /// `agent_start_ms - user_end_ms`: voice-to-voice latency at the phone.
    pub latency_ms: Option<u64>,
    /// Audio of the answer the caller heard (one burst), ms.
    pub agent_audio_ms: u64,
    /// Whether a `clear` cut the answer short.
    pub interrupted: bool,
}

/// One `clear` from the server, ms of media time at the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BargeInReport {
    /// Start of the caller's speech in progress when the `clear` arrived (none if the caller
    /// was silent: a `clear` not caused by the caller).
    pub speech_start_ms: Option<u64>,
    /// When the `clear` arrived at the phone.
    pub clear_ms: u64,
    /// `clear_ms - (speech_start_ms + 20)`: from when the first voiced frame was sent to when
    /// the clear arrived. Negative if the clear came first.
    pub delay_ms: Option<i64>,
}

/// What one simulated call measured. Times are ms of media time since `start`, at the phone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The `start.streamSid` used.
    pub stream_sid: String,
    /// The `start.callSid` used.
    pub call_sid: String,
    /// Where `turns` come from.
    pub turn_source: TurnSource,
    /// Caller turns and the agent's answers.
    pub turns: Vec<TurnReport>,
    /// One entry per `clear` received.
    pub barge_ins: Vec<BargeInReport>,
    /// `clear` messages received.
    pub clears: u64,
    /// `mark` messages the server sent (received by the phone).
    pub marks_sent: u64,
    /// Mark echoes the phone sent back.
    pub marks_echoed: u64,
    /// Inbound `media` messages (20 ms each) the simulator sent.
    pub inbound_frames: u64,
    /// Outbound `media` messages received from the server.
    pub outbound_frames: u64,
    /// Audio in those messages, ms.
    pub outbound_audio_ms: u64,
    /// Queued audio dropped by `clear`s, ms (never heard).
    pub cleared_ms: u64,
    /// Bursts of agent audio heard (contiguous playback; see `sim::Burst`). With one answer per
    /// turn and nothing played after a `clear` until the next answer, this equals the answered
    /// turns.
    pub bursts: u64,
    /// Agent audio heard, ms (sum of the bursts).
    pub heard_audio_ms: u64,
    /// Media time when the call ended for the phone (`stop`, or when the socket closed), ms.
    pub duration_ms: u64,
    /// Playout underruns heard: gaps inside a burst of agent audio (`sim::PhoneStats::underruns`).
    pub underruns: u64,
    /// Silence heard in those gaps, ms (rounded up).
    pub underrun_ms: u64,
    /// Inbound frames handed to the socket more than [`FRAME_MS`] of real time after they were
    /// due (speed > 0): the simulator or the socket fell behind real time.
    pub late_frames: u64,
    /// The latest any inbound frame was handed to the socket, µs after it was due (speed > 0).
    pub max_late_us: u64,
    /// Everything wrong: invalid messages from the server (Twilio warnings 31950/31951), a
    /// socket closed before `stop`, no close after `stop`, WebSocket errors.
    pub errors: Vec<String>,
    /// What the caller heard, μ-law 8 kHz from `start` to the end of the call, 0xFF where
    /// nothing played; only with [`CallSetup::keep_heard`]. Not serialized.
    #[serde(skip)]
    pub heard: Option<Vec<u8>>,
}

/// Builds the [`CallSetup`] for `hark call` arguments: loads the audio, the `start` (from a
/// `.jsonl`, else fresh SIDs; `--param`s merged in) and the caller's speech (annotation or VAD).
///
/// # Errors
/// [`SimError::Invalid`] for a bad URL or speed, and the errors of [`load_audio`] and
/// [`UserSpeech::from_annotation`].
pub fn prepare(args: &CallArgs) -> Result<CallSetup, SimError> {
    check_url(&args.url)?;
    signed_url(&args.url, args.public_url.as_deref())?;
    check_speed(args.speed).map_err(SimError::Invalid)?;
    let loaded = match &args.audio {
        Some(path) => load_audio(path)?,
        None => CallerAudio {
            mulaw: Arc::from(&[][..]),
            start: None,
            annotation: None,
        },
    };
    let start = match loaded.start {
        Some(mut s) => {
            merge_params(&mut s.custom_parameters, &args.params);
            // Replayed as Twilio sends a bidirectional stream, whatever the recording had.
            s.tracks = vec!["inbound".to_string()];
            s.encoding = "audio/x-mulaw".to_string();
            s.sample_rate = 8_000;
            s.channels = 1;
            if s.call_sid.is_empty() {
                s.call_sid = format!("CA{}", random_hex32());
            }
            if s.account_sid.is_empty() {
                s.account_sid = format!("AC{}", random_hex32());
            }
            s
        }
        None => fresh_start(args.params.clone()),
    };
    let speech = match args.annotation.as_ref().or(loaded.annotation.as_ref()) {
        Some(path) => UserSpeech::from_annotation(path)?,
        None => UserSpeech::detect(&loaded.mulaw, args.tail_ms),
    };
    Ok(CallSetup {
        url: args.url.clone(),
        audio: loaded.mulaw,
        start,
        speed: args.speed,
        tail_ms: args.tail_ms,
        auth_token: args.auth_token.clone(),
        public_url: args.public_url.clone(),
        speech: Some(speech),
        keep_heard: args.out.is_some(),
        close_timeout: DEFAULT_CLOSE_TIMEOUT,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
    })
}

/// Runs `hark call` without printing: [`prepare`], [`run_call`], then writes `--out`.
///
/// # Errors
/// See [`prepare`] and [`run_call`]; [`SimError::Output`] if `--out` cannot be written.
pub async fn run(args: &CallArgs) -> Result<Report, SimError> {
    let setup = prepare(args)?;
    let report = run_call(setup).await?;
    if let Some(path) = &args.out {
        let heard = report.heard.as_deref().unwrap_or(&[]);
        wav::write_mulaw(path, heard).map_err(|source| SimError::Output {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// The whole `hark call` command: [`run`], then prints the report as JSON (`--json`) or as a
/// table ([`print_table`]). The caller decides the exit status (e.g. non-zero when
/// [`Report::errors`] is not empty).
///
/// # Errors
/// As [`run`].
pub async fn command(args: &CallArgs) -> Result<Report, SimError> {
    let report = run(args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
        if let Some(path) = &args.out {
            println!("caller heard: {}", path.display());
        }
    }
    Ok(report)
}

/// The URL whose signature Twilio sends when it dials `url` for a server whose public base URL
/// is `public_url` (its `HARK_PUBLIC_URL`): `https://` becomes `wss://` and `http://` becomes
/// `ws://`, a trailing `/` is dropped, and the path of `url` is appended (`https://abc.ngrok.app`
/// and `ws://127.0.0.1:3000/media-stream` → `wss://abc.ngrok.app/media-stream`). Without
/// `public_url`, `url` itself.
///
/// # Errors
/// [`SimError::Invalid`] when `public_url` is not an `https://`, `http://`, `wss://` or `ws://`
/// URL with a host, or has a query string or fragment.
pub fn signed_url(url: &str, public_url: Option<&str>) -> Result<String, SimError> {
    let Some(public) = public_url else {
        return Ok(url.to_string());
    };
    let public = public.trim().trim_end_matches('/');
    let lower = public.to_ascii_lowercase();
    let rest = [
        ("https://", "wss://"),
        ("http://", "ws://"),
        ("wss://", "wss://"),
        ("ws://", "ws://"),
    ]
    .into_iter()
    .find_map(|(from, to)| lower.starts_with(from).then(|| (to, &public[from.len()..])));
    let Some((scheme, rest)) = rest.filter(|(_, r)| !r.is_empty()) else {
        return Err(SimError::Invalid(format!(
            "--public-url {public}: expected the server's HARK_PUBLIC_URL, like https://abc.ngrok.app"
        )));
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(SimError::Invalid(format!(
            "--public-url {public}: no query string or fragment"
        )));
    }
    // The path of the dialled URL: after `ws://host[:port]`.
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    Ok(format!("{scheme}{rest}{path}"))
}

/// Checks that `url` is one Twilio would connect to and this build can reach.
fn check_url(url: &str) -> Result<(), SimError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("wss://") {
        return Err(SimError::Invalid(format!(
            "{url}: wss:// needs TLS, which `hark call` is built without; connect to the server directly with ws://"
        )));
    }
    if !lower.starts_with("ws://") {
        return Err(SimError::Invalid(format!(
            "{url}: expected a ws:// URL (the server's Media Streams endpoint)"
        )));
    }
    if url.contains('?') {
        return Err(SimError::Invalid(format!(
            "{url}: Twilio refuses a Stream url with a query string (error 31920); pass data with --param"
        )));
    }
    Ok(())
}

/// Connects to `cfg.url` and plays one call as Twilio would (see the module docs).
///
/// # Errors
/// [`SimError::Invalid`] for a bad URL or speed, [`SimError::Connect`] or
/// [`SimError::ConnectTimeout`] if no WebSocket could be opened. Anything that goes wrong once
/// connected is reported in [`Report::errors`].
pub async fn run_call(cfg: CallSetup) -> Result<Report, SimError> {
    check_url(&cfg.url)?;
    check_speed(cfg.speed).map_err(SimError::Invalid)?;
    let speech = match cfg.speech.clone() {
        Some(s) => s,
        None => UserSpeech::detect(&cfg.audio, cfg.tail_ms),
    };
    let connect_err = |e: tungstenite::Error| {
        let answer = match &e {
            tungstenite::Error::Http(resp) => resp
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .trim()
                        .chars()
                        .take(300)
                        .collect()
                })
                .filter(|b: &String| !b.is_empty())
                .map(|b| format!(": {b}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        SimError::Connect {
            url: cfg.url.clone(),
            source: Box::new(e),
            answer,
        }
    };
    let mut request = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(connect_err)?;
    if let Some(token) = &cfg.auth_token {
        let url = signed_url(&cfg.url, cfg.public_url.as_deref())?;
        let sig = signature::compute(token, &url, &[] as &[(String, String)]);
        let value = HeaderValue::from_str(&sig)
            .map_err(|e| connect_err(tungstenite::Error::HttpFormat(e.into())))?;
        request.headers_mut().insert(signature::HEADER, value);
    }
    // A 4 KiB read buffer: tungstenite zero-fills its whole read buffer before every read, which
    // costs 10 µs per message at the default 128 KiB (`reference/crates.md`).
    let ws_config = WebSocketConfig::default().read_buffer_size(4096);
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
    let (ws, _response) = tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| SimError::ConnectTimeout {
            url: cfg.url.clone(),
            after: cfg.connect_timeout,
        })?
        .map_err(connect_err)?;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel(OUT_CHANNEL);
    let session = Session::new(&cfg, speech).run(stream, tx);
    let writer = write_loop(sink, rx);
    tokio::pin!(session, writer);
    let mut written = None;
    let mut report = loop {
        tokio::select! {
            report = &mut session => break report,
            w = &mut writer, if written.is_none() => written = Some(w),
        }
    };
    // The session has ended and dropped its sender: the writer sends what is left and closes,
    // unless the socket is stuck (a server that stopped reading), then it is dropped.
    let written = match written {
        Some(w) => w,
        None => tokio::time::timeout(CLOSE_DRAIN, writer)
            .await
            .unwrap_or(Ok(())),
    };
    if let Err(e) = written
        && !matches!(
            e,
            tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing)
        )
    {
        report.errors.push(format!("sending to the server: {e}"));
    }
    Ok(report)
}

/// Sends what the session queues, in order, flushing each message; closes when the queue ends.
async fn write_loop(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), tungstenite::Error> {
    while let Some(msg) = rx.recv().await {
        sink.send(msg).await?;
    }
    // Completes our side of the closing handshake, or starts it; errors here only mean the
    // socket is already closed.
    let _ = sink.close().await;
    Ok(())
}

/// Caller audio as 20 ms frames: the audio, then line noise to `tail_ms` and to a whole frame.
struct FrameSource<A> {
    audio: A,
    frames: u64,
    noise: LineNoise,
}

impl<A: AsRef<[u8]>> FrameSource<A> {
    fn new(audio: A, tail_ms: u64) -> Self {
        let bytes = audio.as_ref().len() as u64 + tail_ms.saturating_mul(8);
        FrameSource {
            frames: bytes.div_ceil(FRAME_BYTES as u64),
            audio,
            noise: LineNoise::new(),
        }
    }

    /// Number of frames.
    fn count(&self) -> u64 {
        self.frames
    }

    /// Writes frame `k` into `out`. Frames must be asked for in order (the noise is a stream).
    fn fill(&mut self, k: u64, out: &mut [u8; FRAME_BYTES]) {
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

/// Where the `stop` message is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopState {
    NotYet,
    Queued,
    Sent(Instant),
}

/// A message waiting for the writer.
enum Out {
    /// `connected` or `start`.
    Control(String),
    /// An inbound `media` frame.
    Frame(String),
    /// A mark echo.
    Mark(String),
    /// `stop`.
    Stop(String),
}

/// One call's logic: schedule, phone, counters.
struct Session {
    speed: f64,
    close_timeout: Duration,
    keep_heard: bool,
    start: Start,
    speech: UserSpeech,
    t0: Instant,
    phone: Phone,
    frames: FrameSource<Arc<[u8]>>,
    frame: [u8; FRAME_BYTES],
    queued_frames: u64,
    sent_frames: u64,
    seq: u64,
    outq: VecDeque<Out>,
    stop: StopState,
    /// Media time frozen at `stop` (or when the server closed): the phone plays no further.
    frozen: Option<Instant>,
    marks_echoed: u64,
    clears_ms: Vec<u64>,
    errors: Vec<String>,
    errors_dropped: usize,
    /// The server closed (or the connection was lost): nothing more is sent.
    server_closed: bool,
    /// Real time of the server's Close frame, to bound the wait for the TCP close.
    closed_at: Option<Instant>,
    writer_gone: bool,
    /// Real time the writer last took a message (or the session started).
    last_handed: Instant,
    late_frames: u64,
    max_late_us: u64,
}

impl Session {
    fn new(cfg: &CallSetup, speech: UserSpeech) -> Self {
        let t0 = Instant::now();
        Session {
            speed: cfg.speed,
            close_timeout: cfg.close_timeout,
            keep_heard: cfg.keep_heard,
            start: cfg.start.clone(),
            speech,
            t0,
            phone: Phone::new(&cfg.start.stream_sid, t0).keep_heard(cfg.keep_heard),
            frames: FrameSource::new(cfg.audio.clone(), cfg.tail_ms),
            frame: [0; FRAME_BYTES],
            queued_frames: 0,
            sent_frames: 0,
            seq: 0,
            outq: VecDeque::with_capacity(4),
            stop: StopState::NotYet,
            frozen: None,
            marks_echoed: 0,
            clears_ms: Vec::new(),
            errors: Vec::new(),
            errors_dropped: 0,
            server_closed: false,
            closed_at: None,
            writer_gone: false,
            last_handed: t0,
            late_frames: 0,
            max_late_us: 0,
        }
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        } else {
            self.errors_dropped += 1;
        }
    }

    /// The phone's clock for real time `real`, in whole ms of media time. Whole ms keep the
    /// phone's playback on byte boundaries that are multiples of 8 (it counts played ms per
    /// `advance` call, rounding down), so audio durations come out exact.
    fn vnow(&self, real: Instant) -> Instant {
        if let Some(f) = self.frozen {
            f
        } else if self.speed == 0.0 {
            self.t0 + Duration::from_millis(FRAME_MS * self.sent_frames)
        } else {
            let media = real.saturating_duration_since(self.t0).mul_f64(self.speed);
            self.t0 + Duration::from_millis(media.as_millis() as u64)
        }
    }

    /// Real time at which the phone's clock reaches `v`, rounded up to a whole ms (speed > 0).
    fn real_at(&self, v: Instant) -> Instant {
        let ms = v
            .saturating_duration_since(self.t0)
            .as_micros()
            .div_ceil(1000) as u64;
        self.t0 + Duration::from_millis(ms).div_f64(self.speed) + WAKE_SLACK
    }

    /// Real time at which frame `k` is due: its audio has been "recorded" (speed > 0).
    fn frame_due(&self, k: u64) -> Instant {
        self.t0 + Duration::from_millis(FRAME_MS * (k + 1)).div_f64(self.speed) + WAKE_SLACK
    }

    fn media_ms_now(&self) -> u64 {
        self.phone.media_ms(self.vnow(Instant::now()))
    }

    fn queue_frame(&mut self) {
        let k = self.queued_frames;
        self.frames.fill(k, &mut self.frame);
        self.seq += 1;
        let mut text = String::with_capacity(320);
        twilio::inbound::media(
            self.seq,
            &self.start.stream_sid,
            k + 1,
            k * FRAME_MS,
            &self.frame,
            &mut text,
        );
        self.outq.push_back(Out::Frame(text));
        self.queued_frames += 1;
    }

    fn queue_echoes(&mut self) {
        for name in self.phone.take_echoes() {
            self.seq += 1;
            let text = twilio::inbound::mark(self.seq, &self.start.stream_sid, &name);
            self.outq.push_back(Out::Mark(text));
        }
    }

    /// Queues what is due at `real`: frames, mark echoes, and `stop` after the last frame.
    fn schedule(&mut self, real: Instant) {
        if self.stop != StopState::NotYet || self.server_closed {
            return;
        }
        let total = self.frames.count();
        if self.speed > 0.0 {
            while self.queued_frames < total && self.frame_due(self.queued_frames) <= real {
                self.queue_frame();
            }
        } else if self.queued_frames < total && self.queued_frames == self.sent_frames {
            self.queue_frame();
        }
        let v = self.vnow(real);
        self.phone.advance(v);
        self.queue_echoes();
        if self.sent_frames == total {
            self.frozen = Some(v);
            self.seq += 1;
            self.outq.push_back(Out::Stop(twilio::inbound::stop(
                self.seq,
                &self.start.stream_sid,
                &self.start.account_sid,
                &self.start.call_sid,
            )));
            self.stop = StopState::Queued;
        }
    }

    /// When the loop must wake next (real time), besides socket activity.
    fn wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let StopState::Sent(sent) = self.stop {
            at(sent + self.close_timeout);
        }
        if let Some(closed) = self.closed_at {
            at(closed + self.close_timeout);
        }
        if !self.outq.is_empty() {
            at(self.last_handed + self.close_timeout);
        }
        if self.stop == StopState::NotYet && !self.server_closed && self.speed > 0.0 {
            if self.queued_frames < self.frames.count() {
                at(self.frame_due(self.queued_frames));
            }
            if let Some(v) = self.phone.next_echo_at() {
                at(self.real_at(v));
            }
        }
        wake
    }

    /// A message was handed to the writer.
    fn handed(&mut self, out: &Out) {
        self.last_handed = Instant::now();
        match out {
            Out::Frame(_) => {
                if self.speed > 0.0 {
                    let late = self
                        .last_handed
                        .saturating_duration_since(self.frame_due(self.sent_frames));
                    if late > Duration::from_millis(FRAME_MS) {
                        self.late_frames += 1;
                    }
                    self.max_late_us = self.max_late_us.max(late.as_micros() as u64);
                }
                self.sent_frames += 1;
            }
            Out::Mark(_) => self.marks_echoed += 1,
            Out::Stop(_) => self.stop = StopState::Sent(Instant::now()),
            Out::Control(_) => {}
        }
    }

    fn on_text(&mut self, text: &str) {
        let v = self.vnow(Instant::now());
        if let Received::Clear(_) = self.phone.receive(v, text) {
            self.clears_ms.push(self.phone.media_ms(v));
        }
        if self.stop == StopState::NotYet && !self.server_closed {
            self.queue_echoes();
        } else {
            // After `stop` Twilio sends nothing more.
            self.phone.take_echoes();
        }
    }

    /// Handles one item from the socket; returns `true` when the socket is done.
    fn on_socket(&mut self, item: Option<Result<Message, tungstenite::Error>>) -> bool {
        let stop_sent = matches!(self.stop, StopState::Sent(_));
        match item {
            Some(Ok(Message::Text(t))) => {
                self.on_text(t.as_str());
                false
            }
            Some(Ok(Message::Binary(b))) => {
                let ms = self.media_ms_now();
                self.error(format!(
                    "{ms} ms: binary frame of {} bytes from the server; Twilio takes only JSON text frames (warning 31950)",
                    b.len()
                ));
                false
            }
            Some(Ok(Message::Close(frame))) => {
                if !self.server_closed && !stop_sent {
                    let ms = self.media_ms_now();
                    let how = frame.map_or_else(
                        || "no code".to_string(),
                        |f| format!("code {} {:?}", u16::from(f.code), f.reason.as_str()),
                    );
                    self.error(format!(
                        "{ms} ms: the server closed the WebSocket ({how}) before stop, after {} of {} frames",
                        self.sent_frames,
                        self.frames.count()
                    ));
                }
                if self.frozen.is_none() {
                    self.frozen = Some(self.vnow(Instant::now()));
                }
                self.server_closed = true;
                self.closed_at.get_or_insert_with(Instant::now);
                self.outq.clear();
                false
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => false,
            Some(Err(e)) => {
                let ms = self.media_ms_now();
                self.error(format!("{ms} ms: WebSocket error: {e}"));
                self.lost();
                true
            }
            None => {
                if !self.server_closed {
                    let ms = self.media_ms_now();
                    let when = if stop_sent { "after" } else { "before" };
                    self.error(format!(
                        "{ms} ms: the connection ended without a close frame, {when} stop"
                    ));
                }
                self.lost();
                true
            }
        }
    }

    fn lost(&mut self) {
        if self.frozen.is_none() {
            self.frozen = Some(self.vnow(Instant::now()));
        }
        self.server_closed = true;
        self.outq.clear();
    }

    async fn run(mut self, mut stream: SplitStream<Ws>, tx: mpsc::Sender<Message>) -> Report {
        self.outq
            .push_back(Out::Control(twilio::inbound::connected()));
        self.seq = 1;
        self.outq
            .push_back(Out::Control(twilio::inbound::start(1, &self.start)));
        let mut done = false;
        loop {
            let real = Instant::now();
            self.schedule(real);
            if let StopState::Sent(sent) = self.stop
                && real >= sent + self.close_timeout
                && !self.server_closed
            {
                self.error(format!(
                    "the server did not close the WebSocket within {:?} of stop",
                    self.close_timeout
                ));
                break;
            }
            if let Some(closed) = self.closed_at
                && real >= closed + self.close_timeout
            {
                self.error(format!(
                    "the server sent a Close frame but kept the connection open for {:?}",
                    self.close_timeout
                ));
                done = true;
                break;
            }
            if !self.outq.is_empty() && real >= self.last_handed + self.close_timeout {
                let ms = self.media_ms_now();
                self.error(format!(
                    "{ms} ms: the server stopped reading: nothing could be sent for {:?}",
                    self.close_timeout
                ));
                self.lost();
                break;
            }
            let wake = self.wake().map(tokio::time::Instant::from_std);
            let sending = !self.outq.is_empty() && !self.writer_gone;
            tokio::select! {
                biased;
                item = stream.next() => {
                    if self.on_socket(item) {
                        done = true;
                        break;
                    }
                }
                permit = tx.reserve(), if sending => match permit {
                    Ok(permit) => {
                        if let Some(out) = self.outq.pop_front() {
                            self.handed(&out);
                            let (Out::Control(t) | Out::Frame(t) | Out::Mark(t) | Out::Stop(t)) = out;
                            permit.send(Message::text(t));
                        }
                    }
                    Err(_) => {
                        // The writer failed; its error is reported by `run_call`.
                        self.writer_gone = true;
                        self.lost();
                        break;
                    }
                },
                () = sleep_until_opt(wake) => {}
            }
        }
        if !done {
            // We close: send a Close frame, then read until the server's reply (bounded).
            if !self.server_closed && !self.writer_gone {
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }));
                let _ = tokio::time::timeout(CLOSE_DRAIN, tx.send(close)).await;
            }
            drop(tx);
            let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                while let Some(item) = stream.next().await {
                    if let Ok(Message::Text(t)) = item {
                        self.on_text(t.as_str());
                    }
                }
            })
            .await;
        }
        self.finish()
    }

    fn finish(mut self) -> Report {
        let end = self.frozen.unwrap_or_else(|| self.vnow(Instant::now()));
        let duration_ms = self.phone.media_ms(end);
        let stats = self.phone.stats().clone();
        for e in &stats.errors {
            self.error(format!("invalid message from the server: {e}"));
        }
        if self.errors_dropped > 0 {
            self.errors
                .push(format!("… and {} more errors", self.errors_dropped));
        }
        let spans = &self.speech.spans;
        let heard = self.keep_heard.then(|| {
            let mut h = self.phone.heard().to_vec();
            let len = (duration_ms as usize).saturating_mul(8);
            if h.len() < len {
                h.resize(len, 0xFF);
            }
            h
        });
        Report {
            stream_sid: self.start.stream_sid.clone(),
            call_sid: self.start.call_sid.clone(),
            turn_source: self.speech.source,
            turns: match_turns(spans, self.phone.bursts()),
            barge_ins: self.clears_ms.iter().map(|&c| barge_in(spans, c)).collect(),
            clears: stats.clears,
            marks_sent: stats.marks,
            marks_echoed: self.marks_echoed,
            inbound_frames: self.sent_frames,
            outbound_frames: stats.media,
            outbound_audio_ms: stats.audio_ms,
            cleared_ms: stats.cleared_ms,
            bursts: self.phone.bursts().len() as u64,
            heard_audio_ms: self.phone.bursts().iter().map(|b| b.audio_ms).sum(),
            duration_ms,
            underruns: stats.underruns,
            underrun_ms: stats.underrun_us.div_ceil(1000),
            late_frames: self.late_frames,
            max_late_us: self.max_late_us,
            errors: self.errors,
            heard,
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Matches each caller turn to the first burst of agent audio that starts at or after the
/// turn's end and before the next turn's end (so one burst answers at most one turn).
fn match_turns(spans: &[Speech], bursts: &[Burst]) -> Vec<TurnReport> {
    let turns: Vec<&Speech> = spans.iter().filter(|s| s.turn).collect();
    turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let until = turns.get(i + 1).map_or(u64::MAX, |n| n.end_ms);
            let burst = bursts
                .iter()
                .find(|b| b.start_ms >= t.end_ms && b.start_ms < until);
            TurnReport {
                user_start_ms: t.start_ms,
                user_end_ms: t.end_ms,
                agent_start_ms: burst.map(|b| b.start_ms),
                latency_ms: burst.map(|b| b.start_ms - t.end_ms),
                agent_audio_ms: burst.map_or(0, |b| b.audio_ms),
                interrupted: burst.is_some_and(|b| b.interrupted),
            }
        })
        .collect()
}

/// The speech a `clear` at `clear_ms` answers: the latest stretch that started by then and
/// had not ended more than [`BARGE_IN_GRACE_MS`] before.
fn barge_in(spans: &[Speech], clear_ms: u64) -> BargeInReport {
    let speech = spans
        .iter()
        .filter(|s| s.start_ms <= clear_ms && clear_ms <= s.end_ms + BARGE_IN_GRACE_MS)
        .max_by_key(|s| s.start_ms);
    BargeInReport {
        speech_start_ms: speech.map(|s| s.start_ms),
        clear_ms,
        delay_ms: speech.map(|s| clear_ms as i64 - (s.start_ms + FRAME_MS) as i64),
    }
}

/// Prints a readable summary of `report` to stdout: one row per caller turn (speech, when the
/// caller first heard the agent, latency, agent audio heard, interrupted?), the barge-ins, and
/// totals. All times are ms of media time at the simulated phone.
pub fn print_table(report: &Report) {
    print!("{}", format_table(report));
}

/// The text [`print_table`] prints.
pub fn format_table(report: &Report) -> String {
    let mut s = String::new();
    let source = match report.turn_source {
        TurnSource::Annotation => "from the annotation",
        TurnSource::Vad => "found by hark's VAD",
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "call {} — {} caller turn(s) {source}; times in ms of media time at the phone",
        report.call_sid,
        report.turns.len()
    );
    let _ = writeln!(
        s,
        "{:>4}  {:>15}  {:>12}  {:>8}  {:>11}  {:>11}",
        "turn", "caller speech", "agent heard", "latency", "agent audio", "interrupted"
    );
    let dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for (i, t) in report.turns.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>4}  {:>15}  {:>12}  {:>8}  {:>11}  {:>11}",
            i + 1,
            format!("{}-{}", t.user_start_ms, t.user_end_ms),
            dash(t.agent_start_ms),
            dash(t.latency_ms),
            t.agent_audio_ms,
            if t.agent_start_ms.is_none() {
                "-"
            } else if t.interrupted {
                "yes"
            } else {
                "no"
            }
        );
    }
    let mut lat: Vec<u64> = report.turns.iter().filter_map(|t| t.latency_ms).collect();
    lat.sort_unstable();
    if let (Some(min), Some(max)) = (lat.first(), lat.last()) {
        let _ = writeln!(
            s,
            "latency (caller speech end -> first agent audio heard): min {min}, median {}, max {max} ms over {} answered turn(s)",
            lat[lat.len() / 2],
            lat.len()
        );
    } else {
        let _ = writeln!(s, "latency: no turn was answered");
    }
    if report.barge_ins.is_empty() {
        let _ = writeln!(s, "barge-ins: none");
    } else {
        let _ = writeln!(s, "barge-ins: {}", report.barge_ins.len());
        for b in &report.barge_ins {
            match (b.speech_start_ms, b.delay_ms) {
                (Some(start), Some(delay)) => {
                    let _ = writeln!(
                        s,
                        "  clear at {} ms: caller speech from {start} ms, {delay} ms after its first voiced frame was sent",
                        b.clear_ms
                    );
                }
                _ => {
                    let _ = writeln!(s, "  clear at {} ms: the caller was silent", b.clear_ms);
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "sent {} frames ({} ms); received {} media ({} ms of audio), {} marks ({} echoed), {} clear(s); call {} ms",
        report.inbound_frames,
        report.inbound_frames * FRAME_MS,
        report.outbound_frames,
        report.outbound_audio_ms,
        report.marks_sent,
        report.marks_echoed,
        report.clears,
        report.duration_ms
    );
    if report.errors.is_empty() {
        let _ = writeln!(s, "errors: none");
    } else {
        let _ = writeln!(s, "errors: {}", report.errors.len());
        for e in &report.errors {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burst(start_ms: u64, audio_ms: u64, interrupted: bool) -> Burst {
        Burst {
            start_ms,
            audio_ms,
            interrupted,
        }
    }

    fn turn(start_ms: u64, end_ms: u64) -> Speech {
        Speech {
            start_ms,
            end_ms,
            turn: true,
        }
    }

    #[test]
    fn turns_match_the_first_burst_after_their_end() {
        let spans = [turn(1000, 5100), turn(6800, 8580), turn(13360, 15380)];
        let bursts = [
            burst(200, 1000, false),
            burst(5800, 1100, true),
            burst(9300, 1780, false),
        ];
        let t = match_turns(&spans, &bursts);
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].agent_start_ms, t[0].latency_ms, t[0].interrupted),
            (Some(5800), Some(700), true)
        );
        assert_eq!((t[1].latency_ms, t[1].agent_audio_ms), (Some(720), 1780));
        // No answer after the last turn.
        assert_eq!((t[2].agent_start_ms, t[2].agent_audio_ms), (None, 0));
    }

    #[test]
    fn a_burst_answers_one_turn_only() {
        // Turn 1 got no answer before turn 2 ended: the burst belongs to turn 2.
        let spans = [turn(0, 1000), turn(1500, 2000)];
        let t = match_turns(&spans, &[burst(2600, 500, false)]);
        assert_eq!(t[0].agent_start_ms, None);
        assert_eq!(t[1].latency_ms, Some(600));
    }

    #[test]
    fn barge_in_is_measured_from_the_first_voiced_frame_sent() {
        let spans = [
            turn(1000, 5100),
            Speech {
                start_ms: 6800,
                end_ms: 6900,
                turn: false,
            },
        ];
        let b = barge_in(&spans, 6900);
        assert_eq!((b.speech_start_ms, b.delay_ms), (Some(6800), Some(80)));
        // Long after any speech: not the caller's doing.
        let b = barge_in(&spans, 12_000);
        assert_eq!((b.speech_start_ms, b.delay_ms), (None, None));
    }

    #[test]
    fn params_and_speed_parse() {
        assert_eq!(parse_param("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_param("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_param("=b").is_err());
        assert!(parse_param("novalue").is_err());
        assert!(parse_param(&format!("k={}", "v".repeat(600))).is_err());
        assert_eq!(parse_speed("0").unwrap(), 0.0);
        assert_eq!(parse_speed("2.5").unwrap(), 2.5);
        assert!(parse_speed("-1").is_err());
        assert!(parse_speed("inf").is_err());
        assert!(parse_speed("NaN").is_err());
        let mut base = vec![("caller".to_string(), "fixture".to_string())];
        merge_params(
            &mut base,
            &[("caller".into(), "me".into()), ("x".into(), "1".into())],
        );
        assert_eq!(
            base,
            vec![("caller".into(), "me".into()), ("x".into(), "1".into())]
        );
    }

    #[test]
    fn urls_twilio_would_refuse_are_refused() {
        assert!(check_url("ws://127.0.0.1:8080/media-stream").is_ok());
        assert!(check_url("WS://h/x").is_ok());
        assert!(check_url("wss://h/x").is_err());
        assert!(check_url("http://h/x").is_err());
        assert!(check_url("ws://h/x?a=1").is_err());
    }

    #[test]
    fn the_signed_url_is_the_one_twilio_dials() {
        let dial = "ws://127.0.0.1:3000/media-stream";
        assert_eq!(signed_url(dial, None).unwrap(), dial);
        for public in [
            "https://abc.ngrok.app",
            "https://abc.ngrok.app/",
            "HTTPS://abc.ngrok.app",
            "wss://abc.ngrok.app",
        ] {
            assert_eq!(
                signed_url(dial, Some(public)).unwrap(),
                "wss://abc.ngrok.app/media-stream",
                "{public}"
            );
        }
        assert_eq!(
            signed_url(dial, Some("http://h:8080/hark")).unwrap(),
            "ws://h:8080/hark/media-stream"
        );
        for bad in ["abc.ngrok.app", "https://", "https://h/?x=1", "ftp://h"] {
            assert!(signed_url(dial, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn fresh_sids_look_like_twilios() {
        let a = fresh_start(vec![("k".into(), "v".into())]);
        let b = fresh_start(Vec::new());
        for (sid, prefix) in [
            (&a.stream_sid, "MZ"),
            (&a.call_sid, "CA"),
            (&a.account_sid, "AC"),
        ] {
            assert_eq!(sid.len(), 34);
            assert!(sid.starts_with(prefix));
            assert!(
                sid[2..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            );
        }
        assert_ne!(a.stream_sid, b.stream_sid);
        assert_eq!(a.tracks, vec!["inbound"]);
        assert_eq!((a.sample_rate, a.channels), (8000, 1));
    }

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

    #[test]
    fn table_mentions_every_turn_and_error() {
        let r = Report {
            call_sid: "CA1".into(),
            turns: vec![TurnReport {
                user_start_ms: 1000,
                user_end_ms: 5100,
                agent_start_ms: Some(5800),
                latency_ms: Some(700),
                agent_audio_ms: 1100,
                interrupted: true,
            }],
            barge_ins: vec![BargeInReport {
                speech_start_ms: Some(6800),
                clear_ms: 6920,
                delay_ms: Some(100),
            }],
            errors: vec!["boom".into()],
            ..Report::default()
        };
        let t = format_table(&r);
        assert!(t.contains("1000-5100"), "{t}");
        assert!(t.contains("yes"));
        assert!(t.contains("median 700"));
        assert!(t.contains("100 ms after"));
        assert!(t.contains("boom"));
        let json = serde_json::to_value(&r).unwrap();
        for k in [
            "turns",
            "barge_ins",
            "clears",
            "marks_sent",
            "marks_echoed",
            "inbound_frames",
            "outbound_frames",
            "outbound_audio_ms",
            "errors",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
        assert!(json.get("heard").is_none());
        assert_eq!(json["turns"][0]["latency_ms"], 700);
    }
}
