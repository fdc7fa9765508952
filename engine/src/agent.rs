//! The agent side of a call: what the core tells an agent and what an agent may ask for.
//!
//! An agent is sans-IO like the core: it reacts to events with [`Action`]s. Agents that talk to
//! providers (STT/LLM/TTS over HTTP, ElevenLabs or OpenAI Realtime over WebSocket) do so through
//! [`ProviderCommand`]s that the driver's connectors carry out, and get the answers back as
//! [`ProviderEvent`]s; the agent never touches a socket.
//!
//! [`EchoAgent`] is the offline default: when a caller turn ends it plays the utterance back.

use std::time::Instant;

use hark_codecs::SampleRate;

use crate::playout::{AgentAudio, Interrupted, UtteranceId};

mod fault;
pub use fault::{FaultKind, ProviderFault};

/// Identifies one provider pipe (an HTTP request, a WebSocket) opened by an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// A message on a provider pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderMessage {
    /// A text message (a WebSocket text frame, an SSE `data:` line, a JSON body).
    Text(String),
    /// Binary data (a WebSocket binary frame, a chunk of an audio body).
    Binary(Vec<u8>),
}

/// How the connector hands an HTTP response body back as [`ProviderEvent::Message`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// The whole body as one message (text if UTF-8, else binary), then `Closed`.
    Whole,
    /// Server-sent events: one `Text` message per event's `data` (multi-line data joined with
    /// `\n`), in order; `Closed` at the end of the body. `[DONE]` is passed on as data.
    Sse,
    /// Raw body chunks as `Binary` messages as they arrive (streamed audio).
    Chunks,
}

/// An HTTP request body.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpBody {
    /// No body.
    Empty,
    /// A JSON body (`Content-Type: application/json`).
    Json(serde_json::Value),
    /// Raw bytes with their content type.
    Bytes {
        /// `Content-Type`.
        content_type: String,
        /// The body.
        data: Vec<u8>,
    },
    /// `multipart/form-data` (e.g. an audio file for transcription).
    Multipart(Vec<MultipartPart>),
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartPart {
    /// Field name.
    pub name: String,
    /// File name, for file parts.
    pub filename: Option<String>,
    /// Content type, for file parts.
    pub content_type: Option<String>,
    /// The part's bytes (UTF-8 text for plain fields).
    pub data: Vec<u8>,
}

/// [`HttpRequest::stage`] of a speech-to-text request (the cascade's STT).
pub const STAGE_STT: &str = crate::agents::cascade::PROVIDER_STT;
/// [`HttpRequest::stage`] of a chat-completion request (the cascade's LLM).
pub const STAGE_LLM: &str = crate::agents::cascade::PROVIDER_LLM;
/// [`HttpRequest::stage`] of a text-to-speech request (the cascade's TTS).
pub const STAGE_TTS: &str = crate::agents::cascade::PROVIDER_TTS;
/// [`HttpRequest::stage`] of a call of one of the operator's HTTP tools.
pub const STAGE_TOOL: &str = crate::agents::http_tools::PROVIDER_TOOL;
/// [`HttpRequest::stage`] of the per-call context lookup at the operator's backend.
pub const STAGE_CONTEXT: &str = crate::agents::context::PROVIDER_CONTEXT;
/// [`HttpRequest::stage`] of the ElevenLabs signed-URL lookup.
pub const STAGE_ELEVENLABS_SIGNED_URL: &str = "elevenlabs_signed_url";
/// [`WsRequest::stage`] of an ElevenLabs Conversational AI socket.
pub const STAGE_ELEVENLABS: &str = crate::agents::elevenlabs::PROVIDER;
/// [`WsRequest::stage`] of an OpenAI Realtime socket.
pub const STAGE_REALTIME: &str = crate::agents::realtime::PROVIDER;
/// Every [`HttpRequest::stage`] hark's agents use.
pub const HTTP_STAGES: [&str; 6] = [
    STAGE_STT,
    STAGE_LLM,
    STAGE_TTS,
    STAGE_TOOL,
    STAGE_CONTEXT,
    STAGE_ELEVENLABS_SIGNED_URL,
];
/// Every [`WsRequest::stage`] hark's agents use.
pub const WS_STAGES: [&str; 2] = [STAGE_ELEVENLABS, STAGE_REALTIME];

