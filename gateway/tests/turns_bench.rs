//! `hark bench turns` on the committed corpus (`fixtures/turns`): the scorer's definitions hold
//! where the answer is known from the configuration. On clean speech with webrtc-vad and a
//! 600 ms end-of-turn silence, every 800 ms inner pause must end the turn and no 400 ms one
//! may; turns end 600–700 ms after the speech; every real barge-in interrupts the agent within
//! the `min_interruption_ms` of voice it needs plus the detector's onset; and a run is
//! deterministic.

use std::path::PathBuf;

use hark_gateway::turns::{self, corpus::Condition, corpus::Corpus};

fn corpus() -> Corpus {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/turns");
    Corpus::load(&dir).expect("the committed corpus loads")
}

fn clean() -> Condition {
    Condition {
        noise: None,
        snr_db: f64::INFINITY,
    }
}

/// The committed noise `name` at `snr_db` under the speech.
fn noisy(name: &str, snr_db: f64) -> Condition {
    Condition {
        noise: Some(name.into()),
        snr_db,
    }
}

#[test]
fn clean_speech_scores_as_the_configuration_predicts() {
    let corpus = corpus();
    let row = turns::run_condition(&corpus, "webrtc", &clean()).unwrap();
    assert_eq!(row.utterances, 54);
    assert!(row.missed_onsets <= 3, "{row:?}");
    let p50 = row.eot_p50_ms.expect("turns end");
    assert!((580..=700).contains(&p50), "end-of-turn p50 {p50} ms");
    let by: Vec<(u64, usize, usize)> = row.pause_cuts.clone();
    assert_eq!(by.iter().map(|b| b.0).collect::<Vec<_>>(), [400, 600, 800]);
    assert_eq!(by[0].2, 18);
    assert!(
        by[0].1 <= 1,
        "400 ms pauses must not end a 600 ms turn: {by:?}"
    );
    assert!(
        by[2].1 >= 17,
        "800 ms pauses must end a 600 ms turn: {by:?}"
    );
    assert_eq!(row.barge_ins.0, row.barge_ins.1, "{row:?}");
    assert!(
        row.barge_ins.1 >= 28,
        "barge-ins while the agent spoke: {row:?}"
    );
    // No `clear` before `min_interruption_ms` of voice.
    let clear = row.clear_p90_ms.expect("barge-ins clear");
    let floor = u64::from(hark_engine::CallConfig::default().turn.min_interruption_ms);
    assert!((floor..=150).contains(&clear), "clear p90 {clear} ms");
    assert_eq!(row.false_barge_ins_per_min, 0.0);
}

#[test]
fn noise_is_mixed_at_the_asked_snr_and_runs_are_deterministic() {
    let corpus = corpus();
    let babble = |snr| noisy("babble", snr);
    let a = turns::run_condition(&corpus, "webrtc", &babble(10.0)).unwrap();
    let b = turns::run_condition(&corpus, "webrtc", &babble(10.0)).unwrap();
    let strip = |r: &turns::Row| {
        let mut r = r.clone();
        r.us_per_frame = 0.0;
        r.model_ms_per_check = None;
        serde_json::to_string(&r).unwrap()
    };
    assert_eq!(strip(&a), strip(&b));
    // Louder noise can only make the frame verdicts worse than clean.
    let c = turns::run_condition(&corpus, "webrtc", &clean()).unwrap();
    let d = turns::run_condition(&corpus, "webrtc", &babble(0.0)).unwrap();
    assert!(
        c.f1 > a.f1 && a.f1 > d.f1,
        "F1 clean {} / 10 dB {} / 0 dB {}",
        c.f1,
        a.f1,
        d.f1
    );
}

/// The default detector on background voices: a conversation (`talkers`, 2–3 voices) 10 dB
/// under the caller no longer holds turns open (counting only unvoiced frames as background,
/// 63 % of these turns took over 1.5 s, 44 of 54 onsets missed), nor does babble at 5 dB
/// interrupt the agent as it did. The README's table has today's figures.
#[test]
fn background_voices_neither_hold_turns_open_nor_interrupt_the_agent() {
    let corpus = corpus();
    let row = turns::run_condition(&corpus, "hybrid", &noisy("talkers", 10.0)).unwrap();
    assert!(row.eot_over_1500_pct <= 15.0, "{row:?}");
    assert!(row.missed_onsets <= 15, "{row:?}");
    // Babble 5 dB under the caller: with the caller's level released as fast as on other
    // lines, 27.6 false barge-ins per minute and 11 % of turns over 1.5 s.
    let row = turns::run_condition(&corpus, "hybrid", &noisy("babble", 5.0)).unwrap();
    assert!(row.false_barge_ins_per_min <= 15.0, "{row:?}");
    assert!(row.eot_over_1500_pct <= 8.0, "{row:?}");
}

