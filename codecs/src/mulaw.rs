//! ITU-T G.711 μ-law (PCMU), as Twilio Media Streams carry it (`audio/x-mulaw`, 8000 Hz, mono;
//! see twilio.com/docs/voice/media-streams/websocket-messages).
//!
//! One byte per sample, so at 8 kHz one millisecond is 8 bytes and a 20 ms frame is 160 bytes.
//! The arithmetic is the reference one (Sun Microsystems' public-domain `g711.c`, the code behind
//! Python's `audioop` and SoX): 16-bit input is reduced to 14 bits by an arithmetic shift, the
//! magnitude is clipped to 8159, biased by 33, and coded as sign, 3-bit segment and 4-bit mantissa,
//! all bits inverted. Decoding yields the segment mid-points in 16-bit scale (±32124 at most).
//! `fixtures/codecs/` holds the independent golden data the tests compare against.
//!
//! Encoding goes through a 64 KiB table built at compile time (one load per sample);
//! decoding through a 256-entry table.

/// The μ-law code of digital silence (PCM 0). Twilio plays it as silence; useful for padding.
pub const SILENCE: u8 = 0xFF;

const BIAS: i32 = 0x84;
const CLIP: i32 = 8159;
const SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];

/// Reference encoder for one sample (the table below is built from it).
const fn encode_slow(sample: i16) -> u8 {
    // 16 → 14 bits, as `audioop.lin2ulaw` does (`val >> 2`, arithmetic).
    let mut pcm = (sample as i32) >> 2;
    let mask: i32 = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    if pcm > CLIP {
        pcm = CLIP;
    }
    pcm += BIAS >> 2;
    let mut seg = 0;
    while seg < 8 && pcm > SEG_END[seg] {
        seg += 1;
    }
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let uval = ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0xF);
        (uval ^ mask) as u8
    }
}

/// Reference decoder for one code.
const fn decode_slow(code: u8) -> i16 {
    let u = !code as i32;
    let mut t = ((u & 0x0F) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

crate::g711::tables!(encode_slow, decode_slow);

/// Encodes one 16-bit linear PCM sample to a μ-law code.
#[inline]
pub fn encode_sample(sample: i16) -> u8 {
    ENCODE[sample as u16 as usize]
}

/// Decodes one μ-law code to a 16-bit linear PCM sample (range ±32124).
#[inline]
pub fn decode_sample(code: u8) -> i16 {
    DECODE[code as usize]
}

/// Encodes `pcm` (16-bit linear samples) into `out`, one byte per sample.
///
/// Writes `min(pcm.len(), out.len())` bytes and returns that count; it never allocates.
/// Callers that size `out` as `pcm.len()` get every sample encoded.
#[inline]
pub fn encode(pcm: &[i16], out: &mut [u8]) -> usize {
    crate::g711::encode_into(&ENCODE, pcm, out)
}

/// Decodes μ-law `codes` into 16-bit linear PCM in `out`, one sample per byte.
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
    fn silence_round_trips() {
        assert_eq!(encode_sample(0), SILENCE);
        assert_eq!(decode_sample(SILENCE), 0);
    }

    #[test]
    fn decode_then_encode_is_identity_except_negative_zero() {
        for code in 0..=255u8 {
            let back = encode_sample(decode_sample(code));
            // 0x7F is "negative zero": it decodes to 0, which encodes as 0xFF.
            if code == 0x7F {
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn encode_is_monotonic() {
        // Larger input never gives a smaller decoded value.
        let mut prev = i16::MIN;
        for s in i16::MIN..=i16::MAX {
            let d = decode_sample(encode_sample(s));
            assert!(d >= prev, "non-monotonic at {s}");
            prev = d;
        }
    }

    #[test]
    fn slices_stop_at_the_shorter_side() {
        let pcm = [0i16, 1000, -1000];
        let mut out = [0u8; 2];
        assert_eq!(encode(&pcm, &mut out), 2);
        let mut back = [0i16; 5];
        assert_eq!(decode(&out, &mut back), 2);
        assert_eq!(back[0], 0);
    }
}
