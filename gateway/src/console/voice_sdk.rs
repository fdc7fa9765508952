//! The phone's "through Twilio" mode: with `TWILIO_TWIML_APP_SID` and API key credentials
//! (`TWILIO_ACCOUNT_SID`, `TWILIO_API_KEY`, `TWILIO_API_SECRET`), the page places a real call
//! through Twilio with the Voice JavaScript SDK (committed under
//! `gateway/assets/console/vendor/`, served from here, never from a CDN). Twilio then posts
//! the TwiML App's voice webhook (`/voice`) with `From=client:console`: a `To` phone number is
//! bridged with `<Dial>`, no `To` connects the call to hark's agent over Media Streams.
//!
//! - `GET /console/config` (session): `{"voice_sdk": bool, "identity": "console", "missing": [names]}`.
//! - `POST /console/voice-token` (session): `{"token": "<JWT>", "identity": "console",
//!   "expires_at": <Unix s>}`, a VoiceGrant as `/voice/token` mints it; 503 naming the missing
//!   settings.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::server::AppState;
use crate::token::{Credentials, TokenOptions};

/// The Voice SDK identity of the console's browser client (`From=client:console`).
pub const IDENTITY: &str = "console";

/// The phone page's Content-Security-Policy in this mode: [`super::CSP`] plus Twilio's
/// signalling and insights sockets and HTTPS endpoints (`*.twilio.com`) and the SDK's ringing
/// sounds (`https://sdk.twilio.com`). The call's media is WebRTC, which CSP does not govern.
pub const CSP_WITH_SDK: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                                img-src 'self' data:; media-src 'self' blob: https://sdk.twilio.com; \
                                connect-src 'self' wss://*.twilio.com https://*.twilio.com; \
                                worker-src 'self'; form-action 'self'; base-uri 'none'; \
                                frame-ancestors 'none'";

/// The credentials for Voice SDK tokens, or the names of the missing settings.
pub(super) fn credentials(st: &AppState) -> Result<Credentials, Vec<&'static str>> {
    let Some(api) = st.api() else {
        return Err(vec![crate::token::ENV_ACCOUNT_SID]);
    };
    let s = &api.settings;
    let c = Credentials::from_lookup(|name| match name {
        crate::token::ENV_ACCOUNT_SID => s.account_sid.clone(),
        crate::token::ENV_API_KEY => s.api_key_sid.clone(),
        crate::token::ENV_API_SECRET => s.api_secret.clone(),
        crate::token::ENV_TWIML_APP_SID => s.twiml_app_sid.clone(),
        _ => None,
    })
    .map_err(|e| match e {
        crate::token::TokenError::MissingSetting { names } => names,
        _ => Vec::new(),
    })?;
    if c.twiml_app_sid.is_none() {
        return Err(vec![crate::token::ENV_TWIML_APP_SID]);
    }
    Ok(c)
}

/// Whether the Voice SDK mode is configured.
pub(super) fn enabled(st: &AppState) -> bool {
    credentials(st).is_ok()
}

/// `GET /console/config`.
pub(super) async fn config(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !st.console().has_session(&headers) {
        return (StatusCode::UNAUTHORIZED, "no console session").into_response();
    }
    let missing = credentials(&st).err().unwrap_or_default();
    axum::Json(json!({
        "voice_sdk": missing.is_empty(),
        "identity": IDENTITY,
        "missing": missing,
    }))
    .into_response()
}

/// `POST /console/voice-token`.
pub(super) async fn token(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !st.console().has_session(&headers) {
        return (StatusCode::UNAUTHORIZED, "no console session").into_response();
    }
    let c = match credentials(&st) {
        Ok(c) => c,
        Err(names) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({
                    "error": format!("the Voice SDK mode needs {}", names.join(", ")),
                })),
            )
                .into_response();
        }
    };
    let (ttl_s, region) = st.api().map_or((3600, None), |a| {
        (a.settings.token_ttl_s, a.settings.voice_region.clone())
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match c.voice_token(IDENTITY, &[], &TokenOptions { ttl_s, region }, now) {
        Ok(token) => {
            metrics::counter!("hark_tokens_total", "grant" => "voice_console").increment(1);
            axum::Json(json!({
                "token": token,
                "identity": IDENTITY,
                "expires_at": now + ttl_s,
            }))
            .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
