//! Reading audio files for fixtures and the call simulator, and writing 8 kHz WAV.
//!
//! Reading goes through symphonia (RIFF/WAVE demuxer + PCM codecs): 8/16/24/32-bit integer and
//! 32/64-bit float PCM at any rate, mono or multi-channel (mixed down to mono), and G.711 μ-law or
//! A-law WAV (format tags 7 and 6). Headerless `.ulaw`/`.mulaw`/`.raw` files are taken as μ-law
//! 8 kHz mono, the format Twilio Media Streams carry. Writing 16-bit PCM WAV uses hound; μ-law WAV
//! (format tag 7, RIFF as in Microsoft's WAVEFORMATEX: 18-byte `fmt ` with `cbSize = 0`, plus a
//! `fact` chunk) is written here because hound has no μ-law support.

use std::fs::File;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_PCM_MULAW, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::rate::SampleRate;

/// Errors from reading or writing audio files. None of them is recoverable for that file.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file could not be opened, read or written.
    #[error("audio file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a WAV that can be decoded (bad header, unsupported codec).
    #[error("cannot decode audio: {0}")]
    Decode(String),
    /// The file decoded but holds no audio track or no sample rate.
    #[error("audio file has no usable track: {0}")]
    NoTrack(&'static str),
    /// Writing a 16-bit WAV failed inside hound.
    #[error("writing WAV: {0}")]
    Write(String),
}

/// Mono audio read from a file: 16-bit linear PCM at `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    /// Sample rate of `samples`.
    pub rate: SampleRate,
    /// Mono samples (multi-channel input is averaged).
    pub samples: Vec<i16>,
    /// The original μ-law bytes when the source was μ-law at 8 kHz mono (a μ-law WAV or a
    /// headerless `.ulaw`), so a simulator can send them untouched instead of re-encoding.
    pub mulaw: Option<Vec<u8>>,
}

impl Audio {
    /// Duration in whole milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.rate.ms_of(self.samples.len())
    }
}

/// Reads an audio file: WAV (see the module docs) or, by extension `.ulaw`, `.mulaw`, `.raw`,
/// headerless μ-law 8 kHz mono.
///
/// # Errors
/// [`WavError`] when the file cannot be read or decoded.
pub fn read_file(path: impl AsRef<Path>) -> Result<Audio, WavError> {
    let path = path.as_ref();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    if matches!(ext.as_str(), "ulaw" | "mulaw" | "raw" | "ul") {
        Ok(from_ulaw(bytes))
    } else {
        read_wav_bytes(bytes)
    }
}

/// Wraps headerless μ-law 8 kHz mono bytes.
pub fn from_ulaw(bytes: Vec<u8>) -> Audio {
    let mut samples = vec![0i16; bytes.len()];
    crate::mulaw::decode(&bytes, &mut samples);
    Audio {
        rate: SampleRate::TWILIO,
        samples,
        mulaw: Some(bytes),
    }
}

/// Decodes a WAV file held in memory. See [`read_file`].
///
/// # Errors
/// [`WavError::Decode`] or [`WavError::NoTrack`] when the bytes are not a decodable WAV.
pub fn read_wav_bytes(bytes: Vec<u8>) -> Result<Audio, WavError> {
    let dec = |e: SymError| WavError::Decode(e.to_string());
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("wav");
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(dec)?;
    let mut format = probed.format;
    let track = format
        .default_track()
        .ok_or(WavError::NoTrack("no default track"))?;
    let params = track.codec_params.clone();
    let track_id = track.id;
    let rate = params
        .sample_rate
        .ok_or(WavError::NoTrack("no sample rate"))?;
    let channels = params.channels.map_or(1, |c| c.count()).max(1);
    let keep_mulaw = params.codec == CODEC_TYPE_PCM_MULAW && channels == 1 && rate == 8000;
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(dec)?;

    let mut samples = Vec::new();
    let mut raw = Vec::new();
    let mut buf: Option<SampleBuffer<i16>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(dec(e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        if keep_mulaw {
            raw.extend_from_slice(packet.buf());
        }
        let decoded = decoder.decode(&packet).map_err(dec)?;
        let spec = *decoded.spec();
        let needed = decoded.capacity() as u64;
        let sb = match &mut buf {
            Some(b) if b.capacity() as u64 >= needed * spec.channels.count() as u64 => b,
            _ => buf.insert(SampleBuffer::new(needed, spec)),
        };
        sb.copy_interleaved_ref(decoded);
        let n = spec.channels.count().max(1);
        if n == 1 {
            samples.extend_from_slice(sb.samples());
        } else {
            samples.extend(
                sb.samples()
                    .chunks_exact(n)
                    .map(|frame| (frame.iter().map(|&s| s as i32).sum::<i32>() / n as i32) as i16),
            );
        }
    }
    if keep_mulaw {
        // Decode with hark's own G.711 so the PCM is bit-exact with the bytes we keep.
        return Ok(from_ulaw(raw));
    }
    Ok(Audio {
        rate: SampleRate(rate),
        samples,
        mulaw: None,
    })
}

/// Writes 16-bit PCM mono WAV at `rate`.
///
/// # Errors
/// [`WavError::Write`] or [`WavError::Io`] on failure.
pub fn write_pcm16(
    path: impl AsRef<Path>,
    rate: SampleRate,
    samples: &[i16],
) -> Result<(), WavError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate.hz(),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let w = |e: hound::Error| WavError::Write(e.to_string());
    let mut writer = hound::WavWriter::create(path, spec).map_err(w)?;
    let mut i16w = writer.get_i16_writer(samples.len() as u32);
    for &s in samples {
        i16w.write_sample(s);
    }
    i16w.flush().map_err(w)?;
    writer.finalize().map_err(w)
}

