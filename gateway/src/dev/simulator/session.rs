//! One simulated call on the socket ([`run_call`]): the upgrade, `connected` and `start`, one
//! inbound frame per 20 ms on an absolute schedule, the virtual phone fed with every text frame
//! from the server (its mark echoes sent back), `stop`, and the closing handshake.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Sink, StreamExt};
use hark_engine::sim::{Phone, Received};
use hark_engine::twilio::{self, Start};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::args::check_speed;
use super::caller::{FrameSource, UserSpeech};
use super::dial::{check_url, signed_url};
use super::report::{Report, barge_in, match_turns};
use super::{CallSetup, FRAME_BYTES, FRAME_MS, MAX_ERRORS, SimError};
use crate::signature;

/// How long to keep reading for the server's close reply after hark call closed.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// Added to timer deadlines so a conversion between real and media time never wakes the loop
/// a hair before an echo is due (the phone counts audio in 125 µs bytes).
const WAKE_SLACK: Duration = Duration::from_micros(50);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Plays one call against `cfg.url` as Twilio would (see the module docs of
/// [`crate::simulator`]) and reports what the virtual phone measured. One task per call: it
/// reads and writes the socket itself.
///
/// # Errors
/// [`SimError::Invalid`] for a bad URL or speed, [`SimError::Connect`] or
/// [`SimError::ConnectTimeout`] if no WebSocket could be opened. Anything that goes wrong once
/// connected is reported in [`Report::errors`].
pub async fn run_call(cfg: CallSetup) -> Result<Report, SimError> {
    check_url(&cfg.url)?;
    check_speed(cfg.speed).map_err(SimError::Invalid)?;
    let speech = match cfg.speech.clone() {
        Some(s) => s,
        None => UserSpeech::detect(&cfg.audio, cfg.tail_ms),
    };
    let connect_err = |e: tungstenite::Error| {
        let answer = match &e {
            tungstenite::Error::Http(resp) => resp
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .trim()
                        .chars()
                        .take(300)
                        .collect()
                })
                .filter(|b: &String| !b.is_empty())
                .map(|b| format!(": {b}"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        SimError::Connect {
            url: cfg.url.clone(),
            source: Box::new(e),
            answer,
        }
    };
    let mut request = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(connect_err)?;
    if let Some(token) = &cfg.auth_token {
        let url = signed_url(&cfg.url, cfg.public_url.as_deref())?;
        let sig = signature::compute(token, &url, &[] as &[(String, String)]);
        let value = HeaderValue::from_str(&sig)
            .map_err(|e| connect_err(tungstenite::Error::HttpFormat(e.into())))?;
        request.headers_mut().insert(signature::HEADER, value);
    }
    // A 4 KiB read buffer: tungstenite zero-fills its whole read buffer before every read, which
    // costs 10 µs per message at the default 128 KiB (`reference/crates.md`).
    let ws_config = WebSocketConfig::default().read_buffer_size(4096);
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
    let (ws, _response) = tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| SimError::ConnectTimeout {
            url: cfg.url.clone(),
            after: cfg.connect_timeout,
        })?
        .map_err(connect_err)?;
    Ok(Session::new(&cfg, speech).run(ws).await)
}

/// Whether a write error is only the socket being closed already (not worth reporting: the
/// close itself is reported from the read side).
fn closed_already(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing)
    )
}

