//! What one simulated call measured ([`Report`]): caller turns matched to the agent's answers
//! heard at the phone, barge-in delays, totals, and the table `hark call` prints.

use std::fmt::Write as _;

use hark_engine::sim::Burst;
use serde::Serialize;

use super::caller::{Speech, TurnSource};
use super::{BARGE_IN_GRACE_MS, FRAME_MS};

/// One caller turn and the agent's answer, ms of media time at the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnReport {
    /// When the caller started speaking.
    pub user_start_ms: u64,
    /// When the caller stopped speaking (end of the last voiced frame).
    pub user_end_ms: u64,
    /// When the caller first heard the agent's answer, if it answered.
    pub agent_start_ms: Option<u64>,
    /// `agent_start_ms - user_end_ms`: voice-to-voice latency at the phone.
    pub latency_ms: Option<u64>,
    /// Audio of the answer the caller heard (one burst), ms.
    pub agent_audio_ms: u64,
    /// Whether a `clear` cut the answer short.
    pub interrupted: bool,
}

/// One `clear` from the server, ms of media time at the phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BargeInReport {
    /// Start of the caller's speech in progress when the `clear` arrived (none if the caller
    /// was silent: a `clear` not caused by the caller).
    pub speech_start_ms: Option<u64>,
    /// When the `clear` arrived at the phone.
    pub clear_ms: u64,
    /// `clear_ms - (speech_start_ms + 20)`: from when the first voiced frame was sent to when
    /// the clear arrived. Negative if the clear came first.
    pub delay_ms: Option<i64>,
}

/// What one simulated call measured. Times are ms of media time since `start`, at the phone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The `start.streamSid` used.
    pub stream_sid: String,
    /// The `start.callSid` used.
    pub call_sid: String,
    /// Where `turns` come from.
    pub turn_source: TurnSource,
    /// Caller turns and the agent's answers.
    pub turns: Vec<TurnReport>,
    /// One entry per `clear` received.
    pub barge_ins: Vec<BargeInReport>,
    /// `clear` messages received.
    pub clears: u64,
    /// `mark` messages the server sent (received by the phone).
    pub marks_sent: u64,
    /// Mark echoes the phone sent back.
    pub marks_echoed: u64,
    /// Inbound `media` messages (20 ms each) the simulator sent.
    pub inbound_frames: u64,
    /// Outbound `media` messages received from the server.
    pub outbound_frames: u64,
    /// Audio in those messages, ms.
    pub outbound_audio_ms: u64,
    /// Queued audio dropped by `clear`s, ms (never heard).
    pub cleared_ms: u64,
    /// Bursts of agent audio heard (contiguous playback; see `sim::Burst`). With one answer per
    /// turn and nothing played after a `clear` until the next answer, this equals the answered
    /// turns.
    pub bursts: u64,
    /// Agent audio heard, ms (sum of the bursts).
    pub heard_audio_ms: u64,
    /// Media time when the call ended for the phone (`stop`, or when the socket closed), ms.
    pub duration_ms: u64,
    /// Playout underruns heard: gaps inside a burst of agent audio (`sim::PhoneStats::underruns`).
    pub underruns: u64,
    /// Silence heard in those gaps, ms (rounded up).
    pub underrun_ms: u64,
    /// Inbound frames handed to the socket more than [`FRAME_MS`] of real time after they were
    /// due (speed > 0): the simulator or the socket fell behind real time.
    pub late_frames: u64,
    /// The latest any inbound frame was handed to the socket, µs after it was due (speed > 0).
    pub max_late_us: u64,
    /// Everything wrong: invalid messages from the server (Twilio warnings 31950/31951), a
    /// socket closed before `stop`, no close after `stop`, WebSocket errors.
    pub errors: Vec<String>,
    /// What the caller heard, μ-law 8 kHz from `start` to the end of the call, 0xFF where
    /// nothing played; only with [`CallSetup::keep_heard`](super::CallSetup::keep_heard). Not serialized.
    #[serde(skip)]
    pub heard: Option<Vec<u8>>,
}

