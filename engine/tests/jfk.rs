//! JFK's inaugural sentence (real speech, 16 kHz → 8 kHz μ-law) as a Twilio session: turns are
//! split exactly at the pauses longer than `stop_ms` and nowhere else.

mod common;

use common::*;
use hark_engine::config::TurnConfig;
use hark_engine::{CallConfig, EchoAgent};

/// Expected turns: the annotated segment split at every pause longer than `stop_ms`.
fn expected_turns(s: &Session, stop_ms: u64) -> Vec<(u64, u64)> {
    let mut out = vec![];
    for (start, end, _, pauses) in segments(s) {
        let mut cur = start;
        for (ps, pe) in pauses {
            if pe - ps > stop_ms {
                out.push((cur, ps));
                cur = pe;
            }
        }
        out.push((cur, end));
    }
    out
}

fn check(stop_ms: u32) {
    let s = load("jfk");
    // webrtc-vad: the turn splitting is checked against the annotation to ±80–160 ms, which
    // is webrtc-vad's timing; the hybrid VAD's foreground hold ends JFK's turns up to 300 ms
    // later (its end-of-turn latency over the benchmark corpus: `hark bench turns`).
    let mut cfg = CallConfig {
        turn: TurnConfig {
            stop_ms,
            ..TurnConfig::default()
        },
        ..CallConfig::default()
    };
    cfg.vad.kind = hark_engine::config::VadKind::Webrtc;
    // A silent agent: nothing is played back, so only turn-taking is under test.
    let run = run(&s.lines, cfg, Box::new(Silent), &s.stream_sid);
    let got = run.turns();
    let want = expected_turns(&s, stop_ms as u64);
    eprintln!("stop_ms {stop_ms}: turns {got:?}, expected {want:?}");
    assert_eq!(
        got.len(),
        want.len(),
        "stop_ms {stop_ms}: {got:?} vs {want:?}"
    );
    for (i, ((gs, ge), (ws, we))) in got.iter().zip(&want).enumerate() {
        // The recording's room tone (-45 dBFS, 20 dB above the line noise before it) begins at
        // 560 ms, before the noise gate's floor has adapted: the first turn may start there.
        let early = if i == 0 { 300 } else { 80 };
        let d = *gs as i64 - *ws as i64;
        assert!((-early..=80).contains(&d), "start {gs} vs {ws}");
        let d = *ge as i64 - *we as i64;
        // The last turn may run on into the applause after the sentence (annotated as other
        // sounds up to 11 500 ms).
        let late = if *we == want.last().unwrap().1 {
            800
        } else {
            160
        };
        assert!((-80..=late).contains(&d), "end {ge} vs {we}");
    }
    assert_eq!(run.call.stats().malformed_total(), 0);
    assert_eq!(run.call.stats().frames, 675);
}

struct Silent;
impl hark_engine::Agent for Silent {
    fn name(&self) -> &'static str {
        "silent"
    }
    fn needs(&self) -> hark_engine::agent::AgentNeeds {
        hark_engine::agent::AgentNeeds {
            utterance_audio: true,
            streaming_audio: false,
        }
    }
    fn on_start(
        &mut self,
        _: std::time::Instant,
        _: &hark_engine::agent::CallInfo,
        _: &mut Vec<hark_engine::Action>,
    ) {
    }
    fn on_user_turn(
        &mut self,
        _: std::time::Instant,
        turn: hark_engine::agent::UserTurn,
        _: &mut Vec<hark_engine::Action>,
    ) {
        // The utterance audio covers pre-roll + speech at 8 kHz.
        let ms = turn.audio.len() as u64 / 8;
        assert!(
            ms >= turn.end_ms - turn.start_ms,
            "utterance audio {ms} ms shorter than the turn"
        );
        assert!(
            ms <= turn.end_ms - turn.start_ms + 320,
            "utterance audio {ms} ms too long"
        );
    }
    fn on_barge_in(
        &mut self,
        _: std::time::Instant,
        _: &hark_engine::playout::Interrupted,
        _: &mut Vec<hark_engine::Action>,
    ) {
    }
}

// Pause lengths in the annotation: 1180, 350, 1120 and 660 ms. Each `stop_ms` below is at
// least 140 ms away from all of them, so the expected split is unambiguous.

#[test]
fn short_stop_splits_at_every_pause_longer_than_it() {
    check(500);
}

#[test]
fn medium_stop_keeps_the_660_ms_pause_inside_a_turn() {
    check(800);
}

#[test]
fn long_stop_keeps_the_sentence_together() {
    check(1300);
}

#[test]
fn jfk_with_echo_barges_in_when_he_resumes() {
    // With the echo agent, each turn's echo starts while JFK goes on: he barges in on it.
    let s = load("jfk");
    let run = run(
        &s.lines,
        CallConfig::default(),
        Box::new(EchoAgent::new()),
        &s.stream_sid,
    );
    let bis = run.barge_ins();
    eprintln!(
        "barge-ins at {:?}",
        bis.iter()
            .map(|b| (b.speech_start_ms, b.delay_ms()))
            .collect::<Vec<_>>()
    );
    assert!(!bis.is_empty());
    for b in &bis {
        assert!(b.delay_ms() <= 100);
    }
}
