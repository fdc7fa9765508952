//! The OpenAI Realtime wire format of [`super::RealtimeAgent`]: the client events hark sends
//! and the reading of the server events it acts on.
//!
//! Shapes: async-openai's Realtime types (0.43, feature `realtime-types`: types only, no
//! WebSocket client), which follow the GA `RealtimeClientEvent*` / `RealtimeServerEvent*`
//! schemas of OpenAI's spec (vendored as `fixtures/specs/openai/openapi.yaml`); the beta
//! names are those of `fixtures/specs/openai/openapi-manual_spec-2025-04-29.yaml`.
//!
//! ## Client events
//! `response.cancel`, `conversation.item.truncate` and `input_audio_buffer.commit` are
//! async-openai's types. Four stay hand-built, each for a reason:
//! - `input_audio_buffer.append` is on the audio path (50 a second): written straight into
//!   one string ([`append`]); a test checks that the type reads it back.
//! - `session.update` ([`super::RealtimeConfig::session_update`]): the GA `Session` type
//!   requires `audio.output.voice` and `speed` and the three `server_vad` numbers, which hark
//!   leaves to the server unless configured, and it has no beta shape.
//! - `response.create`: `RealtimeClientEventResponseCreate` writes a bare request as
//!   `"response": null` (the spec has no null there), and `RealtimeResponseCreateParams`
//!   requires every field (`audio`, `conversation`, `input`, `max_output_tokens`, …), where the
//!   greeting sets only `instructions`.
//! - `conversation.item.create` of a `function_call_output` (a tool's result): the type's
//!   item requires a `status`, which the spec's item does not (`type`, `call_id`, `output`).
//!
//! ## Server events
//! In a GA session each event is read with `RealtimeServerEvent` first. A beta session's
//! names (`response.audio.delta`, …; OpenAI's beta API behind `OpenAI-Beta: realtime=v1`)
//! are not in those types, and a beta `conversation.item.input_audio_transcription.completed`
//! has no `usage`, which the type requires: beta sessions, and any event the types refuse, are
//! read by hark's own tolerant reading ([`Lenient`]: the fields hark acts on, beta names as
//! aliases, unknown types and fields ignored). Each has a test with the spec's JSON.
//!
//! Function calls are read from `response.done`: its `output` items of type `function_call`
//! (`call_id`, `name`, `arguments`), all the calls of the response at once.

use async_openai::types::realtime::{
    RealtimeAudioFormats, RealtimeClientEvent, RealtimeClientEventConversationItemTruncate,
    RealtimeClientEventInputAudioBufferCommit, RealtimeClientEventResponseCancel,
    RealtimeConversationItem, RealtimeResponseStatus, RealtimeServerEvent, Session,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ApiVersion, RealtimeConfig, TurnDetection};
use crate::agents::http_tools::HttpTools;

impl TurnDetection {
    /// `turn_detection` of the session: `server_vad` / `semantic_vad` objects (the server
    /// creates and interrupts responses), or `null` (hark's turn detection).
    fn json(&self) -> Value {
        match self {
            TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms,
                silence_duration_ms,
            } => {
                let mut m = Map::new();
                m.insert("type".into(), json!("server_vad"));
                if let Some(t) = threshold {
                    m.insert("threshold".into(), json!(t));
                }
                if let Some(p) = prefix_padding_ms {
                    m.insert("prefix_padding_ms".into(), json!(p));
                }
                if let Some(s) = silence_duration_ms {
                    m.insert("silence_duration_ms".into(), json!(s));
                }
                m.insert("create_response".into(), json!(true));
                m.insert("interrupt_response".into(), json!(true));
                Value::Object(m)
            }
            TurnDetection::SemanticVad { eagerness } => json!({
                "type": "semantic_vad", "eagerness": eagerness,
                "create_response": true, "interrupt_response": true
            }),
            TurnDetection::Hark => Value::Null,
        }
    }
}

