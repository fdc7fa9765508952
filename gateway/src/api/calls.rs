//! Outbound calls for schedulers (`POST /calls`) and call records (`GET /calls`,
//! `GET /calls/{sid}`, and hark's recording of the call's audio,
//! `GET /calls/{sid}/recording.wav`).
//!
//! `POST /calls` (bearer `HARK_API_KEY`) takes JSON
//! `{to, from?, agent?, parameters?, record?, machine_detection?, timeout?, time_limit?}`,
//! validates every field (400 naming the field), and creates the call through Twilio's REST API
//! (`Calls.json`, `reference/twilio.md` §5.2) with:
//! - `Url` = `<HARK_PUBLIC_URL>/voice?agent=…&<parameters>` (the `/voice` webhook turns allowed
//!   query parameters into stream `<Parameter>`s, see `HARK_STREAM_PARAMS`), `Method=POST`;
//! - `StatusCallback` = `<HARK_PUBLIC_URL>/api/twilio/status`, `StatusCallbackMethod=POST`,
//!   `StatusCallbackEvent` = `initiated`, `ringing`, `answered`, `completed` (repeated keys);
//! - `Timeout`, `TimeLimit` when given;
//! - with `machine_detection` (`Enable` or `DetectMessageEnd`): `MachineDetection`, and
//!   Twilio's asynchronous detection — `AsyncAmd=true`, `AsyncAmdStatusCallback` =
//!   `<HARK_PUBLIC_URL>/api/twilio/amd`, `AsyncAmdStatusCallbackMethod=POST` — whose verdict
//!   reaches the live call (see [`super::amd`]);
//! - with `record: true`: `Record=true`, `RecordingChannels=dual`, `RecordingStatusCallback` =
//!   `<HARK_PUBLIC_URL>/api/twilio/recording`, `RecordingStatusCallbackMethod=POST`,
//!   `RecordingStatusCallbackEvent` = `completed`, `absent`.
//!
//! Creation is paced to `HARK_CALLS_PER_SECOND` (Twilio's CPS, default 1/s,
//! twilio.com/docs/glossary/cps), which is per account: the pace is kept in the database, so
//! every node sharing it keeps one pace together. Each request reserves the next free slot and
//! waits for it, at most `HARK_CALL_QUEUE` waiting at once across the nodes: a burst waits its
//! turn instead of failing; when the queue is full the answer is 503 with `Retry-After` (s,
//! rounded up: until the calls waiting now have all been placed). A request whose client has
//! gone away before its slot is skipped (no call is placed; its slot stays used). Answer: 201
//! `{"call_sid", "status", "to", "from"}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use super::auth::Need;
use super::recorder::Op;
use super::store::{NewCall, Slot};
use super::twilio_rest::{CallResource, TwilioRest};
use super::{ApiError, ApiState, now_ms, retry_secs};

/// Longest `Timeout` Twilio accepts, s (`CreateCallRequest.Timeout`: "the maximum is `600`").
pub const MAX_TIMEOUT_S: u64 = 600;
/// Longest `time_limit` hark accepts, s: 24 h, the longest a Twilio call can last
/// (twilio.com/docs/voice/api/call-resource, `TimeLimit`).
pub const MAX_TIME_LIMIT_S: u64 = 86_400;
/// Most `parameters` entries.
pub const MAX_PARAMETERS: usize = 20;
/// `MachineDetection` values (`CreateCallRequest.MachineDetection`: "Can be: `Enable` or
/// `DetectMessageEnd`").
pub const MACHINE_DETECTION: [&str; 2] = ["Enable", "DetectMessageEnd"];
/// Where Twilio sends the asynchronous answering machine verdict (`AsyncAmdStatusCallback`).
pub const AMD_PATH: &str = "/api/twilio/amd";
/// Status callback events asked for (`CreateCallRequest.StatusCallbackEvent`).
pub const STATUS_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];
/// Recording callback events asked for (`CreateCallRequest.RecordingStatusCallbackEvent`).
pub const RECORDING_EVENTS: [&str; 2] = ["completed", "absent"];

pub use hark_engine::dial::is_e164;

