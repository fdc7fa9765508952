//! A model of Twilio's side of a bidirectional Media Stream, sans-IO: the "virtual phone" used by
//! `hark call`, `hark bench` and the engine's tests.
//!
//! It behaves as Twilio documents (twilio.com/docs/voice/media-streams/websocket-messages;
//! `shared/reference/twilio.md` §1.3–1.4): outbound `media` is queued and played in order at
//! real-time rate (8 bytes per ms); a `mark` is echoed once all audio queued before it has played
//! (at once when nothing is queued); `clear` drops all queued audio and echoes every pending mark.
//! Every message from hark is checked with [`crate::twilio::parse_outbound`] (exactly Twilio's
//! fields) and against the stream's `streamSid`; violations are collected as errors, as Twilio
//! would log warning 31951.
//!
//! Time is passed in: [`Phone::advance`] plays audio up to a given `Instant`, so the same model
//! runs in virtual time (tests) and in real time (the simulator).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::twilio::{Outbound, parse_outbound};

const BYTE: Duration = Duration::from_micros(125);

enum Item {
    Audio { bytes: Vec<u8>, offset: usize },
    Mark(String),
}

/// A burst of agent audio as heard at the phone: contiguous playback, ended by a pause of more
/// than [`Phone::BURST_GAP`] or by a `clear`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// Media time (ms since the phone's `t0`) when the caller started hearing it.
    pub start_ms: u64,
    /// Audio of it played, ms.
    pub audio_ms: u64,
    /// Whether a `clear` cut it short (audio was still queued).
    pub interrupted: bool,
}

/// Totals and findings of the phone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhoneStats {
    /// `media` messages received.
    pub media: u64,
    /// Audio received, ms.
    pub audio_ms: u64,
    /// `mark` messages received.
    pub marks: u64,
    /// Marks echoed back.
    pub marks_echoed: u64,
    /// `clear` messages received.
    pub clears: u64,
    /// Audio dropped by `clear`, ms.
    pub cleared_ms: u64,
    /// Playout underruns: agent audio arrived after everything queued before it had played,
    /// at most [`Phone::BURST_GAP`] later, in a burst no `clear` had cut (a gap inside an
    /// answer, heard as a dropout). Longer gaps start a new [`Burst`] instead.
    pub underruns: u64,
    /// Silence heard in those gaps, µs.
    pub underrun_us: u64,
    /// Invalid messages (wrong shape, bad base64, wrong `streamSid`).
    pub errors: Vec<String>,
}

/// What the phone answers to one message from hark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A `media` message, with its payload length in bytes.
    Media(usize),
    /// A `mark` message.
    Mark(String),
    /// A `clear`, with the names of the marks it resolved (echoed at once).
    Clear(Vec<String>),
    /// An invalid message (also recorded in [`PhoneStats::errors`]).
    Invalid(String),
}