impl RealtimeConfig {
    /// The `session.update` event (without `event_id`): μ-law both ways (GA `audio/pcmu`,
    /// beta `g711_ulaw`), the turn detection, the caller's transcription model, the voice and
    /// the instructions; what is `None` is left to the server.
    pub fn session_update(&self) -> Value {
        let mut session = Map::new();
        match self.api {
            ApiVersion::Ga => {
                session.insert("type".into(), json!("realtime"));
                session.insert("model".into(), json!(self.model));
                session.insert("output_modalities".into(), json!(["audio"]));
                let mut input = Map::new();
                input.insert("format".into(), json!({"type": "audio/pcmu"}));
                input.insert("turn_detection".into(), self.turn_detection.json());
                if let Some(m) = &self.transcription_model {
                    input.insert("transcription".into(), json!({ "model": m }));
                }
                let mut output = Map::new();
                output.insert("format".into(), json!({"type": "audio/pcmu"}));
                if let Some(v) = &self.voice {
                    output.insert("voice".into(), json!(v));
                }
                session.insert(
                    "audio".into(),
                    json!({"input": Value::Object(input), "output": Value::Object(output)}),
                );
            }
            ApiVersion::Beta => {
                session.insert("modalities".into(), json!(["audio", "text"]));
                session.insert("input_audio_format".into(), json!("g711_ulaw"));
                session.insert("output_audio_format".into(), json!("g711_ulaw"));
                session.insert("turn_detection".into(), self.turn_detection.json());
                if let Some(m) = &self.transcription_model {
                    session.insert("input_audio_transcription".into(), json!({ "model": m }));
                }
                if let Some(v) = &self.voice {
                    session.insert("voice".into(), json!(v));
                }
            }
        }
        if let Some(i) = &self.instructions {
            session.insert("instructions".into(), json!(i));
        }
        if !self.tools.tools.is_empty() {
            session.insert("tools".into(), functions(&self.tools));
            session.insert("tool_choice".into(), json!("auto"));
        }
        json!({"type": "session.update", "session": Value::Object(session)})
    }
}

/// The session's `tools`: each operator tool as a `function` (the same shape in GA and beta).
fn functions(tools: &HttpTools) -> Value {
    tools
        .tools
        .iter()
        .map(|t| {
            json!({"type": "function", "name": t.name, "description": t.description,
                   "parameters": t.parameters.json()})
        })
        .collect()
}

/// `input_audio_buffer.append` of `mulaw` (base64 in `audio`, 160 bytes = 20 ms), written
/// into one string without an intermediate value; no `event_id`.
pub(super) fn append(mulaw: &[u8]) -> String {
    let mut s = String::with_capacity(48 + mulaw.len().div_ceil(3) * 4);
    s.push_str("{\"type\":\"input_audio_buffer.append\",\"audio\":\"");
    B64.encode_string(mulaw, &mut s);
    s.push_str("\"}");
    s
}

/// A client event hark sends with an `event_id` (see the module doc for which are
/// async-openai's types).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ClientEvent {
    /// `session.update`: [`RealtimeConfig::session_update`].
    SessionUpdate(Value),
    /// `input_audio_buffer.commit` (hark's turn detection: the caller's turn ended).
    Commit,
    /// `response.create`, with `response.instructions` (the greeting) or bare.
    ResponseCreate {
        /// Instructions for this response only.
        instructions: Option<String>,
    },
    /// `response.cancel` of a response.
    Cancel {
        /// `response_id`.
        response_id: String,
    },
    /// `conversation.item.create` of a `function_call_output`: a tool's result.
    FunctionCallOutput {
        /// The function call's `call_id`.
        call_id: String,
        /// The result (JSON text, or an error text).
        output: String,
    },
    /// `conversation.item.truncate` of content part 0 of an assistant audio item.
    Truncate {
        /// `item_id`.
        item_id: String,
        /// Audio kept, ms (what the caller heard, at most what the item generated).
        audio_end_ms: u32,
    },
}

