//! Agents beyond the offline [`crate::EchoAgent`], each sans-IO: they turn call events into
//! [`crate::Action`]s and talk to providers only through [`crate::agent::ProviderCommand`]s.
pub mod elevenlabs;

pub mod backchannel;
pub mod cascade;
pub mod context;
pub mod http_tools;
pub mod realtime;
mod s2s;
