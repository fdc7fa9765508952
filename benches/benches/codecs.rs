//! Codec and resampler costs per 20 ms frame (the unit Twilio sends).
//!
//! Run: `cargo bench -p hark-benches --bench codecs`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hark_benches::{FRAME_BYTES, tone};
use hark_codecs::{Resampler, SampleRate, mulaw};

fn codecs(c: &mut Criterion) {
    let mut g = c.benchmark_group("codecs");
    let pcm8 = tone(8_000, FRAME_BYTES);
    let mut ulaw = vec![0u8; FRAME_BYTES];
    mulaw::encode(&pcm8, &mut ulaw);
    let mut pcm_out = vec![0i16; FRAME_BYTES];
    g.bench_function("mulaw_decode_20ms", |b| {
        b.iter(|| mulaw::decode(black_box(&ulaw), black_box(&mut pcm_out)))
    });
    let mut ulaw_out = vec![0u8; FRAME_BYTES];
    g.bench_function("mulaw_encode_20ms", |b| {
        b.iter(|| mulaw::encode(black_box(&pcm8), black_box(&mut ulaw_out)))
    });

    let mut up = Resampler::new(SampleRate::HZ_8000, SampleRate::HZ_16000).expect("supported");
    let mut out = Vec::with_capacity(4096);
    g.bench_function("resample_8k_to_16k_20ms", |b| {
        b.iter(|| {
            out.clear();
            up.process(black_box(&pcm8), &mut out).expect("resample");
            black_box(out.len())
        })
    });
    let pcm24 = tone(24_000, 480);
    let mut down = Resampler::new(SampleRate::HZ_24000, SampleRate::HZ_8000).expect("supported");
    g.bench_function("resample_24k_to_8k_20ms", |b| {
        b.iter(|| {
            out.clear();
            down.process(black_box(&pcm24), &mut out).expect("resample");
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
