//! Typed provider faults: why a provider pipe failed ([`ProviderFault`] in
//! [`super::ProviderEvent::Failed`]), or why an agent gave up on what a pipe carried.
//!
//! This is the one place that names a fault for metrics ([`ProviderFault::label`],
//! [`ProviderFault::session_label`]) and says whether trying the same request again may help
//! ([`ProviderFault::retryable`]). Agents match on [`FaultKind`], never on the detail text.
//!
//! Who produces which kind:
//!
//! | kind | `io::http` | `io::ws` | the driver (`io`) | agents |
//! |---|---|---|---|---|
//! | [`FaultKind::Status`] | non-2xx answer | upgrade refused | | |
//! | [`FaultKind::Close`] | | close code ≠ 1000 | | |
//! | [`FaultKind::Timeout`] | request or connect timeout | handshake timeout | | first-answer deadline |
//! | [`FaultKind::Connect`] | refused, DNS, TLS | refused, DNS, TLS, no root certificates | | |
//! | [`FaultKind::Dropped`] | broke while the body streamed | reset, protocol error, end without close | | a stream that ended early |
//! | [`FaultKind::Request`] | bad method, URL, header, body | bad URL or header | send on a pipe that is not an open WebSocket | |
//! | [`FaultKind::ContentType`] | 2xx of a type not accepted | | | a body that is not JSON |
//! | [`FaultKind::Stall`] | | | | a stream that stopped sending |
//! | [`FaultKind::StreamError`] | | | | an error object in a 2xx answer |
//! | [`FaultKind::EmptyAudio`] | | | | a speech answer without audio |

use std::borrow::Cow;
use std::fmt;

/// What kind of fault a [`ProviderFault`] is (see the module docs for who produces which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A non-2xx HTTP answer (`io::http`), or a WebSocket upgrade refused with one
    /// (`io::ws`): the HTTP status.
    Status(u16),
    /// A WebSocket closed with a code other than 1000 (`io::ws`): the close code (RFC 6455
    /// §7.4; ElevenLabs: 1002 operational, 1008 contract/auth, 1011 internal).
    Close(u16),
    /// No complete answer within the request's time limit or no connection within the
    /// connect timeout (connectors); nothing within an agent's first-answer deadline.
    Timeout,
    /// The connection could not be made: refused, DNS, TLS.
    Connect,
    /// The connection broke after it was made (a reset, a protocol error, a WebSocket that
    /// ended without a close frame); for an agent, a stream that ended before its end marker.
    Dropped,
    /// The request could not be built or sent (bad method, URL, header or body), or a send on
    /// a pipe that is not an open WebSocket. Repeating it cannot help.
    Request,
    /// A 2xx answer of a `Content-Type` the request does not accept (`io::http`, e.g. a
    /// proxy's HTML error page sent with 200), or a body that is not JSON where JSON was asked
    /// for (agents).
    ContentType,
    /// Agents: a stream that stopped sending for longer than its stall limit.
    Stall,
    /// Agents: an error object inside a 2xx answer (OpenAI's `{"error":…}` in a stream,
    /// `providers.md` §2).
    StreamError,
    /// Agents: a 2xx speech answer that carried no audio.
    EmptyAudio,
}

impl fmt::Display for FaultKind {
    /// `HTTP 503`, `WebSocket close 1011`, else the [`ProviderFault::label`] word (`timeout`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Status(s) => write!(f, "HTTP {s}"),
            FaultKind::Close(c) => write!(f, "WebSocket close {c}"),
            FaultKind::Timeout => f.write_str("timeout"),
            FaultKind::Connect => f.write_str("connect"),
            FaultKind::Dropped => f.write_str("dropped"),
            FaultKind::Request => f.write_str("request"),
            FaultKind::ContentType => f.write_str("content_type"),
            FaultKind::Stall => f.write_str("stall"),
            FaultKind::StreamError => f.write_str("stream_error"),
            FaultKind::EmptyAudio => f.write_str("empty_audio"),
        }
    }
}

/// One provider fault: its kind, details for logs and the provider's wait hint.
///
/// Displays as `<kind>: <detail>`, e.g. `HTTP 429: {"error":{…}}` or
/// `timeout: no complete response within 200 ms`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ProviderFault {
    /// What went wrong.
    pub kind: FaultKind,
    /// For logs: with [`FaultKind::Status`] the start of the response body (at most
    /// `io::http::ERROR_BODY_BYTES` bytes, e.g. OpenAI's `{"error":{"message":…,"code":…}}`),
    /// with [`FaultKind::Close`] the close reason, else a description.
    pub detail: String,
    /// How long the provider asks to wait before a retry, ms: `retry-after-ms` (float ms,
    /// rounded up) or else `Retry-After` (integer seconds × 1000). Only with a status.
    pub retry_after_ms: Option<u64>,
}

