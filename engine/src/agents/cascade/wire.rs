//! The OpenAI-compatible wire formats the cascade agent speaks, as pure functions: request
//! builders (→ [`HttpRequest`]) and parsers of what comes back.
//!
//! The shapes are async-openai's types (0.43, features `chat-completion-types` and
//! `audio-types`: types only, no client, so no tokio and no HTTP stack), which follow OpenAI's
//! OpenAPI spec (vendored as `fixtures/specs/openai/openapi.yaml`):
//! `CreateChatCompletionRequest`, `CreateChatCompletionStreamResponse`,
//! `ChatCompletionMessageToolCallChunk`, `CreateTranscriptionResponseJson`,
//! `CreateTranscriptionResponseStreamEvent`, `CreateSpeechRequest`, `ErrorResponse`. The
//! transcription request stays a hand-built multipart form: async-openai's
//! `CreateTranscriptionRequest` has no serde form (its form writer needs the client feature).
//!
//! ## Where hark reads more than the types accept
//! Every answer is read with the strict type first. Some OpenAI-compatible servers send
//! messages those types refuse; only then a tolerant reading takes over, and each case has a
//! test with that server's JSON:
//! - chat chunks ([`parse_chat`]) are reduced to the fields hark reads and read again, so
//!   - a missing `id`, `object`, `created` or `model` does not matter (OpenVINO Model Server,
//!     openvinotoolkit/model_server#3553; Gemini's OpenAI endpoint, THU-MAIC/OpenMAIC#1556;
//!     TensorRT-Edge-LLM's server, NVIDIA/TensorRT-Edge-LLM#93);
//!   - nor does a value outside the enum of a field hark never reads (Groq's
//!     `"service_tier":"on_demand"`, 64bit/async-openai#457; a tool call's `"type":""` from a
//!     Gemini proxy, AstrBotDevs/AstrBot#6661);
//!   - a tool-call fragment without `index` takes its position in the array (Gemini,
//!     THU-MAIC/OpenMAIC#1556);
//!   - a `finish_reason` outside the spec's enum is kept as [`Finish::Other`] (vLLM `abort`,
//!     DeepSeek `insufficient_system_resource`, Mistral `model_length`), and `""` is none
//!     (SGLang, sgl-project/sglang#3912);
//!   - a `usage` that `CompletionUsage` refuses is no usage (LiteLLM's `{}` on every chunk,
//!     BerriAI/litellm#1571).
//!
//!   Anything else the type refuses is a provider fault ([`ChatFault::Shape`]).
//! - transcriptions ([`parse_stt`]): the types require `usage`, which Groq, whisper.cpp's
//!   server and Speaches leave out of `{"text":…}` (and which OpenAI's own spec example sends
//!   without `type`); then only `type`, `text` and `delta` are read.
//! - error objects: vLLM sends `code` as a number (its `ErrorInfo.code: int`) and Ollama a
//!   bare string as `error`, which [`ApiError`] refuses; then the fields are read one by one.

use async_openai::error::ApiError;
use async_openai::types::audio::{
    CreateSpeechRequest, CreateTranscriptionResponseJson, CreateTranscriptionResponseStreamEvent,
    SpeechModel, SpeechResponseFormat, Voice,
};
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCallChunk,
    ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestSystemMessageContent,
    ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent,
    ChatCompletionRequestUserMessage, ChatCompletionRequestUserMessageContent,
    ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionTools, CompletionUsage,
    CreateChatCompletionRequest, CreateChatCompletionStreamResponse, FinishReason, FunctionCall,
    FunctionObject,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{CascadeConfig, ToolsConfig};
use crate::agent::{HttpBody, HttpRequest, MultipartPart, ResponseMode};

/// Appended to an assistant message the caller cut short, after the part they heard, so the
/// model knows the rest was never said.
pub const INTERRUPTED_MARK: &str = "[interrupted by the caller]";

/// A tool call as the model made it (assembled from stream fragments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `id` (`call_…`), echoed in the tool result.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments as the model wrote them (JSON text, possibly invalid).
    pub arguments: String,
}

