//! The gateway API: access tokens, signed Twilio callbacks, outbound calls for schedulers, call
//! records, and Twilio Conversations seeds for a chat front end.
//!
//! Routes ([`router`]; request and response shapes in README.md, "Gateway API"):
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET\|POST /voice/token` | caller | Voice SDK token (VoiceGrant) |
//! | `GET\|POST /api/twilio/token` | caller | Conversations SDK token (ChatGrant) |
//! | `POST /calls` | API key | place an outbound call (paced, rate-limited) |
//! | `GET /calls`, `GET /calls/{sid}` | API key | call records: status timeline, turns, latency, recordings |
//! | `GET /calls/{sid}/recording.wav` | API key | the call's audio recorded by hark ([`crate::recording`]) |
//! | `POST /api/twilio/status` | Twilio signature | call progress callback (incl. `AnsweredBy`) |
//! | `POST /api/twilio/recording` | Twilio signature | recording status callback |
//! | `POST /api/twilio/stream-status` | Twilio signature | Media Streams status callback |
//! | `POST /api/twilio/amd` | Twilio signature | async answering machine verdict, routed to the live call ([`amd`]) |
//! | `POST /api/twilio/conversation` | caller | create or fetch a conversation by unique name |
//! | `POST /api/twilio/participant` | caller | add a chat or SMS/WhatsApp participant |
//! | `POST /api/twilio/messages` | caller | send a message |
//! | `GET /api/twilio/conversations` | caller | a user's conversations |
//! | `POST /api/webhooks/{event}` | Twilio signature | Conversations webhooks, stored |
//!
//! "Caller" means a bearer `HARK_API_KEY`, or the identity header of a trusted proxy
//! (`HARK_TRUSTED_IDENTITY_HEADER`), or nothing when `HARK_DEV_INSECURE=open-tokens`; "API key"
//! means a bearer `HARK_API_KEY` only. Every authenticated route is rate-limited per key or
//! identity (429 with `Retry-After`). Errors are JSON `{"error": "...", "field"?: "...",
//! "code"?: <Twilio error code>, "more_info"?: "..."}`.
//!
//! Records go through one bounded write queue drained by a background task (see [`recorder`]),
//! so a slow or failing database never stalls a live call or a webhook answer. With
//! `HARK_EVENTS_URL` set, the records of a stream's start, each finished turn and the stream's
//! end carry call events for the operator's backend, written to the store's outbox in the same
//! transaction and delivered by a background task ([`crate::operator::delivery`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tracing::warn;

pub mod amd;
pub mod auth;
pub mod callbacks;
pub mod calls;
pub mod cluster;
pub mod conversations;
pub mod recorder;
pub mod settings;
pub mod store;
pub mod tokens;
pub mod turns;
pub mod twilio_rest;

pub use recorder::{CallRecorder, StreamSummary, WriterStats};
pub use settings::{ApiSettings, DevInsecure};
pub use store::{Node, OpenCalls, Store, TurnRow};
pub use twilio_rest::{TwilioApiError, TwilioRest};

use crate::signature::Validator;
use crate::token::Credentials;

/// Why an API request or the API's start-up failed.
///
/// None of these affects a live call: request errors refuse that request only (the HTTP status
/// is [`ApiError::status`]), start-up errors stop `hark serve` before it listens.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Start-up: a setting has a bad value; names the variable and its file key
    /// ([`crate::config::ConfigError`]).
    #[error(transparent)]
    Setting(#[from] crate::config::ConfigError),
    /// Start-up: the database could not be opened or migrated.
    #[error("database {url}: {source}")]
    Database {
        /// `HARK_DATABASE_URL` (without any password).
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Start-up: the embedded migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Start-up: the HTTP client for Twilio's REST API could not be built (TLS set-up).
    #[error("cannot build the Twilio HTTP client: {0}")]
    HttpClient(reqwest::Error),
    /// 400: a request field is missing or invalid; `field` names it when there is one.
    #[error("{}{reason}", .field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    BadRequest {
        /// The field (JSON key, query or form parameter), if the problem is in one.
        field: Option<String>,
        /// What is wrong, safe to show the client.
        reason: String,
    },
    /// 401: no or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed, or a Twilio signature check failed.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such record.
    #[error("{0}")]
    NotFound(String),
    /// 429: the caller's rate limit is used up; retry after `retry_after_s`.
    #[error("rate limit exceeded; retry in {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request will be accepted (`Retry-After`).
        retry_after_s: u64,
    },
    /// 503: the outbound call queue (or the store queue) is full; retry after `retry_after_s`.
    #[error("{reason}; retry in {retry_after_s} s")]
    Busy {
        /// What is full.
        reason: String,
        /// Seconds until there is room (`Retry-After`).
        retry_after_s: u64,
    },
    /// 503: settings this request needs are missing; names the environment variables.
    #[error("not configured: set {}", .names.join(", "))]
    NotConfigured {
        /// The variables, e.g. `["TWILIO_API_SECRET"]`.
        names: Vec<&'static str>,
        /// What needs them.
        what: &'static str,
    },
    /// Twilio's REST API refused the request; its code and message are passed on (status via
    /// [`TwilioApiError::gateway_status`]).
    #[error("Twilio error {}: {}", .0.code.map_or_else(|| "-".to_owned(), |c| c.to_string()), .0.message)]
    Twilio(TwilioApiError),
    /// 502: Twilio's REST API did not answer (a timeout, a broken connection) or answered
    /// something unreadable; the request may have been applied.
    #[error("Twilio API unavailable: {0}")]
    TwilioUnavailable(String),
    /// 502: the connection to Twilio's REST API could not be made, so the request surely did
    /// not reach Twilio (repeating it cannot apply it twice).
    #[error("Twilio API unavailable: connection failed: {0}")]
    TwilioUnreachable(String),
    /// 500: a database read failed.
    #[error("database error: {0}")]
    Store(#[from] sqlx::Error),
}

impl ApiError {
    /// A 400 for `field`.
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.into()),
            reason: reason.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Busy { .. } | ApiError::NotConfigured { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Twilio(e) => e.gateway_status(),
            ApiError::TwilioUnavailable(_) | ApiError::TwilioUnreachable(_) => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::Setting(_)
            | ApiError::Database { .. }
            | ApiError::Migrate(_)
            | ApiError::HttpClient(_)
            | ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = Map::new();
        let message = match &self {
            // Don't leak driver details to clients; they are logged.
            ApiError::Store(e) => {
                warn!(error = %e, "database read failed");
                "database error".to_owned()
            }
            ApiError::NotConfigured { names, what } => {
                format!("{what} is not configured: set {}", names.join(", "))
            }
            ApiError::Twilio(e) => e.message.clone(),
            other => other.to_string(),
        };
        body.insert("error".into(), Value::String(message));
        match &self {
            ApiError::BadRequest {
                field: Some(field), ..
            } => {
                body.insert("field".into(), Value::String(field.clone()));
            }
            ApiError::NotConfigured { names, .. } => {
                body.insert("missing".into(), json!(names));
            }
            ApiError::Twilio(e) => {
                if let Some(code) = e.code {
                    body.insert("code".into(), json!(code));
                }
                if let Some(more) = &e.more_info {
                    body.insert("more_info".into(), json!(more));
                }
                body.insert("twilio_status".into(), json!(e.status));
            }
            _ => {}
        }
        let mut resp = (status, axum::Json(Value::Object(body))).into_response();
        let retry = match &self {
            ApiError::RateLimited { retry_after_s } | ApiError::Busy { retry_after_s, .. } => {
                Some(*retry_after_s)
            }
            ApiError::Twilio(e) if e.status == 429 => Some(1),
            _ => None,
        };
        if let Some(s) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A Conversations webhook as received (signature checked), published to
/// [`ApiState::conversation_events`] subscribers after it is queued for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationEvent {
    /// The route's event name: `message-added`, `conversation-state-updated`,
    /// `participant-added`, `participant-removed` or `twilio-event`.
    pub route: String,
    /// Twilio's `EventType` (e.g. `onMessageAdded`), if sent.
    pub event_type: Option<String>,
    /// Every form parameter, in order.
    pub params: Vec<(String, String)>,
}

/// The summary's `ended` of a call whose stream this node left open when it crashed or was
/// killed (set at the next start by [`ApiState::recover_crashed`]).
pub const ENDED_CRASHED: &str = "crashed";
/// The summary's `ended` of a call cut by the shutdown timeout.
pub const ENDED_SHUTDOWN: &str = "shutdown";

/// What [`ApiState::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Call recorders still alive when the wait ended (call tasks that had not finished).
    pub calls_still_running: usize,
    /// Calls of this run whose stream was still open, closed as `ended: shutdown`.
    pub closed_as_shutdown: Vec<String>,
    /// The write queue's counters at the end.
    pub stats: WriterStats,
    /// This node's call events not delivered yet when the delivery stopped (sent at the next
    /// start); 0 without `HARK_EVENTS_URL`.
    pub events_pending: i64,
}

