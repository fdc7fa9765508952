//! [`ElevenLabsAgent`]: relays a call to an ElevenLabs Conversational AI agent over its
//! WebSocket, sans-IO.
//!
//! Wire format: `fixtures/specs/elevenlabs/agent.asyncapi.yaml` (elevenlabs/packages, AsyncAPI
//! 2.6.0) and `shared/reference/providers.md` §5; the relay follows ElevenLabs' own Twilio
//! example (`shared/reference/anchors.md` §6).
//!
//! - **Connect**: at stream start, a WebSocket to [`ElevenLabsConfig::url`] (a public agent's
//!   URL); or, for a private agent ([`ElevenLabsConfig::signed_url`]), first an HTTP pipe
//!   `GET /v1/convai/conversation/get-signed-url?agent_id=…` with `xi-api-key`, whose whole
//!   body `{"signed_url":"wss://…"}` gives the WebSocket URL, used verbatim with no auth header
//!   (`providers.md` §5). A refused lookup (non-2xx), no answer within
//!   [`SignedUrlLookup::timeout_ms`] or an answer without a usable `signed_url` ends the call
//!   like a refused connection (below), with kind `signed_url_http_<status>`,
//!   `signed_url_timeout`, `signed_url_connect` or `signed_url_bad_answer`. Once open,
//!   `conversation_initiation_client_data` goes first: the configured
//!   `conversation_config_override` (prompt, first message, language, voice; a `prompt`,
//!   `first_message`, `language` or `voice_id` stream parameter overrides its setting for
//!   the call) and every `customParameters` entry as a `dynamic_variables` string.
//! - **Caller audio**: each 20 ms inbound frame becomes one `{"user_audio_chunk": …}` (no
//!   `type`, by design) in the agent's `user_input_audio_format` from
//!   `conversation_initiation_metadata`: `ulaw_8000` passes Twilio's μ-law bytes through
//!   untouched; `pcm_8000` is the decoded PCM; `pcm_16000` is the call's 16 kHz PCM when
//!   [`crate::CallConfig::agent_rate`] is 16 kHz, else hark's resampler output (as for 22.05,
//!   24, 44.1 and 48 kHz). PCM is s16le mono. Audio before the metadata is held (up to
//!   [`ElevenLabsConfig::max_buffer_ms`], oldest dropped first) and sent once the format is
//!   known.
//! - **Agent audio**: `audio` events are played through the playout in the
//!   `agent_output_audio_format`: `ulaw_8000` → [`AgentAudio::Mulaw`] untouched, `pcm_*` →
//!   [`AgentAudio::Pcm`] at that rate. The alignment characters, when present, are the text of
//!   the chunk (so a barge-in reports the heard words). Audio events have no response id: an
//!   utterance ends at an interruption, a final user transcript, a tool call that ends the
//!   call, or after [`ElevenLabsConfig::idle_finish_ms`] without audio.
//! - **Interruptions** are ElevenLabs' (it does turn-taking server-side), so hark's own VAD
//!   barge-in is off ([`Agent::vad_barge_in`] is `false`). On `interruption` the agent asks the
//!   call for a Twilio `clear` ([`Action::Interrupt`]) and drops every later-arriving `audio`
//!   whose `event_id` is at or below the interruption's (the SDK's rule).
//! - **Answering machines** (`elevenlabs/voicemail.rs`): on `machine_end_*` the message is the
//!   `first_message` of a new conversation ([`VOICEMAIL_PEER`]), then the call hangs up.
//! - `ping` → `pong` with the same `event_id`, at once.
//! - `user_transcript`, `agent_response` and `agent_response_correction` (the heard part after
//!   an interruption, `interrupted: true`) → [`AgentReport::Transcript`].
//! - `client_tool_call` for [`ElevenLabsConfig::end_call_tool`] → `client_tool_result`, then
//!   [`Action::Hangup`] once queued audio has played. A call of one of the operator's tools
//!   ([`ElevenLabsConfig::tools`], `elevenlabs/tools.rs`) is POSTed to its backend
//!   ([`crate::agents::http_tools`]) and answered when it ends: `client_tool_result` with the
//!   answer's JSON as `result` (`is_error: false`), or the error text (`is_error: true`: a
//!   refused argument, an error status, no answer within the tool's timeout). Any other client
//!   tool is answered at once with `is_error: true` so the agent does not wait for it.
//! - **Ends**: a close with 1000 ends the call once queued audio has played; an `error` event,
//!   another close code (1002 operational, 1008 contract/auth, 1011 internal), a refused or
//!   failed connection, or an unknown audio format is reported as
//!   [`AgentReport::ProviderFault`] (`provider` `elevenlabs`) and ends the call with the reason
//!   logged ([`Action::Hangup`]; the TwiML after `<Connect>` can say goodbye).
//! - **Latency** (timed as for every speech-to-speech agent, `agents/s2s.rs`):
//!   [`crate::agent::Stage::FirstAudio`] from the end of the caller's turn (the final
//!   `user_transcript`, else hark's endpointing) to the answer's first `audio`;
//!   [`crate::agent::Stage::Greeting`] from stream start to the first audio when the agent
//!   speaks first.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hark_codecs::{Resampler, SampleRate, mulaw};

