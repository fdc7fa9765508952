//! Developer tools, apart from the serving path (cargo feature `dev-tools`, on by default):
//! `cargo build --no-default-features` gives a `hark serve` without them (no plotters, no
//! indicatif, no virtual phone).
//!
//! | module | job |
//! |---|---|
//! | [`simulator`] | `hark call`: a Twilio simulator with a virtual phone |
//! | [`demo`] | `hark demo` |
//! | [`bench`](mod@bench) | `hark bench`: the concurrent-call load test |
//! | [`turns`] | `hark bench turns`: the turn-taking benchmark (VAD, endpointing, barge-in in noise) |
//! | [`chaos`] | a byte-level TCP proxy that re-cuts and delays segments (tests, `hark bench --chaos`) |
//! | [`doubles`] | a local OpenAI-compatible server (STT, LLM, TTS) for `hark bench --agent cascade` and the tests |

pub mod bench;
pub mod chaos;
pub mod demo;
pub mod doubles;
pub mod simulator;
pub mod turns;
