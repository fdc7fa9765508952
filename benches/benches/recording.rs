//! The per-frame cost of recording a call's audio (`gateway/src/recording`): one 20 ms frame
//! each way through the call's Twilio socket — an inbound `media` message received and an
//! outbound `media` message sent — with the socket bare (`hark_gateway::ws::Socket` is not
//! involved: an in-memory socket hands out the same message), wrapped with recording off for
//! the call, and wrapped with recording on. The engine itself is the same in all three (the
//! recording copies audio off the socket); compare with `engine/inbound_tick_20ms` and
//! `engine/outbound_tick_20ms`.
//!
//! - `recording/bare_frame_each_way`
//! - `recording/off_frame_each_way`: `RecordingSocket`, call not recorded (decided at `start`).
//! - `recording/on_frame_each_way`: recorded: the inbound message parsed and decoded into the
//!   tape, the outbound payload decoded and placed (a `clear` every 1000 frames keeps the
//!   agent channel from growing without end in a bench that runs faster than real time).
//!
//! Run: `cargo bench -p hark-benches --bench recording -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use hark_benches::FRAME_BYTES;
use hark_engine::io::{Recv, SocketError, TwilioSocket};
use hark_engine::twilio::{self, Start};
use hark_gateway::recording::RecordingSocket;

const SID: &str = "MZcf010921287e246446bd214f4ae3844c";

/// A socket that hands out `next` (the `start` first) and swallows what is sent.
struct Memory {
    start: Option<String>,
    next: String,
    sent: usize,
}

impl TwilioSocket for Memory {
    async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
        buf.clear();
        buf.push_str(self.start.take().as_deref().unwrap_or(&self.next));
        Ok(Recv::Text)
    }
    async fn send(&mut self, text: &str) -> Result<(), SocketError> {
        self.sent += text.len();
        Ok(())
    }
    async fn close(&mut self) {}
}

fn memory(record: Option<bool>, inbound: &str) -> Memory {
    let params = match record {
        Some(true) => vec![("hark_record".to_string(), "1".to_string())],
        _ => vec![],
    };
    let start = Start {
        stream_sid: SID.into(),
        call_sid: "CA0123456789abcdef0123456789abcdef".into(),
        account_sid: "AC0123456789abcdef0123456789abcdef".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: params,
        encoding: "audio/x-mulaw".into(),
        sample_rate: 8000,
        channels: 1,
    };
    Memory {
        start: Some(twilio::inbound::start(1, &start)),
        next: inbound.to_owned(),
        sent: 0,
    }
}

async fn frame_each_way<S: TwilioSocket>(s: &mut S, text: &mut String, outbound: &str) -> usize {
    let r = s.recv(text).await.expect("recv");
    debug_assert_eq!(r, Recv::Text);
    s.send(outbound).await.expect("send");
    text.len()
}

fn recording(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio/jfk-8k.ulaw");
    let ulaw = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let frame = &ulaw[2000 * 8..2000 * 8 + FRAME_BYTES];
    let mut inbound = String::new();
    twilio::inbound::media(2, SID, 1, 0, frame, &mut inbound);
    let mut outbound = String::new();
    twilio::encode_media(SID, frame, &mut outbound);
    let mut clear = String::new();
    twilio::encode_clear(SID, &mut clear);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("recording");
    let mut text = String::with_capacity(512);

    let mut bare = memory(None, &inbound);
    rt.block_on(bare.recv(&mut text)).expect("start");
    g.bench_function("bare_frame_each_way", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(frame_each_way(&mut bare, &mut text, &outbound).await);
                }
                t.elapsed()
            })
        })
    });

    for (name, record) in [("off_frame_each_way", false), ("on_frame_each_way", true)] {
        let mut s = RecordingSocket::new(memory(Some(record), &inbound), false, 3_600_000);
        rt.block_on(s.recv(&mut text)).expect("start");
        let mut k = 0u64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        k += 1;
                        if k.is_multiple_of(1000) {
                            s.send(&clear).await.expect("clear");
                        }
                        black_box(frame_each_way(&mut s, &mut text, &outbound).await);
                    }
                    t.elapsed()
                })
            })
        });
        let recorded = s.take();
        assert_eq!(recorded.is_some(), record, "{name}");
        if let Some(r) = recorded {
            let stereo = r.tape.finish(Instant::now());
            assert!(!stereo.caller.is_empty() && !stereo.agent.is_empty());
        }
    }
    g.finish();
}

criterion_group!(benches, recording);
criterion_main!(benches);