/// Shared state of the gateway API.
pub struct ApiState {
    /// The settings it was built from.
    pub settings: ApiSettings,
    credentials: Result<Credentials, Vec<&'static str>>,
    validator: Option<Validator>,
    store: Store,
    writer: recorder::Writer,
    limiter: auth::Limiter,
    twilio: Result<TwilioRest, Vec<&'static str>>,
    call_queue: calls::CallQueue,
    conversation_events: broadcast::Sender<ConversationEvent>,
    /// The call events' delivery worker, with `HARK_EVENTS_URL`.
    events: Option<crate::operator::delivery::Delivery>,
    /// This node's live calls, for callbacks that reach into them ([`amd`]).
    live: Arc<amd::LiveCalls>,
    /// The heartbeat, lost-node sweep and callback routing ([`cluster`]).
    cluster: cluster::Cluster,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("settings", &self.settings)
            .field("writer", &self.writer.stats())
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// Reads [`ApiSettings`] from the environment only, through `lookup` (variable name →
    /// value), and builds the state: see [`ApiState::new`]. For tests; `hark serve` builds it
    /// from its loaded [`crate::config::Config::api`].
    ///
    /// # Errors
    /// [`ApiError::Setting`] as [`ApiSettings::from_lookup`], and those of [`ApiState::new`].
    pub async fn from_lookup(
        lookup: impl FnMut(&str) -> Option<String>,
    ) -> Result<Arc<ApiState>, ApiError> {
        ApiState::new(ApiSettings::from_lookup(lookup)?).await
    }

