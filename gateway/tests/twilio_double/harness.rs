//! Helpers for the gateway API tests: settings, the router without a socket, signed requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use hark_gateway::api::{self, ApiState};
use hark_gateway::signature;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Test Account SID.
pub const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
/// Test Auth Token.
pub const AUTH_TOKEN: &str = "test-auth-token";
/// Test API key SID.
pub const API_KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
/// Test API key secret.
pub const API_SECRET: &str = "test-api-secret";
/// Test TwiML App SID.
pub const APP_SID: &str = "AP0123456789abcdef0123456789abcdef";
/// Test Conversations Service SID.
pub const SERVICE_SID: &str = "IS0123456789abcdef0123456789abcdef";
/// Test `HARK_API_KEY`.
pub const HARK_KEY: &str = "hark-test-key-0123456789";
/// A second `HARK_API_KEY`.
pub const HARK_KEY_2: &str = "hark-test-key-abcdefghij";
/// Test `HARK_PUBLIC_URL`.
pub const PUBLIC: &str = "https://hark.example.com";
/// Test `TWILIO_PHONE_NUMBER`.
pub const PHONE: &str = "+15005550006";

/// The usual settings: everything configured, in-memory database.
pub fn base_env() -> Vec<(String, String)> {
    [
        ("HARK_API_KEY", format!("{HARK_KEY},{HARK_KEY_2}")),
        ("TWILIO_ACCOUNT_SID", ACCOUNT.into()),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.into()),
        ("TWILIO_API_KEY", API_KEY_SID.into()),
        ("TWILIO_API_SECRET", API_SECRET.into()),
        ("TWILIO_TWIML_APP_SID", APP_SID.into()),
        ("TWILIO_CONVERSATIONS_SERVICE_SID", SERVICE_SID.into()),
        ("TWILIO_PHONE_NUMBER", PHONE.into()),
        ("HARK_PUBLIC_URL", PUBLIC.into()),
        ("HARK_DATABASE_URL", "sqlite::memory:".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `base_env` with `changes` applied (an empty value unsets).
pub fn env_with(changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = base_env();
    for (k, v) in changes {
        env.retain(|(n, _)| n != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// The state for `env`.
pub async fn state(env: Vec<(String, String)>) -> Arc<ApiState> {
    ApiState::from_lookup(move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        .await
        .expect("state builds")
}

/// A response: status, headers, body as JSON (or `Value::String` when not JSON).
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Value,
}

/// Sends `req` through `api::router(st)` without a socket.
pub async fn send(st: &Arc<ApiState>, req: Request<Body>) -> Answer {
    let resp = api::router(st.clone())
        .oneshot(req)
        .await
        .expect("router is infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        headers,
        body,
    }
}

/// A GET with an optional bearer key.
pub fn get(uri: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri).header(header::HOST, "internal:3000");
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(Body::empty()).expect("request")
}

/// A JSON POST with an optional bearer key.
pub fn post_json(uri: &str, key: Option<&str>, body: &Value) -> Request<Body> {
    let mut b = Request::post(uri)
        .header(header::HOST, "internal:3000")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    b.body(Body::from(body.to_string())).expect("request")
}

/// A form POST signed as Twilio signs it for `PUBLIC + uri` with [`AUTH_TOKEN`].
pub fn signed_form(uri: &str, form: &[(&str, &str)]) -> Request<Body> {
    let sig = signature::compute(AUTH_TOKEN, &format!("{PUBLIC}{uri}"), form);
    form_request(uri, form, Some(&sig))
}

/// A form POST with the given signature header (or none).
pub fn form_request(uri: &str, form: &[(&str, &str)], sig: Option<&str>) -> Request<Body> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        s.append_pair(k, v);
    }
    let mut b = Request::post(uri)
        .header(header::HOST, "internal:3000")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(sig) = sig {
        b = b.header(signature::HEADER, sig);
    }
    b.body(Body::from(s.finish())).expect("request")
}

/// A fresh SQLite file path in the temp directory (removed with its WAL files on drop).
pub struct TempDb {
    /// The file.
    pub path: PathBuf,
}

impl TempDb {
    /// A new unique path.
    pub fn new(tag: &str) -> TempDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "hark-{tag}-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDb { path }
    }

    /// `sqlite://<path>`.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}
