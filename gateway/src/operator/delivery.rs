//! Delivery of call events to the operator's backend (`HARK_EVENTS_URL`): a background task
//! that POSTs the outbox's events ([`crate::api::store::OutboxRow`]), signed, until the backend
//! takes them.
//!
//! - **Signed** per attempt: `X-Hark-Timestamp` / `X-Hark-Signature` over the exact body sent
//!   ([`hark_engine::operator::Secret::headers`]), plus `Idempotency-Key` (the event's `id`)
//!   and `X-Hark-Event` (its type). The body never changes between attempts.
//! - **Outcomes**: 2xx delivers. A connection failure, a timeout, 408, 429 or 5xx is retried
//!   with exponential backoff ([`DeliveryPolicy`]: from 1 s, doubling, capped at 5 min, with
//!   jitter), and no sooner than a `Retry-After` asks; an event still undelivered when it
//!   is [`DeliveryPolicy::max_age`] (1 h) old is given up. Any other status (3xx, 4xx) is a
//!   refusal retrying cannot fix: given up at once. Given-up events stay in the outbox as
//!   `failed`, counted in `hark_events_failed_total{reason}` and logged; nothing is dropped
//!   silently.
//! - **Order**: per call, in `seq` order: event `n + 1` is sent only once `n` is delivered or
//!   given up. Calls are independent, at most [`DeliveryPolicy::concurrency`] in flight.
//! - **Restarts**: the outbox is the database, so a restart picks up every undelivered event.
//!   A delivered event is marked before the next of its call is sent and never sent again; an
//!   attempt the process died during is repeated (at least once: the backend dedupes by `id`).
//! - **Shutdown** ([`Delivery::stop`]): what is due is still sent for up to
//!   [`DeliveryPolicy::shutdown_grace`]; the rest waits for the next start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hark_engine::operator::Secret;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::events::{EVENT_HEADER, IDEMPOTENCY_HEADER};
use crate::api::now_ms;
use crate::api::store::{OutboxRow, Store};