    /// Opens the database (creating it and running the embedded migrations), starts the store
    /// writer and the outbound call pacer (background tasks on the current Tokio runtime), and
    /// builds the Twilio REST client. With an events URL ([`ApiSettings::operator`]), call
    /// events go to the store's outbox and a third task delivers them, starting with what an
    /// earlier run of this node left undelivered. Installs rustls' `ring` crypto provider as
    /// the process default if none is installed yet. Logs a warning for every open development
    /// switch and for signature checking without `TWILIO_AUTH_TOKEN`.
    ///
    /// # Errors
    /// [`ApiError::Database`], [`ApiError::Migrate`], [`ApiError::HttpClient`];
    /// [`ApiError::Setting`] for an events URL without `HARK_OPERATOR_SECRET`.
    pub async fn new(settings: ApiSettings) -> Result<Arc<ApiState>, ApiError> {
        // One TLS provider for the process (crates.md: ring everywhere). Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Make sure the Prometheus recorder exists before the first counter.
        let _ = crate::metrics::handle();
        describe_metrics();

        if settings.dev.open_tokens {
            warn!(
                "HARK_DEV_INSECURE=open-tokens: anyone can mint access tokens and use the Conversations endpoints"
            );
        }
        if settings.dev.no_signatures {
            warn!(
                "HARK_DEV_INSECURE=no-signatures: Twilio webhooks are accepted WITHOUT X-Twilio-Signature checks"
            );
        } else if settings.auth_token.is_none() {
            warn!(
                "TWILIO_AUTH_TOKEN is unset: Twilio callbacks will be refused (503) until it is set"
            );
        }
        if settings.api_keys.is_empty()
            && settings.trusted_identity_header.is_none()
            && !settings.dev.open_tokens
        {
            warn!(
                "neither HARK_API_KEY nor HARK_TRUSTED_IDENTITY_HEADER is set: token minting and /calls are closed"
            );
        }

        let node = store::Node::this_process(
            settings
                .node_id
                .clone()
                .unwrap_or_else(store::Node::hostname),
        );
        let mut store = Store::open(&settings.database_url).await?.with_node(node);
        let events = match &settings.operator.events_url {
            Some(url) => {
                let secret = settings
                    .operator
                    .require_secret(crate::operator::ENV_EVENTS_URL)?;
                store = store.with_events();
                let delivery = crate::operator::delivery::Delivery::start(
                    store.clone(),
                    url.clone(),
                    secret,
                    settings.event_delivery.clone(),
                )
                .map_err(ApiError::HttpClient)?;
                Some(delivery)
            }
            None => None,
        };
        let writer = recorder::Writer::start(
            store.clone(),
            settings.store_queue,
            Duration::from_millis(settings.store_commit_ms),
        );
        let credentials = Credentials::from_lookup(|name| match name {
            crate::token::ENV_ACCOUNT_SID => settings.account_sid.clone(),
            crate::token::ENV_API_KEY => settings.api_key_sid.clone(),
            crate::token::ENV_API_SECRET => settings.api_secret.clone(),
            crate::token::ENV_TWIML_APP_SID => settings.twiml_app_sid.clone(),
            crate::token::ENV_CONVERSATIONS_SERVICE_SID => {
                settings.conversations_service_sid.clone()
            }
            _ => None,
        })
        .map_err(|e| match e {
            crate::token::TokenError::MissingSetting { names } => names,
            _ => Vec::new(),
        });
        let twilio = TwilioRest::from_settings(&settings)?;
        let call_queue =
            calls::CallQueue::new(store.clone(), settings.call_period(), settings.call_queue);
        let limiter = auth::Limiter::new(settings.rate_limit_per_min, settings.rate_limit_burst);
        let validator = settings.auth_token.as_ref().map(Validator::new);
        let (conversation_events, _) = broadcast::channel(256);
        let live: Arc<amd::LiveCalls> = Arc::default();
        let cluster = cluster::Cluster::start(
            store.clone(),
            live.clone(),
            Duration::from_secs(settings.node_lost_after_s),
            &settings.database_url,
        )
        .await?;
        Ok(Arc::new(ApiState {
            credentials,
            validator,
            store,
            writer,
            limiter,
            twilio,
            call_queue,
            conversation_events,
            events,
            settings,
            live,
            cluster,
        }))
    }

