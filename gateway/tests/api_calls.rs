//! `POST /calls` against the local Twilio REST double (every request checked against the
//! official `Calls.json` schema), Twilio errors passed on, validation, the per-key rate limit and
//! the calls-per-second pacing with its bounded queue.

mod twilio_double;

use std::time::Duration;

use axum::http::{StatusCode, header};
use serde_json::json;
use twilio_double::Double;
use twilio_double::harness::*;

async fn double_and_env(changes: &[(&str, &str)]) -> (Double, Vec<(String, String)>) {
    let double = Double::start(API_KEY_SID, API_SECRET).await;
    // Fast pacing unless a test sets its own.
    let mut all = vec![
        ("HARK_TWILIO_API_BASE", double.base.as_str()),
        ("HARK_TWILIO_CONVERSATIONS_BASE", double.base.as_str()),
        ("HARK_CALLS_PER_SECOND", "50"),
    ];
    all.extend_from_slice(changes);
    let env = env_with(&all);
    (double, env)
}

#[test]
fn the_double_checks_what_it_claims() {
    twilio_double::self_tests::patterns_and_described_values();
    twilio_double::self_tests::the_validator_catches_drift();
}

#[tokio::test]
async fn creates_the_call_as_the_spec_describes() {
    let (double, env) = double_and_env(&[]).await;
    let st = state(env).await;
    let body = json!({
        "to": "+14155550100",
        "agent": "support",
        "parameters": {"payerId": "P-42"},
        "record": true,
        "machine_detection": "Enable",
        "timeout": 25,
        "time_limit": 900,
    });
    let a = send(&st, post_json("/calls", Some(HARK_KEY), &body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let sid = a.body["call_sid"].as_str().expect("call_sid").to_owned();
    assert!(sid.starts_with("CA") && sid.len() == 34);
    assert_eq!(a.body["status"], "queued");
    double.assert_clean();

    let reqs = double.requests_to("POST", "/Calls.json");
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"));
    assert_eq!(r.one("To"), Some("+14155550100"));
    assert_eq!(r.one("From"), Some(PHONE));
    assert_eq!(
        r.one("Url"),
        Some(format!("{PUBLIC}/voice?agent=support&payerId=P-42").as_str())
    );
    assert_eq!(r.one("Method"), Some("POST"));
    assert_eq!(
        r.one("StatusCallback"),
        Some(format!("{PUBLIC}/api/twilio/status").as_str())
    );
    assert_eq!(
        r.all("StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    assert_eq!(r.one("Timeout"), Some("25"));
    assert_eq!(r.one("TimeLimit"), Some("900"));
    assert_eq!(r.one("MachineDetection"), Some("Enable"));
    assert_eq!(r.one("Record"), Some("true"));
    assert_eq!(r.one("RecordingChannels"), Some("dual"));
    assert_eq!(
        r.one("RecordingStatusCallback"),
        Some(format!("{PUBLIC}/api/twilio/recording").as_str())
    );
    assert_eq!(
        r.all("RecordingStatusCallbackEvent"),
        ["completed", "absent"]
    );
    assert!(r.raw_body.contains("To=%2B14155550100"), "{}", r.raw_body);
    assert!(
        r.raw_body
            .contains("StatusCallbackEvent=initiated&StatusCallbackEvent=ringing")
    );

    // The record is there at once.
    let a = send(&st, get(&format!("/calls/{sid}"), Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["direction"], "outbound-api");
    assert_eq!(a.body["agent"], "support");
    assert_eq!(a.body["parameters"], json!({"payerId": "P-42"}));
    assert_eq!(a.body["status"], "queued");
}

#[tokio::test]
async fn auth_token_is_used_without_an_api_key() {
    let double = Double::start(ACCOUNT, AUTH_TOKEN).await;
    let env = env_with(&[
        ("HARK_TWILIO_API_BASE", &double.base),
        ("TWILIO_API_KEY", ""),
        ("TWILIO_API_SECRET", ""),
    ]);
    let st = state(env).await;
    let a = send(
        &st,
        post_json(
            "/calls",
            Some(HARK_KEY),
            &json!({"to": "+14155550100", "from": "+14155550199"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    double.assert_clean();
    let r = &double.requests_to("POST", "/Calls.json")[0];
    assert_eq!(r.one("From"), Some("+14155550199"));
    assert_eq!(r.one("Record"), None);
}

#[tokio::test]
async fn twilio_errors_are_passed_on() {
    let (double, env) = double_and_env(&[]).await;
    let st = state(env).await;
    double.fail_next_call(
        400,
        json!({"code": 21211, "message": "The 'To' number +14155550100 is not a valid phone number.",
               "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}),
    );
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["code"], 21211);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid phone number")
    );
    assert_eq!(
        a.body["more_info"],
        "https://www.twilio.com/docs/errors/21211"
    );

    double.fail_next_call(401, json!({"code": 20003, "message": "Authenticate", "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}));
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::BAD_GATEWAY,
        "hark's credentials are not the client's fault"
    );
    assert_eq!(a.body["code"], 20003);

    double.fail_next_call(429, json!({"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}));
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    double.assert_clean();
}

#[tokio::test]
async fn unreachable_twilio_is_502() {
    // Port 1 on loopback: nothing listens.
    let st = state(env_with(&[("HARK_TWILIO_API_BASE", "http://127.0.0.1:1")])).await;
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert!(
        !a.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains(ACCOUNT),
        "no Account SID in errors"
    );
}

#[tokio::test]
async fn validation_and_settings_errors_reach_no_one() {
    let (double, env) = double_and_env(&[]).await;
    let st = state(env).await;
    for (body, field) in [
        (json!({}), "to"),
        (json!({"to": "4155550100"}), "to"),
        (json!({"to": "+14155550100", "from": "+0123"}), "from"),
        (json!({"to": "+14155550100", "timeout": 601}), "timeout"),
        (
            json!({"to": "+14155550100", "time_limit": -1}),
            "time_limit",
        ),
        (
            json!({"to": "+14155550100", "machine_detection": "yes"}),
            "machine_detection",
        ),
        (json!({"to": "+14155550100", "record": 1}), "record"),
        (
            json!({"to": "+14155550100", "parameters": {"a b": "c"}}),
            "parameters.a b",
        ),
        (json!({"to": "+14155550100", "agnet": "x"}), "agnet"),
    ] {
        let a = send(&st, post_json("/calls", Some(HARK_KEY), &body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert_eq!(a.body["field"], field, "{body}");
        assert!(
            a.body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("{field}: "))),
            "{}",
            a.body
        );
    }
    assert!(double.requests().is_empty());

    let a = send(
        &st,
        post_json("/calls", None, &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    let st = state(env_with(&[
        ("HARK_PUBLIC_URL", ""),
        ("HARK_TWILIO_API_BASE", &double.base),
    ]))
    .await;
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["missing"], json!(["HARK_PUBLIC_URL"]));

    let st = state(env_with(&[("TWILIO_ACCOUNT_SID", "")])).await;
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["missing"], json!(["TWILIO_ACCOUNT_SID"]));
    assert!(double.requests().is_empty());
}

#[tokio::test]
async fn per_key_rate_limit() {
    let (double, env) = double_and_env(&[
        ("HARK_RATE_LIMIT_PER_MIN", "1"),
        ("HARK_RATE_LIMIT_BURST", "1"),
    ])
    .await;
    let st = state(env).await;
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = a.headers[header::RETRY_AFTER]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("seconds");
    assert!((50..=60).contains(&retry), "{retry}");
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY_2), &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(double.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_is_paced_to_calls_per_second() {
    // 20 calls/s: one creation every 50 ms, however fast they come in.
    let (double, env) = double_and_env(&[("HARK_CALLS_PER_SECOND", "20")]).await;
    let st = state(env).await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let st = st.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &st,
                post_json(
                    "/calls",
                    Some(HARK_KEY),
                    &json!({"to": format!("+1415555010{i}")}),
                ),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::CREATED);
    }
    let mut at: Vec<_> = double
        .requests_to("POST", "/Calls.json")
        .iter()
        .map(|r| r.at)
        .collect();
    at.sort();
    assert_eq!(at.len(), 5);
    // Without pacing all five would arrive within a few ms. Network jitter on a busy machine
    // shifts single arrivals, so check each gap loosely and the whole span tightly.
    for w in at.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(20), "creations {gap:?} apart");
    }
    let span = at[4] - at[0];
    assert!(
        span >= Duration::from_millis(150),
        "5 creations within {span:?}"
    );
    double.assert_clean();
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    // 10 calls/s, room for 2 waiting. Four requests at once: the first is created now, two
    // wait their turn (100 and 200 ms), the fourth would wait a third and is refused.
    let (double, env) =
        double_and_env(&[("HARK_CALLS_PER_SECOND", "10"), ("HARK_CALL_QUEUE", "2")]).await;
    let st = state(env).await;
    let call = |n: u8| {
        send(
            &st,
            post_json(
                "/calls",
                Some(HARK_KEY),
                &json!({"to": format!("+1415555010{n}")}),
            ),
        )
    };
    let (a, b, c, d) = tokio::join!(call(1), call(2), call(3), call(4));
    let statuses = [a.status, b.status, c.status, d.status];
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        3,
        "{statuses:?}"
    );
    let refused: Vec<_> = [a, b, c, d]
        .into_iter()
        .filter(|x| x.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(refused.len(), 1);
    for r in refused {
        assert_eq!(r.headers[header::RETRY_AFTER], "1");
    }
    assert_eq!(double.requests().len(), 3);
}

#[tokio::test]
async fn an_abandoned_request_places_no_call() {
    // 2 calls/s: the second request would wait 500 ms; its client gives up after 100 ms.
    let (double, env) = double_and_env(&[("HARK_CALLS_PER_SECOND", "2")]).await;
    let st = state(env).await;
    let a = send(
        &st,
        post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550101"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        send(
            &st,
            post_json("/calls", Some(HARK_KEY), &json!({"to": "+14155550102"})),
        ),
    )
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        double.requests().len(),
        1,
        "the abandoned call was not placed"
    );
}
