//! A byte-level TCP chaos proxy: what a real network, a TLS terminator or a load balancer does
//! to a byte stream, on 127.0.0.1, for tests and `hark bench --chaos SEED`.
//!
//! [`ChaosProxy::start`] listens on `127.0.0.1:0` and forwards every connection to a target
//! address. Each direction of each connection is a FIFO byte queue: bytes are never lost,
//! duplicated or reordered, only **re-segmented** and **delayed**, according to a [`Shape`]:
//!
//! - [`Shape::Random`]: the bytes are cut at random offsets into segments of 1 byte up to
//!   [`ChaosConfig::max_segment_bytes`] (several WebSocket frames' worth; a quarter of the cuts
//!   fall within 8 bytes, i.e. inside a frame header), and each segment is held for a random
//!   0..=[`ChaosConfig::max_delay`] after its first byte arrived (never released before the
//!   segment ahead of it, so no byte is held longer than `max_delay` plus the write). Bytes that
//!   arrive while a segment is held join it, up to its size: segments span several of the
//!   sender's writes when it writes in bursts.
//! - [`Shape::SplitWsFrames`]: after the HTTP upgrade request (forwarded whole, up to its blank
//!   line), the stream is parsed as WebSocket frames (RFC 6455 §5.2), and every frame longer
//!   than `after` bytes is written as two segments, its first `after` bytes, then after a
//!   random `gap` the rest.
//! - [`Shape::Pass`]: forwarded as read.
//!
//! Every segment is written on its own (`TCP_NODELAY` on both sockets), so the split really
//! reaches the peer's socket as separate TCP segments with the delay between them.
//!
//! The random numbers (cut sizes, delays) are a splitmix64 sequence per direction, seeded from
//! [`ChaosConfig::seed`] and the connection's number (1, 2, … in accept order), so a seed gives
//! the same sequence of cuts and delays every run. Where the cuts land in the stream also
//! depends on when the sender's bytes arrive (a segment holds only what has arrived when its
//! delay ends), so runs are alike, not byte-identical.
//!
//! Half-closes are forwarded after the queued bytes: when one side shuts its write half (or its
//! socket fails), the other side's write half is shut down once everything before it was
//! written. Dropping the [`ChaosProxy`] stops it and every connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, warn};

/// Default largest segment, bytes: about three Twilio `media` messages (≈ 330 bytes each).
pub const DEFAULT_MAX_SEGMENT_BYTES: usize = 1_000;
/// Default longest hold of a segment, ms.
pub const DEFAULT_MAX_DELAY_MS: u64 = 20;
/// Bytes asked of the socket per read.
const READ_BYTES: usize = 16 * 1024;
/// Most bytes queued per direction before the proxy stops reading (the sender then waits, as
/// behind a full TCP window).
const MAX_QUEUED_BYTES: usize = 256 * 1024;
/// Largest WebSocket frame [`Shape::SplitWsFrames`] buffers whole, bytes; longer frames are
/// split once, at `after`, as they stream through.
const MAX_SPLIT_FRAME_BYTES: usize = 1024 * 1024;
/// Longest HTTP upgrade head [`Shape::SplitWsFrames`] looks for, bytes; a stream without a
/// blank line by then is taken as frames from its first byte.
const MAX_HTTP_HEAD_BYTES: usize = 16 * 1024;

/// How one direction of a connection is re-segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Bytes forwarded as read.
    Pass,
    /// Random cuts of 1..=`max_segment_bytes` bytes, each held 0..=`max_delay`.
    Random,
    /// Each WebSocket frame (client-to-server: masked) longer than `after` bytes is written as
    /// two segments, `gap_min..=gap_max` apart (uniform).
    SplitWsFrames {
        /// Bytes in the first segment (2 cuts inside the base header, 6 inside the extended
        /// length or the masking key, 150 inside the payload of a `media` message).
        after: usize,
        /// Shortest gap between the two segments.
        gap_min: Duration,
        /// Longest gap.
        gap_max: Duration,
    },
}

/// A proxy's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosConfig {
    /// Seed of every random choice (with the connection's number and direction).
    pub seed: u64,
    /// Largest segment, bytes (at least 1). Default [`DEFAULT_MAX_SEGMENT_BYTES`].
    pub max_segment_bytes: usize,
    /// Longest hold of a segment. Default [`DEFAULT_MAX_DELAY_MS`].
    pub max_delay: Duration,
    /// Client → target (for hark: Twilio → hark, the caller's frames).
    pub upstream: Shape,
    /// Target → client (hark → Twilio: the agent's audio, marks, clears).
    pub downstream: Shape,
}