impl ClientEvent {
    /// The event as JSON text, with `event_id`.
    pub(super) fn into_text(self, event_id: String) -> String {
        let typed = match self {
            ClientEvent::SessionUpdate(mut v) => {
                if let Some(m) = v.as_object_mut() {
                    m.insert("event_id".into(), json!(event_id));
                }
                return v.to_string();
            }
            ClientEvent::ResponseCreate { instructions } => {
                let mut v = json!({"type": "response.create", "event_id": event_id});
                if let Some(i) = instructions {
                    v["response"] = json!({ "instructions": i });
                }
                return v.to_string();
            }
            ClientEvent::FunctionCallOutput { call_id, output } => {
                let item = json!({"type": "function_call_output", "call_id": call_id,
                                  "output": output});
                let v = json!({"type": "conversation.item.create", "event_id": event_id,
                               "item": item});
                return v.to_string();
            }
            ClientEvent::Commit => RealtimeClientEvent::InputAudioBufferCommit(
                RealtimeClientEventInputAudioBufferCommit {
                    event_id: Some(event_id),
                },
            ),
            ClientEvent::Cancel { response_id } => {
                RealtimeClientEvent::ResponseCancel(RealtimeClientEventResponseCancel {
                    event_id: Some(event_id),
                    response_id: Some(response_id),
                })
            }
            ClientEvent::Truncate {
                item_id,
                audio_end_ms,
            } => RealtimeClientEvent::ConversationItemTruncate(
                RealtimeClientEventConversationItemTruncate {
                    event_id: Some(event_id),
                    item_id,
                    content_index: 0,
                    audio_end_ms,
                },
            ),
        };
        // Structs of strings and integers: serialising them cannot fail.
        serde_json::to_string(&typed).expect("a Realtime client event serialises to JSON")
    }
}

/// A server event as the agent acts on it (GA names; beta aliases in [`Lenient`]).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ServerEvent {
    /// `session.created` (`updated: false`, the server's defaults) or `session.updated` (the
    /// answer to hark's update), with the output audio format when stated (`audio/pcmu`,
    /// beta `g711_ulaw`, …).
    Session {
        /// `session.updated`.
        updated: bool,
        /// `audio.output.format.type` (beta `output_audio_format`).
        output_format: Option<String>,
    },
    /// `input_audio_buffer.speech_started`.
    SpeechStarted,
    /// `input_audio_buffer.speech_stopped`.
    SpeechStopped,
    /// `response.created`.
    ResponseCreated {
        /// `response.id`.
        id: String,
    },
    /// `response.done`.
    ResponseDone {
        /// `response.id`.
        id: String,
        /// `status_details` as JSON text, when `status` is `failed`.
        failed: Option<String>,
        /// The response's function calls (`output` items of type `function_call`), in order.
        calls: Vec<FunctionCall>,
    },
    /// `response.output_audio.delta`: base64 μ-law (the session's format).
    AudioDelta {
        /// `response_id`.
        response_id: String,
        /// `item_id`.
        item_id: String,
        /// `delta`, base64.
        delta: String,
    },
    /// `response.output_audio.done`.
    AudioDone {
        /// `item_id`.
        item_id: String,
    },
    /// `response.output_audio_transcript.delta`.
    TranscriptDelta {
        /// `item_id`.
        item_id: String,
        /// `delta`.
        delta: String,
    },
    /// `response.output_audio_transcript.done`.
    TranscriptDone {
        /// `item_id`.
        item_id: String,
        /// `transcript`.
        transcript: String,
    },
    /// `conversation.item.input_audio_transcription.completed`: the caller's words.
    UserTranscript {
        /// `transcript`.
        transcript: String,
    },
    /// `error`.
    Error {
        /// `error.type`.
        kind: Option<String>,
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: Option<String>,
    },
    /// Any other event.
    Other,
}