/// An HTTP request for a provider (STT, LLM, TTS, signed-URL lookups).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// What the request is for: the `stage` label of the connector's metrics
    /// (`hark_provider_requests_total{stage,outcome}`, `hark_provider_response_seconds{stage}`),
    /// one of the `STAGE_*` constants ([`HTTP_STAGES`]) for hark's own agents. Keep the set
    /// small: it is a metric label.
    pub stage: &'static str,
    /// `GET`, `POST`, …
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Extra headers (e.g. `Authorization: Bearer …`, `xi-api-key`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: HttpBody,
    /// How to hand back the response body.
    pub response: ResponseMode,
    /// Whole-request timeout (connect + response), ms; `None` for the connector's default.
    pub timeout_ms: Option<u64>,
    /// Media types a 2xx answer may have (`type/subtype`, or `type/*` for any subtype),
    /// compared case-insensitively with the response's `Content-Type` without its parameters.
    /// A 2xx answer of another type (an HTML error page from a proxy, JSON where audio was
    /// asked for) is a provider fault: the pipe fails with the connector's `content_type` error
    /// and its body is not passed on. An answer without `Content-Type` is let through (RFC 9110
    /// §8.3: the recipient may examine the data), for the agent's parser to judge. Empty:
    /// anything is accepted.
    pub accept: Vec<String>,
    /// Sign the request for the operator's backend: the connector adds
    /// [`crate::operator::TIMESTAMP_HEADER`] (its clock, Unix seconds) and
    /// [`crate::operator::SIGNATURE_HEADER`] over the exact body bytes it sends. `None` for
    /// providers (they authenticate hark by its API key instead).
    pub sign: Option<crate::operator::Secret>,
}

/// A WebSocket to open (ElevenLabs Conversational AI, OpenAI Realtime).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsRequest {
    /// What the socket is for: the `stage` label of the connector's metrics (see
    /// [`HttpRequest::stage`]), one of [`WS_STAGES`] for hark's own agents.
    pub stage: &'static str,
    /// `wss://…` (or `ws://` for local doubles).
    pub url: String,
    /// Extra handshake headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
}

/// What a provider pipe is.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenSpec {
    /// One HTTP request; its response streams back as messages.
    Http(HttpRequest),
    /// A WebSocket; `Send` writes frames, messages are frames received.
    WebSocket(WsRequest),
}

/// A command for the driver's provider connectors.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderCommand {
    /// Open pipe `peer` as described by `spec`.
    Open {
        /// The new pipe's id (chosen by the agent, unique in the call).
        peer: PeerId,
        /// What to open.
        spec: OpenSpec,
    },
    /// Send a message on an open pipe.
    Send {
        /// The pipe.
        peer: PeerId,
        /// The message.
        message: ProviderMessage,
    },
    /// Close (or cancel, for a request in flight) a pipe. Dropping the connection is the
    /// cancellation: the provider stops generating.
    Close {
        /// The pipe.
        peer: PeerId,
    },
}

/// What a provider pipe did, fed back into the call as an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// The pipe is open (HTTP response headers arrived, WebSocket handshake done).
    Opened {
        /// The pipe.
        peer: PeerId,
        /// HTTP status, when there is one.
        status: Option<u16>,
    },
    /// A message arrived.
    Message {
        /// The pipe.
        peer: PeerId,
        /// The message.
        message: ProviderMessage,
    },
    /// The pipe closed normally (end of body, WebSocket close).
    Closed {
        /// The pipe.
        peer: PeerId,
    },
    /// The pipe failed (connect error, timeout, non-2xx status, reset, WebSocket close with
    /// an error code). Terminal: no more events for this pipe.
    Failed {
        /// The pipe.
        peer: PeerId,
        /// What went wrong: its [`FaultKind`] (with the HTTP status or close code), details
        /// for logs and the provider's `Retry-After`, ms.
        fault: ProviderFault,
    },
}

