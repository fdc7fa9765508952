//! The store write queue: live calls and webhooks hand records to one bounded queue, and a
//! background task writes them with retries, so a slow or failing database never stalls a call.
//!
//! - [`CallRecorder`] (for call workers) never blocks and never awaits: when the queue is full
//!   the record is dropped, counted in `hark_store_dropped_total{op}` and logged (at most once a
//!   second).
//! - Webhook handlers wait for room for at most [`ENQUEUE_WAIT`], then answer 503 so Twilio's
//!   retry (or the operator) can follow up; the record itself is written after the 200.
//! - Group commit: the writer takes everything queued (up to [`MAX_BATCH`] records) and commits
//!   it in one transaction, at most once per `HARK_STORE_COMMIT_MS` (default 20 ms): a record
//!   arriving after a quiet spell is committed at once, one arriving sooner after the last
//!   commit waits out the rest of the interval with the records queued meanwhile. A commit per
//!   record cost a quarter of a busy node's CPU (README, Performance); the interval bounds what
//!   a killed process can lose. Within a batch, a run of turn records (most of a busy node's
//!   records) is written in two statements ([`Store::turns_in`]) instead of three per record,
//!   and the writer is not woken per record while it waits out the interval (a flush or a
//!   shutdown ends the wait; the records stay in the queue meanwhile, so `HARK_STORE_QUEUE`
//!   must hold an interval's worth: the default 4,096 is 200,000 records a second at 20 ms).
//!   The time from queueing to commit is measured per record in
//!   `hark_record_commit_lag_seconds{op}` (and [`WriterStats`]). A committed record survives
//!   the process being killed (SQLite WAL; `synchronous = NORMAL` gives up only the last
//!   commits on power loss, not on a crash of the process).
//! - A failed batch is retried [`RETRY_BACKOFF`]`.len()` times with growing pauses. If it fails
//!   for a reason retrying cannot fix (a constraint, bad data), its records are written one by
//!   one so one bad record costs only itself; a record that still fails, or a batch that still
//!   fails with the database unavailable, is counted in `hark_store_errors_total{op}` and
//!   logged, and the writer moves on.
//! - Call events: with `HARK_EVENTS_URL`, a stream's start ([`CallRecorder::stream_started`]),
//!   a finished turn ([`CallRecorder::turn_ended`]) and a stream's end
//!   ([`CallRecorder::stream_stopped`]) also write their event to the store's outbox, in the
//!   record's own transaction (see [`crate::operator::delivery`]); updates of a turn still
//!   going on ([`CallRecorder::turn`]) are not events.
//! - Shutdown ([`super::ApiState::shutdown`]): after the call tasks have ended, the writer
//!   drains everything queued and only then stops; records offered after that are dropped and
//!   logged as "writer stopped".

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, warn};

use super::store::{
    NewCall, RecordingEvent, StatusEvent, Store, StoredConversationEvent, StreamEvent, TurnRow,
};
use super::{ApiError, now_ms};

/// Most records committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// How long a webhook handler waits for room in a full queue before answering 503.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(1);
/// Pauses between attempts of a failed write: 3 retries over ≈ 1.3 s.
pub const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];

/// The engine's summary of a stream at `stop`, stored as JSON in the call record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// Wall time from the WebSocket upgrade to the end, ms.
    pub duration_ms: u64,
    /// Inbound audio received, ms (payload bytes / 8).
    pub inbound_ms: u64,
    /// Agent audio sent, ms.
    pub sent_ms: u64,
    /// Caller turns handed to the agent.
    pub turns: u64,
    /// Barge-ins.
    pub barge_ins: u64,
    /// Malformed inbound messages skipped.
    pub malformed: u64,
    /// How the stream ended (`stop`, `closed`, `failed: …`).
    pub ended: String,
    /// The call's audio recorded by hark, when it was (`HARK_RECORD`, `hark_record`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<crate::recording::AudioInfo>,
    /// The greeting as the caller heard it (the first line of `call.ended`'s transcript).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greeting: Option<super::turns::GreetingHeard>,
}

