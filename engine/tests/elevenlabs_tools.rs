//! The ElevenLabs relay's client tools that are the operator's HTTP tools, in virtual time with
//! a scripted Conversational AI socket and operator backend (no network): a `client_tool_call`
//! of a configured tool → a signed request with the call's facts and arguments → a
//! `client_tool_result` in ElevenLabs' exact format; error statuses, timeouts and refused
//! arguments → `is_error: true`; the end-call tool still hangs up; `end_call_after`.
//! (Beside `elevenlabs.rs`, which is at the file-size limit.)

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use common::*;
use hark_engine::agent::{
    AgentReport, HttpBody, OpenSpec, ProviderCommand, ProviderEvent, ProviderFault, ProviderMessage,
};
use hark_engine::agents::elevenlabs::{ElevenLabsAgent, ElevenLabsConfig, FIRST_TOOL_PEER, PEER};
use hark_engine::agents::http_tools::{HttpTool, HttpTools, ToolSchema};
use hark_engine::operator::Secret;
use hark_engine::{CallConfig, CloseReason};
use serde_json::{Value, json};

const BALANCE: &str = "lookup_balance";
const TOOL_URL: &str = "http://operator.test/tools/balance";

/// How the operator's double answers a tool request.
#[derive(Debug, Clone)]
enum ToolReply {
    /// 200 with this JSON (`Opened`, the body, `Closed`).
    Json(Value),
    /// This error status.
    Status(u16),
    /// No answer: the tool's timeout must fire.
    Hang,
}

/// The operator's double: per tool request body, its delay (ms) and answer.
type Operator = dyn FnMut(&Value) -> (u64, ToolReply);

/// The operator's tool requests seen: (time, body, signed).
type Seen = Rc<RefCell<Vec<(Instant, Value, bool)>>>;

/// Opens the conversation after 40 ms and answers the initiation with μ-law metadata after
/// 30 ms; the operator's backend answers each tool request after its delay (ms).
struct ElTools {
    seen: Seen,
    answer: Box<Operator>,
}

impl Provider for ElTools {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        match cmd {
            ProviderCommand::Open {
                peer,
                spec: OpenSpec::Http(req),
            } => {
                assert!(peer.0 >= FIRST_TOOL_PEER.0);
                assert_eq!((req.method.as_str(), req.url.as_str()), ("POST", TOOL_URL));
                assert_eq!(req.timeout_ms, Some(2_000), "the tool's own timeout");
                let HttpBody::Json(body) = &req.body else {
                    panic!("a JSON body: {:?}", req.body)
                };
                self.seen
                    .borrow_mut()
                    .push((now, body.clone(), req.sign.is_some()));
                let (delay, reply) = (self.answer)(body);
                answer(out, *peer, now + ms(delay), reply);
            }
            ProviderCommand::Open { peer, .. } => out.push((now + ms(40), upgraded(*peer))),
            ProviderCommand::Send {
                peer,
                message: ProviderMessage::Text(t),
            } if t.contains("conversation_initiation_client_data") => {
                let meta = json!({"type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {"conversation_id": "conv_1",
                    "agent_output_audio_format": "ulaw_8000", "user_input_audio_format": "ulaw_8000"}});
                out.push((now + ms(30), text(*peer, meta.to_string())))
            }
            _ => {}
        }
    }
}

