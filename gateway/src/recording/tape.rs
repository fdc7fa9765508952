//! The placement model of a call's recording ([`Tape`]): where each piece of caller and agent
//! audio goes on the call's media clock, and which agent audio the caller never heard.
//!
//! Units: samples of μ-law 8 kHz (one byte each, 8 per ms, 125 µs each), counted from the
//! stream's media time 0 (Twilio's `media.timestamp` 0).
//!
//! - **Caller (left).** Each inbound `media` payload goes at its `media.timestamp` (ms since the
//!   stream started, Twilio Media Streams "media" message); without one, right after the
//!   previous payload. Gaps stay silent.
//! - **The media clock on hark's side.** A payload whose audio ends at media time `e` cannot
//!   arrive before `e`: the earliest arrival minus the audio's end over all payloads
//!   (`anchor`) maps any instant on hark's clock to the media time Twilio had then, less the
//!   inbound link's least delay.
//! - **Agent (right).** Twilio queues outbound `media` and plays it in order at real time; a
//!   `clear` drops everything queued and not yet played (Twilio Media Streams "clear"
//!   message). So a payload sent at media time `t` plays from `max(t, end of the queue)`, and a
//!   `clear` at `t` removes what was placed from `t` on. Audio still queued when the stream
//!   stopped never played either. This is the same model as the simulator's virtual phone
//!   (`hark_engine::sim::Phone`).
//! - **Round trip.** Placing agent audio by hark's send time puts it early by the link's round
//!   trip (hark sees Twilio's clock one inbound delay late; the audio reaches Twilio one
//!   outbound delay later). A `mark` is echoed when the audio before it has played, so each
//!   echo's media time minus the time the model says that audio ended is the round trip plus
//!   jitter; the smallest over the call's marks (`lag`) shifts the whole agent channel when
//!   the file is made (cuts included: a `clear` also reaches Twilio one outbound delay late).
//!   Marks resolved by a `clear` say nothing about playback and are left out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// μ-law silence (decodes to 0).
pub const SILENCE: u8 = 0xFF;
/// μ-law samples per ms.
pub const PER_MS: u64 = 8;
/// A caller payload whose `media.timestamp` is more than this ahead of the media clock is
/// placed right after the previous payload instead (a broken or hostile timestamp must not
/// make the recording allocate minutes of silence).
pub const MAX_AHEAD_MS: u64 = 10_000;
/// A mark echo later than this after its audio ended is not a round trip (a stalled link): it
/// is not used for the lag.
pub const MAX_LAG_MS: u64 = 2_000;
/// Pending marks kept at most (hark sends one per 100 ms of audio, `HARK_MARK_EVERY_MS`).
const MAX_MARKS: usize = 4_096;

/// Both channels of a finished recording: μ-law 8 kHz, the same length, silence where
/// nothing was heard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stereo {
    /// The caller, as received.
    pub caller: Vec<u8>,
    /// The agent, as played to the caller.
    pub agent: Vec<u8>,
    /// The round trip taken off the agent channel, samples.
    pub lag: u64,
    /// Audio beyond the length limit was left out.
    pub truncated: bool,
}

/// One call's recording as it happens. See the module docs.
#[derive(Debug)]
pub struct Tape {
    /// The instant of media time 0 on hark's clock.
    anchor: Option<Instant>,
    caller: Vec<u8>,
    /// Where a caller payload without a timestamp goes.
    caller_next: u64,
    /// Agent audio in the model's coordinates (before the lag is taken off).
    agent: Vec<u8>,
    /// End of Twilio's queue of agent audio (model coordinates).
    play_end: u64,
    /// Marks sent and not echoed yet: name and where the audio before them ends.
    marks: VecDeque<(String, u64)>,
    lag: Option<u64>,
    stopped_at: Option<Instant>,
    limit: u64,
    truncated: bool,
}

impl Tape {
    /// An empty tape keeping at most `max_ms` of audio per channel.
    pub fn new(max_ms: u64) -> Tape {
        Tape {
            anchor: None,
            caller: Vec::new(),
            caller_next: 0,
            agent: Vec::new(),
            play_end: 0,
            marks: VecDeque::new(),
            lag: None,
            stopped_at: None,
            limit: max_ms.saturating_mul(PER_MS),
            truncated: false,
        }
    }

    /// The stream's `start` arrived at `at`: a first guess of media time 0.
    pub fn start(&mut self, at: Instant) {
        self.anchor.get_or_insert(at);
    }

    /// Media time at `at`, samples.
    fn pos(&self, at: Instant) -> u64 {
        self.anchor.map_or(0, |a| {
            at.saturating_duration_since(a).as_micros() as u64 / 125
        })
    }