/// One queued write.
#[derive(Debug)]
pub(crate) enum Op {
    StreamStarted {
        call_sid: String,
        stream_sid: String,
        params: Vec<(String, String)>,
        at_ms: i64,
    },
    Turn {
        call_sid: String,
        turn: TurnRow,
        at_ms: i64,
        /// The turn is over: with call events on, its `turn.ended` event is written too.
        ended: bool,
    },
    StreamStopped {
        call_sid: String,
        summary: StreamSummary,
        at_ms: i64,
    },
    Status(StatusEvent, i64),
    Stream(StreamEvent, i64),
    Recording(RecordingEvent, i64),
    Conversation(StoredConversationEvent, i64),
    Call(NewCall, i64),
    /// Answered once everything queued before it is written (or given up on).
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then the writer stops (after writing what was already queued).
    Shutdown(oneshot::Sender<()>),
}

/// An op and when it was queued (for the commit lag).
#[derive(Debug)]
pub(crate) struct Queued {
    op: Op,
    at: Instant,
}

impl Op {
    /// A flush or a shutdown: the writer does not wait out the commit interval while one is
    /// queued ([`Urgent`]).
    fn is_urgent(&self) -> bool {
        matches!(self, Op::Flush(_) | Op::Shutdown(_))
    }

    fn name(&self) -> &'static str {
        match self {
            Op::StreamStarted { .. } => "stream_started",
            Op::Turn { .. } => "turn",
            Op::StreamStopped { .. } => "stream_stopped",
            Op::Status(..) => "status",
            Op::Stream(..) => "stream_status",
            Op::Recording(..) => "recording",
            Op::Conversation(..) => "conversation",
            Op::Call(..) => "call",
            Op::Flush(_) => "flush",
            Op::Shutdown(_) => "shutdown",
        }
    }
}

/// Counters of the write queue since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Records written (duplicates included: they are answered, not rewritten).
    pub written: u64,
    /// Records dropped because the queue was full.
    pub dropped: u64,
    /// Records given up on after every retry failed.
    pub failed: u64,
    /// Retries.
    pub retries: u64,
    /// Records that were duplicates of stored ones.
    pub duplicates: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Queueing → commit, median over every record written, µs (0 before the first).
    pub commit_lag_p50_us: u64,
    /// Queueing → commit, 99th percentile, µs.
    pub commit_lag_p99_us: u64,
    /// Queueing → commit, largest, µs.
    pub commit_lag_max_us: u64,
}

#[derive(Debug)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    duplicates: AtomicU64,
    batches: AtomicU64,
    last_drop_log_s: AtomicU64,
    /// Commit lag, µs, 1 µs ..= 1 h at 3 significant digits.
    lag_us: Mutex<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            last_drop_log_s: AtomicU64::new(0),
            // Bounds 1 ..= 3.6e9 with 3 digits are valid for hdrhistogram: cannot fail.
            lag_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }
}

impl Counters {
    fn snapshot(&self) -> WriterStats {
        let (p50, p99, max) = match self.lag_us.lock() {
            Ok(h) if !h.is_empty() => {
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
            }
            _ => (0, 0, 0),
        };
        WriterStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            commit_lag_p50_us: p50,
            commit_lag_p99_us: p99,
            commit_lag_max_us: max,
        }
    }

    /// Records one written record's lag.
    fn lag(&self, op: &'static str, lag: Duration) {
        metrics::histogram!("hark_record_commit_lag_seconds", "op" => op).record(lag.as_secs_f64());
        if let Ok(mut h) = self.lag_us.lock() {
            h.saturating_record(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1));
        }
    }
}

/// Records a live call's events without ever blocking it.
///
/// Cheap to clone, `Send + Sync`; every method returns at once (a `try_send` on a bounded
/// queue). Call it from the call worker's observer: `stream_started` on `start`, `turn` per
/// caller turn, `stream_stopped` at the end.
///
/// While any recorder from [`super::ApiState::recorder`] is alive (a call task holds one),
/// [`super::ApiState::shutdown`] keeps the writer running (up to its wait).
#[derive(Clone, Debug)]
pub struct CallRecorder {
    tx: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
    /// Counts live recorders (see [`Writer::live_recorders`]).
    _live: Option<Arc<()>>,
}

