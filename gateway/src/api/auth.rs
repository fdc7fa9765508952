//! Who is calling: bearer API keys, a trusted proxy's identity header, the per-key rate limit,
//! and `X-Twilio-Signature` checks for Twilio's callbacks.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, Uri, header};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

use super::{ApiError, ApiState, retry_secs};
use crate::signature;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A bearer `HARK_API_KEY`; `index` is its position in the list (for logs and rate limits,
    /// never the key itself).
    ApiKey {
        /// Position in `HARK_API_KEY`, from 0.
        index: usize,
    },
    /// The identity a trusted proxy put in `HARK_TRUSTED_IDENTITY_HEADER`; requests may act only
    /// as this identity.
    Identity(String),
    /// Nobody: `HARK_DEV_INSECURE=open-tokens`.
    Open,
}

impl Caller {
    /// The rate-limit bucket.
    fn bucket(&self) -> String {
        match self {
            Caller::ApiKey { index } => format!("key:{index}"),
            Caller::Identity(id) => format!("id:{id}"),
            Caller::Open => "open".to_owned(),
        }
    }

    /// The identity a trusted proxy asserted, if any.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Caller::Identity(id) => Some(id),
            _ => None,
        }
    }
}

/// What a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// A bearer API key only (`/calls`).
    ApiKey,
    /// A bearer API key, a trusted identity, or nothing in open development mode (tokens,
    /// Conversations).
    Caller,
}

/// Per-key rate limiter (governor's GCRA): `per_min` sustained, `burst` at once.
pub(crate) struct Limiter {
    inner: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

impl Limiter {
    pub(crate) fn new(per_min: u32, burst: u32) -> Self {
        // Settings keep both ≥ 1; fall back to 1 rather than panic.
        let per_min = NonZeroU32::new(per_min).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Limiter {
            inner: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_min).allow_burst(burst)),
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, bucket: &str, route: &'static str) -> Result<(), ApiError> {
        // Forget idle buckets now and then, so identities don't accumulate.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.inner.retain_recent();
        }
        match self.inner.check_key(&bucket.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                metrics::counter!("hark_api_rate_limited_total", "route" => route).increment(1);
                let wait = not_until.wait_time_from(self.inner.clock().now());
                Err(ApiError::RateLimited {
                    retry_after_s: retry_secs(wait).max(1),
                })
            }
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl ApiState {
    /// Authenticates a request and charges its rate limit.
    ///
    /// Order: a bearer token must match one of `HARK_API_KEY` (compared in constant time over
    /// SHA-256 digests, all keys tried); without one, the trusted identity header (for
    /// [`Need::Caller`]); else open development mode (for [`Need::Caller`]).
    ///
    /// # Errors
    /// 401 (no or wrong credentials), 503 (nothing configured that could authenticate this
    /// route), 429 (rate limit).
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        need: Need,
        route: &'static str,
    ) -> Result<Caller, ApiError> {
        let caller = self.identify(headers, need)?;
        self.limiter.check(&caller.bucket(), route)?;
        Ok(caller)
    }