impl ChaosConfig {
    /// Random re-segmentation both ways with the defaults: segments of 1..=1,000 bytes, each
    /// held 0–20 ms.
    pub fn new(seed: u64) -> Self {
        ChaosConfig {
            seed,
            max_segment_bytes: DEFAULT_MAX_SEGMENT_BYTES,
            max_delay: Duration::from_millis(DEFAULT_MAX_DELAY_MS),
            upstream: Shape::Random,
            downstream: Shape::Random,
        }
    }

    /// Each client WebSocket frame longer than `after` bytes written as two segments 1–5 ms
    /// apart; the other direction untouched.
    pub fn split_frames(seed: u64, after: usize) -> Self {
        ChaosConfig {
            upstream: Shape::SplitWsFrames {
                after,
                gap_min: Duration::from_millis(1),
                gap_max: Duration::from_millis(5),
            },
            downstream: Shape::Pass,
            ..ChaosConfig::new(seed)
        }
    }
}

/// What a proxy did so far (all connections, both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChaosStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections whose target could not be reached (closed at once).
    pub connect_failures: u64,
    /// Segments written (each one write call).
    pub segments: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Segments that ended inside a read of the sender (a cut the sender did not make).
    pub cuts: u64,
    /// Longest a byte was held before its segment was written, µs.
    pub max_hold_us: u64,
}

impl ChaosStats {
    /// What happened since `earlier` (counters subtracted; `max_hold_us` is kept: the longest
    /// hold over both).
    pub fn since(&self, earlier: &ChaosStats) -> ChaosStats {
        ChaosStats {
            connections: self.connections.saturating_sub(earlier.connections),
            connect_failures: self
                .connect_failures
                .saturating_sub(earlier.connect_failures),
            segments: self.segments.saturating_sub(earlier.segments),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            cuts: self.cuts.saturating_sub(earlier.cuts),
            max_hold_us: self.max_hold_us,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    connect_failures: AtomicU64,
    segments: AtomicU64,
    bytes: AtomicU64,
    cuts: AtomicU64,
    max_hold_us: AtomicU64,
}

/// A running proxy. Dropping it stops it and closes every connection through it.
#[derive(Debug)]
pub struct ChaosProxy {
    addr: SocketAddr,
    target: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl ChaosProxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `target` through `config`.
    /// Must be called within a tokio runtime (its tasks run there).
    ///
    /// # Errors
    /// The I/O error if the listener cannot be bound.
    pub async fn start(target: SocketAddr, config: ChaosConfig) -> std::io::Result<ChaosProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, target, config, counters.clone()));
        Ok(ChaosProxy {
            addr,
            target,
            counters,
            task,
        })
    }

    /// Where it listens (127.0.0.1, a free port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `url` (`ws://host:port/path`) with its host and port replaced by the proxy's, or `None`
    /// for a URL that is not `ws://` or `http://`.
    pub fn url(&self, url: &str) -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        if !matches!(scheme.to_ascii_lowercase().as_str(), "ws" | "http") {
            return None;
        }
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        Some(format!("{scheme}://{}{path}", self.addr))
    }

    /// What it did so far.
    pub fn stats(&self) -> ChaosStats {
        let c = &self.counters;
        ChaosStats {
            connections: c.connections.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            max_hold_us: c.max_hold_us.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it aborts them all.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    config: ChaosConfig,
    counters: Arc<Counters>,
) {
    let mut conns = JoinSet::new();
    let mut number = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    number += 1;
                    counters.connections.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(connection(client, target, config, number, counters.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait a little instead of spinning.
                    warn!(error = %e, "chaos proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    config: ChaosConfig,
    number: u64,
    counters: Arc<Counters>,
) {
    let server = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            counters.connect_failures.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, %target, "chaos proxy: cannot reach the target");
            return;
        }
    };
    // Each segment must leave as its own TCP segment.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let seed = mix(config.seed ^ mix(number));
    let up = Pump::new(&config, config.upstream, Rng::new(seed), counters.clone());
    let down = Pump::new(&config, config.downstream, Rng::new(mix(seed)), counters);
    tokio::join!(up.run(client_rx, server_tx), down.run(server_rx, client_tx));
}

/// splitmix64's output function: spreads a seed's bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64: small, fast, and the same sequence for the same seed on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        let x = self.0;
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(x)
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// A segment size, 1..=`max` bytes: a quarter 1–8 (inside a frame header), a quarter
    /// 9–200 (inside a frame), half 201–`max` (frames whole and several together).
    fn segment(&mut self, max: usize) -> usize {
        let max = max.max(1) as u64;
        let (lo, hi) = match self.next() % 4 {
            0 => (1, 8),
            1 => (9, 200),
            _ => (201, max),
        };
        let hi = hi.min(max);
        self.range(lo.min(hi), hi) as usize
    }

    /// Uniform in `lo..=hi`, µs resolution.
    fn delay(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_micros() as u64, hi.as_micros() as u64);
        Duration::from_micros(self.range(lo.min(hi), hi))
    }
}

