//! # hark-gateway
//!
//! hark's HTTP side and the `hark` CLI: TwiML for Twilio's voice webhook, X-Twilio-Signature
//! checks, access tokens, the Media Streams WebSocket upgrade, outbound calls, metrics.

pub mod signature;
pub mod token;
pub mod twiml;
