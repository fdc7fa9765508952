//! False interruptions, in virtual time, on real speech: a caller's short acknowledgement over
//! the agent only holds its audio (`clear`, then it plays on from where the caller stopped
//! hearing, nothing lost, the agent never told) when `backchannel_max_ms` is set; a real
//! barge-in is confirmed once the caller's voice is speech, with the `clear`'s timing; and
//! with `resume_after_ms` = 0 the first decision cuts at once, as before. With an agent that
//! knows a backchannel by its words (`Agent::checks_backchannels`), a short turn over the
//! hold waits for its verdict: a backchannel plays on, a short "No!" interrupts, and no
//! verdict in time (or the caller speaking again) lets the turn stand.

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
    /// The turns it was asked to check, and the turns handed over, with their times.
    checked: Vec<(Instant, UserTurn)>,
    handed: Vec<UserTurn>,
}

/// How [`Speaker`] answers a word check (`None`: it does not check words).
#[derive(Clone, Copy)]
enum Words {
    /// `BackchannelVerdict` after this many ms.
    After(u64, bool),
    /// Never answers.
    Never,
    /// Cuts its own audio instead ([`Action::Clear`], as for an answering machine's beep).
    Clear,
}

struct Speaker(Rc<RefCell<Told>>, Option<Words>, Option<(Instant, bool)>);

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
    fn on_user_turn(&mut self, _: Instant, turn: UserTurn, _: &mut Vec<Action>) {
        let mut t = self.0.borrow_mut();
        t.turns += 1;
        t.handed.push(turn);
    }
    fn on_barge_in(&mut self, _: Instant, heard: &Interrupted, _: &mut Vec<Action>) {
        self.0.borrow_mut().barge_ins.push(heard.clone());
    }
    fn checks_backchannels(&self) -> bool {
        self.1.is_some()
    }
    fn on_backchannel_check(&mut self, now: Instant, turn: &UserTurn, out: &mut Vec<Action>) {
        self.0.borrow_mut().checked.push((now, turn.clone()));
        match self.1 {
            Some(Words::After(ms, backchannel)) => {
                let at = now + common::ms(ms);
                self.2 = Some((at, backchannel));
                out.push(Action::WakeAt(at));
            }
            Some(Words::Clear) => out.push(Action::Clear),
            _ => {}
        }
    }
    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some((_, backchannel)) = self.2.filter(|(at, _)| *at <= now) {
            self.2 = None;
            out.push(Action::BackchannelVerdict { backchannel });
        }
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
    judged(cfg, params, None, &caller(speech_ms, total_ms))
}

