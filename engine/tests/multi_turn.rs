//! The multi-turn real-speech session through the echo agent, in virtual time: turns, the
//! barge-in (clear within budget, nothing of the interrupted utterance after it, heard = audio
//! before the last mark echoed before the clear), and valid Twilio output throughout.

mod common;

use std::time::Duration;

use common::*;
use hark_engine::twilio::Outbound;
use hark_engine::{CallConfig, EchoAgent, Event};

/// Turn starts must match the annotation within this (4 frames).
const TOLERANCE_MS: i64 = 80;
/// webrtc-vad keeps calling frames voiced for a little while after speech stops (its
/// hangover), so detected ends may be this much later than the annotated ones, never earlier
/// than `TOLERANCE_MS` before.
const END_LATE_MS: i64 = 160;

#[test]
fn turns_match_the_annotation() {
    let s = load("multi-turn");
    let run = run(
        &s.lines,
        CallConfig::default(),
        Box::new(EchoAgent::new()),
        &s.stream_sid,
    );
    let turns = run.turns();
    let segs = segments(&s);
    eprintln!(
        "turns {turns:?}\nsegments {:?}",
        segs.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>()
    );
    assert_eq!(turns.len(), segs.len(), "one turn per annotated utterance");
    for ((ts, te), (ss, se, _, _)) in turns.iter().zip(&segs) {
        assert!(
            (*ts as i64 - *ss as i64).abs() <= TOLERANCE_MS,
            "start {ts} vs {ss}"
        );
        let d = *te as i64 - *se as i64;
        assert!(
            (-TOLERANCE_MS..=END_LATE_MS).contains(&d),
            "end {te} vs {se}"
        );
    }
    assert!(run.closed().is_some(), "stop closes the stream");
    assert_eq!(run.call.stats().malformed_total(), 0);
    assert_eq!(run.call.stats().ignored_fields, 0);
}

#[test]
fn barge_in_clears_within_budget_and_keeps_only_what_was_heard() {
    let s = load("multi-turn");
    let run = run(
        &s.lines,
        CallConfig::default(),
        Box::new(EchoAgent::new()),
        &s.stream_sid,
    );
    let segs = segments(&s);
    let barge_seg = segs.iter().find(|g| g.2).expect("annotated barge-in");

    let bis = run.barge_ins();
    assert_eq!(bis.len(), 1, "exactly one barge-in: {bis:?}");
    let bi = &bis[0];
    eprintln!(
        "barge-in: speech {} ms, decided {} ms, delay {} ms, heard {} of {} ms sent",
        bi.speech_start_ms,
        bi.decided_ms,
        bi.delay_ms(),
        bi.interrupted.heard_ms,
        bi.interrupted.sent_ms
    );
    assert!((bi.speech_start_ms as i64 - barge_seg.0 as i64).abs() <= TOLERANCE_MS);
    // Budget: clear within 100 ms of the first voiced frame (media time).
    assert!(bi.delay_ms() <= 100, "barge-in delay {} ms", bi.delay_ms());

    // The clear went out at the barge-in, and the wall-clock delay from the first voiced
    // frame's arrival agrees.
    let clear_at = run
        .sent
        .iter()
        .find(|(_, m)| matches!(m, Outbound::Clear { .. }))
        .map(|(t, _)| *t)
        .expect("a clear was sent");
    // The clear went out when the barge-in was first decided (the answer held); the barge-in
    // was confirmed once the caller had spoken `backchannel_max_ms`, with the hold's timing.
    let (held_at, held_decided) = run
        .events
        .iter()
        .find_map(|(_, e)| match e {
            Event::PlaybackPaused { at, decided_ms, .. } => Some((*at, *decided_ms)),
            _ => None,
        })
        .expect("the answer was held first");
    assert_eq!(clear_at, held_at);
    assert_eq!(bi.decided_ms, held_decided);
    assert!(bi.at >= held_at);
    let first_voiced_arrival = run.t0 + Duration::from_millis(bi.speech_start_ms + 20);
    let wall = clear_at.duration_since(first_voiced_arrival);
    assert!(
        wall <= Duration::from_millis(100),
        "clear {wall:?} after the first voiced frame arrived"
    );

    // No media for the interrupted utterance after the clear: the next media belongs to the
    // echo of the barge-in turn, which starts only after that turn ended.
    let next_turn_end = run
        .events
        .iter()
        .find_map(|(t, e)| match e {
            Event::UserTurnEnded { start_ms, .. }
                if (*start_ms as i64 - barge_seg.0 as i64).abs() <= TOLERANCE_MS =>
            {
                Some(*t)
            }
            _ => None,
        })
        .expect("the barge-in speech became a turn");
    let media_after_clear: Vec<_> = run
        .sent
        .iter()
        .filter(|(t, m)| {
            *t >= clear_at && *t < next_turn_end && matches!(m, Outbound::Media { .. })
        })
        .collect();
    assert!(
        media_after_clear.is_empty(),
        "{} media messages after the clear",
        media_after_clear.len()
    );

    // heard = audio sent before the last mark echoed before the clear (same utterance).
    let last_echo_before_clear = run
        .echoed
        .iter()
        .filter(|(t, _)| *t < clear_at)
        .map(|(_, n)| n.clone())
        .next_back()
        .expect("some marks were echoed before the clear");
    // Walk the messages of the interrupted utterance: it started with the first media after the
    // previous turn ended.
    let utt_begin = run
        .events
        .iter()
        .find_map(|(t, e)| match e {
            Event::AgentAudioStarted { id, .. } if *id == bi.interrupted.id => Some(*t),
            _ => None,
        })
        .unwrap();
    let mut bytes = 0u64;
    let mut heard_expected = None;
    for (t, m) in &run.sent {
        if *t < utt_begin || *t >= clear_at {
            continue;
        }
        match m {
            Outbound::Media { mulaw, .. } => bytes += mulaw.len() as u64,
            Outbound::Mark { name, .. } => {
                if *name == last_echo_before_clear {
                    heard_expected = Some(bytes / 8);
                }
            }
            Outbound::Clear { .. } => {}
        }
    }
    assert_eq!(Some(bi.interrupted.heard_ms), heard_expected);
    assert!(bi.interrupted.heard_ms > 0 && bi.interrupted.heard_ms < bi.interrupted.produced_ms);
    // The echo's text is one word for the whole utterance: a partly heard utterance keeps none
    // of it (word-level cut; see the playout unit tests for multi-word text).
    assert_eq!(bi.interrupted.heard_text.as_deref(), Some(""));
    // At most lead_ms (200) + one frame was queued at Twilio when the clear came.
    assert!(
        run.phone.stats().cleared_ms <= 220,
        "cleared {} ms",
        run.phone.stats().cleared_ms
    );
}

