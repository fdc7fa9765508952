//! Outbound playout: agent audio → 8 kHz μ-law frames paced near real time, with marks.
//!
//! Facts from Twilio (twilio.com/docs/voice/media-streams/websocket-messages, summarised in
//! `shared/reference/twilio.md` §1.3–1.4): outbound `media` is buffered by Twilio and played in
//! order; a `mark` is echoed when the audio before it has played; `clear` drops everything
//! buffered and then Twilio echoes every pending mark, so each mark resolves exactly once and the
//! echo does not say whether it played. Hence:
//!
//! - **Pacing.** hark keeps at most `lead_ms` of audio queued at Twilio (an estimate from the
//!   send times, used only for pacing), so a `clear` throws away little and the agent's
//!   "speaking" state stays honest. Everything else waits here and can be dropped instantly.
//!   It tops the queue up in steps of `refill_ms` (60 ms: three frames in one socket write,
//!   usually on a wake-up the call had anyway for an inbound frame) rather than frame by frame,
//!   so Twilio holds between `lead_ms - refill_ms` and `lead_ms` (140–200 ms) while audio plays.
//! - **Heard.** What the caller heard is known only from mark echoes: a mark echoed before hark
//!   sent `clear` was heard; marks pending at the `clear` are resolved as unheard. A mark goes
//!   out every `mark_every_ms` and at the end of each utterance.
//!
//! Amounts are counted in μ-law bytes at 8 kHz (8 bytes = 1 ms) and reported in ms.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hark_codecs::{Resampler, SampleRate, mulaw};

use crate::config::PlayoutConfig;

/// Identifies one agent utterance (a reply, a greeting). Agents number them in increasing order;
/// a barge-in cancels every utterance numbered up to the highest seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtteranceId(pub u64);

impl std::fmt::Display for UtteranceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "u{}", self.0)
    }
}

/// Audio an agent hands to the playout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAudio {
    /// Mono 16-bit PCM at any rate the resampler supports (8, 16, 22.05, 24, 44.1, 48 kHz).
    Pcm {
        /// Rate of `samples`.
        rate: SampleRate,
        /// Samples.
        samples: Vec<i16>,
    },
    /// μ-law 8 kHz mono bytes, queued untouched (e.g. ElevenLabs `ulaw_8000`).
    Mulaw(Vec<u8>),
}

/// One piece of work for the transport, produced by [`Playout::pump`].
#[derive(Debug, PartialEq, Eq)]
pub enum Send<'a> {
    /// Send a `media` message with these μ-law bytes.
    Media(&'a [u8]),
    /// Send a `mark` with this name.
    Mark(&'a str),
}

/// Something the playout observed, for the call's events and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlayoutEvent {
    /// The first `media` of an utterance went out.
    Started {
        /// The utterance.
        id: UtteranceId,
        /// When.
        at: Instant,
    },
    /// The first mark of an utterance was echoed: the caller has heard its start.
    FirstHeard {
        /// The utterance.
        id: UtteranceId,
        /// When the echo arrived.
        at: Instant,
        /// Audio of the utterance the echoed mark covers, ms: Twilio echoes a mark when
        /// playback reaches it, so the caller began hearing the utterance this long before `at`.
        heard_ms: u64,
    },
    /// An utterance's final mark was echoed: it played to the end.
    Played {
        /// The utterance.
        id: UtteranceId,
        /// Audio played, ms.
        heard_ms: u64,
        /// When the echo arrived.
        at: Instant,
    },
}

/// What a `clear` cut short: the utterance that was playing and what of it was heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// The utterance that was playing (or next to play) when the clear happened.
    pub id: UtteranceId,
    /// Audio of it the caller heard, ms (from mark echoes before the clear).
    pub heard_ms: u64,
    /// Audio of it sent to Twilio, ms.
    pub sent_ms: u64,
    /// Audio of it the agent had produced so far, ms.
    pub produced_ms: u64,
    /// The heard prefix of the utterance's text, when the agent gave text: whole text pieces
    /// whose audio was heard, plus the part of the next piece proportional to the heard audio,
    /// cut back to a word boundary.
    pub heard_text: Option<String>,
    /// Other utterances that were queued behind it and are dropped unheard.
    pub dropped: Vec<UtteranceId>,
}