/// How events are retried. The defaults are the service's; tests pass shorter ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Pause after an event's first failed attempt (default 1 s); doubled after each further
    /// failure, then jittered to between half and all of it.
    pub initial_backoff: Duration,
    /// Longest pause between two attempts of an event (default 5 min).
    pub max_backoff: Duration,
    /// How long after its creation an event is retried (default 1 h); a failure after that
    /// gives it up.
    pub max_age: Duration,
    /// One attempt's deadline, connection and response included (default 10 s).
    pub request_timeout: Duration,
    /// Events in flight at once, each of a different call (default 16).
    pub concurrency: usize,
    /// At shutdown, how long events already due may still be sent (default 5 s).
    pub shutdown_grace: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            concurrency: 16,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl DeliveryPolicy {
    /// The pause after an event's `failures`-th failed attempt (from 1), before jitter:
    /// `initial_backoff · 2^(failures − 1)`, at most `max_backoff`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial_backoff
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_backoff)
    }

    /// [`DeliveryPolicy::backoff`] jittered by `unit` ∈ [0, 1]: between half (`unit` = 0) and
    /// all (`unit` = 1) of it, so events that failed together do not retry together.
    pub fn jittered(&self, failures: u32, unit: f64) -> Duration {
        let d = self.backoff(failures);
        d / 2 + (d / 2).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered,
    /// A failure that may pass: try again later.
    Retry {
        /// For `hark_events_retries_total{kind}`: `connect`, `timeout`, `transport`,
        /// `status_408`, `status_429`, `status_5xx`.
        kind: &'static str,
        /// What happened, for the outbox's `last_error` and the logs.
        error: String,
        /// The backend's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// A status retrying cannot fix (3xx, 4xx other than 408 and 429): give the event up.
    Rejected {
        /// What happened.
        error: String,
    },
}

/// The outcome of an answer with `status`; `retry_after` is its `Retry-After` value and
/// `body` the start of its body (for the error text), `now` the time to read an HTTP-date
/// `Retry-After` against.
pub fn classify(status: u16, retry_after: Option<&str>, body: &str, now: SystemTime) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered;
    }
    let snippet: String = body.chars().take(200).collect();
    let error = if snippet.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", snippet.trim())
    };
    let kind = match status {
        408 => "status_408",
        429 => "status_429",
        500..=599 => "status_5xx",
        _ => return Outcome::Rejected { error },
    };
    Outcome::Retry {
        kind,
        error,
        retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
    }
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date read against
/// `now` (a date in the past is no delay). `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delivery worker's handle, owned by [`crate::api::ApiState`]. Dropping it stops the
/// worker at once (in-flight attempts are cut and repeated at the next start).
#[derive(Debug)]
pub struct Delivery {
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    abort: AbortHandle,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// What the worker task shares with its deliveries.
struct Worker {
    store: Store,
    http: reqwest::Client,
    url: String,
    secret: Secret,
    policy: DeliveryPolicy,
    /// Unix s of the latest "backend failing" warning (one per 10 s at most).
    last_warn_s: AtomicU64,
}

/// How long the worker sleeps with nothing due (new events wake it at once).
const IDLE_POLL: Duration = Duration::from_secs(30);

impl Delivery {
    /// Starts the worker on the current runtime: it delivers `store`'s outbox (this node's
    /// events; the store must have events on, [`Store::with_events`]) to `url`, signing with
    /// `secret`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (TLS set-up).
    pub fn start(
        store: Store,
        url: String,
        secret: Secret,
        policy: DeliveryPolicy,
    ) -> Result<Delivery, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(policy.request_timeout)
            .connect_timeout(policy.request_timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hark/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let worker = Arc::new(Worker {
            store,
            http,
            url,
            secret,
            policy,
            last_warn_s: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(worker, stopped));
        let abort = task.abort_handle();
        Ok(Delivery {
            stop,
            task: std::sync::Mutex::new(Some(task)),
            abort,
        })
    }

    /// Stops the worker: events due now are still sent for up to the policy's
    /// `shutdown_grace`, then it ends (attempts still in flight are cut). Returns once it has
    /// ended; calling it again returns at once.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The worker's loop: start what is due, wait for a result, a new event, the next due time
/// or the stop.
async fn run(w: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let Some(signal) = w.store.outbox_signal() else {
        warn!("call events: the store has events off; nothing to deliver");
        return;
    };
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut draining: Option<tokio::time::Instant> = None;
    info!(url = %w.url, "call events: delivering");
    loop {
        let next_due = match start_due(&w, &mut tasks, &mut in_flight).await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "call events: cannot read the outbox; retrying in 1 s");
                Some(now_ms() + 1000)
            }
        };
        if let Ok(n) = w.store.outbox_pending().await {
            metrics::gauge!("hark_events_outbox_pending").set(n as f64);
        }
        if draining.is_some() && tasks.is_empty() {
            // Nothing due is left to send.
            break;
        }
        let wait = next_due.map_or(IDLE_POLL, |at| {
            Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(IDLE_POLL)
        });
        tokio::select! {
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        if e.is_panic() {
                            warn!(error = %e, "call events: a delivery panicked; its event stays pending");
                        }
                        e.id()
                    }
                };
                in_flight.remove(&id);
            }
            () = signal.notify.notified() => {}
            () = tokio::time::sleep(wait), if draining.is_none() => {}
            _ = stop.changed(), if draining.is_none() => {
                draining = Some(tokio::time::Instant::now() + w.policy.shutdown_grace);
            }
            () = sleep_until(draining), if draining.is_some() => {
                warn!(in_flight = tasks.len(), "call events: shutdown grace over; the rest is sent at the next start");
                break;
            }
        }
    }
    tasks.abort_all();
    debug!("call events: delivery stopped");
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts a delivery for each call whose next event is due (and not in flight already), up to
/// the concurrency. Returns when the soonest event not started is due (Unix ms), if any.
async fn start_due(
    w: &Arc<Worker>,
    tasks: &mut JoinSet<()>,
    in_flight: &mut HashMap<tokio::task::Id, String>,
) -> Result<Option<i64>, sqlx::Error> {
    let free = w.policy.concurrency.max(1).saturating_sub(tasks.len());
    let busy: HashSet<&str> = in_flight.values().map(String::as_str).collect();
    let limit = u32::try_from(free + busy.len() + 1).unwrap_or(u32::MAX);
    let heads = w.store.outbox_heads(limit).await?;
    let now = now_ms();
    let mut started = Vec::new();
    let mut next = None;
    for row in heads {
        if busy.contains(row.call_sid.as_str()) {
            continue;
        }
        if row.next_attempt_at_ms > now {
            // Heads come soonest first: this is the next wake-up.
            next = Some(row.next_attempt_at_ms);
            break;
        }
        if started.len() >= free {
            // At capacity: a finished delivery wakes the loop.
            break;
        }
        started.push(row);
    }
    for row in started {
        let call_sid = row.call_sid.clone();
        let id = tasks.spawn(deliver(w.clone(), row)).id();
        in_flight.insert(id, call_sid);
    }
    Ok(next)
}

