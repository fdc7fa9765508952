//! The ElevenLabs Conversational AI wire format the relay ([`super::ElevenLabsAgent`]) speaks:
//! the signed-URL lookup (REST), the audio format names, and the server → client messages.
//!
//! Sources: `fixtures/specs/elevenlabs/agent.asyncapi.yaml` (elevenlabs/packages, AsyncAPI 2.6.0)
//! and `shared/reference/providers.md` §5.

use serde::Deserialize;
use serde_json::Value;

use hark_codecs::SampleRate;

use crate::agent::{HttpBody, HttpRequest, ProviderFault, ResponseMode};

/// Default [`SignedUrlLookup::timeout_ms`]: 5 000 ms (the lookup must leave time for the
/// conversation to start before the caller hears silence for long).
pub const DEFAULT_SIGNED_URL_TIMEOUT_MS: u64 = 5_000;

/// The HTTP request's own timeout is this much later than the agent's deadline, ms, so the
/// agent's deadline (virtual-time testable) is the one that fires.
const REQUEST_TIMEOUT_MARGIN_MS: u64 = 1_000;

/// How a private agent's conversation URL is had: `GET /v1/convai/conversation/get-signed-url
/// ?agent_id=<id>` with header `xi-api-key: <key>` → `200 {"signed_url":"wss://…"}`
/// (`shared/reference/providers.md` §5; errors: 401 bad key, 422 bad agent id, 429 busy).
#[derive(Clone, PartialEq, Eq)]
pub struct SignedUrlLookup {
    /// The lookup's absolute URL with the agent id, e.g.
    /// `https://api.elevenlabs.io/v1/convai/conversation/get-signed-url?agent_id=…`.
    pub url: String,
    /// `xi-api-key`.
    pub api_key: String,
    /// The agent gives up when the whole answer has not arrived within this many ms of the
    /// request (default [`DEFAULT_SIGNED_URL_TIMEOUT_MS`]).
    pub timeout_ms: u64,
}

impl std::fmt::Debug for SignedUrlLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("SignedUrlLookup")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl SignedUrlLookup {
    /// The HTTP request: `GET` with `xi-api-key` and `Accept: application/json`, the whole body
    /// as one message. Its own timeout is [`SignedUrlLookup::timeout_ms`] plus a second, so
    /// the agent's deadline fires first.
    pub fn request(&self) -> HttpRequest {
        HttpRequest {
            stage: crate::agent::STAGE_ELEVENLABS_SIGNED_URL,
            method: "GET".to_string(),
            url: self.url.clone(),
            headers: vec![
                ("xi-api-key".to_string(), self.api_key.clone()),
                ("Accept".to_string(), "application/json".to_string()),
            ],
            body: HttpBody::Empty,
            response: ResponseMode::Whole,
            timeout_ms: Some(self.timeout_ms + REQUEST_TIMEOUT_MARGIN_MS),
            // Any type: the answer's parser judges it (`signed_url_bad_answer`).
            accept: Vec::new(),
            sign: None,
        }
    }

    /// The metric label of a failed lookup pipe: `signed_url_http_<status>` when ElevenLabs
    /// refused it, else `signed_url_connect` (no answer came: refused connection, DNS, TLS,
    /// broken connection). The agent's own deadline is `signed_url_timeout` and an unusable
    /// answer `signed_url_bad_answer`.
    pub fn fault_label(fault: &ProviderFault) -> String {
        // One request, never an open session: anything but a status is "connect".
        format!("signed_url_{}", fault.session_label(false))
    }
}

/// The `signed_url` of a lookup's 2xx answer `body` (`{"signed_url":"wss://…"}`), when it is
/// JSON with a `ws://` or `wss://` `signed_url`; the URL is opaque and used verbatim.
pub fn parse_signed_url(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Answer {
        signed_url: String,
    }
    let a: Answer = serde_json::from_str(body).ok()?;
    (a.signed_url.starts_with("wss://") || a.signed_url.starts_with("ws://"))
        .then_some(a.signed_url)
}

/// An ElevenLabs agent audio format (`AudioFormat` / `UserInputAudioFormat` in the AsyncAPI
/// spec). PCM is signed 16-bit little-endian mono, headerless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// `ulaw_8000`: G.711 μ-law at 8 kHz, Twilio's own format.
    Ulaw8000,
    /// `pcm_<rate>`: 8000, 16000, 22050, 24000, 44100 or 48000 Hz.
    Pcm(SampleRate),
}