impl CallRecorder {
    /// A recorder that discards everything (for calls run without an API state, e.g. tests).
    pub fn disconnected() -> CallRecorder {
        let (tx, _rx) = mpsc::channel(1);
        CallRecorder {
            tx,
            counters: Arc::new(Counters::default()),
            _live: None,
        }
    }

    fn offer(&self, op: Op) {
        let name = op.name();
        let queued = Queued {
            op,
            at: Instant::now(),
        };
        match self.tx.try_send(queued) {
            Ok(()) => {}
            Err(e) => {
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "writer stopped",
                };
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hark_store_dropped_total", "op" => name).increment(1);
                let now_s = super::now_s();
                let last = self.counters.last_drop_log_s.swap(now_s, Ordering::Relaxed);
                if last != now_s {
                    warn!(op = name, reason, "call record dropped");
                }
            }
        }
    }

    /// The media stream started: `params` are the stream's `customParameters`.
    pub fn stream_started(&self, call_sid: &str, stream_sid: &str, params: &[(String, String)]) {
        self.offer(Op::StreamStarted {
            call_sid: call_sid.to_owned(),
            stream_sid: stream_sid.to_owned(),
            params: params.to_vec(),
            at_ms: now_ms(),
        });
    }

    /// A caller turn ended, or (for a turn with an [`TurnRow::index`]) news of how its
    /// answer went: the stored turn is replaced.
    pub fn turn(&self, call_sid: &str, turn: TurnRow) {
        self.offer(Op::Turn {
            call_sid: call_sid.to_owned(),
            turn,
            at_ms: now_ms(),
            ended: false,
        });
    }

    /// A caller turn is over, its answer included (the turn log's finished turns): stored as
    /// [`CallRecorder::turn`] does, and, with call events on, its `turn.ended` event goes to
    /// the outbox in the same transaction.
    pub fn turn_ended(&self, call_sid: &str, turn: TurnRow) {
        self.offer(Op::Turn {
            call_sid: call_sid.to_owned(),
            turn,
            at_ms: now_ms(),
            ended: true,
        });
    }

    /// The media stream ended (with call events on, its `call.ended` event goes to the
    /// outbox in the same transaction).
    pub fn stream_stopped(&self, call_sid: &str, summary: StreamSummary) {
        self.offer(Op::StreamStopped {
            call_sid: call_sid.to_owned(),
            summary,
            at_ms: now_ms(),
        });
    }

    /// Records dropped so far by every recorder of this queue.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }
}

/// The queue and its background writer task.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Queued>,
    /// Flushes and shutdowns queued and not yet taken by the writer: it does not wait out the
    /// commit interval while there are any.
    urgent: Arc<Urgent>,
    counters: Arc<Counters>,
    /// One clone per live [`CallRecorder`] handed out by [`Writer::recorder`].
    live: Arc<()>,
}

impl Writer {
    /// Starts the writer task on the current runtime: a queue of `capacity` records, and at
    /// most one commit per `commit_every` (`HARK_STORE_COMMIT_MS`; zero: commit whenever free).
    pub(crate) fn start(store: Store, capacity: usize, commit_every: Duration) -> Writer {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        let urgent = Arc::new(Urgent::default());
        tokio::spawn(run(
            store,
            rx,
            urgent.clone(),
            counters.clone(),
            commit_every,
        ));
        Writer {
            tx,
            urgent,
            counters,
            live: Arc::new(()),
        }
    }

    pub(crate) fn recorder(&self) -> CallRecorder {
        CallRecorder {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
            _live: Some(self.live.clone()),
        }
    }

    /// Recorders handed out by [`Writer::recorder`] and not dropped yet (live calls).
    pub(crate) fn live_recorders(&self) -> usize {
        Arc::strong_count(&self.live) - 1
    }

    pub(crate) fn stats(&self) -> WriterStats {
        self.counters.snapshot()
    }

