//! `GET|POST /voice/token` and `GET|POST /api/twilio/token`: Twilio Access Tokens for the Voice
//! and Conversations SDKs (format: [`crate::token`], `reference/twilio.md` §2).
//!
//! The identity comes from the query string, a form body or a JSON body (`identity`); with a
//! trusted proxy (`HARK_TRUSTED_IDENTITY_HEADER`) it is the proxy's identity, and a different one
//! in the request is refused (403). Answer: `{"token": "<JWT>", "identity": "...",
//! "expires_at": <Unix s>}`; lifetime `HARK_TOKEN_TTL_S` (default 3600 s, at most 24 h).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::{Caller, Need};
use super::{ApiError, ApiState, now_s, opt_str, request_params};
use crate::token::{ChatGrant, Grant, TokenError, TokenOptions, VoiceGrant, validate_identity};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Voice,
    Chat,
}

/// `GET|POST /voice/token`: a Voice SDK token (VoiceGrant: incoming allowed, outgoing through
/// `TWILIO_TWIML_APP_SID`; `twr` = `TWILIO_VOICE_REGION` when set).
pub(crate) async fn voice(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    mint(&st, Kind::Voice, &headers, &uri, &body)
        .await
        .into_response()
}

/// `GET|POST /api/twilio/token`: a Conversations SDK token (ChatGrant with
/// `TWILIO_CONVERSATIONS_SERVICE_SID`).
pub(crate) async fn chat(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    mint(&st, Kind::Chat, &headers, &uri, &body)
        .await
        .into_response()
}

/// The identity a request acts as: the trusted proxy's, or the request's `identity`.
///
/// # Errors
/// 400 when missing or not a string; 403 when it differs from the trusted proxy's.
pub(crate) fn resolve_identity(
    caller: &Caller,
    requested: Option<String>,
) -> Result<String, ApiError> {
    match (caller.identity(), requested) {
        (Some(trusted), Some(asked)) if asked != trusted => Err(ApiError::Forbidden(format!(
            "authenticated as {trusted:?}; cannot act as {asked:?}"
        ))),
        (Some(trusted), _) => Ok(trusted.to_owned()),
        (None, Some(asked)) => Ok(asked),
        (None, None) => Err(ApiError::field(
            "identity",
            "required (query, form or JSON field `identity`)",
        )),
    }
}

async fn mint(
    st: &ApiState,
    kind: Kind,
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
) -> Result<impl IntoResponse + use<>, ApiError> {
    let route = match kind {
        Kind::Voice => "voice_token",
        Kind::Chat => "chat_token",
    };
    let caller = st.authenticate(headers, Need::Caller, route)?;
    let params = request_params(headers, uri.query(), body)?;
    let identity = resolve_identity(&caller, opt_str(&params, "identity")?)?;
    let grant = match kind {
        Kind::Voice => Grant::Voice(VoiceGrant::default()),
        Kind::Chat => Grant::Chat(ChatGrant::default()),
    };
    validate_identity(&identity, &grant).map_err(|e| ApiError::field("identity", e.to_string()))?;
    let credentials = st
        .credentials
        .as_ref()
        .map_err(|names| ApiError::NotConfigured {
            names: names.clone(),
            what: "token minting",
        })?;
    let now = now_s();
    let ttl_s = st.settings.token_ttl_s;
    let options = TokenOptions {
        ttl_s,
        region: match kind {
            Kind::Voice => st.settings.voice_region.clone(),
            Kind::Chat => None,
        },
    };
    let token = match kind {
        Kind::Voice => credentials.voice_token(&identity, &[], &options, now),
        Kind::Chat => credentials.chat_token(&identity, &options, now),
    }
    .map_err(|e| match e {
        TokenError::MissingSetting { names } => ApiError::NotConfigured {
            names,
            what: "token minting",
        },
        TokenError::InvalidIdentity { reason } => ApiError::field("identity", reason),
        other => ApiError::BadRequest {
            field: None,
            reason: other.to_string(),
        },
    })?;
    metrics::counter!("hark_tokens_total", "grant" => match kind { Kind::Voice => "voice", Kind::Chat => "chat" })
        .increment(1);
    Ok(axum::Json(json!({
        "token": token,
        "identity": identity,
        "expires_at": now + ttl_s,
    })))
}
