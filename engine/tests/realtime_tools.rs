//! The OpenAI Realtime agent's function calling with the operator's HTTP tools, in virtual time
//! with a scripted Realtime socket and operator backend (no network): the tools offered in
//! `session.update`, a `response.done` function call → a signed request with the call's facts
//! and arguments → a `function_call_output` item and one `response.create`; several calls and a
//! barge-in; error statuses, timeouts, refused arguments and unknown names → error outputs;
//! `end_call_after`. (Beside `realtime.rs`, to keep each file short.)

mod common;

use std::time::Instant;

use common::*;
use hark_engine::agent::{
    AgentReport, HttpBody, OpenSpec, ProviderCommand, ProviderEvent, ProviderFault, ProviderMessage,
};
use hark_engine::agents::http_tools::{HttpTool, HttpTools, ToolSchema};
use hark_engine::agents::realtime::{PEER, RealtimeAgent, RealtimeConfig};
use hark_engine::operator::Secret;
use hark_engine::{CallConfig, CloseReason};
use serde_json::{Value, json};

/// Opens after 40 ms; answers `session.update` with `session.updated` (echoing the session)
/// after 20 ms.
struct Rt;

impl Provider for Rt {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        match cmd {
            ProviderCommand::Open { peer, .. } => out.push((now + ms(40), upgraded(*peer))),
            ProviderCommand::Send {
                peer,
                message: ProviderMessage::Text(t),
            } if t.contains("\"session.update\"") => {
                let v: Value = serde_json::from_str(t).unwrap();
                let mut session = v["session"].clone();
                session["id"] = json!("sess_1");
                let updated =
                    json!({"type": "session.updated", "event_id": "ev_s", "session": session});
                out.push((now + ms(20), text(*peer, updated.to_string())))
            }
            _ => {}
        }
    }
}

fn ev(v: Value) -> ProviderEvent {
    text(PEER, v.to_string())
}

fn created(resp: &str) -> ProviderEvent {
    ev(
        json!({"type": "response.created", "event_id": "e", "response": {"object": "realtime.response", "id": resp, "status": "in_progress", "output": []}}),
    )
}

fn delta(resp: &str, item: &str, bytes: &[u8]) -> ProviderEvent {
    ev(
        json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": resp, "item_id": item,
        "output_index": 0, "content_index": 0, "delta": b64(bytes)}),
    )
}

fn sent_of(run: &Run, kind: &str) -> Vec<(u64, Value)> {
    run.json_sent()
        .into_iter()
        .filter(|(_, v)| v["type"] == kind)
        .map(|(t, v)| (run.at(t), v))
        .collect()
}

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

/// The operator's tool requests seen: (ms since t0, body, signed).
type Seen = std::rc::Rc<std::cell::RefCell<Vec<(Instant, Value, bool)>>>;

/// [`Rt`], and the operator's backend answering each tool request after its delay (ms).
struct RtTools {
    seen: Seen,
    answer: Box<Operator>,
}

impl Provider for RtTools {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        let ProviderCommand::Open {
            peer,
            spec: OpenSpec::Http(req),
        } = cmd
        else {
            return Rt.command(now, cmd, out);
        };
        assert_eq!((req.method.as_str(), req.url.as_str()), ("POST", TOOL_URL));
        assert_eq!(req.timeout_ms, Some(2_000), "the tool's own timeout");
        let HttpBody::Json(body) = &req.body else {
            panic!("a JSON body: {:?}", req.body)
        };
        self.seen
            .borrow_mut()
            .push((now, body.clone(), req.sign.is_some()));
        let peer = *peer;
        let (delay, reply) = (self.answer)(body);
        let at = now + ms(delay);
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
}

fn tools_agent(end_call_after: bool) -> Box<RealtimeAgent> {
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
    Box::new(RealtimeAgent::new(RealtimeConfig {
        url: "ws://127.0.0.1:1/v1/realtime".into(),
        api_key: "sk-test".into(),
        tools: HttpTools {
            tools: vec![tool].into(),
            secret: Some(Secret::new("0123456789abcdef0123")),
        },
        ..RealtimeConfig::default()
    }))
}