/// One message of the conversation, in Chat Completions terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatMessage {
    /// `{"role":"system","content":…}`.
    System(String),
    /// `{"role":"user","content":…}`.
    User(String),
    /// `{"role":"assistant","content":…,"tool_calls":[…]}`.
    Assistant {
        /// What the caller heard of it (all of it unless `interrupted`).
        content: String,
        /// Tool calls the model made in this message.
        tool_calls: Vec<ToolCall>,
        /// The caller barged in: `content` is only the heard prefix, and [`INTERRUPTED_MARK`]
        /// is appended when it is sent.
        interrupted: bool,
    },
    /// `{"role":"tool","tool_call_id":…,"content":…}`.
    Tool {
        /// The call answered.
        call_id: String,
        /// The result.
        content: String,
    },
}

impl ChatMessage {
    /// The message as async-openai types it (`ChatCompletionRequestMessage`). An assistant
    /// message with tool calls and no text has no `content`.
    pub fn to_request(&self) -> ChatCompletionRequestMessage {
        match self {
            ChatMessage::System(c) => {
                ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
                    content: ChatCompletionRequestSystemMessageContent::Text(c.clone()),
                    name: None,
                })
            }
            ChatMessage::User(c) => {
                ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
                    content: ChatCompletionRequestUserMessageContent::Text(c.clone()),
                    name: None,
                })
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                interrupted,
            } => {
                let text = if *interrupted {
                    format!("{content} {INTERRUPTED_MARK}").trim().to_string()
                } else {
                    content.clone()
                };
                let calls = tool_calls
                    .iter()
                    .map(|t| {
                        ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                            id: t.id.clone(),
                            function: FunctionCall {
                                name: t.name.clone(),
                                arguments: t.arguments.clone(),
                            },
                        })
                    })
                    .collect::<Vec<_>>();
                ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                    content: (calls.is_empty() || !text.is_empty())
                        .then_some(ChatCompletionRequestAssistantMessageContent::Text(text)),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    ..ChatCompletionRequestAssistantMessage::default()
                })
            }
            ChatMessage::Tool { call_id, content } => {
                ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                    content: ChatCompletionRequestToolMessageContent::Text(content.clone()),
                    tool_call_id: call_id.clone(),
                })
            }
        }
    }

    /// The message as the API takes it: [`ChatMessage::to_request`] as JSON, with
    /// `"content": null` on an assistant message that has only tool calls (the spec's
    /// nullable form, which hark has always sent; async-openai would leave the key out).
    pub fn to_json(&self) -> Value {
        let mut v = json_of(&self.to_request());
        if let Value::Object(m) = &mut v
            && m.get("role").and_then(Value::as_str) == Some("assistant")
        {
            m.entry("content").or_insert(Value::Null);
        }
        v
    }
}

/// A request type as JSON. async-openai's request types are structs and enums with string
/// keys, which `serde_json` always serialises, so the `expect` cannot fire.
fn json_of<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("async-openai request types serialise to JSON")
}

/// What an STT or LLM answer may be: SSE, or JSON (a server that ignores `stream`).
pub fn accept_text() -> Vec<String> {
    vec!["text/event-stream".into(), "application/json".into()]
}

/// What a speech answer may be: audio (`audio/pcm`, `audio/L16`, …) or raw bytes.
pub fn accept_audio() -> Vec<String> {
    vec!["audio/*".into(), "application/octet-stream".into()]
}

fn text_part(name: &str, v: &str) -> MultipartPart {
    MultipartPart {
        name: name.into(),
        filename: None,
        content_type: None,
        data: v.as_bytes().to_vec(),
    }
}

