//! The store write queue: live calls and webhooks hand records to one bounded queue, and a
//! background task writes them with retries, so a slow or failing database never stalls a call.
//!
//! - [`CallRecorder`] (for call workers) never blocks and never awaits: when the queue is full
//!   the record is dropped, counted in `hark_store_dropped_total{op}` and logged (at most once a
//!   second).
//! - Webhook handlers wait for room for at most [`ENQUEUE_WAIT`], then answer 503 so Twilio's
//!   retry (or the operator) can follow up; the record itself is written after the 200.
//! - The writer retries a failed write [`RETRY_BACKOFF`]`.len()` times with growing pauses; a
//!   write that still fails is counted in `hark_store_errors_total{op}` and logged, and the
//!   writer moves on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::store::{
    NewCall, RecordingEvent, StatusEvent, Store, StoredConversationEvent, StreamEvent,
};
use super::{ApiError, now_ms};

/// How long a webhook handler waits for room in a full queue before answering 503.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(1);
/// Pauses between attempts of a failed write: 3 retries over ≈ 1.3 s.
pub const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];

/// One caller turn with its latency telemetry, as the engine reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TurnRecord {
    /// Media time of the caller's first voiced frame, ms since the stream started.
    pub user_start_ms: u64,
    /// Media time at the end of the caller's last voiced frame, ms.
    pub user_end_ms: u64,
    /// Caller's last voiced frame → first agent audio sent, ms (engine-side voice-to-voice,
    /// endpointing included); `None` if the agent did not answer.
    pub latency_ms: Option<u64>,
    /// The caller barged in on the answer.
    pub interrupted: bool,
    /// Agent audio the caller heard, ms, from Twilio's mark echoes.
    pub heard_ms: Option<u64>,
    /// The caller's words, when the agent has a transcript (speech-to-text, or the
    /// provider's `user_transcript` / `conversation.item.input_audio_transcription.completed`).
    pub text: Option<String>,
    /// The agent's answer as the caller heard it: the agent's transcript, cut at a barge-in
    /// to what the mark echoes say was played.
    pub agent_text: Option<String>,
    /// Caller's last voiced frame → the caller began hearing the answer, ms: voice-to-voice
    /// at the phone, from the first mark echo (`Event::AgentAudioHeard`).
    pub heard_latency_ms: Option<u64>,
    /// Speech-to-text: turn end → final transcript, ms (cascade).
    pub stt_ms: Option<u64>,
    /// LLM time to first token, ms (cascade).
    pub llm_ttft_ms: Option<u64>,
    /// TTS time to first audio byte of the answer's first sentence, ms (cascade).
    pub tts_ttfb_ms: Option<u64>,
    /// Speech-to-speech providers: their end of turn → first answer audio received, ms.
    pub first_audio_ms: Option<u64>,
}

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
        turn: TurnRecord,
        at_ms: i64,
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
    Flush(oneshot::Sender<()>),
}

