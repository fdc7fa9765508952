//! [`RealtimeAgent`]: a call answered by OpenAI Realtime (speech to speech) over its WebSocket,
//! sans-IO.
//!
//! Wire format (`realtime/wire.rs`): the `RealtimeClientEvent*` / `RealtimeServerEvent*` schemas of
//! `fixtures/specs/openai/openapi.yaml` (GA names; read and written with async-openai's types
//! where they fit) and, for the beta names, of `openapi-manual_spec-2025-04-29.yaml`;
//! summary in `shared/reference/providers.md` §4.
//!
//! - **Connect**: `<url>?model=<model>` with `Authorization: Bearer <key>` (beta adds
//!   `OpenAI-Beta: realtime=v1`). Once open: `session.update` with `audio/pcmu` in and out
//!   (beta `g711_ulaw`), so Twilio's μ-law passes through untouched both ways (160 bytes =
//!   20 ms); the voice, instructions, input transcription and turn detection from
//!   [`RealtimeConfig`]; then an optional greeting `response.create`.
//! - **Caller audio**: each 20 ms frame → `input_audio_buffer.append` (held while connecting,
//!   up to [`RealtimeConfig::max_buffer_ms`]).
//! - **Turn detection** ([`TurnDetection`]): by the server (`server_vad` or `semantic_vad`,
//!   `create_response` and `interrupt_response` on) — hark's own VAD barge-in is then off and
//!   `input_audio_buffer.speech_started` is the interruption; or by hark
//!   (`turn_detection: null`): at the end of each caller turn hark sends
//!   `input_audio_buffer.commit` + `response.create`, and hark's VAD barge-in interrupts.
//! - **Agent audio**: `response.output_audio.delta` (beta `response.audio.delta`) → one
//!   utterance per output item, [`AgentAudio::Mulaw`] untouched; the transcript deltas are the
//!   utterance's text (in whole words), so a barge-in knows the heard words;
//!   `response.output_audio.done` finishes the utterance.
//! - **Barge-in** (the official Twilio sample's flaw fixed, `anchors.md` §5): on
//!   `speech_started` while a response is active or its audio is unplayed, hark sends
//!   `response.cancel` for the active response (its later deltas are dropped) and asks the call
//!   for a Twilio `clear` ([`Action::Interrupt`]); the call answers with what the caller
//!   **heard** according to Twilio's mark echoes ([`Interrupted::heard_ms`]), and hark sends
//!   `conversation.item.truncate` with `audio_end_ms` = that, clamped to the audio the item
//!   actually generated (a larger value is an error). Never a clock estimate. Items queued
//!   behind it and never heard are truncated at 0.
//! - **Transcripts**: `conversation.item.input_audio_transcription.completed` (caller; needs
//!   [`RealtimeConfig::transcription_model`]) and `response.output_audio_transcript.done`
//!   (agent; beta `response.audio_transcript.done`) → [`AgentReport::Transcript`]; for an
//!   interrupted item, the heard words instead (`interrupted: true`).
//! - **Latency** (timed as for every speech-to-speech agent, `agents/s2s.rs`):
//!   [`crate::agent::Stage::FirstAudio`] from `speech_stopped` (or hark's turn end) to the
//!   answer's first delta; [`crate::agent::Stage::Greeting`] for a greeting.
//! - **Tools** (`realtime/tools.rs`): the operator's tools ([`RealtimeConfig::tools`]) are
//!   offered in `session.update` as functions (`tool_choice: "auto"`). The function calls of a
//!   `response.done` are POSTed to the backend ([`crate::agents::http_tools`]); as each ends,
//!   its `function_call_output` (the answer's JSON, or an `error: …` text: refused arguments,
//!   an error status, no answer within the tool's timeout, an unknown name) goes out as
//!   `conversation.item.create`, and once every call of the response has ended, one
//!   `response.create` lets the model answer (after the response active then, if any). A
//!   barge-in during a call does not lose its result.
//! - **Answering machines** (`realtime/voicemail.rs`): on `machine_end_*` the model is asked
//!   to say [`RealtimeConfig::voicemail_text`], then the call hangs up.
//! - **Faults**: `error` events are reported ([`AgentReport::ProviderFault`], provider
//!   `realtime`) and the call goes on (the session survives them), except a cancel that found
//!   nothing to cancel (ignored). A session whose output is not `audio/pcmu`, a refused or
//!   failed connection, or a close ends the call with the reason logged.