use super::http_tools::{HttpTools, ToolRuns};
use super::s2s::AnswerTiming;
use crate::agent::{
    Action, Agent, AgentNeeds, AgentReport, AudioFrame, CallInfo, OpenSpec, PeerId,
    ProviderCommand, ProviderEvent, ProviderMessage, Role, UserTurn, WsRequest,
};
use crate::playout::{AgentAudio, Interrupted, UtteranceId};

mod initiation;
mod tools;
mod voicemail;
mod wire;

use wire::{AudioEvent, Metadata, ServerMessage};
pub use wire::{AudioFormat, DEFAULT_SIGNED_URL_TIMEOUT_MS, SignedUrlLookup, parse_signed_url};

/// `provider` label of this agent's [`AgentReport::ProviderFault`]s.
pub const PROVIDER: &str = "elevenlabs";

/// The pipe id of the conversation WebSocket.
pub const PEER: PeerId = PeerId(1);

/// The pipe id of the signed-URL request ([`SignedUrlLookup`]).
pub const SIGNED_URL_PEER: PeerId = PeerId(2);

/// The pipe id of the first operator tool request; each later one takes the next id.
pub const FIRST_TOOL_PEER: PeerId = PeerId(3);

/// The pipe id of the conversation that leaves a voicemail message (`elevenlabs/voicemail.rs`).
pub const VOICEMAIL_PEER: PeerId = PeerId(0);

/// `conversation_config_override` values. Each is sent only when set, and ElevenLabs accepts
/// each only if the agent's security settings allow overriding it (else it closes with 1008
/// `override_error`). Audio formats cannot be overridden.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `agent.prompt.prompt`: the system prompt.
    pub prompt: Option<String>,
    /// `agent.first_message`: what the agent says first (empty: it waits for the caller).
    pub first_message: Option<String>,
    /// `agent.language`: ISO code such as `en`.
    pub language: Option<String>,
    /// `tts.voice_id`.
    pub voice_id: Option<String>,
}

/// Settings of one [`ElevenLabsAgent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElevenLabsConfig {
    /// The conversation WebSocket URL: a signed URL (`wss://…/v1/convai/conversation?agent_id=…
    /// &conversation_signature=…`), or `wss://…/v1/convai/conversation?agent_id=…` for a public
    /// agent. `None`: the URL comes from [`ElevenLabsConfig::signed_url`].
    pub url: Option<String>,
    /// The signed-URL lookup of a private agent, made at stream start when `url` is `None`.
    /// With neither, the call ends at stream start (fault kind `no_url`).
    pub signed_url: Option<SignedUrlLookup>,
    /// Extra upgrade headers (none for a signed URL).
    pub headers: Vec<(String, String)>,
    /// Overrides sent with the initiation.
    pub overrides: Overrides,
    /// Send the stream's `customParameters` as `dynamic_variables` (default true).
    pub dynamic_variables: bool,
    /// The client tool that ends the call (default `end_call`).
    pub end_call_tool: String,
    /// The operator's tools: a `client_tool_call` of one of these names is POSTed to its
    /// backend (default none). The ElevenLabs agent must define them as client tools.
    pub tools: HttpTools,
    /// Caller audio held while connecting, ms (default 2000; 8 bytes per ms).
    pub max_buffer_ms: u64,
    /// An utterance ends after this long without `audio` events, ms (default 1000).
    pub idle_finish_ms: u64,
    /// Left on an answering machine after its beep (`{{name}}`s filled from the call's
    /// `<Parameter>`s) as the `first_message` of a new conversation, then the call hangs up;
    /// `None`: hang up on a machine at once. See `elevenlabs/voicemail.rs`.
    pub voicemail_text: Option<String>,
}

