//! Server configuration from the environment (and a `.env` file).
//!
//! Names follow `DESIGN.md`: Twilio's own names for Twilio settings (`TWILIO_AUTH_TOKEN`,
//! `TWILIO_PHONE_NUMBER`, …), `HARK_*` for hark's. Every setting is documented in README.md
//! ("Configuration"). A bad value is an error naming the variable; nothing is guessed.

use std::net::SocketAddr;
use std::time::Duration;

use hark_codecs::SampleRate;
use hark_engine::config::{CallConfig, VadAggressiveness};

use crate::api::DevInsecure;
use crate::twiml::Verb;

/// A configuration error: which variable, and what is wrong with it. `hark serve` exits with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong.
    pub reason: String,
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

/// Everything `hark serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HARK_ADDR`: where to listen (default `127.0.0.1:3000`).
    pub addr: SocketAddr,
    /// `HARK_PUBLIC_URL`: the public base URL Twilio reaches hark at (e.g. an ngrok or load
    /// balancer URL, `https://hark.example.com`), without a trailing slash. When unset, the
    /// `Host` header of each request is used.
    pub public_url: Option<String>,
    /// `HARK_AGENT`: the agent (default `echo`).
    pub agent: AgentKind,
    /// The selected agent's own settings (see each agent's section in README.md).
    pub agent_settings: crate::agents::AgentSettings,
    /// `TWILIO_AUTH_TOKEN`: when set, `X-Twilio-Signature` is checked on `/voice` and on the
    /// `/media-stream` upgrade (403 on failure). When unset, both are refused with 503 naming
    /// the variable, unless [`Config::dev_insecure`] has `no-signatures`.
    pub twilio_auth_token: Option<String>,
    /// `HARK_DEV_INSECURE`: development-only switches, parsed as the gateway API parses them
    /// ([`parse_dev_insecure`]). With `no-signatures` the `/media-stream` upgrade is accepted
    /// without `X-Twilio-Signature` (and without `TWILIO_AUTH_TOKEN`).
    pub dev_insecure: DevInsecure,
    /// `TWILIO_PHONE_NUMBER`: caller ID for calls dialled from browser clients.
    pub twilio_phone_number: Option<String>,
    /// `HARK_STREAM_PARAMS`: comma-separated webhook parameters (query string or form body)
    /// passed to the stream as `<Parameter>`s, besides `CallSid`, `From` and `To`
    /// (default `payerId,agent`).
    pub stream_params: Vec<String>,
    /// `HARK_AFTER_CONNECT`: TwiML run when the stream ends: `hangup` (default), `none`,
    /// `say:<text>`, `redirect:<url>`, or several joined by `|` (e.g. `say:Goodbye|hangup`).
    pub after_connect: Vec<Verb>,
    /// `HARK_LOG_FORMAT`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `HARK_SHUTDOWN_TIMEOUT_S`: on SIGINT/SIGTERM, how long live calls may go on (default 30).
    pub shutdown_timeout: Duration,
    /// `HARK_WORKERS`: call worker threads (default: the number of cores).
    pub workers: usize,
    /// Connection limits and deadlines (`HARK_MAX_PENDING_CONNECTIONS`, `HARK_HEADER_TIMEOUT_S`,
    /// `HARK_WS_HANDSHAKE_TIMEOUT_S`, `HARK_START_TIMEOUT_S`, `HARK_IDLE_TIMEOUT_S`): see
    /// [`crate::conns::Limits`].
    pub limits: crate::conns::Limits,
    /// Per-call engine settings: `HARK_VAD_MODE` (0–3, default 2), `HARK_VAD_RATE` (8000 or
    /// 16000), `HARK_NOISE_MARGIN_DB` (default 10), `HARK_STOP_MS` (600),
    /// `HARK_MIN_UTTERANCE_MS` (200), `HARK_MIN_INTERRUPTION_MS` (80), `HARK_LEAD_MS` (200),
    /// `HARK_MARK_EVERY_MS` (100).
    pub call: CallConfig,
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
            limits: crate::conns::Limits::default(),
            call: CallConfig::default(),
        }
    }
}

fn parse_num<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError {
        var,
        reason: format!("{v:?} is not a valid number"),
    })
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

