//! Settings and construction of the `realtime` agent (OpenAI Realtime, speech to speech).
//!
//! Settings (README "OpenAI Realtime"; in the configuration file, keys of `[agent.realtime]`
//! and `openai.api_key`):
//! - `OPENAI_API_KEY` (required).
//! - `HARK_REALTIME_URL` (default `wss://api.openai.com/v1/realtime`; `?model=` is added).
//! - `HARK_REALTIME_MODEL` (default `gpt-realtime`).
//! - `HARK_REALTIME_API`: `ga` (default) or `beta` (`OpenAI-Beta: realtime=v1`, beta event
//!   names and session shape).
//! - `HARK_REALTIME_TURN_DETECTION`: `server_vad` (default), `semantic_vad` or `hark` (hark's
//!   VAD and endpointing; hark commits the audio and asks for each response).
//! - `HARK_REALTIME_SILENCE_MS`, `HARK_REALTIME_VAD_THRESHOLD`,
//!   `HARK_REALTIME_PREFIX_PADDING_MS`: `server_vad` tuning (server defaults when unset).
//! - `HARK_REALTIME_EAGERNESS`: `semantic_vad` eagerness `low|medium|high|auto` (default
//!   `auto`).
//! - `HARK_REALTIME_VOICE`, `HARK_REALTIME_INSTRUCTIONS`, `HARK_REALTIME_GREETING` (the agent
//!   speaks first with these instructions).
//! - `HARK_REALTIME_TRANSCRIBE_MODEL` (default `gpt-4o-mini-transcribe`; `none` turns caller
//!   transcripts off).
//! - The file's `[[tools]]`: offered to the model as functions; each call is POSTed to the
//!   operator's backend, signed with `HARK_OPERATOR_SECRET`.

use hark_engine::Agent;
use hark_engine::agents::realtime::{
    ApiVersion, DEFAULT_MODEL, DEFAULT_URL, RealtimeAgent, RealtimeConfig, TurnDetection,
};

use crate::config::{ConfigError, Values};

/// Settings of the `realtime` agent (`[agent.realtime]`, and `openai.api_key`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The agent's configuration (key included).
    pub config: RealtimeConfig,
}

impl Settings {
    /// Reads the settings from the environment only, through `lookup`. For tests; `hark
    /// serve` reads them with the rest of [`crate::config::Config`].
    ///
    /// # Errors
    /// As [`Settings::from_values`].
    pub fn from_lookup(
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Settings::from_values(&Values::from_lookup(lookup))
    }

    /// Parses the settings from `v`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or bad variable.
    pub fn from_values(v: &Values) -> Result<Self, ConfigError> {
        let api_key = v
            .text("OPENAI_API_KEY")
            .ok_or_else(|| ConfigError::new("OPENAI_API_KEY", "required by HARK_AGENT=realtime"))?;
        let url = v
            .text("HARK_REALTIME_URL")
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err(ConfigError::new(
                "HARK_REALTIME_URL",
                format!("{url:?} must start with wss:// (or ws:// for local doubles)"),
            ));
        }
        let api = match v.text("HARK_REALTIME_API").as_deref() {
            None | Some("ga") => ApiVersion::Ga,
            Some("beta") => ApiVersion::Beta,
            Some(other) => {
                return Err(ConfigError::new(
                    "HARK_REALTIME_API",
                    format!("{other:?} (use ga or beta)"),
                ));
            }
        };
        let transcription_model = match v.text("HARK_REALTIME_TRANSCRIBE_MODEL").as_deref() {
            None => RealtimeConfig::default().transcription_model,
            Some("none") => None,
            Some(m) => Some(m.to_string()),
        };
        Ok(Settings {
            config: RealtimeConfig {
                url,
                api_key,
                model: v
                    .text("HARK_REALTIME_MODEL")
                    .unwrap_or_else(|| DEFAULT_MODEL.to_string()),
                api,
                voice: v.text("HARK_REALTIME_VOICE"),
                instructions: v.text("HARK_REALTIME_INSTRUCTIONS"),
                greeting: v.text("HARK_REALTIME_GREETING"),
                turn_detection: turn_detection(v)?,
                transcription_model,
                tools: super::http_tools(v, None)?,
                voicemail_text: super::voicemail_text(v),
                ..RealtimeConfig::default()
            },
        })
    }
}