impl AudioFormat {
    /// Parses a format name; `None` for names the spec does not list.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "ulaw_8000" {
            return Some(AudioFormat::Ulaw8000);
        }
        let hz: u32 = s.strip_prefix("pcm_")?.parse().ok()?;
        hark_codecs::resample::SUPPORTED_RATES
            .contains(&hz)
            .then_some(AudioFormat::Pcm(SampleRate(hz)))
    }

    /// The format's name as ElevenLabs writes it.
    pub fn name(self) -> String {
        match self {
            AudioFormat::Ulaw8000 => "ulaw_8000".to_string(),
            AudioFormat::Pcm(r) => format!("pcm_{}", r.hz()),
        }
    }
}

// Server → client messages (AsyncAPI `AgentMessages.publish`), parsed leniently: unknown
// types and fields are ignored, `event_id`s optional where older docs omit them.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ServerMessage {
    ConversationInitiationMetadata {
        conversation_initiation_metadata_event: Metadata,
    },
    Audio {
        audio_event: AudioEvent,
    },
    Interruption {
        #[serde(default)]
        interruption_event: Option<EventId>,
    },
    Ping {
        ping_event: EventId,
    },
    UserTranscript {
        user_transcription_event: UserTranscription,
    },
    AgentResponse {
        agent_response_event: AgentResponse,
    },
    AgentResponseCorrection {
        agent_response_correction_event: Correction,
    },
    ClientToolCall {
        client_tool_call: ToolCall,
    },
    Error {
        error_event: ErrorEvent,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
pub(super) struct Metadata {
    #[serde(default)]
    pub(super) conversation_id: String,
    pub(super) agent_output_audio_format: String,
    pub(super) user_input_audio_format: String,
}

#[derive(Deserialize)]
pub(super) struct AudioEvent {
    pub(super) audio_base_64: String,
    #[serde(default)]
    pub(super) event_id: Option<i64>,
    #[serde(default)]
    pub(super) alignment: Option<Alignment>,
}

#[derive(Deserialize)]
pub(super) struct Alignment {
    #[serde(default)]
    pub(super) chars: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct EventId {
    #[serde(default)]
    pub(super) event_id: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct UserTranscription {
    pub(super) user_transcript: String,
}

#[derive(Deserialize)]
pub(super) struct AgentResponse {
    pub(super) agent_response: String,
}

#[derive(Deserialize)]
pub(super) struct Correction {
    pub(super) corrected_agent_response: String,
}

#[derive(Deserialize)]
pub(super) struct ToolCall {
    pub(super) tool_name: String,
    pub(super) tool_call_id: String,
    #[serde(default)]
    pub(super) parameters: Value,
}

#[derive(Deserialize)]
pub(super) struct ErrorEvent {
    #[serde(default)]
    pub(super) code: Option<i64>,
    #[serde(default)]
    pub(super) message: Option<String>,
    #[serde(default)]
    pub(super) error_type: Option<String>,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signed_url_answers_parse_and_the_key_stays_out_of_logs() {
        let url = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&token=t";
        let body = json!({ "signed_url": url }).to_string();
        assert_eq!(parse_signed_url(&body).as_deref(), Some(url));
        assert_eq!(
            parse_signed_url(r#"{"signed_url":"ws://127.0.0.1:9/x","extra":1}"#).as_deref(),
            Some("ws://127.0.0.1:9/x")
        );
        for bad in [
            "",
            "{}",
            "null",
            r#"{"signed_url":1}"#,
            r#"{"signed_url":"https://h/"}"#,
        ] {
            assert_eq!(parse_signed_url(bad), None, "{bad}");
        }
        let lookup = SignedUrlLookup {
            url: "https://h/v1/convai/conversation/get-signed-url?agent_id=a".into(),
            api_key: "xi-secret".into(),
            timeout_ms: 5_000,
        };
        assert!(!format!("{lookup:?}").contains("xi-secret"));
        let req = lookup.request();
        assert_eq!(req.timeout_ms, Some(6_000));
        assert_eq!(req.response, ResponseMode::Whole);
    }

    #[test]
    fn formats_parse_as_the_spec_lists_them() {
        assert_eq!(AudioFormat::parse("ulaw_8000"), Some(AudioFormat::Ulaw8000));
        for hz in [8000, 16000, 22050, 24000, 44100, 48000] {
            let f = AudioFormat::parse(&format!("pcm_{hz}"));
            assert_eq!(f, Some(AudioFormat::Pcm(SampleRate(hz))));
            assert_eq!(f.map(|f| f.name()), Some(format!("pcm_{hz}")));
        }
        for bad in ["pcm_11025", "mp3_44100", "ulaw_16000", "pcm_", ""] {
            assert_eq!(AudioFormat::parse(bad), None, "{bad}");
        }
    }
}