fn answer(out: &mut Pending, peer: hark_engine::agent::PeerId, at: Instant, reply: ToolReply) {
    let opened = ProviderEvent::Opened {
        peer,
        status: Some(200),
    };
    match reply {
        ToolReply::Json(v) => out.extend([
            (at, opened),
            (at, text(peer, v.to_string())),
            (at, ProviderEvent::Closed { peer }),
        ]),
        ToolReply::Status(s) => out.push((
            at,
            ProviderEvent::Failed {
                peer,
                fault: ProviderFault::status(s, r#"{"error":"boom"}"#, None),
            },
        )),
        ToolReply::Hang => {}
    }
}

fn agent(end_call_after: bool) -> Box<ElevenLabsAgent> {
    let tool = HttpTool {
        name: BALANCE.into(),
        description: "The payer's open balance.".into(),
        parameters: ToolSchema::new(json!({
            "type": "object",
            "properties": {"payerId": {"type": "string", "minLength": 1}},
            "required": ["payerId"],
            "additionalProperties": false
        }))
        .unwrap(),
        url: TOOL_URL.into(),
        timeout_ms: 2_000,
        filler: None,
        end_call_after,
    };
    Box::new(ElevenLabsAgent::new(ElevenLabsConfig {
        url: Some("wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a".into()),
        tools: HttpTools {
            tools: vec![tool].into(),
            secret: Some(Secret::new("0123456789abcdef0123")),
        },
        ..ElevenLabsConfig::default()
    }))
}

fn tool_call(name: &str, id: &str, params: Value, event_id: i64) -> ProviderEvent {
    text(
        PEER,
        json!({"type": "client_tool_call", "client_tool_call": {
            "tool_name": name, "tool_call_id": id, "parameters": params, "event_id": event_id}})
        .to_string(),
    )
}

fn audio(bytes: &[u8], event_id: i64) -> ProviderEvent {
    text(
        PEER,
        json!({"type": "audio", "audio_event": {"audio_base_64": b64(bytes), "event_id": event_id}})
            .to_string(),
    )
}

/// A 5 s call with `payerId` and `timed` events (ms); the operator's `answer`.
fn run_tools(
    agent: Box<ElevenLabsAgent>,
    timed: Vec<(u64, ProviderEvent)>,
    answer: impl FnMut(&Value) -> (u64, ToolReply) + 'static,
) -> (Run, Seen) {
    let t0 = Instant::now();
    let lines = session(t0, &[("payerId", "p-42")], &vec![0xFF; 8 * 5_000]);
    let seen = Seen::default();
    let script = ElTools {
        seen: seen.clone(),
        answer: Box::new(answer),
    };
    let timed = timed.into_iter().map(|(t, e)| (t0 + ms(t), e)).collect();
    let run = run_scripted(&lines, CallConfig::default(), agent, script, timed);
    (run, seen)
}

/// The `client_tool_result`s sent, with their times (ms).
fn results(run: &Run) -> Vec<(u64, Value)> {
    run.json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == "client_tool_result")
        .map(|(t, v)| (run.at(t), v))
        .collect()
}