    /// Queues `op`, waiting up to [`ENQUEUE_WAIT`] for room (webhooks, not calls).
    ///
    /// # Errors
    /// 503 [`ApiError::Busy`] when the queue stays full (or the writer has stopped).
    pub(crate) async fn enqueue(&self, op: Op) -> Result<(), ApiError> {
        let name = op.name();
        let urgent = self.urgent.queuing(&op);
        let queued = Queued {
            op,
            at: Instant::now(),
        };
        match self.tx.send_timeout(queued, ENQUEUE_WAIT).await {
            Ok(()) => {
                self.urgent.queued(urgent);
                Ok(())
            }
            Err(e) => {
                self.urgent.refused(urgent);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hark_store_dropped_total", "op" => name).increment(1);
                let reason = match e {
                    mpsc::error::SendTimeoutError::Timeout(_) => "the record queue is full",
                    mpsc::error::SendTimeoutError::Closed(_) => {
                        "the record writer has stopped (shutting down)"
                    }
                };
                warn!(op = name, reason, "refusing a webhook");
                Err(ApiError::Busy {
                    reason: reason.into(),
                    retry_after_s: 5,
                })
            }
        }
    }

    /// Waits until everything queued before now is written (or given up on); `false` if the
    /// writer has stopped.
    pub(crate) async fn flush(&self) -> bool {
        self.control(Op::Flush).await
    }

    /// Writes everything queued, then stops the writer; `false` if it had stopped already.
    pub(crate) async fn stop(&self) -> bool {
        self.control(Op::Shutdown).await
    }

    async fn control(&self, op: fn(oneshot::Sender<()>) -> Op) -> bool {
        let (done, wait) = oneshot::channel();
        let op = op(done);
        let urgent = self.urgent.queuing(&op);
        let queued = Queued {
            op,
            at: Instant::now(),
        };
        if self.tx.send(queued).await.is_err() {
            self.urgent.refused(urgent);
            return false;
        }
        self.urgent.queued(urgent);
        wait.await.is_ok()
    }
}

/// Flushes and shutdowns on their way to the writer, however queued ([`Op::is_urgent`]).
#[derive(Debug, Default)]
struct Urgent {
    /// Queued (or about to be) and not yet taken by the writer.
    pending: AtomicUsize,
    /// Ends a wait already begun when one is queued.
    wake: Notify,
}

impl Urgent {
    /// Counts `op` if it is urgent, before it is sent (the writer may take it at once);
    /// returns whether it did, for [`Urgent::queued`] or [`Urgent::refused`].
    fn queuing(&self, op: &Op) -> bool {
        let urgent = op.is_urgent();
        if urgent {
            self.pending.fetch_add(1, Ordering::SeqCst);
        }
        urgent
    }

    /// The op counted by [`Urgent::queuing`] is in the queue: a wait already begun ends.
    fn queued(&self, urgent: bool) {
        if urgent {
            self.wake.notify_one();
        }
    }

    /// The op counted by [`Urgent::queuing`] never reached the queue.
    fn refused(&self, urgent: bool) {
        if urgent {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The writer took an op off the queue.
    fn taken(&self, op: &Op) {
        if op.is_urgent() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Queued>,
    urgent_ops: Arc<Urgent>,
    counters: Arc<Counters>,
    commit_every: Duration,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    let mut stopping: Vec<oneshot::Sender<()>> = Vec::new();
    // When the last commit started: a record arriving sooner than `commit_every` after it waits
    // out the rest, and so do the records queued meanwhile, which then share its transaction.
    // A flush or a shutdown does not wait.
    let mut last_commit: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        // A flush or a shutdown taken as `first` is counted in `pending` too.
        if let Some(due) = last_commit.map(|t| t + commit_every)
            && stopping.is_empty()
            && urgent_ops.pending.load(Ordering::SeqCst) == 0
        {
            // Wait out the interval. The records queued meanwhile are taken below, without a
            // wake-up each (the call workers offer hundreds a second on a busy node). A flush or
            // a shutdown queued behind records ends the wait, and no batch waits while one is
            // on its way or after a shutdown (they must not wait for those records' intervals).
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = urgent_ops.wake.notified() => {}
            }
        }
        last_commit = Some(tokio::time::Instant::now());
        while items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => items.push(q),
                Err(_) => break,
            }
        }
        for q in items {
            urgent_ops.taken(&q.op);
            match q.op {
                Op::Flush(done) => {
                    commit(&store, &mut batch, &counters).await;
                    let _ = done.send(());
                }
                Op::Shutdown(done) => {
                    // No new records from here on; what is queued already is still written.
                    rx.close();
                    stopping.push(done);
                }
                op => batch.push(Queued { op, at: q.at }),
            }
        }
        commit(&store, &mut batch, &counters).await;
    }
    for done in stopping {
        let _ = done.send(());
    }
    debug!("store writer stopped");
}

