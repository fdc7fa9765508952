//! # hark-gateway
//!
//! hark's HTTP side and the `hark` CLI: TwiML for Twilio's voice webhook, X-Twilio-Signature
//! checks, access tokens, the Media Streams WebSocket upgrade and the call workers that run the
//! engine, metrics.

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
