//! The cascade agent: per caller turn, speech to text → language model → text to speech over
//! any OpenAI-compatible API, streamed end to end, sans-IO.
//!
//! ## A turn
//! 1. **STT**: the call hands over the caller's utterance when endpointing ends the turn; it is
//!    sent as a 16 kHz 16-bit WAV to `POST /v1/audio/transcriptions` (multipart; `stream=true`
//!    gives SSE `transcript.text.delta`/`done`, and a plain JSON answer is accepted too).
//! 2. **LLM**: `POST /v1/chat/completions` with `stream: true`: the system prompt, the call's
//!    history and the new user message. Content deltas go through a [`text::SentenceSplitter`];
//!    tool calls are assembled from their fragments.
//! 3. **TTS**: each complete sentence goes at once to `POST /v1/audio/speech`
//!    (`response_format: pcm`, 24 kHz s16le, streamed); up to [`TtsConfig::parallel`] sentences
//!    are synthesised at a time, and their audio plays strictly in sentence order as
//!    [`Action::Play`]s of one utterance per reply, each chunk with its share of the text. So the
//!    first sentence plays while the model is still writing the rest.
//!
//! The greeting ([`CascadeConfig::greeting`], or the `greeting` `<Parameter>`) is spoken the same
//! way when the stream starts. The system prompt comes from the settings or a `systemPrompt`
//! `<Parameter>`. With [`CascadeConfig::context`], the operator's backend is asked first and its
//! answer wins (prompt, greeting, variables, voice, tools, language); the greeting waits for it
//! at most the context timeout, then the defaults apply. `{{name}}` placeholders in prompts and
//! greetings are filled from the answer's variables and the call's `<Parameter>`s.
//!
//! ## Interruptions
//! - **Barge-in** ([`Agent::on_barge_in`]): every in-flight LLM and TTS request of the speaking
//!   replies is closed ([`ProviderCommand::Close`]: the connector drops the connection), and the
//!   assistant message in the history keeps only what the caller heard — from the heard audio
//!   (mark echoes) mapped onto each sentence's audio length — marked `interrupted` (sent with
//!   [`wire::INTERRUPTED_MARK`]). A reply that was only thinking (no audio yet) keeps going.
//! - **A new turn while thinking**: when the caller speaks again before the reply has any
//!   audio, the LLM and TTS requests are cancelled and the turn restarts once the new audio is
//!   transcribed, with the new text appended to the old: one answer, not two.
//!
//! ## Tools
//! `end_call` (the reply — or [`CascadeConfig::goodbye_text`] when the model said nothing — is
//! spoken, then [`Action::Hangup`]) and `transfer_call(number)` (E.164 or `sip:`; said, then
//! [`Action::Transfer`]). Tool calls and their results go into the history as the Chat
//! Completions API expects: an assistant message with `tool_calls`, then one `tool` message per
//! call. An invalid or unknown call gets an error result and one more round (at most
//! [`CascadeConfig::max_tool_rounds`]). A barge-in on the goodbye does not cancel the hang-up.
//!
//! The operator's own tools ([`ToolsConfig::http`], [`crate::agents::http_tools`]) are offered
//! beside them. A call is checked against its JSON Schema and POSTed (signed); the round's
//! result holds a placeholder until the answer, a fault or the tool's timeout fills it, then
//! the model gets the next round. A slow tool says its filler after 1 s (not over a talking
//! caller). The runs belong to the agent, not the turn: a barge-in during one does not lose
//! its result (it fills the history's placeholder), and no chat request starts while one is
//! out (a tool result must follow its call).
//!
//! ## Provider faults
//! 401/403, 429 (`retry-after-ms`/`Retry-After` honoured), 408/409/5xx, connect errors, an
//! answer of the wrong content type (the connector's `content_type` failure, or a transcription
//! that is not JSON: never taken as the caller's words), an `{"error":…}` inside a 200 stream, a
//! stream that ends early, and the agent's own per-stage deadlines — the **first** deadline
//! from the request (first transcription event, first content or tool-call token, first audio
//! bytes: `timeout`) and the **stall** deadline from the last data received (`stall`) — are each
//! reported as [`AgentReport::ProviderFault`] and retried within [`RetryPolicy`] — never a
//! 401/403/other 4xx or `insufficient_quota`, never an LLM round whose sentences already went to
//! TTS. A TTS sentence that breaks after some of its audio was handed out is not synthesised
//! again whole: its audio stays, cut after the word the audio reached (estimated from the
//! speaking rate learned on the call, rounded up to the end of a word), and the rest of its
//! words becomes a sentence of its own. When retries run out, the reply ends with
//! [`CascadeConfig::fallback_text`], rendered once when the call starts so it plays even with
//! TTS down — or, if it could not be rendered, a short synthesized chime ([`audio::chime`]).
//!
//! ## Never dead air
//! When nothing of the answer has been handed to the playout
//! [`CascadeConfig::filler_after_ms`] after the end of the caller's turn, the filler
//! ([`CascadeConfig::filler_text`], rendered once after the fallback phrase; the chime if it
//! could not be) plays as an utterance of its own, ahead of the answer. It waits while the
//! caller is talking again (the turn detector heard speech start and the VAD heard voice in the
//! last 800 ms), it is reported as heard, and it never enters the history. With
//! the stage deadlines this bounds the silence after a turn under any single fault: the filler
//! by `filler_after_ms`, then a retry's answer or the fallback.
//!
//! ## A silent caller, keys
//! After [`CascadeConfig::idle_reprompt_ms`] of caller silence once the agent has finished
//! (its last utterance played out, nothing being answered), the agent prompts again — with
//! [`CascadeConfig::idle_reprompt_text`], or in the model's words after a user message saying
//! the caller has been silent — once per silence; after [`CascadeConfig::idle_hangup_ms`] (from
//! the same point) it says [`CascadeConfig::idle_goodbye_text`] and, once that has played,
//! [`Action::Hangup`] with reason `idle`. The caller starting to speak or pressing a key starts
//! the count over; a barge-in on the goodbye calls the hang-up off. DTMF digits
//! ([`Agent::on_dtmf`]) pressed within 1.5 s of each other (`#` sends at once) reach the model as
//! one user message, `(The caller pressed 12 on the keypad.)`: a turn of their own, or joined
//! to the turn being transcribed or thought about, as speech would be.
//!
//! ## Answering machines
//! On Twilio's answering machine verdict ([`Agent::on_answered_by`]) `machine_end_*`, the agent
//! stops what it is saying or preparing, leaves [`CascadeConfig::voicemail_text`] (templated)
//! and hangs up once it has played (reason `voicemail`; `machine` without a message, `fax` on
//! a fax); `human` changes nothing. See `voicemail.rs`.
//!
//! ## Telemetry
//! [`AgentReport::Latency`] per turn: [`Stage::Stt`] (turn end → transcript),
//! [`Stage::LlmFirstToken`] (request → first content or tool-call delta),
//! [`Stage::TtsFirstByte`] (first sentence's request → first audio byte) and, once,
//! [`Stage::Greeting`] (stream start → first greeting audio to the playout).
//! [`AgentReport::Transcript`]: the caller's words (per transcribed utterance) and the agent's
//! as heard (when an utterance finished playing, or its heard prefix on barge-in).
//!
//! [`ProviderCommand::Close`]: crate::agent::ProviderCommand::Close
//! [`Stage::Stt`]: crate::agent::Stage::Stt
//! [`Stage::LlmFirstToken`]: crate::agent::Stage::LlmFirstToken
//! [`Stage::TtsFirstByte`]: crate::agent::Stage::TtsFirstByte
//! [`Stage::Greeting`]: crate::agent::Stage::Greeting
//!
//! ## Vocabulary
//! One noun per thing, each with its own type:
//! - **turn** (`Turn`, `turn.rs`): the caller turn being answered, from its audio to the
//!   answer's last sentence.
//! - **transcription** (`Transcription`): one piece of the caller's audio and its STT request
//!   (a turn has more than one when the caller spoke again while it thought).
//! - **round** (`Round`): one chat completion of a turn with the tool calls it made and their
//!   results; `ChatStream` is the round being received.
//! - **utterance** (`Utterance`, `utterance.rs`): something the agent says, one playout
//!   utterance ([`UtteranceId`]): a greeting, a notice, the filler, or a turn's answer.
//! - **sentence** (`Sentence`): one TTS request of an utterance and its audio.
//! - **spoken** (`Spoken`): text that went to the playout with its audio length, to map what
//!   was heard back to words.
//! - **committed** (`Committed`, `history.rs`): an utterance in the history, until the playout
//!   says what of it was heard.
//! - **attempt** (`Attempt`, `retry.rs`): a request's pipe and retry state, the same type for
//!   every stage.
//!
//! ## Layout
//! | file | job |
//! |---|---|
//! | `mod.rs` | the agent: its state, the [`Agent`] events, the timer |
//! | `turn.rs` | a turn: STT, chat rounds, tool results, giving up |
//! | `utterance.rs` | sentences to TTS and to the playout, in order |
//! | `history.rs` | the history the model sees; cutting it to what was heard |
//! | `retry.rs` | `Attempt`, fault classes and the one fault path |
//! | `pipes.rs` | open provider pipes and their first/stall deadlines |
//! | `fallback.rs` | the fallback and filler phrases, rendered ahead; the chime |
//! | `tools.rs` | `end_call`, `transfer_call`, and runs of the operator's HTTP tools |
//! | `idle.rs` | a silent caller (re-prompt, goodbye, hang-up); keys pressed as the caller's words |
//! | `voicemail.rs` | an answering machine: the message, then the hang-up |
//! | `context_use.rs` | this call's context (the operator's answer or the defaults), then the greeting |
//! | `config.rs` | the settings ([`CascadeConfig`]) |
//! | `wire.rs` | the OpenAI-compatible requests and stream events |
//! | `text.rs` | sentence splitting; text shares of audio and of what was heard |
//! | `audio.rs` | PCM streams, WAV, the chime |