/// `HARK_REALTIME_TURN_DETECTION` and its tuning.
fn turn_detection(v: &Values) -> Result<TurnDetection, ConfigError> {
    Ok(match v.text("HARK_REALTIME_TURN_DETECTION").as_deref() {
        None | Some("server_vad") => TurnDetection::ServerVad {
            threshold: v.num("HARK_REALTIME_VAD_THRESHOLD")?,
            prefix_padding_ms: v.num("HARK_REALTIME_PREFIX_PADDING_MS")?,
            silence_duration_ms: v.num("HARK_REALTIME_SILENCE_MS")?,
        },
        Some("semantic_vad") => {
            let eagerness = v
                .text("HARK_REALTIME_EAGERNESS")
                .unwrap_or_else(|| "auto".into());
            if !["low", "medium", "high", "auto"].contains(&eagerness.as_str()) {
                return Err(ConfigError::new(
                    "HARK_REALTIME_EAGERNESS",
                    format!("{eagerness:?} (use low, medium, high or auto)"),
                ));
            }
            TurnDetection::SemanticVad { eagerness }
        }
        Some("hark") => TurnDetection::Hark,
        Some(other) => {
            return Err(ConfigError::new(
                "HARK_REALTIME_TURN_DETECTION",
                format!("{other:?} (use server_vad, semantic_vad or hark)"),
            ));
        }
    })
}

/// A new agent for one call.
pub fn build(settings: &Settings) -> Box<dyn Agent> {
    Box::new(RealtimeAgent::new(settings.config.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(&mut |k| m.get(k).cloned())
    }

    #[test]
    fn defaults_and_errors_name_the_variable() {
        assert_eq!(settings(&[]).unwrap_err().var, "OPENAI_API_KEY");
        let s = settings(&[("OPENAI_API_KEY", "sk")]).unwrap().config;
        assert_eq!(s.url, DEFAULT_URL);
        assert_eq!(s.model, "gpt-realtime");
        assert_eq!(s.api, ApiVersion::Ga);
        assert!(matches!(s.turn_detection, TurnDetection::ServerVad { .. }));
        for (var, val) in [
            ("HARK_REALTIME_URL", "https://x"),
            ("HARK_REALTIME_API", "v2"),
            ("HARK_REALTIME_TURN_DETECTION", "magic"),
            ("HARK_REALTIME_SILENCE_MS", "soon"),
        ] {
            assert_eq!(
                settings(&[("OPENAI_API_KEY", "sk"), (var, val)])
                    .unwrap_err()
                    .var,
                var
            );
        }
        let s = settings(&[
            ("OPENAI_API_KEY", "sk"),
            ("HARK_REALTIME_TURN_DETECTION", "semantic_vad"),
            ("HARK_REALTIME_EAGERNESS", "low"),
            ("HARK_REALTIME_TRANSCRIBE_MODEL", "none"),
        ])
        .unwrap()
        .config;
        assert_eq!(
            s.turn_detection,
            TurnDetection::SemanticVad {
                eagerness: "low".into()
            }
        );
        assert_eq!(s.transcription_model, None);
    }

    #[test]
    fn file_tools_are_offered() {
        use crate::agents::test_tools::{FILE, values};
        let key = ("OPENAI_API_KEY", "sk");
        let secret = ("HARK_OPERATOR_SECRET", "0123456789abcdef0123");
        let s = Settings::from_values(&values(FILE, &[key, secret])).unwrap();
        assert_eq!(s.config.tools.tools[0].name, "lookup_balance");
        assert!(s.config.tools.secret.is_some());
        let e = Settings::from_values(&values(FILE, &[key])).unwrap_err();
        assert_eq!(e.var, "HARK_OPERATOR_SECRET");
        assert!(settings(&[key]).unwrap().config.tools.tools.is_empty());
    }
}
