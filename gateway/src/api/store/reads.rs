//! The reads behind `GET /calls` and `GET /calls/{sid}`, and the stored Conversations
//! webhooks.

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{CallDetail, CallSummaryRow, Latency, RecordingRow, Store, TimelineEntry, TurnRow};

/// A JSON text column as a value (`null` when absent or not JSON).
fn json_col(row: &AnyRow, col: &str) -> Result<Value, sqlx::Error> {
    let s: Option<String> = row.try_get(col)?;
    Ok(s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null))
}

/// A `calls` row as its summary.
fn summary_row(row: &AnyRow) -> Result<CallSummaryRow, sqlx::Error> {
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

/// The stored turns of `call_sid`, in media-time order, read through `ex` (the pool, or an
/// open transaction that sees its own writes).
pub(super) async fn turns_of<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    call_sid: &str,
) -> Result<Vec<TurnRow>, sqlx::Error> {
    sqlx::query(
        "SELECT turn_index, user_start_ms, user_end_ms, latency_ms, interrupted, heard_ms, text,
                agent_text, heard_latency_ms, stt_ms, llm_ttft_ms, tts_ttfb_ms, first_audio_ms
         FROM turns WHERE call_sid = $1 ORDER BY user_start_ms, id",
    )
    .bind(call_sid)
    .fetch_all(ex)
    .await?
    .iter()
    .map(|r| {
        Ok(TurnRow {
            index: r
                .try_get::<Option<i64>, _>("turn_index")?
                .and_then(|i| u32::try_from(i).ok()),
            user_start_ms: r.try_get("user_start_ms")?,
            user_end_ms: r.try_get("user_end_ms")?,
            latency_ms: r.try_get("latency_ms")?,
            interrupted: r.try_get::<i64, _>("interrupted")? != 0,
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
    .collect()
}

/// The recordings of `call_sid`, oldest update first, read through `ex`.
pub(super) async fn recordings_of<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    call_sid: &str,
) -> Result<Vec<RecordingRow>, sqlx::Error> {
    sqlx::query(
        "SELECT recording_sid, status, url, duration_s, channels, source, track, start_time
         FROM recordings WHERE call_sid = $1 ORDER BY updated_at, recording_sid",
    )
    .bind(call_sid)
    .fetch_all(ex)
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
    .collect()
}

impl Store {
    /// Everything about one call, or `None`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn call(&self, call_sid: &str) -> Result<Option<CallDetail>, sqlx::Error> {
        let Some(row) = sqlx::query("SELECT * FROM calls WHERE call_sid = $1")
            .bind(call_sid)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let call = summary_row(&row)?;
        let timeline = sqlx::query(
            "SELECT source, status, sequence_number, answered_by, twilio_timestamp, received_at, detail
             FROM call_events WHERE call_sid = $1 ORDER BY id",
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
        let turns = turns_of(&self.pool, call_sid).await?;
        let recordings = recordings_of(&self.pool, call_sid).await?;
        let latencies: Vec<i64> = turns.iter().filter_map(|t| t.latency_ms).collect();
        let summary: serde_json::Value = json_col(&row, "summary")?;
        Ok(Some(CallDetail {
            call,
            parameters: json_col(&row, "parameters")?,
            stream_parameters: json_col(&row, "stream_params")?,
            audio: summary.get("audio").cloned(),
            summary,
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
            "SELECT * FROM calls WHERE ($1 IS NULL OR status = $1)
             ORDER BY created_at DESC, call_sid LIMIT $2",
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
            "SELECT route, event_type, params FROM conversation_events WHERE conversation_sid = $1 ORDER BY id",
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