/// One direction of a connection.
struct Pump {
    shape: Shape,
    max_segment: usize,
    max_delay: Duration,
    rng: Rng,
    counters: Arc<Counters>,
    /// Bytes read and not yet written, in arrival order, with when they arrived.
    queue: VecDeque<(Instant, Bytes)>,
    queued: usize,
    /// When the last segment was released (a segment never goes before the one ahead of it).
    last_release: Instant,
    /// [`Shape::SplitWsFrames`]: bytes of the current frame not yet written (0: the queue
    /// starts at a frame header).
    frame_left: usize,
    /// … of which to write before the cut (0: no cut pending).
    to_cut: usize,
    /// The next write is the first after the cut: it waits for the gap.
    gap_next: bool,
    /// [`Shape::SplitWsFrames`]: the HTTP upgrade (up to its blank line) is still ahead.
    http_ahead: bool,
}

/// The segment being held: its size limit, and when it goes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    bytes: usize,
    release: Instant,
}

impl Pump {
    fn new(config: &ChaosConfig, shape: Shape, rng: Rng, counters: Arc<Counters>) -> Self {
        Pump {
            shape,
            max_segment: config.max_segment_bytes.max(1),
            max_delay: config.max_delay,
            rng,
            counters,
            queue: VecDeque::new(),
            queued: 0,
            last_release: Instant::now(),
            frame_left: 0,
            to_cut: 0,
            gap_next: false,
            http_ahead: true,
        }
    }

    /// Forwards `from` to `to` until `from` ends (or fails) and the queue is written, or `to`
    /// fails; then shuts `to`'s write half.
    async fn run(mut self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        let mut eof = false;
        let mut plan: Option<Plan> = None;
        loop {
            if plan.is_none() {
                plan = self.plan(eof);
            }
            if plan.is_none() && eof && self.queued == 0 {
                break;
            }
            // Due already: write without arming a timer.
            if let Some(p) = plan.filter(|p| p.release <= Instant::now()) {
                plan = None;
                self.last_release = p.release;
                if !self.write_segment(&mut to, p.bytes).await {
                    return;
                }
                continue;
            }
            let can_read = !eof && self.queued < MAX_QUEUED_BYTES;
            let release = plan.map(|p| p.release);
            tokio::select! {
                biased;
                () = sleep_until_opt(release), if release.is_some() => {
                    let Some(p) = plan.take() else { continue };
                    self.last_release = p.release;
                    if !self.write_segment(&mut to, p.bytes).await {
                        return;
                    }
                }
                // Cancel-safe: `read_buf` either read (and returned) or did not touch `buf`.
                r = from.read_buf(&mut buf), if can_read => match r {
                    Ok(0) | Err(_) => eof = true,
                    Ok(_) => {
                        let chunk = buf.split().freeze();
                        self.queued += chunk.len();
                        self.queue.push_back((Instant::now(), chunk));
                        buf.reserve(READ_BYTES);
                    }
                },
                // Nothing to write, nothing to read (queue full or ended): wait for the plan.
                () = std::future::pending::<()>(), if release.is_none() && !can_read => {}
            }
        }
        let _ = to.shutdown().await;
    }