/// `POST /v1/audio/transcriptions` of a WAV: multipart `file` (`audio.wav`), `model`,
/// `language`, `prompt`, `response_format=json`, and `stream=true` when configured
/// (answer as SSE; a JSON answer is accepted too).
pub fn transcription_request(cfg: &CascadeConfig, wav: Vec<u8>) -> HttpRequest {
    let s = &cfg.stt;
    let mut parts = vec![
        MultipartPart {
            name: "file".into(),
            filename: Some("audio.wav".into()),
            content_type: Some("audio/wav".into()),
            data: wav,
        },
        text_part("model", &s.endpoint.model),
        text_part("response_format", "json"),
    ];
    if let Some(l) = s.language.as_deref().filter(|l| !l.is_empty()) {
        parts.push(text_part("language", l));
    }
    if let Some(p) = s.prompt.as_deref().filter(|p| !p.is_empty()) {
        parts.push(text_part("prompt", p));
    }
    if s.stream {
        parts.push(text_part("stream", "true"));
    }
    HttpRequest {
        stage: crate::agent::STAGE_STT,
        method: "POST".into(),
        url: s.endpoint.url("/audio/transcriptions"),
        headers: s.endpoint.headers(),
        body: HttpBody::Multipart(parts),
        response: if s.stream {
            ResponseMode::Sse
        } else {
            ResponseMode::Whole
        },
        timeout_ms: Some(cfg.request_timeout_ms),
        accept: accept_text(),
        sign: None,
    }
}

/// One `{"type":"function","function":{name, description, parameters}}` tool.
fn function_tool(name: &str, description: &str, parameters: Value) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: name.into(),
            description: Some(description.into()),
            parameters: Some(parameters),
            strict: None,
        },
    })
}

/// The tools offered to the model (`tools` of the chat request), per `cfg`.
pub fn tool_definitions(cfg: &ToolsConfig) -> Vec<ChatCompletionTools> {
    let mut tools = Vec::new();
    if cfg.end_call {
        tools.push(function_tool(
            "end_call",
            "End the phone call. Use it when the caller says goodbye or \
                    wants to hang up, after saying a short goodbye in the same reply.",
            json!({
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the call ends."}
                },
                "required": [],
                "additionalProperties": false
            }),
        ));
    }
    if cfg.transfer_call {
        tools.push(function_tool(
            "transfer_call",
            "Transfer the caller to another phone number (a person or \
                    department). Tell the caller you are transferring them in the same reply.",
            json!({
                "type": "object",
                "properties": {
                    "number": {
                        "type": "string",
                        "description": "E.164 phone number such as +14155550100, or a SIP URI."
                    }
                },
                "required": ["number"],
                "additionalProperties": false
            }),
        ));
    }
    for t in cfg.http.tools.iter() {
        tools.push(function_tool(
            &t.name,
            &t.description,
            t.parameters.json().clone(),
        ));
    }
    tools
}

/// `POST /v1/chat/completions`, streamed (`stream: true`, `stream_options.include_usage`),
/// with `messages` (as [`ChatMessage::to_json`]) and the configured tools. `max_tokens` is
/// sent as such (deprecated by OpenAI for `max_completion_tokens`, but the form every
/// OpenAI-compatible server accepts).
pub fn chat_request(cfg: &CascadeConfig, messages: &[ChatMessage]) -> HttpRequest {
    let l = &cfg.llm;
    let tools = tool_definitions(&cfg.tools);
    #[allow(deprecated)] // `max_tokens`, see above.
    let request = CreateChatCompletionRequest {
        model: l.endpoint.model.clone(),
        // Set below from `to_json` (the `"content": null` form).
        messages: Vec::new(),
        stream: Some(true),
        stream_options: Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        }),
        tools: (!tools.is_empty()).then_some(tools),
        temperature: l.temperature,
        max_tokens: l.max_tokens,
        ..CreateChatCompletionRequest::default()
    };
    let mut body = json_of(&request);
    body["messages"] = messages.iter().map(ChatMessage::to_json).collect();
    HttpRequest {
        stage: crate::agent::STAGE_LLM,
        method: "POST".into(),
        url: l.endpoint.url("/chat/completions"),
        headers: l.endpoint.headers(),
        body: HttpBody::Json(body),
        response: ResponseMode::Sse,
        timeout_ms: Some(cfg.request_timeout_ms),
        accept: accept_text(),
        sign: None,
    }
}