impl Default for ElevenLabsConfig {
    fn default() -> Self {
        ElevenLabsConfig {
            url: None,
            signed_url: None,
            headers: Vec::new(),
            overrides: Overrides::default(),
            dynamic_variables: true,
            end_call_tool: "end_call".to_string(),
            tools: HttpTools::default(),
            max_buffer_ms: 2000,
            idle_finish_ms: 1000,
            voicemail_text: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the stream start.
    Idle,
    /// The signed-URL request is in flight (until the deadline).
    Signing {
        /// When the agent gives up on it.
        deadline: Instant,
    },
    /// WebSocket requested.
    Connecting,
    /// Open, initiation sent, waiting for the metadata (formats).
    Open,
    /// Metadata received: audio flows.
    Ready,
    /// Over (ended, failed or stopped).
    Ended,
}

/// Counters of one relay, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// `user_audio_chunk` messages sent.
    pub chunks_sent: u64,
    /// Caller audio dropped because the connection took longer than `max_buffer_ms`, ms.
    pub buffer_dropped_ms: u64,
    /// `audio` events played.
    pub audio_events: u64,
    /// `audio` events dropped as stale (event id at or below an interruption's).
    pub stale_dropped: u64,
    /// `pong`s sent.
    pub pongs: u64,
}

/// The ElevenLabs Conversational AI relay. See the module docs.
pub struct ElevenLabsAgent {
    cfg: ElevenLabsConfig,
    phase: Phase,
    info: Option<CallInfo>,
    input: Option<AudioFormat>,
    output: Option<AudioFormat>,
    /// μ-law held until the input format is known.
    pending: Vec<u8>,
    up: Option<Resampler>,
    pcm8: Vec<i16>,
    pcm: Vec<i16>,
    bytes: Vec<u8>,
    carry: Option<u8>,
    /// Alignment text of the current utterance not yet attached: the end of a word cut by a
    /// chunk boundary (text goes to the playout in whole words).
    words: String,
    current: Option<UtteranceId>,
    next_id: u64,
    last_audio_at: Option<Instant>,
    interrupted_upto: Option<i64>,
    /// Greeting and first-audio latencies.
    timing: AnswerTiming,
    /// The operator's tool calls out.
    runs: ToolRuns,
    /// An `end_call_after` tool succeeded: the call ends when the first utterance numbered
    /// above this finishes (the answer after the result); the hang-up reason.
    end_after: Option<(u64, String)>,
    /// The conversation's pipe: [`PEER`], or [`VOICEMAIL_PEER`] once a machine answered.
    peer: PeerId,
    /// A machine answered: the message the conversation opens with, and the latest hang-up.
    machine: Option<(Option<String>, Instant)>,
    stats: RelayStats,
}

impl std::fmt::Debug for ElevenLabsAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElevenLabsAgent")
            .field("phase", &self.phase)
            .field("input", &self.input)
            .field("output", &self.output)
            .field("stats", &self.stats)
            .finish()
    }
}