/// A function call of the model (an `output` item of `response.done`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FunctionCall {
    /// `call_id`: the `function_call_output` answers it.
    pub(super) call_id: String,
    /// `name`.
    pub(super) name: String,
    /// `arguments`, JSON text.
    pub(super) arguments: String,
}

/// Reads one server event (module doc): in a GA session with `RealtimeServerEvent` first,
/// then (a beta session, or what the type refuses) with [`Lenient`].
///
/// # Errors
/// The tolerant reading's error: not JSON, no `type`, or a field hark acts on missing or of
/// the wrong type.
pub(super) fn parse_server_event(text: &str, api: ApiVersion) -> serde_json::Result<ServerEvent> {
    if api == ApiVersion::Ga
        && let Ok(e) = serde_json::from_str::<RealtimeServerEvent>(text)
    {
        return Ok(from_spec(e));
    }
    let e: Lenient = serde_json::from_str(text)?;
    Ok(e.into_event(api))
}

/// The wire name of a GA audio format.
fn format_name(f: &RealtimeAudioFormats) -> &'static str {
    match f {
        RealtimeAudioFormats::PCMAudioFormat { .. } => "audio/pcm",
        RealtimeAudioFormats::PCMUAudioFormat => "audio/pcmu",
        RealtimeAudioFormats::PCMAAudioFormat => "audio/pcma",
    }
}

fn output_format(s: &Session) -> Option<String> {
    match s {
        Session::RealtimeSession(s) => s
            .audio
            .as_ref()
            .map(|a| format_name(&a.output.format).to_string()),
        Session::RealtimeTranscriptionSession(_) => None,
    }
}

/// What the agent takes from a GA event read with the spec's types.
fn from_spec(e: RealtimeServerEvent) -> ServerEvent {
    use RealtimeServerEvent as R;
    match e {
        R::SessionCreated(s) => ServerEvent::Session {
            updated: false,
            output_format: output_format(&s.session),
        },
        R::SessionUpdated(s) => ServerEvent::Session {
            updated: true,
            output_format: output_format(&s.session),
        },
        R::InputAudioBufferSpeechStarted(_) => ServerEvent::SpeechStarted,
        R::InputAudioBufferSpeechStopped(_) => ServerEvent::SpeechStopped,
        R::ResponseCreated(r) => ServerEvent::ResponseCreated { id: r.response.id },
        R::ResponseDone(r) => {
            let failed = matches!(r.response.status, RealtimeResponseStatus::Failed).then(|| {
                serde_json::to_value(&r.response.status_details)
                    .unwrap_or_default()
                    .to_string()
            });
            let calls = r
                .response
                .output
                .into_iter()
                .filter_map(|item| match item {
                    RealtimeConversationItem::FunctionCall(f) => Some(FunctionCall {
                        call_id: f.call_id,
                        name: f.name,
                        arguments: f.arguments,
                    }),
                    _ => None,
                })
                .collect();
            ServerEvent::ResponseDone {
                id: r.response.id,
                failed,
                calls,
            }
        }
        R::ResponseOutputAudioDelta(d) => ServerEvent::AudioDelta {
            response_id: d.response_id,
            item_id: d.item_id,
            delta: d.delta,
        },
        R::ResponseOutputAudioDone(d) => ServerEvent::AudioDone { item_id: d.item_id },
        R::ResponseOutputAudioTranscriptDelta(d) => ServerEvent::TranscriptDelta {
            item_id: d.item_id,
            delta: d.delta,
        },
        R::ResponseOutputAudioTranscriptDone(d) => ServerEvent::TranscriptDone {
            item_id: d.item_id,
            transcript: d.transcript,
        },
        R::ConversationItemInputAudioTranscriptionCompleted(t) => ServerEvent::UserTranscript {
            transcript: t.transcript,
        },
        R::Error(e) => ServerEvent::Error {
            kind: Some(e.error.r#type),
            code: e.error.code,
            message: Some(e.error.message),
        },
        _ => ServerEvent::Other,
    }
}

/// hark's tolerant reading of a server event: GA names with their beta aliases, only the
/// fields the agent acts on; unknown types and fields are ignored.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum Lenient {
    #[serde(rename = "session.updated")]
    SessionUpdated { session: Value },
    #[serde(rename = "session.created")]
    SessionCreated { session: Value },
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted,
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped,
    #[serde(rename = "response.created")]
    ResponseCreated { response: ResponseRef },
    #[serde(rename = "response.done")]
    ResponseDone { response: ResponseDone },
    #[serde(rename = "response.output_audio.delta", alias = "response.audio.delta")]
    AudioDelta {
        response_id: String,
        item_id: String,
        delta: String,
    },
    #[serde(rename = "response.output_audio.done", alias = "response.audio.done")]
    AudioDone { item_id: String },
    #[serde(
        rename = "response.output_audio_transcript.delta",
        alias = "response.audio_transcript.delta"
    )]
    TranscriptDelta { item_id: String, delta: String },
    #[serde(
        rename = "response.output_audio_transcript.done",
        alias = "response.audio_transcript.done"
    )]
    TranscriptDone { item_id: String, transcript: String },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    UserTranscript { transcript: String },
    #[serde(rename = "error")]
    Error { error: ErrorBody },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ResponseRef {
    id: String,
}