/// A validated `POST /calls` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRequest {
    /// Callee, E.164.
    pub to: String,
    /// Caller ID, E.164 (default `TWILIO_PHONE_NUMBER`).
    pub from: String,
    /// Agent name, `[A-Za-z0-9_-]{1,64}`.
    pub agent: Option<String>,
    /// Extra `/voice` query parameters: names `[A-Za-z0-9_]{1,64}`, values ≤ 256 characters.
    pub parameters: BTreeMap<String, String>,
    /// Record the call (dual channel).
    pub record: bool,
    /// `Enable` or `DetectMessageEnd`.
    pub machine_detection: Option<String>,
    /// Ring time, 1..=600 s.
    pub timeout_s: Option<u64>,
    /// Longest call, 1..=86400 s.
    pub time_limit_s: Option<u64>,
}

const FIELDS: [&str; 8] = [
    "to",
    "from",
    "agent",
    "parameters",
    "record",
    "machine_detection",
    "timeout",
    "time_limit",
];

fn int_field(m: &Map<String, Value>, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::field(
                name,
                format!("must be a whole number of seconds in 1..={max}"),
            )),
        },
    }
}

fn name_ok(s: &str, extra: &[u8]) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || extra.contains(&b))
}

/// The `parameters` field: at most [`MAX_PARAMETERS`] names of 1-64 letters, digits or `_`
/// (not `agent`), each with a string, number or boolean of at most 256 characters and no
/// control characters, as text.
///
/// # Errors
/// 400 naming the field (`parameters` or `parameters.<name>`).
fn parameters_field(v: Option<&Value>) -> Result<BTreeMap<String, String>, ApiError> {
    let p = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(ApiError::field(
                "parameters",
                "must be an object of name → value",
            ));
        }
    };
    if p.len() > MAX_PARAMETERS {
        return Err(ApiError::field(
            "parameters",
            format!("at most {MAX_PARAMETERS} entries"),
        ));
    }
    let mut parameters = BTreeMap::new();
    for (k, v) in p {
        let field = format!("parameters.{k}");
        if !name_ok(k, b"") {
            return Err(ApiError::field(
                field,
                "names must be 1-64 letters, digits or '_'",
            ));
        }
        if k == "agent" {
            return Err(ApiError::field(field, "use the top-level `agent` field"));
        }
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::field(
                    field,
                    "values must be strings, numbers or booleans",
                ));
            }
        };
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(ApiError::field(
                field,
                "values must be at most 256 characters, without control characters",
            ));
        }
        parameters.insert(k.clone(), v);
    }
    Ok(parameters)
}