/// What an agent asks the call to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Play audio as part of utterance `id` (created on first use), optionally with the text it
    /// speaks so the call can report what was heard.
    Play {
        /// The utterance.
        id: UtteranceId,
        /// The audio.
        audio: AgentAudio,
        /// The text this audio speaks, if known.
        text: Option<String>,
    },
    /// No more audio for `id` will come.
    Finish(UtteranceId),
    /// A provider command for the driver.
    Provider(ProviderCommand),
    /// Stop the stream once all queued audio has played (end of call: Twilio then runs the
    /// TwiML after `<Connect>`, `<Hangup/>` by default).
    Hangup {
        /// Why, for logs and the call record.
        reason: String,
    },
    /// Hand the call to `to` (E.164 number or SIP URI) after queued audio has played: the call
    /// asks its driver to redirect it ([`crate::Output::Transfer`], a Twilio REST call update)
    /// and holds meanwhile; once redirected it closes with [`crate::CloseReason::Transfer`]. If
    /// that fails, the call goes on ([`Agent::on_transfer_failed`]).
    Transfer {
        /// Where to.
        to: String,
    },
    /// Ask to be woken at this time ([`Agent::on_timeout`]).
    WakeAt(Instant),
    /// Report something for the call's record, logs and metrics (transcripts, stage
    /// latencies, provider faults, tool calls). Emitted as [`crate::Event::Agent`].
    Report(AgentReport),
    /// The provider says the caller interrupted (ElevenLabs `interruption`, OpenAI Realtime
    /// `input_audio_buffer.speech_started`): the call handles it like its own barge-in — Twilio
    /// `clear`, playout emptied, the utterances so far cancelled, [`crate::Event::BargeIn`]
    /// emitted and [`Agent::on_barge_in`] called with what was heard (from mark echoes). Does
    /// nothing when no agent audio is unplayed.
    Interrupt,
    /// Cut the agent's own audio now, not for the caller (an answering machine's beep came:
    /// the voicemail message replaces what was playing). Like [`Action::Interrupt`] — Twilio
    /// `clear`, playout emptied, the utterances so far cancelled and [`Agent::on_barge_in`]
    /// called with what was heard — but in order with the other actions (audio played after
    /// it is kept), with no [`crate::Event::BargeIn`] and not counted as a barge-in. Does
    /// nothing when no agent audio is unplayed.
    Clear,
    /// The answer to [`Agent::on_backchannel_check`]: `true`, the caller's words were a
    /// backchannel ("uh-huh", "okay") or none at all (a cough): the agent's held audio plays on
    /// from where the caller stopped hearing it, and the speech is not a turn; `false`, they
    /// were words of a turn ("No", "wait"): the barge-in is confirmed ([`Agent::on_barge_in`])
    /// and the turn handed over ([`Agent::on_user_turn`], the same audio). Ignored when no
    /// check is waiting.
    BackchannelVerdict {
        /// Whether it was a backchannel.
        backchannel: bool,
    },
}

/// Who said a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The caller.
    User,
    /// The agent.
    Agent,
}

/// A per-turn latency stage measured by the agent, from the end of the caller's turn
/// (endpointing) unless stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Speech-to-text: turn end → final transcript.
    Stt,
    /// LLM time to first token: request sent → first content token.
    LlmFirstToken,
    /// TTS time to first byte: request sent → first audio byte.
    TtsFirstByte,
    /// Greeting: stream start → first greeting audio handed to the playout.
    Greeting,
    /// Speech-to-speech providers (ElevenLabs, OpenAI Realtime): end of the caller's turn
    /// (the provider's endpointing event, else hark's) → first audio of the answer received
    /// from the provider.
    FirstAudio,
}

impl Stage {
    /// A stable snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stt => "stt",
            Stage::LlmFirstToken => "llm_ttft",
            Stage::TtsFirstByte => "tts_ttfb",
            Stage::Greeting => "greeting",
            Stage::FirstAudio => "first_audio",
        }
    }
}

