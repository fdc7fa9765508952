//! The gateway API's settings: sections `twilio`, `api` and `records` of hark's one
//! configuration ([`crate::config`]; names as in `DESIGN.md`: Twilio's own names for Twilio
//! settings, `HARK_*` for hark's). The ones the server shares — `HARK_PUBLIC_URL`,
//! `TWILIO_AUTH_TOKEN`, `TWILIO_PHONE_NUMBER`, `HARK_DEV_INSECURE` — are read and checked here
//! once and copied into [`crate::config::Config`].
//!
//! Every setting is listed in README.md ("Gateway API"). A bad value is a
//! [`ConfigError`] naming the variable and its file key; a missing value that a request needs
//! is reported by that request (503 naming the variable), so a gateway without, say,
//! Conversations settings still serves tokens and calls.

use std::time::Duration;

use axum::http::HeaderName;

use crate::config::{ConfigError, Values};
use crate::token::{DEFAULT_TTL_S, MAX_TTL_S};

/// `HARK_API_KEY`.
pub const ENV_API_KEY: &str = "HARK_API_KEY";
/// `HARK_TRUSTED_IDENTITY_HEADER`.
pub const ENV_TRUSTED_IDENTITY_HEADER: &str = "HARK_TRUSTED_IDENTITY_HEADER";
/// `HARK_DEV_INSECURE`.
pub const ENV_DEV_INSECURE: &str = "HARK_DEV_INSECURE";
/// `TWILIO_AUTH_TOKEN`.
pub const ENV_AUTH_TOKEN: &str = "TWILIO_AUTH_TOKEN";
/// `TWILIO_VOICE_REGION`.
pub const ENV_VOICE_REGION: &str = "TWILIO_VOICE_REGION";
/// `TWILIO_PHONE_NUMBER`.
pub const ENV_PHONE_NUMBER: &str = "TWILIO_PHONE_NUMBER";
/// `HARK_PUBLIC_URL`.
pub const ENV_PUBLIC_URL: &str = "HARK_PUBLIC_URL";
/// `HARK_TWILIO_API_BASE`.
pub const ENV_TWILIO_API_BASE: &str = "HARK_TWILIO_API_BASE";
/// `HARK_TWILIO_CONVERSATIONS_BASE`.
pub const ENV_TWILIO_CONVERSATIONS_BASE: &str = "HARK_TWILIO_CONVERSATIONS_BASE";
/// `HARK_DATABASE_URL`.
pub const ENV_DATABASE_URL: &str = "HARK_DATABASE_URL";
/// `HARK_CALLS_PER_SECOND`.
pub const ENV_CALLS_PER_SECOND: &str = "HARK_CALLS_PER_SECOND";
/// `HARK_CALL_QUEUE`.
pub const ENV_CALL_QUEUE: &str = "HARK_CALL_QUEUE";
/// `HARK_TOKEN_TTL_S`.
pub const ENV_TOKEN_TTL_S: &str = "HARK_TOKEN_TTL_S";
/// `HARK_RATE_LIMIT_PER_MIN`.
pub const ENV_RATE_LIMIT_PER_MIN: &str = "HARK_RATE_LIMIT_PER_MIN";
/// `HARK_RATE_LIMIT_BURST`.
pub const ENV_RATE_LIMIT_BURST: &str = "HARK_RATE_LIMIT_BURST";
/// `HARK_STORE_QUEUE`.
pub const ENV_STORE_QUEUE: &str = "HARK_STORE_QUEUE";
/// `HARK_STORE_COMMIT_MS`.
pub const ENV_STORE_COMMIT_MS: &str = "HARK_STORE_COMMIT_MS";
/// `HARK_NODE_ID`.
pub const ENV_NODE_ID: &str = "HARK_NODE_ID";
/// `HARK_NODE_LOST_AFTER_S`.
pub const ENV_NODE_LOST_AFTER_S: &str = "HARK_NODE_LOST_AFTER_S";
/// Default of `HARK_NODE_LOST_AFTER_S`, s.
pub const DEFAULT_NODE_LOST_AFTER_S: u64 = 15;