#[test]
fn unknown_vads_and_noises_are_refused() {
    assert!(turns::config_for("nope").is_err());
    for v in ["webrtc", "silero", "hybrid"] {
        assert!(turns::config_for(v).is_ok());
    }
    let corpus = corpus();
    let e = turns::run_condition(&corpus, "webrtc", &noisy("traffic", 10.0)).unwrap_err();
    assert!(e.contains("traffic"), "{e}");
}

/// Backchannels over the agent, judged by their words (the cascade's check, on by default):
/// in clean speech and babble at 10 dB at most 10 % of them interrupt, and still every real
/// barge-in does, with the same `clear` timing. Without the word check (`stt_ms` 0, agents
/// that cannot judge words) the duration rule lets most of them interrupt.
#[test]
fn backchannels_judged_by_their_words_do_not_interrupt_and_barge_ins_still_do() {
    let corpus = corpus();
    for cond in [clean(), noisy("babble", 10.0)] {
        let cfg = turns::config_for("hybrid").unwrap();
        let words = turns::run_config(&corpus, "hybrid", cfg, &cond, 300).unwrap();
        let none = turns::run_config(&corpus, "hybrid", cfg, &cond, 0).unwrap();
        let (cut, of) = words.backchannels;
        assert!(of >= 30 && cut * 10 <= of, "{words:?}");
        assert!(none.backchannels.0 * 2 > none.backchannels.1, "{none:?}");
        assert_eq!(words.barge_ins, none.barge_ins, "{words:?}");
        assert_eq!(words.clear_p90_ms, none.clear_p90_ms);
        // Coughs and clicks are "heard" as words that are no backchannel: no better.
        assert_eq!(words.coughs_clicks, none.coughs_clicks);
    }
}

/// Asserts that `hybrid`'s frame F1 in `condition` is at most `slack` under Silero's.
fn f1_near_silero(corpus: &Corpus, condition: &Condition, slack: f64) {
    let hybrid = turns::run_condition(corpus, "hybrid", condition).unwrap();
    let silero = turns::run_condition(corpus, "silero", condition).unwrap();
    assert!(
        hybrid.f1 >= silero.f1 - slack,
        "{}: {} vs {}",
        hybrid.condition,
        hybrid.f1,
        silero.f1
    );
}

/// Stationary noise (hiss, pink): Silero's verdict holds the caller's soft word ends the level
/// stage drops. Before, `hybrid` scored F1 0.875 in pink noise at 10 dB (Silero 0.927) and
/// line hiss at 10 dB cut 17 of 18 sentences at their 600 ms inner pause (Silero 4).
#[test]
fn on_stationary_noise_silero_keeps_the_soft_ends_of_words() {
    let corpus = corpus();
    f1_near_silero(&corpus, &noisy("pink", 10.0), 0.01);
    let line = turns::run_condition(&corpus, "hybrid", &noisy("line", 10.0)).unwrap();
    let (pause, cut, of) = line.pause_cuts[1];
    assert_eq!((pause, of), (600, 18));
    assert!(cut <= 8, "{:?}", line.pause_cuts);
    assert!(line.f1 >= 0.9, "{}", line.f1);
    // Line noise's crackle sounds like speech to Silero now and then: the line must still
    // count as stationary. With `STATIONARY_SHARE` at 0.25, 0.815 here (Silero 0.918); with
    // a 400 ms `STATIONARY_HOLD_FRAMES`, 0.907.
    f1_near_silero(&corpus, &noisy("line", 5.0), 0.005);
}

/// A cough or a click reaches the caller's level for a frame or two and webrtc-vad hears
/// voice in most bursts: when the fast onset still counted alone in the hold after it, the
/// burst's tail carried the run on until it barged in (13 of 20 coughs and clicks cut the
/// agent in babble at 10 dB, and pink noise at 5 dB gave 11.8 false barge-ins per minute and
/// `clear` p90 ∞, 23 of 26 real barge-ins cut). Real barge-ins must still cut it: all of them
/// in babble, nine in ten in pink noise at 5 dB (28 of 29), within 150 ms p90.
#[test]
fn coughs_clicks_and_noise_bursts_do_not_interrupt_on_a_noisy_line() {
    let corpus = corpus();
    let babble = turns::run_condition(&corpus, "hybrid", &noisy("babble", 10.0)).unwrap();
    let (cut, of) = babble.coughs_clicks;
    assert!(of >= 16 && cut * 5 <= of, "{babble:?}");
    assert_eq!(babble.barge_ins.0, babble.barge_ins.1, "{babble:?}");
    let pink = turns::run_condition(&corpus, "hybrid", &noisy("pink", 5.0)).unwrap();
    assert!(pink.false_barge_ins_per_min <= 5.0, "{pink:?}");
    let (cut, of) = pink.barge_ins;
    assert!(cut * 10 >= of * 9, "{pink:?}");
    assert!(pink.clear_p90_ms.is_some_and(|ms| ms <= 150), "{pink:?}");
}
