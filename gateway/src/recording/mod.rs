//! Call audio recorded by hark: one stereo WAV per recorded call (left: the caller as
//! received, right: the agent as the caller heard it, `clear`-cut audio left out), both on
//! the call's media clock.
//!
//! - **Which calls.** `HARK_RECORD` (`recording.enabled`, default off) records every call; a
//!   call's `<Parameter name="hark_record" value="1"/>` (or `0`) overrides it for that call.
//! - **How.** [`RecordingSocket`] copies the call's audio off the Twilio socket into a
//!   [`Tape`] (memory: 16 bytes per ms of call); when the call has ended, [`save`] writes
//!   `<HARK_RECORD_DIR>/<CallSid>-<StreamSid>.wav` (8 kHz, 16-bit PCM, 2 channels; 32 KB per
//!   second) on a blocking thread, through a `.part` file renamed when complete.
//! - **Linked.** The call record's summary gets [`AudioInfo`] (`summary.audio`: the URL of
//!   `GET /calls/{sid}/recording.wav`, the file, its length), which `GET /calls/{sid}`
//!   (`audio`) and the `call.ended` event (`audio`) show.
//! - **Retention.** With `HARK_RECORD_RETENTION_DAYS` > 0 a sweep at start and every hour
//!   ([`start_sweeper`]) deletes recordings older than that ([`sweep`]).
//!
//! Recordings hold callers' voices: personal data (README, "Call recordings").

mod socket;
mod tape;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{ConfigError, Values};

pub use socket::{Recorded, RecordingSocket};
pub use tape::{Stereo, Tape};