use std::collections::HashSet;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hark_codecs::SampleRate;

use super::http_tools::{CallFacts, HttpTools, ToolRuns};
use super::s2s::AnswerTiming;
use crate::agent::{
    Action, Agent, AgentNeeds, AgentReport, AudioFrame, CallInfo, OpenSpec, PeerId,
    ProviderCommand, ProviderEvent, ProviderMessage, Role, UserTurn, WsRequest,
};
use crate::playout::{AgentAudio, Interrupted, UtteranceId};
use wire::{ClientEvent, ServerEvent};

mod tools;
mod voicemail;
mod wire;

/// `provider` label of this agent's [`AgentReport::ProviderFault`]s.
pub const PROVIDER: &str = "realtime";

/// The pipe id of the Realtime WebSocket.
pub const PEER: PeerId = PeerId(1);

/// The pipe id of the first operator tool request; each later one takes the next id.
pub const FIRST_TOOL_PEER: PeerId = PeerId(2);

/// Default endpoint (`HARK_REALTIME_URL`).
pub const DEFAULT_URL: &str = "wss://api.openai.com/v1/realtime";
/// Default model (`HARK_REALTIME_MODEL`).
pub const DEFAULT_MODEL: &str = "gpt-realtime";

/// Who decides when the caller's turn starts and ends.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnDetection {
    /// The server's VAD (`server_vad`). `None` values keep the server's defaults (0.5, 300 ms,
    /// 500 ms).
    ServerVad {
        /// Activation threshold 0–1.
        threshold: Option<f64>,
        /// Audio kept before detected speech, ms.
        prefix_padding_ms: Option<u32>,
        /// Silence that ends the turn, ms.
        silence_duration_ms: Option<u32>,
    },
    /// The server's semantic VAD (`semantic_vad`) with this eagerness (`low`, `medium`,
    /// `high`, `auto`).
    SemanticVad {
        /// Eagerness.
        eagerness: String,
    },
    /// hark's VAD and endpointing (`turn_detection: null`; hark commits and asks for a
    /// response at each turn end).
    Hark,
}

/// GA or beta event names and session shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// GA (`audio.input.format` objects, `response.output_audio.*`).
    Ga,
    /// The beta (`OpenAI-Beta: realtime=v1`, `g711_ulaw` strings, `response.audio.*`).
    Beta,
}

/// Settings of one [`RealtimeAgent`].
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeConfig {
    /// Endpoint (default [`DEFAULT_URL`]); `?model=` is added unless it has one.
    pub url: String,
    /// API key (`Authorization: Bearer`).
    pub api_key: String,
    /// Model (default [`DEFAULT_MODEL`]).
    pub model: String,
    /// Event names and session shape.
    pub api: ApiVersion,
    /// Output voice (`alloy`, `marin`, …); `None` keeps the server's.
    pub voice: Option<String>,
    /// System instructions; `None` keeps the server's.
    pub instructions: Option<String>,
    /// Instructions for a first response at stream start (the agent speaks first).
    pub greeting: Option<String>,
    /// Turn detection.
    pub turn_detection: TurnDetection,
    /// Model transcribing the caller (e.g. `gpt-4o-mini-transcribe`); `None`: no caller
    /// transcripts.
    pub transcription_model: Option<String>,
    /// Caller audio held while connecting, ms (default 2000).
    pub max_buffer_ms: u64,
    /// The operator's tools, offered as functions (default none).
    pub tools: HttpTools,
    /// Left on an answering machine after its beep (`{{name}}`s filled from the call's
    /// `<Parameter>`s), then the call hangs up; `None`: hang up on a machine at once. See
    /// `realtime/voicemail.rs`.
    pub voicemail_text: Option<String>,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            url: DEFAULT_URL.to_string(),
            api_key: String::new(),
            model: DEFAULT_MODEL.to_string(),
            api: ApiVersion::Ga,
            voice: None,
            instructions: None,
            greeting: None,
            turn_detection: TurnDetection::ServerVad {
                threshold: None,
                prefix_padding_ms: None,
                silence_duration_ms: None,
            },
            transcription_model: Some("gpt-4o-mini-transcribe".to_string()),
            max_buffer_ms: 2000,
            tools: HttpTools::default(),
            voicemail_text: None,
        }
    }
}

