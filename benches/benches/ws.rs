//! The WebSocket frame path per 20 ms frame, through hark's server socket
//! (`hark_gateway::ws::Socket`: cancel-safe framing with a capped message size), and for
//! reference through fastwebsockets' `FragmentCollector` (what `gateway/src/ws.rs` used before
//! it had to be cancel-safe; auto pong/close, no writev).
//!
//! Each iteration is one 20 ms frame both ways: the client (Twilio's side) writes a `media`
//! text frame — 160 bytes of JFK's speech as 216 base64 characters, 291 bytes of JSON, masked as
//! a client must — the server socket reads it; the server writes an outbound `media` frame
//! (same audio, 118 + 216 bytes, unmasked) and the client reads it.
//!
//! - `ws/duplex_media_roundtrip` (hark) and `ws/fastwebsockets_duplex_media_roundtrip`: over tokio's in-memory duplex pipe: framing, masking and
//!   buffering alone, no system calls.
//! - `ws/loopback_media_roundtrip` (hark) and `ws/fastwebsockets_loopback_media_roundtrip`: over a real TCP connection on 127.0.0.1 (`TCP_NODELAY`),
//!   both ends on one thread, so it counts the four socket system calls and the loopback stack
//!   but no cross-thread wake-ups.
//! - `ws/loopback_inbound_engine`: the server's whole inbound path for one frame: the client
//!   writes the `media` frame, the server socket reads it and `Call::handle_input` parses it and
//!   runs base64 → μ-law → VAD → turn detector, then `poll_output` is drained.
//!
//! Run: `cargo bench -p hark-benches --bench ws` (short: `-- --warm-up-time 1 --measurement-time 3`).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket};
use hark_benches::FRAME_BYTES;
use hark_engine::agent::{AgentNeeds, CallInfo, ProviderEvent, UserTurn};
use hark_engine::io::{Recv, TwilioSocket};
use hark_engine::playout::Interrupted;
use hark_engine::twilio::{self, Start};
use hark_engine::{Action, Agent, Call, CallConfig, Input, Output};
use hark_gateway::ws::Socket;
use tokio::io::{AsyncRead, AsyncWrite};

const SID: &str = "MZcf010921287e246446bd214f4ae3844c";

fn jfk_ulaw() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio/jfk-8k.ulaw");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// 20 ms `media` messages of JFK's speech (0.5 s to 10.5 s), as Twilio sends them.
fn inbound_messages(ulaw: &[u8]) -> Vec<String> {
    ulaw[500 * 8..10_500 * 8]
        .chunks(FRAME_BYTES)
        .enumerate()
        .map(|(k, frame)| {
            let mut s = String::new();
            let k = k as u64;
            twilio::inbound::media(k + 2, SID, k + 1, k * 20, frame, &mut s);
            s
        })
        .collect()
}

/// fastwebsockets' server socket as `gateway/src/ws.rs` set it up before (the reference).
fn server<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> FragmentCollector<S> {
    let mut ws = WebSocket::after_handshake(io, Role::Server);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    ws.set_writev(false);
    ws.set_max_message_size(2 * 1024 * 1024);
    FragmentCollector::new(ws)
}

fn client<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> WebSocket<S> {
    let mut ws = WebSocket::after_handshake(io, Role::Client);
    ws.set_writev(false);
    ws
}

/// A connected TCP pair on 127.0.0.1 with `TCP_NODELAY`: (client end, server end).
async fn loopback() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let c = c.expect("connect");
    let (s, _) = s.expect("accept");
    c.set_nodelay(true).expect("nodelay");
    s.set_nodelay(true).expect("nodelay");
    (c, s)
}

/// One frame both ways; returns the bytes read.
async fn roundtrip<C, S>(
    client: &mut WebSocket<C>,
    server: &mut FragmentCollector<S>,
    inbound: &[u8],
    masked: &mut Vec<u8>,
    outbound: &[u8],
) -> usize
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The client masks in place: give it a fresh copy (a 291-byte memcpy).
    masked.clear();
    masked.extend_from_slice(inbound);
    client
        .write_frame(Frame::text(Payload::BorrowedMut(masked)))
        .await
        .expect("client write");
    let f = server.read_frame().await.expect("server read");
    debug_assert_eq!(f.opcode, OpCode::Text);
    let mut n = f.payload.len();
    server
        .write_frame(Frame::text(Payload::Borrowed(outbound)))
        .await
        .expect("server write");
    let f = client.read_frame().await.expect("client read");
    n += f.payload.len();
    n
}

/// Benches [`roundtrip`] over the connected pair `(client end, server end)`.
fn bench_roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    (a, b): (S, S),
    inbound: &[u8],
    outbound: &str,
) {
    let (mut cl, mut sv) = (client(a), server(b));
    let mut masked = Vec::with_capacity(512);
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(
                        roundtrip(&mut cl, &mut sv, inbound, &mut masked, outbound.as_bytes())
                            .await,
                    );
                }
                t.elapsed()
            })
        })
    });
}