    /// A caller payload (`mulaw`) with its `media.timestamp` (ms), received at `at`.
    pub fn caller(&mut self, at: Instant, timestamp_ms: Option<u64>, mulaw: &[u8]) {
        let n = mulaw.len() as u64;
        let ahead = self.pos(at) + MAX_AHEAD_MS * PER_MS;
        let pos = match timestamp_ms.map(|t| t.saturating_mul(PER_MS)) {
            Some(p) if p <= ahead => p,
            _ => self.caller_next,
        };
        if let Some(zero) = at.checked_sub(Duration::from_micros((pos + n) * 125)) {
            self.anchor = Some(self.anchor.map_or(zero, |a| a.min(zero)));
        }
        self.truncated |= !put(&mut self.caller, pos, mulaw, self.limit);
        self.caller_next = pos + n;
    }

    /// Agent audio (`mulaw`) sent to Twilio at `at`.
    pub fn agent(&mut self, at: Instant, mulaw: &[u8]) {
        let start = self.pos(at).max(self.play_end);
        self.truncated |= !put(&mut self.agent, start, mulaw, self.limit);
        self.play_end = start + mulaw.len() as u64;
    }

    /// A `mark` named `name` sent after the agent audio so far.
    pub fn mark(&mut self, name: &str) {
        if self.marks.len() == MAX_MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back((name.to_owned(), self.play_end));
    }

    /// A `clear` sent at `at`: the agent audio not yet played is gone.
    pub fn clear(&mut self, at: Instant) {
        let now = self.pos(at);
        if self.play_end > now {
            self.agent.truncate(now as usize);
            self.play_end = now;
        }
        // Twilio echoes the pending marks at once: they tell nothing of playback.
        self.marks.clear();
    }

    /// Twilio echoed mark `name` at `at`.
    pub fn echo(&mut self, at: Instant, name: &str) {
        let Some(i) = self.marks.iter().position(|(n, _)| n == name) else {
            return;
        };
        let due = self.marks[i].1;
        self.marks.drain(..=i);
        let lag = self.pos(at).saturating_sub(due);
        if lag <= MAX_LAG_MS * PER_MS {
            self.lag = Some(self.lag.map_or(lag, |l| l.min(lag)));
        }
    }

    /// Twilio's `stop` arrived at `at`: nothing plays after it.
    pub fn stop(&mut self, at: Instant) {
        self.stopped_at.get_or_insert(at);
    }

    /// The channels, for a stream that ended at `end` (or at its `stop`, if one came).
    pub fn finish(mut self, end: Instant) -> Stereo {
        let end = self.pos(self.stopped_at.unwrap_or(end));
        let lag = self.lag.unwrap_or(0);
        // Queued at Twilio when the stream ended: never played.
        self.agent.truncate(end.saturating_sub(lag) as usize);
        let agent_end = if self.agent.is_empty() {
            0
        } else {
            self.agent.len() as u64 + lag
        };
        let len = (self.caller.len() as u64).max(agent_end).min(self.limit) as usize;
        let mut agent = Vec::with_capacity(len);
        agent.resize((lag as usize).min(len), SILENCE);
        let room = len - agent.len();
        agent.extend_from_slice(&self.agent[..self.agent.len().min(room)]);
        agent.resize(len, SILENCE);
        let mut caller = self.caller;
        caller.resize(len, SILENCE);
        Stereo {
            caller,
            agent,
            lag,
            truncated: self.truncated,
        }
    }
}

