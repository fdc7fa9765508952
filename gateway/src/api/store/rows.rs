//! The records written ([`NewCall`], [`StatusEvent`], [`StreamEvent`], [`RecordingEvent`],
//! [`StoredConversationEvent`], [`TurnRow`]) and read ([`CallDetail`], [`CallSummaryRow`],
//! [`TimelineEntry`], [`RecordingRow`], [`Latency`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
/// ([`TurnLog`](super::super::turns::TurnLog) builds it), what the recorder queues, what the store writes to
/// `turns` and reads back for `GET /calls/{sid}`. Times are ms, signed as SQLite stores them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TurnRow {
    /// The turn's position in its call, from 0 ([`TurnLog`](super::super::turns::TurnLog) numbers them).
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
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
    /// The call's audio recorded by hark (the summary's `audio`: `url`, `file`,
    /// `duration_ms`, `bytes`, `lag_ms`; see [`crate::recording::AudioInfo`]), when it was.
    pub audio: Option<Value>,
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
}
