//! Sample rates and the conversions between durations, samples and bytes.

use std::fmt;
use std::time::Duration;

/// A sample rate in Hz (samples per second per channel).
///
/// hark's audio is mono, so "samples" and "frames" are the same count here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleRate(pub u32);

impl SampleRate {
    /// 8000 Hz: G.711 telephony, what Twilio Media Streams carry.
    pub const TWILIO: SampleRate = SampleRate(8_000);
    /// 8000 Hz.
    pub const HZ_8000: SampleRate = SampleRate(8_000);
    /// 16000 Hz: wideband, what most STT and turn models want.
    pub const HZ_16000: SampleRate = SampleRate(16_000);
    /// 22050 Hz: some TTS engines (espeak-ng, Piper).
    pub const HZ_22050: SampleRate = SampleRate(22_050);
    /// 24000 Hz: OpenAI's `pcm` speech output.
    pub const HZ_24000: SampleRate = SampleRate(24_000);
    /// 44100 Hz: CD audio.
    pub const HZ_44100: SampleRate = SampleRate(44_100);
    /// 48000 Hz: most other audio.
    pub const HZ_48000: SampleRate = SampleRate(48_000);

    /// The rate in Hz.
    pub const fn hz(self) -> u32 {
        self.0
    }

    /// Number of samples in `ms` milliseconds, rounded down (22.05 kHz × 1 ms = 22 samples).
    pub const fn samples_in_ms(self, ms: u64) -> usize {
        (self.0 as u64 * ms / 1000) as usize
    }

    /// Number of samples in `d`, rounded down.
    pub fn samples_in(self, d: Duration) -> usize {
        (self.0 as u128 * d.as_nanos() / 1_000_000_000) as usize
    }

    /// Duration of `samples` samples at this rate, rounded down to the nanosecond.
    pub fn duration_of(self, samples: usize) -> Duration {
        Duration::from_nanos((samples as u128 * 1_000_000_000 / self.0 as u128) as u64)
    }

    /// Duration of `samples` samples in whole milliseconds, rounded down.
    pub const fn ms_of(self, samples: usize) -> u64 {
        samples as u64 * 1000 / self.0 as u64
    }

    /// Bytes of 8-bit G.711 (μ-law or A-law) in `ms` milliseconds: one byte per sample.
    /// At 8 kHz this is 8 bytes per ms, 160 bytes per 20 ms frame.
    pub const fn g711_bytes_in_ms(self, ms: u64) -> usize {
        self.samples_in_ms(ms)
    }

    /// Bytes of 16-bit little-endian PCM (`s16le`) in `ms` milliseconds: two bytes per sample.
    pub const fn pcm16_bytes_in_ms(self, ms: u64) -> usize {
        self.samples_in_ms(ms) * 2
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}

impl From<u32> for SampleRate {
    fn from(hz: u32) -> Self {
        SampleRate(hz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_frame_sizes() {
        assert_eq!(SampleRate::TWILIO.g711_bytes_in_ms(20), 160);
        assert_eq!(SampleRate::TWILIO.g711_bytes_in_ms(1), 8);
        assert_eq!(SampleRate::HZ_24000.pcm16_bytes_in_ms(20), 960);
        assert_eq!(SampleRate::HZ_22050.samples_in_ms(20), 441);
        assert_eq!(SampleRate::TWILIO.ms_of(160), 20);
        assert_eq!(
            SampleRate::HZ_16000.duration_of(320),
            Duration::from_millis(20)
        );
        assert_eq!(
            SampleRate::HZ_16000.samples_in(Duration::from_millis(20)),
            320
        );
    }
}
