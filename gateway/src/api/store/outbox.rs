//! The call events' outbox (`event_outbox`): events for the operator's backend, written in
//! the same transaction as the record they describe, and the reads and marks of the delivery
//! worker ([`crate::operator::delivery`]).
//!
//! An event is written once per thing it is about (its `dedupe_key`: a stream's start, a
//! turn's index, a stream's end), numbered per call (`seq` from 0, the delivery order), with
//! its body fixed as it will be sent ([`crate::operator::events::Envelope`]). It belongs to
//! the node that wrote it: only that node's worker sends it, so two hark processes sharing a
//! database never send the same event, and a node's restart resumes its own outbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;
use tokio::sync::Notify;

use super::reads::{recordings_of, turns_of};
use super::{Latency, Store, TurnRow};
use crate::api::turns::GreetingHeard;
use crate::operator::events::{
    CallEnded, CallStarted, Envelope, EventType, Recording, Speaker, TranscriptLine, TurnEnded,
    rfc3339,
};

/// Wakes the delivery worker after a commit that wrote events.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    /// The worker waits on it.
    pub(crate) notify: Notify,
    /// An event was written since the last wake-up (maybe in a transaction rolled back since:
    /// then the worker wakes for nothing).
    dirty: AtomicBool,
}

/// Where an event is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Not delivered yet: waiting for its turn, or for its next attempt.
    Pending,
    /// The backend answered 2xx.
    Delivered,
    /// Given up: the backend refused it for good (a 4xx other than 408 and 429), or it was
    /// still undelivered after the delivery policy's maximum age.
    Failed,
}

impl EventState {
    /// The stored name: `pending`, `delivered`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Pending => "pending",
            EventState::Delivered => "delivered",
            EventState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> EventState {
        match s {
            "delivered" => EventState::Delivered,
            "failed" => EventState::Failed,
            _ => EventState::Pending,
        }
    }
}

/// One event in the outbox. Times are Unix ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row's key.
    pub row_id: i64,
    /// The idempotency key (the envelope's `id`).
    pub event_id: String,
    /// Twilio's Call SID.
    pub call_sid: String,
    /// The event's position among its call's events, from 0.
    pub seq: i64,
    /// `call.started`, `turn.ended`, `call.ended`.
    pub event_type: String,
    /// The JSON body, exactly as POSTed.
    pub body: String,
    /// Delivery state.
    pub state: EventState,
    /// Attempts made and answered or failed (an attempt cut by a crash is not counted).
    pub attempts: i64,
    /// When the event was written.
    pub created_at_ms: i64,
    /// When the next attempt is due (pending events).
    pub next_attempt_at_ms: i64,
    /// When the latest attempt ended.
    pub last_attempt_at_ms: Option<i64>,
    /// When the backend accepted it.
    pub delivered_at_ms: Option<i64>,
    /// The latest failed attempt: `HTTP 503: <start of the body>`, `connect: …`, `timeout`.
    pub last_error: Option<String>,
}

fn outbox_row(r: &AnyRow) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        row_id: r.try_get("id")?,
        event_id: r.try_get("event_id")?,
        call_sid: r.try_get("call_sid")?,
        seq: r.try_get("seq")?,
        event_type: r.try_get("event_type")?,
        body: r.try_get("body")?,
        state: EventState::parse(r.try_get::<&str, _>("state")?),
        attempts: r.try_get("attempts")?,
        created_at_ms: r.try_get("created_at")?,
        next_attempt_at_ms: r.try_get("next_attempt_at")?,
        last_attempt_at_ms: r.try_get("last_attempt_at")?,
        delivered_at_ms: r.try_get("delivered_at")?,
        last_error: r.try_get("last_error")?,
    })
}

/// The columns [`outbox_row`] reads.
macro_rules! row_columns {
    () => {
        "id, event_id, call_sid, seq, event_type, body, state, attempts, created_at, next_attempt_at, last_attempt_at, delivered_at, last_error"
    };
}

/// A JSON text column of `calls` as a value (`{}` when absent or not JSON).
fn json_text(s: Option<String>) -> Value {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
}