/// A call whose agent answers word checks as `words` says, fed `audio`.
fn judged(
    cfg: CallConfig,
    params: &[(&str, &str)],
    words: Option<Words>,
    audio: &[u8],
) -> (TestCall, Rc<RefCell<Told>>) {
    let told = Rc::new(RefCell::new(Told::default()));
    let mut c = TestCall::new(cfg, Box::new(Speaker(told.clone(), words, None)), SID);
    c.start_stream(params);
    c.feed_audio(audio, 160);
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
    assert_eq!(resumed(&c), [true], "resumed as a backchannel");
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

fn resumed(c: &TestCall) -> Vec<bool> {
    c.pick(|_, e| match e {
        Event::PlaybackResumed { backchannel, .. } => Some(*backchannel),
        _ => None,
    })
}

#[test]
fn a_short_turn_over_the_hold_waits_for_the_agents_word_check() {
    // 400 ms of speech over the agent, the duration rule off: the agent's words decide.
    let cfg = CallConfig::default();
    assert_eq!(cfg.turn.backchannel_max_ms, 0);
    let audio = caller(400, 6_000);

    // "Uh-huh": the answer plays on from what was heard, no turn, no barge-in.
    let (c, told) = judged(cfg, &[], Some(Words::After(300, true)), &audio);
    assert_eq!(clears(&c).len(), 1);
    assert_eq!(resumed(&c), [true]);
    assert!(c.barge_ins().is_empty());
    let t = told.borrow();
    assert_eq!(t.checked.len(), 1);
    assert!(t.barge_ins.is_empty() && t.handed.is_empty());
    let discarded = c.pick(|_, e| matches!(e, Event::UserSpeechDiscarded { .. }).then_some(()));
    assert_eq!(discarded.len(), 1, "a backchannel is not a turn");
    let heard: u64 = c.phone.bursts().iter().map(|b| b.audio_ms).sum();
    assert!(
        (ANSWER_MS..=ANSWER_MS + 300).contains(&heard),
        "heard {heard} ms"
    );
    // Held until the verdict: the agent's audio came back 300 ms after the check, not before.
    let (asked, _) = t.checked[0];
    let back = c.pick(|_, e| match e {
        Event::PlaybackResumed { at, .. } => Some(*at),
        _ => None,
    });
    assert_eq!(back[0].duration_since(asked).as_millis(), 300);
    drop(t);

    // "No!": the barge-in is confirmed and the same turn handed over.
    let (c, told) = judged(cfg, &[], Some(Words::After(300, false)), &audio);
    assert!(resumed(&c).is_empty());
    let bis = c.barge_ins();
    assert_eq!(bis.len(), 1);
    assert!(
        bis[0].delay_ms() <= 100,
        "the clear's timing: {}",
        bis[0].delay_ms()
    );
    let t = told.borrow();
    assert_eq!(t.barge_ins.len(), 1);
    assert_eq!(
        t.handed,
        [t.checked[0].1.clone()],
        "the checked turn, as it was"
    );
    let ended = c.pick(|_, e| match e {
        Event::UserTurnEnded {
            at, speech_end_at, ..
        } => Some((*at, *speech_end_at)),
        _ => None,
    });
    assert_eq!(ended.len(), 1);
    // Its end-of-turn latency counts from the end of the caller's voice, check included.
    let waited = ended[0].0.duration_since(ended[0].1).as_millis();
    assert!((900..=1_100).contains(&waited), "{waited} ms");
}

#[test]
fn a_word_check_without_an_answer_lets_the_turn_stand() {
    let cfg = CallConfig::default();
    let (c, told) = judged(cfg, &[], Some(Words::Never), &caller(400, 6_000));
    assert!(resumed(&c).is_empty());
    assert_eq!(c.barge_ins().len(), 1);
    let t = told.borrow();
    assert_eq!((t.checked.len(), t.handed.len()), (1, 1));
    let ended = c.pick(|_, e| match e {
        Event::UserTurnEnded { at, .. } => Some(*at),
        _ => None,
    });
    let waited = ended[0].duration_since(t.checked[0].0).as_millis() as u32;
    assert_eq!(
        waited, cfg.turn.resume_after_ms,
        "resume_after_ms after the question"
    );
}

#[test]
fn speaking_again_before_the_verdict_makes_the_first_words_a_turn() {
    // 400 ms of speech, 700 ms of line noise, then 2 s more, all over the agent; the agent
    // would answer only after 1.5 s.
    let first = caller(400, 2_600);
    let more = &MULTI[8 * 1000..8 * 3000];
    let mut audio = first;
    audio.extend_from_slice(more);
    audio.extend_from_slice(&caller(0, 3_000));
    let cfg = CallConfig::default();
    let (c, told) = judged(cfg, &[], Some(Words::After(1_500, true)), &audio);
    let t = told.borrow();
    assert_eq!(t.checked.len(), 1);
    assert_eq!(t.handed.len(), 2, "the first words, then the second turn");
    assert_eq!(t.handed[0], t.checked[0].1);
    assert_eq!(t.barge_ins.len(), 1);
    assert!(resumed(&c).is_empty(), "the late verdict changes nothing");
}

#[test]
fn long_speech_over_the_hold_is_confirmed_without_a_check() {
    let cfg = CallConfig::default();
    let (c, told) = judged(
        cfg,
        &[],
        Some(Words::After(300, true)),
        &caller(2_500, 6_000),
    );
    let t = told.borrow();
    assert!(t.checked.is_empty());
    assert_eq!((t.barge_ins.len(), t.handed.len()), (1, 1));
    // Confirmed once the voice spanned `backchannel_check_ms`, not at the turn's end.
    let bis = c.barge_ins();
    let confirmed_after = bis[0].at.duration_since(clears(&c)[0]).as_millis() as u32;
    let want = cfg.turn.backchannel_check_ms;
    assert!(
        confirmed_after + 100 >= want && confirmed_after <= want + 200,
        "{confirmed_after} ms"
    );
    // With the check off (the call's parameter), the duration rule confirms it sooner.
    let (c, _) = judged(
        cfg,
        &[("hark_backchannel_check_ms", "0")],
        Some(Words::After(300, true)),
        &caller(400, 6_000),
    );
    assert_eq!(c.barge_ins().len(), 1);
    assert!(resumed(&c).is_empty());
}

#[test]
fn a_hold_whose_time_runs_out_in_the_silence_before_the_turn_ends_waits_for_its_check() {
    // A 2 s end-of-turn silence (as an end-of-turn model's "unfinished" wait): the hold's
    // 1.5 s run out while the caller is silent, before their 400 ms turn ends. It neither plays
    // on nor cuts then: the turn's end asks for the words.
    let cfg = CallConfig::default();
    let audio = caller(400, 7_000);
    let (c, told) = judged(
        cfg,
        &[("hark_stop_ms", "2000")],
        Some(Words::After(300, true)),
        &audio,
    );
    let t = told.borrow();
    assert_eq!(t.checked.len(), 1, "asked at the turn's end");
    assert!(t.barge_ins.is_empty() && t.handed.is_empty());
    assert_eq!(resumed(&c), [true], "resumed once, as a backchannel");
    let paused = c.pick(|_, e| match e {
        Event::PlaybackPaused { at, .. } => Some(*at),
        _ => None,
    });
    let held = t.checked[0].0.duration_since(paused[0]).as_millis();
    assert!(held > 2_000, "held {held} ms, past resume_after_ms");
}

#[test]
fn the_agent_clearing_its_audio_during_a_word_check_keeps_the_callers_turn() {
    let cfg = CallConfig::default();
    let (c, told) = judged(cfg, &[], Some(Words::Clear), &caller(400, 6_000));
    let t = told.borrow();
    assert_eq!(t.checked.len(), 1);
    assert_eq!(
        t.handed,
        [t.checked[0].1.clone()],
        "the words waiting were handed over"
    );
    assert_eq!(t.barge_ins.len(), 1, "the agent heard its own clear");
    assert!(c.barge_ins().is_empty(), "not the caller's barge-in");
    assert!(resumed(&c).is_empty());
}
