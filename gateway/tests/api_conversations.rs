//! Conversations endpoints against the local Twilio REST double (requests checked against
//! `twilio_conversations_v1.json`), and the signed Conversations webhooks.

mod twilio_double;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use twilio_double::Double;
use twilio_double::harness::*;

async fn setup(changes: &[(&str, &str)]) -> (Double, std::sync::Arc<hark_gateway::api::ApiState>) {
    let double = Double::start(API_KEY_SID, API_SECRET).await;
    let mut all = vec![("HARK_TWILIO_CONVERSATIONS_BASE", double.base.as_str())];
    all.extend_from_slice(changes);
    let st = state(env_with(&all)).await;
    (double, st)
}

#[tokio::test]
async fn create_or_fetch_by_unique_name() {
    let (double, st) = setup(&[]).await;
    let a = send(
        &st,
        post_json(
            "/api/twilio/conversation",
            Some(HARK_KEY),
            &json!({"uniqueName": "support-42", "friendlyName": "Support"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["created"], true);
    let sid = a.body["conversationSid"].as_str().expect("sid").to_owned();
    assert!(sid.starts_with("CH"));
    let a = send(
        &st,
        post_json(
            "/api/twilio/conversation",
            Some(HARK_KEY),
            &json!({"uniqueName": "support-42"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"conversationSid": sid, "uniqueName": "support-42", "created": false})
    );
    // userId → unique name user-<id>.
    let a = send(
        &st,
        post_json(
            "/api/twilio/conversation",
            Some(HARK_KEY),
            &json!({"userId": "u 7"}),
        ),
    )
    .await;
    assert_eq!(a.body["uniqueName"], "user-u 7");
    double.assert_clean();
    let creates = double.requests_to("POST", "/Conversations");
    assert_eq!(creates.len(), 3);
    assert_eq!(
        creates[0].path,
        format!("/v1/Services/{SERVICE_SID}/Conversations")
    );
    assert_eq!(creates[0].one("UniqueName"), Some("support-42"));
    assert_eq!(creates[0].one("FriendlyName"), Some("Support"));
    let fetch = double.requests_to("GET", "/Conversations/{Sid}");
    assert_eq!(
        fetch[0].path,
        format!("/v1/Services/{SERVICE_SID}/Conversations/support-42")
    );

    let a = send(
        &st,
        post_json(
            "/api/twilio/conversation",
            Some(HARK_KEY),
            &json!({"friendlyName": "x"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["field"], "uniqueName");
}

#[tokio::test]
async fn participants_messages_and_listing() {
    let (double, st) = setup(&[]).await;
    let conv = double.seed_conversation("support-1");
    // Chat participant, twice: the second is success with the same sid.
    let body = json!({"conversationSid": conv, "identity": "alice@example.com"});
    let a = send(
        &st,
        post_json("/api/twilio/participant", Some(HARK_KEY), &body),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let mb = a.body["participantSid"].clone();
    let a = send(
        &st,
        post_json("/api/twilio/participant", Some(HARK_KEY), &body),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, json!({"participantSid": mb, "created": false}));
    // SMS binding, twice.
    let sms = json!({"conversationSid": conv, "address": "+14155550100", "proxyAddress": PHONE});
    let a = send(
        &st,
        post_json("/api/twilio/participant", Some(HARK_KEY), &sms),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let sms_sid = a.body["participantSid"].clone();
    let a = send(
        &st,
        post_json("/api/twilio/participant", Some(HARK_KEY), &sms),
    )
    .await;
    assert_eq!(a.body, json!({"participantSid": sms_sid, "created": false}));
    // WhatsApp binding.
    let wa = json!({"conversationSid": conv, "address": "whatsapp:+14155550101", "proxyAddress": format!("whatsapp:{PHONE}")});
    let a = send(
        &st,
        post_json("/api/twilio/participant", Some(HARK_KEY), &wa),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);

    // A message with the label in Attributes.
    let msg = json!({"conversationSid": conv, "body": "Hello there", "author": "agent", "from": "support-bot"});
    let a = send(&st, post_json("/api/twilio/messages", Some(HARK_KEY), &msg)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(
        a.body["messageSid"]
            .as_str()
            .is_some_and(|s| s.starts_with("IM"))
    );
    assert_eq!(a.body["index"], 0);
    let sent = double.messages(&conv);
    assert_eq!(sent[0]["author"], "agent");
    assert_eq!(sent[0]["body"], "Hello there");
    let attrs: Value =
        serde_json::from_str(sent[0]["attributes"].as_str().expect("string")).expect("JSON");
    assert_eq!(attrs, json!({"from": "support-bot"}));

    // The user's conversations.
    let a = send(
        &st,
        get(
            "/api/twilio/conversations?identity=alice@example.com",
            Some(HARK_KEY),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body["conversations"],
        json!([{"conversationSid": conv, "uniqueName": "support-1", "friendlyName": null, "state": "active", "participantSid": mb}])
    );
    double.assert_clean();
}

#[tokio::test]
async fn conversation_field_validation() {
    let (double, st) = setup(&[]).await;
    let conv = double.seed_conversation("v");
    for (body, field) in [
        (json!({"identity": "a"}), "conversationSid"),
        (
            json!({"conversationSid": "CHnope", "identity": "a"}),
            "conversationSid",
        ),
        (json!({"conversationSid": conv}), "identity"),
        (
            json!({"conversationSid": conv, "address": "+14155550100"}),
            "proxyAddress",
        ),
        (
            json!({"conversationSid": conv, "address": "555", "proxyAddress": PHONE}),
            "address",
        ),
        (
            json!({"conversationSid": conv, "proxyAddress": PHONE}),
            "address",
        ),
    ] {
        let a = send(
            &st,
            post_json("/api/twilio/participant", Some(HARK_KEY), &body),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert_eq!(a.body["field"], field, "{body}");
    }
    let long = "x".repeat(1601);
    for (body, field) in [
        (
            json!({"conversationSid": conv, "author": "a", "from": "b"}),
            "body",
        ),
        (
            json!({"conversationSid": conv, "body": long, "author": "a", "from": "b"}),
            "body",
        ),
        (
            json!({"conversationSid": conv, "body": "hi", "from": "b"}),
            "author",
        ),
        (
            json!({"conversationSid": conv, "body": "hi", "author": "a"}),
            "from",
        ),
    ] {
        let a = send(
            &st,
            post_json("/api/twilio/messages", Some(HARK_KEY), &body),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert_eq!(a.body["field"], field);
    }
    assert!(double.requests().is_empty());
}

#[tokio::test]
async fn trusted_identity_acts_only_as_itself() {
    let (double, st) = setup(&[("HARK_TRUSTED_IDENTITY_HEADER", "X-User")]).await;
    let conv = double.seed_conversation("t");
    let as_user = |uri: &str, body: Value| {
        Request::post(uri)
            .header("x-user", "bob")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    let a = send(
        &st,
        as_user("/api/twilio/participant", json!({"conversationSid": conv})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "joins as bob: {}", a.body);
    let a = send(
        &st,
        as_user(
            "/api/twilio/participant",
            json!({"conversationSid": conv, "identity": "eve"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(
        &st,
        as_user(
            "/api/twilio/participant",
            json!({"conversationSid": conv, "address": "+14155550100", "proxyAddress": PHONE}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(
        &st,
        as_user(
            "/api/twilio/messages",
            json!({"conversationSid": conv, "body": "hi", "author": "eve", "from": "x"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = send(
        &st,
        as_user(
            "/api/twilio/messages",
            json!({"conversationSid": conv, "body": "hi", "from": "customer"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(double.messages(&conv)[0]["author"], "bob");
    let r = Request::get("/api/twilio/conversations?identity=eve")
        .header("x-user", "bob")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&st, r).await.status, StatusCode::FORBIDDEN);
    let r = Request::get("/api/twilio/conversations")
        .header("x-user", "bob")
        .body(Body::empty())
        .expect("request");
    let a = send(&st, r).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["conversations"].as_array().map(Vec::len), Some(1));
    double.assert_clean();
}

fn message_added(index: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("AccountSid", ACCOUNT),
        ("EventType", "onMessageAdded"),
        ("Source", "SDK"),
        ("ClientIdentity", "alice"),
        ("ConversationSid", "CH0123456789abcdef0123456789abcdef"),
        ("MessageSid", "IM0123456789abcdef0123456789abcdef"),
        ("Index", index),
        ("Author", "alice"),
        ("Body", "Hi, I need help"),
        ("Attributes", "{}"),
        ("DateCreated", "2024-01-01T00:00:00.000Z"),
    ]
}

#[tokio::test]
async fn webhooks_are_signed_stored_once_and_published() {
    let st = state(base_env()).await;
    let mut events = st.conversation_events();
    let form = message_added("0");
    let a = send(&st, signed_form("/api/webhooks/message-added", &form)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body, json!({}));
    // Twilio's retry of the same event.
    let a = send(&st, signed_form("/api/webhooks/message-added", &form)).await;
    assert_eq!(a.status, StatusCode::OK);
    // A retry identified by Twilio's idempotency token.
    let mut req = signed_form(
        "/api/webhooks/participant-added",
        &[
            ("EventType", "onParticipantAdded"),
            ("ConversationSid", "CH0123456789abcdef0123456789abcdef"),
            ("ParticipantSid", "MB1"),
        ],
    );
    req.headers_mut().insert(
        "i-twilio-idempotency-token",
        "tok-1".parse().expect("header"),
    );
    assert_eq!(send(&st, req).await.status, StatusCode::OK);
    let mut req = signed_form(
        "/api/webhooks/participant-added",
        &[
            ("EventType", "onParticipantAdded"),
            ("ConversationSid", "CH0123456789abcdef0123456789abcdef"),
            ("ParticipantSid", "MB1"),
            ("RetryCount", "1"),
        ],
    );
    req.headers_mut().insert(
        "i-twilio-idempotency-token",
        "tok-1".parse().expect("header"),
    );
    assert_eq!(send(&st, req).await.status, StatusCode::OK);
    for route in [
        "conversation-state-updated",
        "participant-removed",
        "twilio-event",
    ] {
        let a = send(
            &st,
            signed_form(
                &format!("/api/webhooks/{route}"),
                &[
                    ("EventType", "x"),
                    ("ConversationSid", "CH0123456789abcdef0123456789abcdef"),
                ],
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{route}");
    }
    assert!(st.flush().await);
    let stored = st
        .store()
        .conversation_events("CH0123456789abcdef0123456789abcdef")
        .await
        .expect("read");
    let routes: Vec<_> = stored.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(
        routes,
        [
            "message-added",
            "participant-added",
            "conversation-state-updated",
            "participant-removed",
            "twilio-event"
        ]
    );
    assert_eq!(stored[0].1.as_deref(), Some("onMessageAdded"));
    assert_eq!(stored[0].2["Body"], "Hi, I need help");

    let first = events.recv().await.expect("published");
    assert_eq!(first.route, "message-added");
    assert_eq!(first.event_type.as_deref(), Some("onMessageAdded"));

    let a = send(&st, signed_form("/api/webhooks/unknown", &form)).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(
        &st,
        form_request("/api/webhooks/message-added", &form, None),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}