/// Matches each caller turn to the first burst of agent audio that starts at or after the
/// turn's end and before the next turn's end (so one burst answers at most one turn).
pub(super) fn match_turns(spans: &[Speech], bursts: &[Burst]) -> Vec<TurnReport> {
    let turns: Vec<&Speech> = spans.iter().filter(|s| s.turn).collect();
    turns
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let until = turns.get(i + 1).map_or(u64::MAX, |n| n.end_ms);
            let burst = bursts
                .iter()
                .find(|b| b.start_ms >= t.end_ms && b.start_ms < until);
            TurnReport {
                user_start_ms: t.start_ms,
                user_end_ms: t.end_ms,
                agent_start_ms: burst.map(|b| b.start_ms),
                latency_ms: burst.map(|b| b.start_ms - t.end_ms),
                agent_audio_ms: burst.map_or(0, |b| b.audio_ms),
                interrupted: burst.is_some_and(|b| b.interrupted),
            }
        })
        .collect()
}

/// The speech a `clear` at `clear_ms` answers: the latest stretch that started by then and
/// had not ended more than [`BARGE_IN_GRACE_MS`] before.
pub(super) fn barge_in(spans: &[Speech], clear_ms: u64) -> BargeInReport {
    let speech = spans
        .iter()
        .filter(|s| s.start_ms <= clear_ms && clear_ms <= s.end_ms + BARGE_IN_GRACE_MS)
        .max_by_key(|s| s.start_ms);
    BargeInReport {
        speech_start_ms: speech.map(|s| s.start_ms),
        clear_ms,
        delay_ms: speech.map(|s| clear_ms as i64 - (s.start_ms + FRAME_MS) as i64),
    }
}

/// Prints a readable summary of `report` to stdout: one row per caller turn (speech, when the
/// caller first heard the agent, latency, agent audio heard, interrupted?), the barge-ins, and
/// totals. All times are ms of media time at the simulated phone.
pub fn print_table(report: &Report) {
    print!("{}", format_table(report));
}