impl CallRequest {
    /// Validates a JSON body; `default_from` is `TWILIO_PHONE_NUMBER`.
    ///
    /// # Errors
    /// 400 naming the first bad field (unknown fields too).
    pub fn parse(body: &[u8], default_from: Option<&str>) -> Result<CallRequest, ApiError> {
        let m = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return Err(ApiError::BadRequest {
                    field: None,
                    reason: "the body must be a JSON object".into(),
                });
            }
            Err(e) => {
                return Err(ApiError::BadRequest {
                    field: None,
                    reason: format!("the body is not JSON: {e}"),
                });
            }
        };
        if let Some(unknown) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::field(
                unknown.clone(),
                format!("unknown field (expected one of {})", FIELDS.join(", ")),
            ));
        }
        let number = |name: &str, v: Option<&Value>| -> Result<Option<String>, ApiError> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if is_e164(s) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::field(
                    name,
                    "must be an E.164 phone number like +14155550100",
                )),
            }
        };
        let to = number("to", m.get("to"))?.ok_or_else(|| ApiError::field("to", "required"))?;
        let from = match number("from", m.get("from"))? {
            Some(f) => f,
            None => default_from.map(str::to_owned).ok_or_else(|| {
                ApiError::field(
                    "from",
                    "required: TWILIO_PHONE_NUMBER is unset, so there is no default",
                )
            })?,
        };
        let agent = match m.get("agent") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if name_ok(s, b"-") => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::field(
                    "agent",
                    "must be 1-64 letters, digits, '_' or '-'",
                ));
            }
        };
        let parameters = parameters_field(m.get("parameters"))?;
        let record = match m.get("record") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::field("record", "must be true or false")),
        };
        let machine_detection = match m.get("machine_detection") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if MACHINE_DETECTION.contains(&s.as_str()) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::field(
                    "machine_detection",
                    "must be \"Enable\" or \"DetectMessageEnd\"",
                ));
            }
        };
        Ok(CallRequest {
            to,
            from,
            agent,
            parameters,
            record,
            machine_detection,
            timeout_s: int_field(&m, "timeout", MAX_TIMEOUT_S)?,
            time_limit_s: int_field(&m, "time_limit", MAX_TIME_LIMIT_S)?,
        })
    }

    /// The `Calls.json` form (`CreateCallRequest`), in a stable order, arrays as repeated keys.
    pub fn twilio_form(&self, public_url: &str) -> Vec<(String, String)> {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(a) = &self.agent {
            query.append_pair("agent", a);
        }
        for (k, v) in &self.parameters {
            query.append_pair(k, v);
        }
        let query = query.finish();
        let voice_url = if query.is_empty() {
            format!("{public_url}/voice")
        } else {
            format!("{public_url}/voice?{query}")
        };
        let mut f: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| f.push((k.to_owned(), v));
        push("To", self.to.clone());
        push("From", self.from.clone());
        push("Url", voice_url);
        push("Method", "POST".into());
        push("StatusCallback", format!("{public_url}/api/twilio/status"));
        push("StatusCallbackMethod", "POST".into());
        for e in STATUS_EVENTS {
            push("StatusCallbackEvent", e.into());
        }
        if let Some(t) = self.timeout_s {
            push("Timeout", t.to_string());
        }
        if let Some(t) = self.time_limit_s {
            push("TimeLimit", t.to_string());
        }
        if let Some(m) = &self.machine_detection {
            // Asynchronous: the call connects at once and the verdict comes to the live call
            // (`POST /api/twilio/amd`) instead of holding the TwiML until detection ends.
            push("MachineDetection", m.clone());
            push("AsyncAmd", "true".into());
            push("AsyncAmdStatusCallback", format!("{public_url}{AMD_PATH}"));
            push("AsyncAmdStatusCallbackMethod", "POST".into());
        }
        if self.record {
            push("Record", "true".into());
            push("RecordingChannels", "dual".into());
            push(
                "RecordingStatusCallback",
                format!("{public_url}/api/twilio/recording"),
            );
            push("RecordingStatusCallbackMethod", "POST".into());
            for e in RECORDING_EVENTS {
                push("RecordingStatusCallbackEvent", e.into());
            }
        }
        f
    }
}

/// The pace in front of Twilio's `Calls.json`, shared by every node on the database: each
/// creation reserves the next free slot ([`super::store::Store::reserve_call_slot`]) and waits
/// for it; at most `capacity` reservations wait at once.
pub(crate) struct CallQueue {
    store: super::store::Store,
    period: Duration,
    capacity: usize,
}

/// Counts a creation whose request went away while it waited for its slot (dropped before
/// [`Abandoned::disarm`]).
struct Abandoned(bool);

impl Abandoned {
    fn disarm(mut self) {
        self.0 = false;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.0 {
            metrics::counter!("hark_outbound_calls_total", "result" => "abandoned").increment(1);
        }
    }
}

impl CallQueue {
    /// One creation per `period` across the nodes on `store`'s database, at most `capacity`
    /// waiting.
    pub(crate) fn new(store: super::store::Store, period: Duration, capacity: usize) -> CallQueue {
        CallQueue {
            store,
            period,
            capacity,
        }
    }

    async fn submit(
        &self,
        twilio: TwilioRest,
        form: Vec<(String, String)>,
    ) -> Result<CallResource, ApiError> {
        let period_us = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        match self
            .store
            .reserve_call_slot(period_us, self.capacity)
            .await?
        {
            Slot::Full(wait_us) => {
                metrics::counter!("hark_outbound_calls_total", "result" => "queue_full")
                    .increment(1);
                Err(ApiError::Busy {
                    reason: format!(
                        "{} calls are already waiting for Twilio's pace of {:.3} calls/s",
                        self.capacity,
                        1.0 / self.period.as_secs_f64()
                    ),
                    retry_after_s: retry_secs(Duration::from_micros(wait_us)).max(1),
                })
            }
            Slot::After(wait_us) => {
                // Dropped here (the client went away) means no call is placed.
                let guard = Abandoned(true);
                tokio::time::sleep(Duration::from_micros(wait_us)).await;
                guard.disarm();
                twilio.create_call(&form).await
            }
        }
    }
}