/// One frame both ways through hark's socket; returns the bytes read.
async fn hark_roundtrip<C, S>(
    client: &mut WebSocket<C>,
    server: &mut Socket<S>,
    text: &mut String,
    inbound: &[u8],
    masked: &mut Vec<u8>,
    outbound: &str,
) -> usize
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    masked.clear();
    masked.extend_from_slice(inbound);
    client
        .write_frame(Frame::text(Payload::BorrowedMut(masked)))
        .await
        .expect("client write");
    let r = server.recv(text).await.expect("server read");
    debug_assert_eq!(r, Recv::Text);
    let mut n = text.len();
    server.send(outbound).await.expect("server write");
    let f = client.read_frame().await.expect("client read");
    n += f.payload.len();
    n
}

/// Benches [`hark_roundtrip`] over the connected pair `(client end, server end)`.
fn bench_hark_roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    (a, b): (S, S),
    inbound: &[u8],
    outbound: &str,
) {
    let (mut cl, mut sv) = (client(a), Socket::new(b));
    let mut masked = Vec::with_capacity(512);
    let mut text = String::with_capacity(512);
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(
                        hark_roundtrip(&mut cl, &mut sv, &mut text, inbound, &mut masked, outbound)
                            .await,
                    );
                }
                t.elapsed()
            })
        })
    });
}

/// An agent that needs nothing: the inbound bench measures the socket and the core alone.
struct Passive;

impl Agent for Passive {
    fn name(&self) -> &'static str {
        "bench-passive"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds::default()
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, _: &mut Vec<Action>) {}
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
    fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
    fn on_provider(&mut self, _: Instant, _: ProviderEvent, _: &mut Vec<Action>) {}
}

fn drain(call: &mut Call) -> usize {
    let mut n = 0;
    loop {
        match call.poll_output() {
            Output::Timeout(_) => return n,
            _ => n += 1,
        }
    }
}

fn started_call(now: Instant) -> Call {
    let mut call = Call::new(CallConfig::default(), Box::new(Passive)).expect("default config");
    call.handle_input(Input::Twilio {
        at: now,
        text: &twilio::inbound::connected(),
    });
    let start = Start {
        stream_sid: SID.into(),
        call_sid: "CA17c90326b8da5245358e1dfabfd8d82d".into(),
        account_sid: "AC661433740cc9ed95b8a585af98bbe5e0".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: vec![],
        encoding: "audio/x-mulaw".into(),
        sample_rate: 8000,
        channels: 1,
    };
    call.handle_input(Input::Twilio {
        at: now,
        text: &twilio::inbound::start(1, &start),
    });
    drain(&mut call);
    call
}

fn ws(c: &mut Criterion) {
    let ulaw = jfk_ulaw();
    let inbound = inbound_messages(&ulaw);
    let frame = &ulaw[2000 * 8..2000 * 8 + FRAME_BYTES];
    let mut outbound = String::with_capacity(400);
    twilio::encode_media(SID, frame, &mut outbound);
    let inbound_msg = inbound[100].as_bytes();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("ws");
    let mut masked = Vec::with_capacity(512);

    let (a, b) = tokio::io::duplex(64 * 1024);
    bench_hark_roundtrip(
        &mut g,
        "duplex_media_roundtrip",
        &rt,
        (a, b),
        inbound_msg,
        &outbound,
    );
    let (a, b) = rt.block_on(loopback());
    bench_hark_roundtrip(
        &mut g,
        "loopback_media_roundtrip",
        &rt,
        (a, b),
        inbound_msg,
        &outbound,
    );
    let (a, b) = tokio::io::duplex(64 * 1024);
    bench_roundtrip(
        &mut g,
        "fastwebsockets_duplex_media_roundtrip",
        &rt,
        (a, b),
        inbound_msg,
        &outbound,
    );
    let (a, b) = rt.block_on(loopback());
    bench_roundtrip(
        &mut g,
        "fastwebsockets_loopback_media_roundtrip",
        &rt,
        (a, b),
        inbound_msg,
        &outbound,
    );

    {
        let (a, b) = rt.block_on(loopback());
        let (mut cl, mut sv) = (client(a), Socket::new(b));
        let mut now = Instant::now();
        let mut call = started_call(now);
        let mut k = 0usize;
        let mut text = String::with_capacity(512);
        g.bench_function("loopback_inbound_engine", |bch| {
            bch.iter_custom(|iters| {
                rt.block_on(async {
                    let mut took = Duration::ZERO;
                    for _ in 0..iters {
                        let msg = inbound[k % inbound.len()].as_bytes();
                        k += 1;
                        masked.clear();
                        masked.extend_from_slice(msg);
                        let t = Instant::now();
                        cl.write_frame(Frame::text(Payload::BorrowedMut(&mut masked)))
                            .await
                            .expect("client write");
                        let r = sv.recv(&mut text).await.expect("server read");
                        debug_assert_eq!(r, Recv::Text);
                        now += Duration::from_millis(20);
                        call.handle_input(Input::Twilio {
                            at: now,
                            text: &text,
                        });
                        black_box(drain(&mut call));
                        took += t.elapsed();
                    }
                    took
                })
            })
        });
        assert_eq!(call.stats().malformed_total(), 0);
        assert!(call.stats().turns > 0, "real speech made turns");
    }
    g.finish();
}

criterion_group!(benches, ws);
criterion_main!(benches);
