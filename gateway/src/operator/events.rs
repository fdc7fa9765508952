//! Call events for the operator's backend: what hark POSTs to `HARK_EVENTS_URL`, so a
//! scheduler can update its database as a call starts, as each turn ends, and when it stops.
//!
//! Every event is one JSON object, the [`Envelope`]:
//!
//! ```json
//! {"id": "CA123:2", "type": "turn.ended", "call_sid": "CA123", "stream_sid": "MZ456",
//!  "seq": 2, "created_at": "2025-05-01T12:00:03.250Z", "data": { ... }}
//! ```
//!
//! - `id` is the idempotency key (also sent as the [`IDEMPOTENCY_HEADER`] header): delivery
//!   is at least once, so a backend that sees an `id` again answers 2xx and ignores it.
//! - `seq` numbers a call's events from 0 in the order they happened; they are delivered in
//!   that order (event `n + 1` only after `n` was delivered or given up).
//! - `data` is [`CallStarted`], [`TurnEnded`] or [`CallEnded`], by `type` ([`EventType`]).
//!
//! The body is fixed when the event is created and sent byte for byte the same on every
//! attempt; the signature headers ([`hark_engine::operator`]) are made afresh per attempt.
//! Delivery (retries, ordering, restarts) is [`super::delivery`]'s.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::store::{Latency, TurnRow};

/// The header carrying the event's `id` (the idempotency key).
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The header carrying the event's `type`, so a backend can route before parsing.
pub const EVENT_HEADER: &str = "X-Hark-Event";

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `call.started`: the call's media stream started (Twilio's `start`); data [`CallStarted`].
    CallStarted,
    /// `turn.ended`: a caller turn and its answer are over (once the caller's next turn ends,
    /// or the call ends); data [`TurnEnded`].
    TurnEnded,
    /// `call.ended`: the call's media stream ended (or was closed for a crashed or stopped
    /// hark); data [`CallEnded`].
    CallEnded,
    /// `call.recording`: a recording of the call completed after its `call.ended` was written
    /// (Twilio's recording callback usually comes after the call); data [`Recording`].
    CallRecording,
}

impl EventType {
    /// The wire name: `call.started`, `turn.ended`, `call.ended`, `call.recording`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CallStarted => "call.started",
            EventType::TurnEnded => "turn.ended",
            EventType::CallEnded => "call.ended",
            EventType::CallRecording => "call.recording",
        }
    }

    /// The type named `s`, if any.
    pub fn parse(s: &str) -> Option<EventType> {
        [
            EventType::CallStarted,
            EventType::TurnEnded,
            EventType::CallEnded,
            EventType::CallRecording,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// The JSON object POSTed for every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The idempotency key, unique per event: `"<call_sid>:<seq>"`. Also the
    /// [`IDEMPOTENCY_HEADER`] header.
    pub id: String,
    /// [`EventType::as_str`].
    #[serde(rename = "type")]
    pub event_type: String,
    /// Twilio's Call SID.
    pub call_sid: String,
    /// The Media Stream's SID, when known.
    pub stream_sid: Option<String>,
    /// The event's position among its call's events, from 0: the delivery order.
    pub seq: u64,
    /// When hark created the event, RFC 3339 UTC with milliseconds.
    pub created_at: String,
    /// The type's data: [`CallStarted`], [`TurnEnded`] or [`CallEnded`].
    pub data: Value,
}

/// `call.started`: the media stream started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStarted {
    /// Caller (E.164 or `client:…`), from the call record or the stream's `From` parameter.
    pub from: Option<String>,
    /// Callee.
    pub to: Option<String>,
    /// Twilio's `Direction` (`outbound-api` for calls placed with `POST /calls`), when known.
    pub direction: Option<String>,
    /// The agent asked for (`POST /calls`' `agent`, or the stream's `agent` parameter).
    pub agent: Option<String>,
    /// The stream's `customParameters` (`<Parameter>`s), a name repeated becoming an array.
    pub parameters: Value,
}