/// A call's transcript: the greeting as heard (from the stream's `summary` JSON), then the
/// lines of its turns.
fn transcript(summary: &str, turns: &[TurnRow]) -> Vec<TranscriptLine> {
    let greeting = serde_json::from_str::<Value>(summary)
        .ok()
        .and_then(|mut v| v.get_mut("greeting").map(Value::take))
        .and_then(|g| serde_json::from_value::<GreetingHeard>(g).ok());
    let mut lines: Vec<TranscriptLine> = greeting
        .into_iter()
        .map(|g| TranscriptLine {
            turn: None,
            role: Speaker::Agent,
            text: g.text,
            at_ms: i64::try_from(g.at_ms).unwrap_or(i64::MAX),
            interrupted: Some(g.interrupted),
        })
        .collect();
    lines.extend(TranscriptLine::of(turns));
    lines
}

/// An event to write: what it is about and its data.
struct NewEvent<'a> {
    ty: EventType,
    call_sid: &'a str,
    stream_sid: Option<&'a str>,
    /// Written once per key.
    dedupe_key: &'a str,
    data: Value,
}

/// `data` as JSON (an encode error for the transaction if it cannot be).
fn to_json(data: &impl serde::Serialize) -> Result<Value, sqlx::Error> {
    serde_json::to_value(data).map_err(|e| sqlx::Error::Encode(e.into()))
}

impl Store {
    /// The same database, with call events on: the writes of a stream's start, a finished
    /// turn ([`Store::turn_ended_in`]) and a stream's end also put their event in the outbox.
    pub fn with_events(mut self) -> Store {
        self.outbox = Some(Arc::new(Signal::default()));
        self
    }

    /// Whether call events are on ([`Store::with_events`]).
    pub fn events_enabled(&self) -> bool {
        self.outbox.is_some()
    }

    /// The delivery worker's wake-up, with events on.
    pub(crate) fn outbox_signal(&self) -> Option<Arc<Signal>> {
        self.outbox.clone()
    }

    /// A transaction was committed: wakes the delivery worker if it wrote events.
    pub(crate) fn committed(&self) {
        if let Some(s) = &self.outbox
            && s.dirty.swap(false, Ordering::AcqRel)
        {
            s.notify.notify_one();
        }
    }