impl Config {
    /// Reads the configuration through `lookup` (a variable name → its value), so tests need
    /// not touch the process environment. Empty values count as unset.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(
        mut lookup: impl FnMut(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let mut c = Config::default();
        if let Some(v) = get("HARK_ADDR") {
            c.addr = v.trim().parse().map_err(|_| ConfigError {
                var: "HARK_ADDR",
                reason: format!("{v:?} is not an address like 127.0.0.1:3000"),
            })?;
        }
        if let Some(v) = get("HARK_PUBLIC_URL") {
            let v = v.trim().trim_end_matches('/').to_string();
            let rest = v
                .strip_prefix("https://")
                .or_else(|| v.strip_prefix("http://"))
                .ok_or_else(|| ConfigError {
                    var: "HARK_PUBLIC_URL",
                    reason: format!("{v:?} must start with https:// (or http:// for local tests)"),
                })?;
            if rest.is_empty() || rest.contains('?') || rest.contains('#') {
                return Err(ConfigError {
                    var: "HARK_PUBLIC_URL",
                    reason: format!("{v:?} needs a host and no query string or fragment"),
                });
            }
            c.public_url = Some(v);
        }
        if let Some(v) = get("HARK_AGENT") {
            c.agent = AgentKind::parse(&v).ok_or_else(|| ConfigError {
                var: "HARK_AGENT",
                reason: format!(
                    "unknown agent {v:?} (available: {})",
                    AgentKind::ALL.map(AgentKind::as_str).join(", ")
                ),
            })?;
        }
        c.agent_settings = crate::agents::AgentSettings::from_lookup(c.agent, &mut get)?;
        c.twilio_auth_token = get("TWILIO_AUTH_TOKEN");
        if let Some(v) = get("HARK_DEV_INSECURE") {
            c.dev_insecure = parse_dev_insecure(&v)?;
        }
        c.twilio_phone_number = get("TWILIO_PHONE_NUMBER");
        if let Some(v) = get("HARK_STREAM_PARAMS") {
            c.stream_params = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = get("HARK_AFTER_CONNECT") {
            c.after_connect = parse_after_connect(&v)?;
        }
        if let Some(v) = get("HARK_LOG_FORMAT") {
            c.log_format = match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError {
                        var: "HARK_LOG_FORMAT",
                        reason: format!("{other:?} (use text or json)"),
                    });
                }
            };
        }
        if let Some(v) = get("HARK_SHUTDOWN_TIMEOUT_S") {
            c.shutdown_timeout = Duration::from_secs(parse_num("HARK_SHUTDOWN_TIMEOUT_S", &v)?);
        }
        if let Some(v) = get("HARK_WORKERS") {
            c.workers = parse_num::<usize>("HARK_WORKERS", &v)?.clamp(1, 256);
        }
        if let Some(v) = get("HARK_MAX_PENDING_CONNECTIONS") {
            c.limits.max_pending_connections =
                parse_num::<usize>("HARK_MAX_PENDING_CONNECTIONS", &v)?.max(1);
        }
        for (var, field) in [
            ("HARK_HEADER_TIMEOUT_S", &mut c.limits.header_timeout),
            (
                "HARK_WS_HANDSHAKE_TIMEOUT_S",
                &mut c.limits.handshake_timeout,
            ),
            ("HARK_START_TIMEOUT_S", &mut c.limits.start_timeout),
            ("HARK_IDLE_TIMEOUT_S", &mut c.limits.idle_timeout),
        ] {
            if let Some(v) = get(var) {
                let secs: f64 = parse_num(var, &v)?;
                if !(0.05..=3600.0).contains(&secs) {
                    return Err(ConfigError {
                        var,
                        reason: format!("{v:?} is not between 0.05 and 3600 seconds"),
                    });
                }
                *field = Duration::from_secs_f64(secs);
            }
        }
        if let Some(v) = get("HARK_VAD_MODE") {
            let level: u8 = parse_num("HARK_VAD_MODE", &v)?;
            c.call.vad.aggressiveness =
                VadAggressiveness::from_level(level).ok_or(ConfigError {
                    var: "HARK_VAD_MODE",
                    reason: format!("{level} is not 0, 1, 2 or 3"),
                })?;
        }
        if let Some(v) = get("HARK_VAD_RATE") {
            c.call.vad.rate = SampleRate(parse_num("HARK_VAD_RATE", &v)?);
        }
        if let Some(v) = get("HARK_NOISE_MARGIN_DB") {
            c.call.vad.noise_margin_db = parse_num("HARK_NOISE_MARGIN_DB", &v)?;
        }
        if let Some(v) = get("HARK_STOP_MS") {
            c.call.turn.stop_ms = parse_num("HARK_STOP_MS", &v)?;
        }
        if let Some(v) = get("HARK_MIN_UTTERANCE_MS") {
            c.call.turn.min_utterance_ms = parse_num("HARK_MIN_UTTERANCE_MS", &v)?;
        }
        if let Some(v) = get("HARK_MIN_INTERRUPTION_MS") {
            c.call.turn.min_interruption_ms = parse_num("HARK_MIN_INTERRUPTION_MS", &v)?;
        }
        if let Some(v) = get("HARK_LEAD_MS") {
            c.call.playout.lead_ms = parse_num("HARK_LEAD_MS", &v)?;
        }
        if let Some(v) = get("HARK_MARK_EVERY_MS") {
            c.call.playout.mark_every_ms = parse_num("HARK_MARK_EVERY_MS", &v)?;
        }
        c.call.validate().map_err(|e| ConfigError {
            var: "HARK_* call settings",
            reason: e.to_string(),
        })?;
        Ok(c)
    }

    /// Reads `.env` (if present, without overriding set variables) and the process environment.
    ///
    /// # Errors
    /// As [`Config::from_lookup`].
    pub fn from_env() -> Result<Config, ConfigError> {
        load_dotenv()?;
        Config::from_lookup(|k| std::env::var(k).ok())
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
        Err(e) => Err(ConfigError {
            var: ".env",
            reason: e.to_string(),
        }),
    }
}

