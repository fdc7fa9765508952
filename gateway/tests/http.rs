//! HTTP routes called through the router without a socket: `/voice` TwiML golden files (with and
//! without HARK_PUBLIC_URL, with parameters, with a browser `To`), signature checks, health and
//! metrics. `BLESS=1 cargo test -p hark-gateway --test http` rewrites the golden files.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hark_gateway::config::{Config, parse_after_connect};
use hark_gateway::server::{AppState, router};
use hark_gateway::signature;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn state(f: impl FnOnce(&mut Config)) -> Arc<AppState> {
    let mut c = Config {
        workers: 1,
        ..Config::default()
    };
    f(&mut c);
    AppState::new(c).unwrap()
}

async fn send(st: &Arc<AppState>, req: Request<Body>) -> (StatusCode, String, Option<String>) {
    let resp = router(st.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), ct)
}

fn post(uri: &str, host: &str, form: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form.to_string()))
        .unwrap()
}

fn golden(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/twiml")
        .join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden {path:?}; run with BLESS=1"));
    assert_eq!(got, want, "golden {name} differs");
}

const CALL_FORM: &str = "CallSid=CA1234567890abcdef1234567890abcdef&AccountSid=AC00000000000000000000000000000000&From=%2B15551234567&To=%2B15557654321&Direction=inbound&payerId=P-42&secret=nope";