/// What an agent reports (see [`Action::Report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReport {
    /// A transcript line: the caller's words, or the agent's (only what the caller heard when
    /// `interrupted`).
    Transcript {
        /// Speaker.
        role: Role,
        /// Text.
        text: String,
        /// The agent was cut off by a barge-in; `text` is the heard prefix.
        interrupted: bool,
    },
    /// A stage latency of the current turn, ms.
    Latency {
        /// Which stage.
        stage: Stage,
        /// Milliseconds.
        ms: u64,
    },
    /// A provider fault: retried, or answered with a spoken fallback.
    ProviderFault {
        /// `stt`, `llm`, `tts`, `elevenlabs`, `realtime`, …
        provider: String,
        /// Short kind for metric labels: `http_401`, `http_429`, `http_5xx`, `timeout`,
        /// `connect`, `stream_error`, `dropped`, `close_1008`, … (a pipe's fault is named by
        /// [`ProviderFault::label`] or [`ProviderFault::session_label`]).
        kind: String,
        /// Details for the log.
        detail: String,
    },
    /// The agent called a tool.
    ToolCall {
        /// Tool name.
        name: String,
        /// Arguments as the model gave them (JSON text).
        arguments: String,
    },
}

/// Facts about the call given to the agent at start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallInfo {
    /// Twilio's `callSid`.
    pub call_sid: String,
    /// Twilio's `streamSid`.
    pub stream_sid: String,
    /// `customParameters` from the TwiML `<Parameter>`s.
    pub parameters: Vec<(String, String)>,
}

/// A caller turn handed to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTurn {
    /// Media time of the first voiced frame, ms from stream start.
    pub start_ms: u64,
    /// Media time at the end of the last voiced frame.
    pub end_ms: u64,
    /// The utterance audio at [`UserTurn::rate`], from `pre_roll_ms` before `start_ms` to
    /// `end_ms`; empty when the agent does not ask for it ([`AgentNeeds::utterance_audio`]).
    pub audio: Vec<i16>,
    /// Rate of `audio`.
    pub rate: SampleRate,
}

/// One 20 ms inbound frame, for agents that stream caller audio to a provider.
#[derive(Debug, Clone, Copy)]
pub struct AudioFrame<'a> {
    /// Media time of the frame's start, ms.
    pub media_ms: u64,
    /// The original μ-law bytes (160).
    pub mulaw: &'a [u8],
    /// PCM at the call's agent rate (160 samples at 8 kHz, 320 at 16 kHz).
    pub pcm: &'a [i16],
    /// Whether the VAD called it speech.
    pub voiced: bool,
}

/// What an agent needs from the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentNeeds {
    /// Buffer each caller utterance and hand it over with [`Agent::on_user_turn`] (echo, STT).
    pub utterance_audio: bool,
    /// Call [`Agent::on_audio`] for every inbound frame (speech-to-speech relays).
    pub streaming_audio: bool,
}