impl RealtimeConfig {
    /// The WebSocket to open: the URL with `model`, and the auth headers.
    pub fn ws_request(&self) -> WsRequest {
        let url = if self.url.contains("model=") {
            self.url.clone()
        } else {
            let sep = if self.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}model={}", self.url, self.model)
        };
        let mut headers = vec![(
            "Authorization".to_string(),
            format!("Bearer {}", self.api_key),
        )];
        if self.api == ApiVersion::Beta {
            headers.push(("OpenAI-Beta".to_string(), "realtime=v1".to_string()));
        }
        WsRequest {
            stage: crate::agent::STAGE_REALTIME,
            url,
            headers,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Open,
    Ended,
}

/// One assistant output item with audio.
#[derive(Debug)]
struct Item {
    id: String,
    response_id: String,
    utt: UtteranceId,
    /// μ-law bytes generated (8 per ms).
    generated: u64,
    /// Transcript not yet attached to audio.
    words: String,
    /// Characters of transcript the audio so far has room for (see [`CHARS_PER_SECOND`]).
    credit: f64,
    truncated: bool,
    done: bool,
}

/// Counters, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealtimeStats {
    /// `input_audio_buffer.append`s sent.
    pub appends: u64,
    /// Audio deltas played.
    pub deltas: u64,
    /// Deltas of cancelled responses dropped.
    pub dropped_deltas: u64,
    /// `conversation.item.truncate`s sent.
    pub truncates: u64,
    /// `response.cancel`s sent.
    pub cancels: u64,
}

/// The OpenAI Realtime agent. See the module docs.
pub struct RealtimeAgent {
    cfg: RealtimeConfig,
    phase: Phase,
    pending: Vec<u8>,
    items: Vec<Item>,
    /// Transcript deltas of items whose audio has not arrived yet.
    early_words: Vec<(String, String)>,
    next_utt: u64,
    active_response: Option<String>,
    cancelled: HashSet<String>,
    /// Greeting and first-audio latencies.
    timing: AnswerTiming,
    /// The call's facts, for tool requests.
    facts: CallFacts,
    /// The operator's tool calls out.
    runs: ToolRuns,
    /// Function calls were answered: a `response.create` is due once no run is out and no
    /// response is active.
    create_due: bool,
    /// An `end_call_after` tool succeeded: the hang-up reason, and the response that answers
    /// its result once created (the call ends when it is done).
    end_after: Option<(String, Option<String>)>,
    /// A machine answered (the agent is deaf): the hang-up comes by then at the latest.
    machine_until: Option<Instant>,
    event_seq: u64,
    stats: RealtimeStats,
}

impl std::fmt::Debug for RealtimeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeAgent")
            .field("phase", &self.phase)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Items remembered for truncation (older ones are long played).
const KEEP_ITEMS: usize = 8;

/// Speaking rate used to attach transcript words to audio chunks, characters per second
/// (≈ 150 words a minute). Realtime's transcript deltas carry no timing and usually run ahead
/// of the audio, so each chunk takes as many whole words as its duration has room for; the
/// heard words after a barge-in are an estimate (the heard *audio*, from marks, is exact).
pub const CHARS_PER_SECOND: f64 = 15.0;

/// Takes whole words (each followed by whitespace) from the front of `buf` while they fit in
/// `credit` characters; the words go out joined, the credit is spent.
fn take_words(buf: &mut String, credit: &mut f64) -> Option<String> {
    let mut end = 0;
    loop {
        let rest = &buf[end..];
        let start = rest.len() - rest.trim_start().len();
        let Some(len) = rest[start..].find(char::is_whitespace) else {
            break;
        };
        let n = rest[start..start + len].chars().count() as f64 + 1.0;
        if n > *credit {
            break;
        }
        *credit -= n;
        end += start + len;
    }
    if end == 0 {
        return None;
    }
    let rest = buf.split_off(end);
    let done = std::mem::replace(buf, rest);
    let done = done.trim();
    (!done.is_empty()).then(|| done.to_string())
}