/// `POST /v1/audio/speech` of `text` (`CreateSpeechRequest`): `response_format: pcm` (24 kHz
/// s16le mono), streamed as raw chunks; the model and voice are free strings (a compatible
/// server's own names pass through).
pub fn speech_request(cfg: &CascadeConfig, text: &str) -> HttpRequest {
    let t = &cfg.tts;
    let request = CreateSpeechRequest {
        input: text.into(),
        model: SpeechModel::Other(t.endpoint.model.clone()),
        voice: Voice::Other(t.voice.clone()),
        instructions: t.instructions.clone().filter(|i| !i.is_empty()),
        response_format: Some(SpeechResponseFormat::Pcm),
        speed: t.speed,
        stream_format: None,
    };
    HttpRequest {
        stage: crate::agent::STAGE_TTS,
        method: "POST".into(),
        url: t.endpoint.url("/audio/speech"),
        headers: t.endpoint.headers(),
        body: HttpBody::Json(json_of(&request)),
        response: ResponseMode::Chunks,
        timeout_ms: Some(cfg.request_timeout_ms),
        accept: accept_audio(),
        sign: None,
    }
}

/// What one STT message said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SttEvent {
    /// `transcript.text.delta`.
    Delta(String),
    /// The final transcript: `transcript.text.done`, or a whole JSON answer `{"text":…}`.
    Done(String),
    /// An `{"error":{…}}` object (inside a 200 stream).
    Error(String),
    /// Not JSON at all (an HTML error page, bare text): a provider fault, never the caller's
    /// words (hark asks for `response_format=json`).
    NotJson(String),
    /// `[DONE]`, other event types (`transcript.text.segment`, …), or nothing usable.
    Ignore,
}

/// Parses one STT message (an SSE event's data, or the whole JSON body): as
/// `CreateTranscriptionResponseStreamEvent`, then as `CreateTranscriptionResponseJson`, then
/// (a compatible server's answer without `usage`, see the module doc) by its `type`, `text`
/// and `delta` alone.
pub fn parse_stt(data: &str) -> SttEvent {
    let d = data.trim();
    if d == "[DONE]" || d.is_empty() {
        return SttEvent::Ignore;
    }
    if let Ok(e) = serde_json::from_str::<CreateTranscriptionResponseStreamEvent>(d) {
        return match e {
            CreateTranscriptionResponseStreamEvent::TranscriptTextDelta(e) => {
                SttEvent::Delta(e.delta)
            }
            CreateTranscriptionResponseStreamEvent::TranscriptTextDone(e) => SttEvent::Done(e.text),
            CreateTranscriptionResponseStreamEvent::TranscriptTextSegment(_) => SttEvent::Ignore,
        };
    }
    if let Ok(r) = serde_json::from_str::<CreateTranscriptionResponseJson>(d) {
        return SttEvent::Done(r.text);
    }
    let Ok(v) = serde_json::from_str::<Value>(d) else {
        // hark asks for `response_format=json`: anything else is not a transcript.
        let head: String = d.chars().take(200).collect();
        return SttEvent::NotJson(format!("the transcription answer is not JSON: {head}"));
    };
    if let Some(e) = error_in(&v) {
        return SttEvent::Error(e);
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match v.get("type").and_then(Value::as_str) {
        Some("transcript.text.delta") => SttEvent::Delta(text("delta").unwrap_or_default()),
        Some("transcript.text.done") => SttEvent::Done(text("text").unwrap_or_default()),
        Some(_) => SttEvent::Ignore,
        None => text("text").map_or(SttEvent::Ignore, SttEvent::Done),
    }
}

/// The text of an `{"error":…}` message (`ErrorResponse`), `message (type …, code …)`, when
/// `v` is one.
fn error_in(v: &Value) -> Option<String> {
    let e = v.get("error").filter(|e| !e.is_null())?;
    Some(match ApiError::deserialize(e) {
        Ok(a) => format!(
            "{} (type {:?}, code {:?})",
            a.message,
            a.r#type.unwrap_or_default(),
            a.code.unwrap_or_default()
        ),
        // vLLM's numeric `code`, Ollama's bare string (see the module doc).
        Err(_) => {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            let kind = e.get("type").and_then(Value::as_str).unwrap_or("");
            let code = match e.get("code") {
                Some(Value::String(c)) => c.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            format!("{msg} (type {kind:?}, code {code:?})")
        }
    })
}

/// Why the model stopped (`finish_reason`).
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// One of the spec's values (`stop`, `length`, `tool_calls`, `content_filter`,
    /// `function_call`).
    Spec(FinishReason),
    /// A compatible server's own value (vLLM `abort`, DeepSeek `insufficient_system_resource`,
    /// Mistral `model_length`): the model stopped all the same.
    Other(String),
}

impl Finish {
    /// The value as the server wrote it (`"tool_calls"`, `"abort"`, …).
    pub fn as_str(&self) -> &str {
        match self {
            Finish::Spec(FinishReason::Stop) => "stop",
            Finish::Spec(FinishReason::Length) => "length",
            Finish::Spec(FinishReason::ToolCalls) => "tool_calls",
            Finish::Spec(FinishReason::ContentFilter) => "content_filter",
            Finish::Spec(FinishReason::FunctionCall) => "function_call",
            Finish::Other(s) => s,
        }
    }
}

/// One parsed chat stream message (choice 0 only: hark asks for one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatChunk {
    /// `data: [DONE]`: the stream is complete.
    pub done: bool,
    /// Text (`delta.content`, or `delta.refusal`, which is spoken too).
    pub content: Option<String>,
    /// Tool-call fragments, for [`ToolCallAssembler`].
    pub tool_calls: Vec<ChatCompletionMessageToolCallChunk>,
    /// `finish_reason` when set.
    pub finish_reason: Option<Finish>,
    /// The usage chunk (`choices: []`, `usage` set).
    pub usage: Option<CompletionUsage>,
}