/// Twilio's REST API base (twilio-oai `twilio_api_v2010.json`, `servers`).
pub const DEFAULT_TWILIO_API_BASE: &str = "https://api.twilio.com";
/// Twilio's Conversations API base (twilio-oai `twilio_conversations_v1.json`, `servers`).
pub const DEFAULT_TWILIO_CONVERSATIONS_BASE: &str = "https://conversations.twilio.com";
/// Default database: the SQLite file `hark.db` in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://hark.db";
/// Default outbound pace: 1 call per second, Twilio's default CPS per account for REST-created
/// calls (twilio.com/docs/glossary/cps; `reference/twilio.md` §5.4).
pub const DEFAULT_CALLS_PER_SECOND: f64 = 1.0;
/// Default number of `POST /calls` requests that may wait for their pacing slot (at 1 call/s,
/// the last one waits 30 s).
pub const DEFAULT_CALL_QUEUE: usize = 30;
/// Default per-key rate limit, requests per minute.
pub const DEFAULT_RATE_LIMIT_PER_MIN: u32 = 120;
/// Default per-key burst, requests.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 20;
/// Default capacity of the store write queue, records.
pub const DEFAULT_STORE_QUEUE: usize = 4096;
/// Default of `HARK_STORE_COMMIT_MS`: at most 50 record transactions a second. Profiled under
/// `hark bench` (500 echo calls, server pinned to one core): a commit per record cost the server
/// about a quarter of its CPU (SQLite's thread and the writer's runtime); see the README's
/// Performance section.
pub const DEFAULT_STORE_COMMIT_MS: u64 = 20;

/// Development-only switches from `HARK_DEV_INSECURE` (comma-separated): `open-tokens` lets
/// anyone mint tokens and use the Conversations endpoints without credentials; `no-signatures`
/// accepts Twilio webhooks without checking `X-Twilio-Signature`; `all` (or `1`/`true`) is both.
/// Each logs a warning at start-up. Never set it on a reachable server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevInsecure {
    /// Token minting and the Conversations endpoints need no authentication.
    pub open_tokens: bool,
    /// Twilio webhooks are accepted unsigned.
    pub no_signatures: bool,
}

