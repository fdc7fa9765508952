//! The operator's backend: what hark tells it and asks it over HTTP, every request signed
//! ([`hark_engine::operator`]: `X-Hark-Timestamp`, `X-Hark-Signature`).
//!
//! Settings (`[operator]` in `hark.toml`):
//! - `HARK_OPERATOR_SECRET` (`operator.secret`): the HMAC key every request is signed with.
//!   Required as soon as any operator URL (events, context, a tool) is set.
//! - `HARK_EVENTS_URL` (`operator.events_url`): where call events are POSTed.
//! - `HARK_CONTEXT_URL` (`operator.context_url`): where a call's facts are POSTed when its
//!   stream starts, for per-call prompt, greeting and variables.
//! - `HARK_CONTEXT_TIMEOUT_MS` (`operator.context_timeout_ms`): how long the context answer
//!   may take before the configured defaults apply (default 1,500 ms, 100–10,000).

pub mod delivery;
pub mod events;

use hark_engine::operator::Secret;

use crate::config::{ConfigError, Values};

/// `HARK_OPERATOR_SECRET`.
pub const ENV_SECRET: &str = "HARK_OPERATOR_SECRET";
/// `HARK_EVENTS_URL`.
pub const ENV_EVENTS_URL: &str = "HARK_EVENTS_URL";
/// `HARK_CONTEXT_URL`.
pub const ENV_CONTEXT_URL: &str = "HARK_CONTEXT_URL";
/// `HARK_CONTEXT_TIMEOUT_MS`.
pub const ENV_CONTEXT_TIMEOUT_MS: &str = "HARK_CONTEXT_TIMEOUT_MS";

/// Default deadline of the context request, ms.
pub const DEFAULT_CONTEXT_TIMEOUT_MS: u64 = 1_500;

/// Shortest secret accepted, bytes (an HMAC-SHA256 key should be at least 32 random bytes;
/// 16 refuses obvious placeholders without rejecting hex-encoded 128-bit keys).
pub const MIN_SECRET_LEN: usize = 16;

/// The operator section of the configuration.
#[derive(Debug, Clone, Default)]
pub struct OperatorSettings {
    /// The signing secret (`HARK_OPERATOR_SECRET`).
    pub secret: Option<Secret>,
    /// Where call events go (`HARK_EVENTS_URL`), an `http(s)://` URL.
    pub events_url: Option<String>,
    /// Where per-call context is asked for (`HARK_CONTEXT_URL`).
    pub context_url: Option<String>,
    /// The context request's deadline, ms (`HARK_CONTEXT_TIMEOUT_MS`).
    pub context_timeout_ms: u64,
}

impl OperatorSettings {
    /// Reads `[operator]` from `v`.
    ///
    /// # Errors
    /// [`ConfigError`] for a bad URL or timeout, a secret under [`MIN_SECRET_LEN`] bytes, or a
    /// URL set without a secret.
    pub fn from_values(v: &Values) -> Result<Self, ConfigError> {
        let secret = match v.get(ENV_SECRET) {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(ConfigError::new(
                    ENV_SECRET,
                    format!(
                        "a secret of {} bytes is too short (at least {MIN_SECRET_LEN}; e.g. `openssl rand -hex 32`)",
                        s.len()
                    ),
                ));
            }
            s => s.map(Secret::new),
        };
        let s = OperatorSettings {
            secret,
            events_url: v.http_url(ENV_EVENTS_URL)?,
            context_url: v.http_url(ENV_CONTEXT_URL)?,
            context_timeout_ms: v
                .num_in(ENV_CONTEXT_TIMEOUT_MS, 100, 10_000)?
                .unwrap_or(DEFAULT_CONTEXT_TIMEOUT_MS),
        };
        for (var, url) in [
            (ENV_EVENTS_URL, &s.events_url),
            (ENV_CONTEXT_URL, &s.context_url),
        ] {
            if url.is_some() {
                s.require_secret(var)?;
            }
        }
        Ok(s)
    }

    /// The secret, or an error naming `who` (the setting that needs it) when there is none.
    ///
    /// # Errors
    /// [`ConfigError`] naming [`ENV_SECRET`].
    pub fn require_secret(&self, who: &str) -> Result<Secret, ConfigError> {
        self.secret.clone().ok_or_else(|| {
            ConfigError::new(
                ENV_SECRET,
                format!("{who} is set: requests to the operator are signed, so a secret is needed"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<OperatorSettings, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OperatorSettings::from_values(&Values::from_lookup(|k| {
            pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        }))
    }

    #[test]
    fn urls_need_a_secret_and_the_timeout_has_a_range() {
        let s = read(&[]).unwrap();
        assert!(s.secret.is_none() && s.events_url.is_none());
        assert_eq!(s.context_timeout_ms, DEFAULT_CONTEXT_TIMEOUT_MS);
        let e = read(&[(ENV_EVENTS_URL, "http://127.0.0.1:9/events")]).unwrap_err();
        assert_eq!(e.var, ENV_SECRET);
        assert!(e.reason.contains(ENV_EVENTS_URL), "{e}");
        assert_eq!(read(&[(ENV_SECRET, "short")]).unwrap_err().var, ENV_SECRET);
        let s = read(&[
            (ENV_SECRET, "0123456789abcdef0123"),
            (ENV_CONTEXT_URL, "https://ops.example.com/context/"),
            (ENV_CONTEXT_TIMEOUT_MS, "800"),
        ])
        .unwrap();
        assert_eq!(
            s.context_url.as_deref(),
            Some("https://ops.example.com/context")
        );
        assert_eq!(s.context_timeout_ms, 800);
        assert_eq!(
            read(&[(ENV_CONTEXT_TIMEOUT_MS, "20")]).unwrap_err().var,
            ENV_CONTEXT_TIMEOUT_MS
        );
        assert_eq!(
            read(&[(ENV_EVENTS_URL, "ftp://x")]).unwrap_err().var,
            ENV_EVENTS_URL
        );
    }
}
