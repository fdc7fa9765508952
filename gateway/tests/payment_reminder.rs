//! The README's walkthrough, checked: `gateway/examples/payment_reminder` run in process (its
//! [`run::run`]): a scheduler's `POST /calls` with `payerId`, the Twilio stand-in connecting
//! the call through hark's signed `/voice` and Media Stream, the operator's backend answering
//! the context request and two tools and receiving the call's events, every request verified
//! with the backend's own HMAC (ring, not hark's).

#[path = "../examples/payment_reminder/llm.rs"]
mod llm;
#[path = "../examples/payment_reminder/operator.rs"]
mod operator;
#[path = "../examples/payment_reminder/run.rs"]
mod run;
#[path = "../examples/payment_reminder/twilio.rs"]
mod twilio;

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_reminder_walkthrough_runs_end_to_end() {
    let s = run::run().await.expect("the walkthrough completes");
    let sid = s.call_sid.as_str();
    assert!(sid.starts_with("CA"), "{sid}");
    assert!(
        s.operator.iter().all(|r| r.signed),
        "every request to the backend verifies: {:?}",
        s.operator
    );

    // Twilio was handed `payerId` through `/voice` and passed it to the stream.
    assert!(
        s.stream_parameters
            .contains(&("payerId".to_string(), "p-42".to_string())),
        "{:?}",
        s.stream_parameters
    );

    // The context request: asked once, for this call and payer, and its answer used.
    let paths: Vec<&str> = s.operator.iter().map(|r| r.path).collect();
    let context: Vec<_> = s.operator.iter().filter(|r| r.path == "/context").collect();
    assert_eq!(context.len(), 1, "{paths:?}");
    assert_eq!(context[0].body["call_sid"], sid);
    assert_eq!(context[0].body["parameters"]["payerId"], "p-42");
    assert_eq!(context[0].body["direction"], "outbound-api");
    assert!(
        s.system_prompt
            .contains("with Ada, who owed 120 dollars (due May 3)")
            && !s.system_prompt.contains("{{"),
        "the context's prompt, variables filled in: {}",
        s.system_prompt
    );
    // (hark also synthesizes its fallback and filler lines ahead, in case they are needed.)
    assert!(
        s.spoken
            .iter()
            .any(|t| t == "Hello Ada, this is Acme Billing calling about your account."),
        "the context's greeting: {:?}",
        s.spoken
    );

    // The tools: lookup_balance with the call's payer, then record_promise.
    let balance: Vec<_> = s
        .operator
        .iter()
        .filter(|r| r.path == "/tools/balance")
        .collect();
    assert_eq!(balance.len(), 1, "{paths:?}");
    assert_eq!(balance[0].body["tool"], "lookup_balance");
    assert_eq!(balance[0].body["arguments"], json!({"payerId": "p-42"}));
    assert_eq!(balance[0].body["parameters"]["payerId"], "p-42");
    assert_eq!(balance[0].body["call_sid"], sid);
    let promise: Vec<_> = s
        .operator
        .iter()
        .filter(|r| r.path == "/tools/promise")
        .collect();
    assert_eq!(promise.len(), 1, "{paths:?}");
    assert_eq!(
        promise[0].body["arguments"],
        json!({"amount": 120, "date": "Friday"})
    );
    let at = |p: &str| paths.iter().position(|q| *q == p).unwrap();
    assert!(at("/context") < at("/tools/balance") && at("/tools/balance") < at("/tools/promise"));

    // The events: call.started, ≥ 1 turn.ended, call.ended, in order, for this call.
    let events = s.events();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.len() >= 3, "{types:?}");
    assert_eq!(types[0], "call.started", "{types:?}");
    assert_eq!(types[types.len() - 1], "call.ended", "{types:?}");
    assert!(
        types[1..types.len() - 1].iter().all(|t| *t == "turn.ended"),
        "{types:?}"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["call_sid"], sid);
        assert_eq!(e["seq"].as_u64(), Some(i as u64), "{e}");
    }
    assert_eq!(events[0]["data"]["parameters"]["payerId"], "p-42");

    // The caller heard the balance: the first answer, as heard (cut at a barge-in), says it.
    let first = events[1];
    assert_eq!(first["data"]["turn"], 0);
    assert!(
        first["data"]["agent_text"]
            .as_str()
            .unwrap()
            .contains("120 dollars"),
        "{first}"
    );
    assert!(
        !first["data"]["barge_in"].as_bool().unwrap_or(true),
        "{first}"
    );
    assert!(s.caller.heard_audio_ms > 0, "{:?}", s.caller);

    // The call ended after record_promise's answer (`end_call_after`), with the transcript.
    let ended = &events[events.len() - 1]["data"];
    assert!(
        ended["ended"].as_str().unwrap().contains("record_promise"),
        "{ended}"
    );
    let transcript = ended["transcript"].as_array().unwrap();
    // The greeting, as heard, opens the transcript (it is not a turn).
    assert_eq!(transcript[0]["role"], "agent", "{ended}");
    assert_eq!(transcript[0]["turn"], serde_json::Value::Null, "{ended}");
    assert_eq!(
        transcript[0]["text"], "Hello Ada, this is Acme Billing calling about your account.",
        "{ended}"
    );
    assert_eq!(transcript[1]["turn"], 0, "{ended}");
    assert!(
        transcript
            .iter()
            .any(|l| l["role"] == "agent" && l["text"].as_str().unwrap().contains("120 dollars")),
        "{ended}"
    );
}
