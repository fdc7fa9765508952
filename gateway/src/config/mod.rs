//! hark's configuration: one typed [`Config`], loaded once by [`Config::load`] from an optional
//! TOML file with the environment (and `.env`) on top, and checked whole before `hark serve`
//! listens.
//!
//! Names follow `DESIGN.md`: Twilio's own names for Twilio settings (`TWILIO_AUTH_TOKEN`,
//! `TWILIO_PHONE_NUMBER`, …), `HARK_*` for hark's. Every variable has one key in the file
//! ([`keys::SETTINGS`]: `HARK_STOP_MS` is `stop_ms` in `[call]`); `hark.toml.example` at the
//! repository root lists them all. A bad value is an error naming the variable and the key;
//! nothing is guessed. Unknown `HARK_*` variables and unknown file keys are warnings naming the
//! nearest known one.
//!
//! # Layout
//! - `mod.rs`: [`Config`] and the server sections (`server`, `log`, `limits`, `call`), the
//!   loader.
//! - `keys.rs`: the table of variables and keys, and the nearest-name suggestions.
//! - `values.rs`: raw values from the file and the environment, and the one set of parsers
//!   (numbers, ranges, flags, lists, URLs) every section uses.
//! - The other sections parse themselves from the same [`Values`]: the gateway API's
//!   ([`crate::api::ApiSettings::from_values`], sections `twilio`, `api`, `records`) and the
//!   agents' ([`crate::agents::AgentSettings::from_values`], `agent.*`, `openai`).

pub mod keys;
pub mod tools;
mod turn_model;
pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hark_codecs::SampleRate;
use hark_engine::config::{CallConfig, VadAggressiveness, VadKind};

pub use keys::{CONFIG_VAR, SETTINGS, Setting, unknown_hark_variables};
pub use values::{UnknownKey, Values, parse_num};

use crate::api::{ApiSettings, DevInsecure};
use crate::twiml::Verb;

/// The file `hark serve` reads from the working directory when neither `--config` nor
/// `HARK_CONFIG` names one (and only if it exists).
pub const DEFAULT_FILE: &str = "hark.toml";

/// A configuration error: which setting, and what is wrong with it. `hark serve` exits with it
/// (code 2) before it listens.
///
/// `var` is the environment variable; its file key is [`ConfigError::key`] and both are in the
/// message (`HARK_STOP_MS (call.stop_ms): "x" is not a valid number`), with the file's line
/// when the value came from the file. Errors that are not about one setting name their source
/// instead: `.env`, or where the configuration file's path came from (`--config`,
/// `HARK_CONFIG`, `hark.toml`) with the path, line and column in `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(self.var, &self.reason))]
pub struct ConfigError {
    /// The environment variable (or `.env`, `--config`, `HARK_CONFIG`, `hark.toml`).
    pub var: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            var,
            reason: reason.into(),
        }
    }

    /// The file key of [`ConfigError::var`], when it is a setting.
    pub fn key(&self) -> Option<&'static str> {
        keys::key_of(self.var)
    }
}

/// A setting error's message: `VAR (file.key): reason`, or `VAR: reason` when `var` has no key.
/// [`crate::api::ApiError::Setting`] is written the same way.
pub fn describe(var: &str, reason: &str) -> String {
    match keys::key_of(var) {
        Some(key) => format!("{var} ({key}): {reason}"),
        None => format!("{var}: {reason}"),
    }
}

/// Which agent answers calls (`HARK_AGENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    /// Plays each caller turn back (offline default, no keys).
    Echo,
    /// STT → LLM → TTS over any OpenAI-compatible API.
    Cascade,
    /// ElevenLabs Conversational AI relayed through hark's engine.
    ElevenLabs,
    /// ElevenLabs Conversational AI connected by Twilio directly (`/voice` returns the signed
    /// URL as the stream).
    ElevenLabsDirect,
    /// OpenAI Realtime (speech to speech).
    Realtime,
}

impl AgentKind {
    /// Every kind, for help texts.
    pub const ALL: [AgentKind; 5] = [
        AgentKind::Echo,
        AgentKind::Cascade,
        AgentKind::ElevenLabs,
        AgentKind::ElevenLabsDirect,
        AgentKind::Realtime,
    ];