    fn identify(&self, headers: &HeaderMap, need: Need) -> Result<Caller, ApiError> {
        let s = &self.settings;
        if let Some(token) = bearer(headers) {
            if s.api_keys.is_empty() {
                return Err(ApiError::Unauthorized(
                    "bearer tokens are not accepted: HARK_API_KEY is unset".into(),
                ));
            }
            let got = Sha256::digest(token.as_bytes());
            let mut found = None;
            for (index, key) in s.api_keys.iter().enumerate() {
                let want = Sha256::digest(key.as_bytes());
                if bool::from(got.ct_eq(&want)) && found.is_none() {
                    found = Some(index);
                }
            }
            return match found {
                Some(index) => Ok(Caller::ApiKey { index }),
                None => Err(ApiError::Unauthorized("invalid API key".into())),
            };
        }
        if need == Need::Caller {
            if let Some(name) = &s.trusted_identity_header
                && let Some(v) = headers.get(name)
            {
                let id = v
                    .to_str()
                    .map_err(|_| ApiError::Unauthorized(format!("{name} is not valid text")))?;
                let id = id.trim();
                if id.is_empty() {
                    return Err(ApiError::Unauthorized(format!("{name} is empty")));
                }
                return Ok(Caller::Identity(id.to_owned()));
            }
            if s.dev.open_tokens {
                return Ok(Caller::Open);
            }
            if s.api_keys.is_empty() && s.trusted_identity_header.is_none() {
                return Err(ApiError::NotConfigured {
                    names: vec![
                        super::settings::ENV_API_KEY,
                        super::settings::ENV_TRUSTED_IDENTITY_HEADER,
                    ],
                    what: "authentication (or HARK_DEV_INSECURE=open-tokens for development)",
                });
            }
            let mut how = Vec::new();
            if !s.api_keys.is_empty() {
                how.push("Authorization: Bearer <HARK_API_KEY>".to_owned());
            }
            if let Some(h) = &s.trusted_identity_header {
                how.push(format!("the {h} header from the trusted proxy"));
            }
            return Err(ApiError::Unauthorized(format!(
                "authentication required: {}",
                how.join(" or ")
            )));
        }
        if s.api_keys.is_empty() {
            return Err(ApiError::NotConfigured {
                names: vec![super::settings::ENV_API_KEY],
                what: "this endpoint",
            });
        }
        Err(ApiError::Unauthorized(
            "authentication required: Authorization: Bearer <HARK_API_KEY>".into(),
        ))
    }

    /// The URL Twilio requested: `HARK_PUBLIC_URL` (or `https://<Host>`) + path + query.
    pub(crate) fn public_request_url(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let base = match &self.settings.public_url {
            Some(u) => u.clone(),
            None => format!(
                "https://{}",
                headers.get(header::HOST).and_then(|h| h.to_str().ok())?
            ),
        };
        let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        Some(format!("{base}{pq}"))
    }

    /// Checks `X-Twilio-Signature` on a form POST from Twilio with [`signature::Validator`]
    /// against the public URL (`HARK_PUBLIC_URL`, else `https://<Host>`), all URL variants, in
    /// constant time. Failures are counted in `hark_signature_failures_total{route}`.
    ///
    /// Form only: for a request that may also come with a JSON body (signed with `bodySHA256`),
    /// use [`ApiState::verify_twilio`].
    ///
    /// # Errors
    /// As [`ApiState::verify_twilio`].
    pub fn verify_twilio_form(
        &self,
        route: &'static str,
        headers: &HeaderMap,
        uri: &Uri,
        form: &[(String, String)],
    ) -> Result<(), ApiError> {
        self.check_twilio(route, headers, uri, form, None)
    }

    /// Checks `X-Twilio-Signature` on a request from Twilio whichever way Twilio signed it,
    /// and returns its body parameters:
    ///
    /// - a form POST (`application/x-www-form-urlencoded`) or a GET: the form fields sorted
    ///   and appended to the URL (twilio.com/docs/usage/security);
    /// - a JSON body: the URL's query carries `bodySHA256`, the signature covers the full URL
    ///   with no parameters, and the lowercase hex SHA-256 of the raw body must equal
    ///   `bodySHA256` (twilio-node `validateRequestWithBody`, twilio-python
    ///   `RequestValidator.validate` with the raw body). A JSON body without `bodySHA256` is
    ///   refused: nothing would cover it.
    ///
    /// The URL is the public one (`HARK_PUBLIC_URL`, else `https://<Host>`) plus the path and
    /// query as received; its variants (port stripped, default port added, `'` as `%27`) are
    /// tried as [`signature::Validator`] documents. Failures are counted in
    /// `hark_signature_failures_total{route}`. Without `TWILIO_AUTH_TOKEN`, requests are refused
    /// unless `HARK_DEV_INSECURE=no-signatures`.
    ///
    /// The parameters returned are the form fields in order, or a JSON object's members as
    /// `(name, text)`: strings as they are, numbers and booleans as JSON text, `null` left out,
    /// arrays as one pair per element, nested objects as JSON text.
    ///
    /// # Errors
    /// 403 for a missing or wrong signature or body hash; 503 naming `TWILIO_AUTH_TOKEN` when
    /// it is unset; 400 when neither `HARK_PUBLIC_URL` nor `Host` gives the URL, or the body is
    /// not UTF-8 form data or a JSON object.
    pub fn verify_twilio(
        &self,
        route: &'static str,
        headers: &HeaderMap,
        uri: &Uri,
        body: &[u8],
    ) -> Result<Vec<(String, String)>, ApiError> {
        if is_json_request(headers, uri) {
            // The signature first: it covers the raw bytes, whatever they parse to.
            self.check_twilio(route, headers, uri, &[], Some(body))?;
            json_pairs(body)
        } else {
            let form = super::callbacks::form_pairs(body)?;
            self.check_twilio(route, headers, uri, &form, None)?;
            Ok(form)
        }
    }

