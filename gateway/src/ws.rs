//! The Twilio socket on top of fastwebsockets, as the engine's driver wants it.
//!
//! Twilio sends JSON text frames (`shared/reference/twilio.md` §1.1). Pings are answered and
//! close frames acknowledged by fastwebsockets itself; fragmented messages are reassembled.

use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use hark_engine::io::{Recv, SocketError, TwilioSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

/// The upgraded connection type of a `/media-stream` request.
pub type UpgradedSocket = fastwebsockets::WebSocket<TokioIo<Upgraded>>;

/// Largest message accepted from Twilio (bytes). Larger ones end the connection; anything up to
/// this reaches the engine, which counts messages over its own limit (64 KiB) and goes on.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// A Twilio Media Streams socket.
pub struct Socket {
    ws: FragmentCollector<TokioIo<Upgraded>>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Socket")
    }
}

impl Socket {
    /// Wraps an upgraded connection.
    pub fn new(mut ws: UpgradedSocket) -> Self {
        ws.set_auto_pong(true);
        ws.set_auto_close(true);
        ws.set_writev(false);
        ws.set_max_message_size(MAX_MESSAGE_BYTES);
        Socket {
            ws: FragmentCollector::new(ws),
        }
    }
}

impl TwilioSocket for Socket {
    async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
        loop {
            let frame = self
                .ws
                .read_frame()
                .await
                .map_err(|e| SocketError::Io(e.to_string()))?;
            match frame.opcode {
                OpCode::Text => {
                    buf.clear();
                    match std::str::from_utf8(&frame.payload) {
                        Ok(s) => buf.push_str(s),
                        Err(_) => return Ok(Recv::Binary(frame.payload.len())),
                    }
                    return Ok(Recv::Text);
                }
                OpCode::Binary => return Ok(Recv::Binary(frame.payload.len())),
                OpCode::Close => return Ok(Recv::Closed),
                _ => continue,
            }
        }
    }

    async fn send(&mut self, text: &str) -> Result<(), SocketError> {
        self.ws
            .write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
            .await
            .map_err(|e| SocketError::Io(e.to_string()))
    }

    async fn close(&mut self) {
        let _ = self.ws.write_frame(Frame::close(1000, b"")).await;
    }
}