/// Writes `bytes` into `track` at `pos`, silence before it; `false` when the length `limit`
/// cut some of it off.
fn put(track: &mut Vec<u8>, pos: u64, bytes: &[u8], limit: u64) -> bool {
    let end = (pos + bytes.len() as u64).min(limit);
    if pos >= end {
        return bytes.is_empty();
    }
    let (pos, end) = (pos as usize, end as usize);
    if track.len() < end {
        track.resize(end, SILENCE);
    }
    track[pos..end].copy_from_slice(&bytes[..end - pos]);
    end - pos == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// A call whose frames arrive 20 ms after their timestamp (their audio's end).
    fn caller_frames(tape: &mut Tape, t0: Instant, frames: u64) {
        for k in 0..frames {
            tape.caller(ms(t0, 20 * (k + 1)), Some(20 * k), &[k as u8; 160]);
        }
    }

    #[test]
    fn caller_audio_goes_at_its_timestamp_with_gaps_silent() {
        let t0 = Instant::now();
        let mut tape = Tape::new(60_000);
        tape.start(t0);
        tape.caller(ms(t0, 20), Some(0), &[1; 160]);
        // Frame 1 lost: frame 2 at 40 ms.
        tape.caller(ms(t0, 60), Some(40), &[3; 160]);
        // No timestamp: right after the previous one.
        tape.caller(ms(t0, 80), None, &[4; 80]);
        let s = tape.finish(ms(t0, 80));
        assert_eq!(s.caller.len(), 70 * 8);
        assert!(s.caller[..160].iter().all(|&b| b == 1));
        assert!(s.caller[160..320].iter().all(|&b| b == SILENCE));
        assert!(s.caller[320..480].iter().all(|&b| b == 3));
        assert!(s.caller[480..].iter().all(|&b| b == 4));
        assert!(s.agent.iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn agent_audio_queues_behind_what_is_playing_and_a_clear_cuts_the_rest() {
        let t0 = Instant::now();
        let mut tape = Tape::new(60_000);
        tape.start(t0);
        caller_frames(&mut tape, t0, 50);
        // 200 ms of agent audio sent at once at 100 ms: it plays 100..300 ms.
        for i in 0..10u8 {
            tape.agent(ms(t0, 100), &[10 + i; 160]);
        }
        // A clear at 150 ms: only 100..150 ms was heard.
        tape.clear(ms(t0, 150));
        // Sent at 400 ms: plays from 400 ms (the queue is empty).
        tape.agent(ms(t0, 400), &[50; 160]);
        let s = tape.finish(ms(t0, 1000));
        assert_eq!(s.agent.len(), 1000 * 8);
        assert!(s.agent[..800].iter().all(|&b| b == SILENCE));
        assert!(s.agent[800..960].iter().all(|&b| b == 10));
        assert!(s.agent[960..1120].iter().all(|&b| b == 11));
        assert!(s.agent[1120..1200].iter().all(|&b| b == 12));
        assert!(
            s.agent[1200..3200].iter().all(|&b| b == SILENCE),
            "cut audio absent"
        );
        assert!(s.agent[3200..3360].iter().all(|&b| b == 50));
        assert!(s.agent[3360..].iter().all(|&b| b == SILENCE));
    }

    #[test]
    fn the_anchor_is_the_earliest_arrival_less_the_audio() {
        let t0 = Instant::now();
        let mut tape = Tape::new(60_000);
        // `start` came 30 ms late; frames arrive on time (one of them late).
        tape.start(ms(t0, 30));
        tape.caller(ms(t0, 20), Some(0), &[1; 160]);
        tape.caller(ms(t0, 55), Some(20), &[1; 160]);
        tape.caller(ms(t0, 60), Some(40), &[1; 160]);
        tape.agent(ms(t0, 100), &[7; 80]);
        let s = tape.finish(ms(t0, 200));
        assert_eq!(s.agent.iter().position(|&b| b == 7), Some(800));
    }

    #[test]
    fn mark_echoes_give_the_round_trip_and_the_agent_channel_moves_by_it() {
        let t0 = Instant::now();
        let mut tape = Tape::new(60_000);
        tape.start(t0);
        caller_frames(&mut tape, t0, 50);
        tape.agent(ms(t0, 100), &[7; 160]);
        tape.mark("hark-1");
        tape.agent(ms(t0, 100), &[8; 160]);
        tape.mark("hark-2");
        // Echoes 30 ms and 45 ms after the audio ended: the round trip is 30 ms.
        tape.echo(ms(t0, 150), "hark-1");
        tape.echo(ms(t0, 185), "hark-2");
        // An unknown name changes nothing.
        tape.echo(ms(t0, 190), "hark-9");
        let s = tape.finish(ms(t0, 1000));
        assert_eq!(s.lag, 30 * 8);
        assert_eq!(s.agent.iter().position(|&b| b == 7), Some(130 * 8));
        assert_eq!(s.agent.iter().rposition(|&b| b == 8), Some(170 * 8 - 1));
        // Marks resolved by a clear are not round trips.
        let mut tape = Tape::new(60_000);
        tape.start(t0);
        caller_frames(&mut tape, t0, 50);
        tape.agent(ms(t0, 100), &[7; 1600]);
        tape.mark("hark-1");
        tape.clear(ms(t0, 120));
        tape.echo(ms(t0, 121), "hark-1");
        assert_eq!(tape.finish(ms(t0, 1000)).lag, 0);
    }

    #[test]
    fn audio_queued_when_the_stream_stopped_never_played() {
        let t0 = Instant::now();
        let mut tape = Tape::new(60_000);
        tape.start(t0);
        caller_frames(&mut tape, t0, 10);
        tape.agent(ms(t0, 150), &[7; 800]);
        tape.stop(ms(t0, 200));
        let s = tape.finish(ms(t0, 900));
        assert_eq!(s.agent.len(), 200 * 8);
        assert_eq!(s.agent.iter().filter(|&&b| b == 7).count(), 50 * 8);
    }

    #[test]
    fn hostile_timestamps_and_the_length_limit_bound_memory() {
        let t0 = Instant::now();
        let mut tape = Tape::new(1_000);
        tape.start(t0);
        tape.caller(ms(t0, 20), Some(u64::MAX / 2), &[1; 160]);
        tape.caller(ms(t0, 40), Some(3_600_000), &[2; 160]);
        let s = tape.finish(ms(t0, 40));
        assert_eq!(s.caller.len(), 320);
        let mut tape = Tape::new(1_000);
        tape.start(t0);
        for k in 0..100 {
            tape.caller(ms(t0, 20 * (k + 1)), Some(20 * k), &[1; 160]);
        }
        let s = tape.finish(ms(t0, 2_000));
        assert_eq!(s.caller.len(), 8_000);
        assert!(s.truncated);
    }
}