    /// A handle live calls record through; cheap to clone, never blocks (see [`CallRecorder`]).
    pub fn recorder(&self) -> CallRecorder {
        self.writer.recorder()
    }

    /// This node's live calls: the media stream registers each call by `CallSid` so Twilio's
    /// answering machine verdict (`POST /api/twilio/amd`) reaches it.
    pub fn live_calls(&self) -> &Arc<amd::LiveCalls> {
        &self.live
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Counters of the store write queue.
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Waits until every record queued before this call has been written (or given up on).
    /// For tests and graceful shutdown; `false` if the writer has stopped.
    pub async fn flush(&self) -> bool {
        self.writer.flush().await
    }

    /// Closes the calls this node ([`ApiSettings::node_id`]) left open in an earlier run (a
    /// crash or `kill -9`: stream started, never stopped) as `ended: crashed`, ending at their
    /// last known activity; see [`Store::close_open_calls`]. `hark serve` calls it once at
    /// start, before it listens. Returns their Call SIDs (logged with a warning).
    ///
    /// # Errors
    /// [`ApiError::Store`] when the database refuses.
    pub async fn recover_crashed(&self) -> Result<Vec<String>, ApiError> {
        let closed = self
            .store
            .close_open_calls(OpenCalls::Crashed, ENDED_CRASHED, now_ms())
            .await?;
        if !closed.is_empty() {
            metrics::counter!("hark_calls_recovered_total").increment(closed.len() as u64);
            warn!(
                calls = closed.len(),
                node = %self.store.node().node_id,
                call_sids = ?closed,
                "calls left open by an earlier run of this node closed as crashed"
            );
        }
        tracing::info!(
            closed = closed.len(),
            node = %self.store.node().node_id,
            "crash recovery done"
        );
        Ok(closed)
    }

    /// Graceful shutdown of the records, after the server stopped taking calls and the live
    /// calls were closed:
    ///
    /// 1. waits up to `wait` for every call's [`CallRecorder`] to be dropped (each call task
    ///    holds one until it has queued its last turns and its summary), so nothing a call
    ///    queues before it ends meets a stopped writer;
    /// 2. writes everything queued;
    /// 3. closes the streams of this run still open (a call task that outlived `wait`) as
    ///    `ended: shutdown`;
    /// 4. stops the writer, after writing whatever was queued meanwhile;
    /// 5. with call events, sends what is due for up to the delivery policy's
    ///    `shutdown_grace`, then stops the delivery (the rest waits in the outbox).
    ///
    /// Records offered after that are dropped ("writer stopped"). Calling it again does
    /// nothing more.
    pub async fn shutdown(&self, wait: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + wait;
        while self.writer.live_recorders() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let calls_still_running = self.writer.live_recorders();
        if calls_still_running > 0 {
            warn!(
                calls = calls_still_running,
                "shutdown: call tasks still running; closing their records as ended: shutdown"
            );
        }
        self.writer.flush().await;
        let closed_as_shutdown = match self
            .store
            .close_open_calls(OpenCalls::ThisRun, ENDED_SHUTDOWN, now_ms())
            .await
        {
            Ok(closed) => closed,
            Err(e) => {
                warn!(error = %e, "shutdown: cannot close the open call records");
                Vec::new()
            }
        };
        self.writer.stop().await;
        // The last calls' events are in the outbox now: what is due goes out within the grace.
        let mut events_pending = 0;
        if let Some(events) = &self.events {
            events.stop().await;
            events_pending = self.store.outbox_pending().await.unwrap_or(-1);
            if events_pending != 0 {
                warn!(
                    events_pending,
                    "call events not delivered yet: sent at the next start"
                );
            }
        }
        self.cluster.stop().await;
        let stats = self.writer.stats();
        tracing::info!(
            written = stats.written,
            dropped = stats.dropped,
            failed = stats.failed,
            commit_lag_p99_ms = stats.commit_lag_p99_us as f64 / 1000.0,
            "call records written; store writer stopped"
        );
        ShutdownReport {
            calls_still_running,
            closed_as_shutdown,
            stats,
            events_pending,
        }
    }

    /// Subscribes to Conversations webhooks as they arrive (after the signature check), for
    /// work that should not delay Twilio's 200 (e.g. an agent answering chat messages). Slow
    /// subscribers miss events (`RecvError::Lagged`); the store keeps them all.
    pub fn conversation_events(&self) -> broadcast::Receiver<ConversationEvent> {
        self.conversation_events.subscribe()
    }

    /// The Twilio REST client.
    ///
    /// # Errors
    /// [`ApiError::NotConfigured`] naming the missing variables (account SID, credentials).
    pub fn twilio(&self) -> Result<&TwilioRest, ApiError> {
        self.twilio
            .as_ref()
            .map_err(|names| ApiError::NotConfigured {
                names: names.clone(),
                what: "the Twilio REST API",
            })
    }
}

/// The gateway API routes with `state` applied, to `.merge()` into the main router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/voice/token", get(tokens::voice).post(tokens::voice))
        .route("/api/twilio/token", get(tokens::chat).post(tokens::chat))
        .route("/calls", post(calls::create).get(calls::list))
        .route("/calls/{sid}", get(calls::show))
        .route("/calls/{sid}/recording.wav", get(calls::recording))
        .route("/api/twilio/status", post(callbacks::status))
        .route("/api/twilio/recording", post(callbacks::recording))
        .route("/api/twilio/stream-status", post(callbacks::stream_status))
        .route(calls::AMD_PATH, post(amd::amd))
        .route("/api/twilio/conversation", post(conversations::create))
        .route("/api/twilio/participant", post(conversations::participant))
        .route("/api/twilio/messages", post(conversations::message))
        .route("/api/twilio/conversations", get(conversations::list))
        .route("/api/webhooks/{event}", post(conversations::webhook))
        .with_state(state)
}

