//! The engine's error type.

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range. Fatal for the call being created: nothing was started.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The resampler failed. The call goes on; the affected audio chunk is dropped.
    #[error(transparent)]
    Resample(#[from] hark_codecs::ResampleError),
}