/// `turn.ended`: one caller turn and the answer to it. Times are ms; media times count from
/// the stream's start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnEnded {
    /// The turn's position in its call, from 0.
    pub turn: Option<u32>,
    /// Media time of the caller's first voiced frame, ms.
    pub start_ms: i64,
    /// Media time at the end of the caller's last voiced frame, ms.
    pub end_ms: i64,
    /// The caller's words, when the agent transcribes (speech-to-text, a provider's
    /// transcript).
    pub caller_text: Option<String>,
    /// The agent's answer as the caller heard it: cut at a barge-in to what Twilio's mark
    /// echoes say was played.
    pub agent_text: Option<String>,
    /// The caller talked over the answer and hark stopped it.
    pub barge_in: bool,
    /// Agent audio the caller heard, ms.
    pub heard_ms: Option<i64>,
    /// Caller's last voiced frame → first agent audio sent, ms (`None`: no answer).
    pub latency_ms: Option<i64>,
    /// Caller's last voiced frame → the caller began hearing the answer (first mark echo),
    /// ms: voice-to-voice at the phone.
    pub heard_latency_ms: Option<i64>,
    /// Speech-to-text: turn end → final transcript, ms (cascade).
    pub stt_ms: Option<i64>,
    /// LLM time to first token, ms (cascade).
    pub llm_ttft_ms: Option<i64>,
    /// TTS time to first audio byte, ms (cascade).
    pub tts_ttfb_ms: Option<i64>,
    /// Speech-to-speech providers: their end of turn → first answer audio, ms.
    pub first_audio_ms: Option<i64>,
}

impl From<&TurnRow> for TurnEnded {
    fn from(t: &TurnRow) -> Self {
        TurnEnded {
            turn: t.index,
            start_ms: t.user_start_ms,
            end_ms: t.user_end_ms,
            caller_text: t.text.clone(),
            agent_text: t.agent_text.clone(),
            barge_in: t.interrupted,
            heard_ms: t.heard_ms,
            latency_ms: t.latency_ms,
            heard_latency_ms: t.heard_latency_ms,
            stt_ms: t.stt_ms,
            llm_ttft_ms: t.llm_ttft_ms,
            tts_ttfb_ms: t.tts_ttfb_ms,
            first_audio_ms: t.first_audio_ms,
        }
    }
}

/// Who said a [`TranscriptLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// The person on the phone.
    Caller,
    /// The agent (as heard).
    Agent,
}

/// One line of a call's transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptLine {
    /// The caller turn the line belongs to (an answer belongs to the turn it answers).
    pub turn: Option<u32>,
    /// Who spoke.
    pub role: Speaker,
    /// The words (the agent's: as heard).
    pub text: String,
    /// Media time the words began, ms: the caller's first voiced frame; for the agent, the
    /// first audio of the answer (the turn's end when hark has no latency figure).
    pub at_ms: i64,
    /// Agent lines: the caller cut the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<bool>,
}

impl TranscriptLine {
    /// The lines of `turns` (in order): per turn, the caller's words then the answer's.
    pub fn of(turns: &[TurnRow]) -> Vec<TranscriptLine> {
        let mut out = Vec::with_capacity(turns.len() * 2);
        for t in turns {
            if let Some(text) = t.text.as_ref().filter(|s| !s.is_empty()) {
                out.push(TranscriptLine {
                    turn: t.index,
                    role: Speaker::Caller,
                    text: text.clone(),
                    at_ms: t.user_start_ms,
                    interrupted: None,
                });
            }
            if let Some(text) = t.agent_text.as_ref().filter(|s| !s.is_empty()) {
                out.push(TranscriptLine {
                    turn: t.index,
                    role: Speaker::Agent,
                    text: text.clone(),
                    at_ms: t.user_end_ms + t.latency_ms.unwrap_or(0),
                    interrupted: Some(t.interrupted),
                });
            }
        }
        out
    }
}