/// Unix time now, ms.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix time now, s.
pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Request parameters from the query string and, for a body, a JSON object or a form
/// (`application/x-www-form-urlencoded`), merged (body wins). JSON values are kept as they are;
/// query and form values are strings.
///
/// # Errors
/// 400 for a body that is neither a JSON object nor a form.
pub(crate) fn request_params(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            out.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(out);
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("application/x-www-form-urlencoded") {
        for (k, v) in form_urlencoded::parse(body) {
            out.insert(k.into_owned(), Value::String(v.into_owned()));
        }
        return Ok(out);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => {
            out.extend(m);
            Ok(out)
        }
        Ok(_) => Err(ApiError::BadRequest {
            field: None,
            reason: "the body must be a JSON object".into(),
        }),
        Err(e) => Err(ApiError::BadRequest {
            field: None,
            reason: format!("the body is neither JSON nor application/x-www-form-urlencoded: {e}"),
        }),
    }
}

/// A Twilio webhook's body parameters without a signature check (for servers running without
/// the gateway API): a JSON object's members when the body is JSON (`bodySHA256` in the query or
/// a JSON `Content-Type`), else the form fields, in order, as
/// [`ApiState::verify_twilio`] returns them.
///
/// # Errors
/// 400 for a body that is not UTF-8 form data or a JSON object.
pub fn webhook_params(
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    if auth::is_json_request(headers, uri) {
        auth::json_pairs(body)
    } else {
        callbacks::form_pairs(body)
    }
}

