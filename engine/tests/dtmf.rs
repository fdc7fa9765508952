//! DTMF: Twilio's `dtmf` messages (`{"event":"dtmf","dtmf":{"track":"inbound_track",
//! "digit":"1"}}`, bidirectional streams only; `shared/reference/twilio.md` §1.2) become
//! [`Event::Dtmf`] and reach the agent through [`Agent::on_dtmf`], in order and with their
//! arrival times; what the agent does in answer (play, hang up, transfer) takes effect. Bad or
//! misplaced `dtmf` messages are counted and never reach the agent.

mod common;

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::TestCall;
use hark_engine::agent::{AgentNeeds, CallInfo, UserTurn};
use hark_engine::playout::Interrupted;
use hark_engine::twilio::{self, Outbound};
use hark_engine::{
    Action, Agent, AgentAudio, CallConfig, CloseReason, Event, Input, Malformed, TransferOutcome,
    UtteranceId,
};

const SID: &str = "MZ00000000000000000000000000000042";

/// Digits the agent saw, with the time it saw them.
type Log = Rc<RefCell<Vec<(Instant, String)>>>;

/// A keypad menu: every key plays a 100 ms beep (μ-law 0x2A), `0` asks for a transfer, `#`
/// hangs up once the beeps have played.
struct Keypad {
    log: Log,
    next: u64,
}

impl Agent for Keypad {
    fn name(&self) -> &'static str {
        "keypad"
    }
    fn needs(&self) -> AgentNeeds {
        AgentNeeds::default()
    }
    fn on_start(&mut self, _: Instant, _: &CallInfo, _: &mut Vec<Action>) {}
    fn on_user_turn(&mut self, _: Instant, _: UserTurn, _: &mut Vec<Action>) {}
    fn on_barge_in(&mut self, _: Instant, _: &Interrupted, _: &mut Vec<Action>) {}
    fn on_dtmf(&mut self, now: Instant, digit: &str, out: &mut Vec<Action>) {
        self.log.borrow_mut().push((now, digit.to_string()));
        self.next += 1;
        let id = UtteranceId(self.next);
        out.push(Action::Play {
            id,
            audio: AgentAudio::Mulaw(vec![0x2A; 800]),
            text: Some(format!("you pressed {digit}")),
        });
        out.push(Action::Finish(id));
        match digit {
            "0" => out.push(Action::Transfer {
                to: "+15550100".into(),
            }),
            "#" => out.push(Action::Hangup {
                reason: "caller pressed #".into(),
            }),
            _ => {}
        }
    }
}

/// A call with the keypad agent, and the digits it saw.
struct H {
    t: TestCall,
    log: Log,
}

impl Deref for H {
    type Target = TestCall;
    fn deref(&self) -> &TestCall {
        &self.t
    }
}

impl DerefMut for H {
    fn deref_mut(&mut self) -> &mut TestCall {
        &mut self.t
    }
}

impl H {
    fn new() -> H {
        let log = Log::default();
        let agent = Keypad {
            log: log.clone(),
            next: 0,
        };
        let mut t = TestCall::new(CallConfig::default(), Box::new(agent), SID);
        t.seq = 1;
        H { t, log }
    }

    fn started() -> H {
        let mut h = H::new();
        h.start_stream(&[]);
        h
    }

    fn dtmf(&mut self, digit: &str) -> Vec<Event> {
        self.seq += 1;
        let msg = twilio::inbound::dtmf(self.seq, SID, digit);
        self.text(&msg)
    }