/// A recording of the call (Twilio's recording status callbacks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    /// `RecordingSid` (`RE…`).
    pub recording_sid: String,
    /// `RecordingStatus`: `in-progress`, `completed`, `absent`.
    pub status: Option<String>,
    /// `RecordingUrl` as Twilio sent it (append `.mp3` or `.wav` for the media).
    pub url: Option<String>,
    /// `RecordingDuration`, s.
    pub duration_s: Option<i64>,
}

/// `call.ended`: the media stream ended; everything the record knows about the call then.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallEnded {
    /// Why the stream ended: `closed: Stopped` (Twilio's `stop`), `peer closed`,
    /// `transferred to …`, `failed: …`, `shutdown` (cut by hark's shutdown), `crashed` (a hark
    /// that died mid-call, closed at its next start), possibly followed by failed transfers.
    pub ended: String,
    /// The engine's summary (`duration_ms`, `inbound_ms`, `sent_ms`, `turns`, `barge_ins`,
    /// `malformed`, `ended`), as `GET /calls/{sid}` shows it.
    pub summary: Value,
    /// The call's latest Twilio status (status callbacks), or `completed` for a call without
    /// them; `None` if unknown.
    pub status: Option<String>,
    /// Answering machine detection's result (`human`, `machine_start`, …), when Twilio sent it.
    pub answered_by: Option<String>,
    /// Twilio's `Direction`, when known.
    pub direction: Option<String>,
    /// Caller.
    pub from: Option<String>,
    /// Callee.
    pub to: Option<String>,
    /// The agent asked for.
    pub agent: Option<String>,
    /// The whole conversation, turn by turn.
    pub transcript: Vec<TranscriptLine>,
    /// Latency figures over the turns, ms.
    pub latency: Latency,
    /// The URL of the call's recording (the latest completed one, else the latest with a
    /// URL), when there is one by the time the call ended.
    pub recording_url: Option<String>,
    /// Every recording known by then.
    pub recordings: Vec<Recording>,
    /// The call's audio recorded by hark (`HARK_RECORD`), as the summary's `audio` has it
    /// (`url`, `file`, `duration_ms`, `bytes`, `lag_ms`), when it was recorded.
    #[serde(default)]
    pub audio: Option<Value>,
}

/// Unix time `ms` as RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.000Z`).
pub fn rfc3339(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days: days since 1970-01-01 → proleptic Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from Python's `datetime.fromtimestamp(ms / 1000, timezone.utc)`.
    #[test]
    fn rfc3339_matches_an_independent_calendar() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_000, "2023-11-14T22:13:20.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_164_800_123, "2024-02-29T00:00:00.123Z"),
            (-1000, "1969-12-31T23:59:59.000Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(ms), want, "{ms}");
        }
    }

    #[test]
    fn types_round_trip_and_turns_become_lines() {
        for t in [
            EventType::CallStarted,
            EventType::TurnEnded,
            EventType::CallEnded,
        ] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("call.paused"), None);
        let turns = [
            TurnRow {
                index: Some(0),
                user_start_ms: 1000,
                user_end_ms: 2000,
                latency_ms: Some(600),
                text: Some("Hi.".into()),
                agent_text: Some("Hello!".into()),
                ..TurnRow::default()
            },
            TurnRow {
                index: Some(1),
                user_start_ms: 5000,
                user_end_ms: 6000,
                interrupted: true,
                agent_text: Some("Well".into()),
                ..TurnRow::default()
            },
        ];
        let lines = TranscriptLine::of(&turns);
        let v = serde_json::to_value(&lines).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"turn": 0, "role": "caller", "text": "Hi.", "at_ms": 1000},
                {"turn": 0, "role": "agent", "text": "Hello!", "at_ms": 2600, "interrupted": false},
                {"turn": 1, "role": "agent", "text": "Well", "at_ms": 6000, "interrupted": true},
            ])
        );
        let t = TurnEnded::from(&turns[1]);
        assert!(t.barge_in && t.caller_text.is_none());
    }
}