struct TextPiece {
    start: u64,
    end: u64,
    text: String,
}

struct Utterance {
    id: UtteranceId,
    queue: VecDeque<u8>,
    /// Bytes sent but not yet confirmed heard by a mark echo, oldest first (at most
    /// [`MAX_UNHEARD_BYTES`]): what [`Playout::pause`] puts back in the queue.
    unheard: VecDeque<u8>,
    produced: u64,
    sent: u64,
    heard: u64,
    finished: bool,
    final_mark_sent: bool,
    texts: Vec<TextPiece>,
    pending_text: Option<String>,
    resampler: Option<Resampler>,
    started: bool,
    first_heard: bool,
}

impl Utterance {
    fn new(id: UtteranceId) -> Self {
        Utterance {
            id,
            queue: VecDeque::new(),
            unheard: VecDeque::new(),
            produced: 0,
            sent: 0,
            heard: 0,
            finished: false,
            final_mark_sent: false,
            texts: Vec::new(),
            pending_text: None,
            resampler: None,
            started: false,
            first_heard: false,
        }
    }

    fn heard_text(&self) -> Option<String> {
        if self.texts.is_empty() && self.pending_text.is_none() {
            return None;
        }
        let mut out: Vec<&str> = Vec::new();
        let mut partial = String::new();
        for p in &self.texts {
            if p.end <= self.heard {
                out.push(p.text.trim());
            } else if p.start < self.heard {
                let frac = (self.heard - p.start) as f64 / (p.end - p.start) as f64;
                let chars: Vec<char> = p.text.trim().chars().collect();
                let n = (chars.len() as f64 * frac).floor() as usize;
                let mut cut = n.min(chars.len());
                // Back up to a word boundary unless the cut already is one.
                if cut < chars.len() && !chars[cut].is_whitespace() {
                    while cut > 0 && !chars[cut - 1].is_whitespace() {
                        cut -= 1;
                    }
                }
                partial = chars[..cut]
                    .iter()
                    .collect::<String>()
                    .trim_end()
                    .to_string();
                break;
            } else {
                break;
            }
        }
        if !partial.is_empty() {
            out.push(&partial);
        }
        Some(
            out.into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

struct PendingMark {
    seq: u64,
    id: UtteranceId,
    /// Bytes of the utterance played once this mark is echoed.
    upto: u64,
    is_final: bool,
    cleared: bool,
}

/// The outbound playout of one call. See the module docs.
pub struct Playout {
    cfg: PlayoutConfig,
    frame_bytes: usize,
    mark_bytes: u64,
    utts: VecDeque<Utterance>,
    marks: VecDeque<PendingMark>,
    next_mark: u64,
    since_mark: u64,
    /// When Twilio will have played all audio sent so far (pacing estimate only).
    play_end: Option<Instant>,
    /// Utterances with ids below this are cancelled: their audio is dropped on arrival.
    cancelled_below: u64,
    highest_id: Option<u64>,
    /// Sending is held ([`Playout::pause`]) until [`Playout::resume`] or [`Playout::clear`].
    paused: bool,
    frame: Vec<u8>,
    name: String,
    pcm8: Vec<i16>,
    spare: Vec<Resampler>,
    /// Totals for the call.
    stats: PlayoutStats,
}

/// Totals kept by the playout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    /// `media` messages sent.
    pub frames_sent: u64,
    /// Audio sent, ms.
    pub sent_ms: u64,
    /// `mark` messages sent.
    pub marks_sent: u64,
    /// Mark echoes matched to a sent mark.
    pub marks_echoed: u64,
    /// Mark echoes that matched no pending mark (unknown name or a repeat).
    pub unknown_marks: u64,
    /// `clear` messages asked for.
    pub clears: u64,
    /// Audio chunks dropped because their utterance was cancelled.
    pub dropped_chunks: u64,
}

impl std::fmt::Debug for Playout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Playout")
            .field("utterances", &self.utts.len())
            .field("pending_marks", &self.marks.len())
            .field("stats", &self.stats)
            .finish()
    }
}

const MARK_PREFIX: &str = "hark-";

/// Sent-but-unheard audio kept per utterance for [`Playout::pause`]: 10 s of μ-law (marks
/// normally confirm within the 200 ms lead plus one mark interval; this bounds a call whose
/// echoes stop coming).
pub const MAX_UNHEARD_BYTES: usize = 80_000;

