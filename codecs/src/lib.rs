//! # hark-codecs
//!
//! The pure audio building blocks of hark: no IO in the hot path, no clock, no async.
//!
//! - [`mulaw`] and [`alaw`]: ITU-T G.711 companding, bit-exact with the reference
//!   implementation (checked against Python's `audioop` for every code and every `i16`).
//!   One byte per sample; 8 kHz μ-law is what Twilio Media Streams carry (8 bytes = 1 ms).
//! - [`SampleRate`]: a sample rate in Hz with conversions between durations, samples and bytes.
//! - [`resample::Resampler`]: a streaming mono resampler (rubato's synchronous FFT resampler)
//!   that accepts chunks of any size and allocates nothing per chunk in steady state.
//! - [`wav`]: reading fixtures (PCM/float/μ-law WAV, headerless `.ulaw`) and writing 8 kHz WAV.
//! - [`pcm`]: conversions between `i16` PCM and `f32`, little-endian bytes, and levels.

pub mod alaw;
mod g711;
pub mod mulaw;
pub mod pcm;
pub mod rate;
pub mod resample;
pub mod wav;

pub use rate::SampleRate;
pub use resample::{ResampleError, Resampler};