#[test]
fn every_outbound_message_is_valid_twilio_json_for_this_stream() {
    let s = load("multi-turn");
    let run = run(
        &s.lines,
        CallConfig::default(),
        Box::new(EchoAgent::new()),
        &s.stream_sid,
    );
    assert!(
        run.phone.stats().errors.is_empty(),
        "{:?}",
        run.phone.stats().errors
    );
    for (_, m) in &run.sent {
        let sid = match m {
            Outbound::Media { stream_sid, .. }
            | Outbound::Mark { stream_sid, .. }
            | Outbound::Clear { stream_sid } => stream_sid,
        };
        assert_eq!(sid, &s.stream_sid);
    }
    let st = run.call.stats();
    assert!(st.playout.frames_sent > 100);
    // Every mark sent was echoed and matched, and the phone saw the same numbers.
    assert_eq!(st.playout.marks_sent, st.playout.marks_echoed);
    assert_eq!(run.phone.stats().marks, st.playout.marks_sent);
    assert_eq!(st.playout.unknown_marks, 0);
    // Echoes of the three uninterrupted turns played completely, the interrupted one did not.
    let played: Vec<_> = run
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::UtterancePlayed { .. }))
        .collect();
    assert_eq!(played.len(), 3);
    let bursts = run.phone.bursts();
    eprintln!("bursts at the phone: {bursts:?}");
    assert_eq!(bursts.iter().filter(|b| b.interrupted).count(), 1);
}

#[test]
fn pacing_keeps_at_most_the_lead_queued_at_twilio() {
    let s = load("multi-turn");
    let cfg = CallConfig::default();
    let run = run(&s.lines, cfg, Box::new(EchoAgent::new()), &s.stream_sid);
    // Replay the send log against real-time playback: queued audio never exceeds the lead.
    let mut play_end = run.t0;
    let mut max_q = Duration::ZERO;
    for (t, m) in &run.sent {
        match m {
            Outbound::Media { mulaw, .. } => {
                play_end = play_end.max(*t) + Duration::from_micros(mulaw.len() as u64 * 125);
                max_q = max_q.max(play_end - *t);
            }
            Outbound::Clear { .. } => play_end = *t,
            _ => {}
        }
    }
    assert!(
        max_q <= Duration::from_millis(cfg.playout.lead_ms as u64),
        "max queued {max_q:?}"
    );
    assert!(
        max_q >= Duration::from_millis(cfg.playout.lead_ms as u64 - 20),
        "lead not used: {max_q:?}"
    );
}

#[test]
fn voice_to_voice_latency_is_endpointing_plus_nothing() {
    let s = load("multi-turn");
    let run = run(
        &s.lines,
        CallConfig::default(),
        Box::new(EchoAgent::new()),
        &s.stream_sid,
    );
    let lat: Vec<Duration> = run
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::AgentAudioStarted {
                since_user_end: Some(d),
                ..
            } => Some(*d),
            _ => None,
        })
        .collect();
    eprintln!("engine voice-to-voice (last voiced frame arrival -> first media sent): {lat:?}");
    assert_eq!(lat.len(), 4);
    for d in lat {
        // stop_ms (600) of silence, decided on the frame that completes it; the echo agent adds
        // nothing.
        assert!(
            d >= Duration::from_millis(600) && d <= Duration::from_millis(620),
            "{d:?}"
        );
    }
}