    /// The name as written in `HARK_AGENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Echo => "echo",
            AgentKind::Cascade => "cascade",
            AgentKind::ElevenLabs => "elevenlabs",
            AgentKind::ElevenLabsDirect => "elevenlabs-direct",
            AgentKind::Realtime => "realtime",
        }
    }

    /// Parses a `HARK_AGENT` value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s.trim())
    }
}

/// Log output format (`HARK_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `hark serve` needs: the server's settings (flat fields, as the server reads
/// them), and the sections of the gateway API ([`Config::api`]), the agent
/// ([`Config::agent_settings`]), connection limits ([`Config::limits`]) and per-call engine
/// settings ([`Config::call`]).
///
/// The settings the server and the gateway API share (`HARK_PUBLIC_URL`, `TWILIO_AUTH_TOKEN`,
/// `TWILIO_PHONE_NUMBER`, `HARK_DEV_INSECURE`) are read and checked once, by
/// [`ApiSettings::from_values`], and copied here.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HARK_ADDR` (`server.addr`): where to listen (default `127.0.0.1:3000`).
    pub addr: SocketAddr,
    /// `HARK_PUBLIC_URL` (`server.public_url`): the public base URL Twilio reaches hark at
    /// (e.g. an ngrok or load balancer URL, `https://hark.example.com`), without a trailing
    /// slash. When unset, the `Host` header of each request is used.
    pub public_url: Option<String>,
    /// `HARK_AGENT` (`agent.kind`): the agent (default `echo`).
    pub agent: AgentKind,
    /// The selected agent's own settings (see each agent's section in README.md).
    pub agent_settings: crate::agents::AgentSettings,
    /// `TWILIO_AUTH_TOKEN` (`twilio.auth_token`): when set, `X-Twilio-Signature` is checked on
    /// `/voice` and on the `/media-stream` upgrade (403 on failure). When unset, both are
    /// refused with 503 naming the variable, unless [`Config::dev_insecure`] has
    /// `no-signatures`.
    pub twilio_auth_token: Option<String>,
    /// `HARK_DEV_INSECURE` (`server.dev_insecure`): development-only switches
    /// ([`parse_dev_insecure`]). With `no-signatures` the `/media-stream` upgrade is accepted
    /// without `X-Twilio-Signature` (and without `TWILIO_AUTH_TOKEN`).
    pub dev_insecure: DevInsecure,
    /// `TWILIO_PHONE_NUMBER` (`twilio.phone_number`, E.164): caller ID for calls dialled from
    /// browser clients.
    pub twilio_phone_number: Option<String>,
    /// `HARK_STREAM_PARAMS` (`server.stream_params`): comma-separated webhook parameters (query
    /// string or form body) passed to the stream as `<Parameter>`s, besides `CallSid`, `From`
    /// and `To` (default `payerId,agent`).
    pub stream_params: Vec<String>,
    /// `HARK_AFTER_CONNECT` (`server.after_connect`): TwiML run when the stream ends: `hangup`
    /// (default), `none`, `say:<text>`, `redirect:<url>`, or several joined by `|` (e.g.
    /// `say:Goodbye|hangup`).
    pub after_connect: Vec<Verb>,
    /// `HARK_LOG_FORMAT` (`log.format`): `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `HARK_SHUTDOWN_TIMEOUT_S` (`server.shutdown_timeout_s`): on SIGINT/SIGTERM, how long live
    /// calls may go on (default 30 s).
    pub shutdown_timeout: Duration,
    /// `HARK_WORKERS` (`server.workers`): call worker threads, 1–256 (default: the number of
    /// cores).
    pub workers: usize,
    /// `HARK_TURN_MODEL_THREADS` (`call.turn_model_threads`): threads running the end-of-turn
    /// model for all calls, 1–64 (default 1; see `hark_engine::io::turn_model`).
    pub turn_model_threads: usize,
    /// Connection limits and deadlines (`[limits]`: `HARK_MAX_PENDING_CONNECTIONS`,
    /// `HARK_HEADER_TIMEOUT_S`, `HARK_WS_HANDSHAKE_TIMEOUT_S`, `HARK_START_TIMEOUT_S`,
    /// `HARK_IDLE_TIMEOUT_S`): see [`crate::conns::Limits`].
    pub limits: crate::conns::Limits,
    /// Per-call engine settings (`[call]`): `HARK_VAD_MODE` (0–3, default 2), `HARK_VAD_RATE`
    /// (8000 or 16000 Hz), `HARK_NOISE_MARGIN_DB` (default 10 dB), `HARK_STOP_MS` (600 ms),
    /// `HARK_MIN_UTTERANCE_MS` (200 ms), `HARK_START_VOICED_MS` (40 ms),
    /// `HARK_MIN_INTERRUPTION_MS` (40 ms), `HARK_LEAD_MS`
    /// (200 ms), `HARK_MARK_EVERY_MS` (100 ms).
    pub call: CallConfig,
    /// The gateway API's settings (`[twilio]`, `[api]`, `[records]`), which `hark serve`
    /// builds its [`crate::api::ApiState`] from.
    pub api: ApiSettings,
    /// The operator's backend (`[operator]`): signing secret, events and context URLs.
    pub operator: crate::operator::OperatorSettings,
    /// Call audio recorded by hark (`[recording]`): see [`crate::recording`].
    pub recording: crate::recording::RecordSettings,
    /// Readiness drain and the `/metrics` token: see [`crate::ops`].
    pub ops: crate::ops::OpsSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            public_url: None,
            agent: AgentKind::Echo,
            agent_settings: crate::agents::AgentSettings::Echo,
            twilio_auth_token: None,
            dev_insecure: DevInsecure::default(),
            twilio_phone_number: None,
            stream_params: vec!["payerId".into(), "agent".into()],
            after_connect: vec![Verb::Hangup],
            log_format: LogFormat::Text,
            shutdown_timeout: Duration::from_secs(30),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            turn_model_threads: 1,
            limits: crate::conns::Limits::default(),
            call: CallConfig::default(),
            api: ApiSettings::default(),
            operator: crate::operator::OperatorSettings::default(),
            recording: crate::recording::RecordSettings::default(),
            ops: crate::ops::OpsSettings::default(),
        }
    }
}