/// `response.done` of `resp` whose output is these function calls (name, call id, arguments).
fn done_with_calls(resp: &str, calls: &[(&str, &str, &str)]) -> ProviderEvent {
    let output: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(i, (name, id, args))| {
            json!({"id": format!("item_f{i}"), "type": "function_call", "object": "realtime.item",
                   "status": "completed", "name": name, "call_id": id, "arguments": args})
        })
        .collect();
    ev(
        json!({"type": "response.done", "event_id": "e", "response": {"object": "realtime.response",
        "id": resp, "status": "completed", "status_details": null, "output": output,
        "conversation_id": "conv_1", "output_modalities": ["audio"], "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}, "usage": null,
        "metadata": null}}),
    )
}

/// A 5 s call with `payerId`, the tools agent, `timed` events and the operator's `answer`.
fn tools_run(
    timed: Vec<(u64, ProviderEvent)>,
    answer: impl FnMut(&Value) -> (u64, ToolReply) + 'static,
) -> (Run, Seen) {
    tools_run_with(tools_agent(false), timed, answer)
}

fn tools_run_with(
    agent: Box<RealtimeAgent>,
    timed: Vec<(u64, ProviderEvent)>,
    answer: impl FnMut(&Value) -> (u64, ToolReply) + 'static,
) -> (Run, Seen) {
    let t0 = Instant::now();
    let lines = session(t0, &[("payerId", "p-42")], &vec![0xFF; 8 * 5_000]);
    let seen = Seen::default();
    let script = RtTools {
        seen: seen.clone(),
        answer: Box::new(answer),
    };
    let timed = timed.into_iter().map(|(t, e)| (t0 + ms(t), e)).collect();
    let run = run_scripted(&lines, CallConfig::default(), agent, script, timed);
    (run, seen)
}

/// The `function_call_output` items sent: (ms, call id, output).
fn outputs(run: &Run) -> Vec<(u64, String, String)> {
    sent_of(run, "conversation.item.create")
        .into_iter()
        .map(|(t, v)| {
            assert_eq!(v["item"]["type"], "function_call_output", "{v}");
            let s = |k: &str| v["item"][k].as_str().unwrap().to_string();
            (t, s("call_id"), s("output"))
        })
        .collect()
}