    /// The signature policy: `raw_body` `Some` for a JSON request (`bodySHA256`), `None` for a
    /// form or GET with `form` its fields.
    fn check_twilio(
        &self,
        route: &'static str,
        headers: &HeaderMap,
        uri: &Uri,
        form: &[(String, String)],
        raw_body: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        if self.settings.dev.no_signatures {
            return Ok(());
        }
        let Some(validator) = &self.validator else {
            return Err(ApiError::NotConfigured {
                names: vec![super::settings::ENV_AUTH_TOKEN],
                what: "Twilio signature checking (or HARK_DEV_INSECURE=no-signatures for development)",
            });
        };
        let Some(url) = self.public_request_url(headers, uri) else {
            return Err(ApiError::BadRequest {
                field: None,
                reason: "no Host header and HARK_PUBLIC_URL is unset".into(),
            });
        };
        let sig = headers.get(signature::HEADER).and_then(|h| h.to_str().ok());
        let checked = match raw_body {
            // `validate_json` refuses a URL without `bodySHA256` (MissingBodyHash).
            Some(body) => validator.validate_json(&url, body, sig),
            None => validator.validate_form(&url, form, sig),
        };
        checked.map(|_| ()).map_err(|e| {
            metrics::counter!("hark_signature_failures_total", "route" => route).increment(1);
            warn!(route, error = %e, "Twilio callback refused");
            ApiError::Forbidden(format!("X-Twilio-Signature check failed: {e}"))
        })
    }
}

/// Whether a webhook's body is to be read as JSON: the URL's query carries `bodySHA256`
/// (Twilio signed a raw body), or the `Content-Type` is `application/json` or `…+json`.
pub(crate) fn is_json_request(headers: &HeaderMap, uri: &Uri) -> bool {
    let query_has_hash = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.split('=').next() == Some(signature::BODY_SHA256_PARAM))
    });
    query_has_hash || is_json(headers)
}

/// Whether the request says its body is JSON (`application/json`, `…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|ct| {
            let ct = ct.trim().to_ascii_lowercase();
            ct == "application/json" || ct.ends_with("+json")
        })
}

/// A JSON webhook body as `(name, text)` pairs (see [`ApiState::verify_twilio`]); an empty
/// body has none.
///
/// # Errors
/// 400 when the body is not a JSON object.
pub(crate) fn json_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    use serde_json::Value;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let text = |v: Value| match v {
        Value::String(s) => s,
        other => other.to_string(),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                match v {
                    Value::Null => {}
                    Value::Array(items) => {
                        out.extend(items.into_iter().map(|item| (k.clone(), text(item))));
                    }
                    v => out.push((k, text(v))),
                }
            }
            Ok(out)
        }
        Ok(_) => Err(ApiError::BadRequest {
            field: None,
            reason: "the JSON body must be an object".into(),
        }),
        Err(e) => Err(ApiError::BadRequest {
            field: None,
            reason: format!("the body is not valid JSON: {e}"),
        }),
    }
}
