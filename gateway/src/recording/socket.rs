//! [`RecordingSocket`]: the Twilio socket of a call, with its audio copied to a [`Tape`] when
//! the call is recorded.
//!
//! It sits between the engine's driver and the WebSocket, so the engine and its per-frame path
//! are untouched: with recording off for the call (decided at `start`) each message costs one
//! branch. Recorded, each inbound message is parsed once more (the engine parses its own
//! copy) and each outbound `media` has its base64 payload decoded once more; the audio is
//! kept in memory (8 bytes per ms per channel) and written when the call has ended.

use std::time::Instant;

use hark_engine::io::{Recv, SocketError, TwilioSocket};
use hark_engine::twilio::{self, Inbound, Outbound, Track};

use super::tape::Tape;

/// Whether to record, until the stream's `start` decides.
#[derive(Debug)]
enum Tap {
    /// Before `start`: `true` records unless the call's `hark_record` says otherwise.
    Undecided(bool),
    Off,
    On(Box<Recorded>),
}

/// A recorded call's tape and the stream it belongs to.
#[derive(Debug)]
pub struct Recorded {
    /// The audio.
    pub tape: Tape,
    /// `start.callSid`, as Twilio sent it.
    pub call_sid: String,
    /// `start.streamSid`.
    pub stream_sid: String,
}

/// A [`TwilioSocket`] that records the call's audio (see the module docs).
#[derive(Debug)]
pub struct RecordingSocket<S> {
    inner: S,
    tap: Tap,
    max_ms: u64,
    /// Decoded payloads (reused).
    scratch: Vec<u8>,
}

impl<S> RecordingSocket<S> {
    /// Wraps `inner`. `record` is the server's default (`HARK_RECORD`), which a call's
    /// `<Parameter name="hark_record" value="1|0"/>` overrides; at most `max_ms` of audio is
    /// kept.
    pub fn new(inner: S, record: bool, max_ms: u64) -> Self {
        RecordingSocket {
            inner,
            tap: Tap::Undecided(record),
            max_ms,
            scratch: Vec::with_capacity(320),
        }
    }

    /// The recording, when the call was recorded (after it ended).
    pub fn take(&mut self) -> Option<Recorded> {
        match std::mem::replace(&mut self.tap, Tap::Off) {
            Tap::On(r) => Some(*r),
            _ => None,
        }
    }

    fn inbound(&mut self, at: Instant, text: &str) {
        let Ok(parsed) = twilio::parse(text) else {
            return;
        };
        match (&mut self.tap, parsed.message) {
            (Tap::Undecided(default), Inbound::Start(start)) => {
                let record = start
                    .custom_parameters
                    .iter()
                    .rev()
                    .find(|(n, _)| n == "hark_record")
                    .and_then(|(_, v)| hark_engine::config::parse_switch(v))
                    .unwrap_or(*default);
                self.tap = if record {
                    let mut tape = Tape::new(self.max_ms);
                    tape.start(at);
                    Tap::On(Box::new(Recorded {
                        tape,
                        call_sid: start.call_sid,
                        stream_sid: start.stream_sid,
                    }))
                } else {
                    Tap::Off
                };
            }
            (Tap::On(r), Inbound::Media(m)) if m.track == Track::Inbound => {
                self.scratch.clear();
                if twilio::decode_payload(&m.payload, &mut self.scratch).is_ok() {
                    r.tape.caller(at, m.timestamp_ms, &self.scratch);
                }
            }
            (Tap::On(r), Inbound::Mark { name }) => r.tape.echo(at, &name),
            (Tap::On(r), Inbound::Stop) => r.tape.stop(at),
            _ => {}
        }
    }