#[tokio::test]
async fn voice_with_public_url_and_parameters() {
    let st = state(|c| c.public_url = Some("https://hark.example.com".into()));
    let (status, body, ct) = send(
        &st,
        post("/voice?agent=support&ignored=1", "internal:3000", CALL_FORM),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some("text/xml"));
    assert!(body.contains(r#"url="wss://hark.example.com/media-stream""#));
    assert!(
        !body.contains("secret") && !body.contains("ignored"),
        "only allowed parameters pass"
    );
    golden("voice-public-url.xml", &body);
}

#[tokio::test]
async fn voice_from_host_header_and_alias_route() {
    let st = state(|_| {});
    let (status, body, _) = send(
        &st,
        post("/api/twilio/voice", "abc123.ngrok.app", CALL_FORM),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"url="wss://abc123.ngrok.app/media-stream""#));
    let url = body
        .split("url=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    assert!(
        !url.contains('?'),
        "the stream URL carries no query string: {url}"
    );
    golden("voice-host-header.xml", &body);
}

#[tokio::test]
async fn voice_after_connect_is_configurable() {
    let st = state(|c| {
        c.public_url = Some("https://hark.example.com".into());
        c.after_connect = parse_after_connect("say:Thanks for calling & goodbye|hangup").unwrap();
    });
    let (_, body, _) = send(
        &st,
        post(
            "/voice",
            "x",
            "CallSid=CA1&From=%2B15551234567&To=%2B15557654321",
        ),
    )
    .await;
    golden("voice-after-connect.xml", &body);
}

#[tokio::test]
async fn browser_client_with_a_phone_number_gets_dial() {
    let st = state(|c| c.twilio_phone_number = Some("+15550001111".into()));
    let (status, body, _) = send(
        &st,
        post(
            "/voice",
            "hark.example.com",
            "AccountSid=AC1&CallSid=CA2&From=client%3Aalice&To=%2B442071838750",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    golden("voice-browser-dial.xml", &body);
    // A browser client without a phone number in To talks to the agent.
    let (_, body, _) = send(
        &st,
        post(
            "/voice",
            "hark.example.com",
            "CallSid=CA2&From=client%3Aalice",
        ),
    )
    .await;
    assert!(body.contains("<Connect>"));
}

#[tokio::test]
async fn voice_signature_is_checked_when_the_token_is_set() {
    let st = state(|c| {
        c.public_url = Some("https://hark.example.com".into());
        c.twilio_auth_token = Some("12345".into());
    });
    let params: Vec<(String, String)> = form_urlencoded::parse(CALL_FORM.as_bytes())
        .into_owned()
        .collect();
    let sig = signature::compute("12345", "https://hark.example.com/voice?agent=a", &params);
    let mut req = post("/voice?agent=a", "internal", CALL_FORM);
    req.headers_mut()
        .insert(signature::HEADER, sig.parse().unwrap());
    let (status, body, _) = send(&st, req).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut req = post("/voice?agent=a", "internal", CALL_FORM);
    req.headers_mut().insert(
        signature::HEADER,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".parse().unwrap(),
    );
    let (status, body, _) = send(&st, req).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("X-Twilio-Signature"), "{body}");

    let (status, _, _) = send(&st, post("/voice?agent=a", "internal", CALL_FORM)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "missing header: 400 like twilio-node's middleware"
    );
}

#[tokio::test]
async fn media_stream_upgrade_with_bad_or_missing_signature_is_403() {
    let st = state(|c| c.twilio_auth_token = Some("12345".into()));
    for sig in [None, Some("bm9wZQ==")] {
        let (status, body, _) = send(&st, upgrade("hark.example.com", sig)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
}

/// A `/media-stream` upgrade request from `host`, signed with `sig` when given.
fn upgrade(host: &str, sig: Option<&str>) -> Request<Body> {
    let mut req = Request::get("/media-stream")
        .header(header::HOST, host)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(s) = sig {
        req = req.header(signature::HEADER, s);
    }
    req.body(Body::empty()).unwrap()
}

/// Issue 12 §4: without `TWILIO_AUTH_TOKEN` the media WebSocket is refused like `/voice` and
/// the callbacks, 503 naming the variable and the development opt-out, signed or not; the
/// refusal is counted.
#[tokio::test]
async fn media_stream_without_the_token_is_503_naming_the_variable() {
    let st = state(|_| {});
    let sig = signature::compute(
        "any",
        "ws://hark.example.com/media-stream",
        &[] as &[(String, String)],
    );
    for sig in [None, Some(sig.as_str())] {
        let (status, body, _) = send(&st, upgrade("hark.example.com", sig)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("TWILIO_AUTH_TOKEN"), "{body}");
        assert!(body.contains("HARK_DEV_INSECURE=no-signatures"), "{body}");
    }
    let (_, metrics, _) = send(&st, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hark_media_stream_refused_total{reason=\"no_token\"}")),
        "{metrics}"
    );
}

/// `HARK_DEV_INSECURE=no-signatures` (parsed as the gateway API parses it) lets an unsigned
/// upgrade through the signature gate, with or without a token: here it reaches the upgrade
/// itself, which needs a real connection (tests/live.rs has the real-socket case).
#[tokio::test]
async fn media_stream_with_no_signatures_passes_the_gate() {
    let lookup = |k: &str| (k == "HARK_DEV_INSECURE").then(|| "no-signatures".to_string());
    let c = Config::from_lookup(lookup).unwrap();
    assert!(c.dev_insecure.no_signatures);
    for token in [None, Some("12345")] {
        let st = state(|x| {
            x.dev_insecure = c.dev_insecure;
            x.twilio_auth_token = token.map(str::to_string);
        });
        let (status, body, _) = send(&st, upgrade("hark.example.com", None)).await;
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_ne!(status, StatusCode::FORBIDDEN, "{body}");
    }
}

#[tokio::test]
async fn bad_requests_get_a_4xx_with_a_reason() {
    let st = state(|c| c.dev_insecure.no_signatures = true);
    let (status, body, _) = send(
        &st,
        Request::get("/media-stream").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("WebSocket"), "{body}");
    let req = Request::post("/voice")
        .body(Body::from(vec![0xFF, 0xFE]))
        .unwrap();
    let (status, body, _) = send(&st, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body.is_empty());
}

#[tokio::test]
async fn health_and_metrics() {
    let st = state(|_| {});
    let (status, body, _) = send(&st, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let (status, body, ct) = send(&st, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.unwrap().starts_with("text/plain"));
    for name in [
        "hark_calls_active",
        "hark_calls_total",
        "hark_inbound_frames_total",
        "hark_barge_ins_total",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
}