impl Op {
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
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    duplicates: AtomicU64,
    last_drop_log_s: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> WriterStats {
        WriterStats {
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// Records a live call's events without ever blocking it.
///
/// Cheap to clone, `Send + Sync`; every method returns at once (a `try_send` on a bounded
/// queue). Call it from the call worker's observer: `stream_started` on `start`, `turn` per
/// caller turn, `stream_stopped` at the end.
#[derive(Clone, Debug)]
pub struct CallRecorder {
    tx: mpsc::Sender<Op>,
    counters: Arc<Counters>,
}

impl CallRecorder {
    /// A recorder that discards everything (for calls run without an API state, e.g. tests).
    pub fn disconnected() -> CallRecorder {
        let (tx, _rx) = mpsc::channel(1);
        CallRecorder {
            tx,
            counters: Arc::new(Counters::default()),
        }
    }

    fn offer(&self, op: Op) {
        let name = op.name();
        match self.tx.try_send(op) {
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

    /// A caller turn ended (and, when known, how the agent's answer went).
    pub fn turn(&self, call_sid: &str, turn: TurnRecord) {
        self.offer(Op::Turn {
            call_sid: call_sid.to_owned(),
            turn,
            at_ms: now_ms(),
        });
    }

    /// The media stream ended.
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
    tx: mpsc::Sender<Op>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(store: Store, capacity: usize) -> Writer {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(store, rx, counters.clone()));
        Writer { tx, counters }
    }

    pub(crate) fn recorder(&self) -> CallRecorder {
        CallRecorder {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }

    pub(crate) fn stats(&self) -> WriterStats {
        self.counters.snapshot()
    }

    /// Queues `op`, waiting up to [`ENQUEUE_WAIT`] for room (webhooks, not calls).
    ///
    /// # Errors
    /// 503 [`ApiError::Busy`] when the queue stays full.
    pub(crate) async fn enqueue(&self, op: Op) -> Result<(), ApiError> {
        let name = op.name();
        match self.tx.send_timeout(op, ENQUEUE_WAIT).await {
            Ok(()) => Ok(()),
            Err(_) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hark_store_dropped_total", "op" => name).increment(1);
                warn!(op = name, "store queue full: refusing a webhook");
                Err(ApiError::Busy {
                    reason: "the record queue is full".into(),
                    retry_after_s: 5,
                })
            }
        }
    }

    pub(crate) async fn flush(&self) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Op::Flush(done)).await.is_err() {
            return false;
        }
        wait.await.is_ok()
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Op>, counters: Arc<Counters>) {
    while let Some(op) = rx.recv().await {
        if let Op::Flush(done) = op {
            let _ = done.send(());
            continue;
        }
        write_with_retries(&store, &op, &counters).await;
    }
    debug!("store writer stopped");
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

async fn write_with_retries(store: &Store, op: &Op, counters: &Counters) {
    let name = op.name();
    let mut attempt = 0;
    loop {
        match write(store, op).await {
            Ok(fresh) => {
                counters.written.fetch_add(1, Ordering::Relaxed);
                if !fresh {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
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
                counters.failed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("hark_store_errors_total", "op" => name).increment(1);
                warn!(op = name, attempts = attempt + 1, error = %e, "store write failed, record lost");
                return;
            }
        }
    }
}

/// Writes one op; `Ok(false)` for a duplicate.
async fn write(store: &Store, op: &Op) -> Result<bool, sqlx::Error> {
    match op {
        Op::StreamStarted {
            call_sid,
            stream_sid,
            params,
            at_ms,
        } => store
            .stream_started(call_sid, stream_sid, params, *at_ms)
            .await
            .map(|()| true),
        Op::Turn {
            call_sid,
            turn,
            at_ms,
        } => store.turn(call_sid, turn, *at_ms).await.map(|()| true),
        Op::StreamStopped {
            call_sid,
            summary,
            at_ms,
        } => store
            .stream_stopped(call_sid, summary, *at_ms)
            .await
            .map(|()| true),
        Op::Status(e, at) => store.status_event(e, *at).await,
        Op::Stream(e, at) => store.stream_event(e, *at).await,
        Op::Recording(e, at) => store.recording(e, *at).await.map(|()| true),
        Op::Conversation(e, at) => store.conversation_event(e, *at).await,
        Op::Call(c, at) => store.insert_outbound_call(c, *at).await.map(|()| true),
        Op::Flush(_) => Ok(true),
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
        };
        let started = Instant::now();
        for i in 0..10_000u64 {
            rec.turn(
                "CA1",
                TurnRecord {
                    user_start_ms: i,
                    ..TurnRecord::default()
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
        let writer = Writer::start(store.clone(), 16);
        store.close().await;
        let rec = writer.recorder();
        rec.turn("CA1", TurnRecord::default());
        rec.stream_stopped("CA1", StreamSummary::default());
        assert!(writer.flush().await);
        let stats = writer.stats();
        assert_eq!(stats.failed, 2, "{stats:?}");
        assert_eq!(stats.retries, 2 * RETRY_BACKOFF.len() as u64, "{stats:?}");
        assert_eq!(stats.written, 0);
    }
}
