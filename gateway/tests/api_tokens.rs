//! Token routes through the router without a socket: authentication (API key, trusted proxy
//! identity, development mode), identity validation, missing settings, rate limit, and the
//! JWTs decoded and checked field by field.

mod twilio_double;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use twilio_double::harness::*;

/// Splits and verifies a JWT with the API secret; returns (header, claims).
fn open(jwt: &str) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let mut mac = Hmac::<Sha256>::new_from_slice(API_SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url"))
        .expect("HS256 with TWILIO_API_SECRET");
    let part = |i: usize| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[i]).expect("base64url")).expect("JSON")
    };
    (part(0), part(1))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

#[tokio::test]
async fn voice_token_fields() {
    let st = state(base_env()).await;
    let before = now();
    let a = send(&st, get("/voice/token?identity=alice_01", Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["identity"], "alice_01");
    let (h, c) = open(a.body["token"].as_str().expect("token"));
    assert_eq!(
        h,
        json!({"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1"})
    );
    let iat = c["nbf"].as_u64().expect("nbf");
    assert!(iat >= before && iat <= now());
    assert_eq!(c["exp"].as_u64(), Some(iat + 3600));
    assert_eq!(a.body["expires_at"].as_u64(), Some(iat + 3600));
    assert_eq!(c["jti"], format!("{API_KEY_SID}-{iat}"));
    assert_eq!(c["iss"], API_KEY_SID);
    assert_eq!(c["sub"], ACCOUNT);
    assert_eq!(
        c["grants"],
        json!({"identity": "alice_01", "voice": {"incoming": {"allow": true}, "outgoing": {"application_sid": APP_SID}}})
    );
    assert_eq!(
        c.as_object().map(|o| o.len()),
        Some(6),
        "no other claims: {c}"
    );
}

#[tokio::test]
async fn voice_token_region_ttl_and_post_forms() {
    let st = state(env_with(&[
        ("TWILIO_VOICE_REGION", "ie1"),
        ("HARK_TOKEN_TTL_S", "600"),
    ]))
    .await;
    // JSON body.
    let a = send(
        &st,
        post_json("/voice/token", Some(HARK_KEY), &json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let (h, c) = open(a.body["token"].as_str().expect("token"));
    assert_eq!(h["twr"], "ie1");
    assert_eq!(
        c["exp"].as_u64().expect("exp") - c["nbf"].as_u64().expect("nbf"),
        600
    );
    // Form body.
    let req = Request::post("/voice/token")
        .header(header::AUTHORIZATION, format!("Bearer {HARK_KEY_2}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("identity=carol"))
        .expect("request");
    let a = send(&st, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["identity"], "carol");
}

#[tokio::test]
async fn chat_token_fields() {
    let st = state(base_env()).await;
    let a = send(
        &st,
        post_json(
            "/api/twilio/token",
            Some(HARK_KEY),
            &json!({"identity": "zoë@example.com"}),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let (h, c) = open(a.body["token"].as_str().expect("token"));
    assert_eq!(h.get("twr"), None);
    assert_eq!(
        c["grants"],
        json!({"identity": "zoë@example.com", "chat": {"service_sid": SERVICE_SID}})
    );
    // GET with the identity in the query works too.
    let a = send(&st, get("/api/twilio/token?identity=dave", Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn authentication_is_required() {
    let st = state(base_env()).await;
    let a = send(&st, get("/voice/token?identity=alice", None)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer"))
    );
    let a = send(
        &st,
        get("/voice/token?identity=alice", Some("wrong-key-0123456789")),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.body["error"], "invalid API key");

    // Nothing configured that could authenticate: 503 naming the settings.
    let st = state(env_with(&[("HARK_API_KEY", "")])).await;
    let a = send(&st, get("/voice/token?identity=alice", None)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.body["missing"],
        json!(["HARK_API_KEY", "HARK_TRUSTED_IDENTITY_HEADER"])
    );
}

#[tokio::test]
async fn development_mode_opens_minting() {
    let st = state(env_with(&[
        ("HARK_API_KEY", ""),
        ("HARK_DEV_INSECURE", "open-tokens"),
    ]))
    .await;
    let a = send(&st, get("/voice/token?identity=alice", None)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    // /calls stays closed.
    let a = send(
        &st,
        post_json("/calls", None, &json!({"to": "+14155550100"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn trusted_proxy_identity() {
    let st = state(env_with(&[(
        "HARK_TRUSTED_IDENTITY_HEADER",
        "X-Forwarded-User",
    )]))
    .await;
    let req = |uri: &str, user: &str| {
        Request::get(uri)
            .header("x-forwarded-user", user)
            .body(Body::empty())
            .expect("request")
    };
    let a = send(&st, req("/api/twilio/token", "erin@example.com")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["identity"], "erin@example.com");
    let a = send(
        &st,
        req(
            "/api/twilio/token?identity=erin@example.com",
            "erin@example.com",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(
        &st,
        req("/api/twilio/token?identity=mallory", "erin@example.com"),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    // The proxy header does not open /calls.
    let r = Request::post("/calls")
        .header("x-forwarded-user", "erin")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"to":"+14155550100"}"#))
        .expect("request");
    assert_eq!(send(&st, r).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn identity_validation() {
    let st = state(base_env()).await;
    for (uri, why) in [
        ("/voice/token", "required"),
        ("/voice/token?identity=", "required"),
        ("/voice/token?identity=alice%20smith", "' '"),
        ("/voice/token?identity=alice@example.com", "'@'"),
        ("/api/twilio/token?identity=a%0Ab", "control"),
    ] {
        let a = send(&st, get(uri, Some(HARK_KEY))).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}: {}", a.body);
        assert_eq!(a.body["field"], "identity", "{uri}");
        assert!(
            a.body["error"].as_str().unwrap_or_default().contains(why),
            "{uri}: {}",
            a.body
        );
    }
    let long = "a".repeat(122);
    let a = send(
        &st,
        get(&format!("/voice/token?identity={long}"), Some(HARK_KEY)),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = send(
        &st,
        post_json("/voice/token", Some(HARK_KEY), &json!({"identity": 7})),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["field"], "identity");
}

#[tokio::test]
async fn missing_credentials_name_the_variables() {
    let st = state(env_with(&[
        ("TWILIO_API_SECRET", ""),
        ("TWILIO_API_KEY", ""),
    ]))
    .await;
    let a = send(&st, get("/voice/token?identity=alice", Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.body["missing"],
        json!(["TWILIO_API_KEY", "TWILIO_API_SECRET"])
    );
    let st = state(env_with(&[
        ("TWILIO_TWIML_APP_SID", ""),
        ("TWILIO_CONVERSATIONS_SERVICE_SID", ""),
    ]))
    .await;
    let a = send(&st, get("/voice/token?identity=alice", Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["missing"], json!(["TWILIO_TWIML_APP_SID"]));
    let a = send(&st, get("/api/twilio/token?identity=alice", Some(HARK_KEY))).await;
    assert_eq!(
        a.body["missing"],
        json!(["TWILIO_CONVERSATIONS_SERVICE_SID"])
    );
}

#[tokio::test]
async fn rate_limit_per_key_with_retry_after() {
    let st = state(env_with(&[
        ("HARK_RATE_LIMIT_PER_MIN", "2"),
        ("HARK_RATE_LIMIT_BURST", "3"),
    ]))
    .await;
    for _ in 0..3 {
        let a = send(&st, get("/voice/token?identity=alice", Some(HARK_KEY))).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let a = send(&st, get("/voice/token?identity=alice", Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    let retry: u64 = a
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    // Another key has its own bucket.
    let a = send(&st, get("/voice/token?identity=alice", Some(HARK_KEY_2))).await;
    assert_eq!(a.status, StatusCode::OK);
}
