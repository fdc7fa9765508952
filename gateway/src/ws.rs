//! The Twilio socket: WebSocket framing (RFC 6455, server side) on the upgraded connection, as
//! the engine's driver wants it.
//!
//! Twilio sends JSON text frames (Twilio, "Media Streams — WebSocket Messages"). The upgrade
//! handshake is fastwebsockets' (`fastwebsockets::upgrade`); the frames are read and written
//! here, because the driver needs two properties a general-purpose reader does not give:
//!
//! - **Cancel safety.** The driver waits on the socket, the provider pipes and its timers at
//!   once (`tokio::select!`), so a read is dropped whenever a timer fires first. A reader that
//!   consumes a frame header before its payload has arrived loses its place in the stream when
//!   dropped (the next read parses payload bytes as a header: "reserved bits are not zero"), and
//!   TCP re-segmentation (a proxy, a retransmit, TLS termination) makes that happen within a few
//!   frames. Here bytes only ever move from the socket into [`Socket`]'s input buffer
//!   (`read_buf`, which is cancel-safe), and a frame is taken out of the buffer only once it is
//!   complete, in synchronous code. Dropping [`TwilioSocket::recv`] at any await point loses
//!   nothing. Writes go through an output buffer from which `write_buf` removes exactly what the
//!   kernel took, so a control reply (pong, close) interrupted half-way is finished by the next
//!   read or write instead of corrupting the stream.
//! - **Bounded memory.** A frame or a message assembled from fragments larger than
//!   [`MAX_MESSAGE_BYTES`] closes the connection with 1009 (message too big, RFC 6455 §7.4.1)
//!   before its payload is buffered; buffers grown past [`KEEP_CAPACITY_BYTES`] by a large
//!   message are given back once the message has been handed on.
//!
//! Also per RFC 6455: frames from the client must be masked (§5.1) and carry no RSV bits (no
//! extension is negotiated, §5.2); control frames are at most 125 bytes and not fragmented
//! (§5.5); a ping is answered with a pong carrying its payload (§5.5.2); a close frame is
//! answered with a close frame echoing its status code (§5.5.1). A violation closes the socket
//! with 1002 (protocol error) and ends the call with [`SocketError::Protocol`].

use bytes::{Buf, BytesMut};
use hark_engine::io::{Recv, SocketError, TwilioSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The connection of an upgraded `/media-stream` request.
pub type UpgradedIo = TokioIo<Upgraded>;

/// What fastwebsockets' upgrade future yields; [`Socket::from_upgraded`] takes it apart.
pub type UpgradedSocket = fastwebsockets::WebSocket<UpgradedIo>;

/// Largest frame, and largest message assembled from fragments, accepted from Twilio (bytes of
/// payload). A larger one closes the connection with 1009. Anything up to this reaches the
/// engine, which counts messages over its own limit (64 KiB) as malformed and goes on; Twilio's
/// own messages are under 2 KiB (a 20 ms `media` message is about 300 bytes).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Input and reassembly buffers that grew beyond this (bytes) are replaced by small ones once
/// the message that grew them has been handed on.
pub const KEEP_CAPACITY_BYTES: usize = 64 * 1024;

/// Initial input buffer (bytes): a few `media` messages.
const INITIAL_BUFFER_BYTES: usize = 4096;

/// RFC 6455 §7.4.1 status codes hark sends.
mod code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
}

/// Frame opcodes (RFC 6455 §5.2).
mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A complete frame's header, parsed from the front of the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Bytes of header (2–14).
    header_len: usize,
    /// Bytes of payload.
    payload_len: usize,
}

/// A violation of RFC 6455 by the peer: the close code to send and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    code: u16,
    reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// Parses the header at the front of `buf` without consuming anything. `Ok(None)` until the