/// `POST /calls`.
pub(crate) async fn create(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match create_inner(&st, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    st: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    st.authenticate(headers, Need::ApiKey, "calls_create")?;
    let req = CallRequest::parse(body, st.settings.phone_number.as_deref())?;
    let public_url = st
        .settings
        .public_url
        .as_deref()
        .ok_or(ApiError::NotConfigured {
            names: vec![super::settings::ENV_PUBLIC_URL],
            what: "outbound calls (Twilio must reach this gateway's /voice)",
        })?;
    let twilio = st.twilio()?.clone();
    let form = req.twilio_form(public_url);
    let call = match st.call_queue.submit(twilio, form).await {
        Ok(c) => c,
        Err(e) => {
            let result = match &e {
                ApiError::Twilio(_) => "twilio_error",
                ApiError::Busy { .. } => "queue_full_reported",
                _ => "unavailable",
            };
            if result != "queue_full_reported" {
                metrics::counter!("hark_outbound_calls_total", "result" => result).increment(1);
            }
            warn!(to = %req.to, error = %e, "outbound call not created");
            return Err(e);
        }
    };
    metrics::counter!("hark_outbound_calls_total", "result" => "created").increment(1);
    let status = call.status.clone().unwrap_or_else(|| "queued".into());
    info!(call_sid = %call.sid, to = %req.to, status, "outbound call created");
    let record = NewCall {
        call_sid: call.sid.clone(),
        to: req.to.clone(),
        from: req.from.clone(),
        agent: req.agent.clone(),
        parameters: req.parameters.clone(),
        status: status.clone(),
    };
    // Written before answering so GET /calls/{sid} sees it; a failure is logged, not fatal.
    let written = st
        .store
        .write(async |c| st.store.insert_outbound_call_in(c, &record, now_ms()).await)
        .await;
    if let Err(e) = written {
        warn!(call_sid = %call.sid, error = %e, "could not record the call now; queued for retry");
        let _ = st.writer.enqueue(Op::Call(record, now_ms())).await;
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "call_sid": call.sid,
            "status": status,
            "to": call.to.unwrap_or(req.to),
            "from": call.from.unwrap_or(req.from),
        })),
    )
        .into_response())
}

/// `GET /calls` query.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
}

/// Default and largest `limit` of `GET /calls`.
pub const LIST_DEFAULT: u32 = 50;
/// Largest `limit` of `GET /calls`.
pub const LIST_MAX: u32 = 500;

/// `GET /calls?status=&limit=`: newest first.
pub(crate) async fn list(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    st.authenticate(&headers, Need::ApiKey, "calls_list")?;
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => LIST_DEFAULT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=LIST_MAX).contains(&n) => n,
            _ => return Err(ApiError::field("limit", format!("must be 1..={LIST_MAX}"))),
        },
    };
    let status = q.status.filter(|s| !s.is_empty());
    if let Some(s) = &status
        && !(s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
    {
        return Err(ApiError::field(
            "status",
            "must be a call status like in-progress",
        ));
    }
    let calls = st.store.list_calls(status.as_deref(), limit).await?;
    Ok(axum::Json(json!({ "calls": calls })).into_response())
}

/// `GET /calls/{sid}`: status timeline, turns, latency, recordings.
pub(crate) async fn show(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    st.authenticate(&headers, Need::ApiKey, "calls_show")?;
    if !name_ok(&sid, b"") {
        return Err(ApiError::field("sid", "not a Call SID"));
    }
    match st.store.call(&sid).await? {
        Some(detail) => Ok(axum::Json(detail).into_response()),
        None => Err(ApiError::NotFound(format!("no call {sid}"))),
    }
}

