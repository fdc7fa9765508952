//! The engine's error type.

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is out of range. Fatal for the call being created: nothing was started.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A bundled model's weight file is corrupt or does not fit its network (e.g. Smart Turn's
    /// `smart_turn_v3_2.bin`). Fatal for that model: it cannot be used in this process.
    #[error("model weights: {0}")]
    Model(String),
    /// The resampler failed. The call goes on; the affected audio chunk is dropped.
    #[error(transparent)]
    Resample(#[from] hark_codecs::ResampleError),
}