/// A chat stream message that is not a chunk; each is a provider fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatFault {
    /// Not JSON at all (an HTML page): not what was asked for (`not JSON (…): <head>`).
    NotJson(String),
    /// An `{"error":…}` object: a failure inside a 200 stream (`providers.md` §2).
    Stream(String),
    /// JSON that is no `chat.completion.chunk`, even read tolerantly (module doc).
    Shape(String),
}

impl ChatFault {
    /// The fault's text, for the provider-fault report.
    pub fn into_detail(self) -> String {
        match self {
            ChatFault::NotJson(s) | ChatFault::Stream(s) | ChatFault::Shape(s) => s,
        }
    }
}

/// Parses one chat stream message: `[DONE]`, or a `CreateChatCompletionStreamResponse`, read
/// tolerantly when the strict type refuses it (see the module doc).
///
/// # Errors
/// [`ChatFault`]: the message is not JSON, is an `{"error":…}` object, or is JSON that is no
/// chunk.
pub fn parse_chat(data: &str) -> Result<ChatChunk, ChatFault> {
    let d = data.trim();
    if d == "[DONE]" {
        return Ok(ChatChunk {
            done: true,
            ..ChatChunk::default()
        });
    }
    if let Ok(r) = serde_json::from_str::<CreateChatCompletionStreamResponse>(d) {
        return Ok(chunk_of(r, None));
    }
    let v: Value = serde_json::from_str(d)
        .map_err(|e| ChatFault::NotJson(format!("not JSON ({e}): {d:.200}")))?;
    if let Some(e) = error_in(&v) {
        return Err(ChatFault::Stream(e));
    }
    let (read, other) = as_read(&v);
    match serde_json::from_value::<CreateChatCompletionStreamResponse>(read) {
        Ok(r) => Ok(chunk_of(r, other)),
        Err(e) => Err(ChatFault::Shape(format!(
            "not a chat.completion.chunk ({e}): {d:.200}"
        ))),
    }
}