impl ProviderFault {
    /// A fault of `kind` without a wait hint.
    pub fn new(kind: FaultKind, detail: impl Into<String>) -> Self {
        ProviderFault {
            kind,
            detail: detail.into(),
            retry_after_ms: None,
        }
    }

    /// A non-2xx answer: its status, the start of its body and its wait hint (ms).
    pub fn status(status: u16, body: impl Into<String>, retry_after_ms: Option<u64>) -> Self {
        ProviderFault {
            kind: FaultKind::Status(status),
            detail: body.into(),
            retry_after_ms,
        }
    }

    /// The HTTP status, for a [`FaultKind::Status`].
    pub fn http_status(&self) -> Option<u16> {
        match self.kind {
            FaultKind::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The WebSocket close code, for a [`FaultKind::Close`].
    pub fn close_code(&self) -> Option<u16> {
        match self.kind {
            FaultKind::Close(c) => Some(c),
            _ => None,
        }
    }

    /// The metric label of a fault on a request pipe (one request, one answer: the cascade's
    /// STT, LLM and TTS calls): `http_401`, `http_403`, `http_408`, `http_409`, `http_429`,
    /// `http_5xx` (any status ≥ 500), `http_4xx` (any other status), `close_<code>`, `timeout`,
    /// `connect`, `dropped`, `request`, `content_type`, `stall`, `stream_error`,
    /// `empty_audio`. Statuses are grouped so the label set stays small.
    pub fn label(&self) -> Cow<'static, str> {
        match self.kind {
            FaultKind::Status(s @ (401 | 403 | 408 | 409 | 429)) => format!("http_{s}").into(),
            FaultKind::Status(s) if s >= 500 => "http_5xx".into(),
            FaultKind::Status(_) => "http_4xx".into(),
            FaultKind::Close(c) => format!("close_{c}").into(),
            FaultKind::Timeout => "timeout".into(),
            FaultKind::Connect => "connect".into(),
            FaultKind::Dropped => "dropped".into(),
            FaultKind::Request => "request".into(),
            FaultKind::ContentType => "content_type".into(),
            FaultKind::Stall => "stall".into(),
            FaultKind::StreamError => "stream_error".into(),
            FaultKind::EmptyAudio => "empty_audio".into(),
        }
    }

    /// The metric label of a fault on a session socket (ElevenLabs, OpenAI Realtime), which
    /// ends the call: `close_<code>`, `http_<status>` (the exact status of a refused upgrade
    /// or lookup), else `connect` when the socket had not opened yet (`opened` false) and
    /// `dropped` after.
    pub fn session_label(&self, opened: bool) -> Cow<'static, str> {
        match self.kind {
            FaultKind::Close(c) => format!("close_{c}").into(),
            FaultKind::Status(s) => format!("http_{s}").into(),
            _ if opened => "dropped".into(),
            _ => "connect".into(),
        }
    }

    /// Whether sending the same request again may help.
    ///
    /// No for 401, 403, other 4xx except 408, 409 and 429, a 429 whose body says
    /// `insufficient_quota` (out of credit, `providers.md` §2: waiting does not help), a
    /// request that cannot be built, and a WebSocket close other than 1011 (internal error,
    /// RFC 6455 §7.4.1), 1012 (service restart) or 1013 (try again later) (IANA WebSocket
    /// Close Code registry). Yes for everything else: 408, 409, 429, 5xx, timeouts, refused or
    /// broken connections, a wrong content type (a proxy's error page is retried like a 5xx),
    /// stalls, error objects in a stream and speech without audio.
    pub fn retryable(&self) -> bool {
        match self.kind {
            FaultKind::Status(429) => !self.out_of_credit(),
            FaultKind::Status(408 | 409) => true,
            FaultKind::Status(s) => s >= 500,
            FaultKind::Close(c) => matches!(c, 1011..=1013),
            FaultKind::Request => false,
            FaultKind::Timeout
            | FaultKind::Connect
            | FaultKind::Dropped
            | FaultKind::ContentType
            | FaultKind::Stall
            | FaultKind::StreamError
            | FaultKind::EmptyAudio => true,
        }
    }