#[test]
fn an_operator_tool_call_is_posted_signed_and_its_answer_is_the_result() {
    let timed = vec![(
        500,
        tool_call(BALANCE, "tc_1", json!({"payerId": "p-42"}), 2),
    )];
    let (run, seen) = run_tools(agent(false), timed, |_| {
        (
            300,
            ToolReply::Json(json!({"balance": "120 dollars", "due": "May 3"})),
        )
    });
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1);
    let (at, body, signed) = &seen[0];
    assert!(signed, "signed with the operator secret");
    assert_eq!(run.at(*at), 500);
    assert_eq!(
        *body,
        json!({"call_sid": CALL_SID, "stream_sid": STREAM_SID, "tool": BALANCE,
               "call_id": "tc_1", "arguments": {"payerId": "p-42"},
               "parameters": {"payerId": "p-42"}})
    );
    // ElevenLabs' exact format: `result` is a string (the answer's compact JSON).
    assert_eq!(
        results(&run),
        [(
            800,
            json!({"type": "client_tool_result", "tool_call_id": "tc_1",
                   "result": r#"{"balance":"120 dollars","due":"May 3"}"#, "is_error": false})
        )]
    );
    assert!(run.reports().contains(&AgentReport::ToolCall {
        name: BALANCE.into(),
        arguments: r#"{"payerId":"p-42"}"#.into()
    }));
    assert!(run.faults().is_empty(), "{:?}", run.faults());
    // The call goes on to Twilio's stop.
    assert!(
        matches!(run.closed(), None | Some(CloseReason::Stopped)),
        "{:?}",
        run.closed()
    );
}

#[test]
fn tool_faults_are_error_results_and_never_stick() {
    // (name, parameters, the operator's answer, the result's start, when it is sent (ms)).
    let cases: [(&str, Value, Option<ToolReply>, &str, u64); 4] = [
        (
            BALANCE,
            json!({"payerId": "p-42"}),
            Some(ToolReply::Status(503)),
            "error: the tool failed (HTTP 503)",
            600,
        ),
        (
            BALANCE,
            json!({"payerId": "p-42"}),
            Some(ToolReply::Hang),
            "error: the tool did not answer (timeout)",
            2_500,
        ),
        (
            BALANCE,
            json!({"payerId": 42}),
            None,
            "error: invalid arguments: /payerId",
            500,
        ),
        (
            "lookup_order",
            json!({}),
            None,
            "hark has no client tool named lookup_order",
            500,
        ),
    ];
    for (name, params, reply, told, at) in cases {
        let expect_request = reply.is_some();
        let timed = vec![(500, tool_call(name, "tc_1", params, 2))];
        let (run, seen) = run_tools(agent(false), timed, move |_| {
            (100, reply.clone().expect("no request for a refused call"))
        });
        assert_eq!(seen.borrow().len(), usize::from(expect_request), "{told}");
        let r = results(&run);
        assert_eq!(r.len(), 1, "{told}: {r:?}");
        assert_eq!(r[0].0, at, "{told}");
        assert_eq!(r[0].1["tool_call_id"], "tc_1");
        assert_eq!(r[0].1["is_error"], true, "{told}");
        let result = r[0].1["result"].as_str().unwrap();
        assert!(result.starts_with(told), "{told:?} vs {result:?}");
        let tool_faults: Vec<(String, String)> = run
            .faults()
            .into_iter()
            .filter(|(p, _)| p == "tool")
            .collect();
        if expect_request {
            let kind = if told.contains("timeout") {
                "timeout"
            } else {
                "http_5xx"
            };
            assert_eq!(tool_faults, [("tool".to_string(), kind.to_string())]);
        } else {
            assert!(tool_faults.is_empty(), "{tool_faults:?}");
        }
        if told.contains("timeout") {
            // The request that hangs is closed at its deadline.
            assert!(run.commands.iter().any(|(t, c)| run.at(*t) == 2_500
                && matches!(c, ProviderCommand::Close { peer } if peer.0 >= FIRST_TOOL_PEER.0)));
        }
        assert!(run.closed().is_none() || run.closed() == Some(CloseReason::Stopped));
    }
}

#[test]
fn the_end_call_tool_still_hangs_up_beside_operator_tools() {
    let timed = vec![
        (500, audio(&[0x22; 1_600], 1)),
        (520, tool_call("end_call", "tc_9", json!({}), 2)),
    ];
    let (run, seen) = run_tools(agent(false), timed, |_| panic!("no tool request"));
    assert!(seen.borrow().is_empty());
    let r = results(&run);
    assert_eq!((r.len(), &r[0].1["is_error"]), (1, &json!(false)));
    assert!(matches!(&run.closed(), Some(CloseReason::Hangup(why)) if why.contains("end_call")));
}

#[test]
fn an_end_call_after_tool_ends_the_call_after_the_next_answer() {
    // The agent says "one moment" (0.2 s at 400 ms) while the tool runs, the result comes at
    // 800 ms, and the answer to it (0.5 s) at 1 000 ms: the call ends once it has played.
    let timed = vec![
        (400, audio(&[0x22; 1_600], 1)),
        (
            450,
            tool_call(BALANCE, "tc_1", json!({"payerId": "p-42"}), 2),
        ),
        (1_000, audio(&[0x33; 4_000], 3)),
    ];
    let (run, _) = run_tools(agent(true), timed, |_| {
        (350, ToolReply::Json(json!({"ok": true})))
    });
    assert_eq!(results(&run)[0].0, 800);
    match run.closed() {
        Some(CloseReason::Hangup(why)) => assert_eq!(why, format!("tool {BALANCE}")),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    // Both utterances were heard in full before the stream closed.
    let heard: u64 = run.phone.bursts().iter().map(|b| b.audio_ms).sum();
    assert_eq!(heard, 700);
}