impl ElevenLabsAgent {
    /// A relay with `cfg`; it connects (or looks the URL up first) at stream start.
    pub fn new(cfg: ElevenLabsConfig) -> Self {
        ElevenLabsAgent {
            cfg,
            phase: Phase::Idle,
            info: None,
            input: None,
            output: None,
            pending: Vec::new(),
            up: None,
            pcm8: Vec::with_capacity(160),
            pcm: Vec::with_capacity(960),
            bytes: Vec::with_capacity(1920),
            carry: None,
            words: String::new(),
            current: None,
            next_id: 0,
            last_audio_at: None,
            interrupted_upto: None,
            timing: AnswerTiming::default(),
            runs: ToolRuns::new(FIRST_TOOL_PEER),
            end_after: None,
            peer: PEER,
            machine: None,
            stats: RelayStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Asks for the signed URL ([`SIGNED_URL_PEER`]) and a wake-up at its deadline.
    fn look_up(&mut self, now: Instant, lookup: &SignedUrlLookup, out: &mut Vec<Action>) {
        let deadline = now + Duration::from_millis(lookup.timeout_ms);
        self.phase = Phase::Signing { deadline };
        out.push(Action::Provider(ProviderCommand::Open {
            peer: SIGNED_URL_PEER,
            spec: OpenSpec::Http(lookup.request()),
        }));
        out.push(Action::WakeAt(deadline));
    }

    /// What the signed-URL pipe reported: the URL (then the WebSocket opens), or the end of
    /// the call.
    fn on_lookup(&mut self, event: ProviderEvent, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Signing { .. }) {
            return; // Answered, timed out or stopped already.
        }
        let fault = match event {
            ProviderEvent::Opened { .. } => return,
            ProviderEvent::Message {
                message: ProviderMessage::Text(body),
                ..
            } => match parse_signed_url(&body) {
                Some(url) => {
                    self.cfg.url = Some(url);
                    self.connect(out);
                    return;
                }
                None => (
                    "signed_url_bad_answer".to_string(),
                    body.chars().take(200).collect(),
                ),
            },
            ProviderEvent::Message {
                message: ProviderMessage::Binary(b),
                ..
            } => (
                "signed_url_bad_answer".to_string(),
                format!("a binary body of {} bytes", b.len()),
            ),
            ProviderEvent::Closed { .. } => {
                self.phase = Phase::Idle; // The pipe is gone: nothing to close.
                (
                    "signed_url_bad_answer".to_string(),
                    "the answer ended without a body".to_string(),
                )
            }
            ProviderEvent::Failed { fault, .. } => {
                self.phase = Phase::Idle; // The pipe is gone: nothing to close.
                (SignedUrlLookup::fault_label(&fault), fault.to_string())
            }
        };
        self.end(Some(fault), out);
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        let Some(url) = self.cfg.url.clone() else {
            return;
        };
        self.phase = Phase::Connecting;
        out.push(Action::Provider(ProviderCommand::Open {
            peer: self.peer,
            spec: OpenSpec::WebSocket(WsRequest {
                stage: crate::agent::STAGE_ELEVENLABS,
                url,
                headers: self.cfg.headers.clone(),
            }),
        }));
    }

    fn send(&self, out: &mut Vec<Action>, text: String) {
        out.push(Action::Provider(ProviderCommand::Send {
            peer: self.peer,
            message: ProviderMessage::Text(text),
        }));
    }

    /// Converts μ-law 8 kHz (and, when it is at the input rate, the call's PCM) to the input
    /// format and sends it as one `user_audio_chunk`.
    fn send_audio(&mut self, mulaw_bytes: &[u8], pcm: Option<&[i16]>, out: &mut Vec<Action>) {
        let Some(fmt) = self.input else { return };
        self.bytes.clear();
        match fmt {
            AudioFormat::Ulaw8000 => self.bytes.extend_from_slice(mulaw_bytes),
            AudioFormat::Pcm(rate) => {
                self.pcm.clear();
                match pcm {
                    Some(p)
                        if rate.ms_of(p.len()) == SampleRate::TWILIO.ms_of(mulaw_bytes.len()) =>
                    {
                        self.pcm.extend_from_slice(p)
                    }
                    _ => {
                        self.pcm8.resize(mulaw_bytes.len(), 0);
                        mulaw::decode(mulaw_bytes, &mut self.pcm8);
                        if rate == SampleRate::HZ_8000 {
                            self.pcm.extend_from_slice(&self.pcm8);
                        } else {
                            if self.up.is_none() {
                                self.up = Resampler::new(SampleRate::HZ_8000, rate).ok();
                            }
                            if let Some(up) = self.up.as_mut()
                                && up.process(&self.pcm8, &mut self.pcm).is_err()
                            {
                                self.pcm.clear();
                            }
                        }
                    }
                }
                hark_codecs::pcm::i16_to_s16le(&self.pcm, &mut self.bytes);
            }
        }
        if self.bytes.is_empty() {
            return;
        }
        let mut s = String::with_capacity(24 + self.bytes.len().div_ceil(3) * 4);
        s.push_str("{\"user_audio_chunk\":\"");
        B64.encode_string(&self.bytes, &mut s);
        s.push_str("\"}");
        self.stats.chunks_sent += 1;
        self.send(out, s);
    }

    fn finish_utterance(&mut self, out: &mut Vec<Action>) {
        if let Some(id) = self.current.take() {
            let rest = std::mem::take(&mut self.words);
            if !rest.trim().is_empty() {
                out.push(Action::Play {
                    id,
                    audio: AgentAudio::Mulaw(Vec::new()),
                    text: Some(rest.trim().to_string()),
                });
            }
            out.push(Action::Finish(id));
            if let Some((after, _)) = &self.end_after
                && id.0 > *after
                && let Some((_, reason)) = self.end_after.take()
            {
                out.push(Action::Hangup { reason });
            }
        }
        self.carry = None;
        self.words.clear();
    }

    /// The whole words of this chunk's alignment text (with what an earlier chunk cut off);
    /// a word cut by the chunk's end waits for the next chunk.
    fn whole_words(&mut self, chunk_text: &str) -> Option<String> {
        take_whole_words(&mut self.words, chunk_text)
    }

    fn end(&mut self, fault: Option<(String, String)>, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        let open_pipe = self.open_pipe();
        self.phase = Phase::Ended;
        self.runs.close_all(out);
        self.finish_utterance(out);
        let reason = match fault {
            Some((kind, detail)) => {
                let reason = format!("elevenlabs: {kind}: {detail}");
                out.push(Action::Report(AgentReport::ProviderFault {
                    provider: PROVIDER.to_string(),
                    kind,
                    detail,
                }));
                reason
            }
            None => "elevenlabs ended the conversation".to_string(),
        };
        if let Some(peer) = open_pipe {
            out.push(Action::Provider(ProviderCommand::Close { peer }));
        }
        out.push(Action::Hangup { reason });
    }

    /// The pipe this phase has open, to close when the relay ends.
    fn open_pipe(&self) -> Option<PeerId> {
        match self.phase {
            Phase::Signing { .. } => Some(SIGNED_URL_PEER),
            Phase::Connecting | Phase::Open | Phase::Ready => Some(self.peer),
            Phase::Idle | Phase::Ended => None,
        }
    }

    fn on_message(&mut self, now: Instant, text: &str, out: &mut Vec<Action>) {
        let msg: ServerMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                out.push(Action::Report(AgentReport::ProviderFault {
                    provider: PROVIDER.to_string(),
                    kind: "bad_message".to_string(),
                    detail: format!("{e}: {}", text.chars().take(120).collect::<String>()),
                }));
                return;
            }
        };
        match msg {
            ServerMessage::ConversationInitiationMetadata {
                conversation_initiation_metadata_event: m,
            } => self.on_metadata(m, out),
            ServerMessage::Audio { audio_event } => self.on_agent_audio(now, audio_event, out),
            ServerMessage::Interruption { interruption_event } => {
                if let Some(id) = interruption_event.and_then(|e| e.event_id) {
                    self.interrupted_upto = Some(self.interrupted_upto.map_or(id, |k| k.max(id)));
                }
                self.current = None;
                self.carry = None;
                self.words.clear();
                out.push(Action::Interrupt);
            }
            ServerMessage::Ping { ping_event } => {
                let id = ping_event.event_id.unwrap_or(0);
                self.stats.pongs += 1;
                self.send(out, format!("{{\"type\":\"pong\",\"event_id\":{id}}}"));
            }
            ServerMessage::UserTranscript {
                user_transcription_event: t,
            } => {
                self.timing.provider_turn_end(now);
                // A new answer follows: whatever is still open belongs to the last one.
                self.finish_utterance(out);
                out.push(Action::Report(AgentReport::Transcript {
                    role: Role::User,
                    text: t.user_transcript,
                    interrupted: false,
                }));
            }
            ServerMessage::AgentResponse {
                agent_response_event: r,
            } => out.push(Action::Report(AgentReport::Transcript {
                role: Role::Agent,
                text: r.agent_response,
                interrupted: false,
            })),
            ServerMessage::AgentResponseCorrection {
                agent_response_correction_event: c,
            } => out.push(Action::Report(AgentReport::Transcript {
                role: Role::Agent,
                text: c.corrected_agent_response,
                interrupted: true,
            })),
            ServerMessage::ClientToolCall {
                client_tool_call: t,
            } => self.on_client_tool_call(now, t, out),
            ServerMessage::Error { error_event: e } => {
                let kind = e
                    .error_type
                    .clone()
                    .unwrap_or_else(|| format!("error_{}", e.code.unwrap_or(0)));
                let detail = format!(
                    "code {}: {}",
                    e.code.unwrap_or(0),
                    e.message.or(e.reason).unwrap_or_default()
                );
                self.end(Some((kind, detail)), out);
            }
            ServerMessage::Other => {}
        }
    }

    fn on_metadata(&mut self, m: Metadata, out: &mut Vec<Action>) {
        let (Some(input), Some(output)) = (
            AudioFormat::parse(&m.user_input_audio_format),
            AudioFormat::parse(&m.agent_output_audio_format),
        ) else {
            let detail = format!(
                "unsupported audio formats: input {:?}, output {:?} (conversation {})",
                m.user_input_audio_format, m.agent_output_audio_format, m.conversation_id
            );
            self.end(Some(("audio_format".to_string(), detail)), out);
            return;
        };
        self.input = Some(input);
        self.output = Some(output);
        self.phase = Phase::Ready;
        let pending = std::mem::take(&mut self.pending);
        for chunk in pending.chunks(160) {
            self.send_audio(chunk, None, out);
        }
        self.pending = pending;
        self.pending.clear();
    }

    fn on_agent_audio(&mut self, now: Instant, ev: AudioEvent, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        if let (Some(k), Some(id)) = (self.interrupted_upto, ev.event_id)
            && id <= k
        {
            self.stats.stale_dropped += 1;
            return;
        }
        let Some(fmt) = self.output else {
            // Audio before the metadata: the format is unknown, treat as the default.
            return;
        };
        let Ok(bytes) = B64.decode(ev.audio_base_64.as_bytes()) else {
            out.push(Action::Report(AgentReport::ProviderFault {
                provider: PROVIDER.to_string(),
                kind: "bad_audio".to_string(),
                detail: "audio_base_64 is not base64".to_string(),
            }));
            return;
        };
        self.stats.audio_events += 1;
        let id = match self.current {
            Some(id) => id,
            None => {
                self.next_id += 1;
                let id = UtteranceId(self.next_id);
                self.current = Some(id);
                out.extend(self.timing.first_audio(now).map(Action::Report));
                id
            }
        };
        let text = match ev.alignment {
            Some(a) if !a.chars.is_empty() => self.whole_words(&a.chars.concat()),
            _ => None,
        };
        let audio = match fmt {
            AudioFormat::Ulaw8000 => AgentAudio::Mulaw(bytes),
            AudioFormat::Pcm(rate) => {
                let mut raw = bytes;
                if let Some(b) = self.carry.take() {
                    raw.insert(0, b);
                }
                if !raw.len().is_multiple_of(2) {
                    self.carry = raw.pop();
                }
                let mut samples = Vec::with_capacity(raw.len() / 2);
                hark_codecs::pcm::s16le_to_i16(&raw, &mut samples);
                AgentAudio::Pcm { rate, samples }
            }
        };
        out.push(Action::Play { id, audio, text });
        self.last_audio_at = Some(now);
        out.push(Action::WakeAt(
            now + Duration::from_millis(self.cfg.idle_finish_ms),
        ));
    }
}

