//! Twilio webhooks with a JSON body, signed the way Twilio signs them: `bodySHA256` (lowercase
//! hex SHA-256 of the raw body) in the URL's query, `X-Twilio-Signature` = Base64 HMAC-SHA1 of
//! the full URL with no parameters appended (twilio.com/docs/usage/security; twilio-node
//! `validateRequestWithBody`, twilio-python `RequestValidator.validate` with a raw body).
//!
//! Every signed route must take them (`/voice`, the call, recording and stream status
//! callbacks, the Conversations webhooks) as well as form posts, and refuse a tampered body,
//! URL or hash. The signatures here are computed independently of hark's signer (HMAC-SHA1 and
//! SHA-256 straight from the `hmac`/`sha1`/`sha2` crates).

mod twilio_double;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use hark_gateway::api::ApiState;
use hark_gateway::config::Config;
use hark_gateway::server::{self, AppState};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use twilio_double::harness::*;

const CALL: &str = "CA0123456789abcdef0123456789abcdef";
const STREAM: &str = "MZ0123456789abcdef0123456789abcdef";

/// Base64(HMAC-SHA1(token, data)), computed here, not by hark.
fn hmac_sha1_b64(token: &str, data: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Lowercase hex SHA-256.
fn sha256_hex(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `path` with `bodySHA256` for `body` appended to its query.
fn with_hash(path: &str, body: &[u8]) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}bodySHA256={}", sha256_hex(body))
}

/// A JSON POST to `path_and_query` (which carries `bodySHA256`) with `signature`.
fn json_request(path_and_query: &str, body: &[u8], signature: Option<&str>) -> Request<Body> {
    let mut b = Request::post(path_and_query)
        .header(header::HOST, "internal:3000")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(sig) = signature {
        b = b.header("X-Twilio-Signature", sig);
    }
    b.body(Body::from(body.to_vec())).expect("request")
}

/// A JSON POST as Twilio sends it to `PUBLIC + path`: hash in the query, signature over the
/// public URL.
fn signed_json(path: &str, body: &Value) -> Request<Body> {
    let raw = body.to_string().into_bytes();
    let pq = with_hash(path, &raw);
    let sig = hmac_sha1_b64(AUTH_TOKEN, &format!("{PUBLIC}{pq}"));
    json_request(&pq, &raw, Some(&sig))
}

fn status_body(seq: u32, status: &str) -> Value {
    json!({
        "AccountSid": ACCOUNT,
        "CallSid": CALL,
        "CallStatus": status,
        "SequenceNumber": seq.to_string(),
        "CallbackSource": "call-progress-events",
        "Direction": "outbound-api",
        "From": PHONE,
        "To": "+14155550100",
        "Timestamp": "Tue, 31 Aug 2010 20:36:28 +0000",
    })
}

/// Every signed API route with a body it accepts.
fn routes() -> Vec<(&'static str, Value)> {
    vec![
        ("/api/twilio/status", status_body(0, "initiated")),
        (
            "/api/twilio/recording",
            json!({
                "AccountSid": ACCOUNT, "CallSid": CALL,
                "RecordingSid": "RE0123456789abcdef0123456789abcdef",
                "RecordingStatus": "completed", "RecordingDuration": "12",
                "RecordingChannels": 2,
            }),
        ),
        (
            "/api/twilio/stream-status",
            json!({
                "AccountSid": ACCOUNT, "CallSid": CALL, "StreamSid": STREAM,
                "StreamName": "agent", "StreamEvent": "stream-started",
                "Timestamp": "2024-01-01T00:00:00Z",
            }),
        ),
        (
            "/api/webhooks/message-added",
            json!({
                "AccountSid": ACCOUNT, "EventType": "onMessageAdded", "Source": "API",
                "ConversationSid": "CH0123456789abcdef0123456789abcdef",
                "MessageSid": "IM0123456789abcdef0123456789abcdef",
                "Index": 0, "Author": "user-1", "Body": "Hello there",
            }),
        ),
    ]
}

#[tokio::test]
async fn correctly_signed_json_is_accepted_on_every_callback_route() {
    let st = state(base_env()).await;
    for (path, body) in routes() {
        let a = send(&st, signed_json(path, &body)).await;
        assert!(a.status.is_success(), "{path}: {} {}", a.status, a.body);
    }
    assert!(st.flush().await);
    let call = st.store().call(CALL).await.expect("read").expect("stored");
    assert_eq!(call.call.status.as_deref(), Some("initiated"));
    assert_eq!(call.call.stream_sid.as_deref(), Some(STREAM));
    assert_eq!(call.recordings.len(), 1);
    assert_eq!(call.recordings[0].channels, Some(2), "numbers are read too");
    let events = st
        .store()
        .conversation_events("CH0123456789abcdef0123456789abcdef")
        .await
        .expect("read");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["Body"], "Hello there");
}

#[tokio::test]
async fn twenty_of_twenty_signed_json_status_callbacks_are_stored() {
    let st = state(base_env()).await;
    for seq in 0..20u32 {
        let status = if seq == 19 {
            "completed"
        } else {
            "in-progress"
        };
        let a = send(
            &st,
            signed_json("/api/twilio/status", &status_body(seq, status)),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "#{seq}: {}", a.body);
    }
    assert!(st.flush().await);
    let call = st.store().call(CALL).await.expect("read").expect("stored");
    assert_eq!(call.timeline.len(), 20);
    assert_eq!(call.call.status.as_deref(), Some("completed"));
}

