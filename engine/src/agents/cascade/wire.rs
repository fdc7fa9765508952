//! The OpenAI-compatible wire formats the cascade agent speaks, as pure functions: request
//! builders (→ [`HttpRequest`]) and parsers of what comes back. Shapes follow
//! `shared/specs/openai/openapi.yaml` (`CreateTranscriptionRequest`,
//! `CreateTranscriptionResponseStreamEvent`, `CreateChatCompletionRequest`,
//! `CreateChatCompletionStreamResponse`, `ChatCompletionMessageToolCallChunk`,
//! `CreateSpeechRequest`, `ErrorResponse`), summarised in `shared/reference/providers.md` §1–3.

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
    /// The message as the API takes it.
    pub fn to_json(&self) -> Value {
        match self {
            ChatMessage::System(c) => json!({"role": "system", "content": c}),
            ChatMessage::User(c) => json!({"role": "user", "content": c}),
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
                let mut m = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    if text.is_empty() {
                        m["content"] = Value::Null;
                    }
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|t| {
                            json!({"id": t.id, "type": "function",
                                   "function": {"name": t.name, "arguments": t.arguments}})
                        })
                        .collect();
                }
                m
            }
            ChatMessage::Tool { call_id, content } => {
                json!({"role": "tool", "tool_call_id": call_id, "content": content})
            }
        }
    }
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
    }
}

/// The tools offered to the model (`tools` of the chat request), per `cfg`.
pub fn tool_definitions(cfg: &ToolsConfig) -> Vec<Value> {
    let mut tools = Vec::new();
    if cfg.end_call {
        tools.push(json!({
            "type": "function",
            "function": {
                "name": "end_call",
                "description": "End the phone call. Use it when the caller says goodbye or \
                    wants to hang up, after saying a short goodbye in the same reply.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string", "description": "Why the call ends."}
                    },
                    "required": [],
                    "additionalProperties": false
                }
            }
        }));
    }
    if cfg.transfer_call {
        tools.push(json!({
            "type": "function",
            "function": {
                "name": "transfer_call",
                "description": "Transfer the caller to another phone number (a person or \
                    department). Tell the caller you are transferring them in the same reply.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "number": {
                            "type": "string",
                            "description": "E.164 phone number such as +14155550100, or a SIP URI."
                        }
                    },
                    "required": ["number"],
                    "additionalProperties": false
                }
            }
        }));
    }
    tools
}

