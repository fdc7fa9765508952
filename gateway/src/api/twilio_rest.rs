//! A small client for the Twilio REST operations hark uses: create and redirect a call (API
//! v2010) and a few Conversations v1 operations.
//!
//! Wire format (`reference/twilio.md` §5.1, as the official SDKs send it): requests are
//! `application/x-www-form-urlencoded` with arrays as repeated keys
//! (`StatusCallbackEvent=initiated&StatusCallbackEvent=ringing`), booleans `true`/`false`,
//! nested names dotted (`MessagingBinding.Address`); `Accept: application/json`; HTTP Basic auth
//! with `TWILIO_API_KEY:TWILIO_API_SECRET` when set, else `TWILIO_ACCOUNT_SID:TWILIO_AUTH_TOKEN`.
//! Errors come back as JSON `{code, message, more_info, status}`.
//!
//! Base URLs come from `HARK_TWILIO_API_BASE` and `HARK_TWILIO_CONVERSATIONS_BASE`, so tests and
//! staging can point at a local double. TLS is rustls with the `ring` provider.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::settings::ApiSettings;
use super::{ApiError, settings};

/// Request timeout for Twilio REST calls.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// An error answer from Twilio's REST API (twilio.com/docs/usage/twilios-response#response-formats-exceptions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TwilioApiError {
    /// Twilio's error code (e.g. 21211 invalid `To`), when given.
    #[serde(default)]
    pub code: Option<i64>,
    /// Twilio's message.
    #[serde(default)]
    pub message: String,
    /// Link to the error's documentation.
    #[serde(default)]
    pub more_info: Option<String>,
    /// The HTTP status Twilio answered with.
    #[serde(default)]
    pub status: u16,
}