impl RealtimeAgent {
    /// An agent with `cfg`; it connects at stream start.
    pub fn new(cfg: RealtimeConfig) -> Self {
        RealtimeAgent {
            cfg,
            phase: Phase::Idle,
            pending: Vec::new(),
            items: Vec::new(),
            early_words: Vec::new(),
            next_utt: 0,
            active_response: None,
            cancelled: HashSet::new(),
            timing: AnswerTiming::default(),
            facts: CallFacts::default(),
            runs: ToolRuns::new(FIRST_TOOL_PEER),
            create_due: false,
            end_after: None,
            machine_until: None,
            event_seq: 0,
            stats: RealtimeStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> RealtimeStats {
        self.stats
    }

    fn send(out: &mut Vec<Action>, text: String) {
        out.push(Action::Provider(ProviderCommand::Send {
            peer: PEER,
            message: ProviderMessage::Text(text),
        }));
    }

    /// Sends `ev` with the next client `event_id` (`hark_<n>`, echoed by the server in
    /// errors).
    fn send_event(&mut self, out: &mut Vec<Action>, ev: ClientEvent) {
        self.event_seq += 1;
        Self::send(out, ev.into_text(format!("hark_{}", self.event_seq)));
    }

    fn fault(out: &mut Vec<Action>, kind: impl Into<String>, detail: impl Into<String>) {
        out.push(Action::Report(AgentReport::ProviderFault {
            provider: PROVIDER.to_string(),
            kind: kind.into(),
            detail: detail.into(),
        }));
    }

    fn end(&mut self, fault: Option<(String, String)>, close: bool, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.runs.close_all(out);
        for it in self.items.iter_mut().filter(|i| !i.done) {
            it.done = true;
            out.push(Action::Finish(it.utt));
        }
        let reason = match fault {
            Some((kind, detail)) => {
                let r = format!("realtime: {kind}: {detail}");
                Self::fault(out, kind, detail);
                r
            }
            None => "realtime closed the session".to_string(),
        };
        if close {
            out.push(Action::Provider(ProviderCommand::Close { peer: PEER }));
        }
        out.push(Action::Hangup { reason });
    }

    fn append(&mut self, mulaw: &[u8], out: &mut Vec<Action>) {
        self.stats.appends += 1;
        Self::send(out, wire::append(mulaw));
    }

    /// Cancels the active response (its later deltas are dropped).
    fn cancel_active(&mut self, out: &mut Vec<Action>) {
        if let Some(r) = self.active_response.take()
            && self.cancelled.insert(r.clone())
        {
            self.stats.cancels += 1;
            self.send_event(out, ClientEvent::Cancel { response_id: r });
        }
    }

    fn item_mut(&mut self, id: &str) -> Option<&mut Item> {
        self.items.iter_mut().find(|i| i.id == id)
    }

    fn on_event(&mut self, now: Instant, text: &str, out: &mut Vec<Action>) {
        let ev = match wire::parse_server_event(text, self.cfg.api) {
            Ok(e) => e,
            Err(e) => {
                Self::fault(
                    out,
                    "bad_event",
                    format!("{e}: {}", text.chars().take(120).collect::<String>()),
                );
                return;
            }
        };
        match ev {
            ServerEvent::Session {
                updated,
                output_format,
            } => {
                let want = match self.cfg.api {
                    ApiVersion::Ga => "audio/pcmu",
                    ApiVersion::Beta => "g711_ulaw",
                };
                // `session.created` shows the defaults before our update: only check the
                // answer to it.
                if let Some(f) = output_format
                    && f != want
                    && updated
                {
                    let detail = format!("session output format {f}, expected {want}");
                    self.end(Some(("audio_format".into(), detail)), true, out);
                }
            }
            ServerEvent::SpeechStarted => {
                if self.cfg.turn_detection == TurnDetection::Hark || self.on_machine() {
                    return;
                }
                self.cancel_active(out);
                // The call clears Twilio if agent audio is unplayed, and answers with what
                // was heard (on_barge_in → truncate).
                out.push(Action::Interrupt);
            }
            ServerEvent::SpeechStopped => self.timing.provider_turn_end(now),
            ServerEvent::ResponseCreated { id } => {
                self.response_created(&id);
                self.active_response = Some(id);
            }
            ServerEvent::ResponseDone { id, failed, calls } => {
                if self.active_response.as_deref() == Some(id.as_str()) {
                    self.active_response = None;
                }
                for it in self
                    .items
                    .iter_mut()
                    .filter(|i| i.response_id == id && !i.done)
                {
                    it.done = true;
                    out.push(Action::Finish(it.utt));
                }
                if let Some(d) = failed {
                    Self::fault(out, "response_failed", d);
                }
                self.response_done(now, &id, calls, out);
            }
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                delta,
            } => self.on_delta(now, response_id, item_id, &delta, out),
            ServerEvent::AudioDone { item_id } => self.on_audio_done(&item_id, out),
            ServerEvent::TranscriptDelta { item_id, delta } => {
                self.on_transcript_delta(item_id, delta);
            }
            ServerEvent::TranscriptDone {
                item_id,
                transcript,
            } => {
                let truncated = self.item_mut(&item_id).is_some_and(|i| i.truncated);
                if !truncated {
                    out.push(Action::Report(AgentReport::Transcript {
                        role: Role::Agent,
                        text: transcript,
                        interrupted: false,
                    }));
                }
            }
            ServerEvent::UserTranscript { transcript } => {
                out.push(Action::Report(AgentReport::Transcript {
                    role: Role::User,
                    text: transcript.trim().to_string(),
                    interrupted: false,
                }));
            }
            ServerEvent::Error {
                kind,
                code,
                message,
            } => {
                if code.as_deref() == Some("response_cancel_not_active") {
                    return; // The server cancelled it first (interrupt_response).
                }
                let kind = code.or(kind).unwrap_or_else(|| "error".to_string());
                Self::fault(out, kind, message.unwrap_or_default());
            }
            ServerEvent::Other => {}
        }
    }

    /// `response.output_audio.done`: the item's words not yet attached go out with an empty
    /// chunk, and its utterance finishes.
    fn on_audio_done(&mut self, item_id: &str, out: &mut Vec<Action>) {
        if let Some(it) = self.item_mut(item_id)
            && !it.done
        {
            it.done = true;
            let utt = it.utt;
            let rest = std::mem::take(&mut it.words);
            if !rest.trim().is_empty() {
                out.push(Action::Play {
                    id: utt,
                    audio: AgentAudio::Mulaw(Vec::new()),
                    text: Some(rest.trim().to_string()),
                });
            }
            out.push(Action::Finish(utt));
        }
    }

    /// A transcript delta: to its item's words, or held until the item's audio arrives (the
    /// last [`KEEP_ITEMS`] items).
    fn on_transcript_delta(&mut self, item_id: String, delta: String) {
        if let Some(it) = self.item_mut(&item_id) {
            it.words.push_str(&delta);
        } else if let Some((_, w)) = self.early_words.iter_mut().find(|(i, _)| *i == item_id) {
            w.push_str(&delta);
        } else {
            if self.early_words.len() >= KEEP_ITEMS {
                self.early_words.remove(0);
            }
            self.early_words.push((item_id, delta));
        }
    }

    fn on_delta(
        &mut self,
        now: Instant,
        response_id: String,
        item_id: String,
        delta: &str,
        out: &mut Vec<Action>,
    ) {
        if self.cancelled.contains(&response_id) || self.phase == Phase::Ended {
            self.stats.dropped_deltas += 1;
            return;
        }
        let Ok(bytes) = B64.decode(delta.as_bytes()) else {
            Self::fault(out, "bad_audio", "audio delta is not base64");
            return;
        };
        if self.item_mut(&item_id).is_none() {
            self.next_utt += 1;
            let utt = UtteranceId(self.next_utt);
            out.extend(self.timing.first_audio(now).map(Action::Report));
            if self.items.len() >= KEEP_ITEMS {
                self.items.remove(0);
            }
            let words = match self.early_words.iter().position(|(i, _)| *i == item_id) {
                Some(p) => self.early_words.remove(p).1,
                None => String::new(),
            };
            self.items.push(Item {
                id: item_id.clone(),
                response_id,
                utt,
                generated: 0,
                words,
                credit: 0.0,
                truncated: false,
                done: false,
            });
        }
        let Some(it) = self.item_mut(&item_id) else {
            return;
        };
        if it.truncated || it.done {
            self.stats.dropped_deltas += 1;
            return;
        }
        it.generated += bytes.len() as u64;
        it.credit += bytes.len() as f64 / 8_000.0 * CHARS_PER_SECOND;
        let utt = it.utt;
        let text = take_words(&mut it.words, &mut it.credit);
        self.stats.deltas += 1;
        out.push(Action::Play {
            id: utt,
            audio: AgentAudio::Mulaw(bytes),
            text,
        });
    }

    /// Truncates `utt`'s item at `heard_ms`, clamped to what it generated.
    fn truncate(&mut self, utt: UtteranceId, heard_ms: u64, out: &mut Vec<Action>) -> Option<u64> {
        let it = self.items.iter_mut().find(|i| i.utt == utt)?;
        if it.truncated {
            return None;
        }
        it.truncated = true;
        it.done = true;
        it.words.clear();
        let generated_ms = SampleRate::TWILIO.ms_of(it.generated as usize);
        let end = heard_ms.min(generated_ms);
        let item_id = it.id.clone();
        self.stats.truncates += 1;
        self.send_event(
            out,
            ClientEvent::Truncate {
                item_id,
                audio_end_ms: u32::try_from(end).unwrap_or(u32::MAX),
            },
        );
        Some(end)
    }
}

impl Agent for RealtimeAgent {
    fn name(&self) -> &'static str {
        "realtime"
    }

    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: false,
            streaming_audio: true,
        }
    }

    fn vad_barge_in(&self) -> bool {
        self.cfg.turn_detection == TurnDetection::Hark
    }

    fn on_start(&mut self, now: Instant, info: &CallInfo, out: &mut Vec<Action>) {
        self.timing.start(now);
        self.facts = CallFacts::from(info);
        if self.phase == Phase::Idle {
            self.phase = Phase::Connecting;
            out.push(Action::Provider(ProviderCommand::Open {
                peer: PEER,
                spec: OpenSpec::WebSocket(self.cfg.ws_request()),
            }));
        }
    }

    fn on_audio(&mut self, _now: Instant, frame: &AudioFrame<'_>, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Open if self.on_machine() => {}
            Phase::Open => self.append(frame.mulaw, out),
            Phase::Idle | Phase::Connecting => {
                let cap = SampleRate::TWILIO.g711_bytes_in_ms(self.cfg.max_buffer_ms);
                self.pending.extend_from_slice(frame.mulaw);
                if self.pending.len() > cap {
                    let drop = self.pending.len() - cap;
                    self.pending.drain(..drop);
                }
            }
            Phase::Ended => {}
        }
    }

    fn on_user_turn(&mut self, now: Instant, _turn: UserTurn, out: &mut Vec<Action>) {
        if self.cfg.turn_detection != TurnDetection::Hark
            || self.phase != Phase::Open
            || self.on_machine()
        {
            return;
        }
        self.timing.hark_turn_end(now);
        self.send_event(out, ClientEvent::Commit);
        self.send_event(out, ClientEvent::ResponseCreate { instructions: None });
    }

    fn on_barge_in(&mut self, _now: Instant, heard: &Interrupted, out: &mut Vec<Action>) {
        self.cancel_active(out);
        let heard_text = heard.heard_text.clone();
        if self.truncate(heard.id, heard.heard_ms, out).is_some() {
            out.push(Action::Report(AgentReport::Transcript {
                role: Role::Agent,
                text: heard_text.unwrap_or_default(),
                interrupted: true,
            }));
        }
        for &d in &heard.dropped {
            self.truncate(d, 0, out);
        }
    }

    fn on_provider(&mut self, now: Instant, event: ProviderEvent, out: &mut Vec<Action>) {
        match event {
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
            ProviderEvent::Opened { peer, .. } if peer == PEER => {
                if self.phase != Phase::Connecting {
                    return;
                }
                self.phase = Phase::Open;
                let update = self.cfg.session_update();
                self.send_event(out, ClientEvent::SessionUpdate(update));
                let pending = std::mem::take(&mut self.pending);
                for chunk in pending.chunks(160) {
                    self.append(chunk, out);
                }
                if let Some(g) = self.cfg.greeting.clone() {
                    self.send_event(
                        out,
                        ClientEvent::ResponseCreate {
                            instructions: Some(g),
                        },
                    );
                }
            }
            ProviderEvent::Message { peer, message } if peer == PEER => match message {
                ProviderMessage::Text(t) => self.on_event(now, &t, out),
                ProviderMessage::Binary(b) => Self::fault(
                    out,
                    "bad_event",
                    format!("unexpected binary frame of {} bytes", b.len()),
                ),
            },
            ProviderEvent::Closed { peer } if peer == PEER => self.end(None, false, out),
            ProviderEvent::Failed { peer, fault } if peer == PEER => {
                let kind = fault.session_label(self.phase != Phase::Connecting);
                self.end(Some((kind.into_owned(), fault.to_string())), false, out);
            }
            _ => {}
        }
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.tool_deadlines(now, out);
        self.voicemail_timeout(now, out);
    }

    fn on_answered_by(&mut self, now: Instant, by: crate::AnsweredBy, out: &mut Vec<Action>) {
        self.answered_by(now, by, out);
    }

    fn on_stop(&mut self, _now: Instant, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Connecting | Phase::Open) {
            out.push(Action::Provider(ProviderCommand::Close { peer: PEER }));
        }
        self.runs.close_all(out);
        self.phase = Phase::Ended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn words_follow_the_audio_at_speaking_rate() {
        let mut buf = "Your order left the warehouse ".to_string();
        let mut credit = 4.0;
        assert_eq!(take_words(&mut buf, &mut credit), None);
        credit += 4.0;
        assert_eq!(take_words(&mut buf, &mut credit), Some("Your".into()));
        credit += 10.0;
        assert_eq!(take_words(&mut buf, &mut credit), Some("order left".into()));
        assert_eq!(buf, " the warehouse ");
        let mut partial = "unfinished".to_string();
        let mut lots = 100.0;
        assert_eq!(
            take_words(&mut partial, &mut lots),
            None,
            "a word still being spelt waits"
        );
    }

    #[test]
    fn ws_request_adds_the_model_and_auth() {
        let c = RealtimeConfig {
            api_key: "sk-x".into(),
            ..RealtimeConfig::default()
        };
        let r = c.ws_request();
        assert_eq!(r.url, "wss://api.openai.com/v1/realtime?model=gpt-realtime");
        assert_eq!(
            r.headers,
            vec![("Authorization".into(), "Bearer sk-x".into())]
        );
        let beta = RealtimeConfig {
            url: "ws://127.0.0.1:9/v1/realtime?model=m".into(),
            api: ApiVersion::Beta,
            ..c
        };
        let r = beta.ws_request();
        assert_eq!(r.url, "ws://127.0.0.1:9/v1/realtime?model=m");
        assert!(
            r.headers
                .contains(&("OpenAI-Beta".into(), "realtime=v1".into()))
        );
    }

    #[test]
    fn session_update_is_pcmu_both_ways() {
        let ga = RealtimeConfig::default().session_update();
        assert_eq!(
            ga["session"]["audio"]["input"]["format"]["type"],
            "audio/pcmu"
        );
        assert_eq!(
            ga["session"]["audio"]["output"]["format"]["type"],
            "audio/pcmu"
        );
        assert_eq!(
            ga["session"]["audio"]["input"]["turn_detection"]["type"],
            "server_vad"
        );
        let hark = RealtimeConfig {
            turn_detection: TurnDetection::Hark,
            api: ApiVersion::Beta,
            ..RealtimeConfig::default()
        }
        .session_update();
        assert_eq!(hark["session"]["input_audio_format"], "g711_ulaw");
        assert_eq!(hark["session"]["turn_detection"], Value::Null);
    }
}
