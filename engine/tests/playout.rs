//! Unit-level scenarios on [`Playout`] in virtual time: what the caller heard comes from mark
//! echoes (not a clock), the heard text is cut at a word boundary, cancelled audio stays
//! dropped, pacing keeps at most `lead_ms` queued at Twilio, agent audio at 16, 22.05 and
//! 24 kHz keeps its duration, `finish` flushes the tail and closes with a final mark, a hold
//! (`pause`) plays on from the last echoed mark after `resume`, and
//! utterances play in order.
//!
//! The rig below plays Twilio's part (`shared/reference/twilio.md` §1.3–1.4): audio plays at
//! 8 bytes per ms in arrival order, a mark is echoed once the audio sent before it has played,
//! and `clear` makes every pending mark echo at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hark_codecs::{SampleRate, mulaw};
use hark_engine::config::PlayoutConfig;
use hark_engine::playout::{Interrupted, Playout, PlayoutEvent, Send};
use hark_engine::{AgentAudio, UtteranceId};

const U1: UtteranceId = UtteranceId(1);
const U2: UtteranceId = UtteranceId(2);
const U3: UtteranceId = UtteranceId(3);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Media(Vec<u8>),
    Mark(String),
}

struct Rig {
    p: Playout,
    t0: Instant,
    now: Instant,
    log: Vec<(Instant, Sent)>,
    events: Vec<PlayoutEvent>,
    /// Echo marks automatically when their audio has played.
    auto_echo: bool,
    /// Twilio: when everything sent so far will have played.
    play_end: Instant,
    /// Twilio: marks not yet echoed, with the time their audio will have played.
    due: VecDeque<(String, Instant)>,
    /// Echoes delivered: (time, name, known to the playout).
    echoed: Vec<(Instant, String, bool)>,
}

impl Rig {
    fn new(cfg: PlayoutConfig) -> Rig {
        let t0 = Instant::now();
        Rig {
            p: Playout::new(cfg),
            t0,
            now: t0,
            log: Vec::new(),
            events: Vec::new(),
            auto_echo: true,
            play_end: t0,
            due: VecDeque::new(),
            echoed: Vec::new(),
        }
    }

    fn default() -> Rig {
        Rig::new(PlayoutConfig::default())
    }

    fn at(&self, offset_ms: u64) -> Instant {
        self.t0 + ms(offset_ms)
    }

    fn push_ulaw(&mut self, id: UtteranceId, bytes: Vec<u8>, text: Option<&str>) -> bool {
        self.p
            .push(id, AgentAudio::Mulaw(bytes), text.map(str::to_string))
            .unwrap()
    }

    fn pump(&mut self) {
        let mut out = Vec::new();
        self.p.pump(self.now, &mut self.events, |s| {
            out.push(match s {
                Send::Media(b) => Sent::Media(b.to_vec()),
                Send::Mark(n) => Sent::Mark(n.to_string()),
            })
        });
        for s in out {
            match &s {
                Sent::Media(b) => {
                    assert!(!b.is_empty(), "empty media message");
                    self.play_end =
                        self.play_end.max(self.now) + Duration::from_micros(b.len() as u64 * 125)
                }
                Sent::Mark(n) => self.due.push_back((n.clone(), self.play_end.max(self.now))),
            }
            self.log.push((self.now, s));
        }
        // A driver sleeps until `next_wake`: right after a pump it must lie in the future, or
        // the driver would spin.
        if let Some(w) = self.p.next_wake(self.now) {
            assert!(
                w > self.now,
                "next_wake {w:?} not after a pump at {:?}",
                self.now
            );
        }
    }

    fn echo(&mut self, name: &str) -> bool {
        // Twilio echoes in order: this echo settles the mark and every earlier one.
        if let Some(k) = self.due.iter().position(|d| d.0 == name) {
            self.due.drain(..=k);
        }
        let ok = self.p.on_mark(name, self.now, &mut self.events);
        self.echoed.push((self.now, name.to_string(), ok));
        ok
    }

    /// Delivers due echoes (when automatic), then pumps.
    fn settle(&mut self) {
        if self.auto_echo {
            while let Some((_, t)) = self.due.front()
                && *t <= self.now
            {
                let (name, _) = self.due.pop_front().unwrap();
                assert!(self.echo(&name), "echo of {name} not recognised");
            }
        }
        self.pump();
    }