/// Parses `HARK_AFTER_CONNECT`.
///
/// # Errors
/// [`ConfigError`] for an unknown verb.
pub fn parse_after_connect(v: &str) -> Result<Vec<Verb>, ConfigError> {
    let mut out = Vec::new();
    for part in v.split('|').map(str::trim).filter(|p| !p.is_empty()) {
        let lower = part.to_ascii_lowercase();
        if lower == "hangup" {
            out.push(Verb::Hangup);
        } else if lower == "none" {
        } else if let Some(text) = part.strip_prefix("say:") {
            out.push(Verb::Say(crate::twiml::Say::new(text)));
        } else if let Some(url) = part.strip_prefix("redirect:") {
            out.push(Verb::Redirect {
                url: url.to_string(),
                method: None,
            });
        } else {
            return Err(ConfigError {
                var: "HARK_AFTER_CONNECT",
                reason: format!(
                    "unknown verb {part:?} (use hangup, none, say:<text>, redirect:<url>)"
                ),
            });
        }
    }
    Ok(out)
}

/// Parses `HARK_DEV_INSECURE`: comma-separated switches, case-insensitive: `open-tokens`,
/// `no-signatures`, `all` (or `1`/`true`: both); `0`, `false`, `off` and empty parts are
/// nothing. The same names as the gateway API's settings (`crate::api::settings`).
///
/// # Errors
/// [`ConfigError`] naming `HARK_DEV_INSECURE` for an unknown switch.
pub fn parse_dev_insecure(v: &str) -> Result<DevInsecure, ConfigError> {
    let mut dev = DevInsecure::default();
    for part in v.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        match part.as_str() {
            "" | "0" | "false" | "off" => {}
            "1" | "true" | "all" => {
                dev.open_tokens = true;
                dev.no_signatures = true;
            }
            "open-tokens" => dev.open_tokens = true,
            "no-signatures" => dev.no_signatures = true,
            other => {
                return Err(ConfigError {
                    var: "HARK_DEV_INSECURE",
                    reason: format!(
                        "unknown switch {other:?} (use open-tokens, no-signatures, all)"
                    ),
                });
            }
        }
    }
    Ok(dev)
}