pub mod audio;
pub mod config;
mod context_use;
mod fallback;
mod history;
mod idle;
mod pipes;
mod retry;
pub mod text;
mod tools;
mod turn;
mod utterance;
mod voicemail;
pub mod wire;
mod words;

use std::time::{Duration, Instant};

pub use config::{
    CascadeConfig, CascadeError, Endpoint, LlmConfig, RetryPolicy, SttConfig, ToolsConfig,
    TtsConfig,
};
pub use tools::valid_transfer_target;
pub use voicemail::{FAX_REASON, MACHINE_REASON, VOICEMAIL_REASON};
pub use wire::{ChatMessage, ToolCall};

use crate::agent::{
    Action, Agent, AgentNeeds, AgentReport, AudioFrame, CallInfo, FaultKind, HttpRequest, PeerId,
    ProviderEvent, ProviderFault, ProviderMessage, UserTurn,
};
use crate::agents::context;
use crate::agents::http_tools::{CallFacts, ToolRuns};
use crate::playout::{Interrupted, UtteranceId};
use fallback::{Phrase, PhraseKind};
use history::Committed;
use pipes::{Pipe, Pipes, Wait};
use turn::Turn;
use utterance::{Owner, Utterance};

/// `provider` label of STT faults.
pub const PROVIDER_STT: &str = "stt";
/// `provider` label of LLM faults.
pub const PROVIDER_LLM: &str = "llm";
/// `provider` label of TTS faults.
pub const PROVIDER_TTS: &str = "tts";

