//! Settings and construction of the `cascade` agent.
//!
//! SCAFFOLD: replaced by the work that builds this agent. Until then selecting it is a
//! configuration error, so nothing pretends to work.

use hark_engine::Agent;

use crate::config::ConfigError;

/// Settings of the `cascade` agent, read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {}

impl Settings {
    /// Reads the settings through `lookup`.
    ///
    /// # Errors
    /// Always, until the agent is built.
    pub fn from_lookup(
        _lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Err(ConfigError {
            var: "HARK_AGENT",
            reason: "the cascade agent is not available in this build yet".into(),
        })
    }
}

/// A new agent for one call.
///
/// # Errors
/// A reason when the agent cannot be made.
pub fn build(_settings: &Settings) -> Result<Box<dyn Agent>, String> {
    Err("the cascade agent is not available in this build yet".into())
}
