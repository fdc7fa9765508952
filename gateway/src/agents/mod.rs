//! Choosing and building the agent for each call (`HARK_AGENT`).

pub mod cascade;
pub mod elevenlabs;
pub mod realtime;

use hark_engine::agents::http_tools::HttpTools;
use hark_engine::{Agent, EchoAgent};

use crate::config::{AgentKind, ConfigError, Values};

/// The selected agent's settings, read once at start-up with the rest of the configuration.
#[derive(Debug, Clone)]
pub enum AgentSettings {
    /// The echo agent (no settings).
    Echo,
    /// STT → LLM → TTS over OpenAI-compatible APIs.
    Cascade(cascade::Settings),
    /// ElevenLabs Conversational AI, relayed through hark (`elevenlabs`) or connected by
    /// Twilio directly (`elevenlabs-direct`).
    ElevenLabs(elevenlabs::Settings),
    /// OpenAI Realtime.
    Realtime(realtime::Settings),
}

impl AgentSettings {
    /// Reads the settings of agent `kind` from the environment only, through `lookup` (empty
    /// values count as unset). For tests; `hark serve` reads them with the rest of
    /// [`crate::config::Config`].
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or bad variable.
    pub fn from_lookup(
        kind: AgentKind,
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        AgentSettings::from_values(kind, &Values::from_lookup(lookup))
    }

    /// Parses the settings of agent `kind` (section `agent.<kind>`, and `openai` for the
    /// cascade and realtime agents) from `v`. The other agents' settings are not read.
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or bad variable.
    pub fn from_values(kind: AgentKind, v: &Values) -> Result<Self, ConfigError> {
        Ok(match kind {
            AgentKind::Echo => AgentSettings::Echo,
            AgentKind::Cascade => AgentSettings::Cascade(cascade::Settings::from_values(v)?),
            AgentKind::ElevenLabs | AgentKind::ElevenLabsDirect => {
                AgentSettings::ElevenLabs(elevenlabs::Settings::from_values(v)?)
            }
            AgentKind::Realtime => AgentSettings::Realtime(realtime::Settings::from_values(v)?),
        })
    }

    /// A new agent for one call.
    ///
    /// # Errors
    /// [`AgentError`] when the agent cannot be made (the call is then refused).
    pub fn build(&self) -> Result<Box<dyn Agent>, AgentError> {
        Ok(match self {
            AgentSettings::Echo => Box::new(EchoAgent::new()),
            AgentSettings::Cascade(s) => cascade::build(s)?,
            AgentSettings::ElevenLabs(s) => elevenlabs::build(s),
            AgentSettings::Realtime(s) => realtime::build(s),
        })
    }
}

/// Why an agent could not be built for a call. The call is refused (its WebSocket closes before
/// any audio); other calls are not affected. Settings are checked when `hark serve` starts, so
/// this is not expected at call time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The cascade agent's settings are unusable; the text names the setting.
    #[error(transparent)]
    Cascade(#[from] hark_engine::agents::cascade::CascadeError),
}

/// `HARK_VOICEMAIL_TEXT` (`[agent] voicemail_text`): the message every agent leaves on an
/// answering machine; `off`/`none`/unset: none (hang up on machines at once).
pub(crate) fn voicemail_text(v: &Values) -> Option<String> {
    v.text("HARK_VOICEMAIL_TEXT")
        .filter(|t| !matches!(t.to_ascii_lowercase().as_str(), "off" | "none"))
}

/// The operator's tools of the file's `[[tools]]` (only those named in `chosen`, when given),
/// signed with `HARK_OPERATOR_SECRET` (read by the one parser of `[operator]`); none without
/// `[[tools]]`. Shared by every agent that offers them.
///
/// # Errors
/// [`ConfigError`] for an invalid tool (named by the file's variable), or `HARK_OPERATOR_SECRET`
/// missing or too short when there are tools.
pub(crate) fn http_tools(v: &Values, chosen: Option<&[String]>) -> Result<HttpTools, ConfigError> {
    let (entries, var) = v.tools();
    let mut tools = Vec::new();
    for e in entries {
        if chosen.is_none_or(|names| names.iter().any(|n| n == e.name.trim())) {
            tools.push(e.to_tool(var)?);
        }
    }
    if tools.is_empty() {
        return Ok(HttpTools::default());
    }
    let operator = crate::operator::OperatorSettings::from_values(v)?;
    let http = HttpTools {
        tools: tools.into(),
        secret: Some(operator.require_secret("[[tools]]")?),
    };
    http.validate()
        .map_err(|e| ConfigError::new(var, format!("[[tools]]: {e}")))?;
    Ok(http)
}

#[cfg(test)]
pub(crate) mod test_tools {
    use super::*;

    /// A `hark.toml` with one `[[tools]]` entry, `lookup_balance`.
    pub(crate) const FILE: &str = r#"
[[tools]]
name = "lookup_balance"
description = "The payer's open balance."
url = "http://127.0.0.1:9/balance"
parameters = { type = "object", properties = { payerId = { type = "string" } } }
"#;

    /// `text` as the file, with the environment `vars` on top.
    pub(crate) fn values(text: &str, vars: &[(&str, &str)]) -> Values {
        let (mut values, unknown) = Values::from_toml("hark.toml", "hark.toml", text).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        values.overlay(Values::from_lookup(|k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        }));
        values
    }

    #[test]
    fn file_tools_are_read_signed_and_chosen() {
        let secret = ("HARK_OPERATOR_SECRET", "0123456789abcdef0123");
        let t = http_tools(&values(FILE, &[secret]), None).unwrap();
        assert_eq!(t.tools.len(), 1);
        assert_eq!(t.tools[0].name, "lookup_balance");
        assert!(t.secret.is_some());
        let none = http_tools(
            &values(FILE, &[secret]),
            Some(&["end_call".to_string()][..]),
        );
        assert_eq!(none.unwrap(), HttpTools::default());
        let e = http_tools(&values(FILE, &[]), None).unwrap_err();
        assert_eq!(e.var, "HARK_OPERATOR_SECRET", "{e}");
        assert_eq!(
            http_tools(&values("", &[]), None).unwrap(),
            HttpTools::default()
        );
    }
}
