//! False interruptions, in virtual time, on real speech: a caller's short acknowledgement over
//! the agent only holds its audio (`clear`, then it plays on from where the caller stopped
//! hearing, nothing lost, the agent never told) when `backchannel_max_ms` is set; a real
//! barge-in is confirmed once the caller's voice is speech, with the `clear`'s timing; and
//! with `resume_after_ms` = 0 the first decision cuts at once, as before.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::Instant;

use common::{TestCall, fixture};
use hark_engine::agent::{Action, Agent, AgentNeeds, CallInfo, UserTurn};
use hark_engine::playout::{AgentAudio, Interrupted, UtteranceId};
use hark_engine::twilio::Outbound;
use hark_engine::{CallConfig, Event};

const SID: &str = "MZ00000000000000000000000000000007";

/// The multi-turn session's caller audio (μ-law 8 kHz; speech A at 1000–5100 ms).
static MULTI: LazyLock<Vec<u8>> =
    LazyLock::new(|| std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap());

/// Agent audio: 8 s of a μ-law buzz, one utterance at the start.
const ANSWER_MS: u64 = 8_000;

/// What the agent was told.
#[derive(Default)]
struct Told {
    barge_ins: Vec<Interrupted>,
    turns: u32,
}

struct Speaker(Rc<RefCell<Told>>);

impl Agent for Speaker {
    fn name(&self) -> &'static str {
        "speaker"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: false,
            streaming_audio: false,
        }
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, out: &mut Vec<Action>) {
        let pcm: Vec<i16> = (0..8 * ANSWER_MS as usize)
            .map(|i| ((i as f64 * 0.3).sin() * 3000.0) as i16)
            .collect();
        let mut ulaw = vec![0u8; pcm.len()];
        hark_codecs::mulaw::encode(&pcm, &mut ulaw);
        out.push(Action::Play {
            id: UtteranceId(1),
            audio: AgentAudio::Mulaw(ulaw),
            text: Some("one two three four five six seven eight".into()),
        });
        out.push(Action::Finish(UtteranceId(1)));
    }
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {
        self.0.borrow_mut().turns += 1;
    }
    fn on_barge_in(&mut self, _: Instant, heard: &Interrupted, _: &mut Vec<Action>) {
        self.0.borrow_mut().barge_ins.push(heard.clone());
    }
}

/// Line noise (the fixture's first second), then `speech_ms` of caller speech A starting at
/// 1,500 ms of the call, then line noise until `total_ms`.
fn caller(speech_ms: u64, total_ms: u64) -> Vec<u8> {
    let a = &MULTI[8 * 1000..8 * (1000 + speech_ms as usize)];
    let noise = &MULTI[..8 * 1000];
    let mut out = Vec::new();
    while (out.len() as u64) < 8 * 1500 {
        out.extend_from_slice(noise);
    }
    out.truncate(8 * 1500);
    out.extend_from_slice(a);
    while (out.len() as u64) < 8 * total_ms {
        out.extend_from_slice(noise);
    }
    out.truncate(8 * total_ms as usize);
    out
}

fn call(cfg: CallConfig, speech_ms: u64, total_ms: u64) -> (TestCall, Rc<RefCell<Told>>) {
    call_with(cfg, &[], speech_ms, total_ms)
}

fn call_with(
    cfg: CallConfig,
    params: &[(&str, &str)],
    speech_ms: u64,
    total_ms: u64,
) -> (TestCall, Rc<RefCell<Told>>) {
    let told = Rc::new(RefCell::new(Told::default()));
    let mut c = TestCall::new(cfg, Box::new(Speaker(told.clone())), SID);
    c.start_stream(params);
    c.feed_audio(&caller(speech_ms, total_ms), 160);
    let end = c.now + common::ms(ANSWER_MS);
    c.advance_to(end);
    (c, told)
}