/// Commits `batch` in one transaction (with retries), records the lag, empties it.
async fn commit(store: &Store, batch: &mut Vec<Queued>, counters: &Counters) {
    if batch.is_empty() {
        return;
    }
    let mut attempt = 0;
    let err = loop {
        match write_batch(store, batch).await {
            Ok(fresh) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                for (q, fresh) in batch.iter().zip(fresh) {
                    written(counters, fresh);
                    counters.lag(q.op.name(), now.saturating_duration_since(q.at));
                }
                batch.clear();
                return;
            }
            Err(e) if attempt < RETRY_BACKOFF.len() && retryable(&e) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hark_store_retries_total").increment(1);
                debug!(records = batch.len(), attempt, error = %e, "store batch failed, retrying");
                tokio::time::sleep(RETRY_BACKOFF[attempt]).await;
                attempt += 1;
            }
            Err(e) => break e,
        }
    };
    if retryable(&err) || batch.len() == 1 {
        // The database stays unavailable (or the one record is bad): give the batch up.
        for q in batch.drain(..) {
            lost(counters, q.op.name(), attempt + 1, &err);
        }
        return;
    }
    // One bad record must not take the others with it: one by one.
    debug!(records = batch.len(), error = %err, "store batch refused, writing records one by one");
    for q in batch.drain(..) {
        write_with_retries(store, &q, counters).await;
    }
}

/// Writes the ops of `batch` in one transaction; per op, `false` for a duplicate.
async fn write_batch(store: &Store, batch: &[Queued]) -> Result<Vec<bool>, sqlx::Error> {
    let mut tx = store.pool().begin().await?;
    let mut fresh = Vec::with_capacity(batch.len());
    let mut rest = batch;
    while let Some(first) = rest.first() {
        // A run of turn records (most of a busy node's records, often one alone): their rows
        // in two statements, then the events of the finished ones, in order.
        let run = rest
            .iter()
            .take_while(|q| matches!(q.op, Op::Turn { .. }))
            .count();
        if run == 0 {
            fresh.push(write(store, &mut tx, &first.op).await?);
            rest = &rest[1..];
            continue;
        }
        let (turns, after) = rest.split_at(run);
        let rows: Vec<(&str, &TurnRow, i64)> = turns
            .iter()
            .filter_map(|q| match &q.op {
                Op::Turn {
                    call_sid,
                    turn,
                    at_ms,
                    ..
                } => Some((call_sid.as_str(), turn, *at_ms)),
                _ => None,
            })
            .collect();
        store.turns_in(&mut tx, &rows).await?;
        for q in turns {
            if let Op::Turn {
                call_sid,
                turn,
                at_ms,
                ended: true,
            } = &q.op
            {
                store
                    .turn_ended_event_in(&mut tx, call_sid, turn, *at_ms)
                    .await?;
            }
            fresh.push(true);
        }
        rest = after;
    }
    tx.commit().await?;
    store.committed();
    Ok(fresh)
}

fn written(counters: &Counters, fresh: bool) {
    counters.written.fetch_add(1, Ordering::Relaxed);
    if !fresh {
        counters.duplicates.fetch_add(1, Ordering::Relaxed);
    }
}

fn lost(counters: &Counters, name: &'static str, attempts: usize, e: &sqlx::Error) {
    counters.failed.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("hark_store_errors_total", "op" => name).increment(1);
    warn!(op = name, attempts, error = %e, "store write failed, record lost");
}

/// Whether retrying can help: constraint violations and bad data won't change.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => !matches!(
            db.kind(),
            sqlx::error::ErrorKind::UniqueViolation
                | sqlx::error::ErrorKind::ForeignKeyViolation
                | sqlx::error::ErrorKind::NotNullViolation
                | sqlx::error::ErrorKind::CheckViolation
        ),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. } => false,
        _ => true,
    }
}

