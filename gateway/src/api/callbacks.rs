//! Twilio's callbacks: call progress (`POST /api/twilio/status`), recording status
//! (`POST /api/twilio/recording`) and Media Streams status (`POST /api/twilio/stream-status`).
//!
//! Each is a form POST, or a JSON body signed with `bodySHA256` in the URL's query, signed with
//! `X-Twilio-Signature` (checked by [`ApiState::verify_twilio`]: 403 on failure), queued for the
//! store and answered 200 with an empty body at once; storage is idempotent, so Twilio's retries
//! are stored once (see [`super::store`]). Parameters: `reference/twilio.md` §5.3 and §1.7.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::recorder::Op;
use super::store::{RecordingEvent, StatusEvent, StreamEvent};
use super::{ApiError, ApiState, now_ms};

/// Decoded form pairs, in order, repeated keys kept.
///
/// # Errors
/// 400 for a body that is not UTF-8.
pub(crate) fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    std::str::from_utf8(body).map_err(|_| ApiError::BadRequest {
        field: None,
        reason: "the form body is not UTF-8".into(),
    })?;
    Ok(form_urlencoded::parse(body).into_owned().collect())
}

fn first<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn required(form: &[(String, String)], name: &str) -> Result<String, ApiError> {
    first(form, name)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::field(name, "required"))
}

fn int(form: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    first(form, name)
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| ApiError::field(name, format!("{v:?} is not a whole number")))
        })
        .transpose()
}

/// Checks the signature (form, or JSON with `bodySHA256`) and decodes the parameters.
fn signed_form(
    st: &ApiState,
    route: &'static str,
    headers: &HeaderMap,
    uri: &Uri,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    st.verify_twilio(route, headers, uri, body)
}

fn ok(kind: &'static str) -> Response {
    metrics::counter!("hark_webhooks_total", "kind" => kind).increment(1);
    StatusCode::OK.into_response()
}

/// `POST /api/twilio/status`: `CallSid`, `CallStatus`, `SequenceNumber`, `AnsweredBy`,
/// `CallDuration`, `Timestamp`, … .
pub(crate) async fn status(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = signed_form(&st, "status", &headers, &uri, &body)?;
    let event = StatusEvent {
        call_sid: required(&form, "CallSid")?,
        status: required(&form, "CallStatus")?,
        sequence_number: int(&form, "SequenceNumber")?,
        answered_by: first(&form, "AnsweredBy").map(str::to_owned),
        timestamp: first(&form, "Timestamp").map(str::to_owned),
        call_duration_s: int(&form, "CallDuration")?,
        direction: first(&form, "Direction").map(str::to_owned),
        from: first(&form, "From").map(str::to_owned),
        to: first(&form, "To").map(str::to_owned),
        params: form,
    };
    tracing::info!(
        call_sid = %event.call_sid,
        status = %event.status,
        seq = event.sequence_number,
        answered_by = event.answered_by.as_deref().unwrap_or(""),
        "call status"
    );
    st.writer.enqueue(Op::Status(event, now_ms())).await?;
    Ok(ok("status"))
}

/// `POST /api/twilio/recording`: `RecordingSid`, `CallSid`, `RecordingStatus`, `RecordingUrl`,
/// `RecordingDuration`, `RecordingChannels`, … .
pub(crate) async fn recording(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = signed_form(&st, "recording", &headers, &uri, &body)?;
    let event = RecordingEvent {
        recording_sid: required(&form, "RecordingSid")?,
        call_sid: required(&form, "CallSid")?,
        status: first(&form, "RecordingStatus").map(str::to_owned),
        url: first(&form, "RecordingUrl").map(str::to_owned),
        duration_s: int(&form, "RecordingDuration")?,
        channels: int(&form, "RecordingChannels")?,
        source: first(&form, "RecordingSource").map(str::to_owned),
        track: first(&form, "RecordingTrack").map(str::to_owned),
        start_time: first(&form, "RecordingStartTime").map(str::to_owned),
        params: form,
    };
    st.writer.enqueue(Op::Recording(event, now_ms())).await?;
    Ok(ok("recording"))
}

/// `POST /api/twilio/stream-status`: `CallSid`, `StreamSid`, `StreamEvent`
/// (`stream-started|stream-stopped|stream-error`), `StreamError`, `Timestamp`.
pub(crate) async fn stream_status(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = signed_form(&st, "stream-status", &headers, &uri, &body)?;
    let event = StreamEvent {
        call_sid: required(&form, "CallSid")?,
        stream_sid: required(&form, "StreamSid")?,
        event: required(&form, "StreamEvent")?,
        timestamp: first(&form, "Timestamp").map(str::to_owned),
        params: form,
    };
    if event.event == "stream-error" {
        tracing::warn!(
            call_sid = %event.call_sid,
            stream_sid = %event.stream_sid,
            error = first(&event.params, "StreamError").unwrap_or(""),
            "stream error reported by Twilio"
        );
    }
    st.writer.enqueue(Op::Stream(event, now_ms())).await?;
    Ok(ok("stream_status"))
}
