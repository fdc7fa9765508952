//! G.711 against golden data from an independent implementation (Python 3.11 `audioop`),
//! made by `fixtures/codecs/make_golden.py`: every code decodes and every i16 encodes exactly.

use hark_codecs::{alaw, mulaw};

const ULAW_DECODE: &[u8] = include_bytes!("../../fixtures/codecs/ulaw_decode.s16le");
const ULAW_ENCODE: &[u8] = include_bytes!("../../fixtures/codecs/ulaw_encode.u8");
const ALAW_DECODE: &[u8] = include_bytes!("../../fixtures/codecs/alaw_decode.s16le");
const ALAW_ENCODE: &[u8] = include_bytes!("../../fixtures/codecs/alaw_encode.u8");

fn table(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn all_i16() -> Vec<i16> {
    (i16::MIN..=i16::MAX).collect()
}

#[test]
fn mulaw_decodes_all_256_codes_like_audioop() {
    let golden = table(ULAW_DECODE);
    assert_eq!(golden.len(), 256);
    for code in 0..=255u8 {
        assert_eq!(
            mulaw::decode_sample(code),
            golden[code as usize],
            "code {code:#04x}"
        );
    }
    let mut out = [0i16; 256];
    let codes: Vec<u8> = (0..=255).collect();
    assert_eq!(mulaw::decode(&codes, &mut out), 256);
    assert_eq!(&out[..], &golden[..]);
}

#[test]
fn mulaw_encodes_all_65536_inputs_like_audioop() {
    assert_eq!(ULAW_ENCODE.len(), 65_536);
    let pcm = all_i16();
    let mut out = vec![0u8; pcm.len()];
    assert_eq!(mulaw::encode(&pcm, &mut out), pcm.len());
    let first_diff = out.iter().zip(ULAW_ENCODE).position(|(a, b)| a != b);
    assert_eq!(first_diff.map(|i| pcm[i]), None, "first differing input");
    for (&s, &g) in pcm.iter().zip(ULAW_ENCODE) {
        assert_eq!(mulaw::encode_sample(s), g);
    }
}

#[test]
fn alaw_decodes_all_256_codes_like_audioop() {
    let golden = table(ALAW_DECODE);
    for code in 0..=255u8 {
        assert_eq!(
            alaw::decode_sample(code),
            golden[code as usize],
            "code {code:#04x}"
        );
    }
    let mut out = [0i16; 256];
    let codes: Vec<u8> = (0..=255).collect();
    alaw::decode(&codes, &mut out);
    assert_eq!(&out[..], &golden[..]);
}

#[test]
fn alaw_encodes_all_65536_inputs_like_audioop() {
    assert_eq!(ALAW_ENCODE.len(), 65_536);
    let pcm = all_i16();
    let mut out = vec![0u8; pcm.len()];
    alaw::encode(&pcm, &mut out);
    let first_diff = out.iter().zip(ALAW_ENCODE).position(|(a, b)| a != b);
    assert_eq!(first_diff.map(|i| pcm[i]), None, "first differing input");
    for (&s, &g) in pcm.iter().zip(ALAW_ENCODE) {
        assert_eq!(alaw::encode_sample(s), g);
    }
}