/// `POST /v1/chat/completions`, streamed (`stream: true`, `stream_options.include_usage`),
/// with `messages` and the configured tools.
pub fn chat_request(cfg: &CascadeConfig, messages: &[ChatMessage]) -> HttpRequest {
    let l = &cfg.llm;
    let mut body = json!({
        "model": l.endpoint.model,
        "messages": messages.iter().map(ChatMessage::to_json).collect::<Vec<_>>(),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let tools = tool_definitions(&cfg.tools);
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    if let Some(t) = l.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(m) = l.max_tokens {
        body["max_tokens"] = json!(m);
    }
    HttpRequest {
        method: "POST".into(),
        url: l.endpoint.url("/chat/completions"),
        headers: l.endpoint.headers(),
        body: HttpBody::Json(body),
        response: ResponseMode::Sse,
        timeout_ms: Some(cfg.request_timeout_ms),
        accept: accept_text(),
    }
}

/// `POST /v1/audio/speech` of `text`: `response_format: pcm` (24 kHz s16le mono), streamed
/// as raw chunks.
pub fn speech_request(cfg: &CascadeConfig, text: &str) -> HttpRequest {
    let t = &cfg.tts;
    let mut body = json!({
        "model": t.endpoint.model,
        "input": text,
        "voice": t.voice,
        "response_format": "pcm",
    });
    if let Some(i) = t.instructions.as_deref().filter(|i| !i.is_empty()) {
        body["instructions"] = json!(i);
    }
    if let Some(s) = t.speed {
        body["speed"] = json!(s);
    }
    HttpRequest {
        method: "POST".into(),
        url: t.endpoint.url("/audio/speech"),
        headers: t.endpoint.headers(),
        body: HttpBody::Json(body),
        response: ResponseMode::Chunks,
        timeout_ms: Some(cfg.request_timeout_ms),
        accept: accept_audio(),
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
    /// `[DONE]`, other event types, or nothing usable.
    Ignore,
}

/// Parses one STT message (an SSE event's data, or the whole JSON body).
pub fn parse_stt(data: &str) -> SttEvent {
    let d = data.trim();
    if d == "[DONE]" || d.is_empty() {
        return SttEvent::Ignore;
    }
    let Ok(v) = serde_json::from_str::<Value>(d) else {
        // hark asks for `response_format=json`: anything else is not a transcript.
        let head: String = d.chars().take(200).collect();
        return SttEvent::NotJson(format!("the transcription answer is not JSON: {head}"));
    };
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return SttEvent::Error(error_text(e));
    }
    match v.get("type").and_then(Value::as_str) {
        Some("transcript.text.delta") => {
            SttEvent::Delta(v["delta"].as_str().unwrap_or_default().to_string())
        }
        Some("transcript.text.done") => {
            SttEvent::Done(v["text"].as_str().unwrap_or_default().to_string())
        }
        Some(_) => SttEvent::Ignore,
        None => match v.get("text").and_then(Value::as_str) {
            Some(t) => SttEvent::Done(t.to_string()),
            None => SttEvent::Ignore,
        },
    }
}

/// `message (type, code)` of an OpenAI error object.
pub fn error_text(e: &Value) -> String {
    let msg = e
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| e.to_string());
    let kind = e.get("type").and_then(Value::as_str).unwrap_or("");
    let code = e.get("code").and_then(Value::as_str).unwrap_or("");
    format!("{msg} (type {kind:?}, code {code:?})")
}

/// A tool-call fragment of a stream chunk (`ChatCompletionMessageToolCallChunk`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    /// Which call (only field the spec requires).
    pub index: u64,
    /// `id`, on the first fragment.
    pub id: Option<String>,
    /// `function.name`, on the first fragment.
    pub name: Option<String>,
    /// A piece of `function.arguments`.
    pub arguments: Option<String>,
}

/// One parsed chat stream message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChatChunk {
    /// `data: [DONE]`: the stream is complete.
    pub done: bool,
    /// Text (`delta.content`, or `delta.refusal`, which is spoken too).
    pub content: Option<String>,
    /// Tool-call fragments.
    pub tool_calls: Vec<ToolCallDelta>,
    /// `finish_reason` when set.
    pub finish_reason: Option<String>,
    /// The usage chunk (`choices: []`, `usage` set).
    pub usage: Option<Value>,
}

/// Parses one chat stream message.
///
/// # Errors
/// The error text when the message is an `{"error":…}` object (a failure inside a 200
/// stream, `providers.md` §2) or not JSON.
pub fn parse_chat(data: &str) -> Result<ChatChunk, String> {
    let d = data.trim();
    if d == "[DONE]" {
        return Ok(ChatChunk {
            done: true,
            ..ChatChunk::default()
        });
    }
    let v: Value = serde_json::from_str(d).map_err(|e| format!("not JSON ({e}): {d:.200}"))?;
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Err(error_text(e));
    }
    let mut c = ChatChunk {
        usage: v.get("usage").filter(|u| !u.is_null()).cloned(),
        ..ChatChunk::default()
    };
    let choices = v.get("choices").and_then(Value::as_array);
    for ch in choices.into_iter().flatten() {
        if ch.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
            continue;
        }
        let delta = &ch["delta"];
        let text = delta
            .get("content")
            .and_then(Value::as_str)
            .or_else(|| delta.get("refusal").and_then(Value::as_str));
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            c.content.get_or_insert_with(String::new).push_str(t);
        }
        for tc in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = &tc["function"];
            c.tool_calls.push(ToolCallDelta {
                index: tc.get("index").and_then(Value::as_u64).unwrap_or(0),
                id: tc.get("id").and_then(Value::as_str).map(str::to_string),
                name: f.get("name").and_then(Value::as_str).map(str::to_string),
                arguments: f
                    .get("arguments")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        if let Some(r) = ch.get("finish_reason").and_then(Value::as_str) {
            c.finish_reason = Some(r.to_string());
        }
    }
    Ok(c)
}

/// Assembles tool calls from fragments: per `index`, the first fragment's `id` and name, and
/// the concatenated `arguments` pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallAssembler {
    calls: Vec<(u64, ToolCall)>,
}

