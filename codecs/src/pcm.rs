//! Conversions between 16-bit linear PCM, `f32` samples and little-endian bytes, and levels.

/// Converts one `i16` sample to `f32` in [-1.0, 1.0).
#[inline]
pub fn i16_to_f32(s: i16) -> f32 {
    s as f32 / 32768.0
}

/// Converts one `f32` sample to `i16`, rounding to nearest and saturating outside [-1.0, 1.0).
#[inline]
pub fn f32_to_i16(s: f32) -> i16 {
    let v = (s * 32768.0).round();
    if v >= 32767.0 {
        i16::MAX
    } else if v <= -32768.0 {
        i16::MIN
    } else {
        v as i16
    }
}

/// Appends the samples of `bytes` (16-bit little-endian PCM, `s16le`) to `out`.
///
/// A trailing odd byte is not a sample and is ignored; the return value is the number of bytes
/// consumed (always even), so a streaming caller can keep the odd byte for the next chunk.
pub fn s16le_to_i16(bytes: &[u8], out: &mut Vec<i16>) -> usize {
    let n = bytes.len() / 2 * 2;
    out.extend(
        bytes[..n]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]])),
    );
    n
}

/// Appends `samples` as 16-bit little-endian bytes (`s16le`) to `out`.
pub fn i16_to_s16le(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// Root-mean-square level of `samples` in dBFS (0 dBFS = full-scale square wave);
/// `-inf` for silence or an empty slice.
pub fn rms_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / samples.len() as f64).sqrt();
    20.0 * (rms / 32768.0).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_round_trip() {
        for s in [i16::MIN, -1, 0, 1, 12345, i16::MAX] {
            assert_eq!(f32_to_i16(i16_to_f32(s)), s);
        }
        assert_eq!(f32_to_i16(2.0), i16::MAX);
        assert_eq!(f32_to_i16(-2.0), i16::MIN);
    }

    #[test]
    fn s16le_keeps_odd_byte() {
        let mut out = Vec::new();
        assert_eq!(s16le_to_i16(&[0x01, 0x02, 0x03], &mut out), 2);
        assert_eq!(out, vec![0x0201]);
        let mut bytes = Vec::new();
        i16_to_s16le(&out, &mut bytes);
        assert_eq!(bytes, vec![0x01, 0x02]);
    }

    #[test]
    fn levels() {
        assert_eq!(rms_dbfs(&[]), f64::NEG_INFINITY);
        assert!((rms_dbfs(&[i16::MIN; 10]) - 0.0).abs() < 1e-9);
    }
}