/// Initial estimate of speech duration per character of text, µs (≈ 14 characters per second);
/// refined from each synthesised sentence. Only used to share a sentence's text among its
/// audio chunks before the sentence's full length is known.
const INITIAL_US_PER_CHAR: u64 = 70_000;

/// How long the caller must have been quiet before a due filler plays over the end of their
/// speech (a speech that endpointing then discarded, so no new turn came), ms: more than the
/// default endpointing silence (600 ms).
const CALLER_QUIET_MS: u64 = 800;
/// A filler is deferred for a talking caller at most this long past its time, ms.
const FILLER_MAX_DEFER_MS: u64 = 3_000;

/// The cascade agent. See the module docs.
pub struct CascadeAgent {
    cfg: CascadeConfig,
    system_prompt: String,
    history: Vec<ChatMessage>,
    pipes: Pipes,
    next_utt: u64,
    next_id: u64,
    /// Utterances being generated, in order.
    utterances: Vec<Utterance>,
    turn: Option<Turn>,
    /// Utterances in the history until the playout says what of them was heard.
    committed: Vec<Committed>,
    fallback: Phrase,
    filler: Phrase,
    /// The speaking rate learned on the call, µs of audio per character.
    us_per_char: u64,
    start_at: Option<Instant>,
    stopped: bool,
    /// The turn detector heard the caller start speaking, and no turn has ended since.
    caller_speaking: bool,
    /// The last inbound frame the VAD called voiced.
    caller_voiced_at: Option<Instant>,
    /// The operator's tools out over HTTP.
    tool_runs: ToolRuns,
    /// Fillers of the runs, said if a run is slow.
    tool_fillers: Vec<tools::ToolFiller>,
    /// A tool with `end_call_after` answered: the next complete answer ends the call.
    end_after: Option<String>,
    /// The call's facts, for tool requests.
    facts: CallFacts,
    /// The variables of this call's context.
    variables: std::collections::BTreeMap<String, String>,
    /// The caller's silence and keys ([`idle`]).
    idle: idle::Idle,
    /// An answering machine took the call: the message being left ([`voicemail`]).
    voicemail: Option<voicemail::Voicemail>,
    /// A short caller turn over the agent being transcribed for its words ([`words`]).
    words: Option<words::WordCheck>,
}

