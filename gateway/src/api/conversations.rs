//! Twilio Conversations seeds for a chat front end, through hark's backend (Conversations v1,
//! `reference/twilio.md` §5.5; paths under `/v1/Services/{TWILIO_CONVERSATIONS_SERVICE_SID}/`
//! when that is set, so the conversations are the ones chat tokens see, else the default
//! service's `/v1/`):
//!
//! - `POST /api/twilio/conversation` `{uniqueName | userId, friendlyName?}` → create, or fetch the
//!   conversation with that unique name (`userId` means unique name `user-<userId>`) →
//!   `{conversationSid, uniqueName, created}`;
//! - `POST /api/twilio/participant` `{conversationSid, identity}` (chat) or
//!   `{conversationSid, address, proxyAddress}` (SMS, or WhatsApp as `whatsapp:+…`) →
//!   `{participantSid, created}`; an existing participant is success with its sid;
//! - `POST /api/twilio/messages` `{conversationSid, body, author, from}` → sent with
//!   `Attributes` `{"from": "<from>"}` → `{messageSid, index}`;
//! - `GET /api/twilio/conversations?identity=` → `{conversations: [{conversationSid,
//!   uniqueName, friendlyName, state, participantSid}]}` (first page, up to 50);
//! - `POST /api/webhooks/{message-added, conversation-state-updated, participant-added,
//!   participant-removed, twilio-event}`: Conversations webhooks (form posts, or JSON signed with
//!   `bodySHA256`), signature-checked,
//!   stored once, answered 200 `{}` at once; subscribers of
//!   [`super::ApiState::conversation_events`] do the work after.
//!
//! With a trusted identity proxy, a user may only act as themself: `identity` and `author` must
//! be (and default to) the proxy's identity, and adding SMS/WhatsApp participants needs an API
//! key.
//!
//! "Already exists" answers are recognised by HTTP 409 or Twilio codes 50353 (unique name taken),
//! 50433 (participant exists) and 50416 (binding exists); the codes are as commonly reported,
//! unverified against a live account.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::auth::{Caller, Need};
use super::calls::is_e164;
use super::recorder::Op;
use super::store::StoredConversationEvent;
use super::tokens::resolve_identity;
use super::{
    ApiError, ApiState, ConversationEvent, TwilioApiError, now_ms, opt_str, request_params,
};
use crate::token::{ChatGrant, Grant, validate_identity};

/// Webhook routes under `/api/webhooks/`.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "message-added",
    "conversation-state-updated",
    "participant-added",
    "participant-removed",
    "twilio-event",
];

/// Longest message body, characters (`CreateConversationMessageRequest.Body`, ≤ 1600).
pub const MAX_BODY_CHARS: usize = 1600;
/// Longest unique name, friendly name, author or label, characters (Conversations' 256-character
/// limit on names and identities).
pub const MAX_NAME_CHARS: usize = 256;

fn exists(e: &TwilioApiError, codes: &[i64]) -> bool {
    e.status == 409 || e.code.is_some_and(|c| codes.contains(&c))
}

fn text(
    params: &serde_json::Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    let v = opt_str(params, name)?;
    if let Some(s) = &v
        && (s.chars().count() > max || s.chars().any(char::is_control))
    {
        return Err(ApiError::field(
            name,
            format!("must be at most {max} characters, without control characters"),
        ));
    }
    Ok(v)
}

fn conversation_sid(params: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    let sid = opt_str(params, "conversationSid")?
        .ok_or_else(|| ApiError::field("conversationSid", "required"))?;
    if !super::twilio_rest::is_sid(&sid, "CH") {
        return Err(ApiError::field(
            "conversationSid",
            "must be a Conversation SID (CH + 32 hex digits)",
        ));
    }
    Ok(sid)
}

fn address(
    params: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let v = opt_str(params, name)?;
    if let Some(a) = &v {
        let number = a.strip_prefix("whatsapp:").unwrap_or(a);
        if !is_e164(number) {
            return Err(ApiError::field(
                name,
                "must be an E.164 number (+14155550100) or whatsapp:+14155550100",
            ));
        }
    }
    Ok(v)
}

fn sid_of(v: &Value) -> Result<String, ApiError> {
    v.get("sid")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::TwilioUnavailable("Twilio's answer has no sid".into()))
}

