//! The writes: each runs inside the transaction `conn` it is given (its name ends in `_in`);
//! [`Store::write`] gives one a transaction of its own, and the record writer
//! ([`super::super::recorder`]) commits a batch at once. Each is idempotent (see the module
//! docs of [`super`]).

use serde_json::Value;
use sqlx::AnyConnection;
use sqlx::Row;

use super::super::recorder::StreamSummary;
use super::{
    NewCall, OpenCalls, RecordingEvent, StatusEvent, Store, StoredConversationEvent, StreamEvent,
    TurnRow, is_final,
};

/// Stream or webhook parameters as a JSON object; a name repeated becomes an array of its
/// values, in order.
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

/// Makes sure a `calls` row exists for `call_sid` (inbound calls have none until their first
/// record).
const ENSURE_CALL: &str = "INSERT INTO calls (call_sid, created_at, updated_at) VALUES ($1, $2, $3) ON CONFLICT (call_sid) DO NOTHING";

/// Most rows in one multi-row statement of [`Store::turns_in`]: at 15 bind parameters a
/// turn, 3,840 parameters, well under SQLite's 32,766 and PostgreSQL's 65,535.
pub const TURN_ROWS_PER_STATEMENT: usize = 256;

/// `head` + `rows` groups of `per_row` numbered placeholders (`($1, $2), ($3, $4)`) + `tail`.
fn multi_row(head: &str, per_row: usize, rows: usize, tail: &str) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * per_row * 6);
    sql.push_str(head);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..per_row {
            let sep = if c == 0 { "" } else { ", " };
            let _ = write!(sql, "{sep}${}", r * per_row + c + 1);
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// Puts one of hark's own stream events (source `media`) in a call's timeline, once per stream
/// and event.
async fn media_event(
    conn: &mut AnyConnection,
    call_sid: &str,
    stream_sid: &str,
    event: &str,
    detail: Option<&str>,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO call_events (call_sid, source, dedupe_key, status, detail, received_at, params)
         VALUES ($1, 'media', $2, $3, $4, $5, '{}') ON CONFLICT (dedupe_key) DO NOTHING",
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
/// Twilio status callback, status `completed` (unless final) and `ended_at`; with events on,
/// its `call.ended` event.
async fn close_stream(
    store: &Store,
    conn: &mut AnyConnection,
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
        "UPDATE calls SET summary = $1, stream_stopped_at = $2, updated_at = CASE WHEN updated_at > $3 THEN updated_at ELSE $3 END,
           status = CASE
             WHEN EXISTS (SELECT 1 FROM call_events e WHERE e.call_sid = calls.call_sid AND e.source = 'status')
               OR status IN ('completed','busy','failed','no-answer','canceled') THEN status
             ELSE 'completed' END,
           ended_at = CASE
             WHEN EXISTS (SELECT 1 FROM call_events e WHERE e.call_sid = calls.call_sid AND e.source = 'status')
               THEN ended_at
             ELSE COALESCE(ended_at, $2) END
         WHERE call_sid = $4",
    )
    .bind(summary)
    .bind(at_ms)
    .bind(now_ms)
    .bind(call_sid)
    .execute(&mut *conn)
    .await?;
    let stream_sid: Option<String> =
        sqlx::query_scalar("SELECT stream_sid FROM calls WHERE call_sid = $1")
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
    .await?;
    store
        .call_ended_event_in(conn, call_sid, &stream_sid, ended, summary, now_ms)
        .await
}

impl Store {
    /// Records a call `POST /calls` created.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn insert_outbound_call_in(
        &self,
        conn: &mut AnyConnection,
        c: &NewCall,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let params = serde_json::to_string(&c.parameters).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO calls (call_sid, direction, from_number, to_number, agent, parameters, status, created_at, updated_at)
             VALUES ($1, 'outbound-api', $2, $3, $4, $5, $6, $7, $8)
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
    pub async fn status_event_in(
        &self,
        conn: &mut AnyConnection,
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
             VALUES ($1, 'status', $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dedupe_key) DO NOTHING",
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
               status = CASE WHEN ($1 IS NOT NULL AND (status_seq IS NULL OR status_seq <= $1))
                              OR ($1 IS NULL AND (status IS NULL OR status NOT IN ('completed','busy','failed','no-answer','canceled')))
                             THEN $2 ELSE status END,
               status_seq = CASE WHEN $1 IS NOT NULL AND (status_seq IS NULL OR status_seq <= $1) THEN $1 ELSE status_seq END,
               answered_by = COALESCE($3, answered_by),
               duration_s = COALESCE($4, duration_s),
               direction = COALESCE(direction, $5),
               from_number = COALESCE(from_number, $6),
               to_number = COALESCE(to_number, $7),
               ended_at = CASE WHEN $8 THEN COALESCE(ended_at, $9) ELSE ended_at END,
               updated_at = $9
             WHERE call_sid = $10",
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
    pub async fn stream_event_in(
        &self,
        conn: &mut AnyConnection,
        e: &StreamEvent,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO call_events (call_sid, source, dedupe_key, status, twilio_timestamp, received_at, params)
             VALUES ($1, 'stream', $2, $3, $4, $5, $6) ON CONFLICT (dedupe_key) DO NOTHING",
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
            "UPDATE calls SET stream_sid = COALESCE(stream_sid, $1), updated_at = $2 WHERE call_sid = $3",
        )
        .bind(&e.stream_sid)
        .bind(now_ms)
        .bind(&e.call_sid)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    /// Stores a recording callback: one row per `RecordingSid`; a later status updates it, but a
    /// late `in-progress` never replaces `completed` or `absent`. A recording that completes
    /// after the call's `call.ended` event is a `call.recording` event (with call events on).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn recording_in(
        &self,
        conn: &mut AnyConnection,
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
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
        self.recording_event_in(conn, e, now_ms).await
    }

    /// Stores a Conversations webhook once per `dedupe_key`. Returns `false` for a duplicate.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn conversation_event_in(
        &self,
        conn: &mut AnyConnection,
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (dedupe_key) DO NOTHING",
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
    /// store's [`Node`](super::Node), and puts `stream-started` (source `media`) in the call's
    /// timeline; with events on, the call's `call.started` event.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn stream_started_in(
        &self,
        conn: &mut AnyConnection,
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8, $9)
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
        media_event(conn, call_sid, stream_sid, "stream-started", None, now_ms).await?;
        self.call_started_event_in(conn, call_sid, stream_sid, now_ms)
            .await
    }

    /// Stores one caller turn. A turn with an [`TurnRow::index`] is one row per call and
    /// index: storing it again (as its answer plays) replaces the row's figures. Counts as
    /// activity on the call (`updated_at`). [`Store::turns_in`] with one turn.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn turn_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
        t: &TurnRow,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        self.turns_in(conn, &[(call_sid, t, now_ms)]).await
    }

    /// Stores caller turns, each `(call_sid, turn, now_ms)` as [`Store::turn_in`] does, in two
    /// statements per 256 turns (`TURN_ROWS_PER_STATEMENT`) instead of three per turn: one upsert
    /// of the calls touched (created if missing, `created_at` = the call's first `now_ms` here;
    /// `updated_at` = its latest, never moved back) and one
    /// multi-row upsert of the turns. A turn stored more than once here (same call and
    /// index) keeps its last version, as storing them one after the other would (and
    /// PostgreSQL refuses an upsert that touches a row twice).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn turns_in(
        &self,
        conn: &mut AnyConnection,
        turns: &[(&str, &TurnRow, i64)],
    ) -> Result<(), sqlx::Error> {
        use std::collections::hash_map::{Entry, HashMap};
        // The calls in order of first appearance, each with its first time (`created_at` if
        // the row is new, as storing the turns one by one would set it) and its latest.
        let mut calls: Vec<(&str, i64, i64)> = Vec::new();
        let mut call_at: HashMap<&str, usize> = HashMap::new();
        // The turns to write: one per (call, index), the last stored.
        let mut rows: Vec<usize> = Vec::with_capacity(turns.len());
        let mut row_at: HashMap<(&str, u32), usize> = HashMap::new();
        for (i, &(sid, t, now_ms)) in turns.iter().enumerate() {
            match call_at.entry(sid) {
                Entry::Occupied(e) => {
                    let c = &mut calls[*e.get()];
                    c.2 = c.2.max(now_ms);
                }
                Entry::Vacant(e) => {
                    e.insert(calls.len());
                    calls.push((sid, now_ms, now_ms));
                }
            }
            match t.index.map(|ix| row_at.entry((sid, ix))) {
                Some(Entry::Occupied(e)) => rows[*e.get()] = i,
                Some(Entry::Vacant(e)) => {
                    e.insert(rows.len());
                    rows.push(i);
                }
                None => rows.push(i),
            }
        }
        for chunk in calls.chunks(TURN_ROWS_PER_STATEMENT) {
            let sql = multi_row(
                "INSERT INTO calls (call_sid, created_at, updated_at) VALUES ",
                3,
                chunk.len(),
                " ON CONFLICT (call_sid) DO UPDATE SET updated_at = CASE
                   WHEN calls.updated_at > excluded.updated_at THEN calls.updated_at
                   ELSE excluded.updated_at END",
            );
            // Built from constants and placeholder numbers only.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(chunk.len() == 1);
            for &(sid, first_ms, latest_ms) in chunk {
                q = q.bind(sid).bind(first_ms).bind(latest_ms);
            }
            q.execute(&mut *conn).await?;
        }
        for chunk in rows.chunks(TURN_ROWS_PER_STATEMENT) {
            let sql = multi_row(
                "INSERT INTO turns (call_sid, turn_index, user_start_ms, user_end_ms, latency_ms, interrupted, heard_ms, text, agent_text,
                                    heard_latency_ms, stt_ms, llm_ttft_ms, tts_ttfb_ms, first_audio_ms, recorded_at) VALUES ",
                15,
                chunk.len(),
                " ON CONFLICT (call_sid, turn_index) DO UPDATE SET
                   user_start_ms = excluded.user_start_ms, user_end_ms = excluded.user_end_ms,
                   latency_ms = excluded.latency_ms, interrupted = excluded.interrupted,
                   heard_ms = excluded.heard_ms, text = excluded.text, agent_text = excluded.agent_text,
                   heard_latency_ms = excluded.heard_latency_ms, stt_ms = excluded.stt_ms,
                   llm_ttft_ms = excluded.llm_ttft_ms, tts_ttfb_ms = excluded.tts_ttfb_ms,
                   first_audio_ms = excluded.first_audio_ms, recorded_at = excluded.recorded_at",
            );
            // Built from constants and placeholder numbers only.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(chunk.len() == 1);
            for &i in chunk {
                let (call_sid, t, now_ms) = turns[i];
                q = q
                    .bind(call_sid)
                    .bind(t.index.map(i64::from))
                    .bind(t.user_start_ms)
                    .bind(t.user_end_ms)
                    .bind(t.latency_ms)
                    .bind(i64::from(t.interrupted))
                    .bind(t.heard_ms)
                    .bind(t.text.as_deref())
                    .bind(t.agent_text.as_deref())
                    .bind(t.heard_latency_ms)
                    .bind(t.stt_ms)
                    .bind(t.llm_ttft_ms)
                    .bind(t.tts_ttfb_ms)
                    .bind(t.first_audio_ms)
                    .bind(now_ms);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Records the end of a call's media stream with the engine's summary, and
    /// `stream-stopped` (source `media`, `detail` = the summary's `ended`) in its timeline;
    /// with events on, the call's `call.ended` event.
    ///
    /// A call that never had a Twilio status callback (a stream-only call: no
    /// `StatusCallback` configured) gets its status and end from the stream: `completed`
    /// (unless already final) and `ended_at` = now. With status callbacks, Twilio's final
    /// status sets them (the call may go on after the stream, e.g. a transfer).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn stream_stopped_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
        summary: &StreamSummary,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let json = serde_json::to_string(summary).unwrap_or_else(|_| "{}".into());
        close_stream(self, conn, call_sid, &json, &summary.ended, now_ms, now_ms).await
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
    /// status callback, status `completed` and `ended_at` (as [`Store::stream_stopped_in`]).
    /// Streams recorded by other nodes (another `HARK_NODE_ID`), and rows without a node (from
    /// before this was recorded), are left alone.
    ///
    /// # Errors
    /// The driver's error (nothing is changed then).
    pub async fn close_open_calls(
        &self,
        which: OpenCalls<'_>,
        ended: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        self.write(async |tx| self.close_open_calls_in(tx, which, ended, now_ms).await)
            .await
    }

    /// [`Store::close_open_calls`] inside the transaction `conn`.
    pub(super) async fn close_open_calls_in(
        &self,
        conn: &mut AnyConnection,
        which: OpenCalls<'_>,
        ended: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let mine = (self.node.node_id.as_str(), self.node.instance_id.as_str());
        let (mode, (node, instance)) = match which {
            OpenCalls::Crashed => (0_i64, mine),
            OpenCalls::ThisRun => (1, mine),
            OpenCalls::Instance(node) => (2, (node.node_id.as_str(), node.instance_id.as_str())),
        };
        let rows = sqlx::query(
            "SELECT c.call_sid, c.stream_started_at, c.updated_at,
                    COALESCE((SELECT MAX(t.recorded_at) FROM turns t WHERE t.call_sid = c.call_sid), 0) AS last_turn,
                    COALESCE((SELECT MAX(e.received_at) FROM call_events e WHERE e.call_sid = c.call_sid), 0) AS last_event,
                    (SELECT COUNT(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turns
             FROM calls c
             WHERE c.stream_started_at IS NOT NULL AND c.stream_stopped_at IS NULL
               AND (($2 = 0 AND c.node_id = $1 AND c.instance_id IS DISTINCT FROM $3)
                 OR ($2 = 1 AND c.node_id = $1 AND c.instance_id = $3)
                 OR ($2 = 2 AND c.node_id = $1 AND c.instance_id = $3))
             ORDER BY c.stream_started_at",
        )
        .bind(node)
        .bind(mode)
        .bind(instance)
        .fetch_all(&mut *conn)
        .await?;
        let mut closed = Vec::with_capacity(rows.len());
        for row in rows {
            let call_sid: String = row.try_get("call_sid")?;
            let started: i64 = row.try_get("stream_started_at")?;
            let last = ["updated_at", "last_turn", "last_event"]
                .into_iter()
                .map(|c| row.try_get::<i64, _>(c))
                .try_fold(started, |m, v| v.map(|v| m.max(v)))?;
            let turns: i64 = row.try_get("turns")?;
            let end = match which {
                OpenCalls::Crashed | OpenCalls::Instance(_) => last,
                OpenCalls::ThisRun => now_ms.max(last),
            };
            let summary = serde_json::json!({
                "ended": ended,
                "duration_ms": (end - started).max(0),
                "turns": turns,
            })
            .to_string();
            close_stream(self, conn, &call_sid, &summary, ended, end, now_ms).await?;
            closed.push(call_sid);
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_stores;
    use super::*;

    fn status(seq: Option<i64>, status: &str) -> StatusEvent {
        StatusEvent {
            call_sid: "CA1".into(),
            status: status.into(),
            sequence_number: seq,
            answered_by: None,
            timestamp: Some(format!("t-{status}")),
            call_duration_s: (status == "completed").then_some(42),
            direction: Some("outbound-api".into()),
            from: Some("+15550001".into()),
            to: Some("+15550002".into()),
            params: vec![("CallStatus".into(), status.into())],
        }
    }

    #[tokio::test]
    async fn writes_are_idempotent_and_status_only_moves_forward() {
        for store in test_stores().await {
            let call = NewCall {
                call_sid: "CA1".into(),
                to: "+15550002".into(),
                from: "+15550001".into(),
                agent: Some("echo".into()),
                parameters: [("k".to_owned(), "v".to_owned())].into(),
                status: "queued".into(),
            };
            store
                .write(async |c| store.insert_outbound_call_in(c, &call, 100).await)
                .await
                .unwrap();
            let put = async |e: StatusEvent, at: i64| {
                store
                    .write(async |c| store.status_event_in(c, &e, at).await)
                    .await
                    .unwrap()
            };
            assert!(put(status(Some(2), "in-progress"), 200).await);
            assert!(!put(status(Some(2), "in-progress"), 201).await, "a retry");
            assert!(put(status(Some(3), "completed"), 300).await);
            // Late and out of order: stored in the timeline, the status stays completed.
            assert!(put(status(Some(1), "ringing"), 400).await);
            assert!(put(status(None, "in-progress"), 500).await);
            let stream = StreamEvent {
                call_sid: "CA1".into(),
                stream_sid: "MZ1".into(),
                event: "stream-started".into(),
                timestamp: None,
                params: vec![],
            };
            for _ in 0..2 {
                store
                    .write(async |c| store.stream_event_in(c, &stream, 250).await)
                    .await
                    .unwrap();
            }
            let rec = |status: &str, url: Option<&str>| RecordingEvent {
                recording_sid: "RE1".into(),
                call_sid: "CA1".into(),
                status: Some(status.into()),
                url: url.map(str::to_owned),
                duration_s: None,
                channels: Some(2),
                source: None,
                track: None,
                start_time: None,
                params: vec![],
            };
            for r in [
                rec("completed", Some("https://r/RE1")),
                rec("in-progress", None),
            ] {
                store
                    .write(async |c| store.recording_in(c, &r, 600).await)
                    .await
                    .unwrap();
            }
            let conv = StoredConversationEvent {
                dedupe_key: "IT1".into(),
                route: "/conversations/events".into(),
                params: vec![("ConversationSid".into(), "CH1".into())],
            };
            let first = store
                .write(async |c| store.conversation_event_in(c, &conv, 700).await)
                .await
                .unwrap();
            let again = store
                .write(async |c| store.conversation_event_in(c, &conv, 701).await)
                .await
                .unwrap();
            assert!(first && !again);

            let d = store.call("CA1").await.unwrap().expect("the call");
            assert_eq!(d.call.status.as_deref(), Some("completed"));
            assert_eq!(
                (d.call.duration_s, d.call.ended_at_ms),
                (Some(42), Some(300))
            );
            assert_eq!(d.call.stream_sid.as_deref(), Some("MZ1"));
            assert_eq!(d.parameters["k"], "v");
            let seqs: Vec<_> = d
                .timeline
                .iter()
                .map(|e| (e.source.as_str(), e.sequence_number))
                .collect();
            assert_eq!(
                seqs,
                [
                    ("status", Some(2)),
                    ("status", Some(3)),
                    ("status", Some(1)),
                    ("status", None),
                    ("stream", None)
                ]
            );
            assert_eq!(d.recordings.len(), 1);
            assert_eq!(d.recordings[0].status.as_deref(), Some("completed"));
            assert_eq!(d.recordings[0].url.as_deref(), Some("https://r/RE1"));
            assert_eq!(store.conversation_events("CH1").await.unwrap().len(), 1);
            let listed = store.list_calls(Some("completed"), 10).await.unwrap();
            assert_eq!(listed.len(), 1);
            assert!(
                store
                    .list_calls(Some("ringing"), 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
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
    async fn turns_stored_together_are_the_turns_stored_one_by_one() {
        fn turn(index: Option<u32>, start: i64, latency: Option<i64>) -> TurnRow {
            TurnRow {
                index,
                user_start_ms: start,
                user_end_ms: start + 900,
                latency_ms: latency,
                text: Some(format!("it's {start}")),
                ..TurnRow::default()
            }
        }
        // Both calls twice, turn 0 of CA1 three times (the last wins), rows without an
        // index kept each, and more rows than one statement takes.
        let mut batch: Vec<(&str, TurnRow, i64)> = vec![
            ("CA1", turn(Some(0), 1000, None), 10),
            ("CA2", turn(Some(0), 2000, Some(500)), 11),
            ("CA1", turn(Some(0), 1000, Some(640)), 12),
            ("CA1", turn(None, 7000, None), 13),
            ("CA1", turn(None, 8000, None), 9),
            ("CA1", turn(Some(0), 1000, Some(650)), 11),
        ];
        for i in 0..TURN_ROWS_PER_STATEMENT as u32 + 10 {
            batch.push(("CA3", turn(Some(i), i64::from(i) * 3000, None), 20));
        }
        let rows: Vec<(&str, &TurnRow, i64)> =
            batch.iter().map(|(c, t, at)| (*c, t, *at)).collect();
        for store in test_stores().await {
            store
                .write(async |c| store.turns_in(c, &rows).await)
                .await
                .unwrap();
            let ca1 = store.call("CA1").await.unwrap().expect("CA1 created");
            assert_eq!(ca1.turns.len(), 3, "{:?}", ca1.turns);
            assert_eq!(ca1.turns[0].index, Some(0));
            assert_eq!(ca1.turns[0].latency_ms, Some(650), "the last version");
            assert_eq!(
                ca1.turns
                    .iter()
                    .map(|t| t.user_start_ms)
                    .collect::<Vec<_>>(),
                [1000, 7000, 8000]
            );
            assert_eq!(
                ca1.call.updated_at_ms, 13,
                "the latest time, not the last row's"
            );
            assert_eq!(
                ca1.call.created_at_ms, 10,
                "created at its first turn's time"
            );
            let ca2 = store.call("CA2").await.unwrap().expect("CA2 created");
            assert_eq!(ca2.turns[0].latency_ms, Some(500));
            assert_eq!(ca2.turns[0].text.as_deref(), Some("it's 2000"));
            let ca3 = store.call("CA3").await.unwrap().expect("CA3 created");
            assert_eq!(ca3.turns.len(), TURN_ROWS_PER_STATEMENT + 10);
            // Stored again, one by one, at an earlier time: the same rows, updated_at kept.
            for &(sid, t, _) in &rows[..3] {
                store
                    .write(async |c| store.turn_in(c, sid, t, 5).await)
                    .await
                    .unwrap();
            }
            let again = store.call("CA1").await.unwrap().expect("CA1");
            assert_eq!(again.turns.len(), 3);
            assert_eq!(
                again.turns[0].latency_ms,
                Some(640),
                "one by one, the last wins too"
            );
            assert_eq!(
                again.call.updated_at_ms, 13,
                "updated_at only moves forward"
            );
        }
    }
}
