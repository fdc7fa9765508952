//! Call records in SQLite through sqlx (so Postgres can follow): calls, their status timeline,
//! caller turns with latency telemetry, recordings, and Conversations webhook events.
//!
//! The schema is in `gateway/migrations/` and embedded in the binary (`sqlx::migrate!`); it is
//! applied when the store opens. The database runs in WAL mode (readers don't block the writer),
//! `synchronous = NORMAL`, with a 5 s busy timeout. Times are Unix milliseconds.
//!
//! Writes are idempotent, because Twilio retries callbacks: a call progress event is stored once
//! per `CallSid` + `SequenceNumber` (twilio.com/docs/voice/api/call-resource: progress events
//! carry a `SequenceNumber` from 0, and may arrive out of order), a stream event once per
//! `StreamSid` + `StreamEvent`, a recording once per `RecordingSid` (later statuses update it), a
//! Conversations webhook once per idempotency key. A call's status only moves forward in
//! `SequenceNumber` order, so a late `ringing` never overwrites `completed`.
//!
//! Every write has a `…_in` form that runs inside a caller's transaction, so the record writer
//! ([`super::recorder`]) commits a batch of records at once. A turn with an index is one row
//! per call and index (stored when the caller's turn ends, updated as its answer plays). A call
//! whose stream this process ran carries its [`Node`]; [`Store::close_open_calls`] closes what
//! a crashed run of the node left open, or what this run leaves open at shutdown. hark's own
//! stream events are timeline entries of source `media`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};

use super::ApiError;
use super::recorder::StreamSummary;

/// Call statuses after which nothing changes (twilio.com/docs/voice/api/call-resource,
/// "Call Status values").
pub const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// Whether `status` is a final call status.
pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// The call records database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    node: Arc<Node>,
}

/// The hark process that runs calls' media streams, stored with each call whose stream it ran,
/// so that at start a node closes only the calls *it* left open ([`Store::close_open_calls`]).
///
/// `node_id` is `HARK_NODE_ID`, default the host name: give every hark process that shares one
/// database its own (two processes on one host need distinct `HARK_NODE_ID`s, or the second to
/// start would close the first one's live calls as crashed). `instance_id` tells this run of
/// the process from earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `HARK_NODE_ID`, or the host name.
    pub node_id: String,
    /// This run: `"<pid>-<start Unix ms>"`.
    pub instance_id: String,
}

impl Node {
    /// This process on node `node_id`.
    pub fn this_process(node_id: impl Into<String>) -> Node {
        Node {
            node_id: node_id.into(),
            instance_id: format!("{}-{}", std::process::id(), super::now_ms()),
        }
    }

    /// The host name: Linux `/proc/sys/kernel/hostname`, else `/etc/hostname`, else the
    /// `HOSTNAME` variable, else `"hark"`.
    pub fn hostname() -> String {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .chain(std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .find(|h| !h.is_empty())
            .unwrap_or_else(|| "hark".to_owned())
    }
}

/// Whose open media streams [`Store::close_open_calls`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCalls {
    /// This node's, from earlier runs of the process (it crashed or was killed).
    Crashed,
    /// This run's (calls cut at shutdown whose own close never arrived).
    ThisRun,
}

/// A new outbound call, as `POST /calls` created it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    /// Twilio's Call SID (`CA…`).
    pub call_sid: String,
    /// E.164.
    pub to: String,
    /// E.164.
    pub from: String,
    /// `agent` of the request.
    pub agent: Option<String>,
    /// `parameters` of the request.
    pub parameters: BTreeMap<String, String>,
    /// Twilio's status in its answer (usually `queued`).
    pub status: String,
}

/// A call progress callback (`POST /api/twilio/status`).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    /// `CallSid`.
    pub call_sid: String,
    /// `CallStatus`.
    pub status: String,
    /// `SequenceNumber` (from 0), when Twilio sent one.
    pub sequence_number: Option<i64>,
    /// `AnsweredBy` (AMD): `human`, `machine_start`, `machine_end_beep`, … .
    pub answered_by: Option<String>,
    /// `Timestamp` (RFC 2822), as sent.
    pub timestamp: Option<String>,
    /// `CallDuration`, s (final statuses).
    pub call_duration_s: Option<i64>,
    /// `Direction`.
    pub direction: Option<String>,
    /// `From`.
    pub from: Option<String>,
    /// `To`.
    pub to: Option<String>,
    /// Every form parameter.
    pub params: Vec<(String, String)>,
}

/// A Media Streams status callback (`POST /api/twilio/stream-status`).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// `CallSid`.
    pub call_sid: String,
    /// `StreamSid`.
    pub stream_sid: String,
    /// `StreamEvent`: `stream-started`, `stream-stopped`, `stream-error`.
    pub event: String,
    /// `Timestamp` (ISO 8601), as sent.
    pub timestamp: Option<String>,
    /// Every form parameter.
    pub params: Vec<(String, String)>,
}