    /// Runs virtual time to `t`, pumping whenever the playout asks and echoing marks as their
    /// audio plays.
    fn run_until(&mut self, t: Instant) {
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 1_000_000, "no progress");
            self.settle();
            let wake = self.p.next_wake(self.now);
            let echo = if self.auto_echo {
                self.due.front().map(|d| d.1)
            } else {
                None
            };
            match [wake, echo].into_iter().flatten().min() {
                Some(n) if n <= t => self.now = self.now.max(n),
                _ => break,
            }
        }
        if self.now < t {
            self.now = t;
            self.settle();
        }
    }

    /// Runs until nothing is left to send or echo.
    fn run_out(&mut self) {
        let end = self.now + ms(600_000);
        self.run_until(end);
        assert!(self.due.is_empty() || !self.auto_echo);
    }

    /// Barge-in: the playout clears, then Twilio drops its queue and echoes every pending mark.
    fn clear(&mut self) -> Option<Interrupted> {
        let i = self.p.clear();
        self.play_end = self.now;
        for (name, _) in std::mem::take(&mut self.due) {
            assert!(self.echo(&name), "cleared mark {name} must still be known");
        }
        i
    }

    fn media(&self) -> Vec<u8> {
        self.log
            .iter()
            .filter_map(|(_, s)| match s {
                Sent::Media(b) => Some(b.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    fn marks(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|(_, s)| match s {
                Sent::Mark(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    fn played(&self) -> Vec<(UtteranceId, u64)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PlayoutEvent::Played { id, heard_ms, .. } => Some((*id, *heard_ms)),
                _ => None,
            })
            .collect()
    }

    /// Audio sent so far (ms) and the audio queued at Twilio now (ms).
    fn queued_ms(&self) -> u64 {
        self.play_end
            .saturating_duration_since(self.now)
            .as_millis() as u64
    }
}

/// A 440 Hz tone at -12 dBFS, `n` samples at `rate`.
fn tone(rate: u32, n: usize, phase0: usize) -> Vec<i16> {
    (phase0..phase0 + n)
        .map(|i| {
            let t = i as f64 / rate as f64;
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect()
}

fn rms(pcm: &[i16]) -> f64 {
    (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

#[test]
fn heard_ms_comes_from_mark_echoes_not_the_clock() {
    let mut r = Rig::default();
    r.auto_echo = false;
    r.push_ulaw(U1, vec![0x11; 8000], None); // 1000 ms
    r.p.finish(U1).unwrap();
    r.run_until(r.at(150));
    assert!(r.p.is_speaking());
    // 200 ms lead at t0, then a 60 ms top-up (`refill_ms`) whenever 60 ms have played (at 60
    // and 120 ms): 320 ms sent, a mark every 100 ms.
    assert_eq!(r.media().len(), 320 * 8);
    assert_eq!(r.marks(), vec!["hark-1", "hark-2", "hark-3"]);
    // By the clock 150 ms have played; only the first mark (100 ms) has been echoed.
    assert!(r.echo("hark-1"));
    let first_heard: Vec<_> = r
        .events
        .iter()
        .filter(|e| matches!(e, PlayoutEvent::FirstHeard { id: U1, .. }))
        .collect();
    assert_eq!(first_heard.len(), 1);
    let i = r.clear().expect("something was playing");
    assert_eq!(i.id, U1);
    assert_eq!(i.heard_ms, 100, "heard from echoes before the clear");
    assert_eq!(i.sent_ms, 320);
    assert_eq!(i.produced_ms, 1000);
    assert!(i.dropped.is_empty());
    assert_eq!(i.heard_text, None, "no text was given");
    // hark-2 and hark-3 were pending at the clear: echoed afterwards, they do not count.
    assert_eq!(r.echoed.len(), 3);
    assert!(
        r.played().is_empty(),
        "an interrupted utterance is not 'played'"
    );
    assert!(!r.p.is_speaking());
    let st = r.p.stats();
    assert_eq!((st.marks_sent, st.marks_echoed, st.clears), (3, 3, 1));
}

#[test]
fn an_echo_resolves_earlier_marks_whose_echo_never_came() {
    let mut r = Rig::default();
    r.auto_echo = false;
    r.push_ulaw(U1, vec![0x11; 8000], None);
    r.run_until(r.at(150));
    // Only the echo of the second mark arrives (the first was lost): 200 ms heard.
    assert!(r.echo("hark-2"));
    // A late echo of the first is then a repeat.
    assert!(!r.echo("hark-1"));
    assert_eq!(r.p.stats().unknown_marks, 1);
    assert_eq!(r.clear().unwrap().heard_ms, 200);
}

#[test]
fn marks_echoed_before_the_clear_count_and_later_ones_do_not() {
    // Automatic echoes: Twilio plays in real time, and the barge-in comes at 430 ms.
    let mut r = Rig::default();
    r.push_ulaw(U1, vec![0x11; 8000], None);
    r.run_until(r.at(430));
    // Marks at 100, 200, 300 and 400 ms have played; 500, 600 are pending.
    let echoed: Vec<_> = r.echoed.iter().map(|e| e.1.clone()).collect();
    assert_eq!(echoed, vec!["hark-1", "hark-2", "hark-3", "hark-4"]);
    let i = r.clear().unwrap();
    assert_eq!(i.heard_ms, 400);
    assert!(
        i.sent_ms <= 430 + 200,
        "at most the lead ahead of real time"
    );
    assert_eq!(r.echoed.len(), 6, "pending marks echoed by the clear");
    assert_eq!(r.p.stats().marks_echoed, 6);
}

#[test]
fn heard_text_is_whole_pieces_plus_a_word_boundary_prefix() {
    // Three sentences, each with its own 400 ms of audio.
    let pieces = [
        "Hello there friend.",
        "How are you doing today?",
        "I hope you are well.",
    ];
    let run = |until_ms: u64| {
        let mut r = Rig::default();
        for (k, t) in pieces.iter().enumerate() {
            r.push_ulaw(U1, vec![0x20 + k as u8; 3200], Some(t));
        }
        r.p.finish(U1).unwrap();
        r.run_until(r.at(until_ms));
        r
    };
    // Mark echoes arrive every 100 ms; `until_ms` + 50 falls between two of them.
    for (heard, want) in [
        (0, ""),
        (100, ""),
        // 3/4 of "Hello there friend." is 14 chars, inside "friend": back to "Hello there".
        (300, "Hello there"),
        (400, "Hello there friend."),
        // 1/4 of "How are you doing today?" is 6 chars, inside "are": back to "How".
        (500, "Hello there friend. How"),
        // Half of it is 12 chars: "How are you " → "How are you".
        (600, "Hello there friend. How are you"),
        (700, "Hello there friend. How are you doing"),
        (800, "Hello there friend. How are you doing today?"),
        (
            1000,
            "Hello there friend. How are you doing today? I hope you",
        ),
    ] {
        let mut r = run(heard + 50);
        let i = r.clear().unwrap();
        assert_eq!(i.heard_ms, heard);
        assert_eq!(i.heard_text.as_deref(), Some(want), "heard {heard} ms");
    }
    // Played to the end: no interruption, the whole utterance heard.
    let mut r = run(0);
    r.run_out();
    assert_eq!(r.played(), vec![(U1, 1200)]);
    assert!(r.clear().is_none(), "nothing to clear after it played");
}

#[test]
fn text_given_before_its_audio_is_attached_to_it() {
    let mut r = Rig::default();
    r.auto_echo = false;
    // Text first (e.g. an LLM sentence), then its audio in two chunks.
    r.p.push(
        U1,
        AgentAudio::Mulaw(Vec::new()),
        Some("One two three four.".into()),
    )
    .unwrap();
    r.push_ulaw(U1, vec![0x11; 1600], None);
    r.push_ulaw(U1, vec![0x11; 1600], Some("Five six."));
    r.run_until(r.at(150));
    assert!(r.echo("hark-2"));
    // 200 of the first piece's 200 ms heard.
    assert_eq!(
        r.clear().unwrap().heard_text.as_deref(),
        Some("One two three four.")
    );
}

#[test]
fn audio_of_a_cancelled_utterance_is_dropped_after_the_clear() {
    let mut r = Rig::default();
    r.push_ulaw(U1, vec![0x11; 4000], Some("first reply"));
    r.push_ulaw(U2, vec![0x22; 4000], Some("queued reply"));
    r.run_until(r.at(100));
    let i = r.clear().unwrap();
    assert_eq!(i.id, U1);
    assert_eq!(i.dropped, vec![U2]);
    let sent_at_clear = r.log.len();
    // The agent's TTS is still streaming for both: dropped on arrival.
    assert!(!r.push_ulaw(U1, vec![0x11; 1600], None));
    assert!(!r.push_ulaw(U2, vec![0x22; 1600], None));
    // Ids below the highest seen are cancelled too (agents number utterances upwards).
    assert!(!r.push_ulaw(UtteranceId(0), vec![0x00; 160], None));
    r.p.finish(U1).unwrap();
    r.p.finish(U2).unwrap();
    assert!(r.p.is_cancelled(U1) && r.p.is_cancelled(U2));
    assert_eq!(r.p.stats().dropped_chunks, 3);
    r.run_until(r.at(2000));
    assert_eq!(
        r.log.len(),
        sent_at_clear,
        "nothing sent for cancelled audio"
    );
    assert!(!r.p.is_speaking());
    assert!(r.played().is_empty());
    // The next reply plays normally, only its own audio, heard from its own marks.
    assert!(r.push_ulaw(U3, vec![0x33; 2400], Some("new reply")));
    r.p.finish(U3).unwrap();
    r.run_out();
    let after: Vec<u8> = r.log[sent_at_clear..]
        .iter()
        .filter_map(|(_, s)| match s {
            Sent::Media(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(after, vec![0x33; 2400]);
    assert_eq!(r.played(), vec![(U3, 300)]);
}

#[test]
fn pacing_never_queues_more_than_the_lead() {
    for lead_ms in [20u32, 60, 200, 1000] {
        let cfg = PlayoutConfig {
            lead_ms,
            ..PlayoutConfig::default()
        };
        let mut r = Rig::new(cfg);
        // A TTS that streams 3 s of audio five times faster than real time, in 20 ms chunks
        // of PCM at 24 kHz, while the playout is pumped whenever it asks (and at odd times).
        let mut max_q = 0;
        let mut phase = 0;
        for k in 0..150u64 {
            let t = r.at(k * 4);
            r.run_until(t);
            max_q = max_q.max(r.queued_ms());
            r.p.push(
                U1,
                AgentAudio::Pcm {
                    rate: SampleRate::HZ_24000,
                    samples: tone(24_000, 480, phase),
                },
                None,
            )
            .unwrap();
            phase += 480;
            r.pump();
            max_q = max_q.max(r.queued_ms());
        }
        r.p.finish(U1).unwrap();
        let mut t = r.now;
        while r.p.is_speaking() {
            t += ms(7);
            r.run_until(t);
            max_q = max_q.max(r.queued_ms());
        }
        assert!(
            max_q <= lead_ms as u64,
            "lead {lead_ms}: {max_q} ms queued at Twilio"
        );
        assert!(
            max_q + 20 >= lead_ms as u64,
            "lead {lead_ms} not used: {max_q} ms"
        );
        // Replay the send log against real-time playback for the same bound.
        let mut end = r.t0;
        for (at, s) in &r.log {
            if let Sent::Media(b) = s {
                end = end.max(*at) + Duration::from_micros(b.len() as u64 * 125);
                assert!(end.duration_since(*at) <= ms(lead_ms as u64));
            }
        }
        assert_eq!(r.played().len(), 1);
    }
}

#[test]
fn agent_audio_is_resampled_with_its_duration_kept() {
    for (rate, block_out) in [(16_000u32, 80usize), (22_050, 160), (24_000, 80)] {
        // 1.5 s of tone in chunks of 333 samples (not a multiple of any block).
        let total = rate as usize * 3 / 2;
        let mut r = Rig::default();
        let mut fed = 0;
        while fed < total {
            let n = 333.min(total - fed);
            r.p.push(
                U1,
                AgentAudio::Pcm {
                    rate: SampleRate(rate),
                    samples: tone(rate, n, fed),
                },
                None,
            )
            .unwrap();
            fed += n;
            r.pump();
        }
        r.p.finish(U1).unwrap();
        r.run_out();
        let out = r.media();
        let want = total * 8000 / rate as usize; // 12 000 samples
        let diff = out.len().abs_diff(want);
        assert!(
            diff <= block_out,
            "{rate} Hz: {} samples out, {want} expected (block {block_out})",
            out.len()
        );
        let pcm: Vec<i16> = out.iter().map(|&c| mulaw::decode_sample(c)).collect();
        // The tone survives (level within 1 dB away from the edges): not silence, not aliased.
        let mid = &pcm[800..pcm.len() - 800];
        let want_rms = 8000.0 / 2f64.sqrt();
        let db = 20.0 * (rms(mid) / want_rms).log10();
        assert!(db.abs() < 1.0, "{rate} Hz: level {db:.2} dB off");
        let played = r.played();
        assert_eq!(played, vec![(U1, out.len() as u64 / 8)]);
    }
}

#[test]
fn a_rate_change_mid_utterance_keeps_the_audio_in_order() {
    // 24 kHz audio, then 8 kHz audio, then μ-law: the 24 kHz resampler's tail must play
    // before the 8 kHz audio, not after everything at `finish`.
    let mut r = Rig::default();
    r.p.push(
        U1,
        AgentAudio::Pcm {
            rate: SampleRate::HZ_24000,
            samples: tone(24_000, 2400, 0),
        },
        None,
    )
    .unwrap();
    r.p.push(
        U1,
        AgentAudio::Pcm {
            rate: SampleRate::HZ_8000,
            samples: vec![0; 800],
        },
        None,
    )
    .unwrap();
    r.push_ulaw(U1, vec![0x7E; 800], None);
    r.p.finish(U1).unwrap();
    r.run_out();
    let out = r.media();
    // The tone (100 ms = 800 samples, plus the resampler's delay, at most a block), then
    // 800 samples of silence (μ-law 0xFF), then the μ-law bytes, and nothing after them.
    let n = out.len();
    assert!((2400..=2480).contains(&n), "{n} samples");
    assert!(
        out[n - 800..].iter().all(|&c| c == 0x7E),
        "the μ-law part is not last: the 24 kHz tail was queued after it"
    );
    assert!(out[n - 1600..n - 800].iter().all(|&c| c == 0xFF));
    let tone_part: Vec<i16> = out[..n - 1600]
        .iter()
        .map(|&c| mulaw::decode_sample(c))
        .collect();
    let db = 20.0 * (rms(&tone_part[100..700]) / (8000.0 / 2f64.sqrt())).log10();
    assert!(db.abs() < 1.0, "tone level {db:.2} dB off");
}

#[test]
fn finish_sends_the_tail_and_a_final_mark() {
    let mut r = Rig::default();
    r.auto_echo = false;
    // 1003 bytes: six 20 ms frames and a 43-byte tail.
    r.push_ulaw(U1, vec![0x11; 1003], None);
    r.run_until(r.at(500));
    assert_eq!(r.media().len(), 960, "the short tail waits for more audio");
    assert!(r.p.is_speaking());
    r.p.finish(U1).unwrap();
    r.pump();
    assert_eq!(r.media().len(), 1003);
    let last_two: Vec<_> = r.log.iter().rev().take(2).map(|(_, s)| s.clone()).collect();
    assert_eq!(last_two[1], Sent::Media(vec![0x11; 43]));
    let Sent::Mark(final_mark) = &last_two[0] else {
        panic!("no final mark: {last_two:?}")
    };
    // The final mark's echo means the utterance played to the end.
    let final_mark = final_mark.clone();
    for m in r.marks() {
        assert!(r.echo(&m));
    }
    assert_eq!(r.marks().last(), Some(&final_mark));
    assert_eq!(r.played(), vec![(U1, 125)]);
    assert!(!r.p.is_speaking());

    // PCM: `finish` flushes the resampler, so what is sent matches what was produced.
    let mut r = Rig::default();
    r.p.push(
        U2,
        AgentAudio::Pcm {
            rate: SampleRate::HZ_24000,
            samples: tone(24_000, 24_000 + 7, 0),
        },
        None,
    )
    .unwrap();
    r.run_until(r.at(2000));
    let before_finish = r.media().len();
    r.p.finish(U2).unwrap();
    r.run_out();
    let sent = r.media().len();
    assert!(
        sent > before_finish,
        "the resampler held some audio until finish"
    );
    assert!(
        sent.abs_diff(8002) <= 80,
        "{sent} samples sent for 1000.3 ms"
    );
    assert!(matches!(r.log.last(), Some((_, Sent::Mark(_)))));
    assert_eq!(r.played(), vec![(U2, sent as u64 / 8)]);
    assert_eq!(r.p.stats().sent_ms, r.played()[0].1);
}

#[test]
fn finishing_after_everything_was_sent_still_closes_the_utterance() {
    let mut r = Rig::default();
    r.push_ulaw(U1, vec![0x11; 1600], None);
    r.run_until(r.at(1000));
    assert_eq!(r.media().len(), 1600);
    assert!(r.played().is_empty(), "not finished yet");
    assert!(r.p.is_speaking(), "the agent may still add audio");
    let n = r.log.len();
    r.p.finish(U1).unwrap();
    r.run_out();
    assert_eq!(r.log.len(), n + 1, "just the final mark");
    assert_eq!(r.played(), vec![(U1, 200)]);
    // An utterance that never had audio ends at once, heard 0 ms, with nothing sent.
    let n = r.log.len();
    r.p.push(U2, AgentAudio::Mulaw(Vec::new()), Some("…".into()))
        .unwrap();
    r.p.finish(U2).unwrap();
    r.run_out();
    assert_eq!(r.log.len(), n);
    assert_eq!(r.played(), vec![(U1, 200), (U2, 0)]);
}

#[test]
fn an_utterance_queued_behind_another_plays_after_it_in_order() {
    let mut r = Rig::default();
    r.push_ulaw(U1, vec![0x11; 4800], None); // 600 ms, still streaming
    r.push_ulaw(U2, vec![0x22; 3200], None); // 400 ms, complete
    r.p.finish(U2).unwrap();
    r.run_until(r.at(1000));
    assert_eq!(r.media(), vec![0x11; 4800], "U2 waits while U1 is open");
    r.push_ulaw(U1, vec![0x11; 800], None);
    r.p.finish(U1).unwrap();
    r.run_out();
    let mut want = vec![0x11; 5600];
    want.extend(vec![0x22; 3200]);
    assert_eq!(r.media(), want);
    // U1's final mark goes out before U2's first audio.
    let u1_end = r
        .log
        .iter()
        .rposition(|(_, s)| matches!(s, Sent::Media(b) if b[0] == 0x11))
        .unwrap();
    assert!(matches!(r.log[u1_end + 1].1, Sent::Mark(_)));
    assert_eq!(r.played(), vec![(U1, 700), (U2, 400)]);
    let started: Vec<UtteranceId> = r
        .events
        .iter()
        .filter_map(|e| match e {
            PlayoutEvent::Started { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(started, vec![U1, U2]);
}

#[test]
fn mark_names_must_be_exactly_the_ones_sent() {
    let mut r = Rig::default();
    r.auto_echo = false;
    r.push_ulaw(U1, vec![0x11; 4000], None);
    r.run_until(r.at(10));
    assert_eq!(r.marks(), vec!["hark-1", "hark-2"]);
    for bad in [
        "hark-01", "hark-+1", "hark- 1", "hark-1 ", "hark-", "Hark-1", "1", "",
    ] {
        assert!(!r.echo(bad), "{bad:?} accepted");
    }
    assert_eq!(r.p.stats().unknown_marks, 8);
    assert!(r.echo("hark-1"));
    assert_eq!(r.clear().unwrap().heard_ms, 100);
}

#[test]
fn is_speaking_until_the_final_echo() {
    let mut r = Rig::default();
    assert!(!r.p.is_speaking());
    assert!(r.p.clear().is_none(), "nothing to clear");
    r.push_ulaw(U1, vec![0x11; 800], None);
    assert!(r.p.is_speaking());
    r.p.finish(U1).unwrap();
    r.pump();
    assert_eq!(r.media().len(), 800, "all sent at once within the lead");
    assert!(r.p.is_speaking(), "sent is not heard");
    r.run_until(r.at(99));
    assert!(r.p.is_speaking());
    r.run_until(r.at(100));
    assert!(!r.p.is_speaking());
    assert_eq!(r.played(), vec![(U1, 100)]);
}

impl Rig {
    /// A hold: the playout pauses, then Twilio drops its queue and echoes every pending mark.
    fn pause(&mut self) -> bool {
        let held = self.p.pause();
        self.play_end = self.now;
        for (name, _) in std::mem::take(&mut self.due) {
            assert!(self.echo(&name), "held mark {name} must still be known");
        }
        held
    }
}

/// A hold keeps the audio the caller did not hear and plays it after `resume`: every byte of
/// the utterance reaches the caller, the part between the last echoed mark and the `clear`
/// twice (at most one mark interval plus the lead), and the utterance still ends `Played`
/// with all of it heard. Nothing is sent while held.
#[test]
fn a_hold_resumes_from_the_last_echoed_mark() {
    let mut r = Rig::default();
    let audio: Vec<u8> = (0..8 * 2_000u32).map(|i| (i % 251) as u8).collect();
    r.push_ulaw(U1, audio.clone(), Some("two seconds of audio"));
    r.p.finish(U1).unwrap();
    let t = r.at(730);
    r.run_until(t);
    let sent_before = r.media().len();
    assert!(r.pause());
    assert!(!r.pause(), "already held");
    let t = r.at(1_500);
    r.run_until(t);
    assert_eq!(r.media().len(), sent_before, "nothing sent while held");
    r.p.resume();
    r.run_out();
    let media = r.media();
    // The replayed part starts at a mark boundary (100 ms = 800 bytes) at or before the clear.
    let replay = media.len() - audio.len();
    assert!(replay <= 8 * 300, "replayed {replay} bytes");
    let resumed_at = sent_before - replay;
    assert_eq!(resumed_at % 800, 0, "from a mark");
    assert_eq!(&media[..sent_before], &audio[..sent_before]);
    assert_eq!(&media[sent_before..], &audio[resumed_at..]);
    assert_eq!(r.played(), vec![(U1, 2_000)]);
}

/// Nothing to hold once everything was heard: `pause` refuses (no `clear` is needed), even with
/// the final mark still in flight, and the utterance ends with `Played` as usual.
#[test]
fn nothing_to_hold_once_everything_was_heard() {
    let mut r = Rig::default();
    r.push_ulaw(U1, vec![0x7f; 8 * 300], None);
    let t = r.at(600);
    r.run_until(t);
    r.p.finish(U1).unwrap();
    r.pump();
    assert_eq!(r.due.len(), 1, "the final mark is in flight");
    assert!(!r.p.is_speaking());
    assert!(!r.pause());
    r.run_out();
    assert_eq!(r.played(), vec![(U1, 300)]);
}

/// While audio plays, the call wakes for an inbound frame every 20 ms (at an odd phase here)
/// and pumps the playout then, besides its own deadline: the queue at Twilio is topped up in
/// steps of `refill_ms`, mostly on those wake-ups, and stays within `lead - refill ..= lead`.
/// With `refill_ms = frame_ms` it goes frame by frame, as before the top-ups.
#[test]
fn playing_audio_tops_the_queue_up_in_refill_steps() {
    for refill_ms in [60u32, 20] {
        let cfg = PlayoutConfig {
            refill_ms,
            ..PlayoutConfig::default()
        };
        let mut r = Rig::new(cfg);
        r.push_ulaw(U1, vec![0x11; 16_000], None); // 2 s
        r.p.finish(U1).unwrap();
        let (mut min_q, mut max_q) = (u64::MAX, 0);
        let mut inbound = r.at(7);
        while r.now < r.at(1500) {
            r.run_until(inbound);
            inbound += ms(20);
            let q = r.queued_ms();
            max_q = max_q.max(q);
            min_q = min_q.min(q);
        }
        // Media messages per send time: the first burst, then the top-ups.
        let mut groups: Vec<(Instant, usize)> = Vec::new();
        for (at, s) in &r.log {
            if let Sent::Media(_) = s {
                match groups.last_mut() {
                    Some((t, n)) if t == at => *n += 1,
                    _ => groups.push((*at, 1)),
                }
            }
        }
        // Wake-ups the call has anyway: an inbound frame, a mark echo.
        let on_other_wakeups = groups
            .iter()
            .filter(|(t, _)| {
                t.duration_since(r.t0).as_millis() % 20 == 7
                    || r.echoed.iter().any(|(e, _, _)| e == t)
            })
            .count();
        let top_ups: Vec<usize> = groups[1..].iter().map(|g| g.1).collect();
        assert_eq!(groups[0].1, 10, "the first 200 ms at once");
        assert!(max_q <= 200, "refill {refill_ms}: {max_q} ms queued");
        assert!(
            min_q + u64::from(refill_ms) >= 200,
            "refill {refill_ms}: queue fell to {min_q} ms"
        );
        if refill_ms == 60 {
            assert!(top_ups.iter().all(|&n| (2..=3).contains(&n)), "{top_ups:?}");
            assert_eq!(
                on_other_wakeups,
                top_ups.len(),
                "every top-up rides on another wake-up"
            );
        } else {
            assert!(top_ups.iter().all(|&n| n == 1), "{top_ups:?}");
        }
    }
}