/// What [`Config::load`] found: the configuration, the file it read, and the names it did not
/// know (for warnings).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, checked whole.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// Keys in the file that hark does not read, with the nearest known key.
    pub unknown_keys: Vec<UnknownKey>,
    /// `HARK_*` variables that hark does not read, with the nearest known name
    /// ([`unknown_hark_variables`]).
    pub unknown_variables: Vec<(String, Option<&'static str>)>,
}

impl Config {
    /// Reads the configuration from the environment only, through `lookup` (a variable name →
    /// its value), so tests need not touch the process environment. Empty values count as
    /// unset.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(lookup: impl FnMut(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_values(&Values::from_lookup(lookup))
    }

    /// Parses and checks every section from `values`: the server's, the gateway API's and the
    /// selected agent's.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable (and its file line when it came from the
    /// file).
    pub fn from_values(values: &Values) -> Result<Config, ConfigError> {
        Config::parse(values).map_err(|e| values.locate(e))
    }

    fn parse(v: &Values) -> Result<Config, ConfigError> {
        let mut c = Config {
            api: ApiSettings::from_values(v)?,
            operator: crate::operator::OperatorSettings::from_values(v)?,
            recording: crate::recording::RecordSettings::from_values(v)?,
            ops: crate::ops::OpsSettings::from_values(v)?,
            ..Config::default()
        };
        c.api.operator = c.operator.clone();
        c.public_url.clone_from(&c.api.public_url);
        c.twilio_auth_token.clone_from(&c.api.auth_token);
        c.twilio_phone_number.clone_from(&c.api.phone_number);
        c.dev_insecure = c.api.dev;
        c.server_section(v)?;
        c.limits_section(v)?;
        c.call_section(v)?;
        if let Some(a) = v.text("HARK_AGENT") {
            c.agent = AgentKind::parse(&a).ok_or_else(|| {
                ConfigError::new(
                    "HARK_AGENT",
                    format!(
                        "unknown agent {a:?} (available: {})",
                        AgentKind::ALL.map(AgentKind::as_str).join(", ")
                    ),
                )
            })?;
        }
        c.agent_settings = crate::agents::AgentSettings::from_values(c.agent, v)?;
        Ok(c)
    }

    /// `[server]` and `[log]`.
    fn server_section(&mut self, v: &Values) -> Result<(), ConfigError> {
        if let Some(a) = v.text("HARK_ADDR") {
            self.addr = a.parse().map_err(|_| {
                ConfigError::new(
                    "HARK_ADDR",
                    format!("{a:?} is not an address like 127.0.0.1:3000"),
                )
            })?;
        }
        if let Some(p) = v.list("HARK_STREAM_PARAMS", ',') {
            self.stream_params = p;
        }
        if let Some(a) = v.get("HARK_AFTER_CONNECT") {
            self.after_connect = parse_after_connect(&a)?;
        }
        if let Some(f) = v.text("HARK_LOG_FORMAT") {
            self.log_format = match f.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::new(
                        "HARK_LOG_FORMAT",
                        format!("{other:?} (use text or json)"),
                    ));
                }
            };
        }
        if let Some(s) = v.num("HARK_SHUTDOWN_TIMEOUT_S")? {
            self.shutdown_timeout = Duration::from_secs(s);
        }
        if let Some(w) = v.num::<usize>("HARK_WORKERS")? {
            self.workers = w.clamp(1, 256);
        }
        Ok(())
    }

    /// `[limits]`: connection limits and deadlines (0.05–3600 s).
    fn limits_section(&mut self, v: &Values) -> Result<(), ConfigError> {
        if let Some(n) = v.num::<usize>("HARK_MAX_PENDING_CONNECTIONS")? {
            self.limits.max_pending_connections = n.max(1);
        }
        for (var, field) in [
            ("HARK_HEADER_TIMEOUT_S", &mut self.limits.header_timeout),
            (
                "HARK_WS_HANDSHAKE_TIMEOUT_S",
                &mut self.limits.handshake_timeout,
            ),
            ("HARK_START_TIMEOUT_S", &mut self.limits.start_timeout),
            ("HARK_IDLE_TIMEOUT_S", &mut self.limits.idle_timeout),
        ] {
            if let Some(secs) = v.num_in::<f64>(var, 0.05, 3600.0)? {
                *field = Duration::from_secs_f64(secs);
            }
        }
        Ok(())
    }

    /// `[call]`: per-call engine settings, checked together by [`CallConfig::validate`].
    fn call_section(&mut self, v: &Values) -> Result<(), ConfigError> {
        let call = &mut self.call;
        if let Some(name) = v.get("HARK_VAD") {
            call.vad.kind = VadKind::from_name(name.trim()).ok_or_else(|| {
                ConfigError::new(
                    "HARK_VAD",
                    format!("{name:?} is not webrtc, silero or hybrid"),
                )
            })?;
        }
        if let Some(pct) = v.num_in::<u8>("HARK_VAD_THRESHOLD_PCT", 20, 95)? {
            call.vad.speech_threshold_pct = pct;
        }
        if let Some(level) = v.num::<u8>("HARK_VAD_MODE")? {
            call.vad.aggressiveness = VadAggressiveness::from_level(level).ok_or_else(|| {
                ConfigError::new("HARK_VAD_MODE", format!("{level} is not 0, 1, 2 or 3"))
            })?;
        }
        if let Some(rate) = v.num("HARK_VAD_RATE")? {
            call.vad.rate = SampleRate(rate);
        }
        if let Some(db) = v.num("HARK_NOISE_MARGIN_DB")? {
            call.vad.noise_margin_db = db;
        }
        for (var, field) in [
            ("HARK_STOP_MS", &mut call.turn.stop_ms),
            ("HARK_MIN_UTTERANCE_MS", &mut call.turn.min_utterance_ms),
            ("HARK_START_VOICED_MS", &mut call.turn.start_voiced_ms),
            (
                "HARK_MIN_INTERRUPTION_MS",
                &mut call.turn.min_interruption_ms,
            ),
            ("HARK_RESUME_AFTER_MS", &mut call.turn.resume_after_ms),
            ("HARK_BACKCHANNEL_MAX_MS", &mut call.turn.backchannel_max_ms),
            (
                "HARK_BACKCHANNEL_CHECK_MS",
                &mut call.turn.backchannel_check_ms,
            ),
            ("HARK_LEAD_MS", &mut call.playout.lead_ms),
            ("HARK_REFILL_MS", &mut call.playout.refill_ms),
            ("HARK_MARK_EVERY_MS", &mut call.playout.mark_every_ms),
        ] {
            if let Some(ms) = v.num(var)? {
                *field = ms;
            }
        }
        turn_model::read(call, &mut self.turn_model_threads, v)?;
        call.validate()
            .map_err(|e| ConfigError::new("HARK_* call settings", e.to_string()))
    }

    /// Loads the configuration `hark serve` runs with, once: the file (`file` from
    /// `--config`, else `HARK_CONFIG`, else [`DEFAULT_FILE`] in the working directory if it
    /// exists), then the process environment on top (`.env` is loaded before, by
    /// [`load_dotenv`]).
    ///
    /// # Errors
    /// [`ConfigError`]: a file that cannot be read or parsed, a value of the wrong type, or any
    /// bad setting.
    pub fn load(file: Option<&Path>) -> Result<Loaded, ConfigError> {
        let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
        Config::load_from(file, |k| std::env::var(k).ok(), names, Path::new("."))
    }

    /// [`Config::load`] with the environment given as `lookup` and the names of every variable
    /// set (`names`, for the unknown-variable warnings), and `dir` the folder searched for
    /// [`DEFAULT_FILE`].
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_from<I: IntoIterator<Item = String>>(
        file: Option<&Path>,
        mut lookup: impl FnMut(&str) -> Option<String>,
        names: I,
        dir: &Path,
    ) -> Result<Loaded, ConfigError> {
        let chosen = match (file, lookup(CONFIG_VAR).filter(|p| !p.trim().is_empty())) {
            (Some(f), _) => Some(("--config", f.to_path_buf())),
            (None, Some(p)) => Some((CONFIG_VAR, PathBuf::from(p.trim()))),
            (None, None) => {
                // `hark.toml`, not `./hark.toml`, in messages about the working directory's.
                let default = if dir == Path::new(".") {
                    PathBuf::from(DEFAULT_FILE)
                } else {
                    dir.join(DEFAULT_FILE)
                };
                default.is_file().then_some((DEFAULT_FILE, default))
            }
        };
        let (mut values, unknown_keys) = match &chosen {
            Some((var, path)) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(var, format!("{shown}: {e}")))?;
                Values::from_toml(var, &shown, &text)?
            }
            None => (Values::default(), Vec::new()),
        };
        values.overlay(Values::from_lookup(lookup));
        Ok(Loaded {
            config: Config::from_values(&values)?,
            file: chosen.map(|(_, p)| p),
            unknown_keys,
            unknown_variables: unknown_hark_variables(names),
        })
    }

    /// The public base URL for a request: `HARK_PUBLIC_URL`, else `https://<Host>`.
    pub fn base_url(&self, host: Option<&str>) -> Option<String> {
        match &self.public_url {
            Some(u) => Some(u.clone()),
            None => host.map(|h| format!("https://{h}")),
        }
    }
}