    /// Writes one event (once per `dedupe_key`), numbered after its call's latest. Returns
    /// `false` if it was written already.
    async fn event_in(
        &self,
        conn: &mut AnyConnection,
        e: NewEvent<'_>,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let NewEvent {
            ty,
            call_sid,
            stream_sid,
            dedupe_key,
            data,
        } = e;
        let Some(signal) = &self.outbox else {
            return Ok(false);
        };
        // Two nodes may write events of one call at once (a recording callback on one, the
        // stream's end on another): one at a time per call, so `seq` is never taken twice.
        self.lock_call_in(conn, call_sid).await?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT id FROM event_outbox WHERE dedupe_key = $1")
                .bind(dedupe_key)
                .fetch_optional(&mut *conn)
                .await?;
        if known.is_some() {
            return Ok(false);
        }
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM event_outbox WHERE call_sid = $1",
        )
        .bind(call_sid)
        .fetch_one(&mut *conn)
        .await?;
        let envelope = Envelope {
            id: format!("{call_sid}:{seq}"),
            event_type: ty.as_str().to_owned(),
            call_sid: call_sid.to_owned(),
            stream_sid: stream_sid.map(str::to_owned),
            seq: u64::try_from(seq).unwrap_or(0),
            created_at: rfc3339(now_ms),
            data,
        };
        let body = serde_json::to_string(&envelope).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(
            "INSERT INTO event_outbox (event_id, dedupe_key, call_sid, seq, event_type, body, node_id, state, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9)",
        )
        .bind(&envelope.id)
        .bind(dedupe_key)
        .bind(call_sid)
        .bind(seq)
        .bind(ty.as_str())
        .bind(body)
        .bind(&self.node.node_id)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        signal.dirty.store(true, Ordering::Release);
        metrics::counter!("hark_events_enqueued_total", "type" => ty.as_str()).increment(1);
        Ok(true)
    }

    /// `call.started` for a stream just recorded as started (the `calls` row is up to date).
    pub(super) async fn call_started_event_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
        stream_sid: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        if !self.events_enabled() {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT from_number, to_number, direction, agent, stream_params FROM calls WHERE call_sid = $1",
        )
        .bind(call_sid)
        .fetch_one(&mut *conn)
        .await?;
        let data = CallStarted {
            from: row.try_get("from_number")?,
            to: row.try_get("to_number")?,
            direction: row.try_get("direction")?,
            agent: row.try_get("agent")?,
            parameters: json_text(row.try_get("stream_params")?),
        };
        let key = format!("call.started:{call_sid}:{stream_sid}");
        let e = NewEvent {
            ty: EventType::CallStarted,
            call_sid,
            stream_sid: Some(stream_sid),
            dedupe_key: &key,
            data: to_json(&data)?,
        };
        self.event_in(conn, e, now_ms).await.map(drop)
    }

    /// Stores a caller turn that is over (its answer included) as [`Store::turn_in`] does,
    /// and, with events on, its `turn.ended` event (once per call and turn index: a turn
    /// finished again keeps its first event).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn turn_ended_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
        t: &TurnRow,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        self.turn_in(conn, call_sid, t, now_ms).await?;
        self.turn_ended_event_in(conn, call_sid, t, now_ms).await
    }

    /// With events on, the `turn.ended` event of a turn already stored in this transaction
    /// (once per call and turn index, as [`Store::turn_ended_in`]); nothing with events off.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn turn_ended_event_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
        t: &TurnRow,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        if !self.events_enabled() {
            return Ok(());
        }
        let stream_sid: Option<String> =
            sqlx::query_scalar("SELECT stream_sid FROM calls WHERE call_sid = $1")
                .bind(call_sid)
                .fetch_one(&mut *conn)
                .await?;
        let key = match t.index {
            Some(i) => format!("turn.ended:{call_sid}:{i}"),
            None => format!("turn.ended:{call_sid}:at{}", t.user_start_ms),
        };
        let data = TurnEnded::from(t);
        let e = NewEvent {
            ty: EventType::TurnEnded,
            call_sid,
            stream_sid: stream_sid.as_deref(),
            dedupe_key: &key,
            data: to_json(&data)?,
        };
        self.event_in(conn, e, now_ms).await.map(drop)
    }

    /// `call.ended` for a stream just closed (`summary`: its JSON as stored; `ended`: why),
    /// with the call's transcript, status, AMD result and recordings as they stand in the
    /// transaction.
    pub(super) async fn call_ended_event_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
        stream_sid: &str,
        ended: &str,
        summary: &str,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        if !self.events_enabled() {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT status, answered_by, direction, from_number, to_number, agent FROM calls WHERE call_sid = $1",
        )
        .bind(call_sid)
        .fetch_one(&mut *conn)
        .await?;
        let turns = turns_of(&mut *conn, call_sid).await?;
        let recordings: Vec<Recording> = recordings_of(&mut *conn, call_sid)
            .await?
            .into_iter()
            .map(|r| Recording {
                recording_sid: r.recording_sid,
                status: r.status,
                url: r.url,
                duration_s: r.duration_s,
            })
            .collect();
        let recording_url = recordings
            .iter()
            .rev()
            .find(|r| r.status.as_deref() == Some("completed") && r.url.is_some())
            .or_else(|| recordings.iter().rev().find(|r| r.url.is_some()))
            .and_then(|r| r.url.clone());
        let latencies: Vec<i64> = turns.iter().filter_map(|t| t.latency_ms).collect();
        let data = CallEnded {
            ended: ended.to_owned(),
            summary: json_text(Some(summary.to_owned())),
            status: row.try_get("status")?,
            answered_by: row.try_get("answered_by")?,
            direction: row.try_get("direction")?,
            from: row.try_get("from_number")?,
            to: row.try_get("to_number")?,
            agent: row.try_get("agent")?,
            transcript: transcript(summary, &turns),
            latency: Latency::of(&latencies),
            recording_url,
            recordings,
            audio: json_text(Some(summary.to_owned())).get("audio").cloned(),
        };
        let key = format!("call.ended:{call_sid}:{stream_sid}");
        let e = NewEvent {
            ty: EventType::CallEnded,
            call_sid,
            stream_sid: Some(stream_sid),
            dedupe_key: &key,
            data: to_json(&data)?,
        };
        self.event_in(conn, e, now_ms).await.map(drop)
    }

    /// `call.recording` for a completed recording (with its URL) of a call whose `call.ended`
    /// is already written: the link the call's end could not carry. Earlier recordings are in
    /// `call.ended` itself. Once per recording.
    pub(super) async fn recording_event_in(
        &self,
        conn: &mut AnyConnection,
        e: &super::RecordingEvent,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        if !self.events_enabled() || e.status.as_deref() != Some("completed") || e.url.is_none() {
            return Ok(());
        }
        let ended: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM event_outbox WHERE call_sid = $1 AND event_type = 'call.ended' LIMIT 1",
        )
        .bind(&e.call_sid)
        .fetch_optional(&mut *conn)
        .await?;
        if ended.is_none() {
            return Ok(());
        }
        let data = Recording {
            recording_sid: e.recording_sid.clone(),
            status: e.status.clone(),
            url: e.url.clone(),
            duration_s: e.duration_s,
        };
        let key = format!("call.recording:{}", e.recording_sid);
        let ev = NewEvent {
            ty: EventType::CallRecording,
            call_sid: &e.call_sid,
            stream_sid: None,
            dedupe_key: &key,
            data: to_json(&data)?,
        };
        self.event_in(conn, ev, now_ms).await.map(drop)
    }

    /// This node's first pending event of each call (due or not), soonest due first, at most
    /// `limit`: what the delivery worker may send next.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn outbox_heads(&self, limit: u32) -> Result<Vec<OutboxRow>, sqlx::Error> {
        sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM event_outbox o
             WHERE o.node_id = $1 AND o.state = 'pending'
               AND o.seq = (SELECT MIN(p.seq) FROM event_outbox p
                            WHERE p.call_sid = o.call_sid AND p.state = 'pending')
             ORDER BY o.next_attempt_at, o.id LIMIT $2"
        ))
        .bind(&self.node.node_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_row)
        .collect()
    }

    /// Marks a pending event delivered at `now_ms` (one more attempt). Returns `false` if it
    /// was not pending.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn outbox_delivered(&self, row_id: i64, now_ms: i64) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE event_outbox SET state = 'delivered', attempts = attempts + 1,
               last_attempt_at = $1, delivered_at = $1
             WHERE id = $2 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(row_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Records a failed attempt of a pending event at `now_ms`: the next is due at
    /// `next_at_ms`. Returns `false` if it was not pending.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn outbox_retry(
        &self,
        row_id: i64,
        next_at_ms: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE event_outbox SET attempts = attempts + 1, last_attempt_at = $1,
               next_attempt_at = $2, last_error = $3
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(next_at_ms)
        .bind(error)
        .bind(row_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Gives a pending event up at `now_ms` after a last attempt that failed with `error`
    /// (kept as `failed`). Returns `false` if it was not pending.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn outbox_failed(
        &self,
        row_id: i64,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let n = sqlx::query(
            "UPDATE event_outbox SET state = 'failed', attempts = attempts + 1,
               last_attempt_at = $1, last_error = $2
             WHERE id = $3 AND state = 'pending'",
        )
        .bind(now_ms)
        .bind(error)
        .bind(row_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// This node's events not delivered yet.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn outbox_pending(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM event_outbox WHERE node_id = $1 AND state = 'pending'",
        )
        .bind(&self.node.node_id)
        .fetch_one(&self.pool)
        .await
    }

    /// The events of `call_sid` (every call's with `None`, any node's), in `seq` order per
    /// call: for inspection and tests.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn outbox_events(
        &self,
        call_sid: Option<&str>,
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        sqlx::query(concat!(
            "SELECT ",
            row_columns!(),
            " FROM event_outbox WHERE ($1 IS NULL OR call_sid = $1) ORDER BY call_sid, seq"
        ))
        .bind(call_sid)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(outbox_row)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Node, RecordingEvent, StatusEvent};
    use super::*;
    use crate::api::StreamSummary;

    fn turn(index: u32, start: i64, caller: &str, agent: &str) -> TurnRow {
        TurnRow {
            index: Some(index),
            user_start_ms: start,
            user_end_ms: start + 1000,
            latency_ms: Some(600),
            text: Some(caller.into()),
            agent_text: Some(agent.into()),
            ..TurnRow::default()
        }
    }

    /// A store with call events on each back-end.
    async fn events_stores() -> Vec<Store> {
        super::super::test_stores()
            .await
            .into_iter()
            .map(|s| s.with_node(Node::this_process("node-a")).with_events())
            .collect()
    }

    /// A whole call's records, as the writer would write them.
    async fn a_call(store: &Store, sid: &str) {
        let params = vec![("From".to_owned(), "+15550001".to_owned())];
        store
            .write(async |c| store.stream_started_in(c, sid, "MZ1", &params, 1_000).await)
            .await
            .unwrap();
        for (i, t) in [
            turn(0, 1000, "Hi.", "Hello!"),
            turn(1, 4000, "Bye.", "Goodbye."),
        ]
        .iter()
        .enumerate()
        {
            // An update first (not an event), then the turn as over.
            store
                .write(async |c| store.turn_in(c, sid, t, 2_000).await)
                .await
                .unwrap();
            store
                .write(async |c| store.turn_ended_in(c, sid, t, 3_000 + i as i64).await)
                .await
                .unwrap();
        }
        let summary = StreamSummary {
            turns: 2,
            ended: "closed: Stopped".into(),
            ..StreamSummary::default()
        };
        store
            .write(async |c| store.stream_stopped_in(c, sid, &summary, 9_000).await)
            .await
            .unwrap();
    }

    fn body(row: &OutboxRow) -> Envelope {
        serde_json::from_str(&row.body).expect("an envelope")
    }

    #[tokio::test]
    async fn a_recording_after_the_end_is_its_own_event_once() {
        for store in events_stores().await {
            a_call(&store, "CA2").await;
            let rec = |status: &str| RecordingEvent {
                recording_sid: "RE2".into(),
                call_sid: "CA2".into(),
                status: Some(status.into()),
                url: Some("https://api.twilio.com/rec/RE2".into()),
                duration_s: Some(31),
                channels: Some(1),
                source: None,
                track: None,
                start_time: None,
                params: vec![],
            };
            for r in [rec("in-progress"), rec("completed"), rec("completed")] {
                store
                    .write(async |c| store.recording_in(c, &r, 20_000).await)
                    .await
                    .unwrap();
            }
            let rows = store.outbox_events(Some("CA2")).await.unwrap();
            let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
            assert_eq!(
                types,
                [
                    "call.started",
                    "turn.ended",
                    "turn.ended",
                    "call.ended",
                    "call.recording"
                ],
                "in-progress is no event; a repeated callback is one"
            );
            let e = body(&rows[4]);
            assert_eq!((e.seq, e.stream_sid), (4, None));
            assert_eq!(e.data["url"], "https://api.twilio.com/rec/RE2");
            assert_eq!(e.data["duration_s"], 31);
        }
    }

    #[tokio::test]
    async fn a_call_writes_its_events_once_in_order() {
        for store in events_stores().await {
            let status = StatusEvent {
                call_sid: "CA1".into(),
                status: "in-progress".into(),
                sequence_number: Some(1),
                answered_by: Some("human".into()),
                timestamp: None,
                call_duration_s: None,
                direction: Some("outbound-api".into()),
                from: None,
                to: None,
                params: vec![],
            };
            store
                .write(async |c| store.status_event_in(c, &status, 500).await)
                .await
                .unwrap();
            let rec = RecordingEvent {
                recording_sid: "RE1".into(),
                call_sid: "CA1".into(),
                status: Some("completed".into()),
                url: Some("https://api.twilio.com/rec/RE1".into()),
                duration_s: Some(9),
                channels: Some(1),
                source: None,
                track: None,
                start_time: None,
                params: vec![],
            };
            store
                .write(async |c| store.recording_in(c, &rec, 600).await)
                .await
                .unwrap();
            a_call(&store, "CA1").await;
            // A turn finished again keeps its first event.
            let again = turn(1, 4000, "Bye.", "Goodbye.");
            store
                .write(async |c| store.turn_ended_in(c, "CA1", &again, 9_500).await)
                .await
                .unwrap();

            let rows = store.outbox_events(Some("CA1")).await.unwrap();
            let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
            assert_eq!(
                types,
                ["call.started", "turn.ended", "turn.ended", "call.ended"]
            );
            for (i, r) in rows.iter().enumerate() {
                let e = body(r);
                assert_eq!((e.seq, e.id.as_str()), (i as u64, r.event_id.as_str()));
                assert_eq!(r.event_id, format!("CA1:{i}"));
                assert_eq!(e.stream_sid.as_deref(), Some("MZ1"));
                assert_eq!(r.state, EventState::Pending);
            }
            let started = body(&rows[0]);
            assert_eq!(started.created_at, "1970-01-01T00:00:01.000Z");
            assert_eq!(started.data["from"], "+15550001");
            assert_eq!(started.data["direction"], "outbound-api");
            assert_eq!(started.data["parameters"]["From"], "+15550001");
            let t = body(&rows[2]).data;
            assert_eq!(
                (
                    &t["turn"],
                    &t["caller_text"],
                    &t["agent_text"],
                    &t["barge_in"]
                ),
                (
                    &serde_json::json!(1),
                    &serde_json::json!("Bye."),
                    &serde_json::json!("Goodbye."),
                    &serde_json::json!(false)
                )
            );
            let ended: CallEnded = serde_json::from_value(body(&rows[3]).data).unwrap();
            assert_eq!(ended.ended, "closed: Stopped");
            assert_eq!(ended.answered_by.as_deref(), Some("human"));
            assert_eq!(
                ended.recording_url.as_deref(),
                Some("https://api.twilio.com/rec/RE1")
            );
            assert_eq!(ended.summary["turns"], 2);
            let words: Vec<&str> = ended.transcript.iter().map(|l| l.text.as_str()).collect();
            assert_eq!(words, ["Hi.", "Hello!", "Bye.", "Goodbye."]);
            assert_eq!(ended.latency.turns, 2);
        }
    }

    #[tokio::test]
    async fn heads_are_each_calls_first_pending_event() {
        for store in events_stores().await {
            a_call(&store, "CA1").await;
            a_call(&store, "CA2").await;
            let heads = store.outbox_heads(10).await.unwrap();
            let ids: Vec<&str> = heads.iter().map(|r| r.event_id.as_str()).collect();
            assert_eq!(ids, ["CA1:0", "CA2:0"]);
            assert!(
                store
                    .outbox_delivered(heads[0].row_id, 10_000)
                    .await
                    .unwrap()
            );
            assert!(
                !store
                    .outbox_delivered(heads[0].row_id, 10_001)
                    .await
                    .unwrap(),
                "delivered once"
            );
            // A retry later puts CA2's head behind CA1's next.
            assert!(
                store
                    .outbox_retry(heads[1].row_id, 50_000, "HTTP 503", 10_000)
                    .await
                    .unwrap()
            );
            let heads = store.outbox_heads(10).await.unwrap();
            let ids: Vec<&str> = heads.iter().map(|r| r.event_id.as_str()).collect();
            assert_eq!(ids, ["CA1:1", "CA2:0"]);
            assert_eq!(heads[1].attempts, 1);
            assert_eq!(heads[1].last_error.as_deref(), Some("HTTP 503"));
            // Given up: the next of its call comes up.
            assert!(
                store
                    .outbox_failed(heads[1].row_id, "HTTP 400", 11_000)
                    .await
                    .unwrap()
            );
            let heads = store.outbox_heads(10).await.unwrap();
            assert_eq!(heads[1].event_id, "CA2:1");
            assert_eq!(store.outbox_pending().await.unwrap(), 8 - 2);
            // Another node's worker sees none of them.
            let other = store.clone().with_node(Node::this_process("node-b"));
            assert!(other.outbox_heads(10).await.unwrap().is_empty());
            assert_eq!(other.outbox_pending().await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn events_off_writes_none_and_crash_recovery_ends_the_call() {
        let off = Store::open("sqlite::memory:").await.unwrap();
        a_call(&off, "CA1").await;
        assert!(off.outbox_events(None).await.unwrap().is_empty());

        // A stream left open by an earlier run of this node: closed as crashed, with its event.
        for store in events_stores().await {
            store
                .write(async |c| store.stream_started_in(c, "CA9", "MZ9", &[], 1_000).await)
                .await
                .unwrap();
            // A later run of node-a (an instance id of its own even within the same millisecond:
            // `Node::this_process` would repeat `<pid>-<ms>` here, and the call not be crashed).
            let restarted = store.clone().with_node(Node {
                node_id: "node-a".into(),
                instance_id: format!("{}-restarted", std::process::id()),
            });
            let closed = restarted
                .close_open_calls(super::super::OpenCalls::Crashed, "crashed", 5_000)
                .await
                .unwrap();
            assert_eq!(closed, ["CA9"]);
            let rows = store.outbox_events(Some("CA9")).await.unwrap();
            assert_eq!(rows.len(), 2);
            let ended = body(&rows[1]);
            assert_eq!(
                (ended.event_type.as_str(), &ended.data["ended"]),
                ("call.ended", &serde_json::json!("crashed"))
            );
        }
    }
}
