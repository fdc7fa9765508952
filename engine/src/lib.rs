//! # hark-engine
//!
//! The per-call state machine of hark, sans-IO (the str0m / quinn-proto model): a [`Call`] takes
//! [`Input`]s that carry their `Instant` and yields [`Output`]s — messages for Twilio, commands
//! for provider connectors, events, and the next timeout. It never reads the clock and never
//! touches a socket, so every behaviour runs in virtual time in tests.
//!
//! - [`twilio`]: the Media Streams wire format.
//! - [`turn`]: VAD (webrtc-vad) and the turn detector.
//! - [`playout`]: paced outbound audio with marks, and what the caller heard.
//! - [`agent`]: the agent interface and the offline [`EchoAgent`].
//! - [`call`]: [`Call`] itself.
//!
//! With the default feature `io`, [`io`] adds the tokio driver that runs a `Call` on sockets.
//! Without it (`--no-default-features`) the crate has no tokio in its dependency tree.

pub mod agent;
pub mod agents;
pub mod call;
pub mod config;
mod error;
#[cfg(feature = "io")]
pub mod io;
pub mod playout;
pub mod sim;
pub mod turn;
pub mod twilio;

pub use agent::{Action, Agent, EchoAgent};
pub use call::{BargeIn, Call, CallStats, CloseReason, Event, Input, Malformed, Output};
pub use config::CallConfig;
pub use error::Error;
pub use playout::{AgentAudio, UtteranceId};