/// The text [`print_table`] prints.
pub fn format_table(report: &Report) -> String {
    let mut s = String::new();
    let source = match report.turn_source {
        TurnSource::Annotation => "from the annotation",
        TurnSource::Vad => "found by hark's VAD",
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "call {} — {} caller turn(s) {source}; times in ms of media time at the phone",
        report.call_sid,
        report.turns.len()
    );
    let _ = writeln!(
        s,
        "{:>4}  {:>15}  {:>12}  {:>8}  {:>11}  {:>11}",
        "turn", "caller speech", "agent heard", "latency", "agent audio", "interrupted"
    );
    let dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for (i, t) in report.turns.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>4}  {:>15}  {:>12}  {:>8}  {:>11}  {:>11}",
            i + 1,
            format!("{}-{}", t.user_start_ms, t.user_end_ms),
            dash(t.agent_start_ms),
            dash(t.latency_ms),
            t.agent_audio_ms,
            if t.agent_start_ms.is_none() {
                "-"
            } else if t.interrupted {
                "yes"
            } else {
                "no"
            }
        );
    }
    let mut lat: Vec<u64> = report.turns.iter().filter_map(|t| t.latency_ms).collect();
    lat.sort_unstable();
    if let (Some(min), Some(max)) = (lat.first(), lat.last()) {
        let _ = writeln!(
            s,
            "latency (caller speech end -> first agent audio heard): min {min}, median {}, max {max} ms over {} answered turn(s)",
            lat[lat.len() / 2],
            lat.len()
        );
    } else {
        let _ = writeln!(s, "latency: no turn was answered");
    }
    if report.barge_ins.is_empty() {
        let _ = writeln!(s, "barge-ins: none");
    } else {
        let _ = writeln!(s, "barge-ins: {}", report.barge_ins.len());
        for b in &report.barge_ins {
            match (b.speech_start_ms, b.delay_ms) {
                (Some(start), Some(delay)) => {
                    let _ = writeln!(
                        s,
                        "  clear at {} ms: caller speech from {start} ms, {delay} ms after its first voiced frame was sent",
                        b.clear_ms
                    );
                }
                _ => {
                    let _ = writeln!(s, "  clear at {} ms: the caller was silent", b.clear_ms);
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "sent {} frames ({} ms); received {} media ({} ms of audio), {} marks ({} echoed), {} clear(s); call {} ms",
        report.inbound_frames,
        report.inbound_frames * FRAME_MS,
        report.outbound_frames,
        report.outbound_audio_ms,
        report.marks_sent,
        report.marks_echoed,
        report.clears,
        report.duration_ms
    );
    if report.errors.is_empty() {
        let _ = writeln!(s, "errors: none");
    } else {
        let _ = writeln!(s, "errors: {}", report.errors.len());
        for e in &report.errors {
            let _ = writeln!(s, "  {e}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burst(start_ms: u64, audio_ms: u64, interrupted: bool) -> Burst {
        Burst {
            start_ms,
            audio_ms,
            interrupted,
        }
    }

    fn turn(start_ms: u64, end_ms: u64) -> Speech {
        Speech {
            start_ms,
            end_ms,
            turn: true,
        }
    }

    #[test]
    fn turns_match_the_first_burst_after_their_end() {
        let spans = [turn(1000, 5100), turn(6800, 8580), turn(13360, 15380)];
        let bursts = [
            burst(200, 1000, false),
            burst(5800, 1100, true),
            burst(9300, 1780, false),
        ];
        let t = match_turns(&spans, &bursts);
        assert_eq!(t.len(), 3);
        assert_eq!(
            (t[0].agent_start_ms, t[0].latency_ms, t[0].interrupted),
            (Some(5800), Some(700), true)
        );
        assert_eq!((t[1].latency_ms, t[1].agent_audio_ms), (Some(720), 1780));
        // No answer after the last turn.
        assert_eq!((t[2].agent_start_ms, t[2].agent_audio_ms), (None, 0));
    }

    #[test]
    fn a_burst_answers_one_turn_only() {
        // Turn 1 got no answer before turn 2 ended: the burst belongs to turn 2.
        let spans = [turn(0, 1000), turn(1500, 2000)];
        let t = match_turns(&spans, &[burst(2600, 500, false)]);
        assert_eq!(t[0].agent_start_ms, None);
        assert_eq!(t[1].latency_ms, Some(600));
    }

    #[test]
    fn barge_in_is_measured_from_the_first_voiced_frame_sent() {
        let spans = [
            turn(1000, 5100),
            Speech {
                start_ms: 6800,
                end_ms: 6900,
                turn: false,
            },
        ];
        let b = barge_in(&spans, 6900);
        assert_eq!((b.speech_start_ms, b.delay_ms), (Some(6800), Some(80)));
        // Long after any speech: not the caller's doing.
        let b = barge_in(&spans, 12_000);
        assert_eq!((b.speech_start_ms, b.delay_ms), (None, None));
    }

    #[test]
    fn table_mentions_every_turn_and_error() {
        let r = Report {
            call_sid: "CA1".into(),
            turns: vec![TurnReport {
                user_start_ms: 1000,
                user_end_ms: 5100,
                agent_start_ms: Some(5800),
                latency_ms: Some(700),
                agent_audio_ms: 1100,
                interrupted: true,
            }],
            barge_ins: vec![BargeInReport {
                speech_start_ms: Some(6800),
                clear_ms: 6920,
                delay_ms: Some(100),
            }],
            errors: vec!["boom".into()],
            ..Report::default()
        };
        let t = format_table(&r);
        assert!(t.contains("1000-5100"), "{t}");
        assert!(t.contains("yes"));
        assert!(t.contains("median 700"));
        assert!(t.contains("100 ms after"));
        assert!(t.contains("boom"));
        let json = serde_json::to_value(&r).unwrap();
        for k in [
            "turns",
            "barge_ins",
            "clears",
            "marks_sent",
            "marks_echoed",
            "inbound_frames",
            "outbound_frames",
            "outbound_audio_ms",
            "errors",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
        assert!(json.get("heard").is_none());
        assert_eq!(json["turns"][0]["latency_ms"], 700);
    }
}