    /// The next segment to hold, if bytes are queued (and, when splitting frames, enough of a
    /// frame header has arrived to know where to cut, or the stream ended).
    fn plan(&mut self, eof: bool) -> Option<Plan> {
        let arrived = self.queue.front()?.0;
        match self.shape {
            Shape::Pass => Some(Plan {
                bytes: self.queued,
                release: arrived,
            }),
            Shape::Random => {
                let bytes = self.rng.segment(self.max_segment);
                let delay = self.rng.delay(Duration::ZERO, self.max_delay);
                Some(Plan {
                    bytes,
                    release: (arrived + delay).max(self.last_release),
                })
            }
            Shape::SplitWsFrames {
                after,
                gap_min,
                gap_max,
            } => {
                if self.http_ahead {
                    match self.http_len() {
                        // The request (or response) is forwarded whole, as one "frame".
                        Some(len) => {
                            self.http_ahead = false;
                            self.frame_left = len;
                        }
                        None if eof => {
                            return Some(Plan {
                                bytes: self.queued,
                                release: arrived.max(self.last_release),
                            });
                        }
                        None if self.queued < MAX_HTTP_HEAD_BYTES => return None,
                        // Not HTTP: frames from the first byte.
                        None => self.http_ahead = false,
                    }
                }
                if self.frame_left == 0 {
                    match self.frame_len() {
                        Some(len) => {
                            self.frame_left = len;
                            if after > 0 && len > after {
                                self.to_cut = after;
                            }
                        }
                        // The stream ended inside a header: flush what is left.
                        None if eof => {
                            return Some(Plan {
                                bytes: self.queued,
                                release: arrived.max(self.last_release),
                            });
                        }
                        // Not a whole header yet: wait for more.
                        None => return None,
                    }
                }
                if self.to_cut > 0 {
                    return Some(Plan {
                        bytes: self.to_cut,
                        release: arrived.max(self.last_release),
                    });
                }
                let release = if std::mem::take(&mut self.gap_next) {
                    self.last_release + self.rng.delay(gap_min, gap_max)
                } else {
                    arrived.max(self.last_release)
                };
                Some(Plan {
                    bytes: self.frame_left,
                    release,
                })
            }
        }
    }

    /// The length of the HTTP head at the front of the queue, up to and including its blank
    /// line (`\r\n\r\n`), once it has arrived.
    fn http_len(&self) -> Option<usize> {
        let mut head = Vec::with_capacity(self.queued.min(MAX_HTTP_HEAD_BYTES));
        for (_, chunk) in &self.queue {
            let room = MAX_HTTP_HEAD_BYTES - head.len();
            head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        head.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
    }

    /// The length of the WebSocket frame at the head of the queue (header + payload, bytes), once
    /// its header has arrived (RFC 6455 §5.2: 2 bytes, then a 16- or 64-bit length if the 7-bit
    /// one is 126 or 127, then a 4-byte masking key if the mask bit is set).
    fn frame_len(&self) -> Option<usize> {
        let mut head = [0u8; 14];
        let mut n = 0;
        for (_, chunk) in &self.queue {
            for &b in chunk.iter() {
                if n == head.len() {
                    break;
                }
                head[n] = b;
                n += 1;
            }
        }
        if n < 2 {
            return None;
        }
        let masked = head[1] & 0x80 != 0;
        let (ext, len) = match head[1] & 0x7F {
            126 => (2, None),
            127 => (8, None),
            l => (0, Some(l as u64)),
        };
        let header = 2 + ext + if masked { 4 } else { 0 };
        if n < 2 + ext {
            return None;
        }
        let payload = match len {
            Some(l) => l,
            None => head[2..2 + ext]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | b as u64),
        };
        let total = (header as u64).saturating_add(payload);
        // A frame this long is split once and then streams through as read.
        Some(total.min(MAX_SPLIT_FRAME_BYTES as u64) as usize)
    }

