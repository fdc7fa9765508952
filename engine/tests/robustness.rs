//! Bad and unexpected input from Twilio, in virtual time: malformed JSON, bad base64, empty and
//! odd-sized payloads, `media` before `start`, a second `start`, anything after `stop`, a 1 MB
//! message, binary frames, unknown events, extra fields, unknown marks, a wrong `streamSid`.
//! Each is counted under the right [`Malformed`] kind (or counter), reported as an
//! [`Event::Malformed`], and the call goes on: real speech fed afterwards still makes a turn and
//! a barge-in. After `stop` the call ends cleanly and sends nothing more.
//!
//! A property test then throws random sequences of valid and invalid input at a call and checks
//! that it never panics, always ends a `poll_output` drain with `Timeout`, only ever sends
//! messages Twilio accepts for the right stream, counts every bad input where a model of the
//! protocol says it should, and keeps media time equal to the valid payload bytes / 8 (in whole
//! 20 ms frames).

mod common;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::TestCall;
use hark_codecs::SampleRate;
use hark_engine::agent::Agent;
use hark_engine::twilio::{self, Outbound};
use hark_engine::{CallConfig, CloseReason, EchoAgent, Event, Input, Malformed};
use proptest::prelude::*;

const SID: &str = "MZ00000000000000000000000000000001";
const OTHER_SID: &str = "MZ99999999999999999999999999999999";

/// The multi-turn session's caller audio (μ-law 8 kHz; speech A at 1000–5100 ms, B at
/// 6800–8580 ms, see `fixtures/sessions/multi-turn.json`).
static MULTI: LazyLock<Vec<u8>> =
    LazyLock::new(|| std::fs::read(common::fixture("audio/multi-turn-8k.ulaw")).unwrap());

/// Speech segments of the multi-turn audio, ms (from its annotation).
const SEGMENTS: [(u64, u64); 4] = [(1000, 5100), (6800, 8580), (13360, 15380), (20400, 22520)];

