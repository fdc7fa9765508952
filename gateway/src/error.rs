//! [`Error`]: the gateway's one error type, wrapping each subsystem's error.
//!
//! The subsystem types stay where their callers match on them (an [`ApiError`] knows its HTTP
//! status, a [`SignatureError`] is refused with 403, a [`TwimlError`] gets a fallback
//! document); [`Error`] is what crosses a module boundary upwards, e.g. what `hark serve`,
//! `hark call` and `hark demo` end with. Each variant says whether a call can continue, after
//! the model of str0m's `RtcError` (`reference/house.md`, "errors").

use std::net::SocketAddr;

pub use crate::agents::AgentError;
pub use crate::agents::elevenlabs::SignedUrlError;
pub use crate::api::ApiError;
pub use crate::config::ConfigError;
pub use crate::signature::SignatureError;
pub use crate::token::TokenError;
pub use crate::twiml::TwimlError;

/// Everything that can go wrong in the gateway, by subsystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or bad. `hark serve` stops before it listens (exit code 2); no call
    /// was taken.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// The HTTP API refused a request (that request only; live calls continue), or could not
    /// start (the database, its migrations, the Twilio client: `hark serve` stops before it
    /// listens).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The agent for a call could not be built: that call is refused (its WebSocket closes
    /// before any audio); other calls continue.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A TwiML document could not be written: the webhook answers a fallback document instead,
    /// so the call still ends cleanly.
    #[error("TwiML: {0}")]
    Twiml(#[from] TwimlError),
    /// A request's `X-Twilio-Signature` was not accepted: that request is refused (403); a
    /// refused media-stream upgrade means that call gets no agent.
    #[error("signature: {0}")]
    Signature(#[from] SignatureError),
    /// An access token could not be minted: that token request is refused; no call is affected.
    #[error("access token: {0}")]
    Token(#[from] TokenError),
    /// An ElevenLabs signed URL could not be had: the call it was for is answered with a spoken
    /// message and `<Hangup />` (direct) or ends (relay); other calls continue.
    #[error(transparent)]
    SignedUrl(#[from] SignedUrlError),
    /// The listening socket could not be bound: `hark serve` stops; no call was taken.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for (`HARK_ADDR`).
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The runtime or the call workers could not start: the command stops; no call was taken.
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    /// The server's accept loop failed: `hark serve` stops; live calls are cut.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// `hark demo` could not run (developer tools).
    #[cfg(feature = "dev-tools")]
    #[error("hark demo: {0}")]
    Demo(#[from] crate::dev::demo::DemoError),
    /// `hark call` could not run: nothing was sent, or the session file is bad (developer
    /// tools). Problems during the simulated call are in its report, not here.
    #[cfg(feature = "dev-tools")]
    #[error("hark call: {0}")]
    Sim(#[from] crate::dev::simulator::SimError),
    /// `hark bench` could not run, or could not write its results (developer tools).
    #[cfg(feature = "dev-tools")]
    #[error("hark bench: {0}")]
    Bench(#[from] crate::dev::bench::BenchError),
}

impl Error {
    /// The process exit code a command ending with this error returns: 2 for a problem found
    /// before anything ran (settings, the API's start-up: database, migrations, Twilio client;
    /// a bad `hark call` argument or session), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Api(_) => 2,
            #[cfg(feature = "dev-tools")]
            Error::Sim(_) => 2,
            _ => 1,
        }
    }
}
