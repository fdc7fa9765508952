//! Choosing and building the agent for each call (`HARK_AGENT`).

pub mod cascade;
pub mod elevenlabs;
pub mod realtime;

use hark_engine::{Agent, EchoAgent};

use crate::config::{AgentKind, ConfigError};

/// The selected agent's settings, read once at start-up.
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
    /// Reads the settings of agent `kind` through `lookup`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or bad variable.
    pub fn from_lookup(
        kind: AgentKind,
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(match kind {
            AgentKind::Echo => AgentSettings::Echo,
            AgentKind::Cascade => AgentSettings::Cascade(cascade::Settings::from_lookup(lookup)?),
            AgentKind::ElevenLabs | AgentKind::ElevenLabsDirect => {
                AgentSettings::ElevenLabs(elevenlabs::Settings::from_lookup(lookup)?)
            }
            AgentKind::Realtime => {
                AgentSettings::Realtime(realtime::Settings::from_lookup(lookup)?)
            }
        })
    }

    /// A new agent for one call.
    ///
    /// # Errors
    /// A reason when the agent cannot be made (the call is then refused).
    pub fn build(&self) -> Result<Box<dyn Agent>, String> {
        match self {
            AgentSettings::Echo => Ok(Box::new(EchoAgent::new())),
            AgentSettings::Cascade(s) => cascade::build(s),
            AgentSettings::ElevenLabs(s) => Ok(elevenlabs::build(s)),
            AgentSettings::Realtime(s) => realtime::build(s),
        }
    }
}