#[tokio::test]
async fn tampered_json_body_url_or_hash_is_refused() {
    let st = state(base_env()).await;
    for (path, body) in routes() {
        let raw = body.to_string().into_bytes();
        let pq = with_hash(path, &raw);
        let sig = hmac_sha1_b64(AUTH_TOKEN, &format!("{PUBLIC}{pq}"));

        // The body changed after signing (one byte; the hash no longer matches).
        let mut tampered = raw.clone();
        let at = tampered.len() - 3;
        tampered[at] ^= 1;
        let a = send(&st, json_request(&pq, &tampered, Some(&sig))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: tampered body");

        // A new body with its own hash, but the signature is over the old URL.
        let forged = json!({"CallSid": CALL, "CallStatus": "completed"})
            .to_string()
            .into_bytes();
        let a = send(
            &st,
            json_request(&with_hash(path, &forged), &forged, Some(&sig)),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{path}: body and hash replaced"
        );

        // The URL changed (an extra query parameter).
        let a = send(&st, json_request(&format!("{pq}&x=1"), &raw, Some(&sig))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: tampered URL");

        // Signed for another host.
        let other = hmac_sha1_b64(AUTH_TOKEN, &format!("https://evil.example{pq}"));
        let a = send(&st, json_request(&pq, &raw, Some(&other))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: other host");

        // Wrong token.
        let wrong = hmac_sha1_b64("another-token", &format!("{PUBLIC}{pq}"));
        let a = send(&st, json_request(&pq, &raw, Some(&wrong))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: wrong token");

        // No signature at all.
        let a = send(&st, json_request(&pq, &raw, None)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: unsigned");

        // A JSON body without bodySHA256: nothing covers it, whatever the signature.
        let url_sig = hmac_sha1_b64(AUTH_TOKEN, &format!("{PUBLIC}{path}"));
        let a = send(&st, json_request(path, &raw, Some(&url_sig))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: no bodySHA256");
    }
    assert!(st.flush().await);
    assert!(
        st.store().call(CALL).await.expect("read").is_none(),
        "nothing refused was stored"
    );
}

#[tokio::test]
async fn json_url_variants_match_as_the_helper_libraries_try_them() {
    // HARK_PUBLIC_URL has a port; Twilio signed the URL without it (voice over HTTPS drops
    // the port), or with the default port 443 added.
    let st = state(env_with(&[(
        "HARK_PUBLIC_URL",
        "https://hark.example.com:8443",
    )]))
    .await;
    let raw = status_body(0, "ringing").to_string().into_bytes();
    let pq = with_hash("/api/twilio/status", &raw);
    let stripped = hmac_sha1_b64(AUTH_TOKEN, &format!("https://hark.example.com{pq}"));
    let a = send(&st, json_request(&pq, &raw, Some(&stripped))).await;
    assert_eq!(a.status, StatusCode::OK, "port stripped: {}", a.body);

    let st = state(base_env()).await;
    let raw = status_body(1, "ringing").to_string().into_bytes();
    let pq = with_hash("/api/twilio/status", &raw);
    let with_port = hmac_sha1_b64(AUTH_TOKEN, &format!("https://hark.example.com:443{pq}"));
    let a = send(&st, json_request(&pq, &raw, Some(&with_port))).await;
    assert_eq!(a.status, StatusCode::OK, "default port added: {}", a.body);

    // The hash may come in upper case hex; the signature covers the URL as sent.
    let pq = format!(
        "/api/twilio/status?bodySHA256={}",
        sha256_hex(&raw).to_ascii_uppercase()
    );
    let sig = hmac_sha1_b64(AUTH_TOKEN, &format!("{PUBLIC}{pq}"));
    let a = send(&st, json_request(&pq, &raw, Some(&sig))).await;
    assert_eq!(a.status, StatusCode::OK, "upper-case hash: {}", a.body);
}

#[tokio::test]
async fn form_posts_are_still_accepted() {
    let st = state(base_env()).await;
    let form = [("CallSid", CALL), ("CallStatus", "ringing")];
    // Form signature computed here too: URL + sorted name/value pairs.
    let sig = hmac_sha1_b64(
        AUTH_TOKEN,
        &format!("{PUBLIC}/api/twilio/statusCallSid{CALL}CallStatusringing"),
    );
    let a = send(&st, form_request("/api/twilio/status", &form, Some(&sig))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

async fn voice_state(api: Arc<ApiState>) -> Arc<AppState> {
    let config = Config {
        workers: 1,
        public_url: Some(PUBLIC.into()),
        twilio_auth_token: Some(AUTH_TOKEN.into()),
        ..Config::default()
    };
    AppState::with_api(config, api).expect("state")
}

async fn voice(st: &Arc<AppState>, req: Request<Body>) -> (StatusCode, String) {
    let resp = server::router(st.clone())
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn voice_webhook_takes_signed_json() {
    let api = state(base_env()).await;
    let st = voice_state(api).await;
    let body = json!({
        "AccountSid": ACCOUNT, "CallSid": CALL, "From": "+14155550100", "To": PHONE,
        "Direction": "inbound", "CallStatus": "ringing",
    });
    let (status, twiml) = voice(&st, signed_json("/voice", &body)).await;
    assert_eq!(status, StatusCode::OK, "{twiml}");
    assert!(twiml.contains("<Connect>"), "{twiml}");
    assert!(
        twiml.contains(CALL),
        "the JSON parameters reach the stream: {twiml}"
    );

    let raw = body.to_string().into_bytes();
    let pq = with_hash("/voice", &raw);
    let sig = hmac_sha1_b64(AUTH_TOKEN, &format!("{PUBLIC}{pq}"));
    let mut tampered = raw.clone();
    tampered[5] ^= 1;
    let (status, _) = voice(&st, json_request(&pq, &tampered, Some(&sig))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "tampered body");
    let (status, _) = voice(&st, json_request(&format!("{pq}&a=b"), &raw, Some(&sig))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "tampered URL");
}