/// One attempt at `row`, and its outcome written to the outbox.
async fn deliver(w: Arc<Worker>, row: OutboxRow) {
    let outcome = w.attempt(&row).await;
    let now = now_ms();
    match outcome {
        Outcome::Delivered => {
            w.mark(&row, Mark::Delivered, now).await;
            metrics::counter!("hark_events_delivered_total", "type" => type_label(&row))
                .increment(1);
            let lag_ms = (now - row.created_at_ms).max(0);
            metrics::histogram!("hark_events_delivery_lag_seconds").record(lag_ms as f64 / 1000.0);
            debug!(id = %row.event_id, attempts = row.attempts + 1, lag_ms, "call event delivered");
        }
        Outcome::Rejected { error } => w.give_up(&row, "rejected", &error, now).await,
        Outcome::Retry {
            kind,
            error,
            retry_after,
        } => {
            metrics::counter!("hark_events_retries_total", "kind" => kind).increment(1);
            let failures = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            let pause = w
                .policy
                .jittered(failures, jitter_unit())
                .max(retry_after.unwrap_or_default());
            let expires = row.created_at_ms + millis(w.policy.max_age);
            let next = now + millis(pause);
            if now >= expires || retry_after.is_some_and(|_| next > expires) {
                w.give_up(&row, "expired", &error, now).await;
                return;
            }
            // The last attempt is made as the event expires.
            let next = next.min(expires);
            w.warn_failing(&row, &error);
            w.mark(
                &row,
                Mark::Retry {
                    next,
                    error: &error,
                },
                now,
            )
            .await;
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The event type as a metric label (a fixed set).
fn type_label(row: &OutboxRow) -> &'static str {
    super::events::EventType::parse(&row.event_type).map_or("other", |t| t.as_str())
}

/// An attempt's outcome, for the outbox.
#[derive(Debug, Clone, Copy)]
enum Mark<'a> {
    /// Accepted.
    Delivered,
    /// Failed; the next attempt is due at `next` (Unix ms).
    Retry { next: i64, error: &'a str },
    /// Given up.
    Failed { error: &'a str },
}

/// A number in [0, 1) from the process's random hash keys (jitter needs no better).
fn jitter_unit() -> f64 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Worker {
    /// Sends `row` once.
    async fn attempt(&self, row: &OutboxRow) -> Outcome {
        let body = row.body.as_bytes().to_vec();
        let mut req = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, &row.event_id)
            .header(EVENT_HEADER, &row.event_type);
        for (name, value) in self.secret.headers(crate::api::now_s(), &body) {
            req = req.header(name, value);
        }
        match req.body(body).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Read the answer (bounded by the request timeout) so the connection is reused.
                let text = match resp.bytes().await {
                    Ok(b) => String::from_utf8_lossy(&b[..b.len().min(1024)]).into_owned(),
                    Err(_) => String::new(),
                };
                classify(status, retry_after.as_deref(), &text, SystemTime::now())
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                Outcome::Retry {
                    kind,
                    error: format!("{kind}: {}", crate::api::twilio_rest::without_url(e)),
                    retry_after: None,
                }
            }
        }
    }

    /// Gives `row` up: kept as `failed`, counted and logged.
    async fn give_up(&self, row: &OutboxRow, reason: &'static str, error: &str, now: i64) {
        metrics::counter!("hark_events_failed_total", "reason" => reason).increment(1);
        warn!(
            id = %row.event_id,
            event = %row.event_type,
            call_sid = %row.call_sid,
            attempts = row.attempts + 1,
            reason,
            error,
            "call event given up (kept in the outbox as failed)"
        );
        self.mark(row, Mark::Failed { error }, now).await;
    }

    /// Writes an attempt's outcome at `now` (Unix ms), retrying a busy database a few times.
    /// If it still fails, the event stays pending as it was and is sent again (at least once).
    async fn mark(&self, row: &OutboxRow, mark: Mark<'_>, now: i64) {
        for pause in [50, 250, 1000, 0] {
            let s = &self.store;
            let written = match mark {
                Mark::Delivered => s.outbox_delivered(row.row_id, now).await,
                Mark::Retry { next, error } => s.outbox_retry(row.row_id, next, error, now).await,
                Mark::Failed { error } => s.outbox_failed(row.row_id, error, now).await,
            };
            match written {
                Ok(_) => return,
                Err(e) if pause == 0 => {
                    warn!(id = %row.event_id, ?mark, error = %e, "call events: cannot record an attempt; the event will be sent again");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(pause)).await,
            }
        }
    }

    /// A warning that the backend is failing, at most once per 10 s.
    fn warn_failing(&self, row: &OutboxRow, error: &str) {
        let now_s = crate::api::now_s();
        let last = self.last_warn_s.load(Ordering::Relaxed);
        if now_s >= last + 10
            && self
                .last_warn_s
                .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                id = %row.event_id,
                attempts = row.attempts + 1,
                error,
                "call events: the backend is failing; retrying with backoff"
            );
        } else {
            debug!(id = %row.event_id, attempts = row.attempts + 1, error, "call event attempt failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_within_half() {
        let p = DeliveryPolicy::default();
        let secs: Vec<u64> = (1..=12).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(300));
        assert_eq!(p.jittered(3, 0.0), Duration::from_secs(2));
        assert_eq!(p.jittered(3, 1.0), Duration::from_secs(4));
        assert_eq!(p.jittered(3, 7.0), Duration::from_secs(4));
        let u = jitter_unit();
        assert!((0.0..1.0).contains(&u), "{u}");
    }

    #[test]
    fn answers_are_classified() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(classify(200, None, "", now), Outcome::Delivered);
        assert_eq!(classify(204, Some("5"), "", now), Outcome::Delivered);
        let Outcome::Retry {
            kind,
            retry_after,
            error,
        } = classify(503, Some("7"), " down for maintenance ", now)
        else {
            panic!("503 is retried");
        };
        assert_eq!(kind, "status_5xx");
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
        assert_eq!(error, "HTTP 503: down for maintenance");
        // 2023-11-14T22:13:20Z + 30 s, as an HTTP date.
        let Outcome::Retry {
            kind, retry_after, ..
        } = classify(429, Some("Tue, 14 Nov 2023 22:13:50 GMT"), "", now)
        else {
            panic!("429 is retried");
        };
        assert_eq!(
            (kind, retry_after),
            ("status_429", Some(Duration::from_secs(30)))
        );
        assert!(matches!(
            classify(408, Some("soon"), "", now),
            Outcome::Retry {
                kind: "status_408",
                retry_after: None,
                ..
            }
        ));
        for status in [301, 400, 401, 404, 410, 422] {
            assert!(
                matches!(classify(status, None, "", now), Outcome::Rejected { .. }),
                "{status}"
            );
        }
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }
}
