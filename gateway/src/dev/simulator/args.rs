//! The `hark call` command line: [`CallArgs`] and the parsers of `--param` and `--speed`.

use std::path::PathBuf;

use super::{DEFAULT_TAIL_MS, MAX_PARAM_CHARS};

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

pub(super) fn check_speed(v: f64) -> Result<f64, String> {
    if v == 0.0 || (MIN_SPEED..=MAX_SPEED).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "speed {v}: must be 0 (as fast as possible) or within {MIN_SPEED}..={MAX_SPEED} (1 = real time)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::dial::merge_params;
    use super::*;

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
}