/// whole header has arrived.
fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(violation(code::PROTOCOL_ERROR, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        op::CONTINUATION | op::TEXT | op::BINARY | op::CLOSE | op::PING | op::PONG
    ) {
        return Err(violation(code::PROTOCOL_ERROR, "unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(violation(code::PROTOCOL_ERROR, "unmasked client frame"));
    }
    let (len, ext) = match b1 & 0x7F {
        126 => (None, 2),
        127 => (None, 8),
        n => (Some(usize::from(n)), 0),
    };
    let header_len = 2 + ext + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let payload_len = match (len, ext) {
        (Some(n), _) => n,
        (None, 2) => usize::from(u16::from_be_bytes([buf[2], buf[3]])),
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX)
        }
    };
    let control = opcode >= op::CLOSE;
    if control && (!fin || payload_len > 125) {
        return Err(violation(
            code::PROTOCOL_ERROR,
            "control frame fragmented or over 125 bytes",
        ));
    }
    if payload_len > max_payload {
        return Err(violation(code::TOO_BIG, "frame too big"));
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[header_len - 4..header_len]);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// XORs `data` with the 4-byte `mask` (RFC 6455 §5.3), eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ m8).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends an unmasked server frame (FIN set) to `out`.
fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    out.extend_from_slice(&[0x80 | opcode]);
    let n = payload.len();
    if n < 126 {
        out.extend_from_slice(&[n as u8]);
    } else if let Ok(n16) = u16::try_from(n) {
        out.extend_from_slice(&[126]);
        out.extend_from_slice(&n16.to_be_bytes());
    } else {
        out.extend_from_slice(&[127]);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// What the synchronous frame step found.
enum Step {
    /// More bytes are needed (at least this many in the input buffer in all).
    More(usize),
    /// A message or event for the driver.
    Deliver(Recv),
    /// A close frame: reply queued; the socket is done.
    Close,
    /// A control frame was handled; look again.
    Again,
}

/// A Twilio Media Streams socket: the server side of a WebSocket on any byte stream (`S` is the
/// upgraded HTTP connection in `hark serve`, a TCP stream or an in-memory pipe in tests).
pub struct Socket<S = CallIo> {
    io: S,
    /// Bytes read and not yet taken as frames.
    input: BytesMut,
    /// Frame bytes queued for the peer and not yet taken by the kernel.
    output: BytesMut,
    /// The message being assembled from fragments: (opcode, payload so far).
    fragments: Option<(u8, Vec<u8>)>,
    /// A reassembly buffer kept for the next fragmented message.
    spare: Vec<u8>,
    max_message: usize,
    /// A close frame was queued (no further frames may follow it).
    close_sent: bool,
}

impl<S> std::fmt::Debug for Socket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("buffered_in", &self.input.len())
            .field("buffered_out", &self.output.len())
            .finish()
    }
}

/// The connection a call runs on: its TCP stream, moved onto the runtime of the call's worker
/// ([`Socket::from_upgraded`]), or, when the upgraded connection is not a plain TCP stream, the
/// upgraded connection as hyper gives it.
#[derive(Debug)]
pub enum CallIo {
    /// The TCP stream, registered with the current (call worker's) runtime.
    Tcp(tokio::net::TcpStream),
    /// Another kind of connection, left where it is.
    Upgraded(UpgradedIo),
}

impl AsyncRead for CallIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            CallIo::Tcp(t) => std::pin::Pin::new(t).poll_read(cx, buf),
            CallIo::Upgraded(u) => std::pin::Pin::new(u).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for CallIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            CallIo::Tcp(t) => std::pin::Pin::new(t).poll_write(cx, buf),
            CallIo::Upgraded(u) => std::pin::Pin::new(u).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            CallIo::Tcp(t) => std::pin::Pin::new(t).poll_flush(cx),
            CallIo::Upgraded(u) => std::pin::Pin::new(u).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            CallIo::Tcp(t) => std::pin::Pin::new(t).poll_shutdown(cx),
            CallIo::Upgraded(u) => std::pin::Pin::new(u).poll_shutdown(cx),
        }
    }
}