async fn write_with_retries(store: &Store, q: &Queued, counters: &Counters) {
    let name = q.op.name();
    let mut attempt = 0;
    loop {
        let result = async {
            let mut tx = store.pool().begin().await?;
            let fresh = write(store, &mut tx, &q.op).await?;
            tx.commit().await?;
            store.committed();
            Ok::<bool, sqlx::Error>(fresh)
        }
        .await;
        match result {
            Ok(fresh) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                written(counters, fresh);
                counters.lag(name, q.at.elapsed());
                return;
            }
            Err(e) if attempt < RETRY_BACKOFF.len() && retryable(&e) => {
                counters.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hark_store_retries_total").increment(1);
                debug!(op = name, attempt, error = %e, "store write failed, retrying");
                tokio::time::sleep(RETRY_BACKOFF[attempt]).await;
                attempt += 1;
            }
            Err(e) => {
                lost(counters, name, attempt + 1, &e);
                return;
            }
        }
    }
}

/// Writes one op inside the open transaction `conn`; `Ok(false)` for a duplicate.
async fn write(
    store: &Store,
    conn: &mut sqlx::AnyConnection,
    op: &Op,
) -> Result<bool, sqlx::Error> {
    match op {
        Op::StreamStarted {
            call_sid,
            stream_sid,
            params,
            at_ms,
        } => store
            .stream_started_in(conn, call_sid, stream_sid, params, *at_ms)
            .await
            .map(|()| true),
        Op::Turn {
            call_sid,
            turn,
            at_ms,
            ended: false,
        } => store
            .turn_in(conn, call_sid, turn, *at_ms)
            .await
            .map(|()| true),
        Op::Turn {
            call_sid,
            turn,
            at_ms,
            ended: true,
        } => store
            .turn_ended_in(conn, call_sid, turn, *at_ms)
            .await
            .map(|()| true),
        Op::StreamStopped {
            call_sid,
            summary,
            at_ms,
        } => store
            .stream_stopped_in(conn, call_sid, summary, *at_ms)
            .await
            .map(|()| true),
        Op::Status(e, at) => store.status_event_in(conn, e, *at).await,
        Op::Stream(e, at) => store.stream_event_in(conn, e, *at).await,
        Op::Recording(e, at) => store.recording_in(conn, e, *at).await.map(|()| true),
        Op::Conversation(e, at) => store.conversation_event_in(conn, e, *at).await,
        Op::Call(c, at) => store
            .insert_outbound_call_in(conn, c, *at)
            .await
            .map(|()| true),
        Op::Flush(_) | Op::Shutdown(_) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn full_queue_drops_without_blocking() {
        // A queue nobody drains: the recorder must neither block nor panic.
        let (tx, _rx) = mpsc::channel(4);
        let rec = CallRecorder {
            tx,
            counters: Arc::new(Counters::default()),
            _live: None,
        };
        let started = Instant::now();
        for i in 0..10_000i64 {
            rec.turn(
                "CA1",
                TurnRow {
                    user_start_ms: i,
                    ..TurnRow::default()
                },
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "10k offers took {:?}",
            started.elapsed()
        );
        assert_eq!(rec.dropped(), 10_000 - 4);
    }

    #[test]
    fn recorder_can_go_to_any_call_worker() {
        fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
        assert_shareable::<CallRecorder>();
    }

    #[test]
    fn disconnected_recorder_is_harmless() {
        let rec = CallRecorder::disconnected();
        rec.stream_started("CA1", "MZ1", &[]);
        rec.stream_stopped("CA1", StreamSummary::default());
        assert!(rec.dropped() >= 1);
    }

    #[tokio::test]
    async fn failing_database_is_counted_and_the_writer_goes_on() {
        let store = Store::open("sqlite::memory:")
            .await
            .expect("in-memory store");
        // Virtual time from here, so the retry pauses take no wall time.
        tokio::time::pause();
        let writer = Writer::start(store.clone(), 16, Duration::ZERO);
        store.close().await;
        let rec = writer.recorder();
        rec.turn("CA1", TurnRow::default());
        rec.stream_stopped("CA1", StreamSummary::default());
        assert!(writer.flush().await);
        let stats = writer.stats();
        // Both records were queued together: one batch, retried, then given up.
        assert_eq!(stats.failed, 2, "{stats:?}");
        assert_eq!(stats.retries, RETRY_BACKOFF.len() as u64, "{stats:?}");
        assert_eq!(stats.written, 0);
        // The writer goes on.
        rec.turn("CA1", TurnRow::default());
        assert!(writer.flush().await);
        assert_eq!(writer.stats().failed, 3);
    }

    fn turn(index: u32, start: i64) -> TurnRow {
        TurnRow {
            index: Some(index),
            user_start_ms: start,
            user_end_ms: start + 1000,
            ..TurnRow::default()
        }
    }

    #[tokio::test]
    async fn records_queued_together_are_committed_together_and_the_lag_is_measured() {
        for store in crate::api::store::test_stores().await {
            let writer = Writer::start(store.clone(), 4096, Duration::ZERO);
            let rec = writer.recorder();
            for call in 0..20u32 {
                let sid = format!("CA{call}");
                rec.stream_started(&sid, &format!("MZ{call}"), &[]);
                for i in 0..50u32 {
                    rec.turn(&sid, turn(i, i64::from(i) * 2000));
                }
            }
            assert!(writer.flush().await);
            let stats = writer.stats();
            assert_eq!(stats.written, 20 * 51, "{stats:?}");
            assert!(stats.batches < 20, "group commit: {stats:?}");
            assert!(stats.commit_lag_max_us > 0, "{stats:?}");
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM turns")
                .fetch_one(store.pool())
                .await
                .expect("count");
            assert_eq!(n, 1000);
        }
    }

    /// Polls the writer's stats until `done` holds (at most 10 s of real time).
    async fn until(writer: &Writer, done: impl Fn(&WriterStats) -> bool) -> WriterStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = writer.stats();
            if done(&s) || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn commits_are_spaced_by_the_commit_interval_and_a_quiet_writer_commits_at_once() {
        // Real time (the store's own threads do not follow a paused clock); the interval is
        // long enough that "not yet" cannot be a scheduling accident.
        let every = Duration::from_millis(1500);
        for store in crate::api::store::test_stores().await {
            let writer = Writer::start(store.clone(), 4096, every);
            let rec = writer.recorder();
            let t0 = Instant::now();
            rec.stream_started("CA1", "MZ1", &[]);
            let s = until(&writer, |s| s.written == 1).await;
            let first = t0.elapsed();
            assert_eq!((s.written, s.batches), (1, 1), "{s:?}");
            assert!(first < every, "a quiet writer commits at once: {first:?}");
            // Records within the interval wait for the next commit, all in one transaction.
            for i in 0..10u32 {
                rec.turn("CA1", turn(i, i64::from(i) * 2000));
            }
            tokio::time::sleep(every / 3).await;
            assert_eq!(writer.stats().written, 1, "held until the interval is over");
            let s = until(&writer, |s| s.written == 11).await;
            assert_eq!((s.written, s.batches), (11, 2), "{s:?}");
            assert!(t0.elapsed() >= every, "{:?}", t0.elapsed());
            // A flush does not wait out the interval, even behind a record queued just
            // before it (which would: the writer takes that record first).
            let t1 = Instant::now();
            rec.stream_stopped("CA1", StreamSummary::default());
            assert!(writer.flush().await);
            assert_eq!(writer.stats().written, 12);
            assert!(t1.elapsed() < every / 3, "flush waited: {:?}", t1.elapsed());
        }
    }

    #[tokio::test]
    async fn a_flush_or_a_stop_behind_several_batches_waits_no_interval() {
        // Real time, as above. More records than one batch takes are queued right after a
        // commit, then a flush: no batch on the way to it waits out the interval (before, each
        // did: the flush was not seen until its batch was taken).
        let every = Duration::from_millis(1500);
        let n = 3 * MAX_BATCH as u32;
        for store in crate::api::store::test_stores().await {
            let writer = Writer::start(store.clone(), 4 * MAX_BATCH, every);
            let rec = writer.recorder();
            rec.stream_started("CA1", "MZ1", &[]);
            let s = until(&writer, |s| s.written == 1).await;
            assert_eq!(s.written, 1, "{s:?}");
            let t0 = Instant::now();
            for i in 0..n {
                rec.turn("CA1", turn(i, i64::from(i) * 10));
            }
            assert!(writer.flush().await);
            assert_eq!(writer.stats().written, 1 + u64::from(n));
            assert!(t0.elapsed() < every / 3, "flush waited: {:?}", t0.elapsed());
            // The same for a stop.
            let t1 = Instant::now();
            for i in 0..n {
                rec.turn("CA2", turn(i, i64::from(i) * 10));
            }
            assert!(writer.stop().await);
            assert_eq!(writer.stats().written, 1 + 2 * u64::from(n));
            assert!(t1.elapsed() < every / 3, "stop waited: {:?}", t1.elapsed());
        }
    }

    #[tokio::test]
    async fn a_flush_queued_as_a_record_waits_no_interval_either() {
        // Real time. A flush queued through `enqueue` behind a record, right after a commit,
        // is counted as one from `Writer::flush` is: the wait ends (before, it waited the
        // interval, and the writer's decrement of a count never raised wrapped it, after
        // which no batch waited its interval again).
        let every = Duration::from_millis(1500);
        let store = Store::open("sqlite::memory:")
            .await
            .expect("in-memory store");
        let writer = Writer::start(store, 16, every);
        let rec = writer.recorder();
        rec.stream_started("CA1", "MZ1", &[]);
        let s = until(&writer, |s| s.written == 1).await;
        assert_eq!(s.written, 1, "{s:?}");
        let t0 = Instant::now();
        rec.turn("CA1", turn(0, 10));
        let (done, wait) = oneshot::channel();
        writer.enqueue(Op::Flush(done)).await.expect("queued");
        wait.await.expect("the writer answers");
        assert!(t0.elapsed() < every / 3, "flush waited: {:?}", t0.elapsed());
        assert_eq!(writer.stats().written, 2);
        assert_eq!(writer.urgent.pending.load(Ordering::SeqCst), 0);
        assert!(writer.flush().await);
        assert_eq!(writer.urgent.pending.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_turn_stored_again_replaces_its_row() {
        for store in crate::api::store::test_stores().await {
            let writer = Writer::start(store.clone(), 64, Duration::ZERO);
            let rec = writer.recorder();
            rec.turn("CA1", turn(0, 1000));
            let mut answered = turn(0, 1000);
            answered.latency_ms = Some(640);
            answered.agent_text = Some("Hello.".into());
            rec.turn("CA1", answered);
            rec.turn("CA1", turn(1, 5000));
            assert!(writer.flush().await);
            let call = store.call("CA1").await.expect("read").expect("row");
            assert_eq!(call.turns.len(), 2);
            assert_eq!(call.turns[0].latency_ms, Some(640));
            assert_eq!(call.turns[0].agent_text.as_deref(), Some("Hello."));
        }
    }

    #[tokio::test]
    async fn stop_writes_everything_queued_then_refuses() {
        for store in crate::api::store::test_stores().await {
            let writer = Writer::start(store.clone(), 8192, Duration::ZERO);
            let rec = writer.recorder();
            for i in 0..3000u32 {
                rec.turn("CA1", turn(i, i64::from(i) * 10));
            }
            rec.stream_stopped("CA1", StreamSummary::default());
            assert!(writer.stop().await, "the writer was running");
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM turns")
                .fetch_one(store.pool())
                .await
                .expect("count");
            assert_eq!(n, 3000, "nothing queued before the stop is lost");
            assert_eq!(writer.stats().dropped, 0);
            // After the stop: dropped, counted.
            rec.turn("CA1", turn(5000, 1));
            assert_eq!(rec.dropped(), 1);
            assert!(!writer.flush().await);
            assert!(!writer.stop().await);
        }
    }

    #[test]
    fn live_recorders_are_counted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = Store::open("sqlite::memory:").await.expect("store");
            let writer = Writer::start(store, 16, Duration::ZERO);
            assert_eq!(writer.live_recorders(), 0);
            let a = writer.recorder();
            let b = a.clone();
            assert_eq!(writer.live_recorders(), 2);
            drop(a);
            drop(b);
            assert_eq!(writer.live_recorders(), 0);
            assert_eq!(CallRecorder::disconnected()._live, None);
        });
    }
}