fn clears(c: &TestCall) -> Vec<Instant> {
    c.sent
        .iter()
        .filter(|(_, m)| matches!(m, Outbound::Clear { .. }))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn a_backchannel_holds_the_answer_and_it_plays_on_from_what_was_heard() {
    // 400 ms of real speech over the agent: "uh-huh" length.
    let mut cfg = CallConfig::default();
    cfg.turn.backchannel_max_ms = 700;
    let (c, told) = call(cfg, 400, 6_000);
    assert_eq!(clears(&c).len(), 1, "the answer is held at once");
    let resumed: Vec<bool> = c.pick(|_, e| match e {
        Event::PlaybackResumed { backchannel, .. } => Some(*backchannel),
        _ => None,
    });
    assert_eq!(resumed, [true], "resumed as a backchannel");
    assert!(c.barge_ins().is_empty());
    assert!(
        told.borrow().barge_ins.is_empty(),
        "the agent never learns of it"
    );
    assert_eq!(told.borrow().turns, 0, "a backchannel is not a turn");
    // Everything the agent said reached the caller: what was cleared unheard was sent again.
    let heard: u64 = c.phone.bursts().iter().map(|b| b.audio_ms).sum();
    assert!(heard >= ANSWER_MS, "heard {heard} of {ANSWER_MS} ms");
    // At most the unconfirmed audio (lead + one mark interval) is heard twice.
    assert!(heard <= ANSWER_MS + 300, "heard {heard} ms");
    assert_eq!(c.phone.bursts().len(), 2, "{:?}", c.phone.bursts());
    let played: Vec<u64> = c.pick(|_, e| match e {
        Event::UtterancePlayed { heard_ms, .. } => Some(*heard_ms),
        _ => None,
    });
    assert_eq!(played, [ANSWER_MS]);
}

#[test]
fn a_real_barge_in_is_confirmed_with_the_clears_timing() {
    let cfg = CallConfig::default();
    let (c, told) = call(cfg, 2_500, 6_000);
    let clears = clears(&c);
    assert_eq!(clears.len(), 1);
    let bis = c.barge_ins();
    assert_eq!(bis.len(), 1);
    let bi = &bis[0];
    // Decided (and cleared) within 100 ms of the first voiced frame; confirmed once the
    // caller's voice spanned `min_utterance_ms` (no backchannel length set).
    assert!(bi.delay_ms() <= 100, "{}", bi.delay_ms());
    let confirmed_after = bi.at.duration_since(clears[0]).as_millis() as u64;
    let want = cfg.turn.min_utterance_ms as u64;
    assert!(
        confirmed_after + 100 >= want && confirmed_after <= want + 200,
        "confirmed {confirmed_after} ms after the clear"
    );
    let t = told.borrow();
    assert_eq!(t.barge_ins.len(), 1);
    // What was heard stops at the clear, not at the confirmation.
    let heard = t.barge_ins[0].heard_ms;
    let clear_ms = c.at(clears[0]);
    assert!(
        heard <= clear_ms,
        "heard {heard} ms, clear at {clear_ms} ms"
    );
    assert_eq!(t.turns, 1);
    assert!(
        c.pick(|_, e| matches!(e, Event::PlaybackResumed { .. }).then_some(()))
            .is_empty()
    );
}

#[test]
fn without_the_hold_the_first_decision_cuts_at_once() {
    let mut cfg = CallConfig::default();
    cfg.turn.resume_after_ms = 0;
    cfg.turn.backchannel_max_ms = 700;
    let (c, told) = call(cfg, 400, 6_000);
    assert_eq!(clears(&c).len(), 1);
    let bis = c.barge_ins();
    assert_eq!(bis.len(), 1);
    assert_eq!(clears(&c)[0], bis[0].at);
    assert_eq!(told.borrow().barge_ins.len(), 1);
    assert!(
        c.pick(|_, e| matches!(e, Event::PlaybackPaused { .. }).then_some(()))
            .is_empty()
    );
}

#[test]
fn a_calls_own_parameters_set_its_turn_taking() {
    // The server's default holds backchannels off; this call's TwiML turns them on, and
    // misspells one setting, which is counted and ignored.
    let (c, told) = call_with(
        CallConfig::default(),
        &[
            ("hark_backchannel_max_ms", "700"),
            ("hark_stop_ms", "six hundred"),
            ("payerId", "p-1"),
        ],
        400,
        6_000,
    );
    assert!(told.borrow().barge_ins.is_empty(), "held, then played on");
    assert_eq!(told.borrow().turns, 0);
    let bad: Vec<String> = c.pick(|_, e| match e {
        Event::Malformed { kind, detail } if kind.as_str() == "bad_parameter" => {
            Some(detail.clone())
        }
        _ => None,
    });
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("hark_stop_ms"), "{bad:?}");
    // Without the parameter the same speech is a turn that cuts the answer.
    let (_, told) = call(CallConfig::default(), 400, 6_000);
    assert_eq!(told.borrow().barge_ins.len(), 1);
}