impl Socket<CallIo> {
    /// Takes over the connection of a finished upgrade, on the runtime of the task that calls
    /// it (the call's worker). A plain TCP connection (what `hark serve` accepts) is taken out
    /// of hyper and re-registered with this runtime's I/O driver, so the call's reads and
    /// writes wake its own worker thread instead of the HTTP runtime's (which would then wake
    /// the worker across threads for every 20 ms frame). Bytes the client sent right after the
    /// handshake, which hyper had already read, start the input buffer: nothing is lost.
    ///
    /// # Errors
    /// The stream cannot be moved (taking it off the HTTP runtime's driver or registering it
    /// with this one failed): the connection is closed.
    pub fn from_upgraded(ws: UpgradedSocket) -> std::io::Result<Self> {
        let upgraded = ws.into_inner().into_inner();
        match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => {
                let std = parts.io.into_inner().into_std()?;
                let tcp = tokio::net::TcpStream::from_std(std)?;
                let mut socket = Socket::new(CallIo::Tcp(tcp));
                socket.input.extend_from_slice(&parts.read_buf);
                Ok(socket)
            }
            Err(upgraded) => Ok(Socket::new(CallIo::Upgraded(TokioIo::new(upgraded)))),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A server-side socket on `io`, right after the handshake, with [`MAX_MESSAGE_BYTES`].
    pub fn new(io: S) -> Self {
        Self::with_limit(io, MAX_MESSAGE_BYTES)
    }

    /// As [`Socket::new`] with another limit on a frame and an assembled message (bytes).
    pub fn with_limit(io: S, max_message: usize) -> Self {
        Socket {
            io,
            input: BytesMut::with_capacity(INITIAL_BUFFER_BYTES),
            output: BytesMut::with_capacity(INITIAL_BUFFER_BYTES),
            fragments: None,
            spare: Vec::new(),
            max_message,
            close_sent: false,
        }
    }

    /// Bytes held in this socket's buffers (capacity), for tests and gauges.
    pub fn buffered_capacity(&self) -> usize {
        self.input.capacity()
            + self.output.capacity()
            + self.spare.capacity()
            + self.fragments.as_ref().map_or(0, |(_, v)| v.capacity())
    }

    /// Writes everything queued in `output`. Cancel-safe: what the kernel took is removed from
    /// the buffer, the rest stays queued for the next call.
    async fn flush_output(&mut self) -> std::io::Result<()> {
        // The common case on every read: nothing queued, nothing to write or flush.
        if !self.output.has_remaining() {
            return Ok(());
        }
        while self.output.has_remaining() {
            let n = self.io.write_buf(&mut self.output).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
        }
        self.io.flush().await
    }

    /// Queues a close frame with `code` (once).
    fn queue_close(&mut self, code: u16, reason: &[u8]) {
        if !self.close_sent {
            let mut payload = [0u8; 125];
            payload[..2].copy_from_slice(&code.to_be_bytes());
            let n = reason.len().min(123);
            payload[2..2 + n].copy_from_slice(&reason[..n]);
            put_frame(&mut self.output, op::CLOSE, &payload[..2 + n]);
            self.close_sent = true;
        }
    }

    /// Takes the next complete frame out of the input buffer, if there is one. Synchronous:
    /// nothing here can be interrupted half-way.
    fn step(&mut self, buf: &mut String) -> Result<Step, Violation> {
        let Some(h) = parse_header(&self.input, self.max_message)? else {
            return Ok(Step::More(self.input.len() + 1));
        };
        let total = h.header_len + h.payload_len;
        if self.input.len() < total {
            return Ok(Step::More(total));
        }
        let frame = &mut self.input[..total];
        let payload = &mut frame[h.header_len..];
        unmask(payload, h.mask);
        let step = match h.opcode {
            op::PING => {
                if !self.close_sent {
                    put_frame(&mut self.output, op::PONG, payload);
                }
                Step::Again
            }
            op::PONG => Step::Again,
            op::CLOSE => {
                // Echo the status code (RFC 6455 §5.5.1); a close with 1 byte is malformed.
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(violation(code::PROTOCOL_ERROR, "close frame of 1 byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                if self.close_sent {
                    // The peer's reply to our close.
                } else if let Some(c) = code {
                    self.queue_close(c, b"");
                } else {
                    put_frame(&mut self.output, op::CLOSE, &[]);
                    self.close_sent = true;
                }
                Step::Close
            }
            op::TEXT | op::BINARY => {
                if self.fragments.is_some() {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "new message inside a fragmented one",
                    ));
                }
                if h.fin {
                    Step::Deliver(deliver(h.opcode, payload, buf))
                } else {
                    let mut v = std::mem::take(&mut self.spare);
                    v.clear();
                    v.extend_from_slice(payload);
                    self.fragments = Some((h.opcode, v));
                    Step::Again
                }
            }
            _ => {
                // CONTINUATION (other opcodes were refused by `parse_header`).
                let Some((opcode, mut v)) = self.fragments.take() else {
                    return Err(violation(
                        code::PROTOCOL_ERROR,
                        "continuation without a message",
                    ));
                };
                if v.len() + payload.len() > self.max_message {
                    return Err(violation(code::TOO_BIG, "message too big"));
                }
                v.extend_from_slice(payload);
                if h.fin {
                    let r = deliver(opcode, &v, buf);
                    // Keep a normal-sized buffer for the next fragmented message; give a
                    // large one back.
                    if v.capacity() <= KEEP_CAPACITY_BYTES {
                        self.spare = v;
                    }
                    Step::Deliver(r)
                } else {
                    self.fragments = Some((opcode, v));
                    Step::Again
                }
            }
        };
        self.input.advance(total);
        if self.input.capacity() > KEEP_CAPACITY_BYTES && self.input.len() < INITIAL_BUFFER_BYTES {
            let mut small = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
            small.extend_from_slice(&self.input);
            self.input = small;
        }
        Ok(step)
    }