/// Everything the gateway API reads from the configuration.
///
/// `Debug` redacts secrets.
#[derive(Clone)]
pub struct ApiSettings {
    /// `HARK_API_KEY`: bearer keys accepted on `/calls`, token minting and the Conversations
    /// endpoints; comma-separated for several (each is rate-limited separately). Empty: none.
    pub api_keys: Vec<String>,
    /// `HARK_TRUSTED_IDENTITY_HEADER`: a header (e.g. `X-Forwarded-User`) set by an
    /// authenticating reverse proxy; when present, the request is authenticated as that
    /// identity for token minting and the Conversations endpoints. Only set it when every request
    /// reaches hark through that proxy, which must strip the header from client requests.
    pub trusted_identity_header: Option<HeaderName>,
    /// `HARK_DEV_INSECURE`.
    pub dev: DevInsecure,
    /// `TWILIO_ACCOUNT_SID` (`AC…`).
    pub account_sid: Option<String>,
    /// `TWILIO_AUTH_TOKEN`: checks `X-Twilio-Signature`; REST Basic auth when no API key is set.
    pub auth_token: Option<String>,
    /// `TWILIO_API_KEY` (`SK…`): signs tokens; REST Basic auth user when set.
    pub api_key_sid: Option<String>,
    /// `TWILIO_API_SECRET`.
    pub api_secret: Option<String>,
    /// `TWILIO_TWIML_APP_SID` (`AP…`): voice tokens' outgoing application.
    pub twiml_app_sid: Option<String>,
    /// `TWILIO_CONVERSATIONS_SERVICE_SID` (`IS…`): chat tokens' service and the service the
    /// Conversations endpoints work in (default service when unset).
    pub conversations_service_sid: Option<String>,
    /// `TWILIO_VOICE_REGION`: the `twr` header of voice tokens (e.g. `ie1`). Unset: `us1`,
    /// Twilio's default, written as no `twr` header (as the SDKs do without a region).
    pub voice_region: Option<String>,
    /// `TWILIO_PHONE_NUMBER`: default `from` of `POST /calls` (E.164).
    pub phone_number: Option<String>,
    /// `HARK_PUBLIC_URL`: public base URL (`https://host[:port][/prefix]`, no trailing slash);
    /// used for signature checks (else `https://<Host>`) and required for `POST /calls`.
    pub public_url: Option<String>,
    /// `HARK_TWILIO_API_BASE`, default [`DEFAULT_TWILIO_API_BASE`].
    pub twilio_api_base: String,
    /// `HARK_TWILIO_CONVERSATIONS_BASE`, default [`DEFAULT_TWILIO_CONVERSATIONS_BASE`].
    pub twilio_conversations_base: String,
    /// `HARK_DATABASE_URL`, default [`DEFAULT_DATABASE_URL`]; `sqlite://path`, `sqlite:path`,
    /// a bare path, or `sqlite::memory:`.
    pub database_url: String,
    /// `HARK_CALLS_PER_SECOND` (> 0, ≤ 1000; fractions allowed, e.g. `0.5`), default 1.
    pub calls_per_second: f64,
    /// `HARK_CALL_QUEUE`: `POST /calls` requests that may wait for a pacing slot (1..=10000),
    /// default [`DEFAULT_CALL_QUEUE`]; beyond it, 503 with `Retry-After`.
    pub call_queue: usize,
    /// `HARK_TOKEN_TTL_S`: access token lifetime, 1..=86400 s, default 3600.
    pub token_ttl_s: u64,
    /// `HARK_RATE_LIMIT_PER_MIN`: sustained requests per minute per API key or identity
    /// (1..=1_000_000), default [`DEFAULT_RATE_LIMIT_PER_MIN`].
    pub rate_limit_per_min: u32,
    /// `HARK_RATE_LIMIT_BURST`: requests allowed at once per key (1..=1_000_000), default
    /// [`DEFAULT_RATE_LIMIT_BURST`].
    pub rate_limit_burst: u32,
    /// `HARK_STORE_QUEUE`: records the store write queue holds (16..=1_000_000), default
    /// [`DEFAULT_STORE_QUEUE`]; when full, live-call records are dropped and counted.
    pub store_queue: usize,
    /// `HARK_STORE_COMMIT_MS`: the shortest time between two commits of the store writer, ms
    /// (0..=1000), default [`DEFAULT_STORE_COMMIT_MS`]. A record queued within it of the last
    /// commit waits for the next one, with everything else queued by then (one transaction);
    /// a record queued after a quiet spell is committed at once. It bounds the commit lag
    /// (what a killed process can lose) and the transactions per second; 0 commits as soon as
    /// the writer is free.
    pub store_commit_ms: u64,
    /// `HARK_NODE_ID`: this hark process's name in the call records (1..=128 visible ASCII
    /// characters), default the host name. At start, `hark serve` closes the calls its node
    /// left open as `ended: crashed` and no others: every process sharing a database needs its
    /// own (see [`super::store::Node`]).
    pub node_id: Option<String>,
    /// `HARK_NODE_LOST_AFTER_S` (2..=3600), default [`DEFAULT_NODE_LOST_AFTER_S`]: a node
    /// whose heartbeat (every fifth of this, at most 5 s) is older than this is lost; another
    /// node on the database closes its open calls as `ended: crashed` and delivers its pending
    /// call events.
    pub node_lost_after_s: u64,
    /// `[operator]`: the signing secret and `HARK_EVENTS_URL`, copied from
    /// [`crate::config::Config::operator`] by `Config` (not read by [`ApiSettings::from_values`]).
    /// With an events URL, [`super::ApiState::new`] writes call events to the outbox and
    /// starts their delivery.
    pub operator: crate::operator::OperatorSettings,
    /// How call events are retried (defaults: 1 s doubling to 5 min, for up to 1 h); not a
    /// setting of the file or the environment.
    pub event_delivery: crate::operator::delivery::DeliveryPolicy,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("ApiSettings")
            .field("api_keys", &format!("<{} redacted>", self.api_keys.len()))
            .field("trusted_identity_header", &self.trusted_identity_header)
            .field("dev", &self.dev)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &redact(&self.auth_token))
            .field("api_key_sid", &self.api_key_sid)
            .field("api_secret", &redact(&self.api_secret))
            .field("twiml_app_sid", &self.twiml_app_sid)
            .field("conversations_service_sid", &self.conversations_service_sid)
            .field("voice_region", &self.voice_region)
            .field("phone_number", &self.phone_number)
            .field("public_url", &self.public_url)
            .field("twilio_api_base", &self.twilio_api_base)
            .field("twilio_conversations_base", &self.twilio_conversations_base)
            .field("database_url", &self.database_url)
            .field("calls_per_second", &self.calls_per_second)
            .field("call_queue", &self.call_queue)
            .field("token_ttl_s", &self.token_ttl_s)
            .field("rate_limit_per_min", &self.rate_limit_per_min)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("store_queue", &self.store_queue)
            .field("store_commit_ms", &self.store_commit_ms)
            .field("node_id", &self.node_id)
            .field("node_lost_after_s", &self.node_lost_after_s)
            .field("operator", &self.operator)
            .field("event_delivery", &self.event_delivery)
            .finish()
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            api_keys: Vec::new(),
            trusted_identity_header: None,
            dev: DevInsecure::default(),
            account_sid: None,
            auth_token: None,
            api_key_sid: None,
            api_secret: None,
            twiml_app_sid: None,
            conversations_service_sid: None,
            voice_region: None,
            phone_number: None,
            public_url: None,
            twilio_api_base: DEFAULT_TWILIO_API_BASE.to_owned(),
            twilio_conversations_base: DEFAULT_TWILIO_CONVERSATIONS_BASE.to_owned(),
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            calls_per_second: DEFAULT_CALLS_PER_SECOND,
            call_queue: DEFAULT_CALL_QUEUE,
            token_ttl_s: DEFAULT_TTL_S,
            rate_limit_per_min: DEFAULT_RATE_LIMIT_PER_MIN,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            store_queue: DEFAULT_STORE_QUEUE,
            store_commit_ms: DEFAULT_STORE_COMMIT_MS,
            node_id: None,
            node_lost_after_s: DEFAULT_NODE_LOST_AFTER_S,
            operator: crate::operator::OperatorSettings::default(),
            event_delivery: crate::operator::delivery::DeliveryPolicy::default(),
        }
    }
}