impl Agent for ElevenLabsAgent {
    fn name(&self) -> &'static str {
        "elevenlabs"
    }

    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: false,
            streaming_audio: true,
        }
    }

    fn vad_barge_in(&self) -> bool {
        false
    }

    fn on_start(&mut self, now: Instant, info: &CallInfo, out: &mut Vec<Action>) {
        self.info = Some(info.clone());
        self.timing.start(now);
        if self.phase != Phase::Idle {
            return;
        }
        if self.cfg.url.is_some() {
            self.connect(out);
        } else if let Some(lookup) = self.cfg.signed_url.clone() {
            self.look_up(now, &lookup, out);
        } else {
            let detail = "neither a conversation URL nor a signed-URL lookup is configured";
            self.end(Some(("no_url".to_string(), detail.to_string())), out);
        }
    }

    fn on_audio(&mut self, _now: Instant, frame: &AudioFrame<'_>, out: &mut Vec<Action>) {
        if self.machine.is_some() {
            return; // Deaf: the machine is recording the message.
        }
        match self.phase {
            Phase::Ready => self.send_audio(frame.mulaw, Some(frame.pcm), out),
            Phase::Idle | Phase::Signing { .. } | Phase::Connecting | Phase::Open => {
                let cap = SampleRate::TWILIO.g711_bytes_in_ms(self.cfg.max_buffer_ms);
                self.pending.extend_from_slice(frame.mulaw);
                if self.pending.len() > cap {
                    let drop = self.pending.len() - cap;
                    self.stats.buffer_dropped_ms += drop as u64 / 8;
                    self.pending.drain(..drop);
                }
            }
            Phase::Ended => {}
        }
    }

    fn on_user_turn(&mut self, now: Instant, _turn: UserTurn, _out: &mut Vec<Action>) {
        // ElevenLabs takes turns itself; hark's endpointing only times the answer when no
        // user transcript does.
        self.timing.hark_turn_end(now);
    }

    fn on_barge_in(&mut self, _now: Instant, _heard: &Interrupted, _out: &mut Vec<Action>) {
        // Only ElevenLabs' `interruption` clears (hark's VAD barge-in is off): the playout has
        // cancelled the utterance; the next fresh audio opens a new one.
        self.current = None;
        self.carry = None;
        self.words.clear();
    }

    fn on_provider(&mut self, now: Instant, event: ProviderEvent, out: &mut Vec<Action>) {
        match event {
            ProviderEvent::Opened { peer, .. }
            | ProviderEvent::Message { peer, .. }
            | ProviderEvent::Closed { peer }
            | ProviderEvent::Failed { peer, .. }
                if peer == SIGNED_URL_PEER =>
            {
                self.on_lookup(event, out)
            }
            ProviderEvent::Opened { peer, .. }
            | ProviderEvent::Message { peer, .. }
            | ProviderEvent::Closed { peer }
            | ProviderEvent::Failed { peer, .. }
                if self.runs.owns(peer) =>
            {
                if let Some(end) = self.runs.on_event(event, out) {
                    self.tool_ended(end, out);
                }
            }
            ProviderEvent::Opened { peer, .. } if peer == self.peer => {
                if self.phase != Phase::Connecting {
                    return;
                }
                self.phase = Phase::Open;
                self.send(out, self.initiation().to_string());
            }
            ProviderEvent::Message { peer, message } if peer == self.peer => match message {
                ProviderMessage::Text(t) => self.on_message(now, &t, out),
                ProviderMessage::Binary(b) => {
                    out.push(Action::Report(AgentReport::ProviderFault {
                        provider: PROVIDER.to_string(),
                        kind: "bad_message".to_string(),
                        detail: format!("unexpected binary frame of {} bytes", b.len()),
                    }))
                }
            },
            ProviderEvent::Closed { peer } if peer == self.peer && self.phase != Phase::Ended => {
                self.phase = Phase::Ended;
                self.runs.close_all(out);
                self.finish_utterance(out);
                out.push(Action::Hangup {
                    reason: "elevenlabs ended the conversation (close 1000)".to_string(),
                });
            }
            ProviderEvent::Failed { peer, fault } if peer == self.peer => {
                if self.phase == Phase::Ended {
                    return;
                }
                let kind = fault.session_label(self.phase != Phase::Connecting);
                // The socket is gone already: nothing to close.
                self.phase = Phase::Idle;
                self.end(Some((kind.into_owned(), fault.to_string())), out);
            }
            _ => {}
        }
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.tool_deadlines(now, out);
        self.voicemail_timeout(now, out);
        if let Phase::Signing { deadline } = self.phase {
            if now < deadline {
                out.push(Action::WakeAt(deadline));
            } else {
                let timeout_ms = self.cfg.signed_url.as_ref().map_or(0, |l| l.timeout_ms);
                let detail = format!("no signed URL within {timeout_ms} ms");
                self.end(Some(("signed_url_timeout".to_string(), detail)), out);
            }
            return;
        }
        if let (Some(_), Some(last)) = (self.current, self.last_audio_at) {
            let due = last + Duration::from_millis(self.cfg.idle_finish_ms);
            if now >= due {
                self.finish_utterance(out);
            } else {
                out.push(Action::WakeAt(due));
            }
        }
    }

    fn on_answered_by(&mut self, now: Instant, by: crate::AnsweredBy, out: &mut Vec<Action>) {
        self.answered_by(now, by, out);
    }

    fn on_stop(&mut self, _now: Instant, out: &mut Vec<Action>) {
        if let Some(peer) = self.open_pipe() {
            out.push(Action::Provider(ProviderCommand::Close { peer }));
        }
        self.runs.close_all(out);
        self.phase = Phase::Ended;
    }
}