/// What hark takes from a chunk: choice 0's text, tool-call fragments and finish reason
/// (`other`, when the tolerant reading found one outside the enum), and the usage.
fn chunk_of(r: CreateChatCompletionStreamResponse, other: Option<String>) -> ChatChunk {
    let mut c = ChatChunk {
        usage: r.usage,
        ..ChatChunk::default()
    };
    for ch in r.choices.into_iter().filter(|ch| ch.index == 0) {
        let d = ch.delta;
        if let Some(t) = d.content.or(d.refusal).filter(|t| !t.is_empty()) {
            c.content.get_or_insert_with(String::new).push_str(&t);
        }
        c.tool_calls.extend(d.tool_calls.unwrap_or_default());
        if let Some(r) = ch.finish_reason {
            c.finish_reason = Some(Finish::Spec(r));
        }
    }
    if let Some(o) = other {
        c.finish_reason = Some(Finish::Other(o));
    }
    c
}

/// The tolerant reading of a chunk the strict type refused (module doc): a chunk of only the
/// fields hark reads — an empty envelope; per choice `index`, `delta.content`,
/// `delta.refusal`, `delta.tool_calls[]` (`index`, or the position; `id`; `function`) and a
/// spec `finish_reason`; `usage` if `CompletionUsage` takes it — and choice 0's
/// `finish_reason` when it is outside the spec's enum.
fn as_read(v: &Value) -> (Value, Option<String>) {
    let mut other = None;
    let read_choice = |ch: &Value| {
        let d = &ch["delta"];
        let calls = d.get("tool_calls").and_then(Value::as_array);
        let calls: Vec<Value> = calls
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, tc)| {
                json!({"index": tc.get("index").cloned().unwrap_or_else(|| json!(i)),
                           "id": tc["id"],
                           "function": {"name": tc["function"]["name"],
                                        "arguments": tc["function"]["arguments"]}})
            })
            .collect();
        let finish = match &ch["finish_reason"] {
            Value::String(s) if s.is_empty() => Value::Null,
            Value::String(s) if serde_json::from_value::<FinishReason>(json!(s)).is_err() => {
                if ch["index"] == 0 {
                    other = Some(s.clone());
                }
                Value::Null
            }
            f => f.clone(),
        };
        json!({"index": ch["index"],
               "delta": {"content": d["content"], "refusal": d["refusal"], "tool_calls": calls},
               "finish_reason": finish})
    };
    // Anything but an array (or no `choices` at all) goes through for the type to refuse.
    let choices = match v.get("choices") {
        Some(Value::Array(a)) => a.iter().map(read_choice).collect(),
        c => c.cloned().unwrap_or(Value::Null),
    };
    let usage = v
        .get("usage")
        .filter(|u| CompletionUsage::deserialize(*u).is_ok())
        .cloned()
        .unwrap_or(Value::Null);
    let read = json!({"id": "", "object": "chat.completion.chunk", "created": 0, "model": "",
                      "choices": choices, "usage": usage});
    (read, other)
}

/// Assembles tool calls from fragments (`ChatCompletionMessageToolCallChunk`): per `index`,
/// the first fragment's `id`, the name, and the concatenated `arguments` pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallAssembler {
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCallAssembler {
    /// Adds one fragment.
    pub fn push(&mut self, d: &ChatCompletionMessageToolCallChunk) {
        let i = match self.calls.iter().position(|(ix, _)| *ix == d.index) {
            Some(i) => i,
            None => {
                self.calls.push((
                    d.index,
                    ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    },
                ));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[i].1;
        if let Some(id) = &d.id {
            call.id = id.clone();
        }
        let f = d.function.as_ref();
        if let Some(n) = f.and_then(|f| f.name.as_ref()) {
            call.name.push_str(n);
        }
        if let Some(a) = f.and_then(|f| f.arguments.as_ref()) {
            call.arguments.push_str(a);
        }
    }

    /// Whether any fragment arrived.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The calls in index order; a call without an id gets `call_<index>`.
    pub fn finish(self) -> Vec<ToolCall> {
        let mut calls = self.calls;
        calls.sort_by_key(|(i, _)| *i);
        calls
            .into_iter()
            .map(|(i, mut c)| {
                if c.id.is_empty() {
                    c.id = format!("call_{i}");
                }
                c
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
