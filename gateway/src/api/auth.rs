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
    /// Usable by other routes (e.g. `/voice`) for the same policy: without `TWILIO_AUTH_TOKEN`
    /// requests are refused unless `HARK_DEV_INSECURE=no-signatures`.
    ///
    /// # Errors
    /// 403 for a missing or wrong signature; 503 naming `TWILIO_AUTH_TOKEN` when it is unset;
    /// 400 when neither `HARK_PUBLIC_URL` nor `Host` gives the URL.
    pub fn verify_twilio_form(
        &self,
        route: &'static str,
        headers: &HeaderMap,
        uri: &Uri,
        form: &[(String, String)],
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
        validator
            .validate_form(&url, form, sig)
            .map(|_| ())
            .map_err(|e| {
                metrics::counter!("hark_signature_failures_total", "route" => route).increment(1);
                warn!(route, error = %e, "Twilio callback refused");
                ApiError::Forbidden(format!("X-Twilio-Signature check failed: {e}"))
            })
    }
}
