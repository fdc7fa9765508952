//! ITU-T G.711 A-law (PCMA), the European G.711 variant.
//!
//! Twilio Media Streams carry μ-law ([`crate::mulaw`]); A-law is here for recordings and SIP peers
//! that use it. One byte per sample (8 bytes per ms at 8 kHz). The arithmetic is the reference
//! one (Sun Microsystems' public-domain `g711.c`, behind Python's `audioop` and SoX): 16-bit input
//! is reduced to 13 bits by an arithmetic shift, coded as sign, 3-bit segment and 4-bit mantissa,
//! with even bits inverted (XOR 0x55). Decoding yields the segment mid-points (±32256 at most).
//! `fixtures/codecs/` holds the independent golden data the tests compare against.

/// The A-law code of digital silence (PCM 0 encodes to 0xD5; it decodes to +8).
pub const SILENCE: u8 = 0xD5;

const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// Reference encoder for one sample (the table below is built from it).
const fn encode_slow(sample: i16) -> u8 {
    // 16 → 13 bits, as `audioop.lin2alaw` does (`val >> 3`, arithmetic).
    let mut pcm = (sample as i32) >> 3;
    let mask: i32 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let mut seg = 0;
    while seg < 8 && pcm > SEG_END[seg] {
        seg += 1;
    }
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let mut aval = (seg as i32) << 4;
        if seg < 2 {
            aval |= (pcm >> 1) & 0x0F;
        } else {
            aval |= (pcm >> seg) & 0x0F;
        }
        (aval ^ mask) as u8
    }
}

/// Reference decoder for one code.
const fn decode_slow(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

crate::g711::tables!(encode_slow, decode_slow);

/// Encodes one 16-bit linear PCM sample to an A-law code.
#[inline]
pub fn encode_sample(sample: i16) -> u8 {
    ENCODE[sample as u16 as usize]
}

/// Decodes one A-law code to a 16-bit linear PCM sample (range ±32256).
#[inline]
pub fn decode_sample(code: u8) -> i16 {
    DECODE[code as usize]
}

/// Encodes `pcm` (16-bit linear samples) into `out`, one byte per sample.
///
/// Writes `min(pcm.len(), out.len())` bytes and returns that count; it never allocates.
#[inline]
pub fn encode(pcm: &[i16], out: &mut [u8]) -> usize {
    crate::g711::encode_into(&ENCODE, pcm, out)
}

/// Decodes A-law `codes` into 16-bit linear PCM in `out`, one sample per byte.
///
/// Writes `min(codes.len(), out.len())` samples and returns that count; it never allocates.
#[inline]
pub fn decode(codes: &[u8], out: &mut [i16]) -> usize {
    crate::g711::decode_into(&DECODE, codes, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_then_encode_is_identity() {
        for code in 0..=255u8 {
            assert_eq!(encode_sample(decode_sample(code)), code, "code {code:#04x}");
        }
    }

    #[test]
    fn zero_is_silence() {
        assert_eq!(encode_sample(0), SILENCE);
        assert_eq!(decode_sample(SILENCE), 8);
    }
}
