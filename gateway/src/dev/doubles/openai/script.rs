//! What the double answers and how: the [`Script`] (latencies, transcripts, replies, faults)
//! and the record of each [`Exchange`].

use std::time::Instant;

use serde_json::Value;

/// Latencies of the double, ms (all 0 = as fast as possible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Transcription: request received → final transcript sent.
    pub stt_ms: u64,
    /// Chat: request received → first content token.
    pub ttft_ms: u64,
    /// Chat: between tokens (words).
    pub token_ms: u64,
    /// Speech: request received → first audio byte.
    pub ttfb_ms: u64,
    /// Speech audio is sent this many times faster than real time (e.g. 4); 0 sends it all
    /// at once after the first byte.
    pub audio_speed: f64,
    /// Speech audio per chunk, ms.
    pub chunk_ms: u64,
}

impl Latency {
    /// Realistic hosted-API figures: STT 150 ms, TTFT 300 ms, 25 ms per token, TTS first byte
    /// 150 ms, audio streamed at 4× real time in 40 ms chunks.
    pub const REALISTIC: Latency = Latency {
        stt_ms: 150,
        ttft_ms: 300,
        token_ms: 25,
        ttfb_ms: 150,
        audio_speed: 4.0,
        chunk_ms: 40,
    };
    /// No waiting at all (audio in one go).
    pub const ZERO: Latency = Latency {
        stt_ms: 0,
        ttft_ms: 0,
        token_ms: 0,
        ttfb_ms: 0,
        audio_speed: 0.0,
        chunk_ms: 40,
    };
}

impl Default for Latency {
    fn default() -> Self {
        Latency::REALISTIC
    }
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedToolCall {
    /// Function name.
    pub name: String,
    /// Arguments (JSON text, sent in two fragments).
    pub arguments: String,
}

/// A scripted assistant reply: text (streamed word by word), then tool calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Content.
    pub text: String,
    /// Tool calls after the content.
    pub tool_calls: Vec<ScriptedToolCall>,
}

impl Reply {
    /// A reply with only text.
    pub fn text(t: impl Into<String>) -> Self {
        Reply {
            text: t.into(),
            tool_calls: Vec::new(),
        }
    }

    /// Adds a tool call.
    pub fn with_tool(mut self, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        self.tool_calls.push(ScriptedToolCall {
            name: name.into(),
            arguments: arguments.into(),
        });
        self
    }
}

/// Answer with `reply` when the last user message contains `when` (case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Substring to look for.
    pub when: String,
    /// The reply.
    pub reply: Reply,
}

impl Rule {
    /// A rule.
    pub fn new(when: impl Into<String>, reply: Reply) -> Self {
        Rule {
            when: when.into(),
            reply,
        }
    }
}

/// The three endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/audio/transcriptions`.
    Transcriptions,
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/audio/speech`.
    Speech,
}

/// An injected fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status with OpenAI's error body (`invalid_api_key` for 401, `rate_limit_exceeded`
    /// for 429, `server_error` otherwise), after the endpoint's first latency.
    Status {
        /// HTTP status.
        status: u16,
        /// `Retry-After`, whole seconds.
        retry_after_s: Option<u64>,
        /// `retry-after-ms`.
        retry_after_ms: Option<f64>,
    },
    /// 429 `insufficient_quota` (out of credit: clients must not retry).
    InsufficientQuota,
    /// No answer for an hour (the client's timeout must act).
    Hang,
    /// 200, then an `{"error":…}` object inside the stream (chat and transcription; for speech
    /// the same as [`Fault::Drop`]).
    StreamError,
    /// 200, part of the answer, then the connection is dropped.
    Drop,
    /// 200, the first `n` pieces of the normal answer (SSE events — for chat the first is the
    /// `role` chunk —, or audio chunks of [`Latency::chunk_ms`]; a JSON answer is one piece),
    /// then nothing for an hour: the connection stays open.
    StallAfter(usize),
    /// 200, the first `n` bytes of the normal answer (e.g. 4800 bytes = 100 ms of 24 kHz
    /// speech), then the connection is dropped.
    DropAfterBytes(usize),
    /// 200 with `Content-Type: text/html` and [`HTML_ERROR_PAGE`], as a proxy in front of a
    /// failing server answers.
    Html,
}

/// The body of [`Fault::Html`].
pub const HTML_ERROR_PAGE: &str = "<html>502 Bad Gateway</html>";

impl Fault {
    /// A plain status fault.
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            retry_after_s: None,
            retry_after_ms: None,
        }
    }
}

/// Apply `fault` to requests of `endpoint`: skip the first `skip` that reach it (counted from
/// when the rule was added), then fault the next `times`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// Requests to let through first.
    pub skip: usize,
    /// Requests to fault.
    pub times: usize,
    /// The fault.
    pub fault: Fault,
}

impl FaultRule {
    /// Faults the next `times` requests to `endpoint`.
    pub fn next(endpoint: Endpoint, times: usize, fault: Fault) -> Self {
        FaultRule {
            endpoint,
            skip: 0,
            times,
            fault,
        }
    }
}

/// What the double answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Latencies.
    pub latency: Latency,
    /// Transcripts, one per transcription request, in order (cycling; `"Hello."` when empty).
    pub transcripts: Vec<String>,
    /// Reply rules, first match wins.
    pub rules: Vec<Rule>,
    /// The reply when no rule matches.
    pub default_reply: Reply,
    /// The reply when the last message is a tool result.
    pub after_tool: Reply,
    /// Fault rules.
    pub faults: Vec<FaultRule>,
    /// When set, requests must carry `Authorization: Bearer <this>` (else 401).
    pub api_key: Option<String>,
    /// Send `data: [DONE]` after `transcript.text.done`.
    pub stt_done_marker: bool,
    /// Speech audio per character of input, ms (default 70, about 14 characters per second).
    pub ms_per_char: u64,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            latency: Latency::REALISTIC,
            transcripts: Vec::new(),
            rules: Vec::new(),
            default_reply: Reply::text("I see. Tell me more."),
            after_tool: Reply::text("Done."),
            faults: Vec::new(),
            api_key: None,
            stt_done_marker: false,
            ms_per_char: 70,
        }
    }
}

/// One request and what the double answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// When the request arrived.
    pub at: Instant,
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The request: the JSON body, or the multipart fields (the file as
    /// `{"filename","content_type","bytes"}`).
    pub request: Value,
    /// The response status.
    pub status: u16,
    /// The response's JSON payloads in order: the whole body, each SSE event (without
    /// `[DONE]`), or the error body. Speech audio is not included.
    pub response: Vec<Value>,
    /// Bytes of speech audio in the response.
    pub audio_bytes: usize,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}
