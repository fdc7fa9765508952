//! The end-of-turn model's place in a call (`HARK_END_OF_TURN=smart-turn`), with the model's
//! answers scripted: "complete" ends the turn at once, "unfinished" waits `model_stop_ms`, no
//! answer possible falls back to `stop_ms`, and a driver that never answers still ends turns
//! (`model_stop_ms`). Real speech (JFK) through webrtc-vad, in virtual time.

mod common;

use common::*;
use hark_engine::config::{EndOfTurn, VadKind};
use hark_engine::{CallConfig, EchoAgent, Event, Input};

/// What the scripted driver answers to each check.
#[derive(Clone, Copy, Debug)]
enum Script {
    Answer(Option<f32>),
    Never,
}

/// (silence before each turn ended, ms of media; checks asked).
fn run(script: Script) -> (Vec<u64>, usize) {
    let mut cfg = CallConfig::default();
    cfg.vad.kind = VadKind::Webrtc;
    cfg.turn.end_of_turn = EndOfTurn::SmartTurn;
    let (probe, stop, model_stop) = (
        cfg.turn.model_probe_ms,
        cfg.turn.stop_ms,
        cfg.turn.model_stop_ms,
    );
    assert_eq!((probe, stop, model_stop), (200, 600, 1000));
    let mut t = TestCall::new(cfg, Box::new(EchoAgent::new()), "MZturnmodel").without_phone();
    t.start_stream(&[]);
    let mut audio = std::fs::read(fixture("audio/jfk-8k.ulaw")).expect("jfk fixture");
    audio.extend(std::iter::repeat_n(0xFF_u8, 8 * 3_000));
    let mut silences = Vec::new();
    let mut answered = 0;
    for frame in audio.chunks(160) {
        let mut events = t.feed_audio(frame, 160);
        while answered < t.turn_checks.len() {
            let (_, check) = t.turn_checks[answered].clone();
            answered += 1;
            // At most 8 s of 8 kHz audio, and at least the probe's silence.
            assert!(check.audio.len() <= 64_000 && check.audio.len() >= 8 * probe as usize);
            if let Script::Answer(probability) = script {
                let at = t.now;
                events.extend(t.input(Input::TurnCheck {
                    at,
                    id: check.id,
                    probability,
                }));
            }
        }
        for e in events {
            if let Event::UserTurnEnded { end_ms, .. } = e {
                silences.push(t.call.media_ms() - end_ms);
            }
        }
    }
    (silences, t.turn_checks.len())
}

fn assert_all_within(silences: &[u64], lo: u64, hi: u64, what: &str) {
    assert!(!silences.is_empty(), "{what}: no turn ended");
    for s in silences {
        assert!(
            (lo..=hi).contains(s),
            "{what}: a turn ended after {s} ms of silence, want {lo}–{hi}: {silences:?}"
        );
    }
}

#[test]
fn complete_ends_the_turn_when_the_answer_comes() {
    let (silences, checks) = run(Script::Answer(Some(0.97)));
    assert_all_within(&silences, 200, 220, "complete");
    assert_eq!(checks, silences.len(), "one check per turn");
}

#[test]
fn unfinished_waits_for_the_longer_silence() {
    let (silences, checks) = run(Script::Answer(Some(0.2)));
    assert_all_within(&silences, 1000, 1020, "unfinished");
    // The pauses JFK makes between 200 and 1000 ms were each asked about and held open.
    assert!(
        checks >= silences.len(),
        "{checks} checks, {} turns",
        silences.len()
    );
    let (fewer, _) = run(Script::Answer(Some(0.97)));
    assert!(
        fewer.len() > silences.len(),
        "holding pauses open joins turns: {fewer:?} vs {silences:?}"
    );
}

#[test]
fn no_answer_possible_falls_back_to_the_silence_rule() {
    let (silences, _) = run(Script::Answer(None));
    assert_all_within(&silences, 600, 620, "busy model");
}

#[test]
fn a_driver_that_never_answers_still_ends_turns() {
    let (silences, checks) = run(Script::Never);
    assert!(checks > 0);
    assert_all_within(&silences, 1000, 1020, "no driver");
}
