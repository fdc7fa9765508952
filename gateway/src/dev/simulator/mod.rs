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
//! heard ([`Phone::bursts`](hark_engine::sim::Phone::bursts)) that starts at or after the turn's end and before the next turn's
//! end; `latency_ms` is the voice-to-voice time at the phone. For each `clear`, the barge-in
//! delay is measured from the moment the first voiced frame of the speech in progress was sent
//! (`speech start + 20 ms`).
//!
//! ## Sharing between calls
//! [`run_call`] takes an already loaded [`CallSetup`]: the audio is an `Arc<[u8]>` and the
//! caller's speech an `Arc<[Speech]>`, so `hark demo` and `hark bench` can run thousands of
//! calls over one buffer. The tail noise is generated per frame, not stored. A call's own state
//! is the phone, a few counters, one timer and the messages due but not yet written; one task
//! per call reads and writes its socket (no writer task, no channel), and what falls due in one
//! wake-up (a frame and the mark echoes with it) leaves in one write. The phone keeps a
//! timeline of everything it played (8 bytes per ms, up to the last audio heard) whether or not
//! [`CallSetup::keep_heard`] asks for it: it has no switch to turn that off.
//!
//! ## Layout
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the constants, [`SimError`], [`CallSetup`] and the `hark call` command ([`prepare`], [`run`], [`command`]) |
//! | `args.rs` | the command line ([`CallArgs`], `--param` and `--speed` parsing) |
//! | `caller.rs` | the caller's side: loading audio ([`load_audio`]), its speech ([`UserSpeech`]), the 20 ms frames and the line noise after them |
//! | `dial.rs` | what Twilio puts on the wire before any audio: the signed URL ([`signed_url`]) and the `start` SIDs ([`fresh_start`]) |
//! | `session.rs` | one call on the socket ([`run_call`]): the schedule of frames, the virtual phone, mark echoes, `stop` and the close |
//! | `report.rs` | what a call measured ([`Report`]): turns matched to answers, barge-ins, the table |

mod args;
mod caller;
mod dial;
mod report;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hark_codecs::ResampleError;
use hark_codecs::wav::{self, WavError};
use hark_engine::twilio::Start;
use tokio_tungstenite::tungstenite;

pub use args::{CallArgs, MAX_SPEED, MIN_SPEED};
pub use caller::{CallerAudio, Speech, TurnSource, UserSpeech, load_audio};
pub use dial::{fresh_start, random_token, signed_url};
pub use report::{BargeInReport, Report, TurnReport, format_table, print_table};
pub use session::run_call;

use args::check_speed;
use dial::{check_url, merge_params, random_hex32};

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
/// A `clear` this long (media ms) after a stretch of speech ended is still attributed to it.
pub const BARGE_IN_GRACE_MS: u64 = 1_000;
/// Errors kept in a [`Report`]; more are counted in one last entry.
pub const MAX_ERRORS: usize = 100;
/// Twilio's limit on a `<Parameter>`: name and value together under 500 characters
/// (twilio.com/docs/voice/twiml/stream; `reference/twilio.md` §1.7).
pub const MAX_PARAM_CHARS: usize = 500;

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