#[derive(Deserialize)]
struct ResponseDone {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    status_details: Option<Value>,
    #[serde(default)]
    output: Vec<Value>,
}

impl ResponseDone {
    /// The `function_call` items of `output` that have a `call_id` and a `name`.
    fn calls(&self) -> Vec<FunctionCall> {
        let text =
            |item: &Value, key: &str| item.get(key).and_then(Value::as_str).map(str::to_string);
        self.output
            .iter()
            .filter(|item| item.get("type").and_then(Value::as_str) == Some("function_call"))
            .filter_map(|item| {
                Some(FunctionCall {
                    call_id: text(item, "call_id")?,
                    name: text(item, "name")?,
                    arguments: text(item, "arguments").unwrap_or_default(),
                })
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl Lenient {
    fn into_event(self, api: ApiVersion) -> ServerEvent {
        let format = |session: &Value| {
            let f = match api {
                ApiVersion::Ga => session.pointer("/audio/output/format/type"),
                ApiVersion::Beta => session.get("output_audio_format"),
            };
            f.and_then(Value::as_str).map(str::to_string)
        };
        match self {
            Lenient::SessionUpdated { session } => ServerEvent::Session {
                updated: true,
                output_format: format(&session),
            },
            Lenient::SessionCreated { session } => ServerEvent::Session {
                updated: false,
                output_format: format(&session),
            },
            Lenient::SpeechStarted => ServerEvent::SpeechStarted,
            Lenient::SpeechStopped => ServerEvent::SpeechStopped,
            Lenient::ResponseCreated { response } => {
                ServerEvent::ResponseCreated { id: response.id }
            }
            Lenient::ResponseDone { response } => ServerEvent::ResponseDone {
                calls: response.calls(),
                id: response.id,
                failed: (response.status.as_deref() == Some("failed"))
                    .then(|| response.status_details.unwrap_or(Value::Null).to_string()),
            },
            Lenient::AudioDelta {
                response_id,
                item_id,
                delta,
            } => ServerEvent::AudioDelta {
                response_id,
                item_id,
                delta,
            },
            Lenient::AudioDone { item_id } => ServerEvent::AudioDone { item_id },
            Lenient::TranscriptDelta { item_id, delta } => {
                ServerEvent::TranscriptDelta { item_id, delta }
            }
            Lenient::TranscriptDone {
                item_id,
                transcript,
            } => ServerEvent::TranscriptDone {
                item_id,
                transcript,
            },
            Lenient::UserTranscript { transcript } => ServerEvent::UserTranscript { transcript },
            Lenient::Error { error } => ServerEvent::Error {
                kind: error.kind,
                code: error.code,
                message: error.message,
            },
            Lenient::Other => ServerEvent::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> bool {
        serde_json::from_str::<RealtimeServerEvent>(text).is_ok()
    }

    fn client(text: &str) -> RealtimeClientEvent {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn typed_client_events() {
        let t = ClientEvent::Cancel {
            response_id: "resp_1".into(),
        }
        .into_text("hark_1".into());
        assert!(matches!(client(&t), RealtimeClientEvent::ResponseCancel(c)
            if c.response_id.as_deref() == Some("resp_1") && c.event_id.as_deref() == Some("hark_1")));
        let t = ClientEvent::Truncate {
            item_id: "item_1".into(),
            audio_end_ms: 1_234,
        }
        .into_text("hark_2".into());
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"type": "conversation.item.truncate", "event_id": "hark_2", "item_id": "item_1",
                   "content_index": 0, "audio_end_ms": 1_234})
        );
        let t = ClientEvent::Commit.into_text("hark_3".into());
        assert!(matches!(
            client(&t),
            RealtimeClientEvent::InputAudioBufferCommit(_)
        ));
    }

    #[test]
    fn hand_built_client_events() {
        let a = append(&[0xff; 160]);
        let RealtimeClientEvent::InputAudioBufferAppend(e) = client(&a) else {
            panic!("not an append: {a}")
        };
        assert_eq!(B64.decode(e.audio).unwrap(), vec![0xff; 160]);
        let bare = ClientEvent::ResponseCreate { instructions: None }.into_text("hark_4".into());
        let v: Value = serde_json::from_str(&bare).unwrap();
        assert_eq!(v, json!({"type": "response.create", "event_id": "hark_4"}));
        let greet = ClientEvent::ResponseCreate {
            instructions: Some("Say hello.".into()),
        }
        .into_text("hark_5".into());
        let v: Value = serde_json::from_str(&greet).unwrap();
        assert_eq!(v["response"], json!({"instructions": "Say hello."}));
        let update = RealtimeConfig::default().session_update();
        let t = ClientEvent::SessionUpdate(update).into_text("hark_6".into());
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["event_id"].as_str()),
            (Some("session.update"), Some("hark_6"))
        );
    }

    /// The spec's GA examples are read with async-openai's types.
    #[test]
    fn ga_events_are_read_strictly() {
        let cases = [
            (
                r#"{"event_id":"event_4950","type":"response.output_audio.delta","response_id":"resp_001","item_id":"msg_008","output_index":0,"content_index":0,"delta":"Base64EncodedAudioDelta"}"#,
                ServerEvent::AudioDelta {
                    response_id: "resp_001".into(),
                    item_id: "msg_008".into(),
                    delta: "Base64EncodedAudioDelta".into(),
                },
            ),
            (
                r#"{"event_id":"event_1516","type":"input_audio_buffer.speech_started","audio_start_ms":1000,"item_id":"msg_003"}"#,
                ServerEvent::SpeechStarted,
            ),
            (
                r#"{"event_id":"event_890","type":"error","error":{"type":"invalid_request_error","code":"invalid_event","message":"The 'type' field is missing.","param":null,"event_id":"event_567"}}"#,
                ServerEvent::Error {
                    kind: Some("invalid_request_error".into()),
                    code: Some("invalid_event".into()),
                    message: Some("The 'type' field is missing.".into()),
                },
            ),
            (
                r#"{"event_id":"event_2122","type":"conversation.item.input_audio_transcription.completed","item_id":"msg_003","content_index":0,"transcript":"Hello, how are you?","usage":{"type":"tokens","total_tokens":48,"input_tokens":38,"input_token_details":{"text_tokens":10,"audio_tokens":28},"output_tokens":10}}"#,
                ServerEvent::UserTranscript {
                    transcript: "Hello, how are you?".into(),
                },
            ),
            (
                r#"{"event_id":"event_2","type":"session.updated","session":{"type":"realtime","object":"realtime.session","id":"sess_1","model":"gpt-realtime","output_modalities":["audio"],"instructions":"Be brief.","tools":[],"tool_choice":"auto","max_output_tokens":"inf","tracing":null,"truncation":"auto","prompt":null,"expires_at":0,"include":null,"audio":{"input":{"format":{"type":"audio/pcmu"},"transcription":{"model":"gpt-4o-mini-transcribe"},"noise_reduction":null,"turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,"silence_duration_ms":500,"idle_timeout_ms":null,"create_response":true,"interrupt_response":true}},"output":{"format":{"type":"audio/pcmu"},"voice":"marin","speed":1.0}}}}"#,
                ServerEvent::Session {
                    updated: true,
                    output_format: Some("audio/pcmu".into()),
                },
            ),
            (
                r#"{"event_id":"event_3","type":"response.done","response":{"object":"realtime.response","id":"resp_1","status":"failed","status_details":{"type":"failed","error":{"type":"server_error","code":"internal_error"}},"output":[],"conversation_id":"conv_1","output_modalities":["audio"],"max_output_tokens":"inf","audio":{"output":{"format":{"type":"audio/pcmu"},"voice":"marin"}},"usage":null,"metadata":null}}"#,
                ServerEvent::ResponseDone {
                    id: "resp_1".into(),
                    failed: Some(String::new()),
                    calls: vec![],
                },
            ),
        ];
        for (text, want) in cases {
            assert!(spec(text), "the GA types refuse {text}");
            let got = parse_server_event(text, ApiVersion::Ga).unwrap();
            match (&got, &want) {
                (
                    ServerEvent::ResponseDone {
                        id,
                        failed: Some(d),
                        ..
                    },
                    ServerEvent::ResponseDone { id: want_id, .. },
                ) => {
                    assert_eq!(id, want_id);
                    assert!(d.contains("internal_error"), "{d}");
                }
                _ => assert_eq!(got, want, "{text}"),
            }
        }
        let unknown = r#"{"event_id":"e","type":"rate_limits.updated","rate_limits":[]}"#;
        assert_eq!(
            parse_server_event(unknown, ApiVersion::Ga).unwrap(),
            ServerEvent::Other
        );
    }

    /// Beta names (the manual spec's examples) and the beta transcription without `usage`:
    /// the GA types refuse them, the tolerant reading takes them.
    #[test]
    fn beta_events_are_read_tolerantly() {
        let cases = [
            (
                r#"{"event_id":"event_4950","type":"response.audio.delta","response_id":"resp_001","item_id":"msg_008","output_index":0,"content_index":0,"delta":"Base64EncodedAudioDelta"}"#,
                ServerEvent::AudioDelta {
                    response_id: "resp_001".into(),
                    item_id: "msg_008".into(),
                    delta: "Base64EncodedAudioDelta".into(),
                },
            ),
            (
                r#"{"event_id":"event_4747","type":"response.audio_transcript.done","response_id":"resp_001","item_id":"msg_008","output_index":0,"content_index":0,"transcript":"Hello, how can I assist you today?"}"#,
                ServerEvent::TranscriptDone {
                    item_id: "msg_008".into(),
                    transcript: "Hello, how can I assist you today?".into(),
                },
            ),
            (
                r#"{"event_id":"event_2122","type":"conversation.item.input_audio_transcription.completed","item_id":"msg_003","content_index":0,"transcript":"Hello, how are you?"}"#,
                ServerEvent::UserTranscript {
                    transcript: "Hello, how are you?".into(),
                },
            ),
            (
                r#"{"event_id":"event_5","type":"session.updated","session":{"id":"sess_1","object":"realtime.session","model":"gpt-4o-realtime-preview","modalities":["audio","text"],"input_audio_format":"g711_ulaw","output_audio_format":"pcm16","turn_detection":null,"voice":"alloy"}}"#,
                ServerEvent::Session {
                    updated: true,
                    output_format: Some("pcm16".into()),
                },
            ),
        ];
        for (text, want) in &cases {
            assert!(!spec(text), "the GA types take {text}");
            assert_eq!(
                &parse_server_event(text, ApiVersion::Beta).unwrap(),
                want,
                "{text}"
            );
        }
        // A GA session that meets a beta-shaped event reads it the same way.
        assert_eq!(
            parse_server_event(cases[2].0, ApiVersion::Ga).unwrap(),
            cases[2].1
        );
        assert!(parse_server_event("not json", ApiVersion::Ga).is_err());
        assert!(
            parse_server_event(r#"{"type":"response.output_audio.delta"}"#, ApiVersion::Ga)
                .is_err()
        );
    }
    /// Tools are offered as functions; `response.done` gives the calls (GA strictly, beta
    /// tolerantly); the result goes back as a `function_call_output` item.
    #[test]
    fn function_calls_and_outputs() {
        use crate::agents::http_tools::{HttpTool, ToolSchema};
        let tool = HttpTool {
            name: "lookup_balance".into(),
            description: "The balance.".into(),
            parameters: ToolSchema::new(json!({"type": "object"})).unwrap(),
            url: "http://127.0.0.1:9/t".into(),
            timeout_ms: 1_000,
            filler: None,
            end_call_after: false,
        };
        let cfg = RealtimeConfig {
            tools: HttpTools {
                tools: vec![tool].into(),
                secret: None,
            },
            ..RealtimeConfig::default()
        };
        let update = cfg.session_update();
        assert_eq!(
            update["session"]["tools"],
            json!([{"type": "function", "name": "lookup_balance", "description": "The balance.",
                    "parameters": {"type": "object"}}])
        );
        assert_eq!(update["session"]["tool_choice"], "auto");
        assert!(
            RealtimeConfig::default().session_update()["session"]
                .get("tools")
                .is_none()
        );
        let call = FunctionCall {
            call_id: "call_1".into(),
            name: "lookup_balance".into(),
            arguments: r#"{"payerId":"p-42"}"#.into(),
        };
        let ga = r#"{"event_id":"event_3","type":"response.done","response":{"object":"realtime.response","id":"resp_1","status":"completed","status_details":null,"output":[{"id":"item_1","type":"function_call","object":"realtime.item","status":"completed","name":"lookup_balance","call_id":"call_1","arguments":"{\"payerId\":\"p-42\"}"}],"conversation_id":"conv_1","output_modalities":["audio"],"max_output_tokens":"inf","audio":{"output":{"format":{"type":"audio/pcmu"},"voice":"marin"}},"usage":null,"metadata":null}}"#;
        assert!(spec(ga), "the GA types refuse {ga}");
        let beta = r#"{"event_id":"event_3","type":"response.done","response":{"object":"realtime.response","id":"resp_1","status":"completed","output":[{"id":"item_1","object":"realtime.item","type":"function_call","status":"completed","name":"lookup_balance","call_id":"call_1","arguments":"{\"payerId\":\"p-42\"}"}]}}"#;
        for (text, api) in [(ga, ApiVersion::Ga), (beta, ApiVersion::Beta)] {
            assert_eq!(
                parse_server_event(text, api).unwrap(),
                ServerEvent::ResponseDone {
                    id: "resp_1".into(),
                    failed: None,
                    calls: vec![call.clone()],
                }
            );
        }
        let t = ClientEvent::FunctionCallOutput {
            call_id: "call_1".into(),
            output: r#"{"balance":12}"#.into(),
        }
        .into_text("hark_7".into());
        // The spec's item requires only `type`, `call_id` and `output` (the type wants more).
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(
            v,
            json!({"type": "conversation.item.create", "event_id": "hark_7",
                   "item": {"type": "function_call_output", "call_id": "call_1",
                            "output": "{\"balance\":12}"}})
        );
    }
}