/// Every environment variable hark reads (a test keeps this in step with the sources).
pub const KNOWN_VARIABLES: &[&str] = &[
    "ELEVENLABS_AGENT_ID",
    "ELEVENLABS_API_BASE",
    "ELEVENLABS_API_KEY",
    "HARK_ADDR",
    "HARK_AFTER_CONNECT",
    "HARK_AGENT",
    "HARK_API_KEY",
    "HARK_CALLS_PER_SECOND",
    "HARK_CALL_QUEUE",
    "HARK_DATABASE_URL",
    "HARK_DEV_INSECURE",
    "HARK_ELEVENLABS_END_CALL_TOOL",
    "HARK_ELEVENLABS_FIRST_MESSAGE",
    "HARK_ELEVENLABS_LANGUAGE",
    "HARK_ELEVENLABS_PROMPT",
    "HARK_ELEVENLABS_VOICE_ID",
    "HARK_FALLBACK_TEXT",
    "HARK_FILLER_AFTER_MS",
    "HARK_FILLER_TEXT",
    "HARK_GOODBYE_TEXT",
    "HARK_GREETING",
    "HARK_GREETING_PARAM",
    "HARK_HEADER_TIMEOUT_S",
    "HARK_IDLE_TIMEOUT_S",
    "HARK_LANGUAGE",
    "HARK_LEAD_MS",
    "HARK_LLM_API_KEY",
    "HARK_LLM_BASE_URL",
    "HARK_LLM_MAX_TOKENS",
    "HARK_LLM_MODEL",
    "HARK_LLM_STALL_MS",
    "HARK_LLM_TEMPERATURE",
    "HARK_LLM_TIMEOUT_MS",
    "HARK_LOG_FORMAT",
    "HARK_MARK_EVERY_MS",
    "HARK_MAX_PENDING_CONNECTIONS",
    "HARK_MIN_INTERRUPTION_MS",
    "HARK_MIN_UTTERANCE_MS",
    "HARK_NODE_ID",
    "HARK_NOISE_MARGIN_DB",
    "HARK_PROVIDER_IDLE_MS",
    "HARK_PUBLIC_URL",
    "HARK_RATE_LIMIT_BURST",
    "HARK_RATE_LIMIT_PER_MIN",
    "HARK_REALTIME_API",
    "HARK_REALTIME_EAGERNESS",
    "HARK_REALTIME_GREETING",
    "HARK_REALTIME_INSTRUCTIONS",
    "HARK_REALTIME_MODEL",
    "HARK_REALTIME_PREFIX_PADDING_MS",
    "HARK_REALTIME_SILENCE_MS",
    "HARK_REALTIME_TRANSCRIBE_MODEL",
    "HARK_REALTIME_TURN_DETECTION",
    "HARK_REALTIME_URL",
    "HARK_REALTIME_VAD_THRESHOLD",
    "HARK_REALTIME_VOICE",
    "HARK_RETRY_BACKOFF_MS",
    "HARK_RETRY_BUDGET_MS",
    "HARK_RETRY_MAX",
    "HARK_SHUTDOWN_TIMEOUT_S",
    "HARK_START_TIMEOUT_S",
    "HARK_STOP_MS",
    "HARK_STORE_QUEUE",
    "HARK_STREAM_PARAMS",
    "HARK_STT_API_KEY",
    "HARK_STT_BASE_URL",
    "HARK_STT_MODEL",
    "HARK_STT_PROMPT",
    "HARK_STT_STALL_MS",
    "HARK_STT_STREAM",
    "HARK_STT_TIMEOUT_MS",
    "HARK_SYSTEM_PROMPT",
    "HARK_SYSTEM_PROMPT_PARAM",
    "HARK_TOKEN_TTL_S",
    "HARK_TOOLS",
    "HARK_TRANSFER_ALLOW",
    "HARK_TRANSFER_FAILED_TEXT",
    "HARK_TRANSFER_TEXT",
    "HARK_TRUSTED_IDENTITY_HEADER",
    "HARK_TTS_API_KEY",
    "HARK_TTS_BASE_URL",
    "HARK_TTS_INSTRUCTIONS",
    "HARK_TTS_MODEL",
    "HARK_TTS_SPEED",
    "HARK_TTS_STALL_MS",
    "HARK_TTS_TIMEOUT_MS",
    "HARK_TTS_VOICE",
    "HARK_TWILIO_API_BASE",
    "HARK_TWILIO_CONVERSATIONS_BASE",
    "HARK_VAD_MODE",
    "HARK_VAD_RATE",
    "HARK_WORKERS",
    "HARK_WS_HANDSHAKE_TIMEOUT_S",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_API_KEY",
    "TWILIO_API_SECRET",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_CONVERSATIONS_SERVICE_SID",
    "TWILIO_PHONE_NUMBER",
    "TWILIO_TWIML_APP_SID",
    "TWILIO_VOICE_REGION",
];