/// The virtual phone. See the module docs.
pub struct Phone {
    stream_sid: String,
    t0: Instant,
    queue: VecDeque<Item>,
    /// Playback position: everything before it has played.
    cursor: Instant,
    /// Everything played, μ-law 8 kHz, placed at its media time (silence = 0xFF).
    heard: Vec<u8>,
    echoes: Vec<String>,
    bursts: Vec<Burst>,
    last_play_end: Option<Instant>,
    /// Bytes played in the current burst (ms are derived, so no rounding is lost per call).
    burst_bytes: u64,
    keep_heard: bool,
    stats: PhoneStats,
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Phone")
            .field("stream_sid", &self.stream_sid)
            .field("queued_items", &self.queue.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Phone {
    /// Pauses in playback longer than this start a new [`Burst`].
    pub const BURST_GAP: Duration = Duration::from_millis(200);

    /// A phone for stream `stream_sid` whose media clock starts at `t0`.
    pub fn new(stream_sid: &str, t0: Instant) -> Self {
        Phone {
            stream_sid: stream_sid.to_string(),
            t0,
            queue: VecDeque::new(),
            cursor: t0,
            heard: Vec::new(),
            echoes: Vec::new(),
            bursts: Vec::new(),
            last_play_end: None,
            burst_bytes: 0,
            keep_heard: true,
            stats: PhoneStats::default(),
        }
    }

    /// Whether to keep the [`Phone::heard`] timeline (default true). It costs 8 bytes per ms
    /// of call; load generators running many calls turn it off.
    pub fn keep_heard(mut self, keep: bool) -> Self {
        self.keep_heard = keep;
        self
    }

    /// Totals so far.
    pub fn stats(&self) -> &PhoneStats {
        &self.stats
    }

    /// The bursts of agent audio heard so far.
    pub fn bursts(&self) -> &[Burst] {
        &self.bursts
    }

    /// Everything the caller heard: μ-law 8 kHz from `t0`, silence (0xFF) where nothing played
    /// (empty when built with `keep_heard(false)`).
    pub fn heard(&self) -> &[u8] {
        &self.heard
    }

    /// Audio queued and not yet played, ms.
    pub fn queued_ms(&self) -> u64 {
        self.queue
            .iter()
            .map(|i| match i {
                Item::Audio { bytes, offset } => (bytes.len() - offset) as u64 / 8,
                Item::Mark(_) => 0,
            })
            .sum()
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_millis() as u64
    }

    /// Takes in one text message from hark at `now` (after playing up to `now`).
    pub fn receive(&mut self, now: Instant, text: &str) -> Received {
        self.advance(now);
        let msg = match parse_outbound(text) {
            Ok(m) => m,
            Err(e) => {
                self.stats.errors.push(e.to_string());
                return Received::Invalid(e.to_string());
            }
        };
        let sid = match &msg {
            Outbound::Media { stream_sid, .. }
            | Outbound::Mark { stream_sid, .. }
            | Outbound::Clear { stream_sid } => stream_sid,
        };
        if *sid != self.stream_sid {
            let e = format!("streamSid {sid} != {}", self.stream_sid);
            self.stats.errors.push(e.clone());
            return Received::Invalid(e);
        }
        match msg {
            Outbound::Media { mulaw, .. } => {
                self.stats.media += 1;
                self.stats.audio_ms += mulaw.len() as u64 / 8;
                let n = mulaw.len();
                if self.queue.is_empty()
                    && let Some(end) = self.last_play_end
                    && now > end
                    && now - end <= Self::BURST_GAP
                    && self.bursts.last().is_some_and(|b| !b.interrupted)
                {
                    self.stats.underruns += 1;
                    self.stats.underrun_us += (now - end).as_micros() as u64;
                }
                if self.queue.is_empty() {
                    // Idle: playback starts now.
                    self.cursor = self.cursor.max(now);
                }
                self.queue.push_back(Item::Audio {
                    bytes: mulaw,
                    offset: 0,
                });
                Received::Media(n)
            }
            Outbound::Mark { name, .. } => {
                self.stats.marks += 1;
                self.queue.push_back(Item::Mark(name.clone()));
                // With nothing queued before it, the echo is due at once.
                self.advance(now);
                Received::Mark(name)
            }
            Outbound::Clear { .. } => {
                self.stats.clears += 1;
                let mut resolved = Vec::new();
                let mut dropped = 0u64;
                for item in self.queue.drain(..) {
                    match item {
                        Item::Audio { bytes, offset } => dropped += (bytes.len() - offset) as u64,
                        Item::Mark(name) => resolved.push(name),
                    }
                }
                self.stats.cleared_ms += dropped / 8;
                if dropped > 0
                    && let Some(b) = self.bursts.last_mut()
                {
                    b.interrupted = true;
                }
                self.stats.marks_echoed += resolved.len() as u64;
                self.cursor = now;
                self.echoes.extend(resolved.iter().cloned());
                Received::Clear(resolved)
            }
        }
    }

    /// Plays queued audio up to `now`, collecting mark echoes that become due.
    pub fn advance(&mut self, now: Instant) {
        if self.queue.is_empty() {
            self.cursor = self.cursor.max(now);
            return;
        }
        while let Some(item) = self.queue.front_mut() {
            match item {
                Item::Mark(_) => {
                    if let Some(Item::Mark(name)) = self.queue.pop_front() {
                        self.stats.marks_echoed += 1;
                        self.echoes.push(name);
                    }
                }
                Item::Audio { bytes, offset } => {
                    if self.cursor >= now {
                        break;
                    }
                    let room = ((now - self.cursor).as_micros() / 125) as usize;
                    let n = room.min(bytes.len() - *offset);
                    if n == 0 {
                        break;
                    }
                    // Record into the heard timeline at the cursor's media time.
                    let pos =
                        (self.cursor.saturating_duration_since(self.t0).as_micros() / 125) as usize;
                    let start_ms =
                        self.cursor.saturating_duration_since(self.t0).as_millis() as u64;
                    let new_burst = match self.last_play_end {
                        None => true,
                        Some(end) => self.cursor.saturating_duration_since(end) > Self::BURST_GAP,
                    } || self.bursts.last().is_some_and(|b| b.interrupted);
                    if new_burst {
                        self.burst_bytes = 0;
                        self.bursts.push(Burst {
                            start_ms,
                            audio_ms: 0,
                            interrupted: false,
                        });
                    }
                    if self.keep_heard {
                        if self.heard.len() < pos + n {
                            self.heard.resize(pos + n, 0xFF);
                        }
                        self.heard[pos..pos + n].copy_from_slice(&bytes[*offset..*offset + n]);
                    }
                    *offset += n;
                    self.cursor += BYTE * n as u32;
                    self.last_play_end = Some(self.cursor);
                    self.burst_bytes += n as u64;
                    if let Some(b) = self.bursts.last_mut() {
                        b.audio_ms = self.burst_bytes / 8;
                    }
                    if *offset == bytes.len() {
                        self.queue.pop_front();
                    } else {
                        break;
                    }
                }
            }
        }
        if self.queue.is_empty() {
            self.cursor = self.cursor.max(now);
        }
    }

    /// When the next mark echo becomes due, if one is queued (the time all audio before it
    /// will have played).
    pub fn next_echo_at(&self) -> Option<Instant> {
        let mut t = self.cursor;
        for item in &self.queue {
            match item {
                Item::Mark(_) => return Some(t),
                Item::Audio { bytes, offset } => t += BYTE * (bytes.len() - offset) as u32,
            }
        }
        None
    }

    /// Takes the mark echoes collected so far, in order.
    pub fn take_echoes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.echoes)
    }

