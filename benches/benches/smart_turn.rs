//! Smart Turn v3.2 (`hark_engine::smart_turn`, pure Rust, single-threaded) on 8 s of real speech.
//!
//! - `smart_turn/log_mel_8s`: the Whisper log-mel front end on 8 s of 16 kHz audio (80 × 800).
//! - `smart_turn/inference`: the network alone, features → probability.
//! - `smart_turn/predict_8k_8s`: the whole path from 8 s of 8 kHz PCM: resample to 16 kHz,
//!   log-mel, network.
//!
//! The audio is `fixtures/audio/jfk-8k.ulaw` from 1.0 s to 9.0 s (JFK speaking).
//!
//! Run: `cargo bench -p hark-benches --bench smart_turn`
//! (short: `-- --warm-up-time 1 --measurement-time 5`).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use hark_codecs::mulaw;
use hark_engine::smart_turn::{SmartTurn, log_mel};

/// 8 s of JFK's speech at 8 kHz, i16.
fn jfk_8s() -> Vec<i16> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio/jfk-8k.ulaw");
    let ulaw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let codes = &ulaw[1_000 * 8..9_000 * 8];
    let mut pcm = vec![0i16; codes.len()];
    mulaw::decode(codes, &mut pcm);
    pcm
}

fn smart_turn(c: &mut Criterion) {
    let model = SmartTurn::shared().expect("the compiled-in weights parse");
    let pcm = jfk_8s();
    // 16 kHz by sample doubling: the front end's cost does not depend on the content.
    let audio: Vec<f32> = pcm
        .iter()
        .flat_map(|&s| [f32::from(s) / 32768.0; 2])
        .collect();
    let features = log_mel(&audio);
    let p = model.predict_features(&features);
    assert!((0.0..=1.0).contains(&p), "probability {p}");

    let mut g = c.benchmark_group("smart_turn");
    g.sample_size(20);
    g.bench_function("log_mel_8s", |b| {
        b.iter(|| black_box(log_mel(black_box(&audio))))
    });
    g.bench_function("inference", |b| {
        b.iter(|| black_box(model.predict_features(black_box(&features))))
    });
    g.bench_function("predict_8k_8s", |b| {
        b.iter(|| black_box(model.predict_8k(black_box(&pcm))))
    });
    g.finish();
}

criterion_group!(benches, smart_turn);
criterion_main!(benches);