impl ToolCallAssembler {
    /// Adds one fragment.
    pub fn push(&mut self, d: &ToolCallDelta) {
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
        if let Some(n) = &d.name {
            call.name.push_str(n);
        }
        if let Some(a) = &d.arguments {
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
mod tests {
    use super::*;

    #[test]
    fn stt_messages() {
        assert_eq!(
            parse_stt(r#"{"type":"transcript.text.delta","delta":" see"}"#),
            SttEvent::Delta(" see".into())
        );
        assert_eq!(
            parse_stt(
                r#"{"type":"transcript.text.done","text":"I see","usage":{"type":"tokens"}}"#
            ),
            SttEvent::Done("I see".into())
        );
        assert_eq!(
            parse_stt(r#"{"text":"whole"}"#),
            SttEvent::Done("whole".into())
        );
        assert_eq!(parse_stt("[DONE]"), SttEvent::Ignore);
        assert!(matches!(parse_stt("bare text"), SttEvent::NotJson(_)));
        assert!(matches!(
            parse_stt("<html>502 Bad Gateway</html>"),
            SttEvent::NotJson(e) if e.contains("502 Bad Gateway")
        ));
        assert!(matches!(
            parse_stt(r#"{"error":{"message":"boom","type":"server_error","code":null}}"#),
            SttEvent::Error(e) if e.contains("boom")
        ));
    }

    #[test]
    fn chat_chunks_and_tool_fragments() {
        let c = parse_chat(r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}"#).unwrap();
        assert_eq!(c.content.as_deref(), Some("Hel"));
        assert!(c.usage.is_none());
        let mut a = ToolCallAssembler::default();
        for d in [
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"transfer_call","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"number\":"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"+1415\"}"}}]},"finish_reason":null}]}"#,
        ] {
            for t in parse_chat(d).unwrap().tool_calls {
                a.push(&t);
            }
        }
        let f = parse_chat(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)
            .unwrap();
        assert_eq!(f.finish_reason.as_deref(), Some("tool_calls"));
        let calls = a.finish();
        assert_eq!(
            calls,
            vec![ToolCall {
                id: "call_abc".into(),
                name: "transfer_call".into(),
                arguments: r#"{"number":"+1415"}"#.into()
            }]
        );
        let u = parse_chat(
            r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        )
        .unwrap();
        assert!(u.usage.is_some());
        assert!(parse_chat("[DONE]").unwrap().done);
        assert!(parse_chat(r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#).is_err());
        assert!(parse_chat("garbage").is_err());
    }

    #[test]
    fn history_shapes() {
        let m = ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "end_call".into(),
                arguments: "{}".into(),
            }],
            interrupted: false,
        };
        let j = m.to_json();
        assert!(j["content"].is_null());
        assert_eq!(j["tool_calls"][0]["function"]["name"], "end_call");
        let cut = ChatMessage::Assistant {
            content: "Your order".into(),
            tool_calls: vec![],
            interrupted: true,
        };
        assert_eq!(
            cut.to_json()["content"],
            format!("Your order {INTERRUPTED_MARK}")
        );
    }

    #[test]
    fn requests() {
        let cfg = CascadeConfig::default();
        let r = speech_request(&cfg, "Hi.");
        assert_eq!(r.url, "https://api.openai.com/v1/audio/speech");
        assert_eq!(r.response, ResponseMode::Chunks);
        let HttpBody::Json(b) = &r.body else {
            panic!("json body")
        };
        assert_eq!(b["response_format"], "pcm");
        let r = chat_request(&cfg, &[ChatMessage::User("hi".into())]);
        let HttpBody::Json(b) = &r.body else {
            panic!("json body")
        };
        assert_eq!(b["stream"], true);
        assert_eq!(b["tools"].as_array().map(Vec::len), Some(2));
        assert_eq!(r.accept, accept_text());
        let r = transcription_request(&cfg, vec![1, 2]);
        assert_eq!(r.response, ResponseMode::Sse);
        assert_eq!(r.accept, accept_text());
        assert_eq!(speech_request(&cfg, "x").accept, accept_audio());
        let HttpBody::Multipart(p) = &r.body else {
            panic!("multipart")
        };
        assert!(p.iter().any(|p| p.name == "stream" && p.data == b"true"));
    }
}
