//! # hark-gateway
//!
//! hark's HTTP side and the `hark` CLI: TwiML for Twilio's voice webhook, X-Twilio-Signature
//! checks, access tokens, the Media Streams WebSocket upgrade and the call workers that run the
//! engine, call records, metrics; and the developer tools (simulator, provider doubles, bench,
//! demo).
//!
//! # Layout
//!
//! A live call, top-down: `main.rs` (`hark serve`) → [`server::serve`] (accept loop, limits) →
//! `server/media.rs` `media_stream` (signature check, upgrade) → a call worker ([`pool`]) →
//! `run_call` → `hark_engine::io::drive` on a [`ws::Socket`] → `hark_engine::Call`.
//!
//! | module | job |
//! |---|---|
//! | [`server`] | `mod.rs`: state, router, accept loop and shutdown; `voice.rs`: `/voice`; `media.rs`: the `/media-stream` upgrade and each call's life; `transfer.rs`; `observer.rs`: events → metrics and records |
//! | [`conns`] | connection limits, deadlines and counts by state |
//! | [`ws`] | the Twilio socket: cancel-safe WebSocket framing with a capped message size |
//! | [`pool`] | call workers: one single-threaded runtime per core |
//! | [`config`] | `hark serve`'s settings from the environment |
//! | [`agents`] | agent settings → engine agents (cascade, ElevenLabs, Realtime) |
//! | [`api`] | the gateway API: tokens, signed callbacks, outbound calls, records (SQLite store and writer), Conversations |
//! | [`signature`] | `X-Twilio-Signature` (form, JSON `bodySHA256`, WebSocket upgrade) |
//! | [`token`] | Twilio access tokens (JWT) |
//! | [`twiml`] | TwiML writing |
//! | [`metrics`] | the Prometheus recorder behind `/metrics` |
//! | [`simulator`] | `hark call`: a Twilio simulator with a virtual phone |
//! | [`demo`] | `hark demo` |
//! | [`bench`] | `hark bench`: concurrent-call load test |
//! | [`chaos`] | a byte-level TCP proxy that re-cuts and delays segments (tests, `hark bench --chaos`) |
//! | [`doubles`] | local doubles of the OpenAI-compatible, ElevenLabs and Realtime APIs |

pub mod agents;
pub mod api;
pub mod bench;
pub mod chaos;
pub mod config;
pub mod conns;
pub mod demo;
pub mod doubles;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod signature;
pub mod simulator;
pub mod token;
pub mod twiml;
pub mod ws;