    /// Writes up to `limit` queued bytes as one write. `false` when `to` failed.
    async fn write_segment(&mut self, to: &mut OwnedWriteHalf, limit: usize) -> bool {
        let Some((arrived, front)) = self.queue.front_mut() else {
            return true;
        };
        let held = Instant::now().saturating_duration_since(*arrived);
        let segment: Bytes = if front.len() > limit {
            self.counters.cuts.fetch_add(1, Ordering::Relaxed);
            front.split_to(limit)
        } else {
            // Whole chunks, and a part of the next one, up to `limit`.
            let mut out = BytesMut::with_capacity(limit.min(self.queued));
            while let Some((_, chunk)) = self.queue.front_mut() {
                let room = limit - out.len();
                if room == 0 {
                    break;
                }
                if chunk.len() > room {
                    self.counters.cuts.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&chunk.split_to(room));
                    break;
                }
                out.extend_from_slice(chunk);
                self.queue.pop_front();
            }
            out.freeze()
        };
        if self.queue.front().is_some_and(|(_, c)| c.is_empty()) {
            self.queue.pop_front();
        }
        self.queued -= segment.len();
        if let Shape::SplitWsFrames { .. } = self.shape {
            self.frame_left = self.frame_left.saturating_sub(segment.len());
            if self.to_cut > 0 {
                self.to_cut = self.to_cut.saturating_sub(segment.len());
                self.gap_next = self.to_cut == 0;
            }
        }
        let c = &self.counters;
        c.segments.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(segment.len() as u64, Ordering::Relaxed);
        c.max_hold_us
            .fetch_max(held.as_micros() as u64, Ordering::Relaxed);
        to.write_all(&segment).await.is_ok()
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on 127.0.0.1:0 that records the sizes of its reads.
    async fn echo_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let _ = tx.send(n);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    #[test]
    fn segment_sizes_and_delays_stay_in_range() {
        let mut rng = Rng::new(7);
        let mut small = 0;
        for _ in 0..10_000 {
            let s = rng.segment(1_000);
            assert!((1..=1_000).contains(&s), "{s}");
            small += usize::from(s <= 8);
            let d = rng.delay(Duration::ZERO, Duration::from_millis(20));
            assert!(d <= Duration::from_millis(20));
        }
        assert!((2_000..3_000).contains(&small), "{small} header-sized cuts");
        assert!((1..=3).contains(&Rng::new(1).segment(3)));
        assert_eq!(Rng::new(5).segment(1), 1);
        let a: Vec<u64> = (0..4).map(|_| Rng::new(42).next()).collect();
        assert!(
            a.windows(2).all(|w| w[0] == w[1]),
            "same seed, same sequence"
        );
    }

    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_through_random_cuts() {
        let (target, mut reads) = echo_server().await;
        let proxy = ChaosProxy::start(target, ChaosConfig::new(3))
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut rx, mut tx) = s.split();
        let write = async {
            for part in sent.chunks(333) {
                tx.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tx.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = rx.read_to_end(&mut got);
        let (_, r) = tokio::join!(write, read);
        r.unwrap();
        assert_eq!(got, sent, "the echo came back whole, in order, then EOF");
        let st = proxy.stats();
        assert_eq!(st.connections, 1);
        assert_eq!(st.bytes, 2 * sent.len() as u64);
        assert!(st.cuts > 10, "{st:?}");
        assert!(st.max_hold_us <= 40_000, "{st:?}");
        // The target saw reads smaller than the client's writes.
        let mut sizes = Vec::new();
        while let Ok(n) = reads.try_recv() {
            sizes.push(n);
        }
        assert!(sizes.iter().any(|&n| n < 333), "{sizes:?}");
    }

    #[tokio::test]
    async fn websocket_frames_are_split_after_the_given_byte() {
        let (target, mut reads) = echo_server().await;
        let proxy = ChaosProxy::start(target, ChaosConfig::split_frames(1, 6))
            .await
            .unwrap();
        assert_eq!(
            proxy.url("ws://127.0.0.1:1/media-stream").unwrap(),
            format!("ws://{}/media-stream", proxy.addr())
        );
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let head = b"GET /media-stream HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        s.write_all(head).await.unwrap();
        let mut got = vec![0u8; head.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(
            reads.recv().await.unwrap(),
            head.len(),
            "the head goes whole"
        );
        // A masked text frame with a 16-bit length: 8 header bytes + 300 bytes.
        let mut frame = vec![0x81, 0x80 | 126, 0x01, 0x2C, 1, 2, 3, 4];
        frame.extend(std::iter::repeat_n(b'x', 300));
        // And a short one (2 + 4 + 3 bytes).
        let short = [0x81, 0x83, 0, 0, 0, 0, b'a', b'b', b'c'];
        let mut all = frame.clone();
        all.extend_from_slice(&short);
        s.write_all(&frame).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(&short).await.unwrap();
        let mut got = vec![0u8; all.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, all);
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < all.len() {
            sizes.push(reads.recv().await.unwrap());
        }
        assert_eq!(sizes, vec![6, 302, 6, 3], "each frame cut after byte 6");
    }
}