    fn dtmf_events(&self) -> Vec<(Instant, String)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Dtmf { digit, at } => Some((*at, digit.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn dtmf_becomes_an_event_and_reaches_the_agent_in_order() {
    let mut h = H::started();
    let t0 = h.now;
    let digits = ["1", "2", "*", "9", "A", "D"];
    for (k, d) in digits.iter().enumerate() {
        h.advance_to(t0 + Duration::from_millis(300 * k as u64 + 50));
        let ev = h.dtmf(d);
        assert!(
            ev.contains(&Event::Dtmf {
                digit: d.to_string(),
                at: h.now
            }),
            "{ev:?}"
        );
    }
    let want: Vec<(Instant, String)> = digits
        .iter()
        .enumerate()
        .map(|(k, d)| {
            (
                t0 + Duration::from_millis(300 * k as u64 + 50),
                d.to_string(),
            )
        })
        .collect();
    assert_eq!(h.dtmf_events(), want);
    assert_eq!(
        *h.log.borrow(),
        want,
        "the agent saw the same digits at the same times"
    );
    assert_eq!(h.call.stats().malformed_total(), 0);
    // Each key's answer played completely.
    h.advance_to(t0 + Duration::from_secs(3));
    let played = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::UtterancePlayed { heard_ms: 100, .. }))
        .count();
    assert_eq!(played, digits.len());
    assert_eq!(h.phone.stats().audio_ms, 100 * digits.len() as u64);
    assert!(h.phone.stats().errors.is_empty());
}

#[test]
fn dtmf_while_the_agent_speaks_is_not_a_barge_in() {
    let mut h = H::started();
    let t0 = h.now;
    h.dtmf("5");
    assert!(h.call.agent_speaking());
    // Keys pressed while the answer plays queue their answers behind it; nothing is cleared.
    h.advance_to(t0 + Duration::from_millis(30));
    h.dtmf("6");
    h.dtmf("7");
    h.advance_to(t0 + Duration::from_secs(2));
    assert!(
        !h.sent
            .iter()
            .any(|(_, m)| matches!(m, Outbound::Clear { .. }))
    );
    assert_eq!(h.call.stats().barge_ins, 0);
    assert_eq!(h.phone.stats().audio_ms, 300);
    assert_eq!(h.phone.bursts().len(), 1, "three answers back to back");
}

#[test]
fn the_agent_can_transfer_or_hang_up_from_a_key() {
    // A transfer is announced at once and handed to the driver (the socket stays open) once
    // the beep queued before it has played.
    let mut h = H::started();
    let t0 = h.now;
    let ev = h.dtmf("0");
    assert!(ev.contains(&Event::TransferRequested {
        to: "+15550100".into()
    }));
    h.advance_to(t0 + Duration::from_millis(60));
    assert!(h.transfers.is_empty(), "transferred before the beep played");
    h.advance_to(t0 + Duration::from_millis(300));
    assert_eq!(h.transfers, vec!["+15550100".to_string()]);
    assert!(
        h.closes.is_empty(),
        "the socket stays open while the call is redirected"
    );
    assert_eq!(h.phone.stats().audio_ms, 100);
    // While the redirect is in flight the call holds: a key reaches no agent.
    let ev = h.dtmf("1");
    assert!(ev.iter().any(|e| matches!(e, Event::Dtmf { .. })));
    let seen: Vec<String> = h.log.borrow().iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(
        seen,
        vec!["0".to_string()],
        "the agent heard no key while holding"
    );
    // The redirect failed: the call goes on and this agent (the default) hangs up.
    let at = h.now;
    let ev = h.input(Input::Transfer {
        at,
        outcome: TransferOutcome::Failed {
            reason: "Twilio answered 503".into(),
        },
    });
    assert!(ev.contains(&Event::TransferFailed {
        to: "+15550100".into(),
        reason: "Twilio answered 503".into()
    }));
    assert_eq!(
        h.closes.last(),
        Some(&CloseReason::Hangup(
            "transfer to +15550100 failed: Twilio answered 503".into()
        ))
    );
    // Only after a transfer: a second outcome is ignored.
    let at = h.now;
    assert!(
        h.input(Input::Transfer {
            at,
            outcome: TransferOutcome::Failed {
                reason: "again".into(),
            },
        })
        .is_empty()
    );

    // Redirected: the call stops and closes for the transfer.
    let mut h = H::started();
    let t0 = h.now;
    h.dtmf("0");
    h.advance_to(t0 + Duration::from_millis(300));
    let at = h.now;
    let ev = h.input(Input::Transfer {
        at,
        outcome: TransferOutcome::Redirected,
    });
    assert!(ev.iter().any(|e| matches!(e, Event::Stopped { .. })));
    assert_eq!(h.closes, vec![CloseReason::Transfer("+15550100".into())]);

    let mut h = H::started();
    let t0 = h.now;
    h.dtmf("1");
    h.advance_to(t0 + Duration::from_millis(500));
    h.dtmf("#");
    // The goodbye beep plays first; the stream closes once its final mark is echoed.
    assert!(h.closes.is_empty());
    h.advance_to(t0 + Duration::from_millis(560));
    assert!(h.closes.is_empty(), "closed before the beep played");
    h.advance_to(t0 + Duration::from_millis(700));
    assert_eq!(
        h.closes,
        vec![CloseReason::Hangup("caller pressed #".into())]
    );
    assert_eq!(h.phone.stats().audio_ms, 200);
    // Keys after the hang-up are not the agent's business any more.
    let before = h.log.borrow().len();
    let ev = h.dtmf("1");
    assert_eq!(
        ev,
        vec![Event::Malformed {
            kind: Malformed::AfterStop,
            detail: "message after stop".into()
        }]
    );
    assert_eq!(h.log.borrow().len(), before);
}

#[test]
fn misplaced_or_malformed_dtmf_is_counted_and_not_delivered() {
    let mut h = H::new();
    h.text(&twilio::inbound::connected());
    // Before `start`.
    let ev = h.dtmf("1");
    assert!(matches!(
        ev.as_slice(),
        [Event::Malformed {
            kind: Malformed::BeforeStart,
            ..
        }]
    ));
    let mut h = H::started();
    // Another stream's key.
    let ev = h.text(&twilio::inbound::dtmf(7, "MZother", "1"));
    assert!(matches!(
        ev.as_slice(),
        [Event::Malformed {
            kind: Malformed::WrongStream,
            ..
        }]
    ));
    // No digit.
    let ev = h.text(&format!(
        r#"{{"event":"dtmf","streamSid":"{SID}","dtmf":{{"track":"inbound_track"}}}}"#
    ));
    assert!(matches!(
        ev.as_slice(),
        [Event::Malformed {
            kind: Malformed::MissingField,
            ..
        }]
    ));
    // A digit of the wrong type.
    let ev = h.text(&format!(
        r#"{{"event":"dtmf","streamSid":"{SID}","dtmf":{{"digit":1}}}}"#
    ));
    assert!(matches!(
        ev.as_slice(),
        [Event::Malformed {
            kind: Malformed::Json,
            ..
        }]
    ));
    assert!(h.log.borrow().is_empty());
    assert_eq!(h.call.stats().malformed_total(), 3);
    // Without `streamSid` or `track` (both documented, neither needed): delivered.
    let ev = h.text(r##"{"event":"dtmf","dtmf":{"digit":"#"}}"##);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Dtmf { digit, .. } if digit == "#"))
    );
    assert_eq!(h.log.borrow().len(), 1);
}

#[test]
fn dtmf_between_media_frames_does_not_disturb_media_time() {
    let mut h = H::started();
    let noise = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/audio/line-noise-8k.ulaw"),
    )
    .unwrap();
    for (k, frame) in noise.chunks(160).take(100).enumerate() {
        h.now += Duration::from_millis(20);
        h.seq += 1;
        let mut msg = String::new();
        twilio::inbound::media(h.seq, SID, k as u64 + 1, 20 * k as u64, frame, &mut msg);
        h.text(&msg);
        if k % 25 == 10 {
            h.dtmf(&(k / 25).to_string());
        }
    }
    assert_eq!(h.call.media_ms(), 2000);
    assert_eq!(h.call.stats().frames, 100);
    let digits: Vec<String> = h.dtmf_events().into_iter().map(|(_, d)| d).collect();
    assert_eq!(digits, vec!["0", "1", "2", "3"]);
    assert_eq!(h.call.stats().malformed_total(), 0);
}