/// The `HARK_*` variables among `names` that hark does not read (a typo such as `HARK_STOPMS`
/// would otherwise be silently ignored), each with the nearest known name when one is close
/// (Levenshtein distance ≤ 3).
pub fn unknown_hark_variables<I, S>(names: I) -> Vec<(String, Option<&'static str>)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref();
        if !name.starts_with("HARK_") || KNOWN_VARIABLES.contains(&name) {
            continue;
        }
        let nearest = KNOWN_VARIABLES
            .iter()
            .map(|k| (strsim::levenshtein(name, k), *k))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| k);
        out.push((name.to_string(), nearest));
    }
    out.sort();
    out
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

    #[test]
    fn unknown_hark_variables_get_the_nearest_known_name() {
        let found = unknown_hark_variables([
            "HARK_STOPMS",
            "HARK_STOP_MS",
            "PATH",
            "HARK_TOTALLY_DIFFERENT_THING",
        ]);
        assert_eq!(
            found,
            vec![
                ("HARK_STOPMS".to_string(), Some("HARK_STOP_MS")),
                ("HARK_TOTALLY_DIFFERENT_THING".to_string(), None),
            ]
        );
    }

    /// Every `HARK_*`, `TWILIO_*`, `OPENAI_*` and `ELEVENLABS_*` name quoted in the sources is
    /// in [`KNOWN_VARIABLES`], and every known name is still read somewhere.
    #[test]
    fn known_variables_match_the_sources() {
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
        // The list itself is not a read.
        let start = text
            .find("pub const KNOWN_VARIABLES")
            .expect("the list is in config.rs");
        let end = start + text[start..].find("];").expect("the list ends");
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
        // This file's own list and test strings are not reads.
        for k in KNOWN_VARIABLES {
            assert!(
                quoted.contains(*k),
                "{k} is in KNOWN_VARIABLES but not read anywhere"
            );
        }
        for q in &quoted {
            if q.ends_with('_') || q == "HARK_STOPMS" || q == "HARK_TOTALLY_DIFFERENT_THING" {
                continue;
            }
            assert!(
                KNOWN_VARIABLES.contains(&q.as_str()),
                "{q} is read but missing from KNOWN_VARIABLES"
            );
        }
    }
}