/// Most audio kept per recorded call, ms (4 hours: 230 MB of memory, 460 MB of WAV); the rest
/// of a longer call is left out and logged.
pub const MAX_RECORD_MS: u64 = 4 * 3600 * 1000;
/// How often the retention sweep runs (and once at start).
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The recording settings (`[recording]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSettings {
    /// `HARK_RECORD` (`recording.enabled`): record every call (default off); a call's
    /// `hark_record` parameter overrides it.
    pub enabled: bool,
    /// `HARK_RECORD_DIR` (`recording.dir`): the folder of the WAV files (default
    /// `recordings`, relative to the working directory), created when needed.
    pub dir: PathBuf,
    /// `HARK_RECORD_RETENTION_DAYS` (`recording.retention_days`): recordings older than this
    /// many days are deleted (0, the default: kept until you delete them).
    pub retention_days: u32,
}

impl Default for RecordSettings {
    fn default() -> Self {
        RecordSettings {
            enabled: false,
            dir: PathBuf::from("recordings"),
            retention_days: 0,
        }
    }
}

impl RecordSettings {
    /// Reads `[recording]` from `v`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable for a value that is not a switch, or a retention
    /// outside 0–36500 days.
    pub fn from_values(v: &Values) -> Result<RecordSettings, ConfigError> {
        let mut s = RecordSettings::default();
        if let Some(on) = v.flag("HARK_RECORD")? {
            s.enabled = on;
        }
        if let Some(dir) = v.text("HARK_RECORD_DIR") {
            s.dir = PathBuf::from(dir);
        }
        if let Some(days) = v.num_in::<u32>("HARK_RECORD_RETENTION_DAYS", 0, 36_500)? {
            s.retention_days = days;
        }
        Ok(s)
    }

    /// The retention as a duration (`None`: keep forever).
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 86_400))
    }
}

/// A saved recording, as the call record and the `call.ended` event show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioInfo {
    /// Where to fetch it: `GET /calls/{sid}/recording.wav` (API key), after `HARK_PUBLIC_URL`
    /// when that is set.
    pub url: String,
    /// The file on the server.
    pub file: String,
    /// Length, ms.
    pub duration_ms: u64,
    /// File size, bytes.
    pub bytes: u64,
    /// The round trip taken off the agent channel (from mark echoes), ms.
    pub lag_ms: u64,
}

/// The file name of a stream's recording: `<CallSid>-<StreamSid>.wav`, keeping only ASCII
/// letters and digits of each (at most 64), so a `start` message cannot name a path.
pub fn file_name(call_sid: &str, stream_sid: &str) -> String {
    let clean = |s: &str, or: &str| {
        let c: String = s
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect();
        if c.is_empty() { or.to_owned() } else { c }
    };
    format!(
        "{}-{}.wav",
        clean(call_sid, "call"),
        clean(stream_sid, "stream")
    )
}

/// Writes `stereo` as a 16-bit PCM WAV at 8 kHz (left caller, right agent) to `path`, through
/// `<path>.part`. Returns the file's size.
///
/// # Errors
/// I/O errors (also hound's, as I/O errors).
pub fn write_wav(path: &Path, stereo: &Stereo) -> std::io::Result<u64> {
    use hark_codecs::mulaw::decode_sample;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let part = path.with_extension("wav.part");
    let io = |e: hound::Error| match e {
        hound::Error::IoError(e) => e,
        e => std::io::Error::other(e.to_string()),
    };
    let mut w = hound::WavWriter::create(&part, spec).map_err(io)?;
    for (&l, &r) in stereo.caller.iter().zip(&stereo.agent) {
        w.write_sample(decode_sample(l)).map_err(io)?;
        w.write_sample(decode_sample(r)).map_err(io)?;
    }
    w.finalize().map_err(io)?;
    std::fs::rename(&part, path)?;
    Ok(std::fs::metadata(path)?.len())
}

/// Saves a call's recording (made from its [`Tape`] at `end`) under `settings.dir` on a
/// blocking thread. Returns what the record links to, or `None` (logged, counted in
/// `hark_recordings_total{result="failed"}`) when it could not be written.
pub async fn save(
    rec: Recorded,
    settings: &RecordSettings,
    public_url: Option<&str>,
    end: Instant,
) -> Option<AudioInfo> {
    let Recorded {
        tape,
        call_sid,
        stream_sid,
    } = rec;
    let path = settings.dir.join(file_name(&call_sid, &stream_sid));
    let dir = settings.dir.clone();
    let file = path.clone();
    let written = tokio::task::spawn_blocking(move || {
        let stereo = tape.finish(end);
        std::fs::create_dir_all(&dir)?;
        let bytes = write_wav(&file, &stereo)?;
        Ok::<_, std::io::Error>((stereo, bytes))
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    match written {
        Ok((stereo, bytes)) => {
            metrics::counter!("hark_recordings_total", "result" => "saved").increment(1);
            if stereo.truncated {
                warn!(max_ms = MAX_RECORD_MS, "recording cut at its length limit");
            }
            let duration_ms = stereo.caller.len() as u64 / tape::PER_MS;
            info!(file = %path.display(), duration_ms, "call recorded");
            let sid: String = call_sid
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            Some(AudioInfo {
                url: format!(
                    "{}/calls/{sid}/recording.wav",
                    public_url.unwrap_or("").trim_end_matches('/')
                ),
                file: path.display().to_string(),
                duration_ms,
                bytes,
                lag_ms: stereo.lag / tape::PER_MS,
            })
        }
        Err(e) => {
            metrics::counter!("hark_recordings_total", "result" => "failed").increment(1);
            warn!(file = %path.display(), error = %e, "cannot write the call's recording");
            None
        }
    }
}

/// An HTTP answer streaming the recording at `file` (64 KiB chunks, `audio/wav`,
/// `Cache-Control: private, no-store`: personal data is never cached), or `None` when it cannot
/// be opened (deleted, or by the retention sweep). For `GET /calls/{sid}/recording.wav` and
/// any other route that checks its own access first.
pub async fn file_response(file: &Path) -> Option<axum::response::Response> {
    use axum::http::header::{self, HeaderValue};
    use axum::response::IntoResponse;
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(file).await.ok()?;
    let len = f.metadata().await.map(|m| m.len()).ok();
    let chunks = futures_util::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut resp = axum::body::Body::from_stream(chunks).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Some(resp)
}

/// Deletes the recordings (`*.wav`, and `*.wav.part` left by a crash) in `dir` last modified
/// more than `max_age` before `now`. Returns how many were deleted; a missing `dir` is none.
///
/// # Errors
/// When `dir` cannot be read; files that cannot be deleted are logged and skipped.
pub fn sweep(dir: &Path, max_age: Duration, now: SystemTime) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut deleted = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.ends_with(".wav") || name.ends_with(".wav.part")) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > max_age);
        if meta.is_file() && old {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot delete an old recording")
                }
            }
        }
    }
    Ok(deleted)
}

/// Starts the retention sweep (at once, then every [`SWEEP_EVERY`]) when a retention is set.
/// Abort the handle to stop it.
pub fn start_sweeper(settings: &RecordSettings) -> Option<tokio::task::JoinHandle<()>> {
    let max_age = settings.retention()?;
    let dir = settings.dir.clone();
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            every.tick().await;
            let d = dir.clone();
            let r =
                tokio::task::spawn_blocking(move || sweep(&d, max_age, SystemTime::now())).await;
            match r {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    metrics::counter!("hark_recordings_deleted_total").increment(n as u64);
                    info!(deleted = n, dir = %dir.display(), "old recordings deleted");
                }
                Ok(Err(e)) => warn!(dir = %dir.display(), error = %e, "retention sweep failed"),
                Err(e) => warn!(error = %e, "retention sweep failed"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_leave_the_folder() {
        assert_eq!(file_name("CA12", "MZ34"), "CA12-MZ34.wav");
        assert_eq!(file_name("../../etc/passwd", ""), "etcpasswd-stream.wav");
        assert_eq!(file_name("/", "ü"), "call-stream.wav");
    }

    #[test]
    fn settings_parse_and_name_the_variable() {
        let v = Values::from_lookup(|k| match k {
            "HARK_RECORD" => Some("1".into()),
            "HARK_RECORD_DIR" => Some("/var/lib/hark/rec".into()),
            "HARK_RECORD_RETENTION_DAYS" => Some("30".into()),
            _ => None,
        });
        let s = RecordSettings::from_values(&v).expect("valid");
        assert!(s.enabled);
        assert_eq!(s.dir, PathBuf::from("/var/lib/hark/rec"));
        assert_eq!(s.retention(), Some(Duration::from_secs(30 * 86_400)));
        let bad = Values::from_lookup(|k| (k == "HARK_RECORD").then(|| "sometimes".into()));
        let e = RecordSettings::from_values(&bad).expect_err("bad");
        assert_eq!(e.var, "HARK_RECORD");
        let d = RecordSettings::from_values(&Values::from_lookup(|_| None)).expect("defaults");
        assert_eq!(d, RecordSettings::default());
        assert_eq!(d.retention(), None);
    }
}