fn start_msg(sid: &str) -> String {
    twilio::inbound::start(1, &common::start(sid, common::CALL_SID, &[("k", "v")]))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A `media` message with a raw (possibly invalid) payload string.
fn media_raw(sid: &str, payload: &str) -> String {
    format!(
        r#"{{"event":"media","sequenceNumber":"5","media":{{"track":"inbound","chunk":"4","timestamp":"60","payload":{}}},"streamSid":{}}}"#,
        json_str(payload),
        json_str(sid)
    )
}

fn malformed_kinds(events: &[Event]) -> Vec<Malformed> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Malformed { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

/// A call driven in virtual time, without a phone: marks are echoed by hand.
type H = TestCall;

impl TestCall {
    fn with(cfg: CallConfig, agent: Box<dyn Agent>) -> H {
        let mut h = TestCall::new(cfg, agent, SID).without_phone();
        h.seq = 1;
        h
    }

    /// The echo agent, nothing received yet.
    fn idle() -> H {
        H::with(CallConfig::default(), Box::new(EchoAgent::new()))
    }

    /// `connected` + `start`.
    fn started() -> H {
        let mut h = H::idle();
        h.text(&twilio::inbound::connected());
        let ev = h.start();
        assert!(matches!(ev.as_slice(), [Event::Started(_)]), "{ev:?}");
        h
    }

    fn start(&mut self) -> Vec<Event> {
        let s = start_msg(&self.sid.clone());
        self.text(&s)
    }

    /// Feeds `text` and asserts that exactly one malformed input of `kind` was counted and
    /// reported, and nothing else changed in the malformed counters.
    fn expect(&mut self, text: &str, kind: Malformed) -> Vec<Event> {
        let before = self.call.stats();
        let ev = self.text(text);
        self.check_counted(&before, &ev, kind, text);
        ev
    }

    fn check_counted(
        &self,
        before: &hark_engine::CallStats,
        ev: &[Event],
        kind: Malformed,
        what: &str,
    ) {
        let after = self.call.stats();
        let what: String = what.chars().take(200).collect();
        assert_eq!(
            after.malformed(kind),
            before.malformed(kind) + 1,
            "{kind:?} not counted for {what:?}: {ev:?}"
        );
        assert_eq!(
            after.malformed_total(),
            before.malformed_total() + 1,
            "other kinds counted for {what:?}: {ev:?}"
        );
        assert_eq!(malformed_kinds(ev), vec![kind], "events for {what:?}");
    }
}

/// Asserts the call still does its job: 7.5 s of the multi-turn audio (utterance A, then B
/// over A's echo) is framed, ends a turn and barges in, with nothing counted as malformed.
fn assert_still_works(h: &mut H) {
    let before = h.call.stats();
    let ev = h.feed_audio(&MULTI[..7500 * 8], 160);
    let after = h.call.stats();
    assert_eq!(after.frames, before.frames + 375);
    assert_eq!(after.media_messages, before.media_messages + 375);
    assert_eq!(after.malformed_total(), before.malformed_total(), "{ev:?}");
    assert!(
        ev.iter().any(|e| matches!(e, Event::UserTurnEnded { .. })),
        "no turn after bad input"
    );
    assert!(
        ev.iter().any(|e| matches!(e, Event::BargeIn(_))),
        "no barge-in after bad input"
    );
    assert!(
        h.sent
            .iter()
            .any(|(_, m)| matches!(m, Outbound::Clear { .. }))
    );
}

#[test]
fn a_clean_call_counts_nothing_and_works() {
    let mut h = H::started();
    assert_still_works(&mut h);
    let st = h.call.stats();
    assert_eq!(st.malformed_total(), 0);
    assert_eq!(st.ignored_fields, 0);
    assert_eq!(st.unknown_events, 0);
}

#[test]
fn malformed_json_is_counted_and_skipped() {
    let mut h = H::started();
    let valid = h.inbound_media(&MULTI[..160]);
    let cases: Vec<String> = vec![
        "not json".into(),
        String::new(),
        " ".into(),
        "{".into(),
        "[]".into(),
        "null".into(),
        "42".into(),
        "\"media\"".into(),
        // No `event` field.
        "{}".into(),
        r#"{"streamSid":"MZ00000000000000000000000000000001"}"#.into(),
        // `event` of the wrong type.
        r#"{"event":5}"#.into(),
        r#"{"event":{"name":"media"}}"#.into(),
        // Fields of the wrong shape.
        r#"{"event":"media","media":"AAAA"}"#.into(),
        r#"{"event":"media","media":{"payload":17}}"#.into(),
        r#"{"event":"mark","mark":"hark-1"}"#.into(),
        // Truncated and trailing garbage.
        valid[..valid.len() / 2].to_string(),
        valid[..valid.len() - 1].to_string(),
        format!("{valid} x"),
        format!("{valid}{valid}"),
        // A lone surrogate escape.
        r#"{"event":"media","media":{"payload":"\ud800"}}"#.into(),
    ];
    for c in &cases {
        h.expect(c, Malformed::Json);
    }
    assert_eq!(
        h.call.stats().malformed(Malformed::Json),
        cases.len() as u64
    );
    assert_eq!(h.call.stats().frames, 0, "no audio from malformed messages");
    assert_still_works(&mut h);
}

#[test]
fn missing_fields_are_counted() {
    let mut h = H::started();
    for c in [
        r#"{"event":"media","streamSid":"MZ00000000000000000000000000000001"}"#,
        r#"{"event":"media","media":{"track":"inbound","chunk":"1"}}"#,
        r#"{"event":"media","media":null}"#,
        r#"{"event":"mark","mark":{}}"#,
        r#"{"event":"mark"}"#,
        r#"{"event":"dtmf","dtmf":{"track":"inbound_track"}}"#,
        r#"{"event":"start","sequenceNumber":"1"}"#,
    ] {
        h.expect(c, Malformed::MissingField);
    }
    assert_still_works(&mut h);
}

#[test]
fn bad_base64_is_counted_and_the_audio_skipped() {
    let mut h = H::started();
    for p in [
        "!!!!",
        // Twilio pads its base64: unpadded, over-padded or with inner whitespace is invalid.
        "AAA",
        "A===",
        "AA==AA==",
        "AAAA AAAA",
        "AAAA\n",
        "fn3//n58/33+e/96fH1++n5+//x+ff37fvz6_-_-",
        "é",
    ] {
        h.expect(&media_raw(SID, p), Malformed::BadBase64);
    }
    let st = h.call.stats();
    assert_eq!((st.frames, st.media_messages, h.call.media_ms()), (0, 0, 0));
    assert_still_works(&mut h);
}

#[test]
fn empty_payload_is_counted() {
    let mut h = H::started();
    h.expect(&media_raw(SID, ""), Malformed::EmptyPayload);
    let msg = h.inbound_media(&[]);
    h.expect(&msg, Malformed::EmptyPayload);
    assert_eq!(h.call.stats().media_messages, 0);
    assert_still_works(&mut h);
}

#[test]
fn payloads_of_any_size_are_reframed_not_rejected() {
    // 8 s of the multi-turn audio: utterance A, its echo, B barging in over it.
    let audio = &MULTI[..8000 * 8];
    let mut reference: Option<Vec<(u64, u64, bool)>> = None;
    for size in [160, 80, 240, 1, 159, 161, 800, 3, 1000, 4096] {
        let mut h = H::started();
        let ev = h.feed_audio(audio, size);
        let st = h.call.stats();
        assert_eq!(st.malformed_total(), 0, "size {size}");
        assert_eq!(
            st.media_messages,
            audio.len().div_ceil(size) as u64,
            "size {size}"
        );
        assert_eq!(st.frames, audio.len() as u64 / 160, "size {size}");
        assert_eq!(h.call.media_ms(), audio.len() as u64 / 8, "size {size}");
        assert_eq!(st.inbound_ms, h.call.media_ms());
        // Turn-taking works in media time, so the framing does not change its decisions.
        let media_time: Vec<(u64, u64, bool)> = ev
            .iter()
            .filter_map(|e| match e {
                Event::UserSpeechStarted { media_ms, .. } => Some((*media_ms, 0, false)),
                Event::UserTurnEnded {
                    start_ms,
                    end_ms,
                    forced,
                    ..
                } => Some((*start_ms, *end_ms, *forced)),
                Event::UserSpeechDiscarded {
                    start_ms, end_ms, ..
                } => Some((*start_ms, *end_ms, false)),
                Event::BargeIn(b) => Some((b.speech_start_ms, b.decided_ms, true)),
                _ => None,
            })
            .collect();
        let barge_ins = ev.iter().filter(|e| matches!(e, Event::BargeIn(_))).count();
        assert_eq!(barge_ins, 1, "size {size}: {media_time:?}");
        match &reference {
            None => reference = Some(media_time),
            Some(r) => assert_eq!(&media_time, r, "size {size}: differs from 160-byte framing"),
        }
    }
}

#[test]
fn media_time_follows_payload_bytes_in_whole_frames() {
    let mut h = H::started();
    let mut total = 0u64;
    for n in [159usize, 1, 7, 500, 13, 160, 161, 2] {
        let msg = h.inbound_media(&MULTI[total as usize..total as usize + n]);
        h.text(&msg);
        total += n as u64;
        assert_eq!(h.call.stats().frames, total / 160);
        assert_eq!(h.call.media_ms(), total / 160 * 20);
    }
    assert_eq!(h.call.stats().media_messages, 8);
    assert_eq!(h.call.stats().malformed_total(), 0);
}

#[test]
fn media_before_start_is_counted_and_not_heard() {
    let mut h = H::idle();
    h.text(&twilio::inbound::connected());
    let msg = h.inbound_media(&MULTI[..160]);
    h.expect(&msg, Malformed::BeforeStart);
    let msg = twilio::inbound::dtmf(3, SID, "5");
    h.expect(&msg, Malformed::BeforeStart);
    let msg = twilio::inbound::mark(4, SID, "hark-1");
    h.expect(&msg, Malformed::BeforeStart);
    // Before `start` there is no stream to compare with: another SID is still "before start".
    h.expect(
        &media_raw(OTHER_SID, &b64(&[0xFF; 160])),
        Malformed::BeforeStart,
    );
    assert_eq!(h.call.stats().frames, 0);
    assert_eq!(h.call.media_ms(), 0);
    assert!(h.sent.is_empty());
    assert!(h.call.info().is_none());
    // The start comes late; the call then works as usual.
    h.start();
    assert_eq!(h.call.info().unwrap().stream_sid, SID);
    assert_still_works(&mut h);
}

#[test]
fn a_second_start_is_counted_and_ignored() {
    let mut h = H::started();
    h.feed_audio(&MULTI[..1000 * 8], 160);
    let again = start_msg(SID).replace("CA00000000000000000000000000000001", "CAother");
    h.expect(&again, Malformed::SecondStart);
    assert_eq!(
        h.call.info().unwrap().call_sid,
        "CA00000000000000000000000000000001"
    );
    // A second start for another stream is reported as a wrong stream.
    h.expect(&start_msg(OTHER_SID), Malformed::WrongStream);
    assert_eq!(h.call.info().unwrap().stream_sid, SID);
    assert_eq!(h.call.media_ms(), 1000, "media time is not reset");
    // The rest of the multi-turn audio from 1 s: A's turn and B's barge-in still happen.
    let ev = h.feed_audio(&MULTI[1000 * 8..7500 * 8], 160);
    assert!(ev.iter().any(|e| matches!(e, Event::UserTurnEnded { .. })));
    assert!(ev.iter().any(|e| matches!(e, Event::BargeIn(_))));
    assert_eq!(h.call.stats().malformed_total(), 2);
}

#[test]
fn anything_after_stop_is_counted_and_the_call_stays_ended() {
    let mut h = H::started();
    // Get the echo of A playing, then stop in the middle of it.
    h.feed_audio(&MULTI[..6000 * 8], 160);
    assert!(h.call.agent_speaking());
    let sent_before = h.sent.len();
    let ev = h.text(&twilio::inbound::stop(9, SID, "AC1", "CA1"));
    assert!(ev.iter().any(|e| matches!(e, Event::Stopped { .. })));
    assert_eq!(h.closes, vec![CloseReason::Stopped]);
    assert!(h.call.is_stopped());
    assert_eq!(h.timeout, None, "a stopped call asks for no more wake-ups");
    let frames = h.call.stats().frames;

    let media = h.inbound_media(&MULTI[..160]);
    for msg in [
        media.as_str(),
        &twilio::inbound::stop(10, SID, "AC1", "CA1"),
        &start_msg(SID),
        &twilio::inbound::connected(),
        &twilio::inbound::dtmf(11, SID, "1"),
        &twilio::inbound::mark(12, SID, "hark-1"),
        r#"{"event":"telemetry"}"#,
        "not json",
        &"x".repeat(1 << 20),
    ] {
        h.expect(msg, Malformed::AfterStop);
    }
    // The rest of the session: every message counted, none heard.
    let before = h.call.stats();
    let ev = h.feed_audio(&MULTI[6000 * 8..7500 * 8], 160);
    assert_eq!(
        h.call.stats().malformed(Malformed::AfterStop),
        before.malformed(Malformed::AfterStop) + 75
    );
    assert_eq!(malformed_kinds(&ev).len(), 75);
    assert!(ev.iter().all(|e| matches!(e, Event::Malformed { .. })));
    assert_eq!(h.call.stats().frames, frames);
    // Binary frames are still binary; the socket closing and timeouts are no-ops.
    let before = h.call.stats();
    let now = h.now;
    let ev = h.input(Input::TwilioBinary { at: now, len: 3 });
    h.check_counted(&before, &ev, Malformed::Binary, "binary");
    assert!(h.input(Input::TwilioClosed { at: now }).is_empty());
    assert!(
        h.input(Input::Timeout(now + Duration::from_secs(5)))
            .is_empty()
    );
    // Nothing more went to Twilio after the stop and the stream closed once.
    assert_eq!(h.sent.len(), sent_before);
    assert_eq!(h.closes, vec![CloseReason::Stopped]);
}

#[test]
fn a_socket_close_without_stop_ends_the_call_without_a_close_request() {
    let mut h = H::started();
    h.feed_audio(&MULTI[..6000 * 8], 160);
    let now = h.now;
    let ev = h.input(Input::TwilioClosed { at: now });
    assert!(ev.iter().any(|e| matches!(e, Event::Stopped { .. })));
    assert!(h.closes.is_empty(), "the socket is already closed");
    let msg = h.inbound_media(&MULTI[..160]);
    h.expect(&msg, Malformed::AfterStop);
}

#[test]
fn a_one_megabyte_message_is_counted_and_skipped() {
    let mut h = H::started();
    // Valid JSON, a valid payload of 750 KB: too large, not decoded.
    let big = h.inbound_media(&vec![0x7Fu8; 750_000]);
    assert!(big.len() > 1_000_000);
    h.expect(&big, Malformed::TooLarge);
    h.expect(&"{".repeat(1 << 20), Malformed::TooLarge);
    h.expect(&"é".repeat(1 << 19), Malformed::TooLarge);
    assert_eq!(h.call.stats().frames, 0);
    assert_eq!(h.call.media_ms(), 0);
    // Just under the limit (64 KiB): accepted and re-framed (48 000 bytes = 300 frames).
    let msg = h.inbound_media(&MULTI[..48_000]);
    assert!(msg.len() < CallConfig::default().max_message_bytes);
    assert!(malformed_kinds(&h.text(&msg)).is_empty());
    assert_eq!(h.call.stats().frames, 300);
    assert_eq!(h.call.media_ms(), 6000);
    assert_eq!(h.call.stats().malformed_total(), 3);
}

#[test]
fn deeply_nested_json_is_no_stack_overflow() {
    let mut h = H::started();
    // 30 000 levels inside an extra field: skipped without recursion, the audio is used.
    let payload = b64(&MULTI[..160]);
    let deep = format!(
        r#"{{"event":"media","x":{}1{},"media":{{"payload":"{payload}"}},"streamSid":"{SID}"}}"#,
        "[".repeat(30_000),
        "]".repeat(30_000)
    );
    assert!(h.text(&deep).is_empty());
    assert_eq!(h.call.stats().frames, 1);
    assert_eq!(h.call.stats().ignored_fields, 1);
    // Deep nesting where a value is read: the wrong shape.
    let deep = format!(
        r#"{{"event":"media","media":{{"payload":"{payload}","track":{}1{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    h.expect(&deep, Malformed::Json);
    h.expect(&"[".repeat(60_000), Malformed::Json);
    h.expect(&"{\"a\":".repeat(10_000), Malformed::Json);
    assert_still_works(&mut h);
}

#[test]
fn binary_frames_are_counted() {
    let mut h = H::idle();
    let now = h.now;
    let before = h.call.stats();
    let ev = h.input(Input::TwilioBinary { at: now, len: 0 });
    h.check_counted(&before, &ev, Malformed::Binary, "binary before start");
    h.text(&twilio::inbound::connected());
    h.start();
    let before = h.call.stats();
    let ev = h.input(Input::TwilioBinary {
        at: now,
        len: 1 << 20,
    });
    h.check_counted(&before, &ev, Malformed::Binary, "binary");
    assert_still_works(&mut h);
}

#[test]
fn unknown_events_and_extra_fields_are_counted_not_malformed() {
    let mut h = H::started();
    for e in [
        r#"{"event":"telemetry"}"#,
        r#"{"event":"Media","media":{"payload":"AAAA"}}"#,
        r#"{"event":"","sequenceNumber":"3"}"#,
        r#"{"event":"future","streamSid":"MZ00000000000000000000000000000001","future":{"a":[1,2]}}"#,
    ] {
        let ev = h.text(e);
        assert!(ev.is_empty(), "{e}: {ev:?}");
    }
    let st = h.call.stats();
    assert_eq!(st.unknown_events, 4);
    assert_eq!(st.malformed_total(), 0);
    // `future` at the top level is an extra field (`media` is a known one, whatever the event).
    assert_eq!(st.ignored_fields, 1);

    // Extra fields at every level of a `media` message: counted, and the audio still used.
    let payload = b64(&MULTI[..160]);
    let msg = format!(
        r#"{{"event":"media","sequenceNumber":"2","new":true,"media":{{"track":"inbound","chunk":"1","timestamp":"0","payload":"{payload}","volume":0.5,"codec":{{"x":1}}}},"streamSid":"{SID}"}}"#
    );
    let ev = h.text(&msg);
    assert!(ev.is_empty(), "{ev:?}");
    let st = h.call.stats();
    assert_eq!(st.ignored_fields, 4);
    assert_eq!((st.media_messages, st.frames), (1, 1));
    // Extra fields in `start` (at both levels) and `mark`, `dtmf`, `stop` are counted too.
    let mut h = H::idle();
    let start = start_msg(SID).replacen('{', r#"{"extra":1,"#, 2);
    h.text(&start);
    assert_eq!(h.call.stats().ignored_fields, 2);
    assert!(h.call.info().is_some());
    let dtmf = format!(
        r#"{{"event":"dtmf","streamSid":"{SID}","dtmf":{{"track":"inbound_track","digit":"1","duration":"100"}}}}"#
    );
    let ev = h.text(&dtmf);
    assert!(matches!(ev.as_slice(), [Event::Dtmf { .. }]), "{ev:?}");
    assert_eq!(h.call.stats().ignored_fields, 3);
    assert_eq!(h.call.stats().malformed_total(), 0);
    assert_still_works(&mut h);
}

#[test]
fn other_tracks_are_counted_and_skipped() {
    let mut h = H::started();
    let payload = b64(&MULTI[..160]);
    for track in ["outbound", "both", ""] {
        let msg = format!(
            r#"{{"event":"media","media":{{"track":"{track}","payload":"{payload}"}},"streamSid":"{SID}"}}"#
        );
        assert!(h.text(&msg).is_empty());
    }
    let st = h.call.stats();
    assert_eq!((st.other_track, st.frames, st.malformed_total()), (3, 0, 0));
    // No `track` field: taken as inbound.
    let msg = format!(r#"{{"event":"media","media":{{"payload":"{payload}"}}}}"#);
    h.text(&msg);
    assert_eq!(h.call.stats().frames, 1);
}

#[test]
fn unknown_and_repeated_mark_echoes_are_counted() {
    let mut h = H::started();
    h.feed_audio(&MULTI[..6000 * 8], 160);
    let marks: Vec<String> = h
        .sent
        .iter()
        .filter_map(|(_, m)| match m {
            Outbound::Mark { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert!(marks.len() >= 2, "the echo of A sent marks: {marks:?}");
    for name in [
        "my label",
        "",
        "hark-",
        "hark-x",
        "hark-999999",
        "HARK-1",
        "hark-18446744073709551616",
    ] {
        h.expect(
            &twilio::inbound::mark(50, SID, name),
            Malformed::UnknownMark,
        );
    }
    // A real echo is accepted, a second echo of it is not.
    let ev = h.text(&twilio::inbound::mark(60, SID, &marks[0]));
    assert!(malformed_kinds(&ev).is_empty());
    h.expect(
        &twilio::inbound::mark(61, SID, &marks[0]),
        Malformed::UnknownMark,
    );
    let st = h.call.stats();
    assert_eq!(st.playout.unknown_marks, 8);
    assert_eq!(st.playout.marks_echoed, 1);
    assert_eq!(st.malformed(Malformed::UnknownMark), 8);
    // Barge-in on the echo still works.
    let ev = h.feed_audio(&MULTI[6000 * 8..7500 * 8], 160);
    assert!(ev.iter().any(|e| matches!(e, Event::BargeIn(_))));
}

#[test]
fn a_wrong_stream_sid_is_counted_and_the_message_skipped() {
    let mut h = H::started();
    h.expect(
        &media_raw(OTHER_SID, &b64(&MULTI[..160])),
        Malformed::WrongStream,
    );
    assert_eq!(h.call.stats().frames, 0);
    h.expect(
        &twilio::inbound::mark(3, OTHER_SID, "hark-1"),
        Malformed::WrongStream,
    );
    h.expect(
        &twilio::inbound::dtmf(4, OTHER_SID, "1"),
        Malformed::WrongStream,
    );
    h.expect(
        r#"{"event":"telemetry","streamSid":"MZ99999999999999999999999999999999"}"#,
        Malformed::WrongStream,
    );
    // A `stop` for another stream does not stop this one.
    h.expect(
        &twilio::inbound::stop(5, OTHER_SID, "AC1", "CA1"),
        Malformed::WrongStream,
    );
    assert!(!h.call.is_stopped());
    assert!(h.closes.is_empty());
    // The SID is compared exactly (case, whitespace); an escaped form of the same SID matches.
    h.expect(
        &media_raw(&SID.to_lowercase(), &b64(&MULTI[..160])),
        Malformed::WrongStream,
    );
    h.expect(
        &media_raw(&format!("{SID} "), &b64(&MULTI[..160])),
        Malformed::WrongStream,
    );
    let escaped = format!(
        r#"{{"event":"media","media":{{"payload":"{}"}},"streamSid":"\u004d{}"}}"#,
        b64(&MULTI[..160]),
        &SID[1..]
    );
    assert!(malformed_kinds(&h.text(&escaped)).is_empty());
    assert_eq!(h.call.stats().frames, 1);
    assert_eq!(h.call.stats().unknown_events, 0);
    assert_still_works(&mut h);
}

#[test]
fn an_unsupported_media_format_is_counted_and_treated_as_mulaw() {
    let mut h = H::idle();
    let start = start_msg(SID).replace("\"sampleRate\":8000", "\"sampleRate\":16000");
    let ev = h.expect(&start, Malformed::UnsupportedFormat);
    assert!(ev.iter().any(|e| matches!(e, Event::Started(_))));
    assert_still_works(&mut h);
}

#[test]
fn counters_as_numbers_or_junk_do_not_lose_audio() {
    // `sequenceNumber`, `chunk` and `timestamp` are strings on the wire; numbers are accepted
    // and anything else becomes "no counter" without losing the frame (hark does not use them).
    let mut h = H::started();
    let payload = b64(&MULTI[..160]);
    let cases = [
        ("5", "4", "60"),
        ("5", "4", "\"60\""),
        ("\"x\"", "null", "-1"),
        ("1.5", "true", "1e3"),
        ("[]", "[1,\"2\"]", "{\"ms\":60}"),
    ];
    for (seq, chunk, ts) in cases {
        let msg = format!(
            r#"{{"event":"media","sequenceNumber":{seq},"media":{{"track":"inbound","chunk":{chunk},"timestamp":{ts},"payload":"{payload}"}},"streamSid":"{SID}"}}"#
        );
        let ev = h.text(&msg);
        assert!(ev.is_empty(), "{msg}: {ev:?}");
    }
    assert_eq!(h.call.stats().frames, cases.len() as u64);
    assert_eq!(h.call.stats().malformed_total(), 0);
    // What is skipped inside a junk counter shows as ignored fields: 1, "2" and "ms".
    assert_eq!(h.call.stats().ignored_fields, 3);
}

// ---------------------------------------------------------------------------------------------
// Property test.

/// Which `streamSid` a generated message carries.
#[derive(Debug, Clone, Copy)]
enum SidKind {
    Right,
    Wrong,
    Missing,
}

fn sid_kind() -> impl Strategy<Value = SidKind> {
    prop_oneof![
        8 => Just(SidKind::Right),
        1 => Just(SidKind::Wrong),
        1 => Just(SidKind::Missing),
    ]
}

#[derive(Debug, Clone)]
enum Payload {
    /// `len` bytes of the multi-turn audio from `offset`.
    Speech { offset: usize, len: usize },
    /// Random bytes (white noise, often loud).
    Random(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Step {
    Connected,
    /// A `start` (its top-level `streamSid` per `sid`).
    Start {
        sid: SidKind,
    },
    Media {
        payload: Payload,
        sid: SidKind,
        /// 0: "inbound", 1: no track, 2: "outbound", 3: something else.
        track: u8,
        corrupt: bool,
        extra: bool,
        numeric_counters: bool,
    },
    /// One annotated utterance of the multi-turn audio plus 800 ms after it, as 20 ms frames.
    Talk {
        segment: usize,
    },
    /// A mark echo: of a mark hark sent (`echo`, modulo their number) or of `name`.
    Mark {
        echo: Option<usize>,
        name: String,
        sid: SidKind,
    },
    Dtmf {
        digit: String,
        sid: SidKind,
    },
    Stop {
        sid: SidKind,
    },
    Unknown {
        event: String,
        extra: bool,
    },
    /// Text without a `{`: never a JSON object.
    Garbage(String),
    /// A strict prefix of a valid `media` message.
    Truncated {
        cut: usize,
    },
    /// A valid `media` message over `max_message_bytes`.
    Huge,
    Binary(usize),
    /// Time passes; the call gets `Input::Timeout` at the new time.
    Advance(u64),
    /// The call's own timeout fires.
    FireTimeout,
    Closed,
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        3 => (0usize..200_000, 0usize..=1000).prop_map(|(offset, len)| Payload::Speech { offset, len }),
        1 => proptest::collection::vec(any::<u8>(), 0..=800).prop_map(Payload::Random),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // Weights: mostly media and time passing; `stop` and socket closes are rare so that most
    // runs stay live for a while.
    prop_oneof![
        2 => Just(Step::Connected),
        3 => sid_kind().prop_map(|sid| Step::Start { sid }),
        60 => (payload(), sid_kind(), prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)], proptest::bool::weighted(0.1), proptest::bool::weighted(0.1), any::<bool>())
            .prop_map(|(payload, sid, track, corrupt, extra, numeric_counters)| Step::Media { payload, sid, track, corrupt, extra, numeric_counters }),
        9 => (0usize..4).prop_map(|segment| Step::Talk { segment }),
        18 => (proptest::option::weighted(0.7, any::<usize>()), "(hark-)?[0-9a-z]{0,4}", sid_kind())
            .prop_map(|(echo, name, sid)| Step::Mark { echo, name, sid }),
        3 => ("[0-9*#A-D]", sid_kind()).prop_map(|(digit, sid)| Step::Dtmf { digit, sid }),
        1 => sid_kind().prop_map(|sid| Step::Stop { sid }),
        3 => ("[a-z_]{0,10}", any::<bool>())
            .prop_filter("not a known event", |(e, _)| !["connected", "start", "media", "dtmf", "mark", "stop"].contains(&e.as_str()))
            .prop_map(|(event, extra)| Step::Unknown { event, extra }),
        6 => "[^{]{0,64}".prop_map(Step::Garbage),
        6 => (0usize..400).prop_map(|cut| Step::Truncated { cut }),
        1 => Just(Step::Huge),
        2 => (0usize..100_000).prop_map(Step::Binary),
        18 => (0u64..1500).prop_map(Step::Advance),
        18 => Just(Step::FireTimeout),
        1 => Just(Step::Closed),
    ]
}

/// What the protocol says the call must have counted.
#[derive(Debug, Default)]
struct Model {
    started: bool,
    stopped: bool,
    close_expected: bool,
    valid_bytes: u64,
    malformed: [u64; 13],
    unknown_events: u64,
    ignored_fields: u64,
    other_track: u64,
    text_messages: u64,
    /// Marks sent and not yet resolved, in order (as Twilio sees them).
    pending_marks: Vec<String>,
    /// Every mark name sent.
    all_marks: Vec<String>,
}

impl Model {
    fn count(&mut self, kind: Malformed) {
        let i = Malformed::ALL.iter().position(|k| *k == kind).unwrap();
        self.malformed[i] += 1;
    }
}

struct PropRun {
    h: H,
    model: Model,
    max: usize,
    malformed_events: u64,
    closes_seen: usize,
}

impl PropRun {
    fn sid_for(&self, k: SidKind) -> Option<String> {
        match k {
            SidKind::Right => Some(self.h.sid.clone()),
            SidKind::Wrong => Some(format!("{}x", self.h.sid)),
            SidKind::Missing => None,
        }
    }

    /// Sends a text frame and applies the generic checks; `parsed` is what the model does when
    /// the frame is read at all (not after stop, not too large).
    fn text(&mut self, text: &str, parsed: impl FnOnce(&mut Model)) {
        self.model.text_messages += 1;
        if self.model.stopped {
            self.model.count(Malformed::AfterStop);
        } else if text.len() > self.max {
            self.model.count(Malformed::TooLarge);
        } else {
            parsed(&mut self.model);
        }
        let was_stopped = self.h.call.is_stopped();
        let sent_before = self.h.sent.len();
        let ev = self.h.text(text);
        self.after(&ev, was_stopped, sent_before);
    }

    fn after(&mut self, ev: &[Event], was_stopped: bool, sent_before: usize) {
        self.malformed_events += malformed_kinds(ev).len() as u64;
        for (_, m) in &self.h.sent[sent_before..] {
            assert!(!was_stopped, "sent {m:?} after stop");
            assert!(self.model.started, "sent {m:?} before start");
            if let Outbound::Mark { name, .. } = m {
                self.model.pending_marks.push(name.clone());
                self.model.all_marks.push(name.clone());
            }
            if let Outbound::Clear { .. } = m {
                // Twilio echoes every pending mark after a clear; the echoes may come later.
            }
        }
        if self.h.closes.len() > self.closes_seen {
            assert_eq!(self.h.closes.len(), self.closes_seen + 1);
            assert!(self.model.close_expected && !was_stopped);
            self.closes_seen += 1;
        }
    }

    /// The model's view of a message that passed the size and stop checks: `Some(kind)` when
    /// the stream check or the start check rejects it first.
    fn gate(m: &Model, sid: &Option<String>, own: &str, needs_start: bool) -> Option<Malformed> {
        if m.started
            && let Some(s) = sid
            && s != own
        {
            return Some(Malformed::WrongStream);
        }
        if needs_start && !m.started {
            return Some(Malformed::BeforeStart);
        }
        None
    }

    fn step(&mut self, step: &Step) {
        let own = self.h.sid.clone();
        match step {
            Step::Connected => self.text(&twilio::inbound::connected(), |_| {}),
            Step::Start { sid } => {
                let top = self.sid_for(*sid);
                let mut v: serde_json::Value = serde_json::from_str(&start_msg(&own)).unwrap();
                match &top {
                    Some(s) => v["streamSid"] = s.clone().into(),
                    None => {
                        v.as_object_mut().unwrap().remove("streamSid");
                    }
                }
                self.text(&v.to_string(), |m| {
                    if let Some(k) = Self::gate(m, &top, &own, false) {
                        m.count(k);
                    } else if m.started {
                        m.count(Malformed::SecondStart);
                    } else {
                        m.started = true;
                    }
                });
            }
            Step::Media {
                payload,
                sid,
                track,
                corrupt,
                extra,
                numeric_counters,
            } => {
                let bytes: Vec<u8> = match payload {
                    Payload::Speech { offset, len } => {
                        let o = (*offset).min(MULTI.len());
                        MULTI[o..(o + len).min(MULTI.len())].to_vec()
                    }
                    Payload::Random(b) => b.clone(),
                };
                let mut p = b64(&bytes);
                if *corrupt {
                    p.push('*');
                }
                let sid = self.sid_for(*sid);
                let mut media = serde_json::json!({"payload": p});
                match track {
                    0 => media["track"] = "inbound".into(),
                    1 => {}
                    2 => media["track"] = "outbound".into(),
                    _ => media["track"] = "inbound_track".into(),
                }
                if *numeric_counters {
                    media["chunk"] = 3.into();
                    media["timestamp"] = 60.into();
                } else {
                    media["chunk"] = "3".into();
                    media["timestamp"] = "60".into();
                }
                let mut v =
                    serde_json::json!({"event": "media", "sequenceNumber": "7", "media": media});
                if let Some(s) = &sid {
                    v["streamSid"] = s.clone().into();
                }
                if *extra {
                    v["extra"] = serde_json::json!({"a": [1, 2]});
                    v["media"]["volume"] = 1.into();
                }
                let n = bytes.len() as u64;
                self.text(&v.to_string(), |m| {
                    if *extra {
                        m.ignored_fields += 2;
                    }
                    if let Some(k) = Self::gate(m, &sid, &own, true) {
                        m.count(k);
                    } else if *track >= 2 {
                        m.other_track += 1;
                    } else if *corrupt {
                        m.count(Malformed::BadBase64);
                    } else if n == 0 {
                        m.count(Malformed::EmptyPayload);
                    } else {
                        m.valid_bytes += n;
                    }
                });
            }
            Step::Talk { segment } => {
                let (s, e) = SEGMENTS[*segment];
                let audio = &MULTI[(s * 8) as usize..((e + 800) * 8) as usize];
                for frame in audio.chunks(160) {
                    let to = self.h.now + Duration::from_millis(20);
                    self.fire_until(to);
                    let msg = self.h.inbound_media(frame);
                    self.text(&msg, |m| {
                        if !m.started {
                            m.count(Malformed::BeforeStart);
                        } else {
                            m.valid_bytes += 160;
                        }
                    });
                }
            }
            Step::Mark { echo, name, sid } => {
                let name = match echo {
                    Some(i) if !self.model.all_marks.is_empty() => {
                        self.model.all_marks[i % self.model.all_marks.len()].clone()
                    }
                    _ => name.clone(),
                };
                let sid = self.sid_for(*sid);
                let mut v = serde_json::json!({"event": "mark", "sequenceNumber": "9", "mark": {"name": name}});
                if let Some(s) = &sid {
                    v["streamSid"] = s.clone().into();
                }
                self.text(&v.to_string(), |m| {
                    if let Some(k) = Self::gate(m, &sid, &own, true) {
                        m.count(k);
                    } else if let Some(p) = m.pending_marks.iter().position(|x| *x == name) {
                        // An echo resolves this mark and every earlier one.
                        m.pending_marks.drain(..=p);
                    } else {
                        m.count(Malformed::UnknownMark);
                    }
                });
            }
            Step::Dtmf { digit, sid } => {
                let sid = self.sid_for(*sid);
                let mut v = serde_json::json!({"event": "dtmf", "sequenceNumber": "9", "dtmf": {"track": "inbound_track", "digit": digit}});
                if let Some(s) = &sid {
                    v["streamSid"] = s.clone().into();
                }
                self.text(&v.to_string(), |m| {
                    if let Some(k) = Self::gate(m, &sid, &own, true) {
                        m.count(k);
                    }
                });
            }
            Step::Stop { sid } => {
                let sid = self.sid_for(*sid);
                let mut v = serde_json::json!({"event": "stop", "sequenceNumber": "9", "stop": {"accountSid": "AC1", "callSid": "CA1"}});
                if let Some(s) = &sid {
                    v["streamSid"] = s.clone().into();
                }
                self.text(&v.to_string(), |m| {
                    if let Some(k) = Self::gate(m, &sid, &own, false) {
                        m.count(k);
                    } else {
                        m.stopped = true;
                        m.close_expected = true;
                    }
                });
            }
            Step::Unknown { event, extra } => {
                let mut v = serde_json::json!({"event": event, "streamSid": own});
                if *extra {
                    v["x"] = 1.into();
                }
                self.text(&v.to_string(), |m| {
                    if *extra {
                        m.ignored_fields += 1;
                    }
                    m.unknown_events += 1;
                });
            }
            Step::Garbage(s) => self.text(s, |m| m.count(Malformed::Json)),
            Step::Truncated { cut } => {
                let full = media_raw(&own, &b64(&MULTI[..160]));
                let mut cut = (*cut).min(full.len() - 1);
                while !full.is_char_boundary(cut) {
                    cut -= 1;
                }
                self.text(&full[..cut], |m| m.count(Malformed::Json));
            }
            Step::Huge => {
                let big = media_raw(&own, &b64(&vec![0x7F; self.max]));
                self.text(&big, |_| unreachable!("over the limit"));
            }
            Step::Binary(len) => {
                self.model.count(Malformed::Binary);
                let was = self.h.call.is_stopped();
                let n = self.h.sent.len();
                let now = self.h.now;
                let ev = self.h.input(Input::TwilioBinary { at: now, len: *len });
                self.after(&ev, was, n);
            }
            Step::Advance(ms) => {
                let to = self.h.now + Duration::from_millis(*ms);
                self.fire_until(to);
                let was = self.h.call.is_stopped();
                let n = self.h.sent.len();
                let ev = self.h.input(Input::Timeout(to));
                self.after(&ev, was, n);
            }
            Step::FireTimeout => {
                if let Some(t) = self.h.timeout {
                    self.h.now = self.h.now.max(t);
                    let was = self.h.call.is_stopped();
                    let n = self.h.sent.len();
                    let now = self.h.now;
                    let ev = self.h.input(Input::Timeout(now));
                    self.after(&ev, was, n);
                }
            }
            Step::Closed => {
                self.model.stopped = true;
                let was = self.h.call.is_stopped();
                let n = self.h.sent.len();
                let now = self.h.now;
                let ev = self.h.input(Input::TwilioClosed { at: now });
                self.after(&ev, was, n);
            }
        }
    }

    /// Fires the call's timeouts due up to `to` (as a driver would while waiting).
    fn fire_until(&mut self, to: Instant) {
        let mut guard = 0;
        while let Some(t) = self.h.timeout
            && t <= to
        {
            guard += 1;
            assert!(guard < 100_000, "timeouts do not advance");
            self.h.now = self.h.now.max(t);
            let was = self.h.call.is_stopped();
            let n = self.h.sent.len();
            let now = self.h.now;
            let ev = self.h.input(Input::Timeout(now));
            self.after(&ev, was, n);
        }
        self.h.now = self.h.now.max(to);
    }

    fn check(&self) {
        let st = self.h.call.stats();
        let m = &self.model;
        for (i, k) in Malformed::ALL.iter().enumerate() {
            assert_eq!(st.malformed[i], m.malformed[i], "count of {k:?}: {st:?}");
        }
        assert_eq!(self.malformed_events, st.malformed_total());
        assert_eq!(st.messages, m.text_messages);
        assert_eq!(st.unknown_events, m.unknown_events);
        assert_eq!(st.ignored_fields, m.ignored_fields);
        assert_eq!(st.other_track, m.other_track);
        assert_eq!(st.frames, m.valid_bytes / 160);
        assert_eq!(self.h.call.media_ms(), m.valid_bytes / 160 * 20);
        assert_eq!(st.inbound_ms, self.h.call.media_ms());
        assert_eq!(self.h.call.is_stopped(), m.stopped);
        assert_eq!(self.h.closes.len(), usize::from(m.close_expected));
        assert!(st.playout.marks_echoed <= st.playout.marks_sent);
        assert_eq!(st.playout.marks_sent as usize, m.all_marks.len());
    }
}

fn stream_sid() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(SID.to_string()),
        // Any text: quotes, backslashes, control characters, non-ASCII, U+2028.
        1 => "[MZa-f0-9\"\\\\/\u{0}-\u{1f}é\u{2028}😀 ]{0,40}",
    ]
}

proptest! {
    // No regression files: failures print the minimal input to paste into a unit test.
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_input_never_breaks_the_call(
        sid in stream_sid(),
        start_first in proptest::bool::weighted(0.8),
        vad16 in any::<bool>(),
        agent16 in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let cfg = CallConfig {
            vad: hark_engine::config::VadConfig {
                rate: if vad16 { SampleRate::HZ_16000 } else { SampleRate::HZ_8000 },
                ..Default::default()
            },
            agent_rate: if agent16 { SampleRate::HZ_16000 } else { SampleRate::HZ_8000 },
            ..CallConfig::default()
        };
        let mut h = H::with(cfg, Box::new(EchoAgent::new()));
        h.sid = sid;
        let mut run = PropRun { h, model: Model::default(), max: cfg.max_message_bytes, malformed_events: 0, closes_seen: 0 };
        if start_first {
            run.step(&Step::Start { sid: SidKind::Right });
        }
        for s in &steps {
            run.step(s);
        }
        run.check();
    }
}