#[test]
fn a_function_call_runs_the_operator_tool_and_its_output_goes_back() {
    let timed = vec![
        (500, created("resp_1")),
        (
            600,
            done_with_calls("resp_1", &[(BALANCE, "call_1", r#"{"payerId":"p-42"}"#)]),
        ),
    ];
    let (run, seen) = tools_run(timed, |_| {
        (300, ToolReply::Json(json!({"balance": "120 dollars"})))
    });
    // Offered as a function in the session.
    let (_, update) = &sent_of(&run, "session.update")[0];
    assert_eq!(update["session"]["tool_choice"], "auto");
    assert_eq!(update["session"]["tools"][0]["type"], "function");
    assert_eq!(update["session"]["tools"][0]["name"], BALANCE);
    assert_eq!(
        update["session"]["tools"][0]["parameters"]["required"],
        json!(["payerId"])
    );
    // One signed request with the call's facts and the model's arguments, at the call.
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1);
    let (at, body, signed) = &seen[0];
    assert!(signed, "signed with the operator secret");
    assert_eq!(run.at(*at), 600);
    assert_eq!(
        *body,
        json!({"call_sid": CALL_SID, "stream_sid": STREAM_SID, "tool": BALANCE,
               "call_id": "call_1", "arguments": {"payerId": "p-42"},
               "parameters": {"payerId": "p-42"}})
    );
    // The answer goes back as the call's output, then the model is asked to go on.
    assert_eq!(
        outputs(&run),
        [(900, "call_1".into(), r#"{"balance":"120 dollars"}"#.into())]
    );
    let creates = sent_of(&run, "response.create");
    assert_eq!(creates.len(), 1);
    assert_eq!(
        creates[0].1,
        json!({"type": "response.create", "event_id": creates[0].1["event_id"]})
    );
    let order: Vec<String> = run
        .json_sent()
        .into_iter()
        .map(|(_, v)| v["type"].as_str().unwrap_or("").to_string())
        .filter(|t| t != "input_audio_buffer.append")
        .collect();
    assert_eq!(
        order,
        [
            "session.update",
            "conversation.item.create",
            "response.create"
        ]
    );
    assert_eq!(creates[0].0, 900);
    assert!(run.reports().contains(&AgentReport::ToolCall {
        name: BALANCE.into(),
        arguments: r#"{"payerId":"p-42"}"#.into()
    }));
    assert!(run.faults().is_empty(), "{:?}", run.faults());
}

#[test]
fn every_output_of_a_response_goes_back_then_one_response_create_even_over_a_barge_in() {
    // Two calls in one response, answered after 300 and 800 ms; the caller talks meanwhile
    // and the server's response to them (resp_2) runs from 750 to 1 600 ms.
    let timed = vec![
        (500, created("resp_1")),
        (
            600,
            done_with_calls(
                "resp_1",
                &[
                    (BALANCE, "call_1", r#"{"payerId":"p-42"}"#),
                    (BALANCE, "call_2", r#"{"payerId":"p-43"}"#),
                ],
            ),
        ),
        (
            700,
            ev(
                json!({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 650, "item_id": "item_u"}),
            ),
        ),
        (750, created("resp_2")),
        (1_600, done_with_calls("resp_2", &[])),
    ];
    let (run, seen) = tools_run(timed, |body| {
        let slow = body["arguments"]["payerId"] == "p-43";
        let delay = if slow { 800 } else { 300 };
        (
            delay,
            ToolReply::Json(json!({"for": body["arguments"]["payerId"]})),
        )
    });
    assert_eq!(seen.borrow().len(), 2);
    assert_eq!(
        outputs(&run),
        [
            (900, "call_1".into(), r#"{"for":"p-42"}"#.into()),
            (1_400, "call_2".into(), r#"{"for":"p-43"}"#.into()),
        ],
        "both results sent although the caller barged in"
    );
    // One response.create, once the response active at the last result is done.
    let creates = sent_of(&run, "response.create");
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0].0, 1_600);
}

#[test]
fn tool_faults_go_back_as_error_outputs_and_never_stick() {
    // (arguments, the operator's answer, the output's start, when it is sent (ms)).
    let cases: [(&str, &str, Option<ToolReply>, &str, u64); 4] = [
        (
            BALANCE,
            r#"{"payerId":"p-42"}"#,
            Some(ToolReply::Status(500)),
            "error: the tool failed (HTTP 500)",
            700,
        ),
        (
            BALANCE,
            r#"{"payerId":"p-42"}"#,
            Some(ToolReply::Hang),
            "error: the tool did not answer (timeout)",
            2_600,
        ),
        (
            BALANCE,
            r#"{"payerId":42}"#,
            None,
            "error: invalid arguments: /payerId",
            600,
        ),
        (
            "lookup_order",
            "{}",
            None,
            "error: there is no tool named \"lookup_order\"",
            600,
        ),
    ];
    for (name, args, reply, told, at) in cases {
        let expect_request = reply.is_some();
        let timed = vec![
            (500, created("resp_1")),
            (600, done_with_calls("resp_1", &[(name, "call_1", args)])),
        ];
        let (run, seen) = tools_run(timed, move |_| {
            (100, reply.clone().expect("no request for a refused call"))
        });
        assert_eq!(seen.borrow().len(), usize::from(expect_request), "{told}");
        let out = outputs(&run);
        assert_eq!(out.len(), 1, "{told}: {out:?}");
        assert!(out[0].2.starts_with(told), "{told:?} vs {:?}", out[0].2);
        assert_eq!(out[0].0, at, "{told}");
        let creates = sent_of(&run, "response.create");
        assert_eq!(
            creates.iter().map(|c| c.0).collect::<Vec<_>>(),
            [at],
            "{told}"
        );
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
            assert!(run.commands.iter().any(|(t, c)| run.at(*t) == 2_600
                && matches!(c, ProviderCommand::Close { peer } if *peer != PEER)));
        }
    }
}

#[test]
fn an_end_call_after_tool_ends_the_call_after_the_answer_to_its_result() {
    // The result goes back at 900 ms; the response hark asks for then (resp_2) speaks 0.5 s.
    let timed = vec![
        (500, created("resp_1")),
        (
            600,
            done_with_calls("resp_1", &[(BALANCE, "call_1", r#"{"payerId":"p-42"}"#)]),
        ),
        (950, created("resp_2")),
        (960, delta("resp_2", "item_2", &[0x33; 4_000])),
        (1_000, done_with_calls("resp_2", &[])),
    ];
    let (run, _) = tools_run_with(tools_agent(true), timed, |_| {
        (300, ToolReply::Json(json!({"ok": true})))
    });
    assert_eq!(sent_of(&run, "response.create")[0].0, 900);
    match run.closed() {
        Some(CloseReason::Hangup(why)) => assert_eq!(why, format!("tool {BALANCE}")),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    let heard: u64 = run.phone.bursts().iter().map(|b| b.audio_ms).sum();
    assert_eq!(heard, 500, "the answer played in full first");
}
