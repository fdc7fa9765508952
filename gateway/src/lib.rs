//! # hark-gateway
//!
//! hark's HTTP side and the `hark` CLI: TwiML for Twilio's voice webhook, X-Twilio-Signature
//! checks, access tokens, the Media Streams WebSocket upgrade and the call workers that run the
//! engine, call records, metrics; and the developer tools (simulator, provider doubles, bench,
//! demo).
//!
//! # Layout
//!
//! A live call, top-down: `main.rs` (`hark serve`) → [`serve::Hark`] (configuration, bind) →
//! [`server::serve`] (accept loop, limits) → `server/media.rs` `media_stream` (signature
//! check, upgrade) → a call worker ([`pool`]) → `run_call` (the agent from the
//! [`serve::AgentFactory`]) → `hark_engine::io::drive` on a [`ws::Socket`], with the provider
//! connectors and `server/transfer.rs` as its call control → `hark_engine::Call`. The call's
//! events go to `server/observer.rs` → metrics, logs and `api/turns.rs` (the call record, a
//! fold over them).
//!
//! | module | job |
//! |---|---|
//! | [`serve`] | [`Hark`]: `hark serve` as a library (load, bind, serve, drain), with an [`serve::AgentFactory`] of your own for each call's agent |
//! | [`server`] | `mod.rs`: state, router, accept loop and shutdown; `voice.rs`: `/voice`; `media.rs`: the `/media-stream` upgrade and each call's life; `transfer.rs`: the call control that redirects a call (Twilio REST) for the engine's driver; `observer.rs`: events → metrics and records |
//! | [`console`] | the browser console: `/phone` (a browser phone on the Media Streams protocol), `/dashboard` (call records), their access (one-time link, API key login, media-socket tickets) and CSP |
//! | [`conns`] | connection limits, deadlines and counts by state |
//! | [`ws`] | the Twilio socket: cancel-safe WebSocket framing with a capped message size |
//! | [`pool`] | call workers: one single-threaded runtime per core |
//! | [`ops`] | operations: `/readyz` (draining, database), the `/metrics` token, HTTP request and process metrics |
//! | [`recording`] | call audio recorded by hark: a stereo WAV per call (caller, agent as heard), retention |
//! | [`config`] | `hark serve`'s one configuration: `hark.toml` (optional) with the environment on top, checked before listening |
//! | [`agents`] | agent settings → engine agents (cascade, ElevenLabs, Realtime) |
//! | [`api`] | the gateway API: tokens, signed callbacks, outbound calls, records (SQLite store and writer), Conversations |
//! | [`signature`] | `X-Twilio-Signature` (form, JSON `bodySHA256`, WebSocket upgrade) |
//! | [`token`] | Twilio access tokens (JWT) |
//! | [`twiml`] | TwiML writing |
//! | [`operator`] | the operator's backend: signed events, context and tool requests |
//! | [`metrics`] | the Prometheus recorder behind `/metrics` |
//! | [`telemetry`] | the logs and, with the feature `otlp`, OpenTelemetry traces over OTLP/HTTP (`call`, `turn`, `provider_request` spans) |
//! | [`error`] | [`Error`], the one error type: each subsystem's error, and whether a call can continue |
//! | `dev` (feature `dev-tools`, default) | the developer tools, re-exported at the crate root: `simulator` (`hark call`), `demo`, `bench`, `turns` (`hark bench turns`), `chaos` (the TCP chaos proxy), `doubles` (the OpenAI-compatible double) |

pub mod agents;
pub mod api;
pub mod config;
pub mod conns;
pub mod console;
#[cfg(feature = "dev-tools")]
pub mod dev;
pub mod error;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod pool;
pub mod recording;
pub mod serve;
pub mod server;
pub mod signature;
pub mod telemetry;
pub mod token;
pub mod twiml;
pub mod ws;

#[cfg(feature = "dev-tools")]
pub use dev::{bench, chaos, demo, doubles, simulator, turns};
pub use error::Error;
pub use serve::Hark;