    fn outbound(&mut self, at: Instant, text: &str) {
        let Tap::On(r) = &mut self.tap else {
            return;
        };
        // hark's own encoding (`twilio::encode_media`): the payload is the last string.
        if text.starts_with("{\"event\":\"media\"") {
            let payload = text
                .rsplit_once(":\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(p, _)| p);
            self.scratch.clear();
            if let Some(p) = payload
                && twilio::decode_payload(p, &mut self.scratch).is_ok()
            {
                r.tape.agent(at, &self.scratch);
            }
            return;
        }
        match twilio::parse_outbound(text) {
            Ok(Outbound::Mark { name, .. }) => r.tape.mark(&name),
            Ok(Outbound::Clear { .. }) => r.tape.clear(at),
            _ => {}
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<S: TwilioSocket> TwilioSocket for RecordingSocket<S> {
    /// Cancel-safe as `inner` is: the copy is taken after a frame is complete, in the same
    /// poll.
    async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
        let r = self.inner.recv(buf).await;
        if matches!(r, Ok(Recv::Text)) && !matches!(self.tap, Tap::Off) {
            self.inbound(now(), buf);
        }
        r
    }

    async fn send(&mut self, text: &str) -> Result<(), SocketError> {
        if matches!(self.tap, Tap::On(_)) {
            self.outbound(now(), text);
        }
        self.inner.send(text).await
    }

    async fn queue(&mut self, text: &str) -> Result<(), SocketError> {
        if matches!(self.tap, Tap::On(_)) {
            self.outbound(now(), text);
        }
        self.inner.queue(text).await
    }

    async fn flush(&mut self) -> Result<(), SocketError> {
        self.inner.flush().await
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }

    async fn close_with(&mut self, code: u16, reason: &str) {
        self.inner.close_with(code, reason).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hark_engine::twilio::{Start, encode_clear, encode_mark, encode_media, inbound};

    /// A socket that hands out scripted frames and keeps what is sent.
    struct Script {
        frames: std::collections::VecDeque<String>,
        sent: Vec<String>,
    }

    impl TwilioSocket for Script {
        async fn recv(&mut self, buf: &mut String) -> Result<Recv, SocketError> {
            match self.frames.pop_front() {
                Some(f) => {
                    buf.clear();
                    buf.push_str(&f);
                    Ok(Recv::Text)
                }
                None => Ok(Recv::Closed),
            }
        }
        async fn send(&mut self, text: &str) -> Result<(), SocketError> {
            self.sent.push(text.to_owned());
            Ok(())
        }
        async fn close(&mut self) {}
    }

    fn start(params: &[(&str, &str)]) -> Start {
        Start {
            stream_sid: "MZ1".into(),
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            tracks: vec!["inbound".into()],
            custom_parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        }
    }

    async fn run(default: bool, params: &[(&str, &str)]) -> Option<Recorded> {
        let mut media = String::new();
        inbound::media(2, "MZ1", 1, 0, &[5; 160], &mut media);
        let frames = vec![
            inbound::connected(),
            inbound::start(1, &start(params)),
            media,
        ];
        let mut s = RecordingSocket::new(
            Script {
                frames: frames.into(),
                sent: vec![],
            },
            default,
            60_000,
        );
        let mut buf = String::new();
        while s.recv(&mut buf).await.expect("recv") == Recv::Text {}
        let mut out = String::new();
        encode_media("MZ1", &[9; 160], &mut out);
        s.send(&out).await.expect("send");
        encode_mark("MZ1", "hark-1", &mut out);
        s.send(&out).await.expect("send");
        encode_clear("MZ1", &mut out);
        s.send(&out).await.expect("send");
        assert_eq!(s.inner.sent.len(), 3, "everything goes through");
        s.take()
    }

    #[tokio::test]
    async fn records_as_the_server_or_the_call_says() {
        let r = run(true, &[]).await.expect("recorded by default");
        assert_eq!((r.call_sid.as_str(), r.stream_sid.as_str()), ("CA1", "MZ1"));
        let s = r.tape.finish(now());
        assert!(
            s.caller[..160].iter().all(|&b| b == 5),
            "{:?}",
            &s.caller[..8]
        );
        assert!(run(true, &[("hark_record", "0")]).await.is_none());
        assert!(run(false, &[]).await.is_none());
        assert!(run(false, &[("hark_record", "on")]).await.is_some());
        // A bad value leaves the server's default.
        assert!(run(false, &[("hark_record", "maybe")]).await.is_none());
    }
}
