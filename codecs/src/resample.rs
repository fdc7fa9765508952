//! A streaming mono resampler built on rubato's synchronous FFT resampler ([`rubato::Fft`]).
//!
//! Feed it chunks of any size with [`Resampler::process`]; it keeps a small input FIFO and runs
//! rubato on fixed internal blocks, so feeding 20 ms chunks gives exactly the same output as
//! feeding 1 s chunks, and the output length follows `input × to / from` with no drift.
//! In steady state nothing is allocated: the FIFO and scratch buffers are sized at construction,
//! and output is appended to a caller-owned `Vec` (no allocation once it has capacity).
//!
//! ## Delay
//! The output lags the input by [`Resampler::delay_samples`] output samples (half rubato's FFT
//! block, e.g. 80 samples = 5 ms for 8 → 16 kHz with the default 10 ms block). Input that does
//! not yet fill a block waits in the FIFO; feeding whole blocks ([`Resampler::input_block`]
//! samples, 10 or 20 ms) adds no further wait. [`Resampler::flush`] pushes out everything still
//! held, so the end of an utterance is never stuck inside the resampler.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use crate::pcm::{f32_to_i16, i16_to_f32};
use crate::rate::SampleRate;

/// Sample rates the resampler accepts on either side, in Hz.
pub const SUPPORTED_RATES: [u32; 6] = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000];

/// Errors from building or running a [`Resampler`].
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// The rate pair is not supported. Fatal for this resampler; the caller must pick another
    /// pair (see [`SUPPORTED_RATES`]).
    #[error("unsupported resampling {from} -> {to} (supported rates: {SUPPORTED_RATES:?} Hz)")]
    Unsupported {
        /// Input rate.
        from: SampleRate,
        /// Output rate.
        to: SampleRate,
    },
    /// rubato refused to build the resampler (should not happen for supported rates).
    #[error("resampler construction failed: {0}")]
    Construction(String),
    /// rubato failed while processing a block. The resampler state is unchanged; the block's
    /// audio is lost. Not expected with the fixed buffer sizes used here.
    #[error("resampling failed: {0}")]
    Process(String),
}