/// An agent: the brain behind a call. All methods have a `now` and push [`Action`]s.
pub trait Agent {
    /// Short name for logs and metrics (`echo`, `cascade`, …).
    fn name(&self) -> &'static str;
    /// What the agent needs from the call.
    fn needs(&self) -> AgentNeeds;
    /// Whether the call's own VAD may barge in on this agent's audio (default `true`). Agents
    /// whose provider decides interruptions itself (ElevenLabs, OpenAI Realtime with server
    /// turn detection) return `false` and ask for the clear with [`Action::Interrupt`], so a
    /// cough hark hears but the provider ignores does not cut the answer. Read once, when the
    /// call is created.
    fn vad_barge_in(&self) -> bool {
        true
    }
    /// Whether the agent can tell a backchannel from a turn by its words (default `false`; the
    /// cascade, through its STT). When it can, a caller turn shorter than
    /// [`crate::config::TurnConfig::backchannel_check_ms`] that ends over a held barge-in is not
    /// decided by its duration: the call keeps the agent's audio held and asks
    /// [`Agent::on_backchannel_check`]. Read once, when the call is created.
    fn checks_backchannels(&self) -> bool {
        false
    }
    /// A short caller turn ended while the agent's audio was held for it (only with
    /// [`Agent::checks_backchannels`]): answer with [`Action::BackchannelVerdict`]. The audio
    /// stays held until then; with no verdict within
    /// [`crate::config::TurnConfig::resume_after_ms`], or when the caller speaks again first,
    /// the turn stands (confirmed, then [`Agent::on_user_turn`] with the same `turn`).
    fn on_backchannel_check(&mut self, _now: Instant, _turn: &UserTurn, _out: &mut Vec<Action>) {}
    /// The stream started; a greeting goes here.
    fn on_start(&mut self, now: Instant, info: &CallInfo, out: &mut Vec<Action>);
    /// An inbound frame (only with [`AgentNeeds::streaming_audio`]).
    fn on_audio(&mut self, _now: Instant, _frame: &AudioFrame<'_>, _out: &mut Vec<Action>) {}
    /// The caller started speaking (VAD), whether or not the agent is speaking.
    fn on_user_speech_start(&mut self, _now: Instant, _media_ms: u64, _out: &mut Vec<Action>) {}
    /// The caller's turn ended (endpointing).
    fn on_user_turn(&mut self, now: Instant, turn: UserTurn, out: &mut Vec<Action>);
    /// The caller barged in: the playout is already cleared and the interrupted utterances
    /// cancelled; the agent cancels its in-flight work and records what was heard.
    fn on_barge_in(&mut self, now: Instant, heard: &Interrupted, out: &mut Vec<Action>);
    /// Utterance `id` played to the end.
    fn on_played(&mut self, _now: Instant, _id: UtteranceId, _out: &mut Vec<Action>) {}
    /// The caller pressed a key.
    fn on_dtmf(&mut self, _now: Instant, _digit: &str, _out: &mut Vec<Action>) {}
    /// A provider pipe reported something.
    fn on_provider(&mut self, _now: Instant, _event: ProviderEvent, _out: &mut Vec<Action>) {}
    /// A time asked for with [`Action::WakeAt`] has come.
    fn on_timeout(&mut self, _now: Instant, _out: &mut Vec<Action>) {}
    /// Twilio's answering machine detection found who or what answered
    /// ([`crate::Input::AnsweredBy`]). By default nothing changes; an agent that can leave a
    /// message does so on [`crate::AnsweredBy::MachineEnd`].
    fn on_answered_by(
        &mut self,
        _now: Instant,
        _answered_by: crate::AnsweredBy,
        _out: &mut Vec<Action>,
    ) {
    }
    /// The stream stopped; close provider pipes.
    fn on_stop(&mut self, _now: Instant, _out: &mut Vec<Action>) {}
    /// An [`Action::Transfer`] to `to` could not be carried out (`reason`); the call goes on.
    /// By default the agent hangs up, as it has nothing more to say; agents that can talk
    /// should tell the caller instead.
    fn on_transfer_failed(&mut self, _now: Instant, to: &str, reason: &str, out: &mut Vec<Action>) {
        out.push(Action::Hangup {
            reason: format!("transfer to {to} failed: {reason}"),
        });
    }
}

/// The offline default agent: plays each caller utterance back, with the text "(echo)".
/// Interruptible like any agent.
#[derive(Debug, Default)]
pub struct EchoAgent {
    next: u64,
}

impl EchoAgent {
    /// A new echo agent.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Agent for EchoAgent {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: true,
            streaming_audio: false,
        }
    }

    fn on_start(&mut self, _now: Instant, _info: &CallInfo, _out: &mut Vec<Action>) {}

    fn on_user_turn(&mut self, _now: Instant, turn: UserTurn, out: &mut Vec<Action>) {
        if turn.audio.is_empty() {
            return;
        }
        self.next += 1;
        let id = UtteranceId(self.next);
        out.push(Action::Play {
            id,
            audio: AgentAudio::Pcm {
                rate: turn.rate,
                samples: turn.audio,
            },
            text: Some("(echo)".to_string()),
        });
        out.push(Action::Finish(id));
    }

    fn on_barge_in(&mut self, _now: Instant, _heard: &Interrupted, _out: &mut Vec<Action>) {
        // Nothing in flight: the echo is produced at once, and the playout already dropped it.
    }
}
