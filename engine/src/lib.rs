//! # hark-engine
//!
//! The per-call state machine of hark, sans-IO (the str0m / quinn-proto model): a [`Call`] takes
//! [`Input`]s that carry their `Instant` and yields [`Output`]s — messages for Twilio, commands
//! for provider connectors, events, and the next timeout. It never reads the clock and never
//! touches a socket, so every behaviour runs in virtual time in tests.
//!
//! # Layout
//!
//! Read top-down in the order a `media` message travels:
//!
//! | module | job |
//! |---|---|
//! | [`twilio`] | the Media Streams wire format: parse inbound messages (zero-allocation fast path for `media`/`mark`), encode outbound `media`/`mark`/`clear`; `twilio/peer.rs` Twilio's side for simulators and tests |
//! | [`call`] | [`Call`]: the per-call machine; audio framing (8 bytes = 1 ms of μ-law), VAD, turns, barge-in, transfers on hold; `call/events.rs` its inputs, outputs and events; `call/turn_book.rs` which caller turn ([`TurnId`]) each event and report belongs to; `call/outside.rs` cutting the agent's audio (barge-in, [`Action::Clear`]) and the answering machine verdict ([`AnsweredBy`]) |
//! | [`turn`] | the turn detector (speech start, end of turn) over the VAD's per-frame verdicts |
//! | [`smart_turn`] | Smart Turn v3.2 (pure Rust): the probability that the caller's turn is complete, from the last 8 s of their audio (Whisper log-mel, then a Whisper-Tiny encoder and classifier) |
//! | [`vad`] | voice activity detection: webrtc-vad, Silero (pure Rust), and the hybrid default |
//! | [`playout`] | paced outbound audio (resample → μ-law → 20 ms frames) with marks, and what the caller heard from mark echoes |
//! | [`agent`] | the [`Agent`] interface, its [`Action`]s, provider pipes (`ProviderCommand`/`ProviderEvent`), the offline [`EchoAgent`] |
//! | [`agents`] | the real agents, sans-IO: `cascade` (STT → LLM → TTS), `elevenlabs`, `realtime` |
//! | [`config`] | [`CallConfig`]: VAD, turn-taking and playout settings, with units |
//! | [`dial`] | where a call can be handed: E.164 numbers and SIP URIs |
//! | [`operator`] | signing requests to the operator's backend (`X-Hark-Signature`, `X-Hark-Timestamp`) |
//! | [`sim`] (feature `sim`) | the virtual phone: plays outbound audio in (virtual) real time, echoes marks, honours `clear` |
//! | `error` | [`Error`], the crate's error type |
//! | [`io`] (feature `io`) | the tokio driver ([`io::drive`]) and provider connectors (`io::http`, `io::ws`): the only code that reads the clock or touches a socket |
//!
//! With the default feature `io`, [`io`] adds the tokio driver that runs a `Call` on sockets.
//! Without it (`--no-default-features`) the crate has no tokio in its dependency tree.

pub mod agent;
pub mod agents;
pub mod call;
pub mod config;
pub mod dial;
mod error;
#[cfg(feature = "io")]
pub mod io;
pub mod operator;
pub mod playout;
#[cfg(feature = "sim")]
pub mod sim;
pub mod smart_turn;
pub mod turn;
pub mod twilio;
pub mod vad;

pub use agent::{Action, Agent, EchoAgent};
pub use call::{
    AnsweredBy, BargeIn, Call, CallNotice, CallStats, CloseReason, Event, Input, MachineEnd,
    Malformed, Output, TransferOutcome, TurnCheck, TurnId,
};
pub use config::CallConfig;
pub use error::Error;
pub use playout::{AgentAudio, UtteranceId};