/// Streaming mono resampler from one fixed rate to another. See the module docs.
pub struct Resampler {
    from: SampleRate,
    to: SampleRate,
    /// `None` when `from == to` (samples are passed through).
    inner: Option<Fft<f32>>,
    /// Input block size in samples at `from`.
    block_in: usize,
    /// Output block size in samples at `to`.
    block_out: usize,
    /// Input FIFO (f32), never longer than `block_in`.
    pending: Vec<f32>,
    /// Output scratch of `block_out` samples.
    scratch: Vec<f32>,
    /// Samples taken in since construction or the last reset/flush.
    total_in: u64,
    /// Samples emitted since construction or the last reset/flush (including the delay).
    total_out: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("block_in", &self.block_in)
            .field("block_out", &self.block_out)
            .field("delay_samples", &self.delay_samples())
            .finish()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Resampler {
    /// A resampler from `from` to `to` with the default block of about 10 ms (20 ms where the
    /// rates need it, e.g. 22050 Hz and 44.1 kHz → 8 kHz).
    ///
    /// # Errors
    /// [`ResampleError::Unsupported`] unless both rates are in [`SUPPORTED_RATES`].
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, ResampleError> {
        Self::with_block_ms(from, to, 10)
    }

    /// Like [`Resampler::new`] with a target block length in ms; the block is rounded up to the
    /// smallest length both rates divide evenly. Longer blocks give a sharper anti-alias filter
    /// and more delay (delay = half a block).
    ///
    /// # Errors
    /// [`ResampleError::Unsupported`] unless both rates are in [`SUPPORTED_RATES`] and
    /// `block_ms` is 1..=100.
    pub fn with_block_ms(
        from: SampleRate,
        to: SampleRate,
        block_ms: u32,
    ) -> Result<Self, ResampleError> {
        if !SUPPORTED_RATES.contains(&from.hz())
            || !SUPPORTED_RATES.contains(&to.hz())
            || !(1..=100).contains(&block_ms)
        {
            return Err(ResampleError::Unsupported { from, to });
        }
        let g = gcd(from.hz() as u64, to.hz() as u64);
        let min_in = (from.hz() as u64 / g) as usize;
        let wanted = from.samples_in_ms(block_ms as u64).max(1);
        let block_in = wanted.div_ceil(min_in) * min_in;
        let block_out = block_in * (to.hz() as u64 / g) as usize / min_in;
        let inner = if from == to {
            None
        } else {
            let fft = Fft::<f32>::new(
                from.hz() as usize,
                to.hz() as usize,
                block_in,
                1,
                FixedSync::Both,
            )
            .map_err(|e| ResampleError::Construction(e.to_string()))?;
            debug_assert_eq!(fft.input_frames_next(), block_in);
            debug_assert_eq!(fft.output_frames_next(), block_out);
            Some(fft)
        };
        Ok(Resampler {
            from,
            to,
            inner,
            block_in,
            block_out,
            pending: Vec::with_capacity(block_in),
            scratch: vec![0.0; block_out],
            total_in: 0,
            total_out: 0,
        })
    }

    /// Input rate.
    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    /// Output rate.
    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// Input block in samples (at the input rate): feeding multiples of it adds no FIFO wait.
    pub fn input_block(&self) -> usize {
        self.block_in
    }

    /// The resampler's own delay in output samples: output sample `k` corresponds to input
    /// time `(k - delay) / to`. Zero for a pass-through (same rates).
    pub fn delay_samples(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Input samples waiting in the FIFO for a full block.
    pub fn pending_samples(&self) -> usize {
        self.pending.len()
    }

    /// Resamples `input` and appends the output samples to `out`; returns how many were
    /// appended. Any chunk size works; output comes in whole blocks.
    ///
    /// # Errors
    /// [`ResampleError::Process`] if rubato fails (not expected); the FIFO is then emptied.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<usize, ResampleError> {
        self.total_in += input.len() as u64;
        if self.inner.is_none() {
            out.extend_from_slice(input);
            self.total_out += input.len() as u64;
            return Ok(input.len());
        }
        let start = out.len();
        let mut rest = input;
        while !rest.is_empty() {
            let take = (self.block_in - self.pending.len()).min(rest.len());
            self.pending
                .extend(rest[..take].iter().map(|&s| i16_to_f32(s)));
            rest = &rest[take..];
            if self.pending.len() == self.block_in {
                self.run_block(out)?;
            }
        }
        Ok(out.len() - start)
    }

    fn run_block(&mut self, out: &mut Vec<i16>) -> Result<(), ResampleError> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(());
        };
        let result = (|| {
            let input = InterleavedSlice::new(&self.pending[..], 1, self.block_in)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            let mut output = InterleavedSlice::new_mut(&mut self.scratch[..], 1, self.block_out)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            inner
                .process_into_buffer(&input, &mut output, None)
                .map_err(|e| ResampleError::Process(e.to_string()))
        })();
        self.pending.clear();
        let (_, written) = result?;
        out.extend(self.scratch[..written].iter().map(|&s| f32_to_i16(s)));
        self.total_out += written as u64;
        Ok(())
    }

    /// Emits everything the resampler still holds (the FIFO and the filter's delay line) by
    /// feeding silence, appends it to `out`, and resets. After a flush the total output since
    /// the last reset is exactly `delay_samples() + round(total_in × to / from)` samples.
    ///
    /// # Errors
    /// As [`Resampler::process`].
    pub fn flush(&mut self, out: &mut Vec<i16>) -> Result<usize, ResampleError> {
        let start = out.len();
        if self.inner.is_some() && self.total_in > 0 {
            let want = self.delay_samples() as u64
                + (self.total_in * self.to.hz() as u64 + self.from.hz() as u64 / 2)
                    / self.from.hz() as u64;
            let need = want.saturating_sub(self.total_out) as usize;
            while out.len() - start < need {
                let fill = self.block_in - self.pending.len();
                self.pending.extend(std::iter::repeat_n(0.0, fill));
                self.run_block(out)?;
            }
            out.truncate(start + need);
        }
        self.reset();
        Ok(out.len() - start)
    }

    /// Forgets all state: the FIFO, the filter's delay line and the counters. Use it after a
    /// gap in the stream (e.g. between agent utterances) so old audio cannot bleed in.
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.reset();
        }
        self.pending.clear();
        self.total_in = 0;
        self.total_out = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unsupported_rates() {
        assert!(Resampler::new(SampleRate(11_025), SampleRate::HZ_8000).is_err());
        assert!(Resampler::new(SampleRate::HZ_8000, SampleRate(12_345)).is_err());
    }

    #[test]
    fn block_sizes() {
        let r = Resampler::new(SampleRate::HZ_8000, SampleRate::HZ_16000).unwrap();
        assert_eq!(r.input_block(), 80);
        let r = Resampler::new(SampleRate::HZ_22050, SampleRate::HZ_8000).unwrap();
        assert_eq!(r.input_block(), 441);
        let r = Resampler::new(SampleRate::HZ_24000, SampleRate::HZ_8000).unwrap();
        assert_eq!(r.input_block(), 240);
    }

    #[test]
    fn passthrough_when_rates_match() {
        let mut r = Resampler::new(SampleRate::HZ_8000, SampleRate::HZ_8000).unwrap();
        let mut out = Vec::new();
        r.process(&[1, 2, 3], &mut out).unwrap();
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(r.delay_samples(), 0);
    }
}