    /// Media time of `t`, ms since `t0`.
    pub fn media_ms(&self, t: Instant) -> u64 {
        self.ms(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twilio::{encode_clear, encode_mark, encode_media};

    #[test]
    fn plays_in_real_time_and_echoes_marks_after_their_audio() {
        let t0 = Instant::now();
        let mut p = Phone::new("MZ1", t0);
        let mut s = String::new();
        encode_media("MZ1", &[1u8; 160], &mut s);
        assert_eq!(p.receive(t0, &s), Received::Media(160));
        encode_mark("MZ1", "m1", &mut s);
        p.receive(t0, &s);
        assert!(p.take_echoes().is_empty());
        assert_eq!(p.next_echo_at(), Some(t0 + Duration::from_millis(20)));
        p.advance(t0 + Duration::from_millis(19));
        assert!(p.take_echoes().is_empty());
        p.advance(t0 + Duration::from_millis(20));
        assert_eq!(p.take_echoes(), vec!["m1".to_string()]);
        assert_eq!(p.heard().len(), 160);
        assert_eq!(p.bursts()[0].audio_ms, 20);
    }

    #[test]
    fn burst_length_does_not_lose_rounding_on_odd_clocks() {
        let t0 = Instant::now();
        let mut p = Phone::new("MZ1", t0).keep_heard(false);
        let mut s = String::new();
        encode_media("MZ1", &[1u8; 8000], &mut s);
        p.receive(t0, &s);
        // Advance in steps of 0.7 ms: each step plays 5 bytes (0.625 ms).
        for k in 1..=1500u32 {
            p.advance(t0 + Duration::from_micros(700 * k as u64));
        }
        assert_eq!(p.bursts().len(), 1);
        assert_eq!(p.bursts()[0].audio_ms, 1000);
        assert!(p.heard().is_empty());
    }

    #[test]
    fn clear_drops_audio_and_echoes_pending_marks() {
        let t0 = Instant::now();
        let mut p = Phone::new("MZ1", t0);
        let mut s = String::new();
        for i in 0..10 {
            encode_media("MZ1", &[7u8; 160], &mut s);
            p.receive(t0, &s);
            encode_mark("MZ1", &format!("m{i}"), &mut s);
            p.receive(t0, &s);
        }
        p.advance(t0 + Duration::from_millis(50));
        assert_eq!(p.take_echoes(), vec!["m0".to_string(), "m1".to_string()]);
        encode_clear("MZ1", &mut s);
        let Received::Clear(resolved) = p.receive(t0 + Duration::from_millis(50), &s) else {
            panic!()
        };
        assert_eq!(resolved.len(), 8);
        assert_eq!(p.stats().cleared_ms, 150);
        assert!(p.bursts()[0].interrupted);
        assert_eq!(p.queued_ms(), 0);
    }

    #[test]
    fn a_gap_inside_a_burst_is_an_underrun() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut p = Phone::new("MZ1", t0).keep_heard(false);
        let mut s = String::new();
        encode_media("MZ1", &[1u8; 160], &mut s);
        p.receive(t0, &s);
        // On time: the next frame arrives while the first still plays.
        p.receive(ms(10), &s);
        assert_eq!(p.stats().underruns, 0);
        // 40 ms played by 40 ms; the next frame comes 15 ms late: a dropout.
        p.receive(ms(55), &s);
        assert_eq!((p.stats().underruns, p.stats().underrun_us), (1, 15_000));
        assert_eq!(p.bursts().len(), 1);
        // After a pause longer than BURST_GAP: a new burst, not an underrun.
        p.receive(ms(400), &s);
        p.advance(ms(410));
        assert_eq!((p.stats().underruns, p.bursts().len()), (1, 2));
        // After a clear: the next answer is a new burst, not an underrun.
        encode_media("MZ1", &[1u8; 1600], &mut s);
        p.receive(ms(415), &s);
        encode_clear("MZ1", &mut s);
        p.receive(ms(430), &s);
        assert!(p.bursts()[1].interrupted);
        encode_media("MZ1", &[1u8; 160], &mut s);
        p.receive(ms(500), &s);
        p.advance(ms(510));
        assert_eq!((p.stats().underruns, p.bursts().len()), (1, 3));
    }

    #[test]
    fn invalid_messages_are_errors() {
        let t0 = Instant::now();
        let mut p = Phone::new("MZ1", t0);
        assert!(matches!(
            p.receive(t0, r#"{"event":"clear","streamSid":"MZ2"}"#),
            Received::Invalid(_)
        ));
        assert!(matches!(
            p.receive(
                t0,
                r#"{"event":"media","streamSid":"MZ1","media":{"payload":"@@"}}"#
            ),
            Received::Invalid(_)
        ));
        assert_eq!(p.stats().errors.len(), 2);
    }
}