/// Loads `.env` from the working directory into the environment (variables already set win).
/// A missing file is normal.
///
/// # Errors
/// [`ConfigError`] naming `.env` when the file exists but cannot be read or parsed (a
/// malformed line would otherwise silently drop every setting after it).
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(ConfigError::new(".env", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:3000");
        assert_eq!(c.agent, AgentKind::Echo);
        assert_eq!(c.after_connect, vec![Verb::Hangup]);
        assert!(c.public_url.is_none());
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(cfg(&[("HARK_ADDR", "nope")]).unwrap_err().var, "HARK_ADDR");
        assert_eq!(cfg(&[("HARK_AGENT", "gpt")]).unwrap_err().var, "HARK_AGENT");
        assert_eq!(
            cfg(&[("HARK_PUBLIC_URL", "hark.example")]).unwrap_err().var,
            "HARK_PUBLIC_URL"
        );
        assert_eq!(
            cfg(&[("HARK_PUBLIC_URL", "https://h/x?y=1")])
                .unwrap_err()
                .var,
            "HARK_PUBLIC_URL"
        );
        assert_eq!(
            cfg(&[("HARK_VAD_MODE", "7")]).unwrap_err().var,
            "HARK_VAD_MODE"
        );
        assert_eq!(
            cfg(&[("HARK_STOP_MS", "x")]).unwrap_err().var,
            "HARK_STOP_MS"
        );
        assert_eq!(
            cfg(&[("HARK_AFTER_CONNECT", "dance")]).unwrap_err().var,
            "HARK_AFTER_CONNECT"
        );
        assert!(cfg(&[("HARK_VAD_RATE", "44100")]).is_err());
        assert_eq!(
            cfg(&[("HARK_DEV_INSECURE", "no-signature")])
                .unwrap_err()
                .var,
            "HARK_DEV_INSECURE"
        );
    }

    #[test]
    fn dev_insecure_uses_the_api_names() {
        assert_eq!(cfg(&[]).unwrap().dev_insecure, DevInsecure::default());
        let c = cfg(&[("HARK_DEV_INSECURE", "No-Signatures")]).unwrap();
        assert!(c.dev_insecure.no_signatures && !c.dev_insecure.open_tokens);
        let c = cfg(&[("HARK_DEV_INSECURE", "open-tokens")]).unwrap();
        assert!(!c.dev_insecure.no_signatures);
        for all in ["all", "1", "true", "open-tokens, no-signatures"] {
            let d = parse_dev_insecure(all).unwrap();
            assert!(d.no_signatures && d.open_tokens, "{all}");
        }
        assert_eq!(parse_dev_insecure("off").unwrap(), DevInsecure::default());
    }

    #[test]
    fn values() {
        let c = cfg(&[
            ("HARK_PUBLIC_URL", "https://hark.example.com/"),
            ("HARK_AFTER_CONNECT", "say:Goodbye|hangup"),
            ("HARK_STREAM_PARAMS", "a, b"),
            ("HARK_STOP_MS", "700"),
            ("TWILIO_AUTH_TOKEN", ""),
        ])
        .unwrap();
        assert_eq!(c.public_url.as_deref(), Some("https://hark.example.com"));
        assert_eq!(c.after_connect.len(), 2);
        assert_eq!(c.stream_params, vec!["a", "b"]);
        assert_eq!(c.call.turn.stop_ms, 700);
        assert!(c.twilio_auth_token.is_none(), "empty counts as unset");
    }

    /// Every `HARK_*`, `TWILIO_*`, `OPENAI_*` and `ELEVENLABS_*` name quoted in the sources is
    /// in [`SETTINGS`] (so it has a file key), and every setting is still read somewhere.
    #[test]
    fn settings_match_the_sources() {
        fn walk(dir: &std::path::Path, out: &mut String) {
            for e in std::fs::read_dir(dir).expect("source folder") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push_str(&std::fs::read_to_string(&p).expect("source file"));
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut text = String::new();
        walk(&root.join("src"), &mut text);
        walk(&root.join("../engine/src"), &mut text);
        // The table itself is not a read.
        let start = text
            .find("pub const SETTINGS")
            .expect("the table is in config/keys.rs");
        let end = start + text[start..].find("];").expect("the table ends");
        text.replace_range(start..end, "");
        let mut quoted = std::collections::BTreeSet::new();
        for prefix in ["\"HARK_", "\"TWILIO_", "\"OPENAI_", "\"ELEVENLABS_"] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + 1..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(rest.len());
                if rest[end..].starts_with('"') {
                    quoted.insert(rest[..end].to_string());
                }
            }
        }
        for s in SETTINGS {
            assert!(
                quoted.contains(s.var),
                "{} is in SETTINGS but not read anywhere",
                s.var
            );
        }
        for q in &quoted {
            // Test strings of config/keys.rs are not reads.
            if q.ends_with('_')
                || q == CONFIG_VAR
                || q == "HARK_STOPMS"
                || q == "HARK_TOTALLY_DIFFERENT_THING"
            {
                continue;
            }
            assert!(
                keys::by_var(q).is_some(),
                "{q} is read but missing from SETTINGS (give it a file key there)"
            );
        }
    }

    /// A folder of its own under the system temporary folder, removed on drop.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "hark-config-{name}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write");
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load(
        dir: &TempDir,
        file: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<Loaded, ConfigError> {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let names: Vec<String> = m.keys().cloned().collect();
        Config::load_from(file, |k| m.get(k).cloned(), names, &dir.0)
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = TempDir::new("precedence");
        let f = dir.write(
            "a.toml",
            "[server]\naddr = \"127.0.0.1:4000\"\nworkers = 3\n\n[call]\nstop_ms = 700\n\n[twilio]\nauth_token = \"from-file\"\n[records]\nstore_queue = 100\n",
        );
        let l = load(
            &dir,
            Some(&f),
            &[
                ("HARK_STOP_MS", "650"),
                ("HARK_WORKERS", ""),
                ("HARK_STOPMS", "1"),
            ],
        )
        .unwrap();
        let c = &l.config;
        assert_eq!(l.file.as_deref(), Some(f.as_path()));
        assert_eq!(c.addr.to_string(), "127.0.0.1:4000", "file over default");
        assert_eq!(c.call.turn.stop_ms, 650, "environment over file");
        assert_eq!(c.workers, 3, "an empty variable is unset");
        assert_eq!(c.twilio_auth_token.as_deref(), Some("from-file"));
        assert_eq!(
            c.api.auth_token.as_deref(),
            Some("from-file"),
            "read once, both see it"
        );
        assert_eq!(c.api.store_queue, 100);
        assert_eq!(
            l.unknown_variables,
            vec![("HARK_STOPMS".to_string(), Some("HARK_STOP_MS"))]
        );
    }

    #[test]
    fn which_file_is_read() {
        let dir = TempDir::new("which");
        assert!(
            load(&dir, None, &[]).unwrap().file.is_none(),
            "none is fine"
        );
        dir.write(DEFAULT_FILE, "[call]\nstop_ms = 610\n");
        let l = load(&dir, None, &[]).unwrap();
        assert_eq!(
            l.config.call.turn.stop_ms, 610,
            "./hark.toml when it exists"
        );
        let other = dir.write("other.toml", "[call]\nstop_ms = 620\n");
        let path = other.display().to_string();
        let l = load(&dir, None, &[(CONFIG_VAR, &path)]).unwrap();
        assert_eq!(
            l.config.call.turn.stop_ms, 620,
            "HARK_CONFIG over ./hark.toml"
        );
        let flag = dir.write("flag.toml", "[call]\nstop_ms = 630\n");
        let l = load(&dir, Some(&flag), &[(CONFIG_VAR, &path)]).unwrap();
        assert_eq!(l.config.call.turn.stop_ms, 630, "--config over HARK_CONFIG");
        let e = load(&dir, Some(&dir.0.join("missing.toml")), &[]).unwrap_err();
        assert_eq!(e.var, "--config", "a named file must exist: {e}");
        let e = load(&dir, None, &[(CONFIG_VAR, "/nonexistent/hark.toml")]).unwrap_err();
        assert_eq!(e.var, CONFIG_VAR, "{e}");
    }

    #[test]
    fn unknown_file_keys_are_warned_with_a_suggestion() {
        let dir = TempDir::new("unknown");
        let f = dir.write("a.toml", "[call]\nstopms = 700\n");
        let l = load(&dir, Some(&f), &[]).unwrap();
        assert_eq!(l.config.call.turn.stop_ms, 600, "ignored, so the default");
        assert_eq!(
            l.unknown_keys,
            vec![UnknownKey {
                key: "call.stopms".into(),
                line: 2,
                nearest: Some("call.stop_ms")
            }]
        );
    }

    #[test]
    fn malformed_files_and_bad_values_name_file_key_and_line() {
        let dir = TempDir::new("malformed");
        let f = dir.write("a.toml", "[call]\nstop_ms = 700\nlead_ms = \n");
        let e = load(&dir, Some(&f), &[]).unwrap_err();
        assert_eq!(e.var, "--config");
        assert!(e.reason.contains("a.toml line 3, column"), "{e}");
        let f = dir.write("b.toml", "[limits]\nidle_timeout_s = { s = 3 }\n");
        let e = load(&dir, Some(&f), &[]).unwrap_err();
        assert!(
            e.reason
                .contains("b.toml line 2: limits.idle_timeout_s (HARK_IDLE_TIMEOUT_S)"),
            "{e}"
        );
        let f = dir.write("c.toml", "\n[call]\nvad_mode = 7\n");
        let e = load(&dir, Some(&f), &[]).unwrap_err();
        assert_eq!(e.var, "HARK_VAD_MODE");
        assert_eq!(e.key(), Some("call.vad_mode"));
        let shown = e.to_string();
        assert!(
            shown.starts_with("HARK_VAD_MODE (call.vad_mode): 7 is not"),
            "{shown}"
        );
        assert!(shown.ends_with("c.toml line 3)"), "{shown}");
        // Agent settings are checked at load too, from the file as from the environment.
        let f = dir.write("d.toml", "[agent]\nkind = \"realtime\"\n");
        let e = load(&dir, Some(&f), &[]).unwrap_err();
        assert_eq!(e.var, "OPENAI_API_KEY", "{e}");
        let f = dir.write(
            "e.toml",
            "[agent]\nkind = \"realtime\"\n[openai]\napi_key = \"sk\"\n",
        );
        assert!(load(&dir, Some(&f), &[]).is_ok());
    }

    /// `hark.toml.example` (repository root) parses, names every key and nothing else, and
    /// every value in it is valid, for every agent.
    #[test]
    fn the_example_file_covers_every_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hark.toml.example");
        let text = std::fs::read_to_string(&path).expect("hark.toml.example");
        let (commented, unknown) = Values::from_toml("--config", "example", &text).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(
            Config::from_values(&commented).is_ok(),
            "as shipped (everything commented out) it is the defaults"
        );
        // Uncomment every `# key = value` line.
        let live: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    }) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let (values, unknown) = Values::from_toml("--config", "example", &live).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        let mut seen = 0;
        for s in SETTINGS {
            assert!(
                values.get(s.var).is_some(),
                "{} ({}) is not in the example",
                s.key,
                s.var
            );
            seen += 1;
        }
        assert_eq!(seen, SETTINGS.len());
        Config::from_values(&values).expect("the example's values are valid");
        for kind in AgentKind::ALL {
            crate::agents::AgentSettings::from_values(kind, &values)
                .unwrap_or_else(|e| panic!("{}: {e}", kind.as_str()));
        }
    }
}