/// What woke the call's loop ([`Session::poll_io`]).
enum Io {
    /// A message (or the end, or an error) from the socket.
    Item(Option<Result<Message, tungstenite::Error>>),
    /// Queued messages were handed to the socket, or a flush completed.
    Wrote,
    /// Writing failed: the socket is unusable.
    WriteFailed(tungstenite::Error),
    /// The loop's deadline ([`Session::wake`]) passed.
    Timer,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StopState {
    NotYet,
    Queued,
    Sent(Instant),
}

/// A message waiting to be written.
enum Out {
    /// `connected` or `start`.
    Control(String),
    /// An inbound `media` frame.
    Frame(String),
    /// A mark echo.
    Mark(String),
    /// `stop`.
    Stop(String),
}

impl Out {
    fn into_text(self) -> String {
        let (Out::Control(t) | Out::Frame(t) | Out::Mark(t) | Out::Stop(t)) = self;
        t
    }
}

/// One call's logic: schedule, phone, counters.
struct Session {
    speed: f64,
    close_timeout: Duration,
    keep_heard: bool,
    start: Start,
    speech: UserSpeech,
    t0: Instant,
    phone: Phone,
    frames: FrameSource<Arc<[u8]>>,
    frame: [u8; FRAME_BYTES],
    queued_frames: u64,
    sent_frames: u64,
    seq: u64,
    outq: VecDeque<Out>,
    stop: StopState,
    /// Media time frozen at `stop` (or when the server closed): the phone plays no further.
    frozen: Option<Instant>,
    marks_echoed: u64,
    clears_ms: Vec<u64>,
    errors: Vec<String>,
    errors_dropped: usize,
    /// The server closed (or the connection was lost): nothing more is sent.
    server_closed: bool,
    /// Real time of the server's Close frame, to bound the wait for the TCP close.
    closed_at: Option<Instant>,
    /// Writing failed: nothing more is written.
    write_failed: bool,
    /// Messages were handed to the socket since its last completed flush.
    unflushed: bool,
    /// Real time writing last made progress: a message handed to the socket or a flush
    /// completed (or the session started).
    last_handed: Instant,
    late_frames: u64,
    max_late_us: u64,
}

impl Session {
    fn new(cfg: &CallSetup, speech: UserSpeech) -> Self {
        let t0 = Instant::now();
        Session {
            speed: cfg.speed,
            close_timeout: cfg.close_timeout,
            keep_heard: cfg.keep_heard,
            start: cfg.start.clone(),
            speech,
            t0,
            phone: Phone::new(&cfg.start.stream_sid, t0).keep_heard(cfg.keep_heard),
            frames: FrameSource::new(cfg.audio.clone(), cfg.tail_ms),
            frame: [0; FRAME_BYTES],
            queued_frames: 0,
            sent_frames: 0,
            seq: 0,
            outq: VecDeque::with_capacity(4),
            stop: StopState::NotYet,
            frozen: None,
            marks_echoed: 0,
            clears_ms: Vec::new(),
            errors: Vec::new(),
            errors_dropped: 0,
            server_closed: false,
            closed_at: None,
            write_failed: false,
            unflushed: false,
            last_handed: t0,
            late_frames: 0,
            max_late_us: 0,
        }
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        } else {
            self.errors_dropped += 1;
        }
    }

    /// The phone's clock for real time `real`, in whole ms of media time. Whole ms keep the
    /// phone's playback on byte boundaries that are multiples of 8 (it counts played ms per
    /// `advance` call, rounding down), so audio durations come out exact.
    fn vnow(&self, real: Instant) -> Instant {
        if let Some(f) = self.frozen {
            f
        } else if self.speed == 0.0 {
            self.t0 + Duration::from_millis(FRAME_MS * self.sent_frames)
        } else {
            let media = real.saturating_duration_since(self.t0).mul_f64(self.speed);
            self.t0 + Duration::from_millis(media.as_millis() as u64)
        }
    }

    /// Real time at which the phone's clock reaches `v`, rounded up to a whole ms (speed > 0).
    fn real_at(&self, v: Instant) -> Instant {
        let ms = v
            .saturating_duration_since(self.t0)
            .as_micros()
            .div_ceil(1000) as u64;
        self.t0 + Duration::from_millis(ms).div_f64(self.speed) + WAKE_SLACK
    }

    /// Real time at which frame `k` is due: its audio has been "recorded" (speed > 0).
    fn frame_due(&self, k: u64) -> Instant {
        self.t0 + Duration::from_millis(FRAME_MS * (k + 1)).div_f64(self.speed) + WAKE_SLACK
    }

    fn media_ms_now(&self) -> u64 {
        self.phone.media_ms(self.vnow(Instant::now()))
    }