/// `POST /api/twilio/conversation`.
pub(crate) async fn create(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.authenticate(&headers, Need::Caller, "conversation")?;
    let params = request_params(&headers, uri.query(), &body)?;
    let unique = match (
        text(&params, "uniqueName", MAX_NAME_CHARS)?,
        text(&params, "userId", MAX_NAME_CHARS - 5)?,
    ) {
        (Some(u), _) => u,
        (None, Some(user)) => format!("user-{user}"),
        (None, None) => {
            return Err(ApiError::field("uniqueName", "required (or userId)"));
        }
    };
    let friendly = text(&params, "friendlyName", MAX_NAME_CHARS)?;
    let twilio = st.twilio()?;
    let mut form = vec![("UniqueName".to_owned(), unique.clone())];
    if let Some(f) = friendly {
        form.push(("FriendlyName".to_owned(), f));
    }
    let (sid, created) = match twilio.conversations_post("Conversations", &form).await {
        Ok(v) => (sid_of(&v)?, true),
        Err(ApiError::Twilio(e)) if exists(&e, &[50353]) => {
            let v = twilio
                .conversations_get(&format!("Conversations/{}", path_segment(&unique)), &[])
                .await?;
            (sid_of(&v)?, false)
        }
        Err(e) => return Err(e),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({"conversationSid": sid, "uniqueName": unique, "created": created})),
    )
        .into_response())
}

/// Percent-encodes a path segment (unique names and identities may hold any character).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `POST /api/twilio/participant`.
pub(crate) async fn participant(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = st.authenticate(&headers, Need::Caller, "participant")?;
    let params = request_params(&headers, uri.query(), &body)?;
    let conv = conversation_sid(&params)?;
    let addr = address(&params, "address")?;
    let proxy = address(&params, "proxyAddress")?;
    let requested_identity = opt_str(&params, "identity")?;
    let twilio = st.twilio()?;
    let path = format!("Conversations/{conv}/Participants");
    if let Some(addr) = addr {
        if requested_identity.is_some() {
            return Err(ApiError::field(
                "identity",
                "give either identity, or address and proxyAddress",
            ));
        }
        if matches!(caller, Caller::Identity(_)) {
            return Err(ApiError::Forbidden(
                "adding SMS/WhatsApp participants needs an API key".into(),
            ));
        }
        let proxy = proxy.ok_or_else(|| {
            ApiError::field("proxyAddress", "required with address (your Twilio number)")
        })?;
        let form = vec![
            ("MessagingBinding.Address".to_owned(), addr.clone()),
            ("MessagingBinding.ProxyAddress".to_owned(), proxy.clone()),
        ];
        return match twilio.conversations_post(&path, &form).await {
            Ok(v) => Ok(participant_answer(sid_of(&v)?, true)),
            Err(ApiError::Twilio(e)) if exists(&e, &[50416, 50433]) => {
                let list = twilio
                    .conversations_get(&path, &[("PageSize".to_owned(), "100".to_owned())])
                    .await?;
                let found = list
                    .get("participants")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|p| {
                        let b = &p["messaging_binding"];
                        b["address"].as_str() == Some(&addr)
                            && b["proxy_address"].as_str().is_none_or(|x| x == proxy)
                    });
                match found {
                    Some(p) => Ok(participant_answer(sid_of(p)?, false)),
                    // The binding exists in another conversation: Twilio's refusal stands.
                    None => Err(ApiError::Twilio(e)),
                }
            }
            Err(e) => Err(e),
        };
    }
    if proxy.is_some() {
        return Err(ApiError::field("address", "required with proxyAddress"));
    }
    let identity = resolve_identity(&caller, requested_identity)?;
    validate_identity(&identity, &Grant::Chat(ChatGrant::default()))
        .map_err(|e| ApiError::field("identity", e.to_string()))?;
    let form = vec![("Identity".to_owned(), identity.clone())];
    match twilio.conversations_post(&path, &form).await {
        Ok(v) => Ok(participant_answer(sid_of(&v)?, true)),
        Err(ApiError::Twilio(e)) if exists(&e, &[50433]) => {
            let v = twilio
                .conversations_get(&format!("{path}/{}", path_segment(&identity)), &[])
                .await?;
            Ok(participant_answer(sid_of(&v)?, false))
        }
        Err(e) => Err(e),
    }
}

fn participant_answer(sid: String, created: bool) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        axum::Json(json!({"participantSid": sid, "created": created})),
    )
        .into_response()
}