/// Builds a μ-law WAV (format tag 7, 8 kHz mono, 8 bits per sample) around `codes`.
pub fn mulaw_wav_bytes(codes: &[u8]) -> Vec<u8> {
    let data_len = codes.len() as u32;
    let mut v = Vec::with_capacity(58 + codes.len() + 1);
    v.extend_from_slice(b"RIFF");
    // RIFF size: 4 (WAVE) + 26 (fmt) + 12 (fact) + 8 + data, padded to even.
    let pad = data_len & 1;
    v.extend_from_slice(&(4 + 26 + 12 + 8 + data_len + pad).to_le_bytes());
    v.extend_from_slice(b"WAVE");
    v.extend_from_slice(b"fmt ");
    v.extend_from_slice(&18u32.to_le_bytes());
    v.extend_from_slice(&7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    v.extend_from_slice(&1u16.to_le_bytes()); // channels
    v.extend_from_slice(&8000u32.to_le_bytes()); // sample rate
    v.extend_from_slice(&8000u32.to_le_bytes()); // byte rate
    v.extend_from_slice(&1u16.to_le_bytes()); // block align
    v.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    v.extend_from_slice(&0u16.to_le_bytes()); // cbSize
    v.extend_from_slice(b"fact");
    v.extend_from_slice(&4u32.to_le_bytes());
    v.extend_from_slice(&data_len.to_le_bytes()); // sample frames
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    v.extend_from_slice(codes);
    if pad == 1 {
        v.push(0);
    }
    v
}

/// Writes a μ-law WAV (8 kHz mono) holding `codes` untouched.
///
/// # Errors
/// [`WavError::Io`] on failure.
pub fn write_mulaw(path: impl AsRef<Path>, codes: &[u8]) -> Result<(), WavError> {
    File::create(path)?.write_all(&mulaw_wav_bytes(codes))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_wav_round_trip_keeps_bytes() {
        let codes: Vec<u8> = (0..=255u8).chain(0..=100u8).collect();
        let audio = read_wav_bytes(mulaw_wav_bytes(&codes)).unwrap();
        assert_eq!(audio.rate, SampleRate::TWILIO);
        assert_eq!(audio.mulaw.as_deref(), Some(&codes[..]));
        assert_eq!(audio.samples.len(), codes.len());
        assert_eq!(audio.samples[0], crate::mulaw::decode_sample(0));
    }

    #[test]
    fn pcm16_round_trip() {
        let dir = std::env::temp_dir().join(format!("hark-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.wav");
        let samples: Vec<i16> = (0..1000).map(|i| (i * 37 % 2000 - 1000) as i16).collect();
        write_pcm16(&p, SampleRate::HZ_16000, &samples).unwrap();
        let a = read_file(&p).unwrap();
        assert_eq!(a.rate, SampleRate::HZ_16000);
        assert_eq!(a.samples, samples);
        assert!(a.mulaw.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_wav_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk".to_vec()).is_err());
        assert!(read_wav_bytes(Vec::new()).is_err());
    }
}