/// `GET /calls/{sid}/recording.wav`: the call's audio recorded by hark (the record's
/// `audio.file`: 8 kHz 16-bit PCM WAV, left the caller, right the agent as heard), streamed
/// in 64 KiB chunks. 404 when the call, its recording or the file (deleted by retention) is
/// missing. Personal data: never cached.
pub(crate) async fn recording(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    st.authenticate(&headers, Need::ApiKey, "calls_recording")?;
    if !name_ok(&sid, b"") {
        return Err(ApiError::field("sid", "not a Call SID"));
    }
    let detail = st.store.call(&sid).await?;
    let Some(file) = detail
        .as_ref()
        .and_then(|d| d.audio.as_ref())
        .and_then(|a| a.get("file"))
        .and_then(Value::as_str)
    else {
        return Err(ApiError::NotFound(format!("no recording of call {sid}")));
    };
    match crate::recording::file_response(std::path::Path::new(file)).await {
        Some(resp) => Ok(resp),
        None => Err(ApiError::NotFound(format!(
            "the recording of call {sid} is gone (deleted, or retention)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        assert!(is_e164("+14155550100"));
        assert!(is_e164("+4930123456"));
        for bad in [
            "14155550100",
            "+0415555",
            "+1415",
            "+1415555010012345",
            "+1 415 555",
            "",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    fn parse(body: &str) -> Result<CallRequest, ApiError> {
        CallRequest::parse(body.as_bytes(), Some("+15005550006"))
    }

    fn field_of(r: Result<CallRequest, ApiError>) -> String {
        match r {
            Err(ApiError::BadRequest { field, .. }) => field.unwrap_or_default(),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(field_of(parse(r#"{}"#)), "to");
        assert_eq!(field_of(parse(r#"{"to":"555"}"#)), "to");
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","from":"x"}"#)),
            "from"
        );
        assert_eq!(field_of(parse(r#"{"to":"+14155550100","tO":"x"}"#)), "tO");
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","timeout":0}"#)),
            "timeout"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","timeout":601}"#)),
            "timeout"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","timeout":"5"}"#)),
            "timeout"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","time_limit":86401}"#)),
            "time_limit"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","record":"yes"}"#)),
            "record"
        );
        assert_eq!(
            field_of(parse(
                r#"{"to":"+14155550100","machine_detection":"enable"}"#
            )),
            "machine_detection"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","agent":"a b"}"#)),
            "agent"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","parameters":[]}"#)),
            "parameters"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","parameters":{"a-b":"1"}}"#)),
            "parameters.a-b"
        );
        assert_eq!(
            field_of(parse(r#"{"to":"+14155550100","parameters":{"x":{}}}"#)),
            "parameters.x"
        );
        assert_eq!(
            field_of(CallRequest::parse(br#"{"to":"+14155550100"}"#, None)),
            "from"
        );
        assert!(matches!(
            parse("[1]"),
            Err(ApiError::BadRequest { field: None, .. })
        ));
        assert!(matches!(
            parse("{"),
            Err(ApiError::BadRequest { field: None, .. })
        ));
    }

    #[test]
    fn form_is_what_twilio_documents() {
        let r = parse(
            r#"{"to":"+14155550100","agent":"support","parameters":{"payerId":"P 42","n":7},
                "record":true,"machine_detection":"DetectMessageEnd","timeout":30,"time_limit":600}"#,
        )
        .expect("valid");
        let f = r.twilio_form("https://hark.example");
        let get = |k: &str| {
            f.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("To"), ["+14155550100"]);
        assert_eq!(get("From"), ["+15005550006"]);
        assert_eq!(
            get("Url"),
            ["https://hark.example/voice?agent=support&n=7&payerId=P+42"]
        );
        assert_eq!(
            get("StatusCallback"),
            ["https://hark.example/api/twilio/status"]
        );
        assert_eq!(get("StatusCallbackEvent"), STATUS_EVENTS);
        assert_eq!(get("Timeout"), ["30"]);
        assert_eq!(get("TimeLimit"), ["600"]);
        assert_eq!(get("MachineDetection"), ["DetectMessageEnd"]);
        assert_eq!(get("AsyncAmd"), ["true"]);
        assert_eq!(
            get("AsyncAmdStatusCallback"),
            ["https://hark.example/api/twilio/amd"]
        );
        assert_eq!(get("AsyncAmdStatusCallbackMethod"), ["POST"]);
        assert_eq!(get("Record"), ["true"]);
        assert_eq!(get("RecordingChannels"), ["dual"]);
        assert_eq!(
            get("RecordingStatusCallback"),
            ["https://hark.example/api/twilio/recording"]
        );
        assert_eq!(get("RecordingStatusCallbackEvent"), RECORDING_EVENTS);

        let minimal = parse(r#"{"to":"+14155550100"}"#)
            .expect("valid")
            .twilio_form("https://h");
        assert!(minimal.iter().all(|(k, _)| !k.starts_with("Record")
            && k != "Timeout"
            && !k.starts_with("AsyncAmd")
            && k != "MachineDetection"));
        assert!(minimal.contains(&("Url".into(), "https://h/voice".into())));
    }
}