/// Appends `more` to `buf` and takes the whole words from its front: everything up to the
/// last whitespace, trimmed (`None` if that is empty); a word still being spelt stays in `buf`.
/// The playout joins text pieces with spaces, so pieces must not cut words.
pub(crate) fn take_whole_words(buf: &mut String, more: &str) -> Option<String> {
    buf.push_str(more);
    let cut = buf
        .char_indices()
        .rfind(|(_, c)| c.is_whitespace())
        .map(|(i, c)| i + c.len_utf8())?;
    let rest = buf.split_off(cut);
    let done = std::mem::replace(buf, rest);
    let done = done.trim();
    (!done.is_empty()).then(|| done.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alignment_text_goes_out_in_whole_words() {
        let mut a = ElevenLabsAgent::new(ElevenLabsConfig::default());
        assert_eq!(a.whole_words("I' "), Some("I'".into()));
        assert_eq!(a.whole_words("m so"), Some("m".into()));
        assert_eq!(a.whole_words("rry to h"), Some("sorry to".into()));
        assert_eq!(a.whole_words("e"), None);
        assert_eq!(a.words, "he");
    }

    #[test]
    fn without_any_url_the_call_ends_at_start() {
        let mut a = ElevenLabsAgent::new(ElevenLabsConfig::default());
        let mut out = Vec::new();
        a.on_start(Instant::now(), &CallInfo::default(), &mut out);
        assert!(matches!(
            &out[..],
            [
                Action::Report(AgentReport::ProviderFault { kind, .. }),
                Action::Hangup { .. }
            ] if kind == "no_url"
        ));
    }

    #[test]
    fn initiation_carries_overrides_and_dynamic_variables() {
        let mut a = ElevenLabsAgent::new(ElevenLabsConfig {
            url: Some("ws://x/".into()),
            overrides: Overrides {
                prompt: Some("Be brief.".into()),
                voice_id: Some("v1".into()),
                ..Overrides::default()
            },
            ..ElevenLabsConfig::default()
        });
        let mut out = Vec::new();
        let info = CallInfo {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            parameters: vec![
                ("payerId".into(), "P-42".into()),
                ("first_message".into(), "Hi P-42".into()),
            ],
        };
        a.on_start(Instant::now(), &info, &mut out);
        let v = a.initiation();
        assert_eq!(v["type"], "conversation_initiation_client_data");
        assert_eq!(
            v["conversation_config_override"]["agent"]["prompt"]["prompt"],
            "Be brief."
        );
        assert_eq!(
            v["conversation_config_override"]["agent"]["first_message"],
            "Hi P-42"
        );
        assert_eq!(v["conversation_config_override"]["tts"]["voice_id"], "v1");
        assert_eq!(v["dynamic_variables"]["payerId"], "P-42");
        let plain = ElevenLabsAgent::new(ElevenLabsConfig::default()).initiation();
        assert_eq!(
            plain,
            json!({"type": "conversation_initiation_client_data"})
        );
    }
}