impl std::fmt::Debug for CascadeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CascadeAgent")
            .field("history", &self.history.len())
            .field("pipes", &self.pipes.len())
            .field("utterances", &self.utterances.len())
            .field("turn", &self.turn.as_ref().map(|t| t.id))
            .finish()
    }
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

fn since_ms(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}

fn report(out: &mut Vec<Action>, r: AgentReport) {
    out.push(Action::Report(r));
}

impl CascadeAgent {
    /// An agent for one call.
    ///
    /// # Errors
    /// [`CascadeError::Config`] when `cfg` is invalid.
    pub fn new(cfg: CascadeConfig) -> Result<Self, CascadeError> {
        cfg.validate()?;
        Ok(CascadeAgent {
            system_prompt: cfg.system_prompt.clone(),
            cfg,
            history: Vec::new(),
            pipes: Pipes::new(),
            next_utt: 1,
            next_id: 1,
            utterances: Vec::new(),
            turn: None,
            committed: Vec::new(),
            fallback: Phrase::Chime,
            filler: Phrase::Pending,
            us_per_char: INITIAL_US_PER_CHAR,
            start_at: None,
            stopped: false,
            caller_speaking: false,
            caller_voiced_at: None,
            tool_runs: ToolRuns::new(tools::FIRST_TOOL_PEER),
            tool_fillers: Vec::new(),
            end_after: None,
            facts: CallFacts::default(),
            variables: std::collections::BTreeMap::new(),
            idle: idle::Idle::default(),
            voicemail: None,
            words: None,
        })
    }

    /// The conversation so far, without the system prompt: committed caller and assistant
    /// messages, tool calls and results (an answer joins it once all its audio is queued or it
    /// is cut off).
    pub fn history(&self) -> &[ChatMessage] {
        &self.history
    }

    /// The system prompt in use for this call.
    pub fn system_prompt(&self) -> &str {
        &self.system_prompt
    }

    /// The settings.
    pub fn config(&self) -> &CascadeConfig {
        &self.cfg
    }

    /// Provider pipes open now.
    pub fn open_pipes(&self) -> usize {
        self.pipes.len()
    }

    /// Whether the spoken fallback phrase has been rendered (else a chime would play).
    pub fn fallback_ready(&self) -> bool {
        matches!(self.fallback, Phrase::Ready(_))
    }