/// `POST /api/twilio/messages`.
pub(crate) async fn message(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = st.authenticate(&headers, Need::Caller, "messages")?;
    let params = request_params(&headers, uri.query(), &body)?;
    let conv = conversation_sid(&params)?;
    let text_body = text(&params, "body", MAX_BODY_CHARS)?
        .ok_or_else(|| ApiError::field("body", "required"))?;
    let author = match (caller.identity(), text(&params, "author", MAX_NAME_CHARS)?) {
        (Some(me), Some(a)) if a != me => {
            return Err(ApiError::Forbidden(format!(
                "authenticated as {me:?}; cannot write as {a:?}"
            )));
        }
        (Some(me), _) => me.to_owned(),
        (None, Some(a)) => a,
        (None, None) => return Err(ApiError::field("author", "required")),
    };
    let from = text(&params, "from", MAX_NAME_CHARS)?
        .ok_or_else(|| ApiError::field("from", "required (a label, e.g. agent or customer)"))?;
    let form = vec![
        ("Author".to_owned(), author),
        ("Body".to_owned(), text_body),
        ("Attributes".to_owned(), json!({"from": from}).to_string()),
    ];
    let v = st
        .twilio()?
        .conversations_post(&format!("Conversations/{conv}/Messages"), &form)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"messageSid": sid_of(&v)?, "index": v.get("index")})),
    )
        .into_response())
}

/// `GET /api/twilio/conversations?identity=`.
pub(crate) async fn list(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let caller = st.authenticate(&headers, Need::Caller, "conversations")?;
    let params = request_params(&headers, uri.query(), &[])?;
    let identity = resolve_identity(&caller, opt_str(&params, "identity")?)?;
    validate_identity(&identity, &Grant::Chat(ChatGrant::default()))
        .map_err(|e| ApiError::field("identity", e.to_string()))?;
    let v = st
        .twilio()?
        .conversations_get(
            "ParticipantConversations",
            &[
                ("Identity".to_owned(), identity),
                ("PageSize".to_owned(), "50".to_owned()),
            ],
        )
        .await?;
    let conversations: Vec<Value> = v
        .get("conversations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "conversationSid": c.get("conversation_sid"),
                "uniqueName": c.get("conversation_unique_name"),
                "friendlyName": c.get("conversation_friendly_name"),
                "state": c.get("conversation_state"),
                "participantSid": c.get("participant_sid"),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "conversations": conversations })).into_response())
}

/// Header Twilio puts on webhook requests to identify retries (twilio.com/docs/usage/webhooks;
/// unverified for Conversations: without it, hark hashes the body).
pub const IDEMPOTENCY_HEADER: &str = "i-twilio-idempotency-token";

/// `POST /api/webhooks/{event}`.
pub(crate) async fn webhook(
    State(st): State<Arc<ApiState>>,
    Path(event): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(route) = WEBHOOK_EVENTS.iter().find(|e| **e == event) else {
        return Err(ApiError::NotFound(format!(
            "no webhook {event:?} (expected one of {})",
            WEBHOOK_EVENTS.join(", ")
        )));
    };
    let form = st.verify_twilio("conversations-webhook", &headers, &uri, &body)?;
    let dedupe_key = match headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        Some(token) => format!("token:{token}"),
        None => {
            let mut sorted = form.clone();
            sorted.sort();
            let mut h = Sha256::new();
            h.update(route.as_bytes());
            for (k, v) in &sorted {
                h.update([0]);
                h.update(k.as_bytes());
                h.update([0]);
                h.update(v.as_bytes());
            }
            format!("sha256:{:x}", h.finalize())
        }
    };
    let event_type = form
        .iter()
        .find(|(k, _)| k == "EventType")
        .map(|(_, v)| v.clone());
    st.writer
        .enqueue(Op::Conversation(
            StoredConversationEvent {
                dedupe_key,
                route: (*route).to_owned(),
                params: form.clone(),
            },
            now_ms(),
        ))
        .await?;
    // Nobody listening is fine.
    let _ = st.conversation_events.send(ConversationEvent {
        route: (*route).to_owned(),
        event_type,
        params: form,
    });
    metrics::counter!("hark_webhooks_total", "kind" => *route).increment(1);
    Ok(axum::Json(json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("user-42"), "user-42");
        assert_eq!(path_segment("a b/c@d"), "a%20b%2Fc%40d");
    }
}