impl TwilioApiError {
    /// The status hark answers with: Twilio's 400/404/409/422 (the request's content) and 429
    /// pass through; 401/403 (hark's credentials) and 5xx become 502.
    pub fn gateway_status(&self) -> StatusCode {
        match self.status {
            400 | 404 | 409 | 422 | 429 => {
                StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The parts of Twilio's Call resource (`api.v2010.account.call`) hark reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CallResource {
    /// `CA…`.
    pub sid: String,
    /// `queued`, `ringing`, … (`call_enum_status`).
    pub status: Option<String>,
    /// Called number.
    pub to: Option<String>,
    /// Caller number.
    pub from: Option<String>,
}

/// Basic auth pair and bases.
#[derive(Clone)]
pub struct TwilioRest {
    http: reqwest::Client,
    api_base: String,
    conversations_base: String,
    account_sid: String,
    user: String,
    password: String,
    service_sid: Option<String>,
}

impl std::fmt::Debug for TwilioRest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioRest")
            .field("api_base", &self.api_base)
            .field("conversations_base", &self.conversations_base)
            .field("account_sid", &self.account_sid)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Appends `k=v` form-encoded (`+` for space, `%2B` for `+`).
pub fn encode_form(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

impl TwilioRest {
    /// The client from settings: `Ok(Err(names))` when the account or credentials are missing
    /// (requests then answer 503 naming them).
    ///
    /// # Errors
    /// [`ApiError::HttpClient`] when the HTTP client cannot be built.
    pub fn from_settings(
        s: &ApiSettings,
    ) -> Result<Result<TwilioRest, Vec<&'static str>>, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("hark/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ApiError::HttpClient)?;
        let Some(account_sid) = s.account_sid.clone() else {
            return Ok(Err(vec![crate::token::ENV_ACCOUNT_SID]));
        };
        let (user, password) = match (&s.api_key_sid, &s.api_secret, &s.auth_token) {
            (Some(k), Some(sec), _) => (k.clone(), sec.clone()),
            (_, _, Some(tok)) => (account_sid.clone(), tok.clone()),
            _ => {
                return Ok(Err(vec![
                    crate::token::ENV_API_KEY,
                    crate::token::ENV_API_SECRET,
                    settings::ENV_AUTH_TOKEN,
                ]));
            }
        };
        Ok(Ok(TwilioRest {
            http,
            api_base: s.twilio_api_base.clone(),
            conversations_base: s.twilio_conversations_base.clone(),
            account_sid,
            user,
            password,
            service_sid: s.conversations_service_sid.clone(),
        }))
    }

    /// The Account SID in request paths.
    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// Creates a call: `POST {api}/2010-04-01/Accounts/{AccountSid}/Calls.json` with `form`
    /// (`CreateCallRequest` fields, repeated keys for arrays). Twilio answers 201 with the Call.
    ///
    /// # Errors
    /// [`ApiError::Twilio`] for an error answer, [`ApiError::TwilioUnavailable`] otherwise.
    pub async fn create_call(&self, form: &[(String, String)]) -> Result<CallResource, ApiError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls.json",
            self.api_base, self.account_sid
        );
        let v = self
            .send(self.http.post(url).body(encode_form(form)), true)
            .await?;
        serde_json::from_value(v)
            .map_err(|e| ApiError::TwilioUnavailable(format!("unreadable Call resource: {e}")))
    }

    /// Redirects a live call: `POST {api}/2010-04-01/Accounts/{AccountSid}/Calls/{call_sid}.json`
    /// with `form` (`UpdateCallRequest` fields: `Twiml`, `Url`, `Status`, …;
    /// twilio.com/docs/voice/api/call-resource#update-a-call-resource). New TwiML replaces what
    /// the call runs now, which ends a `<Connect><Stream>` from Twilio's side. Twilio answers
    /// 200 with the Call.
    ///
    /// Any 2xx counts as done, even with a body hark cannot read: Twilio has applied the
    /// update, and repeating it (a new `<Dial>`) would restart the transfer.
    ///
    /// # Errors
    /// As [`TwilioRest::create_call`]; a call that has already ended answers 404 (code 20404).
    /// Only an error for which [`is_connect_failure`] holds is certain not to have reached
    /// Twilio (after a timeout, the update may have been applied).
    pub async fn update_call(
        &self,
        call_sid: &str,
        form: &[(String, String)],
    ) -> Result<CallResource, ApiError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json",
            self.api_base, self.account_sid
        );
        let (status, body) = self
            .send_raw(self.http.post(url).body(encode_form(form)), true)
            .await?;
        if !(200..300).contains(&status) {
            return Err(twilio_error(status, &body));
        }
        Ok(
            serde_json::from_slice(&body).unwrap_or_else(|_| CallResource {
                sid: call_sid.to_owned(),
                status: None,
                to: None,
                from: None,
            }),
        )
    }

    /// A Conversations path: `/v1/Services/{ChatServiceSid}/{rest}` when
    /// `TWILIO_CONVERSATIONS_SERVICE_SID` is set, else the default service's `/v1/{rest}`.
    fn conv_url(&self, rest: &str) -> String {
        match &self.service_sid {
            Some(is) => format!("{}/v1/Services/{is}/{rest}", self.conversations_base),
            None => format!("{}/v1/{rest}", self.conversations_base),
        }
    }

    /// `POST` a form to a Conversations path (see `conv_url`); returns the JSON answer.
    ///
    /// # Errors
    /// As [`TwilioRest::create_call`].
    pub async fn conversations_post(
        &self,
        rest: &str,
        form: &[(String, String)],
    ) -> Result<Value, ApiError> {
        let req = self.http.post(self.conv_url(rest)).body(encode_form(form));
        self.send(req, true).await
    }

    /// `GET` a Conversations path with `query`; returns the JSON answer.
    ///
    /// # Errors
    /// As [`TwilioRest::create_call`].
    pub async fn conversations_get(
        &self,
        rest: &str,
        query: &[(String, String)],
    ) -> Result<Value, ApiError> {
        let mut url = self.conv_url(rest);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&encode_form(query));
        }
        self.send(self.http.get(url), false).await
    }

    /// Sends with hark's credentials; returns Twilio's status and body.
    ///
    /// # Errors
    /// [`ApiError::TwilioUnreachable`] when no connection could be made,
    /// [`ApiError::TwilioUnavailable`] when no answer came otherwise.
    async fn send_raw(
        &self,
        req: reqwest::RequestBuilder,
        form: bool,
    ) -> Result<(u16, bytes::Bytes), ApiError> {
        let mut req = req
            .basic_auth(&self.user, Some(&self.password))
            .header(reqwest::header::ACCEPT, "application/json");
        if form {
            req = req.header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let resp = req.send().await.map_err(unanswered)?;
        let status = resp.status().as_u16();
        let body = match resp.bytes().await {
            Ok(b) => b,
            // Twilio has answered success: a body lost on the way does not undo it.
            Err(_) if (200..300).contains(&status) => bytes::Bytes::new(),
            Err(e) => return Err(unanswered(e)),
        };
        Ok((status, body))
    }

    async fn send(&self, req: reqwest::RequestBuilder, form: bool) -> Result<Value, ApiError> {
        let (status, body) = self.send_raw(req, form).await?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| {
                ApiError::TwilioUnavailable(format!(
                    "Twilio answered {status} with unreadable JSON: {e}"
                ))
            });
        }
        Err(twilio_error(status, &body))
    }
}