    /// Whether the filler phrase has been rendered (else a chime would play as the filler).
    pub fn filler_ready(&self) -> bool {
        matches!(self.filler, Phrase::Ready(_))
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Opens a pipe for `role` with its stage's deadlines.
    fn open(
        &mut self,
        now: Instant,
        role: Pipe,
        req: HttpRequest,
        out: &mut Vec<Action>,
    ) -> PeerId {
        let c = &self.cfg;
        let wait = match role {
            Pipe::Stt { .. } | Pipe::Words => Wait {
                first_ms: c.stt.timeout_ms,
                stall_ms: c.stt.stall_ms,
                waiting_for: "a transcript",
            },
            Pipe::Llm { .. } => Wait {
                first_ms: c.llm.first_token_timeout_ms,
                stall_ms: c.llm.stall_ms,
                waiting_for: "a first token",
            },
            Pipe::Tts { .. } | Pipe::Phrase(_) => Wait {
                first_ms: c.tts.first_byte_timeout_ms,
                stall_ms: c.tts.stall_ms,
                waiting_for: "audio",
            },
            // The context opens with its own timeout.
            Pipe::Context => Wait {
                first_ms: c.request_timeout_ms,
                stall_ms: c.request_timeout_ms,
                waiting_for: "the tool's answer",
            },
        };
        self.pipes.open(now, role, wait, req, out)
    }

    /// The soonest of every part's next deadline: a pipe's first/stall deadline, a retry (of a
    /// transcription, the chat, a sentence, a phrase), the filler's time.
    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.pipes.poll_timeout(),
            self.turn.as_ref().and_then(Turn::poll_timeout),
            self.utterances_poll_timeout(),
            self.phrases_poll_timeout(),
            self.tools_poll_timeout(),
            self.idle_poll_timeout(),
            self.voicemail_poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn arm(&self, out: &mut Vec<Action>) {
        if let Some(t) = self.poll_timeout() {
            out.push(Action::WakeAt(t));
        }
    }

    /// The end of every event: the caller's silence looked at ([`idle`]), the timer armed.
    fn settle(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.idle_settle(now, out);
        self.arm(out);
    }

    /// Whether a new caller turn joins the current one: its answer has no audio yet (and
    /// decided no hang-up or transfer), so it starts over with both texts.
    fn may_restart(&self) -> bool {
        self.turn.as_ref().is_some_and(|t| {
            t.answer
                .and_then(|u| self.utt_ix(u))
                .is_none_or(|i| !self.utterances[i].started)
                && t.after.is_none()
        })
    }

    /// When the filler of a caller turn ending `now` is due, and how long it may wait for a
    /// talking caller (`None` without a filler).
    fn filler_times(&self, now: Instant) -> (Option<Instant>, Option<Instant>) {
        let filler_at = self
            .cfg
            .filler_text
            .as_deref()
            .is_some_and(|f| !f.trim().is_empty())
            .then(|| now + ms(self.cfg.filler_after_ms));
        (filler_at, filler_at.map(|t| t + ms(FILLER_MAX_DEFER_MS)))
    }

    /// Utterances still being generated (a greeting, an answer) stop when the caller takes the
    /// floor; one that has audio queued was or will be barged in on by the call, so its queued
    /// audio plays. With `restart`, the current turn's answer (no audio yet) is left to
    /// [`CascadeAgent::take_turn`].
    fn stop_other_utterances(&mut self, now: Instant, restart: bool, out: &mut Vec<Action>) {
        let answer = self.turn.as_ref().and_then(|t| t.answer);
        let other: Vec<UtteranceId> = self
            .utterances
            .iter()
            .filter(|s| !restart || Some(s.utt) != answer)
            .map(|s| s.utt)
            .collect();
        for u in other {
            let Some(i) = self.utt_ix(u).filter(|i| self.utterances[*i].started) else {
                self.cancel_utterance(u, out);
                continue;
            };
            // Let the queued audio play; stop generating more.
            for p in self.utterances[i].stop_generating() {
                self.pipes.close(p, out);
            }
            if let Some(t) = self.turn.as_mut().filter(|t| t.answer == Some(u))
                && t.llm.peer.is_some()
            {
                t.chat = None;
                let p = t.llm.peer.take();
                self.pipes.close(p, out);
            }
            self.pump_utterance(now, u, out);
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        peer: PeerId,
        role: Pipe,
        message: ProviderMessage,
        out: &mut Vec<Action>,
    ) {
        // The LLM's first-token deadline holds until a content or tool-call delta (see
        // `on_llm_message`); any data counts for the other stages.
        if !matches!(role, Pipe::Llm { .. }) {
            self.pipes.progress(now, peer);
        }
        match (role, message) {
            (Pipe::Stt { seg, .. }, ProviderMessage::Text(t)) => {
                self.on_stt_message(now, seg, peer, &t, out)
            }
            (Pipe::Llm { .. }, ProviderMessage::Text(t)) => self.on_llm_message(now, peer, &t, out),
            (Pipe::Tts { utt, sid }, ProviderMessage::Binary(b)) => {
                self.on_tts_bytes(now, utt, sid, &b, out)
            }
            (Pipe::Tts { utt, sid }, ProviderMessage::Text(t)) => {
                self.on_tts_bytes(now, utt, sid, t.as_bytes(), out)
            }
            (Pipe::Phrase(k), ProviderMessage::Binary(b)) => self.on_phrase_bytes(k, &b),
            (Pipe::Phrase(k), ProviderMessage::Text(t)) => self.on_phrase_bytes(k, t.as_bytes()),
            (Pipe::Stt { seg, .. }, ProviderMessage::Binary(b)) => {
                // Binary where text was expected: try it as text.
                let t = String::from_utf8_lossy(&b).into_owned();
                self.on_stt_message(now, seg, peer, &t, out)
            }
            (Pipe::Llm { .. }, ProviderMessage::Binary(b)) => {
                let t = String::from_utf8_lossy(&b).into_owned();
                self.on_llm_message(now, peer, &t, out)
            }
            (Pipe::Context, ProviderMessage::Text(t)) => {
                self.on_context(now, peer, Ok(t.as_bytes()), out)
            }
            (Pipe::Context, ProviderMessage::Binary(b)) => self.on_context(now, peer, Ok(&b), out),
            (Pipe::Words, ProviderMessage::Text(t)) => self.on_words_message(now, peer, &t, out),
            (Pipe::Words, ProviderMessage::Binary(b)) => {
                let t = String::from_utf8_lossy(&b).into_owned();
                self.on_words_message(now, peer, &t, out)
            }
        }
    }

    /// `peer` ended by itself (already forgotten by [`Pipes`]).
    fn on_closed(&mut self, now: Instant, peer: PeerId, role: Pipe, out: &mut Vec<Action>) {
        match role {
            Pipe::Stt { seg, .. } => {
                let pending = self
                    .transcription_mut(seg)
                    .is_some_and(|s| s.text.is_none() && s.attempt.peer == Some(peer));
                if pending {
                    let detail = "the transcription ended without a transcript";
                    let f = ProviderFault::new(FaultKind::Dropped, detail);
                    self.fault(now, role, f, out);
                }
            }
            Pipe::Llm { .. } => self.on_llm_closed(now, peer, out),
            Pipe::Tts { utt, sid } => self.on_tts_closed(now, utt, sid, out),
            Pipe::Phrase(k) => self.on_phrase_closed(now, k, out),
            Pipe::Context => {
                let f = ProviderFault::new(FaultKind::Dropped, "no answer body");
                self.on_context(now, peer, Err(&f), out);
            }
            Pipe::Words => {
                let f = ProviderFault::new(FaultKind::Dropped, "ended without a transcript");
                self.words_failed(peer, &f, out);
            }
        }
    }
}

impl Agent for CascadeAgent {
    fn name(&self) -> &'static str {
        "cascade"
    }

    fn needs(&self) -> AgentNeeds {
        AgentNeeds {
            utterance_audio: true,
            // Only the VAD's verdict per frame is used: a due filler waits while the caller
            // is talking again.
            streaming_audio: true,
        }
    }

    fn checks_backchannels(&self) -> bool {
        !self.cfg.backchannel_words.is_empty()
    }

    fn on_backchannel_check(&mut self, now: Instant, turn: &UserTurn, out: &mut Vec<Action>) {
        self.check_words(now, turn, out);
        self.settle(now, out);
    }

    fn on_audio(&mut self, now: Instant, frame: &AudioFrame<'_>, _out: &mut Vec<Action>) {
        if frame.voiced {
            self.caller_voiced_at = Some(now);
        }
    }

    fn on_user_speech_start(&mut self, now: Instant, _media_ms: u64, out: &mut Vec<Action>) {
        self.caller_speaking = true;
        self.caller_voiced_at = Some(now);
        self.settle(now, out);
    }

    fn on_start(&mut self, now: Instant, info: &CallInfo, out: &mut Vec<Action>) {
        self.start_at = Some(now);
        self.facts = CallFacts {
            call_sid: info.call_sid.clone(),
            stream_sid: info.stream_sid.clone(),
            parameters: info.parameters.clone(),
        };
        match self.cfg.context.clone() {
            // The greeting waits for the backend's answer, at most its timeout.
            Some(c) => {
                let wait = Wait {
                    first_ms: c.timeout_ms,
                    stall_ms: c.timeout_ms,
                    waiting_for: "the context",
                };
                let req = context::request(&c, &self.facts);
                self.pipes.open(now, Pipe::Context, wait, req, out);
            }
            None => self.begin(now, None, out),
        }
        self.start_phrase(now, PhraseKind::Fallback, out);
        self.settle(now, out);
    }

    fn on_user_turn(&mut self, now: Instant, turn: UserTurn, out: &mut Vec<Action>) {
        self.caller_speaking = false;
        if self.stopped || self.on_machine() || turn.audio.is_empty() {
            self.settle(now, out);
            return;
        }
        let filler = self.filler_times(now);
        let wav = match audio::wav_16k(&turn.audio, turn.rate) {
            Ok(w) => w,
            Err(e) => {
                report(
                    out,
                    AgentReport::ProviderFault {
                        provider: PROVIDER_STT.into(),
                        kind: "audio".into(),
                        detail: format!("cannot encode the utterance: {e}"),
                    },
                );
                self.settle(now, out);
                return;
            }
        };
        // The current answer has no audio yet (and decided no hang-up or transfer): it starts
        // over with both texts.
        let restart = self.may_restart();
        self.stop_other_utterances(now, restart, out);
        match self.checked_words(&turn, out) {
            // Its words are known from the check: no second transcription.
            Some(text) => self.take_text_turn(now, text, filler, restart, out),
            None => self.take_turn(now, wav, filler, restart, out),
        }
        self.settle(now, out);
    }

    fn on_barge_in(&mut self, now: Instant, heard: &Interrupted, out: &mut Vec<Action>) {
        self.idle_barge_in();
        self.voicemail_cut(heard, out);
        // Every utterance that has audio is cut: stop generating it and commit what was said.
        let speaking: Vec<UtteranceId> = self
            .utterances
            .iter()
            .filter(|s| s.started || s.utt <= heard.id)
            .map(|s| s.utt)
            .collect();
        let mut afters = Vec::new();
        for u in speaking {
            if let Some(t) = self.turn.as_ref().filter(|t| t.answer == Some(u))
                && let Some(a) = &t.after
            {
                afters.push(a.clone());
            }
            self.cancel_utterance(u, out);
        }
        self.cut_to_heard(heard.id, heard.heard_ms * 1000, out);
        for d in &heard.dropped {
            self.cut_to_heard(*d, 0, out);
        }
        // Utterances the playout no longer has are done with.
        self.forget_committed(heard.id, &heard.dropped);
        // A decided hang-up or transfer still happens.
        out.extend(afters.into_iter().map(turn::After::action));
        self.settle(now, out);
    }

    fn on_played(&mut self, now: Instant, id: UtteranceId, out: &mut Vec<Action>) {
        self.played(id, out);
        self.idle_played(id, out);
        self.voicemail_played(id, out);
        self.settle(now, out);
    }

    /// Keys go to the model as the caller's words (see the module docs).
    fn on_dtmf(&mut self, now: Instant, digit: &str, out: &mut Vec<Action>) {
        if self.stopped || self.on_machine() {
            return;
        }
        self.on_key(now, digit, out);
        self.settle(now, out);
    }

    fn on_provider(&mut self, now: Instant, event: ProviderEvent, out: &mut Vec<Action>) {
        if self.stopped {
            return;
        }
        let peer = match &event {
            ProviderEvent::Opened { peer, .. }
            | ProviderEvent::Message { peer, .. }
            | ProviderEvent::Closed { peer }
            | ProviderEvent::Failed { peer, .. } => *peer,
        };
        if self.tool_runs.owns(peer) {
            if let Some(end) = self.tool_runs.on_event(event, out) {
                self.tool_ended(now, end, out);
            }
            self.settle(now, out);
            return;
        }
        let Some(role) = self.pipes.role(peer) else {
            // A pipe already closed or given up on.
            return;
        };
        match event {
            ProviderEvent::Opened { .. } => {}
            ProviderEvent::Message { message, .. } => {
                self.on_message(now, peer, role, message, out)
            }
            ProviderEvent::Closed { .. } => {
                self.pipes.ended(peer);
                self.on_closed(now, peer, role, out);
            }
            ProviderEvent::Failed { fault: f, .. } if role == Pipe::Context => {
                self.on_context(now, peer, Err(&f), out);
            }
            ProviderEvent::Failed { fault: f, .. } if role == Pipe::Words => {
                self.pipes.ended(peer);
                self.words_failed(peer, &f, out);
            }
            ProviderEvent::Failed { fault: f, .. } => {
                self.pipes.ended(peer);
                let ours = match role {
                    Pipe::Stt { seg, .. } => self
                        .transcription_mut(seg)
                        .filter(|s| s.attempt.peer == Some(peer))
                        .map(|s| s.attempt.peer = None)
                        .is_some(),
                    Pipe::Llm { .. } => self.is_chat_pipe(peer),
                    Pipe::Tts { .. } | Pipe::Phrase(_) | Pipe::Context | Pipe::Words => true,
                };
                if ours {
                    self.fault(now, role, f, out);
                }
            }
        }
        self.settle(now, out);
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopped {
            return;
        }
        // Nothing at all within the first deadline, or a stream that stopped sending.
        for (peer, role, f) in self.pipes.expired(now) {
            self.pipes.close(Some(peer), out);
            if let Pipe::Stt { seg, .. } = role
                && let Some(s) = self.transcription_mut(seg)
            {
                s.attempt.peer = None;
            }
            if role == Pipe::Context {
                self.on_context(now, peer, Err(&f), out);
            } else if role == Pipe::Words {
                self.words_failed(peer, &f, out);
            } else if !matches!(role, Pipe::Llm { .. }) || self.is_chat_pipe(peer) {
                self.fault(now, role, f, out);
            }
        }
        // Retries that are due.
        self.retry_turn(now, out);
        self.retry_sentences(now, out);
        self.retry_phrases(now, out);
        self.maybe_filler(now, out);
        self.tool_deadlines(now, out);
        if !self.on_machine() {
            self.idle_timeout(now, out);
        }
        self.voicemail_timeout(now, out);
        self.settle(now, out);
    }

    /// The model was told the transfer is under way: tell it (a system message) and the
    /// caller ([`CascadeConfig::transfer_failed_text`]) that it is not; the conversation goes
    /// on. If TTS fails, the pre-rendered fallback phrase plays instead.
    fn on_transfer_failed(&mut self, now: Instant, to: &str, _reason: &str, out: &mut Vec<Action>) {
        // Not the reason itself: it is for operators (logs, the call record), and the model
        // might read it out.
        self.history.push(ChatMessage::System(format!(
            "The transfer to {to} could not be made. The caller is still on the line and has \
             been told; do not try the same transfer again unless they ask."
        )));
        let text = self.cfg.transfer_failed_text.clone();
        if !text.trim().is_empty() {
            self.say(now, Owner::Notice, &text, out);
        }
        self.settle(now, out);
    }

    /// A machine: the message, then the hang-up (see `voicemail.rs`).
    fn on_answered_by(
        &mut self,
        now: Instant,
        answered_by: crate::AnsweredBy,
        out: &mut Vec<Action>,
    ) {
        self.on_answered(now, answered_by, out);
        self.settle(now, out);
    }

    fn on_stop(&mut self, _now: Instant, out: &mut Vec<Action>) {
        self.stopped = true;
        self.pipes.close_all(out);
        self.tool_runs.close_all(out);
    }
}