impl Playout {
    /// A playout with `cfg`'s pacing and mark interval.
    pub fn new(cfg: PlayoutConfig) -> Self {
        let frame_bytes = SampleRate::TWILIO
            .g711_bytes_in_ms(cfg.frame_ms as u64)
            .max(1);
        Playout {
            cfg,
            frame_bytes,
            mark_bytes: SampleRate::TWILIO.g711_bytes_in_ms(cfg.mark_every_ms as u64) as u64,
            utts: VecDeque::new(),
            marks: VecDeque::new(),
            next_mark: 1,
            since_mark: 0,
            play_end: None,
            cancelled_below: 0,
            highest_id: None,
            paused: false,
            frame: Vec::with_capacity(frame_bytes),
            name: String::with_capacity(24),
            pcm8: Vec::with_capacity(4096),
            spare: Vec::new(),
            stats: PlayoutStats::default(),
        }
    }

    /// Totals so far.
    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }

    /// Whether agent audio is still unplayed: queued here, produced but not yet confirmed played
    /// by a mark echo, or promised by an utterance the agent has not finished.
    pub fn is_speaking(&self) -> bool {
        self.utts
            .iter()
            .any(|u| u.produced > 0 && (!u.finished || u.heard < u.produced || !u.queue.is_empty()))
    }

    /// Whether `id` was cancelled by a barge-in.
    pub fn is_cancelled(&self, id: UtteranceId) -> bool {
        id.0 < self.cancelled_below
    }

    fn utt_mut(&mut self, id: UtteranceId) -> Option<&mut Utterance> {
        if self.is_cancelled(id) {
            return None;
        }
        if let Some(i) = self.utts.iter().position(|u| u.id == id) {
            return self.utts.get_mut(i);
        }
        self.highest_id = Some(self.highest_id.map_or(id.0, |h| h.max(id.0)));
        self.utts.push_back(Utterance::new(id));
        self.utts.back_mut()
    }

    /// Queues agent audio (and optionally the text it speaks) for utterance `id`, creating the
    /// utterance on first use. Audio for a cancelled utterance is dropped (returns `Ok(false)`).
    ///
    /// # Errors
    /// [`crate::Error::Resample`] if the PCM rate is not supported; nothing is queued.
    pub fn push(
        &mut self,
        id: UtteranceId,
        audio: AgentAudio,
        text: Option<String>,
    ) -> Result<bool, crate::Error> {
        if self.is_cancelled(id) {
            self.stats.dropped_chunks += 1;
            return Ok(false);
        }
        let mut pcm8 = std::mem::take(&mut self.pcm8);
        pcm8.clear();
        let mut spare = std::mem::take(&mut self.spare);
        let result = (|| {
            let Some(u) = self.utt_mut(id) else {
                return Ok(false);
            };
            if u.finished {
                // Audio after finish: treat as a continuation (re-open).
                u.finished = false;
            }
            // A change of format mid-utterance (another PCM rate, or μ-law after PCM): flush
            // the old converter first, so its tail plays before the new audio, not at `finish`.
            let switched = match &audio {
                AgentAudio::Mulaw(_) => u.resampler.is_some(),
                AgentAudio::Pcm { rate, .. } => {
                    u.resampler.as_ref().is_some_and(|r| r.from_rate() != *rate)
                }
            };
            if switched && let Some(mut r) = u.resampler.take() {
                r.flush(&mut pcm8)?;
                spare.push(r);
                u.queue
                    .extend(pcm8.iter().map(|&s| mulaw::encode_sample(s)));
                u.produced += pcm8.len() as u64;
                pcm8.clear();
            }
            let before = u.produced;
            match audio {
                AgentAudio::Mulaw(bytes) => {
                    u.queue.extend(bytes.iter().copied());
                    u.produced += bytes.len() as u64;
                }
                AgentAudio::Pcm { rate, samples } => {
                    let src: &[i16] = if rate == SampleRate::HZ_8000 {
                        &samples
                    } else {
                        if u.resampler.is_none() {
                            let pos = spare.iter().position(|r| r.from_rate() == rate);
                            u.resampler = Some(match pos {
                                Some(i) => spare.swap_remove(i),
                                None => Resampler::new(rate, SampleRate::HZ_8000)?,
                            });
                        }
                        if let Some(r) = u.resampler.as_mut() {
                            r.process(&samples, &mut pcm8)?;
                        }
                        &pcm8
                    };
                    u.queue.extend(src.iter().map(|&s| mulaw::encode_sample(s)));
                    u.produced += src.len() as u64;
                }
            }
            let text = match (u.pending_text.take(), text) {
                (Some(a), Some(b)) => Some(format!("{a} {b}")),
                (a, b) => a.or(b),
            };
            if let Some(t) = text {
                if u.produced > before {
                    u.texts.push(TextPiece {
                        start: before,
                        end: u.produced,
                        text: t,
                    });
                } else {
                    u.pending_text = Some(t);
                }
            }
            Ok(true)
        })();
        self.pcm8 = pcm8;
        self.spare = spare;
        result
    }

    /// The agent will send no more audio for `id`: flushes its resampler so the tail plays, and
    /// lets the last (short) frame and the final mark go out.
    ///
    /// # Errors
    /// [`crate::Error::Resample`] if the flush fails (the tail is lost, the utterance still ends).
    pub fn finish(&mut self, id: UtteranceId) -> Result<(), crate::Error> {
        let mut pcm8 = std::mem::take(&mut self.pcm8);
        pcm8.clear();
        let mut res = Ok(());
        if let Some(u) = self
            .utts
            .iter_mut()
            .find(|u| u.id == id && (id.0 >= self.cancelled_below))
        {
            if let Some(mut r) = u.resampler.take() {
                res = r.flush(&mut pcm8).map(|_| ()).map_err(crate::Error::from);
                u.queue
                    .extend(pcm8.iter().map(|&s| mulaw::encode_sample(s)));
                u.produced += pcm8.len() as u64;
                self.spare.push(r);
            }
            u.finished = true;
            if let Some(t) = u.pending_text.take()
                && let Some(last) = u.texts.last_mut()
            {
                last.text.push(' ');
                last.text.push_str(&t);
            }
        }
        self.pcm8 = pcm8;
        res
    }

    /// When [`Playout::pump`] next has something to send, if anything is waiting (`now` when
    /// it could send at once).
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.paused {
            return None;
        }
        let u = self.sending()?;
        let avail = u.queue.len();
        let ready = avail >= self.frame_bytes || (u.finished && (avail > 0 || !u.final_mark_sent));
        if !ready {
            return None;
        }
        let frame = self.frame_ms(avail.min(self.frame_bytes));
        // Due when the audio queued at Twilio has fallen a top-up (`refill_ms`) below the lead.
        Some(match self.play_end {
            None => now,
            Some(end) => (end + frame.max(self.refill()))
                .checked_sub(Duration::from_millis(self.cfg.lead_ms as u64))
                .map_or(now, |t| t.max(now)),
        })
    }

    fn frame_ms(&self, bytes: usize) -> Duration {
        Duration::from_micros(bytes as u64 * 125)
    }

    /// `refill_ms`, clamped to `frame_ms..=lead_ms`.
    fn refill(&self) -> Duration {
        let ms = self
            .cfg
            .refill_ms
            .clamp(self.cfg.frame_ms, self.cfg.lead_ms.max(self.cfg.frame_ms));
        Duration::from_millis(ms as u64)
    }

    /// How far below the lead the queue at Twilio must be for a pump to start a top-up: a
    /// frame short of [`Playout::refill`], so a wake-up for another reason (an inbound frame
    /// every 20 ms) does the top-up before the playout's own deadline (at the full refill)
    /// comes, and that deadline rarely needs a wake-up of its own.
    fn top_up_at(&self, frame: Duration) -> Duration {
        self.refill()
            .saturating_sub(Duration::from_millis(self.cfg.frame_ms as u64))
            .max(frame)
    }

    fn sending(&self) -> Option<&Utterance> {
        self.utts.iter().find(|u| !u.final_mark_sent)
    }

    /// Sends what pacing allows at `now`: calls `send` for each `media` and `mark` to transmit,
    /// in order, and returns what happened in `events`.
    pub fn pump(
        &mut self,
        now: Instant,
        events: &mut Vec<PlayoutEvent>,
        mut send: impl FnMut(Send<'_>),
    ) {
        let lead = Duration::from_millis(self.cfg.lead_ms as u64);
        if self.paused {
            return;
        }
        // Once a top-up has started, it fills the queue at Twilio up to the lead.
        let mut topping_up = false;
        loop {
            let Some(idx) = self.utts.iter().position(|u| !u.final_mark_sent) else {
                return;
            };
            let frame_bytes = self.frame_bytes;
            let u = &self.utts[idx];
            let avail = u.queue.len();
            if avail == 0 {
                if u.finished {
                    // Everything sent: close the utterance with its final mark.
                    let id = u.id;
                    let upto = u.sent;
                    if upto == 0 {
                        // Nothing was ever produced: nothing to mark or hear.
                        self.utts[idx].final_mark_sent = true;
                        self.utts[idx].heard = 0;
                        let u = self.utts.remove(idx);
                        if let Some(u) = u {
                            events.push(PlayoutEvent::Played {
                                id: u.id,
                                heard_ms: 0,
                                at: now,
                            });
                        }
                        continue;
                    }
                    self.utts[idx].final_mark_sent = true;
                    self.push_mark(id, upto, true, &mut send);
                    continue;
                }
                return;
            }
            let n = if avail >= frame_bytes {
                frame_bytes
            } else if u.finished {
                avail
            } else {
                return;
            };
            let d = self.frame_ms(n);
            let queued = self
                .play_end
                .map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
            let room = if topping_up { d } else { self.top_up_at(d) };
            if queued + room > lead {
                return;
            }
            topping_up = true;
            self.play_end = Some(self.play_end.map_or(now, |e| e.max(now)) + d);
            let u = &mut self.utts[idx];
            self.frame.clear();
            self.frame.extend(u.queue.drain(..n));
            u.unheard.extend(self.frame.iter().copied());
            let over = u.unheard.len().saturating_sub(MAX_UNHEARD_BYTES);
            u.unheard.drain(..over);
            u.sent += n as u64;
            let id = u.id;
            let first = !u.started;
            u.started = true;
            let upto = u.sent;
            let done = u.finished && u.queue.is_empty();
            if first {
                events.push(PlayoutEvent::Started { id, at: now });
            }
            send(Send::Media(&self.frame));
            self.stats.frames_sent += 1;
            self.stats.sent_ms += n as u64 / 8;
            self.since_mark += n as u64;
            if done {
                self.utts[idx].final_mark_sent = true;
                self.push_mark(id, upto, true, &mut send);
            } else if self.since_mark >= self.mark_bytes {
                self.push_mark(id, upto, false, &mut send);
            }
        }
    }

    fn push_mark(
        &mut self,
        id: UtteranceId,
        upto: u64,
        is_final: bool,
        send: &mut impl FnMut(Send<'_>),
    ) {
        let seq = self.next_mark;
        self.next_mark += 1;
        self.since_mark = 0;
        self.marks.push_back(PendingMark {
            seq,
            id,
            upto,
            is_final,
            cleared: false,
        });
        self.name.clear();
        self.name.push_str(MARK_PREFIX);
        push_u64(&mut self.name, seq);
        self.stats.marks_sent += 1;
        send(Send::Mark(&self.name));
    }

    /// Handles Twilio's echo of a mark. Marks resolve in the order sent; an echo also resolves
    /// any earlier mark whose echo never came. Returns false for a name hark never sent.
    pub fn on_mark(&mut self, name: &str, now: Instant, events: &mut Vec<PlayoutEvent>) -> bool {
        // Only the exact names hark writes (`hark-<n>`, no sign, no leading zero) match:
        // `u64::from_str` alone would also take "hark-+3" or "hark-03" for mark 3.
        let Some(seq) = name
            .strip_prefix(MARK_PREFIX)
            .filter(|s| {
                s.bytes().all(|b| b.is_ascii_digit()) && !(s.len() > 1 && s.starts_with('0'))
            })
            .and_then(|s| s.parse::<u64>().ok())
        else {
            self.stats.unknown_marks += 1;
            return false;
        };
        if !self.marks.iter().any(|m| m.seq == seq) {
            self.stats.unknown_marks += 1;
            return false;
        }
        while let Some(m) = self.marks.front() {
            if m.seq > seq {
                break;
            }
            let Some(m) = self.marks.pop_front() else {
                break;
            };
            self.stats.marks_echoed += 1;
            if m.cleared {
                continue;
            }
            if let Some(i) = self.utts.iter().position(|u| u.id == m.id) {
                let u = &mut self.utts[i];
                u.heard = u.heard.max(m.upto);
                let base = u.sent - u.unheard.len() as u64;
                let heard_now = (u.heard.saturating_sub(base) as usize).min(u.unheard.len());
                u.unheard.drain(..heard_now);
                if !u.first_heard {
                    u.first_heard = true;
                    events.push(PlayoutEvent::FirstHeard {
                        id: u.id,
                        at: now,
                        heard_ms: m.upto / 8,
                    });
                }
                if m.is_final {
                    let heard_ms = u.heard / 8;
                    let id = u.id;
                    if let Some(mut u) = self.utts.remove(i)
                        && let Some(r) = u.resampler.take()
                    {
                        self.spare.push(r);
                    }
                    events.push(PlayoutEvent::Played {
                        id,
                        heard_ms,
                        at: now,
                    });
                }
            }
        }
        true
    }

    /// Holds the agent's audio for a barge-in that may turn out to be none (a backchannel, a
    /// noise): nothing more is sent, the audio sent but not confirmed heard goes back to the
    /// front of its utterance's queue (pending marks resolve as unheard), and
    /// [`Playout::resume`] later plays on from where the caller stopped hearing (to mark
    /// granularity). The caller needs a Twilio `clear` to stop hearing at once. Returns false
    /// (and does nothing) when no agent audio is unplayed or it is already held.
    pub fn pause(&mut self) -> bool {
        if self.paused || !self.is_speaking() {
            return false;
        }
        for m in self.marks.iter_mut() {
            m.cleared = true;
        }
        for u in self.utts.iter_mut() {
            // Its final mark, if sent, now resolves as unheard: it goes out again on resume, so
            // the utterance still ends with `Played`.
            u.final_mark_sent = false;
            if u.sent <= u.heard {
                continue;
            }
            // `unheard` holds bytes base..sent; the caller heard up to `heard`.
            let base = u.sent - u.unheard.len() as u64;
            let from = u.heard.max(base);
            let skip = (from - base) as usize;
            for &b in u.unheard.iter().skip(skip).rev() {
                u.queue.push_front(b);
            }
            u.unheard.clear();
            u.sent = from;
        }
        self.paused = true;
        self.play_end = None;
        self.since_mark = 0;
        self.stats.clears += 1;
        true
    }

    /// Plays on after [`Playout::pause`].
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Whether sending is held by [`Playout::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Barge-in: forgets all queued audio, cancels every utterance seen so far (later audio for
    /// them is dropped), resolves pending marks as unheard, and reports what the caller heard of
    /// the utterance that was playing. Returns `None` when nothing was playing or queued (then
    /// no `clear` is needed).
    pub fn clear(&mut self) -> Option<Interrupted> {
        let anything =
            self.utts.iter().any(|u| u.produced > 0) || self.marks.iter().any(|m| !m.cleared);
        for m in self.marks.iter_mut() {
            m.cleared = true;
        }
        if let Some(h) = self.highest_id {
            self.cancelled_below = self.cancelled_below.max(h + 1);
        }
        let was_paused = std::mem::replace(&mut self.paused, false);
        self.play_end = None;
        self.since_mark = 0;
        let mut utts = std::mem::take(&mut self.utts);
        for u in utts.iter_mut() {
            if let Some(mut r) = u.resampler.take() {
                r.reset();
                self.spare.push(r);
            }
        }
        if !anything {
            return None;
        }
        // A held playout had its `clear` counted when it was paused.
        if !was_paused {
            self.stats.clears += 1;
        }
        let first = utts.pop_front()?;
        Some(Interrupted {
            id: first.id,
            heard_ms: first.heard / 8,
            sent_ms: first.sent / 8,
            produced_ms: first.produced / 8,
            heard_text: first.heard_text(),
            dropped: utts.iter().map(|u| u.id).collect(),
        })
    }
}

fn push_u64(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        s.push(b as char);
    }
}
