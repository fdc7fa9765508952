//! Shared helpers for hark's criterion benches: real-speech frames sized as Twilio sends them.

/// One 20 ms frame of μ-law 8 kHz: 160 bytes.
pub const FRAME_BYTES: usize = 160;

/// A deterministic speech-like test signal: `n` samples of a 440 Hz + 1.3 kHz mix at `rate_hz`,
/// about -12 dBFS, so benches do not depend on files.
pub fn tone(rate_hz: u32, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f64 / rate_hz as f64;
            let v = 0.15 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 0.1 * (2.0 * std::f64::consts::PI * 1300.0 * t).sin();
            (v * 32767.0) as i16
        })
        .collect()
}