impl ApiSettings {
    /// Reads the settings from the environment only, through `lookup` (a variable name → its
    /// value), so tests need not touch the process environment, `[operator]` included. Empty
    /// values count as unset.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(lookup: impl FnMut(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Values::from_lookup(lookup);
        let mut s = ApiSettings::from_values(&v)?;
        s.operator = crate::operator::OperatorSettings::from_values(&v)?;
        Ok(s)
    }

    /// Parses sections `twilio`, `api` and `records` (and `server.public_url`,
    /// `server.dev_insecure`, which the server shares) from `v`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_values(v: &Values) -> Result<Self, ConfigError> {
        let mut s = ApiSettings::default();
        s.access(v)?;
        s.twilio(v)?;
        s.records_and_pace(v)?;
        Ok(s)
    }

    /// Who may use the API: `HARK_API_KEY`, `HARK_TRUSTED_IDENTITY_HEADER`, `HARK_DEV_INSECURE`.
    fn access(&mut self, v: &Values) -> Result<(), ConfigError> {
        if let Some(keys) = v.list(ENV_API_KEY, ',') {
            if let Some(short) = keys.iter().find(|k| k.len() < 16) {
                return Err(ConfigError::new(
                    ENV_API_KEY,
                    format!(
                        "a key of {} characters is too short (at least 16; e.g. `openssl rand -hex 32`)",
                        short.len()
                    ),
                ));
            }
            self.api_keys = keys;
        }
        if let Some(h) = v.text(ENV_TRUSTED_IDENTITY_HEADER) {
            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                ConfigError::new(
                    ENV_TRUSTED_IDENTITY_HEADER,
                    format!("{h:?} is not a header name"),
                )
            })?;
            if name == axum::http::header::AUTHORIZATION || name == axum::http::header::HOST {
                return Err(ConfigError::new(
                    ENV_TRUSTED_IDENTITY_HEADER,
                    format!("{h:?} cannot be used"),
                ));
            }
            self.trusted_identity_header = Some(name);
        }
        if let Some(d) = v.get(ENV_DEV_INSECURE) {
            self.dev = crate::config::parse_dev_insecure(&d)?;
        }
        Ok(())
    }

    /// `[twilio]`, and `HARK_PUBLIC_URL`.
    fn twilio(&mut self, v: &Values) -> Result<(), ConfigError> {
        self.account_sid = v.text(crate::token::ENV_ACCOUNT_SID);
        self.auth_token = v.text(ENV_AUTH_TOKEN);
        self.api_key_sid = v.text(crate::token::ENV_API_KEY);
        self.api_secret = v.text(crate::token::ENV_API_SECRET);
        self.twiml_app_sid = v.text(crate::token::ENV_TWIML_APP_SID);
        self.conversations_service_sid = v.text(crate::token::ENV_CONVERSATIONS_SERVICE_SID);
        if let Some(r) = v.text(ENV_VOICE_REGION) {
            if !(r.len() <= 16
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
            {
                return Err(ConfigError::new(
                    ENV_VOICE_REGION,
                    format!("{r:?} is not a region like us1, ie1, au1"),
                ));
            }
            self.voice_region = Some(r);
        }
        if let Some(n) = v.text(ENV_PHONE_NUMBER) {
            if !super::calls::is_e164(&n) {
                return Err(ConfigError::new(
                    ENV_PHONE_NUMBER,
                    format!("{n:?} is not an E.164 number like +14155550100"),
                ));
            }
            self.phone_number = Some(n);
        }
        self.public_url = v.http_url(ENV_PUBLIC_URL)?;
        if let Some(u) = v.http_url(ENV_TWILIO_API_BASE)? {
            self.twilio_api_base = u;
        }
        if let Some(u) = v.http_url(ENV_TWILIO_CONVERSATIONS_BASE)? {
            self.twilio_conversations_base = u;
        }
        Ok(())
    }

    /// `[records]`, and the pace and limits of `[api]`.
    fn records_and_pace(&mut self, v: &Values) -> Result<(), ConfigError> {
        if let Some(u) = v.text(ENV_DATABASE_URL) {
            self.database_url = u;
        }
        if let Some(cps) = v.num_in::<f64>(ENV_CALLS_PER_SECOND, 0.0, 1000.0)? {
            if cps <= 0.0 {
                return Err(ConfigError::new(ENV_CALLS_PER_SECOND, "must be above 0"));
            }
            self.calls_per_second = cps;
        }
        if let Some(n) = v.num_in(ENV_CALL_QUEUE, 1, 10_000)? {
            self.call_queue = n;
        }
        if let Some(n) = v.num_in(ENV_TOKEN_TTL_S, 1, MAX_TTL_S)? {
            self.token_ttl_s = n;
        }
        if let Some(n) = v.num_in(ENV_RATE_LIMIT_PER_MIN, 1, 1_000_000)? {
            self.rate_limit_per_min = n;
        }
        if let Some(n) = v.num_in(ENV_RATE_LIMIT_BURST, 1, 1_000_000)? {
            self.rate_limit_burst = n;
        }
        if let Some(n) = v.num_in(ENV_STORE_QUEUE, 16, 1_000_000)? {
            self.store_queue = n;
        }
        if let Some(n) = v.num_in(ENV_STORE_COMMIT_MS, 0, 1000)? {
            self.store_commit_ms = n;
        }
        if let Some(id) = v.text(ENV_NODE_ID) {
            if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    ENV_NODE_ID,
                    format!("{id:?} must be 1 to 128 visible ASCII characters"),
                ));
            }
            self.node_id = Some(id);
        }
        if let Some(n) = v.num_in(ENV_NODE_LOST_AFTER_S, 2, 3600)? {
            self.node_lost_after_s = n;
        }
        Ok(())
    }

    /// The time between two outbound call creations: `1 / calls_per_second`.
    pub fn call_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.calls_per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<ApiSettings, ConfigError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ApiSettings::from_lookup(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    fn var_of(r: Result<ApiSettings, ConfigError>) -> &'static str {
        match r {
            Err(ConfigError { var, .. }) => var,
            other => panic!("expected a setting error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_closed() {
        let s = settings(&[]).expect("defaults parse");
        assert!(s.api_keys.is_empty());
        assert_eq!(s.dev, DevInsecure::default());
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.calls_per_second, 1.0);
        assert_eq!(s.call_period(), Duration::from_secs(1));
        assert_eq!(s.token_ttl_s, 3600);
        assert_eq!(s.twilio_api_base, "https://api.twilio.com");
    }

    #[test]
    fn the_operator_section_is_read_too() {
        let s = settings(&[
            ("HARK_OPERATOR_SECRET", "0123456789abcdef0123"),
            ("HARK_EVENTS_URL", "http://127.0.0.1:9/events"),
        ])
        .expect("valid");
        assert_eq!(
            s.operator.events_url.as_deref(),
            Some("http://127.0.0.1:9/events")
        );
        assert!(!format!("{s:?}").contains("0123456789abcdef0123"));
        assert_eq!(
            var_of(settings(&[(
                "HARK_EVENTS_URL",
                "http://127.0.0.1:9/events"
            )])),
            "HARK_OPERATOR_SECRET"
        );
    }

    #[test]
    fn values_and_errors() {
        let s = settings(&[
            (ENV_API_KEY, "0123456789abcdef, fedcba9876543210"),
            (ENV_DEV_INSECURE, "open-tokens"),
            (ENV_CALLS_PER_SECOND, "0.5"),
            (ENV_PUBLIC_URL, "https://hark.example/"),
            (ENV_TRUSTED_IDENTITY_HEADER, "X-Forwarded-User"),
        ])
        .expect("valid");
        assert_eq!(s.api_keys.len(), 2);
        assert!(s.dev.open_tokens && !s.dev.no_signatures);
        assert_eq!(s.call_period(), Duration::from_secs(2));
        assert_eq!(s.public_url.as_deref(), Some("https://hark.example"));
        assert_eq!(
            s.trusted_identity_header.as_ref().map(|h| h.as_str()),
            Some("x-forwarded-user")
        );
        assert!(!format!("{s:?}").contains("0123456789abcdef"));

        assert_eq!(var_of(settings(&[(ENV_API_KEY, "short")])), ENV_API_KEY);
        assert_eq!(
            var_of(settings(&[(ENV_DEV_INSECURE, "yes")])),
            ENV_DEV_INSECURE
        );
        assert_eq!(
            var_of(settings(&[(ENV_CALLS_PER_SECOND, "0")])),
            ENV_CALLS_PER_SECOND
        );
        assert_eq!(
            var_of(settings(&[(ENV_TOKEN_TTL_S, "86401")])),
            ENV_TOKEN_TTL_S
        );
        assert_eq!(
            var_of(settings(&[(ENV_PUBLIC_URL, "hark.example")])),
            ENV_PUBLIC_URL
        );
        assert_eq!(
            var_of(settings(&[(ENV_TWILIO_API_BASE, "ftp://x")])),
            ENV_TWILIO_API_BASE
        );
        assert_eq!(
            var_of(settings(&[(ENV_PHONE_NUMBER, "5551234")])),
            ENV_PHONE_NUMBER
        );
        assert_eq!(
            var_of(settings(&[(ENV_VOICE_REGION, "IE 1")])),
            ENV_VOICE_REGION
        );
        assert_eq!(
            var_of(settings(&[(ENV_TRUSTED_IDENTITY_HEADER, "Authorization")])),
            ENV_TRUSTED_IDENTITY_HEADER
        );
    }
}