    /// The body is an OpenAI `ErrorResponse` whose `error.code` (or `error.type`) is
    /// `insufficient_quota` (`{"error":{"message":…,"type":…,"param":…,"code":…}}`,
    /// `providers.md` §2). A body that is not JSON (a proxy's page, a cut-off body) is not.
    fn out_of_credit(&self) -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&self.detail) else {
            return false;
        };
        let e = &v["error"];
        e["code"] == "insufficient_quota" || e["type"] == "insufficient_quota"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const RATE: &str = r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;

    /// Every producer's case: its kind, request label, session labels (before and after the
    /// socket opened) and whether a retry may help.
    #[test]
    fn each_kind_has_its_labels_and_retry_rule() {
        let f = ProviderFault::new;
        let s = |code, body: &str| ProviderFault::status(code, body, None);
        let cases: Vec<(ProviderFault, &str, &str, &str, bool)> = vec![
            // io::http / io::ws: statuses.
            (s(401, "{}"), "http_401", "http_401", "http_401", false),
            (s(403, ""), "http_403", "http_403", "http_403", false),
            (s(404, ""), "http_4xx", "http_404", "http_404", false),
            (s(400, ""), "http_4xx", "http_400", "http_400", false),
            (s(408, ""), "http_408", "http_408", "http_408", true),
            (s(409, ""), "http_409", "http_409", "http_409", true),
            (s(429, RATE), "http_429", "http_429", "http_429", true),
            (s(429, QUOTA), "http_429", "http_429", "http_429", false),
            (
                s(429, "<html>429</html>"),
                "http_429",
                "http_429",
                "http_429",
                true,
            ),
            (s(500, ""), "http_5xx", "http_500", "http_500", true),
            (s(503, ""), "http_5xx", "http_503", "http_503", true),
            (s(302, ""), "http_4xx", "http_302", "http_302", false),
            // io::ws: close codes.
            (
                f(FaultKind::Close(1002), "x"),
                "close_1002",
                "close_1002",
                "close_1002",
                false,
            ),
            (
                f(FaultKind::Close(1008), "x"),
                "close_1008",
                "close_1008",
                "close_1008",
                false,
            ),
            (
                f(FaultKind::Close(1011), "x"),
                "close_1011",
                "close_1011",
                "close_1011",
                true,
            ),
            (
                f(FaultKind::Close(1013), "x"),
                "close_1013",
                "close_1013",
                "close_1013",
                true,
            ),
            // Connectors and agents.
            (
                f(FaultKind::Timeout, "x"),
                "timeout",
                "connect",
                "dropped",
                true,
            ),
            (
                f(FaultKind::Connect, "x"),
                "connect",
                "connect",
                "dropped",
                true,
            ),
            (
                f(FaultKind::Dropped, "x"),
                "dropped",
                "connect",
                "dropped",
                true,
            ),
            (
                f(FaultKind::Request, "x"),
                "request",
                "connect",
                "dropped",
                false,
            ),
            (
                f(FaultKind::ContentType, "x"),
                "content_type",
                "connect",
                "dropped",
                true,
            ),
            (
                f(FaultKind::Stall, "x"),
                "stall",
                "connect",
                "dropped",
                true,
            ),
            (
                f(FaultKind::StreamError, "x"),
                "stream_error",
                "connect",
                "dropped",
                true,
            ),
            (
                f(FaultKind::EmptyAudio, "x"),
                "empty_audio",
                "connect",
                "dropped",
                true,
            ),
        ];
        for (fault, label, before, after, retry) in cases {
            assert_eq!(fault.label(), label, "{fault:?}");
            assert_eq!(fault.session_label(false), before, "{fault:?}");
            assert_eq!(fault.session_label(true), after, "{fault:?}");
            assert_eq!(fault.retryable(), retry, "{fault:?}");
        }
    }

    #[test]
    fn quota_is_read_from_the_json_code_or_type_not_the_text() {
        let code_only =
            r#"{"error":{"message":"m","type":"x","param":null,"code":"insufficient_quota"}}"#;
        let type_only =
            r#"{"error":{"message":"m","type":"insufficient_quota","param":null,"code":null}}"#;
        let in_message = r#"{"error":{"message":"not insufficient_quota","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        assert!(!ProviderFault::status(429, code_only, None).retryable());
        assert!(!ProviderFault::status(429, type_only, None).retryable());
        assert!(ProviderFault::status(429, in_message, None).retryable());
    }

    #[test]
    fn accessors_and_display() {
        let f = ProviderFault::status(503, "busy", Some(1_500));
        assert_eq!(
            (f.http_status(), f.close_code(), f.retry_after_ms),
            (Some(503), None, Some(1_500))
        );
        assert_eq!(f.to_string(), "HTTP 503: busy");
        let c = ProviderFault::new(FaultKind::Close(1008), "policy");
        assert_eq!((c.http_status(), c.close_code()), (None, Some(1008)));
        assert_eq!(c.to_string(), "WebSocket close 1008: policy");
        let t = ProviderFault::new(FaultKind::Timeout, "no answer within 200 ms");
        assert_eq!(t.to_string(), "timeout: no answer within 200 ms");
        assert_eq!(t.http_status(), None);
    }
}
