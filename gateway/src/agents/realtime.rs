//! Settings and construction of the `realtime` agent (OpenAI Realtime, speech to speech).
//!
//! Settings (README "OpenAI Realtime"):
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

use hark_engine::Agent;
use hark_engine::agents::realtime::{
    ApiVersion, DEFAULT_MODEL, DEFAULT_URL, RealtimeAgent, RealtimeConfig, TurnDetection,
};

use crate::config::ConfigError;

/// Settings of the `realtime` agent, read from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The agent's configuration (key included).
    pub config: RealtimeConfig,
}

fn num<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError> {
    v.trim().parse().map_err(|_| ConfigError {
        var,
        reason: format!("{v:?} is not a valid number"),
    })
}

impl Settings {
    /// Reads the settings through `lookup`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or bad variable.
    pub fn from_lookup(
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let api_key = get("OPENAI_API_KEY").ok_or(ConfigError {
            var: "OPENAI_API_KEY",
            reason: "required by HARK_AGENT=realtime".into(),
        })?;
        let url = get("HARK_REALTIME_URL").unwrap_or_else(|| DEFAULT_URL.to_string());
        if !(url.starts_with("wss://") || url.starts_with("ws://")) {
            return Err(ConfigError {
                var: "HARK_REALTIME_URL",
                reason: format!("{url:?} must start with wss:// (or ws:// for local doubles)"),
            });
        }
        let api = match get("HARK_REALTIME_API").as_deref() {
            None | Some("ga") => ApiVersion::Ga,
            Some("beta") => ApiVersion::Beta,
            Some(other) => {
                return Err(ConfigError {
                    var: "HARK_REALTIME_API",
                    reason: format!("{other:?} (use ga or beta)"),
                });
            }
        };
        let turn_detection = match get("HARK_REALTIME_TURN_DETECTION").as_deref() {
            None | Some("server_vad") => TurnDetection::ServerVad {
                threshold: get("HARK_REALTIME_VAD_THRESHOLD")
                    .map(|v| num("HARK_REALTIME_VAD_THRESHOLD", &v))
                    .transpose()?,
                prefix_padding_ms: get("HARK_REALTIME_PREFIX_PADDING_MS")
                    .map(|v| num("HARK_REALTIME_PREFIX_PADDING_MS", &v))
                    .transpose()?,
                silence_duration_ms: get("HARK_REALTIME_SILENCE_MS")
                    .map(|v| num("HARK_REALTIME_SILENCE_MS", &v))
                    .transpose()?,
            },
            Some("semantic_vad") => {
                let eagerness = get("HARK_REALTIME_EAGERNESS").unwrap_or_else(|| "auto".into());
                if !["low", "medium", "high", "auto"].contains(&eagerness.as_str()) {
                    return Err(ConfigError {
                        var: "HARK_REALTIME_EAGERNESS",
                        reason: format!("{eagerness:?} (use low, medium, high or auto)"),
                    });
                }
                TurnDetection::SemanticVad { eagerness }
            }
            Some("hark") => TurnDetection::Hark,
            Some(other) => {
                return Err(ConfigError {
                    var: "HARK_REALTIME_TURN_DETECTION",
                    reason: format!("{other:?} (use server_vad, semantic_vad or hark)"),
                });
            }
        };
        let transcription_model = match get("HARK_REALTIME_TRANSCRIBE_MODEL").as_deref() {
            None => RealtimeConfig::default().transcription_model,
            Some("none") => None,
            Some(m) => Some(m.to_string()),
        };
        Ok(Settings {
            config: RealtimeConfig {
                url,
                api_key,
                model: get("HARK_REALTIME_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
                api,
                voice: get("HARK_REALTIME_VOICE"),
                instructions: get("HARK_REALTIME_INSTRUCTIONS"),
                greeting: get("HARK_REALTIME_GREETING"),
                turn_detection,
                transcription_model,
                ..RealtimeConfig::default()
            },
        })
    }
}

/// A new agent for one call.
///
/// # Errors
/// Never (kept for the common agent signature).
pub fn build(settings: &Settings) -> Result<Box<dyn Agent>, String> {
    Ok(Box::new(RealtimeAgent::new(settings.config.clone())))
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
}