/// An optional string parameter: absent, `null` or empty → `None`.
///
/// # Errors
/// 400 naming `name` when the value is not a string.
pub(crate) fn opt_str(params: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::field(name, "must be a string")),
    }
}

/// Seconds for a `Retry-After`, at least 1.
pub(crate) fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        "hark_record_commit_lag_seconds",
        Unit::Seconds,
        "call record queued -> committed to the store, by op"
    );
    describe_counter!(
        "hark_calls_recovered_total",
        "calls left open by an earlier run of this node, closed as crashed at start"
    );
    describe_counter!(
        "hark_store_errors_total",
        "store writes given up after retries, by op"
    );
    describe_counter!("hark_store_retries_total", "store write retries");
    describe_counter!(
        "hark_store_dropped_total",
        "records dropped because the store queue was full, by op"
    );
    describe_counter!(
        "hark_api_rate_limited_total",
        "API requests refused by the per-key rate limit, by route"
    );
    describe_counter!(
        "hark_outbound_calls_total",
        "POST /calls outcomes: created, twilio_error, unavailable, queue_full, abandoned"
    );
    describe_counter!(
        "hark_webhooks_total",
        "Twilio callbacks and Conversations webhooks accepted, by kind"
    );
    describe_counter!("hark_tokens_total", "access tokens minted, by grant");
    describe_counter!(
        "hark_events_enqueued_total",
        "call events written to the outbox, by type"
    );
    describe_counter!(
        "hark_events_delivered_total",
        "call events the operator's backend accepted (2xx), by type"
    );
    describe_counter!(
        "hark_events_retries_total",
        "failed call event attempts to be retried, by kind: connect, timeout, transport, status_408, status_429, status_5xx"
    );
    describe_counter!(
        "hark_events_failed_total",
        "call events given up (kept in the outbox as failed), by reason: rejected (3xx/4xx), expired (undelivered at the maximum age)"
    );
    metrics::describe_gauge!(
        "hark_events_outbox_pending",
        "this node's call events not delivered yet"
    );
    describe_histogram!(
        "hark_events_delivery_lag_seconds",
        Unit::Seconds,
        "call event created -> accepted by the operator's backend"
    );
}