    fn queue_frame(&mut self) {
        let k = self.queued_frames;
        self.frames.fill(k, &mut self.frame);
        self.seq += 1;
        let mut text = String::with_capacity(320);
        twilio::inbound::media(
            self.seq,
            &self.start.stream_sid,
            k + 1,
            k * FRAME_MS,
            &self.frame,
            &mut text,
        );
        self.outq.push_back(Out::Frame(text));
        self.queued_frames += 1;
    }

    fn queue_echoes(&mut self) {
        for name in self.phone.take_echoes() {
            self.seq += 1;
            let text = twilio::inbound::mark(self.seq, &self.start.stream_sid, &name);
            self.outq.push_back(Out::Mark(text));
        }
    }

    /// Queues what is due at `real`: frames, mark echoes, and `stop` after the last frame.
    fn schedule(&mut self, real: Instant) {
        if self.stop != StopState::NotYet || self.server_closed {
            return;
        }
        let total = self.frames.count();
        if self.speed > 0.0 {
            while self.queued_frames < total && self.frame_due(self.queued_frames) <= real {
                self.queue_frame();
            }
        } else if self.queued_frames < total && self.queued_frames == self.sent_frames {
            self.queue_frame();
        }
        let v = self.vnow(real);
        self.phone.advance(v);
        self.queue_echoes();
        if self.sent_frames == total {
            self.frozen = Some(v);
            self.seq += 1;
            self.outq.push_back(Out::Stop(twilio::inbound::stop(
                self.seq,
                &self.start.stream_sid,
                &self.start.account_sid,
                &self.start.call_sid,
            )));
            self.stop = StopState::Queued;
        }
    }

