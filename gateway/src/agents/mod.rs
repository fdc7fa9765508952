//! Choosing and building the agent for each call (`HARK_AGENT`).

pub mod cascade;
pub mod elevenlabs;
pub mod realtime;

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