    /// Closes with `v.code`, best effort, and turns the violation into the call's error.
    async fn fail(&mut self, v: Violation) -> SocketError {
        self.queue_close(v.code, v.reason.as_bytes());
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.flush_output()).await;
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.io.shutdown()).await;
        SocketError::Protocol {
            code: v.code,
            reason: v.reason.to_string(),
        }
    }
}

/// Queued output written at once by [`TwilioSocket::queue`] when it reaches this many bytes
/// (≈ 220 outbound `media` messages of 20 ms, ≈ 300 bytes each framed: 4 s of audio).
pub const QUEUE_FLUSH_BYTES: usize = 64 * 1024;

/// How long a close frame may take to write when hark closes a socket.
const CLOSE_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A complete message: text into `buf`, or its size when it is binary or not UTF-8.
fn deliver(opcode: u8, payload: &[u8], buf: &mut String) -> Recv {
    if opcode == op::TEXT
        && let Ok(s) = std::str::from_utf8(payload)
    {
        buf.clear();
        buf.push_str(s);
        return Recv::Text;
    }
    Recv::Binary(payload.len())
}

fn io_error(e: std::io::Error) -> SocketError {
    SocketError::Io(e.to_string())
}

impl<S: AsyncRead + AsyncWrite + Unpin> TwilioSocket for Socket<S> {
    /// Cancel-safe: see the module docs.
    async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
        loop {
            // Control replies (pongs) queued by an earlier read, or left half-written.
            self.flush_output().await.map_err(io_error)?;
            match self.step(buf) {
                Err(v) => return Err(self.fail(v).await),
                Ok(Step::Deliver(r)) => return Ok(r),
                Ok(Step::Again) => continue,
                Ok(Step::Close) => {
                    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.flush_output()).await;
                    return Ok(Recv::Closed);
                }
                Ok(Step::More(need)) => {
                    self.input.reserve(need.saturating_sub(self.input.len()));
                    let n = self.io.read_buf(&mut self.input).await.map_err(io_error)?;
                    if n == 0 {
                        return Err(SocketError::Io(
                            "connection ended without a close frame".into(),
                        ));
                    }
                }
            }
        }
    }

    async fn send(&mut self, text: &str) -> Result<(), SocketError> {
        self.queue(text).await?;
        self.flush_output().await.map_err(io_error)
    }

    /// Appends the frame to the output buffer; writes only when [`QUEUE_FLUSH_BYTES`] are
    /// waiting (a long burst of audio is not held in memory).
    async fn queue(&mut self, text: &str) -> Result<(), SocketError> {
        if self.close_sent {
            return Err(SocketError::Io("send after close".into()));
        }
        put_frame(&mut self.output, op::TEXT, text.as_bytes());
        if self.output.len() >= QUEUE_FLUSH_BYTES {
            self.flush_output().await.map_err(io_error)?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SocketError> {
        self.flush_output().await.map_err(io_error)
    }

    async fn close(&mut self) {
        self.close_with(code::NORMAL, "").await;
    }

    /// Sends the close frame, then waits (at most [`CLOSE_WRITE_TIMEOUT`] in all) for the
    /// peer's close reply, discarding what comes before it, and only then shuts the connection
    /// down: the server closes the TCP connection after the close handshake (RFC 6455 §7.1.1),
    /// so a peer still sending frames sees a clean close instead of a reset.
    async fn close_with(&mut self, code: u16, reason: &str) {
        self.queue_close(code, reason.as_bytes());
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            self.flush_output().await?;
            let mut discard = String::new();
            loop {
                match self.step(&mut discard) {
                    Ok(Step::Close) | Err(_) => break,
                    Ok(Step::Deliver(_) | Step::Again) => {}
                    Ok(Step::More(need)) => {
                        self.input.reserve(need.saturating_sub(self.input.len()));
                        if self.io.read_buf(&mut self.input).await? == 0 {
                            break;
                        }
                    }
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.io.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client frame (masked with a fixed key), as Twilio writes one.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let n = payload.len();
        if n < 126 {
            out.push(0x80 | n as u8);
        } else if n <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn text(i: usize) -> String {
        format!(
            r#"{{"event":"media","sequenceNumber":"{i}","media":{{"payload":"{}"}}}}"#,
            "A".repeat(216)
        )
    }

    /// Reads one server frame from the client end: (opcode, payload).
    async fn read_server_frame(c: &mut tokio::io::DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        c.read_exact(&mut h).await.expect("header");
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let n = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                c.read_exact(&mut b).await.expect("len");
                usize::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                c.read_exact(&mut b).await.expect("len");
                u64::from_be_bytes(b) as usize
            }
            n => usize::from(n),
        };
        let mut p = vec![0u8; n];
        c.read_exact(&mut p).await.expect("payload");
        (h[0] & 0x0F, p)
    }

    /// Every message arrives whole and in order when the bytes come in pieces of 1–7 bytes,
    /// and the reader is cancelled (a 1 ms timer wins) between and inside them — the way the
    /// driver's `select!` drops a read when a timer fires.
    #[tokio::test]
    async fn reads_survive_split_segments_and_cancellation() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut sock = Socket::new(server);
        let messages: Vec<String> = (0..200).map(text).collect();
        let bytes: Vec<u8> = messages
            .iter()
            .flat_map(|m| client_frame(true, op::TEXT, m.as_bytes()))
            .collect();
        let writer = tokio::spawn(async move {
            let mut rest = &bytes[..];
            let mut k = 0usize;
            while !rest.is_empty() {
                let n = (k % 7 + 1).min(rest.len());
                client.write_all(&rest[..n]).await.expect("write");
                rest = &rest[n..];
                k += 1;
                if k.is_multiple_of(3) {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
            }
            client
        });
        let mut got = Vec::new();
        let mut buf = String::new();
        let mut cancelled = 0;
        while got.len() < messages.len() {
            match tokio::time::timeout(Duration::from_millis(1), sock.recv(&mut buf)).await {
                Err(_) => cancelled += 1,
                Ok(r) => {
                    assert_eq!(r.expect("recv"), Recv::Text);
                    got.push(buf.clone());
                }
            }
        }
        assert_eq!(got, messages);
        assert!(cancelled > 10, "the test must cancel reads ({cancelled})");
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn fragments_are_reassembled_and_capped_with_1009() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut sock = Socket::with_limit(server, 1000);
        let mut bytes = client_frame(false, op::TEXT, b"hel");
        bytes.extend(client_frame(true, op::PING, b"p1"));
        bytes.extend(client_frame(true, op::CONTINUATION, b"lo"));
        // 3 × 400 bytes > 1000: refused.
        for fin in [false, false, true] {
            let opcode = if bytes.len() < 40 && !fin {
                op::BINARY
            } else {
                op::CONTINUATION
            };
            bytes.extend(client_frame(fin, opcode, &[7u8; 400]));
        }
        client.write_all(&bytes).await.expect("write");
        let mut buf = String::new();
        assert_eq!(sock.recv(&mut buf).await.expect("recv"), Recv::Text);
        assert_eq!(buf, "hello");
        // The ping was answered with its payload.
        assert_eq!(
            read_server_frame(&mut client).await,
            (op::PONG, b"p1".to_vec())
        );
        let e = sock.recv(&mut buf).await.expect_err("too big");
        assert!(
            matches!(e, SocketError::Protocol { code: 1009, .. }),
            "{e:?}"
        );
        let (opcode, payload) = read_server_frame(&mut client).await;
        assert_eq!(opcode, op::CLOSE);
        assert_eq!(&payload[..2], &1009u16.to_be_bytes());
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_it_is_buffered() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut sock = Socket::with_limit(server, 1000);
        // Only the header of a 1 GB frame.
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&(1u64 << 30).to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        client.write_all(&h).await.expect("write");
        let mut buf = String::new();
        let e = sock.recv(&mut buf).await.expect_err("too big");
        assert!(matches!(e, SocketError::Protocol { code: 1009, .. }));
        assert!(sock.buffered_capacity() < 64 * 1024);
    }

    #[tokio::test]
    async fn a_large_message_s_buffers_are_given_back() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut sock = Socket::new(server);
        let big = "x".repeat(900 * 1024);
        let (a, b) = big.as_bytes().split_at(450 * 1024);
        let mut bytes = client_frame(false, op::TEXT, a);
        bytes.extend(client_frame(true, op::CONTINUATION, b));
        bytes.extend(client_frame(true, op::TEXT, b"after"));
        let w = tokio::spawn(async move {
            client.write_all(&bytes).await.expect("write");
            client
        });
        let mut buf = String::new();
        assert_eq!(sock.recv(&mut buf).await.expect("recv"), Recv::Text);
        assert_eq!(buf.len(), big.len());
        assert_eq!(sock.recv(&mut buf).await.expect("recv"), Recv::Text);
        assert_eq!(buf, "after");
        assert!(
            sock.buffered_capacity() <= 3 * KEEP_CAPACITY_BYTES,
            "{} bytes still held",
            sock.buffered_capacity()
        );
        drop(w.await.expect("writer"));
    }

    #[tokio::test]
    async fn protocol_violations_close_with_1002() {
        for bad in [
            vec![0x81, 0x02, b'h', b'i'],               // unmasked
            client_frame(true, 0x3, b"x"),              // reserved opcode
            client_frame(true, op::CONTINUATION, b"x"), // continuation without a start
            client_frame(false, op::PING, b"x"),        // fragmented control frame
            [&[0xC1u8][..], &client_frame(true, op::TEXT, b"x")[1..]].concat(), // RSV1
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let mut sock = Socket::new(server);
            client.write_all(&bad).await.expect("write");
            let mut buf = String::new();
            let e = sock.recv(&mut buf).await.expect_err("violation");
            assert!(
                matches!(e, SocketError::Protocol { code: 1002, .. }),
                "{bad:?}: {e:?}"
            );
            let (opcode, payload) = read_server_frame(&mut client).await;
            assert_eq!(opcode, op::CLOSE);
            assert_eq!(&payload[..2], &1002u16.to_be_bytes());
        }
    }

    #[tokio::test]
    async fn close_is_echoed_and_sends_are_framed() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut sock = Socket::new(server);
        sock.send(&"y".repeat(300)).await.expect("send");
        let (opcode, payload) = read_server_frame(&mut client).await;
        assert_eq!((opcode, payload.len()), (op::TEXT, 300));
        client
            .write_all(&client_frame(true, op::CLOSE, &1000u16.to_be_bytes()))
            .await
            .expect("write");
        let mut buf = String::new();
        assert_eq!(sock.recv(&mut buf).await.expect("recv"), Recv::Closed);
        let (opcode, payload) = read_server_frame(&mut client).await;
        assert_eq!(
            (opcode, payload),
            (op::CLOSE, 1000u16.to_be_bytes().to_vec())
        );
    }

    /// A stream that counts the writes it is given.
    struct CountWrites {
        inner: tokio::io::DuplexStream,
        writes: usize,
    }

    impl AsyncRead for CountWrites {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountWrites {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes += 1;
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn queued_frames_leave_in_one_write_at_the_flush() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut sock = Socket::new(CountWrites {
            inner: server,
            writes: 0,
        });
        for i in 0..10 {
            sock.queue(&text(i)).await.expect("queue");
        }
        assert_eq!(sock.io.writes, 0, "nothing written before the flush");
        sock.flush().await.expect("flush");
        assert_eq!(sock.io.writes, 1, "ten frames, one write");
        for i in 0..10 {
            let (opcode, payload) = read_server_frame(&mut client).await;
            assert_eq!((opcode, payload), (op::TEXT, text(i).into_bytes()));
        }
        // A long burst is not held in memory: it is written as it reaches the bound.
        let frame_bytes = text(0).len() + 4;
        let n = QUEUE_FLUSH_BYTES / frame_bytes + 2;
        let reader = tokio::spawn(async move {
            for _ in 0..n {
                read_server_frame(&mut client).await;
            }
        });
        for i in 0..n {
            sock.queue(&text(i)).await.expect("queue");
        }
        assert_eq!(sock.io.writes, 2, "one write at the bound");
        assert!(sock.output.len() < QUEUE_FLUSH_BYTES);
        sock.flush().await.expect("flush");
        reader.await.expect("every frame arrived");
    }

    #[test]
    fn unmask_matches_the_bytewise_definition() {
        let mask = [1, 2, 3, 250];
        for n in 0..40 {
            let data: Vec<u8> = (0..n as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
    }
}