    /// When the loop must wake next (real time), besides socket activity.
    fn wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let StopState::Sent(sent) = self.stop {
            at(sent + self.close_timeout);
        }
        if let Some(closed) = self.closed_at {
            at(closed + self.close_timeout);
        }
        if self.writing() {
            at(self.last_handed + self.close_timeout);
        }
        if self.stop == StopState::NotYet && !self.server_closed && self.speed > 0.0 {
            if self.queued_frames < self.frames.count() {
                at(self.frame_due(self.queued_frames));
            }
            if let Some(v) = self.phone.next_echo_at() {
                at(self.real_at(v));
            }
        }
        wake
    }

    /// Output is waiting: queued messages, or handed ones not yet flushed.
    fn writing(&self) -> bool {
        !self.write_failed && (!self.outq.is_empty() || self.unflushed)
    }

    /// A message was handed to the socket.
    fn handed(&mut self, out: &Out) {
        self.last_handed = Instant::now();
        match out {
            Out::Frame(_) => {
                if self.speed > 0.0 {
                    let late = self
                        .last_handed
                        .saturating_duration_since(self.frame_due(self.sent_frames));
                    if late > Duration::from_millis(FRAME_MS) {
                        self.late_frames += 1;
                    }
                    self.max_late_us = self.max_late_us.max(late.as_micros() as u64);
                }
                self.sent_frames += 1;
            }
            Out::Mark(_) => self.marks_echoed += 1,
            Out::Stop(_) => self.stop = StopState::Sent(Instant::now()),
            Out::Control(_) => {}
        }
    }

    fn on_text(&mut self, text: &str) {
        let v = self.vnow(Instant::now());
        if let Received::Clear(_) = self.phone.receive(v, text) {
            self.clears_ms.push(self.phone.media_ms(v));
        }
        if self.stop == StopState::NotYet && !self.server_closed {
            self.queue_echoes();
        } else {
            // After `stop` Twilio sends nothing more.
            self.phone.take_echoes();
        }
    }

    /// Handles one item from the socket; returns `true` when the socket is done.
    fn on_socket(&mut self, item: Option<Result<Message, tungstenite::Error>>) -> bool {
        let stop_sent = matches!(self.stop, StopState::Sent(_));
        match item {
            Some(Ok(Message::Text(t))) => {
                self.on_text(t.as_str());
                false
            }
            Some(Ok(Message::Binary(b))) => {
                let ms = self.media_ms_now();
                self.error(format!(
                    "{ms} ms: binary frame of {} bytes from the server; Twilio takes only JSON text frames (warning 31950)",
                    b.len()
                ));
                false
            }
            Some(Ok(Message::Close(frame))) => {
                if !self.server_closed && !stop_sent {
                    let ms = self.media_ms_now();
                    let how = frame.map_or_else(
                        || "no code".to_string(),
                        |f| format!("code {} {:?}", u16::from(f.code), f.reason.as_str()),
                    );
                    self.error(format!(
                        "{ms} ms: the server closed the WebSocket ({how}) before stop, after {} of {} frames",
                        self.sent_frames,
                        self.frames.count()
                    ));
                }
                if self.frozen.is_none() {
                    self.frozen = Some(self.vnow(Instant::now()));
                }
                self.server_closed = true;
                self.closed_at.get_or_insert_with(Instant::now);
                self.outq.clear();
                false
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => false,
            Some(Err(e)) => {
                let ms = self.media_ms_now();
                self.error(format!("{ms} ms: WebSocket error: {e}"));
                self.lost();
                true
            }
            None => {
                if !self.server_closed {
                    let ms = self.media_ms_now();
                    let when = if stop_sent { "after" } else { "before" };
                    self.error(format!(
                        "{ms} ms: the connection ended without a close frame, {when} stop"
                    ));
                }
                self.lost();
                true
            }
        }
    }

    fn lost(&mut self) {
        if self.frozen.is_none() {
            self.frozen = Some(self.vnow(Instant::now()));
        }
        self.server_closed = true;
        self.outq.clear();
    }

    /// Writes what is queued and waits for the next thing to do, in one poll: every queued
    /// message is handed to the socket and flushed with one write (a frame and the mark echoes
    /// due with it leave together), then the socket is read, then the deadline checked. No new
    /// message is handed while a flush is pending, so a server that stops reading holds the
    /// queue (and [`Session::run`] reports it after `close_timeout`).
    fn poll_io(&mut self, ws: &mut Ws, sleep: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<Io> {
        let mut wrote = false;
        if !self.write_failed {
            if !self.unflushed {
                while !self.outq.is_empty() {
                    match Pin::new(&mut *ws).poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e)),
                        Poll::Pending => break,
                    }
                    let Some(out) = self.outq.pop_front() else {
                        break;
                    };
                    self.handed(&out);
                    if let Err(e) = Pin::new(&mut *ws).start_send(Message::text(out.into_text())) {
                        return Poll::Ready(Io::WriteFailed(e));
                    }
                    self.unflushed = true;
                    wrote = true;
                }
            }
            if self.unflushed {
                match Pin::new(&mut *ws).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        self.last_handed = Instant::now();
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Io::WriteFailed(e)),
                    Poll::Pending => {}
                }
            }
        }
        if let Poll::Ready(item) = ws.poll_next_unpin(cx) {
            return Poll::Ready(Io::Item(item));
        }
        if wrote {
            return Poll::Ready(Io::Wrote);
        }
        if sleep.poll(cx).is_ready() {
            return Poll::Ready(Io::Timer);
        }
        Poll::Pending
    }

    async fn run(mut self, mut ws: Ws) -> Report {
        self.outq
            .push_back(Out::Control(twilio::inbound::connected()));
        self.seq = 1;
        self.outq
            .push_back(Out::Control(twilio::inbound::start(1, &self.start)));
        // One timer for the whole call, moved to each new deadline (a new `Sleep` per loop turn
        // registers and drops a timer entry every time).
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        // The deadline `sleep` is set to; `None`: parked far ahead.
        let mut armed: Option<Instant> = None;
        let mut done = false;
        loop {
            let real = Instant::now();
            self.schedule(real);
            if let StopState::Sent(sent) = self.stop
                && real >= sent + self.close_timeout
                && !self.server_closed
            {
                self.error(format!(
                    "the server did not close the WebSocket within {:?} of stop",
                    self.close_timeout
                ));
                break;
            }
            if let Some(closed) = self.closed_at
                && real >= closed + self.close_timeout
            {
                self.error(format!(
                    "the server sent a Close frame but kept the connection open for {:?}",
                    self.close_timeout
                ));
                done = true;
                break;
            }
            if self.writing() && real >= self.last_handed + self.close_timeout {
                let ms = self.media_ms_now();
                self.error(format!(
                    "{ms} ms: the server stopped reading: nothing could be sent for {:?}",
                    self.close_timeout
                ));
                self.lost();
                break;
            }
            let wake = self.wake();
            if wake != armed {
                armed = wake;
                let at = wake.map_or_else(far, tokio::time::Instant::from_std);
                sleep.as_mut().reset(at);
            }
            match poll_fn(|cx| self.poll_io(&mut ws, sleep.as_mut(), cx)).await {
                Io::Item(item) => {
                    if self.on_socket(item) {
                        done = true;
                        break;
                    }
                }
                Io::WriteFailed(e) => {
                    if !closed_already(&e) {
                        self.error(format!("sending to the server: {e}"));
                    }
                    self.write_failed = true;
                    // After the server's Close frame, reading goes on to the TCP close (and its
                    // timeout); otherwise the connection is lost.
                    if !self.server_closed {
                        self.lost();
                        break;
                    }
                }
                Io::Wrote => {}
                Io::Timer => {
                    // An elapsed `Sleep` stays ready: park it until the next deadline is set.
                    armed = None;
                    sleep.as_mut().reset(far());
                }
            }
        }
        if done {
            // The server closed: complete our side of the handshake if the socket still takes it.
            let _ = tokio::time::timeout(CLOSE_DRAIN, ws.close(None)).await;
        } else {
            // We close: send a Close frame (unless the socket is unusable), then read until the
            // server's reply (bounded).
            if !self.server_closed && !self.write_failed {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                };
                if let Ok(Err(e)) = tokio::time::timeout(CLOSE_DRAIN, ws.close(Some(close))).await
                    && !closed_already(&e)
                {
                    self.error(format!("sending to the server: {e}"));
                }
            }
            let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                while let Some(item) = ws.next().await {
                    if let Ok(Message::Text(t)) = item {
                        self.on_text(t.as_str());
                    }
                }
            })
            .await;
        }
        self.finish()
    }

    fn finish(mut self) -> Report {
        let end = self.frozen.unwrap_or_else(|| self.vnow(Instant::now()));
        let duration_ms = self.phone.media_ms(end);
        let stats = self.phone.stats().clone();
        for e in &stats.errors {
            self.error(format!("invalid message from the server: {e}"));
        }
        if self.errors_dropped > 0 {
            self.errors
                .push(format!("… and {} more errors", self.errors_dropped));
        }
        let spans = &self.speech.spans;
        let heard = self.keep_heard.then(|| {
            let mut h = self.phone.heard().to_vec();
            let len = (duration_ms as usize).saturating_mul(8);
            if h.len() < len {
                h.resize(len, 0xFF);
            }
            h
        });
        Report {
            stream_sid: self.start.stream_sid.clone(),
            call_sid: self.start.call_sid.clone(),
            turn_source: self.speech.source,
            turns: match_turns(spans, self.phone.bursts()),
            barge_ins: self.clears_ms.iter().map(|&c| barge_in(spans, c)).collect(),
            clears: stats.clears,
            marks_sent: stats.marks,
            marks_echoed: self.marks_echoed,
            inbound_frames: self.sent_frames,
            outbound_frames: stats.media,
            outbound_audio_ms: stats.audio_ms,
            cleared_ms: stats.cleared_ms,
            bursts: self.phone.bursts().len() as u64,
            heard_audio_ms: self.phone.bursts().iter().map(|b| b.audio_ms).sum(),
            duration_ms,
            underruns: stats.underruns,
            underrun_ms: stats.underrun_us.div_ceil(1000),
            late_frames: self.late_frames,
            max_late_us: self.max_late_us,
            errors: self.errors,
            heard,
        }
    }
}