/// Twilio's error answer `{code, message, more_info, status}` (or the body's start when it
/// is not one) as an [`ApiError::Twilio`].
fn twilio_error(status: u16, body: &[u8]) -> ApiError {
    let mut err: TwilioApiError = serde_json::from_slice(body).unwrap_or(TwilioApiError {
        code: None,
        message: String::from_utf8_lossy(body).chars().take(200).collect(),
        more_info: None,
        status,
    });
    err.status = status;
    if err.message.is_empty() {
        err.message = format!("Twilio answered HTTP {status}");
    }
    ApiError::Twilio(err)
}

/// Whether `sid` is a Twilio SID of the kind `prefix` names: the two letters (`CA` a call,
/// `CH` a conversation) then 32 hex digits (the `^CA[0-9a-fA-F]{32}$` patterns of Twilio's
/// OpenAPI specs). SIDs go into request paths, so anything else is refused.
pub fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == prefix.len() + 32
        && sid.starts_with(prefix)
        && sid[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `e` means the request never reached Twilio (the connection could not be made,
/// [`ApiError::TwilioUnreachable`]), so repeating it cannot apply it twice.
pub fn is_connect_failure(e: &ApiError) -> bool {
    matches!(e, ApiError::TwilioUnreachable(_))
}

/// A request that got no answer: [`ApiError::TwilioUnreachable`] when the connection could
/// not be made, else [`ApiError::TwilioUnavailable`] (timed out, or failed on the way).
fn unanswered(e: reqwest::Error) -> ApiError {
    if e.is_connect() {
        ApiError::TwilioUnreachable(without_url(e))
    } else if e.is_timeout() {
        ApiError::TwilioUnavailable(format!("timed out: {}", without_url(e)))
    } else {
        ApiError::TwilioUnavailable(format!("request failed: {}", without_url(e)))
    }
}

/// A reqwest error's text with its causes but without the URL (which may hold the Account SID
/// or credentials). Shared by every gateway HTTP client (Twilio REST, event delivery).
pub(crate) fn without_url(e: reqwest::Error) -> String {
    use std::error::Error as _;
    let e = e.without_url();
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_matches_the_sdks() {
        let pairs = vec![
            ("To".to_owned(), "+14155550100".to_owned()),
            ("StatusCallbackEvent".to_owned(), "initiated".to_owned()),
            ("StatusCallbackEvent".to_owned(), "ringing".to_owned()),
            ("Attributes".to_owned(), r#"{"k": "v"}"#.to_owned()),
        ];
        assert_eq!(
            encode_form(&pairs),
            "To=%2B14155550100&StatusCallbackEvent=initiated&StatusCallbackEvent=ringing&Attributes=%7B%22k%22%3A+%22v%22%7D"
        );
    }

    #[test]
    fn sids_are_two_letters_and_32_hex_digits() {
        assert!(is_sid("CA0123456789abcdef0123456789ABCDEF", "CA"));
        assert!(!is_sid("CH0123456789abcdef0123456789abcdef", "CA"));
        assert!(!is_sid("CA0123456789abcdef0123456789abcde", "CA"));
        assert!(!is_sid("CA0123456789abcdef0123456789abcdeg", "CA"));
        assert!(!is_sid("CA/../0123456789abcdef0123456789ab", "CA"));
    }

    /// A refused connection surely did not reach Twilio; a request that timed out may have.
    #[tokio::test]
    async fn only_a_failed_connection_counts_as_never_sent() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        hark_engine::io::http::install_crypto_provider();
        let http = reqwest::Client::new();
        let e = http
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let e = unanswered(e);
        assert!(matches!(e, ApiError::TwilioUnreachable(_)), "{e:?}");
        assert!(is_connect_failure(&e));
        assert!(e.to_string().contains("connection failed"), "{e}");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);

        // Accepts, never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let e = http
            .get(format!("http://{addr}/"))
            .timeout(std::time::Duration::from_millis(100))
            .send()
            .await
            .unwrap_err();
        let e = unanswered(e);
        assert!(matches!(e, ApiError::TwilioUnavailable(_)), "{e:?}");
        assert!(!is_connect_failure(&e));
        assert!(e.to_string().contains("timed out"), "{e}");
        server.abort();
    }

    #[test]
    fn error_statuses() {
        let e = |status| TwilioApiError {
            code: Some(20001),
            message: "x".into(),
            more_info: None,
            status,
        };
        assert_eq!(e(400).gateway_status(), StatusCode::BAD_REQUEST);
        assert_eq!(e(429).gateway_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e(401).gateway_status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e(500).gateway_status(), StatusCode::BAD_GATEWAY);
    }
}
