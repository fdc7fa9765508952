//! The Silero VAD forward pass (`hark_engine::vad::silero`, 8 kHz branch) on real speech.
//!
//! - `silero/window_256`: one 256-sample window (32 ms at 8 kHz) of JFK's speech through
//!   `SileroVad::probability` (the LSTM state carries over; the windows cycle through 1.0 s to
//!   10.5 s of `fixtures/audio/jfk-8k.ulaw`). Real time is 32 ms per window.
//!
//! - `vad/frame_20ms/<kind>`: one 160-sample frame through `VoiceDetector::is_voiced` for each
//!   detector (`webrtc`, `silero`, `hybrid`), frames cycling through: a load-test session
//!   (`_line`: `fixtures/bench/support.ulaw`, a clean line, background −64 dBFS, where the
//!   hybrid runs no inference), JFK as recorded (`_jfk`: room tone at −45 dBFS, within 30 dB
//!   of his voice, so the hybrid runs Silero), and JFK with the turn-taking corpus's babble
//!   mixed in about 10 dB below (`_babble`).
//!
//! Run: `cargo bench -p hark-benches --bench silero`
//! (short: `-- --warm-up-time 1 --measurement-time 3`).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use hark_codecs::mulaw;
use hark_engine::config::{VadConfig, VadKind};
use hark_engine::vad::VoiceDetector;
use hark_engine::vad::silero::{SileroVad, WINDOW};

/// `fixtures/audio/jfk-8k.ulaw` from 1.0 s to 10.5 s (JFK speaking), as f32 in [-1, 1].
fn jfk_speech() -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio/jfk-8k.ulaw");
    let ulaw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let codes = &ulaw[1_000 * 8..10_500 * 8];
    let mut pcm = vec![0i16; codes.len()];
    mulaw::decode(codes, &mut pcm);
    pcm.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

fn silero(c: &mut Criterion) {
    let speech = jfk_speech();
    let windows: Vec<&[f32]> = speech.chunks_exact(WINDOW).collect();
    let mut vad = SileroVad::new();
    let speechy = windows.iter().filter(|w| vad.probability(w) > 0.5).count();
    assert!(
        speechy * 2 > windows.len(),
        "the bench windows are mostly speech"
    );
    let mut g = c.benchmark_group("silero");
    let mut next = windows.iter().cycle();
    g.bench_function("window_256", |b| {
        b.iter(|| {
            let w = next.next().copied().unwrap_or_default();
            black_box(vad.probability(black_box(w)))
        })
    });
    g.finish();
}

/// The turn-taking corpus's babble (s16le mono 8 kHz after a 44-byte header), at −26 dBFS.
fn babble() -> Vec<i16> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/turns/noise/babble.wav");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn per_frame(c: &mut Criterion) {
    let clean: Vec<i16> = jfk_speech().iter().map(|&x| (x * 32768.0) as i16).collect();
    let noise = babble();
    // JFK's active level is about −20 dBFS; the babble, scaled by 1/2, sits near −32 dBFS.
    let noisy: Vec<i16> = clean
        .iter()
        .zip(noise.iter().cycle())
        .map(|(&s, &n)| s.saturating_add(n / 2))
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bench/support.ulaw");
    let ulaw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut line = vec![0i16; ulaw.len()];
    mulaw::decode(&ulaw, &mut line);
    let mut g = c.benchmark_group("vad/frame_20ms");
    for (kind, name) in [
        (VadKind::Webrtc, "webrtc"),
        (VadKind::Silero, "silero"),
        (VadKind::Hybrid, "hybrid"),
    ] {
        for (audio, which) in [(&line, "line"), (&clean, "jfk"), (&noisy, "babble")] {
            let cfg = VadConfig {
                kind,
                ..VadConfig::default()
            };
            let mut vad = VoiceDetector::new(&cfg);
            let mut frames = audio.chunks_exact(160).cycle();
            g.bench_function(format!("{name}_{which}"), |b| {
                b.iter(|| {
                    let f = frames.next().unwrap_or_default();
                    black_box(vad.is_voiced(black_box(f)))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, silero, per_frame);
criterion_main!(benches);
