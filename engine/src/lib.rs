//! # hark-engine
//!
//! The per-call state machine of hark (sans-IO). Filled in by the engine-core work.