/// A recording status callback (`POST /api/twilio/recording`).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingEvent {
    /// `RecordingSid` (`RE…`).
    pub recording_sid: String,
    /// `CallSid`.
    pub call_sid: String,
    /// `RecordingStatus`: `in-progress`, `completed`, `absent`.
    pub status: Option<String>,
    /// `RecordingUrl`.
    pub url: Option<String>,
    /// `RecordingDuration`, s.
    pub duration_s: Option<i64>,
    /// `RecordingChannels` (1 or 2).
    pub channels: Option<i64>,
    /// `RecordingSource`.
    pub source: Option<String>,
    /// `RecordingTrack`.
    pub track: Option<String>,
    /// `RecordingStartTime`, as sent.
    pub start_time: Option<String>,
    /// Every form parameter.
    pub params: Vec<(String, String)>,
}

/// A Conversations webhook to store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConversationEvent {
    /// Idempotency key: Twilio's `I-Twilio-Idempotency-Token` header when sent, else the
    /// SHA-256 of the route and the sorted parameters (a retry repeats the same body).
    pub dedupe_key: String,
    /// The route's event name (`message-added`, …).
    pub route: String,
    /// Every form parameter.
    pub params: Vec<(String, String)>,
}

/// One call in `GET /calls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallSummaryRow {
    /// Call SID.
    pub call_sid: String,
    /// Twilio's `Direction` (`outbound-api` for `POST /calls`), if known.
    pub direction: Option<String>,
    /// Caller, E.164 or `client:…`.
    pub from: Option<String>,
    /// Callee.
    pub to: Option<String>,
    /// Agent asked for.
    pub agent: Option<String>,
    /// Latest call status applied.
    pub status: Option<String>,
    /// AMD result.
    pub answered_by: Option<String>,
    /// The Media Stream's SID.
    pub stream_sid: Option<String>,
    /// `CallDuration` of the final status, s.
    pub duration_s: Option<i64>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub updated_at_ms: i64,
    /// Unix ms of the final status.
    pub ended_at_ms: Option<i64>,
}

/// One status timeline entry of `GET /calls/{sid}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    /// `status` (Twilio's call progress callback), `stream` (Twilio's Media Streams status
    /// callback) or `media` (hark's own stream events: `stream-started`, `stream-stopped`).
    pub source: String,
    /// `CallStatus` or `StreamEvent`.
    pub status: String,
    /// `SequenceNumber`, when sent.
    pub sequence_number: Option<i64>,
    /// `AnsweredBy`, when sent.
    pub answered_by: Option<String>,
    /// Twilio's `Timestamp`, as sent.
    pub timestamp: Option<String>,
    /// When hark received it, Unix ms.
    pub received_at_ms: i64,
    /// Source `media`: for `stream-stopped`, why the stream ended (the summary's `ended`:
    /// `closed: Stopped` after Twilio's `stop`, `shutdown`, `crashed`, …).
    pub detail: Option<String>,
}

/// One caller turn with its latency telemetry: what the engine's events say
/// ([`super::turns::TurnLog`] builds it), what the recorder queues, what the store writes to
/// `turns` and reads back for `GET /calls/{sid}`. Times are ms, signed as SQLite stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TurnRow {
    /// The turn's position in its call, from 0 ([`super::turns::TurnLog`] numbers them).
    /// With an index, the store keeps one row per call and index, and storing the turn again
    /// (as its answer plays) updates that row; without one, every store is a new row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Media time of the caller's first voiced frame, ms since the stream started.
    pub user_start_ms: i64,
    /// Media time at the end of the caller's last voiced frame, ms.
    pub user_end_ms: i64,
    /// Caller's last voiced frame → first agent audio sent, ms (engine-side voice-to-voice,
    /// endpointing included); `None` if the agent did not answer.
    pub latency_ms: Option<i64>,
    /// The caller barged in on the answer.
    pub interrupted: bool,
    /// Agent audio the caller heard, ms, from Twilio's mark echoes.
    pub heard_ms: Option<i64>,
    /// The caller's words, when the agent has a transcript (speech-to-text, or the
    /// provider's `user_transcript` / `conversation.item.input_audio_transcription.completed`).
    pub text: Option<String>,
    /// The agent's answer as the caller heard it: the agent's transcript, cut at a barge-in
    /// to what the mark echoes say was played.
    pub agent_text: Option<String>,
    /// Caller's last voiced frame → the caller began hearing the answer, ms: voice-to-voice
    /// at the phone, from the first mark echo (`Event::AgentAudioHeard`).
    pub heard_latency_ms: Option<i64>,
    /// Speech-to-text: turn end → final transcript, ms (cascade).
    pub stt_ms: Option<i64>,
    /// LLM time to first token, ms (cascade).
    pub llm_ttft_ms: Option<i64>,
    /// TTS time to first audio byte of the answer's first sentence, ms (cascade).
    pub tts_ttfb_ms: Option<i64>,
    /// Speech-to-speech providers: their end of turn → first answer audio received, ms.
    pub first_audio_ms: Option<i64>,
}

