//! What μ-law and A-law share: lookup tables built at compile time from each law's reference
//! coder, and the slice loops over them.

/// Defines `static ENCODE: [u8; 65536]` (indexed by the sample's bit pattern as `u16`) and
/// `static DECODE: [i16; 256]` from a law's `const fn` reference encoder and decoder.
macro_rules! tables {
    ($encode_slow:ident, $decode_slow:ident) => {
        static ENCODE: [u8; 65536] = {
            let mut table = [0u8; 65536];
            let mut i = 0;
            while i < 65536 {
                table[i] = $encode_slow(i as u16 as i16);
                i += 1;
            }
            table
        };

        static DECODE: [i16; 256] = {
            let mut table = [0i16; 256];
            let mut i = 0;
            while i < 256 {
                table[i] = $decode_slow(i as u8);
                i += 1;
            }
            table
        };
    };
}
pub(crate) use tables;

/// Encodes `min(pcm.len(), out.len())` samples through `table`; returns that count.
#[inline]
pub(crate) fn encode_into(table: &[u8; 65536], pcm: &[i16], out: &mut [u8]) -> usize {
    let n = pcm.len().min(out.len());
    for (o, &s) in out[..n].iter_mut().zip(&pcm[..n]) {
        *o = table[s as u16 as usize];
    }
    n
}

/// Decodes `min(codes.len(), out.len())` codes through `table`; returns that count.
#[inline]
pub(crate) fn decode_into(table: &[i16; 256], codes: &[u8], out: &mut [i16]) -> usize {
    let n = codes.len().min(out.len());
    for (o, &c) in out[..n].iter_mut().zip(&codes[..n]) {
        *o = table[c as usize];
    }
    n
}