/// Latency figures over a call's turns, ms.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Latency {
    /// Turns with a latency figure.
    pub turns: usize,
    /// Mean.
    pub mean_ms: Option<i64>,
    /// Median (nearest rank).
    pub p50_ms: Option<i64>,
    /// 95th percentile (nearest rank).
    pub p95_ms: Option<i64>,
    /// Largest.
    pub max_ms: Option<i64>,
}

impl Latency {
    /// Figures over `values` (ms).
    pub fn of(values: &[i64]) -> Latency {
        if values.is_empty() {
            return Latency::default();
        }
        let mut v = values.to_vec();
        v.sort_unstable();
        let rank = |p: f64| {
            // Nearest rank: ceil(p·n) - 1, clamped to the slice.
            let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        let sum: i64 = v.iter().sum();
        Latency {
            turns: v.len(),
            mean_ms: Some(sum / v.len() as i64),
            p50_ms: Some(rank(0.5)),
            p95_ms: Some(rank(0.95)),
            max_ms: v.last().copied(),
        }
    }
}

/// One recording of `GET /calls/{sid}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordingRow {
    /// `RecordingSid`.
    pub recording_sid: String,
    /// `RecordingStatus`.
    pub status: Option<String>,
    /// `RecordingUrl`.
    pub url: Option<String>,
    /// s.
    pub duration_s: Option<i64>,
    /// 1 or 2.
    pub channels: Option<i64>,
    /// `RecordingSource`.
    pub source: Option<String>,
    /// `RecordingTrack`.
    pub track: Option<String>,
    /// `RecordingStartTime`.
    pub start_time: Option<String>,
}

/// Everything known about one call: `GET /calls/{sid}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallDetail {
    /// The call row.
    #[serde(flatten)]
    pub call: CallSummaryRow,
    /// `parameters` of `POST /calls`.
    pub parameters: Value,
    /// The stream's `customParameters`.
    pub stream_parameters: Value,
    /// The engine's summary at stream stop, if it stopped.
    pub summary: Value,
    /// Status timeline in arrival order.
    pub timeline: Vec<TimelineEntry>,
    /// Caller turns in media-time order.
    pub turns: Vec<TurnRow>,
    /// Latency figures over `turns`.
    pub latency: Latency,
    /// Recordings.
    pub recordings: Vec<RecordingRow>,
}

fn params_json(params: &[(String, String)]) -> String {
    // Repeated names become arrays, so nothing is lost.
    let mut m = serde_json::Map::new();
    for (k, v) in params {
        match m.get_mut(k) {
            None => {
                m.insert(k.clone(), Value::String(v.clone()));
            }
            Some(Value::Array(a)) => a.push(Value::String(v.clone())),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, Value::String(v.clone())]);
            }
        }
    }
    Value::Object(m).to_string()
}

fn json_col(row: &SqliteRow, col: &str) -> Result<Value, sqlx::Error> {
    let s: Option<String> = row.try_get(col)?;
    Ok(s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null))
}

fn summary_row(row: &SqliteRow) -> Result<CallSummaryRow, sqlx::Error> {
    Ok(CallSummaryRow {
        call_sid: row.try_get("call_sid")?,
        direction: row.try_get("direction")?,
        from: row.try_get("from_number")?,
        to: row.try_get("to_number")?,
        agent: row.try_get("agent")?,
        status: row.try_get("status")?,
        answered_by: row.try_get("answered_by")?,
        stream_sid: row.try_get("stream_sid")?,
        duration_s: row.try_get("duration_s")?,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        ended_at_ms: row.try_get("ended_at")?,
    })
}

/// Makes sure a `calls` row exists for `call_sid` (inbound calls have none until their first
/// record).
const ENSURE_CALL: &str = "INSERT INTO calls (call_sid, created_at, updated_at) VALUES (?, ?, ?) ON CONFLICT (call_sid) DO NOTHING";

/// Puts one of hark's own stream events (source `media`) in a call's timeline, once per stream
/// and event.
async fn media_event(
    conn: &mut SqliteConnection,
    call_sid: &str,
    stream_sid: &str,
    event: &str,
    detail: Option<&str>,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO call_events (call_sid, source, dedupe_key, status, detail, received_at, params)
         VALUES (?, 'media', ?, ?, ?, ?, '{}') ON CONFLICT (dedupe_key) DO NOTHING",
    )
    .bind(call_sid)
    .bind(format!("media:{stream_sid}:{event}"))
    .bind(event)
    .bind(detail)
    .bind(at_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Closes a call's media stream at `at_ms`: `summary` (JSON), `stream_stopped_at`, a
/// `stream-stopped` timeline entry with `detail` = `ended`, and, for a call that never had a
/// Twilio status callback, status `completed` (unless final) and `ended_at`.
async fn close_stream(
    conn: &mut SqliteConnection,
    call_sid: &str,
    summary: &str,
    ended: &str,
    at_ms: i64,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(ENSURE_CALL)
        .bind(call_sid)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE calls SET summary = ?1, stream_stopped_at = ?2, updated_at = MAX(updated_at, ?3),
           status = CASE
             WHEN EXISTS (SELECT 1 FROM call_events e WHERE e.call_sid = calls.call_sid AND e.source = 'status')
               OR status IN ('completed','busy','failed','no-answer','canceled') THEN status
             ELSE 'completed' END,
           ended_at = CASE
             WHEN EXISTS (SELECT 1 FROM call_events e WHERE e.call_sid = calls.call_sid AND e.source = 'status')
               THEN ended_at
             ELSE COALESCE(ended_at, ?2) END
         WHERE call_sid = ?4",
    )
    .bind(summary)
    .bind(at_ms)
    .bind(now_ms)
    .bind(call_sid)
    .execute(&mut *conn)
    .await?;
    let stream_sid: Option<String> =
        sqlx::query_scalar("SELECT stream_sid FROM calls WHERE call_sid = ?")
            .bind(call_sid)
            .fetch_one(&mut *conn)
            .await?;
    let stream_sid = stream_sid.unwrap_or_else(|| call_sid.to_owned());
    media_event(
        conn,
        call_sid,
        &stream_sid,
        "stream-stopped",
        Some(ended),
        at_ms,
    )
    .await
}

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the embedded migrations.
    ///
    /// `url`: `sqlite://path`, `sqlite:path`, a bare file path, or `sqlite::memory:` (one
    /// connection, kept open: for tests). Postgres and others are not built in.
    ///
    /// # Errors
    /// [`ApiError::Setting`] for an unsupported URL, [`ApiError::Database`],
    /// [`ApiError::Migrate`].
    pub async fn open(url: &str) -> Result<Store, ApiError> {
        let lower = url.to_ascii_lowercase();
        if lower.contains("://") && !lower.starts_with("sqlite:") {
            return Err(ApiError::Setting {
                var: super::settings::ENV_DATABASE_URL,
                reason: format!(
                    "only SQLite (sqlite://path) is built in; got a {:?} URL",
                    url.split("://").next().unwrap_or_default()
                ),
            });
        }
        let full = if lower.starts_with("sqlite:") {
            url.to_owned()
        } else {
            format!("sqlite://{url}")
        };
        let db_err = |source| ApiError::Database {
            url: full.clone(),
            source,
        };
        let memory = lower.contains(":memory:") || lower.contains("mode=memory");
        let mut opts = SqliteConnectOptions::from_str(&full)
            .map_err(db_err)?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if !memory {
            opts = opts
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
        }
        let pool_opts = if memory {
            // Each in-memory connection is its own database: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
        };
        let pool = pool_opts.connect_with(opts).await.map_err(db_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            node: Arc::new(Node::this_process(Node::hostname())),
        })
    }

    /// The same database, recording calls' streams as run by `node`.
    pub fn with_node(mut self, node: Node) -> Store {
        self.node = Arc::new(node);
        self
    }

    /// The node calls' streams are recorded as run by.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The connection pool, for queries this module does not offer.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection (later operations fail).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records a call `POST /calls` created.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn insert_outbound_call(&self, c: &NewCall, now_ms: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        self.insert_outbound_call_in(&mut tx, c, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn insert_outbound_call_in(
        &self,
        conn: &mut SqliteConnection,
        c: &NewCall,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let params = serde_json::to_string(&c.parameters).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO calls (call_sid, direction, from_number, to_number, agent, parameters, status, created_at, updated_at)
             VALUES (?, 'outbound-api', ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (call_sid) DO UPDATE SET
               direction = excluded.direction, from_number = excluded.from_number,
               to_number = excluded.to_number, agent = excluded.agent,
               parameters = excluded.parameters,
               status = COALESCE(calls.status, excluded.status),
               updated_at = excluded.updated_at",
        )
        .bind(&c.call_sid)
        .bind(&c.from)
        .bind(&c.to)
        .bind(&c.agent)
        .bind(params)
        .bind(&c.status)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Stores a call progress callback once (per `CallSid` + `SequenceNumber`, or per status +
    /// `Timestamp` without a sequence number) and applies it to the call. Returns `false` for
    /// a duplicate.
    ///
    /// # Errors
    /// The driver's error (nothing is written then).
    pub async fn status_event(&self, e: &StatusEvent, now_ms: i64) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let out = self.status_event_in(&mut tx, e, now_ms).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn status_event_in(
        &self,
        conn: &mut SqliteConnection,
        e: &StatusEvent,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let key = match e.sequence_number {
            Some(n) => format!("status:{}:{n}", e.call_sid),
            None => format!(
                "status:{}:{}:{}:{}",
                e.call_sid,
                e.status,
                e.answered_by.as_deref().unwrap_or(""),
                e.timestamp.as_deref().unwrap_or("")
            ),
        };
        let inserted = sqlx::query(
            "INSERT INTO call_events (call_sid, source, dedupe_key, sequence_number, status, answered_by, twilio_timestamp, received_at, params)
             VALUES (?, 'status', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(&e.call_sid)
        .bind(key)
        .bind(e.sequence_number)
        .bind(&e.status)
        .bind(&e.answered_by)
        .bind(&e.timestamp)
        .bind(now_ms)
        .bind(params_json(&e.params))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            // A retry: nothing was written.
            return Ok(false);
        }
        sqlx::query(ENSURE_CALL)
            .bind(&e.call_sid)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        let final_status = is_final(&e.status);
        // Status moves forward only: by SequenceNumber when both have one; without one, never
        // away from a final status.
        sqlx::query(
            "UPDATE calls SET
               status = CASE WHEN (?1 IS NOT NULL AND (status_seq IS NULL OR status_seq <= ?1))
                              OR (?1 IS NULL AND (status IS NULL OR status NOT IN ('completed','busy','failed','no-answer','canceled')))
                             THEN ?2 ELSE status END,
               status_seq = CASE WHEN ?1 IS NOT NULL AND (status_seq IS NULL OR status_seq <= ?1) THEN ?1 ELSE status_seq END,
               answered_by = COALESCE(?3, answered_by),
               duration_s = COALESCE(?4, duration_s),
               direction = COALESCE(direction, ?5),
               from_number = COALESCE(from_number, ?6),
               to_number = COALESCE(to_number, ?7),
               ended_at = CASE WHEN ?8 THEN COALESCE(ended_at, ?9) ELSE ended_at END,
               updated_at = ?9
             WHERE call_sid = ?10",
        )
        .bind(e.sequence_number)
        .bind(&e.status)
        .bind(&e.answered_by)
        .bind(e.call_duration_s)
        .bind(&e.direction)
        .bind(&e.from)
        .bind(&e.to)
        .bind(final_status)
        .bind(now_ms)
        .bind(&e.call_sid)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    /// Stores a Media Streams status callback once per `StreamSid` + `StreamEvent`. Returns
    /// `false` for a duplicate.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn stream_event(&self, e: &StreamEvent, now_ms: i64) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let out = self.stream_event_in(&mut tx, e, now_ms).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn stream_event_in(
        &self,
        conn: &mut SqliteConnection,
        e: &StreamEvent,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO call_events (call_sid, source, dedupe_key, status, twilio_timestamp, received_at, params)
             VALUES (?, 'stream', ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(&e.call_sid)
        .bind(format!("stream:{}:{}", e.stream_sid, e.event))
        .bind(&e.event)
        .bind(&e.timestamp)
        .bind(now_ms)
        .bind(params_json(&e.params))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        sqlx::query(ENSURE_CALL)
            .bind(&e.call_sid)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "UPDATE calls SET stream_sid = COALESCE(stream_sid, ?), updated_at = ? WHERE call_sid = ?",
        )
        .bind(&e.stream_sid)
        .bind(now_ms)
        .bind(&e.call_sid)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    /// Stores a recording callback: one row per `RecordingSid`; a later status updates it, but a
    /// late `in-progress` never replaces `completed` or `absent`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn recording(&self, e: &RecordingEvent, now_ms: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        self.recording_in(&mut tx, e, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn recording_in(
        &self,
        conn: &mut SqliteConnection,
        e: &RecordingEvent,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(ENSURE_CALL)
            .bind(&e.call_sid)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO recordings (recording_sid, call_sid, status, url, duration_s, channels, source, track, start_time, updated_at, params)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (recording_sid) DO UPDATE SET
               status = excluded.status,
               url = COALESCE(excluded.url, recordings.url),
               duration_s = COALESCE(excluded.duration_s, recordings.duration_s),
               channels = COALESCE(excluded.channels, recordings.channels),
               source = COALESCE(excluded.source, recordings.source),
               track = COALESCE(excluded.track, recordings.track),
               start_time = COALESCE(excluded.start_time, recordings.start_time),
               updated_at = excluded.updated_at,
               params = excluded.params
             WHERE NOT (recordings.status IN ('completed', 'absent') AND excluded.status = 'in-progress')",
        )
        .bind(&e.recording_sid)
        .bind(&e.call_sid)
        .bind(&e.status)
        .bind(&e.url)
        .bind(e.duration_s)
        .bind(e.channels)
        .bind(&e.source)
        .bind(&e.track)
        .bind(&e.start_time)
        .bind(now_ms)
        .bind(params_json(&e.params))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Stores a Conversations webhook once per `dedupe_key`. Returns `false` for a duplicate.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn conversation_event(
        &self,
        e: &StoredConversationEvent,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let out = self.conversation_event_in(&mut tx, e, now_ms).await?;
        tx.commit().await?;
        Ok(out)
    }

    pub(crate) async fn conversation_event_in(
        &self,
        conn: &mut SqliteConnection,
        e: &StoredConversationEvent,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let get = |name: &str| {
            e.params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let n = sqlx::query(
            "INSERT INTO conversation_events (dedupe_key, route, event_type, conversation_sid, message_sid, participant_sid, author, body, source, received_at, params)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(&e.dedupe_key)
        .bind(&e.route)
        .bind(get("EventType"))
        .bind(get("ConversationSid"))
        .bind(get("MessageSid"))
        .bind(get("ParticipantSid"))
        .bind(get("Author"))
        .bind(get("Body"))
        .bind(get("Source"))
        .bind(now_ms)
        .bind(params_json(&e.params))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Records the start of a call's media stream (creating the call row for inbound calls;
    /// `From`/`To` are taken from the stream parameters when the row has none), by this
    /// store's [`Node`], and puts `stream-started` (source `media`) in the call's timeline.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn stream_started(
        &self,
        call_sid: &str,
        stream_sid: &str,
        params: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        self.stream_started_in(&mut tx, call_sid, stream_sid, params, now_ms)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn stream_started_in(
        &self,
        conn: &mut SqliteConnection,
        call_sid: &str,
        stream_sid: &str,
        params: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        sqlx::query(
            "INSERT INTO calls (call_sid, stream_sid, stream_params, from_number, to_number, agent, created_at, updated_at, stream_started_at, node_id, instance_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8, ?9)
             ON CONFLICT (call_sid) DO UPDATE SET
               stream_sid = excluded.stream_sid,
               stream_params = excluded.stream_params,
               from_number = COALESCE(calls.from_number, excluded.from_number),
               to_number = COALESCE(calls.to_number, excluded.to_number),
               agent = COALESCE(calls.agent, excluded.agent),
               stream_started_at = excluded.stream_started_at,
               stream_stopped_at = NULL,
               node_id = excluded.node_id,
               instance_id = excluded.instance_id,
               updated_at = excluded.updated_at",
        )
        .bind(call_sid)
        .bind(stream_sid)
        .bind(params_json(params))
        .bind(get("From"))
        .bind(get("To"))
        .bind(get("agent"))
        .bind(now_ms)
        .bind(&self.node.node_id)
        .bind(&self.node.instance_id)
        .execute(&mut *conn)
        .await?;
        media_event(conn, call_sid, stream_sid, "stream-started", None, now_ms).await
    }

    /// Stores one caller turn. A turn with an [`TurnRow::index`] is one row per call and
    /// index: storing it again (as its answer plays) replaces the row's figures. Counts as
    /// activity on the call (`updated_at`).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn turn(&self, call_sid: &str, t: &TurnRow, now_ms: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        self.turn_in(&mut tx, call_sid, t, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn turn_in(
        &self,
        conn: &mut SqliteConnection,
        call_sid: &str,
        t: &TurnRow,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(ENSURE_CALL)
            .bind(call_sid)
            .bind(now_ms)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO turns (call_sid, turn_index, user_start_ms, user_end_ms, latency_ms, interrupted, heard_ms, text, agent_text,
                                heard_latency_ms, stt_ms, llm_ttft_ms, tts_ttfb_ms, first_audio_ms, recorded_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (call_sid, turn_index) DO UPDATE SET
               user_start_ms = excluded.user_start_ms, user_end_ms = excluded.user_end_ms,
               latency_ms = excluded.latency_ms, interrupted = excluded.interrupted,
               heard_ms = excluded.heard_ms, text = excluded.text, agent_text = excluded.agent_text,
               heard_latency_ms = excluded.heard_latency_ms, stt_ms = excluded.stt_ms,
               llm_ttft_ms = excluded.llm_ttft_ms, tts_ttfb_ms = excluded.tts_ttfb_ms,
               first_audio_ms = excluded.first_audio_ms, recorded_at = excluded.recorded_at",
        )
        .bind(call_sid)
        .bind(t.index.map(i64::from))
        .bind(t.user_start_ms)
        .bind(t.user_end_ms)
        .bind(t.latency_ms)
        .bind(t.interrupted)
        .bind(t.heard_ms)
        .bind(&t.text)
        .bind(&t.agent_text)
        .bind(t.heard_latency_ms)
        .bind(t.stt_ms)
        .bind(t.llm_ttft_ms)
        .bind(t.tts_ttfb_ms)
        .bind(t.first_audio_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE calls SET updated_at = MAX(updated_at, ?) WHERE call_sid = ?")
            .bind(now_ms)
            .bind(call_sid)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Records the end of a call's media stream with the engine's summary, and
    /// `stream-stopped` (source `media`, `detail` = the summary's `ended`) in its timeline.
    ///
    /// A call that never had a Twilio status callback (a stream-only call: no
    /// `StatusCallback` configured) gets its status and end from the stream: `completed`
    /// (unless already final) and `ended_at` = now. With status callbacks, Twilio's final
    /// status sets them (the call may go on after the stream, e.g. a transfer).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn stream_stopped(
        &self,
        call_sid: &str,
        summary: &StreamSummary,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        self.stream_stopped_in(&mut tx, call_sid, summary, now_ms)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn stream_stopped_in(
        &self,
        conn: &mut SqliteConnection,
        call_sid: &str,
        summary: &StreamSummary,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let json = serde_json::to_string(summary).unwrap_or_else(|_| "{}".into());
        close_stream(conn, call_sid, &json, &summary.ended, now_ms, now_ms).await
    }

    /// Closes the media streams this store's node left open (started, never stopped) and
    /// returns their Call SIDs: `which` says whose; `ended` goes in the summary and timeline.
    ///
    /// - [`OpenCalls::Crashed`]: streams of this node from *other* runs (a process that
    ///   crashed or was killed); their end is their last known activity (the latest of the
    ///   call's `updated_at`, its turns and its timeline).
    /// - [`OpenCalls::ThisRun`]: streams of this run that are still open (calls cut at
    ///   shutdown whose own close never arrived); their end is now.
    ///
    /// Each gets `summary` `{"ended": <ended>, "duration_ms": <end − stream start>, "turns":
    /// <stored turns>}` (figures the process never reported are absent), `stream_stopped_at`,
    /// a `stream-stopped` timeline entry with `detail` = `ended`, and, if it never had a Twilio
    /// status callback, status `completed` and `ended_at` (as [`Store::stream_stopped`]).
    /// Streams recorded by other nodes (another `HARK_NODE_ID`), and rows without a node (from
    /// before this was recorded), are left alone.
    ///
    /// # Errors
    /// The driver's error (nothing is changed then).
    pub async fn close_open_calls(
        &self,
        which: OpenCalls,
        ended: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT c.call_sid, c.stream_started_at,
                    MAX(c.updated_at, c.stream_started_at,
                        COALESCE((SELECT MAX(t.recorded_at) FROM turns t WHERE t.call_sid = c.call_sid), 0),
                        COALESCE((SELECT MAX(e.received_at) FROM call_events e WHERE e.call_sid = c.call_sid), 0)) AS last_ms,
                    (SELECT COUNT(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turns
             FROM calls c
             WHERE c.node_id = ?1 AND c.stream_started_at IS NOT NULL AND c.stream_stopped_at IS NULL
               AND ((?2 AND c.instance_id IS NOT ?3) OR (NOT ?2 AND c.instance_id = ?3))
             ORDER BY c.stream_started_at",
        )
        .bind(&self.node.node_id)
        .bind(which == OpenCalls::Crashed)
        .bind(&self.node.instance_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut closed = Vec::with_capacity(rows.len());
        for row in rows {
            let call_sid: String = row.try_get("call_sid")?;
            let started: i64 = row.try_get("stream_started_at")?;
            let last: i64 = row.try_get("last_ms")?;
            let turns: i64 = row.try_get("turns")?;
            let end = match which {
                OpenCalls::Crashed => last,
                OpenCalls::ThisRun => now_ms.max(last),
            };
            let summary = serde_json::json!({
                "ended": ended,
                "duration_ms": (end - started).max(0),
                "turns": turns,
            })
            .to_string();
            close_stream(&mut tx, &call_sid, &summary, ended, end, now_ms).await?;
            closed.push(call_sid);
        }
        tx.commit().await?;
        Ok(closed)
    }

    /// Everything about one call, or `None`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn call(&self, call_sid: &str) -> Result<Option<CallDetail>, sqlx::Error> {
        let Some(row) = sqlx::query("SELECT * FROM calls WHERE call_sid = ?")
            .bind(call_sid)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let call = summary_row(&row)?;
        let timeline = sqlx::query(
            "SELECT source, status, sequence_number, answered_by, twilio_timestamp, received_at, detail
             FROM call_events WHERE call_sid = ? ORDER BY id",
        )
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(TimelineEntry {
                source: r.try_get("source")?,
                status: r.try_get("status")?,
                sequence_number: r.try_get("sequence_number")?,
                answered_by: r.try_get("answered_by")?,
                timestamp: r.try_get("twilio_timestamp")?,
                received_at_ms: r.try_get("received_at")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let turns = sqlx::query(
            "SELECT turn_index, user_start_ms, user_end_ms, latency_ms, interrupted, heard_ms, text,
                    agent_text, heard_latency_ms, stt_ms, llm_ttft_ms, tts_ttfb_ms, first_audio_ms
             FROM turns WHERE call_sid = ? ORDER BY user_start_ms, id",
        )
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(TurnRow {
                index: r.try_get("turn_index")?,
                user_start_ms: r.try_get("user_start_ms")?,
                user_end_ms: r.try_get("user_end_ms")?,
                latency_ms: r.try_get("latency_ms")?,
                interrupted: r.try_get("interrupted")?,
                heard_ms: r.try_get("heard_ms")?,
                text: r.try_get("text")?,
                agent_text: r.try_get("agent_text")?,
                heard_latency_ms: r.try_get("heard_latency_ms")?,
                stt_ms: r.try_get("stt_ms")?,
                llm_ttft_ms: r.try_get("llm_ttft_ms")?,
                tts_ttfb_ms: r.try_get("tts_ttfb_ms")?,
                first_audio_ms: r.try_get("first_audio_ms")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let recordings = sqlx::query(
            "SELECT recording_sid, status, url, duration_s, channels, source, track, start_time
             FROM recordings WHERE call_sid = ? ORDER BY updated_at, recording_sid",
        )
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(RecordingRow {
                recording_sid: r.try_get("recording_sid")?,
                status: r.try_get("status")?,
                url: r.try_get("url")?,
                duration_s: r.try_get("duration_s")?,
                channels: r.try_get("channels")?,
                source: r.try_get("source")?,
                track: r.try_get("track")?,
                start_time: r.try_get("start_time")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let latencies: Vec<i64> = turns.iter().filter_map(|t| t.latency_ms).collect();
        Ok(Some(CallDetail {
            call,
            parameters: json_col(&row, "parameters")?,
            stream_parameters: json_col(&row, "stream_params")?,
            summary: json_col(&row, "summary")?,
            timeline,
            turns,
            latency: Latency::of(&latencies),
            recordings,
        }))
    }

    /// Calls, newest first, optionally only those whose latest status is `status`; at most
    /// `limit`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn list_calls(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CallSummaryRow>, sqlx::Error> {
        sqlx::query(
            "SELECT * FROM calls WHERE (?1 IS NULL OR status = ?1)
             ORDER BY created_at DESC, call_sid LIMIT ?2",
        )
        .bind(status)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(summary_row)
        .collect()
    }

    /// Stored Conversations webhooks for `conversation_sid` (oldest first), as
    /// `(route, event_type, params JSON)`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn conversation_events(
        &self,
        conversation_sid: &str,
    ) -> Result<Vec<(String, Option<String>, Value)>, sqlx::Error> {
        sqlx::query(
            "SELECT route, event_type, params FROM conversation_events WHERE conversation_sid = ? ORDER BY id",
        )
        .bind(conversation_sid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("route")?,
                r.try_get("event_type")?,
                json_col(r, "params")?,
            ))
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_figures() {
        assert_eq!(Latency::of(&[]), Latency::default());
        let l = Latency::of(&[900, 100, 500, 300, 700]);
        assert_eq!(l.turns, 5);
        assert_eq!(l.mean_ms, Some(500));
        assert_eq!(l.p50_ms, Some(500));
        assert_eq!(l.p95_ms, Some(900));
        assert_eq!(l.max_ms, Some(900));
    }

    #[test]
    fn repeated_params_become_arrays() {
        let p = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
            ("A".to_owned(), "3".to_owned()),
        ];
        assert_eq!(params_json(&p), r#"{"A":["1","3"],"B":"2"}"#);
    }

    #[tokio::test]
    async fn rejects_other_databases() {
        let err = Store::open("postgres://localhost/hark").await.unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::Setting {
                    var: "HARK_DATABASE_URL",
                    ..
                }
            ),
            "{err}"
        );
    }
}
