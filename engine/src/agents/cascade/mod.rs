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
//! `<Parameter>`.
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
//! ## Telemetry
//! [`AgentReport::Latency`] per turn: [`Stage::Stt`] (turn end → transcript),
//! [`Stage::LlmFirstToken`] (request → first content or tool-call delta),
//! [`Stage::TtsFirstByte`] (first sentence's request → first audio byte) and, once,
//! [`Stage::Greeting`] (stream start → first greeting audio to the playout).
//! [`AgentReport::Transcript`]: the caller's words (per transcribed utterance) and the agent's
//! as heard (when an utterance finished playing, or its heard prefix on barge-in).

pub mod audio;
pub mod config;
pub mod text;
pub mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use hark_codecs::SampleRate;

pub use config::{
    CascadeConfig, CascadeError, Endpoint, LlmConfig, RetryPolicy, SttConfig, ToolsConfig,
    TtsConfig,
};
pub use wire::{ChatMessage, ToolCall};

use crate::agent::{
    Action, Agent, AgentNeeds, AgentReport, AudioFrame, CallInfo, HttpRequest, OpenSpec, PeerId,
    ProviderCommand, ProviderEvent, ProviderMessage, Role, Stage, UserTurn,
};
use crate::playout::{AgentAudio, Interrupted, UtteranceId};
use audio::Pcm16Stream;
use text::SentenceSplitter;
use wire::{SttEvent, ToolCallAssembler};

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

/// A phrase rendered once per call so it plays even when TTS is down later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PhraseKind {
    /// [`CascadeConfig::fallback_text`].
    Fallback,
    /// [`CascadeConfig::filler_text`].
    Filler,
}

impl PhraseKind {
    fn name(self) -> &'static str {
        match self {
            PhraseKind::Fallback => "fallback",
            PhraseKind::Filler => "filler",
        }
    }
}

/// What a provider pipe is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipe {
    Stt { turn: u64, seg: u64 },
    Llm { turn: u64 },
    Tts { utt: UtteranceId, sid: u64 },
    Phrase(PhraseKind),
}

#[derive(Debug)]
struct PipeState {
    role: Pipe,
    /// The stage's own deadline: the first data (from the request), then the stall deadline
    /// (from the last data received).
    deadline: Instant,
    /// What the deadline waits for, for the fault detail.
    waiting_for: &'static str,
    /// The first data arrived: `deadline` is the stall deadline.
    started: bool,
}

/// Who a speech belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Greeting,
    /// Something the agent says on its own, outside a turn (a failed transfer).
    Notice,
    /// The filler phrase while an answer is late: heard, reported, never in the history.
    Filler,
    Reply(u64),
}

#[derive(Debug)]
struct Sentence {
    sid: u64,
    text: String,
    /// Chat round of the reply it belongs to (index into the turn's rounds).
    round: usize,
    peer: Option<PeerId>,
    sent_at: Option<Instant>,
    retries: u32,
    retry_at: Option<Instant>,
    budget_until: Instant,
    pcm: Pcm16Stream,
    rate: SampleRate,
    /// Audio received and not yet handed to the playout.
    buffered: Vec<i16>,
    /// Audio received so far, µs.
    received_us: u64,
    got_bytes: bool,
    /// Characters of `text` handed out with audio so far.
    given: usize,
    /// All audio received (or pre-rendered).
    done: bool,
    /// Index of its entry in the speech's `spoken`, once it has played anything.
    spoken_ix: Option<usize>,
    /// Cut short (a fault or an interruption): not used to learn the speaking rate.
    truncated: bool,
}

/// Text that went to the playout with its audio length, for mapping heard ms to text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spoken {
    text: String,
    us: u64,
    round: usize,
}

#[derive(Debug)]
struct Speech {
    utt: UtteranceId,
    owner: Owner,
    sentences: VecDeque<Sentence>,
    spoken: Vec<Spoken>,
    /// No more sentences will be added.
    closed: bool,
    /// `Finish` sent (or the utterance was cancelled).
    finished: bool,
    started: bool,
    ttfb_reported: bool,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    wav: Vec<u8>,
    end_at: Instant,
    peer: Option<PeerId>,
    retries: u32,
    retry_at: Option<Instant>,
    budget_until: Instant,
    deltas: String,
    text: Option<String>,
}

#[derive(Debug)]
struct Llm {
    peer: PeerId,
    sent_at: Instant,
    splitter: SentenceSplitter,
    content: String,
    tools: ToolCallAssembler,
    finish: Option<String>,
    /// A sentence of this round went to TTS: a retry would repeat it.
    emitted: bool,
    got_any: bool,
}

#[derive(Debug, Default)]
struct Round {
    llm_content: String,
    tool_calls: Vec<ToolCall>,
    results: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum After {
    Hangup(String),
    Transfer(String),
}

#[derive(Debug)]
struct Turn {
    id: u64,
    segments: Vec<Segment>,
    user_text: String,
    rounds: Vec<Round>,
    llm: Option<Llm>,
    llm_retries: u32,
    llm_retry_at: Option<Instant>,
    llm_budget_until: Instant,
    ttft_reported: bool,
    speech: Option<UtteranceId>,
    after: Option<After>,
    /// When the filler plays if the caller has heard nothing of the answer by then; `None`
    /// once it played (or with no filler configured).
    filler_at: Option<Instant>,
    /// The latest time the filler may be deferred to for a caller who is talking again.
    filler_cap: Option<Instant>,
}

/// A committed utterance: where its assistant messages are in the history, and what was said,
/// until it has played (or been cut).
#[derive(Debug)]
struct Record {
    utt: UtteranceId,
    /// (round, index in the history) of each assistant message.
    msgs: Vec<(usize, usize)>,
    spoken: Vec<Spoken>,
}

#[derive(Debug)]
enum Phrase {
    /// Not asked for (yet), or not wanted.
    Pending,
    Rendering {
        peer: Option<PeerId>,
        pcm: Pcm16Stream,
        samples: Vec<i16>,
        retries: u32,
        retry_at: Option<Instant>,
        budget_until: Instant,
    },
    Ready(Vec<i16>),
    /// Could not be rendered: the chime stands in.
    Chime,
}

/// The cascade agent. See the module docs.
pub struct CascadeAgent {
    cfg: CascadeConfig,
    system_prompt: String,
    history: Vec<ChatMessage>,
    pipes: BTreeMap<PeerId, PipeState>,
    next_peer: u64,
    next_utt: u64,
    next_id: u64,
    speeches: Vec<Speech>,
    turn: Option<Turn>,
    records: Vec<Record>,
    fallback: Phrase,
    filler: Phrase,
    us_per_char: u64,
    start_at: Option<Instant>,
    stopped: bool,
    /// The turn detector heard the caller start speaking, and no turn has ended since.
    caller_speaking: bool,
    /// The last inbound frame the VAD called voiced.
    caller_voiced_at: Option<Instant>,
}

impl std::fmt::Debug for CascadeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CascadeAgent")
            .field("history", &self.history.len())
            .field("pipes", &self.pipes.len())
            .field("speeches", &self.speeches.len())
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

/// How a fault is classified: its metric kind and whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultClass {
    /// `http_401`, `http_429`, `http_5xx`, `timeout`, `stall`, `connect`, `content_type`,
    /// `stream_error`, `dropped`, …
    pub kind: String,
    /// Whether retrying may help.
    pub retryable: bool,
}

/// Classifies a failed pipe from its HTTP status and the connector's error text (which starts
/// with `status`, `timeout`, `connect`, `dropped`, `request` or `content_type`; see
/// `io::http`). An answer of the wrong content type (a proxy's HTML error page with 200) is
/// retried like a 5xx.
pub fn classify_failure(status: Option<u16>, error: &str) -> FaultClass {
    let c = |kind: &str, retryable: bool| FaultClass {
        kind: kind.to_string(),
        retryable,
    };
    match status {
        Some(401) => c("http_401", false),
        Some(403) => c("http_403", false),
        // Out of credit: waiting does not help (providers.md §2).
        Some(429) if error.contains("insufficient_quota") => c("http_429", false),
        Some(429) => c("http_429", true),
        Some(408) => c("http_408", true),
        Some(409) => c("http_409", true),
        Some(s) if s >= 500 => c("http_5xx", true),
        Some(_) => c("http_4xx", false),
        None if error.starts_with("content_type") => c("content_type", true),
        None if error.starts_with("timeout") => c("timeout", true),
        None if error.starts_with("connect") => c("connect", true),
        None if error.starts_with("request") => c("request", false),
        None => c("dropped", true),
    }
}

/// Whether `n` is a number `transfer_call` may dial: E.164 (`+` and 8–15 digits, no leading
/// zero) or a `sip:` URI.
pub fn valid_transfer_target(n: &str) -> bool {
    let n = n.trim();
    if let Some(rest) = n.strip_prefix("sip:") {
        return rest.contains('@') && !rest.chars().any(char::is_whitespace);
    }
    n.strip_prefix('+').is_some_and(|d| {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
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
            pipes: BTreeMap::new(),
            next_peer: 1,
            next_utt: 1,
            next_id: 1,
            speeches: Vec::new(),
            turn: None,
            records: Vec::new(),
            fallback: Phrase::Chime,
            filler: Phrase::Pending,
            us_per_char: INITIAL_US_PER_CHAR,
            start_at: None,
            stopped: false,
            caller_speaking: false,
            caller_voiced_at: None,
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

    fn phrase(&self, k: PhraseKind) -> &Phrase {
        match k {
            PhraseKind::Fallback => &self.fallback,
            PhraseKind::Filler => &self.filler,
        }
    }

    fn phrase_mut(&mut self, k: PhraseKind) -> &mut Phrase {
        match k {
            PhraseKind::Fallback => &mut self.fallback,
            PhraseKind::Filler => &mut self.filler,
        }
    }

    fn phrase_text(&self, k: PhraseKind) -> String {
        match k {
            PhraseKind::Fallback => self.cfg.fallback_text.clone(),
            PhraseKind::Filler => self.cfg.filler_text.clone().unwrap_or_default(),
        }
    }

    /// The stall deadline of a pipe's stage, ms.
    fn stall_ms(&self, role: Pipe) -> u64 {
        match role {
            Pipe::Stt { .. } => self.cfg.stt.stall_ms,
            Pipe::Llm { .. } => self.cfg.llm.stall_ms,
            Pipe::Tts { .. } | Pipe::Phrase(_) => self.cfg.tts.stall_ms,
        }
    }

    /// Data arrived on `peer`: its deadline becomes the stage's stall deadline from now.
    fn progress(&mut self, now: Instant, peer: PeerId) {
        let Some(role) = self.pipes.get(&peer).map(|p| p.role) else {
            return;
        };
        let stall = self.stall_ms(role);
        if let Some(p) = self.pipes.get_mut(&peer) {
            p.deadline = now + ms(stall);
            p.waiting_for = "more data";
            p.started = true;
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn report(out: &mut Vec<Action>, r: AgentReport) {
        out.push(Action::Report(r));
    }

    fn open(
        &mut self,
        now: Instant,
        role: Pipe,
        req: HttpRequest,
        first_ms: u64,
        waiting_for: &'static str,
        out: &mut Vec<Action>,
    ) -> PeerId {
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        self.pipes.insert(
            peer,
            PipeState {
                role,
                deadline: now + ms(first_ms),
                waiting_for,
                started: false,
            },
        );
        out.push(Action::Provider(ProviderCommand::Open {
            peer,
            spec: OpenSpec::Http(req),
        }));
        peer
    }

    fn close(&mut self, peer: Option<PeerId>, out: &mut Vec<Action>) {
        if let Some(p) = peer
            && self.pipes.remove(&p).is_some()
        {
            out.push(Action::Provider(ProviderCommand::Close { peer: p }));
        }
    }

    fn arm(&self, out: &mut Vec<Action>) {
        let mut next: Option<Instant> = self.pipes.values().map(|p| p.deadline).min();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(t) = &self.turn {
            for s in &t.segments {
                consider(s.retry_at);
            }
            consider(t.llm_retry_at);
            consider(t.filler_at);
        }
        for sp in &self.speeches {
            for s in &sp.sentences {
                consider(s.retry_at);
            }
        }
        for k in [PhraseKind::Fallback, PhraseKind::Filler] {
            if let Phrase::Rendering { retry_at, .. } = self.phrase(k) {
                consider(*retry_at);
            }
        }
        if let Some(t) = next {
            out.push(Action::WakeAt(t));
        }
    }

    fn retry_delay(&self, retries: u32, kind: &str, retry_after_ms: Option<u64>) -> u64 {
        match (kind, retry_after_ms) {
            ("timeout" | "stall", _) => 0,
            (_, Some(ra)) => ra,
            _ => self
                .cfg
                .retry
                .backoff_ms
                .saturating_mul(1 << retries.min(10)),
        }
    }

    /// The delay before a retry, if one is allowed.
    fn may_retry(
        &self,
        now: Instant,
        retries: u32,
        budget_until: Instant,
        class: &FaultClass,
        retry_after_ms: Option<u64>,
    ) -> Option<u64> {
        if !class.retryable || retries >= self.cfg.retry.max_retries {
            return None;
        }
        let d = self.retry_delay(retries, &class.kind, retry_after_ms);
        (now + ms(d) <= budget_until).then_some(d)
    }

    // ---------------------------------------------------------------- speeches

    fn new_speech(&mut self, owner: Owner) -> UtteranceId {
        let utt = UtteranceId(self.next_utt);
        self.next_utt += 1;
        self.speeches.push(Speech {
            utt,
            owner,
            sentences: VecDeque::new(),
            spoken: Vec::new(),
            closed: false,
            finished: false,
            started: false,
            ttfb_reported: false,
        });
        utt
    }

    /// Speaks `text` (split into sentences for TTS) as a speech of its own.
    fn say(&mut self, now: Instant, owner: Owner, text: &str, out: &mut Vec<Action>) {
        let utt = self.new_speech(owner);
        let mut split = SentenceSplitter::new();
        let mut sentences = Vec::new();
        split.push(text, &mut sentences);
        sentences.extend(split.finish());
        for s in sentences {
            self.add_sentence(now, utt, s, 0);
        }
        if let Some(i) = self.speech_ix(utt) {
            self.speeches[i].closed = true;
        }
        self.pump_speech(now, utt, out);
    }

    fn speech_ix(&self, utt: UtteranceId) -> Option<usize> {
        self.speeches.iter().position(|s| s.utt == utt)
    }

    fn add_sentence(&mut self, now: Instant, utt: UtteranceId, text: String, round: usize) {
        let sid = self.id();
        let budget_until = now + ms(self.cfg.retry.budget_ms);
        if let Some(i) = self.speech_ix(utt) {
            self.speeches[i].sentences.push_back(Sentence {
                sid,
                text,
                round,
                peer: None,
                sent_at: None,
                retries: 0,
                retry_at: None,
                budget_until,
                pcm: Pcm16Stream::default(),
                rate: audio::TTS_RATE,
                buffered: Vec::new(),
                received_us: 0,
                got_bytes: false,
                given: 0,
                done: false,
                spoken_ix: None,
                truncated: false,
            });
        }
    }

    fn add_prerendered(
        &mut self,
        utt: UtteranceId,
        text: String,
        round: usize,
        rate: SampleRate,
        samples: Vec<i16>,
        now: Instant,
    ) {
        let sid = self.id();
        let us = rate.duration_of(samples.len()).as_micros() as u64;
        if let Some(i) = self.speech_ix(utt) {
            self.speeches[i].sentences.push_back(Sentence {
                sid,
                text,
                round,
                peer: None,
                sent_at: None,
                retries: 0,
                retry_at: None,
                budget_until: now,
                pcm: Pcm16Stream::default(),
                rate,
                buffered: samples,
                received_us: us,
                got_bytes: true,
                given: 0,
                done: true,
                spoken_ix: None,
                truncated: false,
            });
        }
    }

    /// Plays what can be played in order, opens TTS requests up to the parallel limit, and
    /// finishes the speech when everything is queued.
    fn pump_speech(&mut self, now: Instant, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let start_at = self.start_at;
        let mut us_per_char = self.us_per_char;
        let sp = &mut self.speeches[i];
        if sp.finished {
            return;
        }
        // Hand audio to the playout in sentence order.
        while let Some(head) = sp.sentences.front_mut() {
            let chars = head.text.chars().count();
            let more_text = head.done && head.given < chars;
            if !head.buffered.is_empty() || more_text {
                let samples = std::mem::take(&mut head.buffered);
                let us = head.rate.duration_of(samples.len()).as_micros() as u64;
                let new_given = if head.done {
                    chars
                } else {
                    let est = chars as u64 * us_per_char;
                    text::text_share(&head.text, head.given, head.received_us, est)
                };
                let piece = text::char_slice(&head.text, head.given, new_given);
                head.given = new_given;
                let ix = match head.spoken_ix {
                    Some(ix) => ix,
                    None => {
                        sp.spoken.push(Spoken {
                            text: head.text.clone(),
                            us: 0,
                            round: head.round,
                        });
                        head.spoken_ix = Some(sp.spoken.len() - 1);
                        sp.spoken.len() - 1
                    }
                };
                sp.spoken[ix].us += us;
                let piece = piece.trim();
                out.push(Action::Play {
                    id: sp.utt,
                    audio: AgentAudio::Pcm {
                        rate: head.rate,
                        samples,
                    },
                    text: (!piece.is_empty()).then(|| piece.to_string()),
                });
                if !sp.started {
                    sp.started = true;
                    if sp.owner == Owner::Greeting
                        && let Some(t0) = start_at
                    {
                        out.push(Action::Report(AgentReport::Latency {
                            stage: Stage::Greeting,
                            ms: since_ms(now, t0),
                        }));
                    }
                }
            }
            if head.done {
                if head.received_us > 0 && chars > 0 && !head.truncated && head.sent_at.is_some() {
                    let per = head.received_us / chars as u64;
                    us_per_char = (us_per_char * 7 + per * 3) / 10;
                }
                sp.sentences.pop_front();
            } else {
                break;
            }
        }
        self.us_per_char = us_per_char;
        // Open TTS requests, in order, up to the limit.
        let parallel = self.cfg.tts.parallel;
        let mut to_open = Vec::new();
        // A retry that is due waits only for a free slot now, not for a timer.
        for s in self.speeches[i].sentences.iter_mut() {
            if s.retry_at.is_some_and(|t| t <= now) {
                s.retry_at = None;
            }
        }
        let sp = &self.speeches[i];
        let mut in_flight = sp
            .sentences
            .iter()
            .filter(|s| s.peer.is_some() && !s.done)
            .count();
        for s in &sp.sentences {
            if in_flight >= parallel {
                break;
            }
            if s.peer.is_none() && !s.done && s.retry_at.is_none() {
                to_open.push((s.sid, s.text.clone()));
                in_flight += 1;
            }
        }
        for (sid, text) in to_open {
            let req = wire::speech_request(&self.cfg, &text);
            let first = self.cfg.tts.first_byte_timeout_ms;
            let peer = self.open(now, Pipe::Tts { utt, sid }, req, first, "audio", out);
            let sp = &mut self.speeches[i];
            if let Some(s) = sp.sentences.iter_mut().find(|s| s.sid == sid) {
                s.peer = Some(peer);
                s.retry_at = None;
                s.sent_at.get_or_insert(now);
            }
        }
        let sp = &mut self.speeches[i];
        if sp.closed && sp.sentences.is_empty() && !sp.finished {
            sp.finished = true;
            out.push(Action::Finish(utt));
            self.speech_finished(utt, out);
        }
    }

    /// All audio of `utt` is queued: commit its owner to the history, run after-actions.
    fn speech_finished(&mut self, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let sp = self.speeches.remove(i);
        match sp.owner {
            Owner::Greeting | Owner::Notice => self.commit_greeting(sp),
            Owner::Filler => self.commit_filler(sp),
            Owner::Reply(tid) => {
                if self.turn.as_ref().is_some_and(|t| t.id == tid) {
                    let turn = self.turn.take();
                    if let Some(turn) = turn {
                        let after = turn.after.clone();
                        self.commit_turn(turn, sp);
                        match after {
                            Some(After::Hangup(reason)) => out.push(Action::Hangup { reason }),
                            Some(After::Transfer(to)) => out.push(Action::Transfer { to }),
                            None => {}
                        }
                    }
                }
            }
        }
    }

    fn commit_greeting(&mut self, sp: Speech) {
        let text = join_spoken(&sp.spoken, None);
        let mut msgs = Vec::new();
        if !text.is_empty() {
            msgs.push((0, self.history.len()));
            self.history.push(ChatMessage::Assistant {
                content: text,
                tool_calls: Vec::new(),
                interrupted: false,
            });
        }
        self.records.push(Record {
            utt: sp.utt,
            msgs,
            spoken: sp.spoken,
        });
    }

    /// The filler is reported as heard like any speech, but the model never sees it.
    fn commit_filler(&mut self, sp: Speech) {
        self.records.push(Record {
            utt: sp.utt,
            msgs: Vec::new(),
            spoken: sp.spoken,
        });
    }

    fn commit_turn(&mut self, mut turn: Turn, sp: Speech) {
        if !turn.user_text.is_empty() {
            self.history.push(ChatMessage::User(turn.user_text.clone()));
        }
        let max_round = sp.spoken.iter().map(|s| s.round + 1).max().unwrap_or(0);
        while turn.rounds.len() < max_round {
            turn.rounds.push(Round::default());
        }
        let mut msgs = Vec::new();
        for (r, round) in turn.rounds.iter().enumerate() {
            let content = join_spoken(&sp.spoken, Some(r));
            if content.is_empty() && round.tool_calls.is_empty() {
                continue;
            }
            msgs.push((r, self.history.len()));
            self.history.push(ChatMessage::Assistant {
                content,
                tool_calls: round.tool_calls.clone(),
                interrupted: false,
            });
            for (id, res) in &round.results {
                self.history.push(ChatMessage::Tool {
                    call_id: id.clone(),
                    content: res.clone(),
                });
            }
        }
        self.records.push(Record {
            utt: sp.utt,
            msgs,
            spoken: sp.spoken,
        });
    }

    /// Stops a speech's generation (closing its TTS pipes) and commits it with what was
    /// spoken. The playout has already dropped the utterance, or will drop it.
    fn cancel_speech(&mut self, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let peers: Vec<Option<PeerId>> =
            self.speeches[i].sentences.iter().map(|s| s.peer).collect();
        for p in peers {
            self.close(p, out);
        }
        let mut sp = self.speeches.remove(i);
        sp.finished = true;
        sp.sentences.clear();
        match sp.owner {
            Owner::Greeting | Owner::Notice => self.commit_greeting(sp),
            Owner::Filler => self.commit_filler(sp),
            Owner::Reply(tid) => {
                if let Some(turn) = self.turn.take_if(|t| t.id == tid) {
                    self.close_turn_pipes(&turn, out);
                    self.commit_turn(turn, sp);
                } else {
                    self.records.push(Record {
                        utt: sp.utt,
                        msgs: Vec::new(),
                        spoken: sp.spoken,
                    });
                }
            }
        }
    }

    fn close_turn_pipes(&mut self, turn: &Turn, out: &mut Vec<Action>) {
        for s in &turn.segments {
            self.close(s.peer, out);
        }
        if let Some(l) = &turn.llm {
            self.close(Some(l.peer), out);
        }
    }

    /// The turn cannot be answered: end its reply (whatever already played stays) with the
    /// fallback phrase.
    fn give_up_turn(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let llm = turn.llm.take();
        turn.llm_retry_at = None;
        let segs: Vec<Option<PeerId>> = turn
            .segments
            .iter_mut()
            .map(|s| {
                s.retry_at = None;
                s.peer.take()
            })
            .collect();
        let tid = turn.id;
        let round = turn.rounds.len() + usize::from(llm.is_some());
        turn.after = None;
        let utt = match turn.speech {
            Some(u) => u,
            None => {
                let u = self.new_speech(Owner::Reply(tid));
                if let Some(t) = self.turn.as_mut() {
                    t.speech = Some(u);
                }
                u
            }
        };
        if let Some(l) = llm {
            self.close(Some(l.peer), out);
        }
        for p in segs {
            self.close(p, out);
        }
        self.end_with_fallback(now, utt, round, out);
    }

    /// Drops what is not yet playing of `utt`, appends the fallback, closes the speech.
    fn end_with_fallback(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        round: usize,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let peers = stop_generating(&mut self.speeches[i]);
        for p in peers {
            self.close(p, out);
        }
        let (rate, samples, text) = match &self.fallback {
            Phrase::Ready(pcm) => (audio::TTS_RATE, pcm.clone(), self.cfg.fallback_text.clone()),
            _ => (audio::CHIME_RATE, audio::chime(), String::new()),
        };
        self.add_prerendered(utt, text, round, rate, samples, now);
        self.pump_speech(now, utt, out);
    }

    /// Plays the filler (or the chime standing in for it) as a speech of its own, queued
    /// before the answer's audio.
    fn play_filler(&mut self, now: Instant, out: &mut Vec<Action>) {
        let (rate, samples, text) = match &self.filler {
            Phrase::Ready(pcm) => (
                audio::TTS_RATE,
                pcm.clone(),
                self.phrase_text(PhraseKind::Filler),
            ),
            _ => (audio::CHIME_RATE, audio::chime(), String::new()),
        };
        let utt = self.new_speech(Owner::Filler);
        self.add_prerendered(utt, text, 0, rate, samples, now);
        if let Some(i) = self.speech_ix(utt) {
            self.speeches[i].closed = true;
        }
        self.pump_speech(now, utt, out);
    }

    /// Plays the filler if the current turn's answer has not been heard by its time, unless
    /// the caller is talking again (then it waits until they have been quiet for
    /// [`CALLER_QUIET_MS`], at most [`FILLER_MAX_DEFER_MS`] past its time).
    fn maybe_filler(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(t) = self.turn.as_ref() else {
            return;
        };
        let Some(due) = t.filler_at.filter(|d| *d <= now) else {
            return;
        };
        let answered = t
            .speech
            .and_then(|u| self.speech_ix(u))
            .is_some_and(|i| self.speeches[i].started);
        if answered {
            if let Some(t) = self.turn.as_mut() {
                t.filler_at = None;
            }
            return;
        }
        let cap = t.filler_cap.unwrap_or(due);
        if self.caller_speaking
            && let Some(v) = self.caller_voiced_at
        {
            let quiet_at = v + ms(CALLER_QUIET_MS);
            if now < quiet_at && now < cap {
                if let Some(t) = self.turn.as_mut() {
                    t.filler_at = Some(quiet_at.min(cap));
                }
                return;
            }
        }
        if let Some(t) = self.turn.as_mut() {
            t.filler_at = None;
        }
        self.play_filler(now, out);
    }

    // ---------------------------------------------------------------- turns

    fn start_stt(&mut self, now: Instant, seg_id: u64, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let tid = turn.id;
        let Some(seg) = turn.segments.iter().find(|s| s.id == seg_id) else {
            return;
        };
        let req = wire::transcription_request(&self.cfg, seg.wav.clone());
        let t = self.cfg.stt.timeout_ms;
        let peer = self.open(
            now,
            Pipe::Stt {
                turn: tid,
                seg: seg_id,
            },
            req,
            t,
            "a transcript",
            out,
        );
        if let Some(s) = self
            .turn
            .as_mut()
            .and_then(|t| t.segments.iter_mut().find(|s| s.id == seg_id))
        {
            s.peer = Some(peer);
            s.retry_at = None;
            s.deltas.clear();
        }
    }

    fn messages(&self, turn: &Turn) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(self.history.len() + 4);
        m.push(ChatMessage::System(self.system_prompt.clone()));
        m.extend(self.history.iter().cloned());
        m.push(ChatMessage::User(turn.user_text.clone()));
        for r in &turn.rounds {
            m.push(ChatMessage::Assistant {
                content: r.llm_content.clone(),
                tool_calls: r.tool_calls.clone(),
                interrupted: false,
            });
            for (id, res) in &r.results {
                m.push(ChatMessage::Tool {
                    call_id: id.clone(),
                    content: res.clone(),
                });
            }
        }
        m
    }

    fn start_llm(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let tid = turn.id;
        let req = wire::chat_request(&self.cfg, &self.messages(turn));
        let t = self.cfg.llm.first_token_timeout_ms;
        let peer = self.open(now, Pipe::Llm { turn: tid }, req, t, "a first token", out);
        if let Some(turn) = self.turn.as_mut() {
            turn.llm_retry_at = None;
            turn.llm = Some(Llm {
                peer,
                sent_at: now,
                splitter: SentenceSplitter::new(),
                content: String::new(),
                tools: ToolCallAssembler::default(),
                finish: None,
                emitted: false,
                got_any: false,
            });
        }
    }

    /// Starts the LLM once every segment of the turn is transcribed.
    fn maybe_start_llm(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.llm.is_some() || turn.llm_retry_at.is_some() || !turn.rounds.is_empty() {
            return;
        }
        if turn.segments.iter().any(|s| s.text.is_none()) {
            return;
        }
        let text = turn
            .segments
            .iter()
            .filter_map(|s| s.text.as_deref())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() {
            // Nothing was said (noise): no answer.
            self.turn = None;
            return;
        }
        turn.user_text = text;
        turn.llm_retries = 0;
        // Retries start only within the budget of the caller's turn end (its last segment).
        let turn_end = turn.segments.iter().map(|s| s.end_at).max().unwrap_or(now);
        turn.llm_budget_until = turn_end + ms(self.cfg.retry.budget_ms);
        self.start_llm(now, out);
    }

    fn reply_speech(&mut self) -> Option<UtteranceId> {
        let tid = self.turn.as_ref()?.id;
        if let Some(u) = self.turn.as_ref().and_then(|t| t.speech) {
            return Some(u);
        }
        let u = self.new_speech(Owner::Reply(tid));
        if let Some(t) = self.turn.as_mut() {
            t.speech = Some(u);
        }
        Some(u)
    }

    fn on_llm_message(&mut self, now: Instant, peer: PeerId, data: &str, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let Some(llm) = turn.llm.as_mut().filter(|l| l.peer == peer) else {
            return;
        };
        let chunk = match wire::parse_chat(data) {
            Ok(c) => c,
            Err(e) => {
                self.close(Some(peer), out);
                // Not JSON at all (an HTML page): not what was asked for.
                let kind = if e.starts_with("not JSON") {
                    "content_type"
                } else {
                    "stream_error"
                };
                let class = FaultClass {
                    kind: kind.into(),
                    retryable: true,
                };
                self.llm_fault(now, class, e, None, out);
                return;
            }
        };
        if !llm.got_any && (chunk.content.is_some() || !chunk.tool_calls.is_empty()) {
            llm.got_any = true;
            if !turn.ttft_reported {
                turn.ttft_reported = true;
                let t = since_ms(now, llm.sent_at);
                Self::report(
                    out,
                    AgentReport::Latency {
                        stage: Stage::LlmFirstToken,
                        ms: t,
                    },
                );
            }
        }
        let mut sentences = Vec::new();
        if let Some(c) = &chunk.content {
            llm.content.push_str(c);
            llm.splitter.push(c, &mut sentences);
        }
        for d in &chunk.tool_calls {
            llm.tools.push(d);
        }
        if let Some(f) = chunk.finish_reason {
            llm.finish = Some(f);
        }
        if !sentences.is_empty() {
            llm.emitted = true;
        }
        let progressed = llm.got_any;
        let round = turn.rounds.len();
        let done = chunk.done;
        if progressed {
            self.progress(now, peer);
        }
        if !sentences.is_empty()
            && let Some(utt) = self.reply_speech()
        {
            for s in sentences {
                self.add_sentence(now, utt, s, round);
            }
            self.pump_speech(now, utt, out);
        }
        if done {
            // The connector ends the pipe by itself right after.
            self.pipes.remove(&peer);
            self.complete_llm(now, out);
        }
    }

    fn on_llm_closed(&mut self, now: Instant, peer: PeerId, out: &mut Vec<Action>) {
        let Some(llm) = self
            .turn
            .as_ref()
            .and_then(|t| t.llm.as_ref())
            .filter(|l| l.peer == peer)
        else {
            return;
        };
        if llm.finish.is_some() {
            // No `[DONE]`, but the model said it finished: accept.
            self.complete_llm(now, out);
        } else {
            let class = FaultClass {
                kind: "dropped".into(),
                retryable: true,
            };
            self.llm_fault(
                now,
                class,
                "the stream ended before finish_reason and [DONE]".into(),
                None,
                out,
            );
        }
    }

    fn llm_fault(
        &mut self,
        now: Instant,
        class: FaultClass,
        detail: String,
        retry_after_ms: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        Self::report(
            out,
            AgentReport::ProviderFault {
                provider: PROVIDER_LLM.into(),
                kind: class.kind.clone(),
                detail,
            },
        );
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let emitted = turn.llm.as_ref().is_some_and(|l| l.emitted);
        let delay = if emitted {
            None
        } else {
            self.may_retry(
                now,
                turn.llm_retries,
                turn.llm_budget_until,
                &class,
                retry_after_ms,
            )
        };
        match delay {
            Some(d) => {
                if let Some(turn) = self.turn.as_mut() {
                    turn.llm = None;
                    turn.llm_retries += 1;
                    turn.llm_retry_at = Some(now + ms(d));
                }
                if d == 0 {
                    self.start_llm(now, out);
                }
            }
            None => self.give_up_turn(now, out),
        }
    }

    fn complete_llm(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let Some(mut llm) = turn.llm.take() else {
            return;
        };
        let round_ix = turn.rounds.len();
        let rest = llm.splitter.finish();
        let calls = std::mem::take(&mut llm.tools).finish();
        let mut round = Round {
            llm_content: llm.content,
            tool_calls: calls.clone(),
            results: Vec::new(),
        };
        let mut terminal: Option<After> = None;
        let mut need_more = false;
        for c in &calls {
            Self::report(
                out,
                AgentReport::ToolCall {
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                },
            );
            let result = match c.name.as_str() {
                "end_call" if self.cfg.tools.end_call => {
                    let reason = serde_json::from_str::<serde_json::Value>(&c.arguments)
                        .ok()
                        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
                        .unwrap_or_else(|| "end_call".into());
                    terminal.get_or_insert(After::Hangup(format!("end_call: {reason}")));
                    "ok: the call ends after your goodbye".to_string()
                }
                "transfer_call" if self.cfg.tools.transfer_call => {
                    let number = serde_json::from_str::<serde_json::Value>(&c.arguments)
                        .ok()
                        .and_then(|v| {
                            v.get("number")
                                .and_then(|n| n.as_str())
                                .map(|n| n.trim().to_string())
                        });
                    match number {
                        Some(n)
                            if valid_transfer_target(&n)
                                && (self.cfg.tools.transfer_allow.is_empty()
                                    || self.cfg.tools.transfer_allow.iter().any(|a| a == &n)) =>
                        {
                            terminal.get_or_insert(After::Transfer(n.clone()));
                            format!("ok: transferring the call to {n}")
                        }
                        Some(n) if valid_transfer_target(&n) => {
                            need_more = true;
                            format!("error: {n} is not a number this line may transfer to")
                        }
                        _ => {
                            need_more = true;
                            format!(
                                "error: arguments must be {{\"number\": \"+<E.164 digits>\"}}, got {}",
                                c.arguments
                            )
                        }
                    }
                }
                other => {
                    need_more = true;
                    format!("error: there is no tool named {other:?}")
                }
            };
            round.results.push((c.id.clone(), result));
        }
        let said_this_round = !round.llm_content.trim().is_empty();
        turn.rounds.push(round);
        let utt = self.reply_speech();
        if let (Some(utt), Some(r)) = (utt, rest) {
            self.add_sentence(now, utt, r, round_ix);
        }
        if let Some(after) = terminal {
            if let Some(t) = self.turn.as_mut() {
                t.after = Some(after.clone());
            }
            if !said_this_round && let Some(utt) = utt {
                let phrase = match after {
                    After::Hangup(_) => self.cfg.goodbye_text.clone(),
                    After::Transfer(_) => self.cfg.transfer_text.clone(),
                };
                if !phrase.trim().is_empty() {
                    self.add_sentence(now, utt, phrase, round_ix);
                }
            }
        } else if need_more {
            let rounds = self.turn.as_ref().map_or(0, |t| t.rounds.len()) as u32;
            if rounds < self.cfg.max_tool_rounds {
                if let Some(t) = self.turn.as_mut() {
                    t.llm_retries = 0;
                    t.llm_budget_until = now + ms(self.cfg.retry.budget_ms);
                }
                self.start_llm(now, out);
                return;
            }
            Self::report(
                out,
                AgentReport::ProviderFault {
                    provider: PROVIDER_LLM.into(),
                    kind: "tool_rounds".into(),
                    detail: format!("{rounds} tool rounds without an answer"),
                },
            );
            self.give_up_turn(now, out);
            return;
        }
        // Nothing at all to say (no text in any round, no tool to act on): a faulty answer.
        let Some(utt) = utt else { return };
        let empty = self.speech_ix(utt).is_none_or(|i| {
            let sp = &self.speeches[i];
            sp.sentences.is_empty() && sp.spoken.is_empty()
        });
        if empty {
            Self::report(
                out,
                AgentReport::ProviderFault {
                    provider: PROVIDER_LLM.into(),
                    kind: "empty_reply".into(),
                    detail: "the model answered with no text".into(),
                },
            );
            self.give_up_turn(now, out);
            return;
        }
        if let Some(i) = self.speech_ix(utt) {
            self.speeches[i].closed = true;
        }
        self.pump_speech(now, utt, out);
    }

    fn on_stt_message(
        &mut self,
        now: Instant,
        seg_id: u64,
        peer: PeerId,
        data: &str,
        out: &mut Vec<Action>,
    ) {
        match wire::parse_stt(data) {
            SttEvent::Delta(d) => {
                if let Some(s) = self.seg_mut(seg_id) {
                    s.deltas.push_str(&d);
                }
            }
            SttEvent::Done(text) => {
                self.pipes.remove(&peer);
                let text = text.trim().to_string();
                let Some(s) = self.seg_mut(seg_id) else {
                    return;
                };
                s.peer = None;
                s.text = Some(text.clone());
                let end_at = s.end_at;
                Self::report(
                    out,
                    AgentReport::Latency {
                        stage: Stage::Stt,
                        ms: since_ms(now, end_at),
                    },
                );
                if !text.is_empty() {
                    Self::report(
                        out,
                        AgentReport::Transcript {
                            role: Role::User,
                            text,
                            interrupted: false,
                        },
                    );
                }
                self.maybe_start_llm(now, out);
            }
            SttEvent::Error(e) => {
                self.close(Some(peer), out);
                let class = FaultClass {
                    kind: "stream_error".into(),
                    retryable: true,
                };
                self.stt_fault(now, seg_id, class, e, None, out);
            }
            SttEvent::NotJson(e) => {
                // Never taken as the caller's words.
                self.close(Some(peer), out);
                if let Some(s) = self.seg_mut(seg_id) {
                    s.peer = None;
                }
                let class = FaultClass {
                    kind: "content_type".into(),
                    retryable: true,
                };
                self.stt_fault(now, seg_id, class, e, None, out);
            }
            SttEvent::Ignore => {}
        }
    }

    fn seg_mut(&mut self, seg_id: u64) -> Option<&mut Segment> {
        self.turn
            .as_mut()
            .and_then(|t| t.segments.iter_mut().find(|s| s.id == seg_id))
    }

    fn stt_fault(
        &mut self,
        now: Instant,
        seg_id: u64,
        class: FaultClass,
        detail: String,
        retry_after_ms: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        Self::report(
            out,
            AgentReport::ProviderFault {
                provider: PROVIDER_STT.into(),
                kind: class.kind.clone(),
                detail,
            },
        );
        let Some(seg) = self
            .turn
            .as_ref()
            .and_then(|t| t.segments.iter().find(|s| s.id == seg_id))
        else {
            return;
        };
        match self.may_retry(now, seg.retries, seg.budget_until, &class, retry_after_ms) {
            Some(d) => {
                if let Some(s) = self.seg_mut(seg_id) {
                    s.peer = None;
                    s.retries += 1;
                    s.retry_at = Some(now + ms(d));
                }
                if d == 0 {
                    self.start_stt(now, seg_id, out);
                }
            }
            None => self.give_up_turn(now, out),
        }
    }

    fn on_tts_bytes(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        bytes: &[u8],
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let sp = &mut self.speeches[i];
        let owner = sp.owner;
        let Some(s) = sp.sentences.iter_mut().find(|s| s.sid == sid) else {
            return;
        };
        if !s.got_bytes && !bytes.is_empty() {
            s.got_bytes = true;
            if !sp.ttfb_reported && matches!(owner, Owner::Reply(_)) {
                sp.ttfb_reported = true;
                if let Some(t) = s.sent_at {
                    out.push(Action::Report(AgentReport::Latency {
                        stage: Stage::TtsFirstByte,
                        ms: since_ms(now, t),
                    }));
                }
            }
        }
        let before = s.buffered.len();
        s.pcm.push(bytes, &mut s.buffered);
        let added = s.buffered.len() - before;
        s.received_us += s.rate.duration_of(added).as_micros() as u64;
        self.pump_speech(now, utt, out);
    }

    fn on_tts_closed(&mut self, now: Instant, utt: UtteranceId, sid: u64, out: &mut Vec<Action>) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let Some(s) = self.speeches[i].sentences.iter_mut().find(|s| s.sid == sid) else {
            return;
        };
        s.peer = None;
        if !s.got_bytes {
            let class = FaultClass {
                kind: "empty_audio".into(),
                retryable: true,
            };
            self.tts_fault(
                now,
                utt,
                sid,
                class,
                "the speech response had no audio".into(),
                None,
                out,
            );
            return;
        }
        s.done = true;
        self.pump_speech(now, utt, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn tts_fault(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        class: FaultClass,
        detail: String,
        retry_after_ms: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        Self::report(
            out,
            AgentReport::ProviderFault {
                provider: PROVIDER_TTS.into(),
                kind: class.kind.clone(),
                detail,
            },
        );
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let Some(s) = self.speeches[i].sentences.iter().find(|s| s.sid == sid) else {
            return;
        };
        if s.spoken_ix.is_some() {
            // It has started playing: hand out what arrived (so the cut falls after it), then
            // ask for the rest of the sentence only — never the words already played.
            self.pump_speech(now, utt, out);
            self.resume_sentence(now, utt, sid, &class, retry_after_ms, out);
            return;
        }
        match self.may_retry(now, s.retries, s.budget_until, &class, retry_after_ms) {
            Some(d) => {
                if let Some(s) = self.speeches[i].sentences.iter_mut().find(|s| s.sid == sid) {
                    // Nothing of it was heard: start over.
                    s.peer = None;
                    s.retries += 1;
                    s.retry_at = Some(now + ms(d));
                    s.pcm = Pcm16Stream::default();
                    s.buffered.clear();
                    s.received_us = 0;
                    s.got_bytes = false;
                }
                self.pump_speech(now, utt, out);
            }
            None => {
                let owner = self.speeches[i].owner;
                match owner {
                    Owner::Reply(tid) if self.turn.as_ref().is_some_and(|t| t.id == tid) => {
                        self.give_up_turn(now, out)
                    }
                    _ => {
                        let round = s.round;
                        self.end_with_fallback(now, utt, round, out);
                    }
                }
            }
        }
    }

    /// A sentence whose audio has started playing broke off (dropped, stalled): its audio so far
    /// stays, cut after the word it reached, and the rest of its text becomes a sentence of its
    /// own, synthesised again (after the retry delay) — or, when no retry is allowed, the answer
    /// ends with the fallback phrase.
    fn resume_sentence(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        class: &FaultClass,
        retry_after_ms: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.speech_ix(utt) else {
            return;
        };
        let Some(ix) = self.speeches[i].sentences.iter().position(|s| s.sid == sid) else {
            return;
        };
        let s = &self.speeches[i].sentences[ix];
        let est_us = s.text.chars().count() as u64 * self.us_per_char;
        let cut = text::resume_at(&s.text, s.given, s.received_us, est_us);
        let rest = text::char_slice(&s.text, cut, usize::MAX)
            .trim()
            .to_string();
        let delay = self.may_retry(now, s.retries, s.budget_until, class, retry_after_ms);
        let (round, retries, budget_until) = (s.round, s.retries, s.budget_until);
        let owner = self.speeches[i].owner;
        cut_sentence(&mut self.speeches[i], ix, cut);
        if rest.is_empty() {
            // Only the sentence's last word was missing its end: nothing more to say.
            self.pump_speech(now, utt, out);
            return;
        }
        match delay {
            Some(d) => {
                let sid = self.id();
                let rest_sentence = Sentence {
                    sid,
                    text: rest,
                    round,
                    peer: None,
                    sent_at: None,
                    retries: retries + 1,
                    retry_at: (d > 0).then(|| now + ms(d)),
                    budget_until,
                    pcm: Pcm16Stream::default(),
                    rate: audio::TTS_RATE,
                    buffered: Vec::new(),
                    received_us: 0,
                    got_bytes: false,
                    given: 0,
                    done: false,
                    spoken_ix: None,
                    truncated: false,
                };
                if let Some(i) = self.speech_ix(utt) {
                    self.speeches[i].sentences.insert(ix + 1, rest_sentence);
                }
                self.pump_speech(now, utt, out);
            }
            None => match owner {
                Owner::Reply(tid) if self.turn.as_ref().is_some_and(|t| t.id == tid) => {
                    self.give_up_turn(now, out)
                }
                _ => self.end_with_fallback(now, utt, round, out),
            },
        }
    }

    // ---------------------------------------------------------------- fallback pre-render

    /// Starts rendering phrase `k` (a first try: its budget runs from now).
    fn start_phrase(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        if self.phrase_text(k).trim().is_empty() {
            *self.phrase_mut(k) = Phrase::Pending;
            return;
        }
        *self.phrase_mut(k) = Phrase::Rendering {
            peer: None,
            pcm: Pcm16Stream::default(),
            samples: Vec::new(),
            retries: 0,
            retry_at: None,
            budget_until: now + ms(self.cfg.retry.budget_ms),
        };
        self.render_phrase(now, k, out);
    }

    fn render_phrase(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        let req = wire::speech_request(&self.cfg, &self.phrase_text(k));
        let t = self.cfg.tts.first_byte_timeout_ms;
        let peer = self.open(now, Pipe::Phrase(k), req, t, "audio", out);
        if let Phrase::Rendering {
            peer: p,
            retry_at,
            pcm,
            samples,
            ..
        } = self.phrase_mut(k)
        {
            *p = Some(peer);
            *retry_at = None;
            *pcm = Pcm16Stream::default();
            samples.clear();
        }
    }

    /// Phrase `k` is rendered (`Ready`) or given up (`Chime`): the filler is rendered after the
    /// fallback, so a TTS that is down at the start costs one failed request, not two.
    fn phrase_settled(&mut self, now: Instant, k: PhraseKind, out: &mut Vec<Action>) {
        if k != PhraseKind::Fallback || !matches!(self.filler, Phrase::Pending) {
            return;
        }
        match self.fallback {
            Phrase::Ready(_) => self.start_phrase(now, PhraseKind::Filler, out),
            _ => self.filler = Phrase::Chime,
        }
    }

    fn phrase_fault(
        &mut self,
        now: Instant,
        k: PhraseKind,
        class: FaultClass,
        detail: String,
        retry_after_ms: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        Self::report(
            out,
            AgentReport::ProviderFault {
                provider: PROVIDER_TTS.into(),
                kind: class.kind.clone(),
                detail: format!("rendering the {} phrase: {detail}", k.name()),
            },
        );
        let Phrase::Rendering {
            retries,
            budget_until,
            ..
        } = self.phrase(k)
        else {
            return;
        };
        match self.may_retry(now, *retries, *budget_until, &class, retry_after_ms) {
            Some(d) => {
                if let Phrase::Rendering {
                    peer,
                    retries,
                    retry_at,
                    ..
                } = self.phrase_mut(k)
                {
                    *peer = None;
                    *retries += 1;
                    *retry_at = Some(now + ms(d));
                }
                if d == 0 {
                    self.render_phrase(now, k, out);
                }
            }
            None => {
                *self.phrase_mut(k) = Phrase::Chime;
                self.phrase_settled(now, k, out);
            }
        }
    }

    // ---------------------------------------------------------------- barge-in bookkeeping

    /// Cuts the committed messages of `utt` to what the caller heard (`heard_us` of its audio),
    /// and reports the agent's transcript.
    fn truncate_record(&mut self, utt: UtteranceId, heard_us: u64, out: &mut Vec<Action>) {
        let Some(ri) = self.records.iter().position(|r| r.utt == utt) else {
            return;
        };
        let rec = self.records.remove(ri);
        let mut left = heard_us;
        let mut heard_by_round: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut cut_rounds = std::collections::BTreeSet::new();
        let mut all = Vec::new();
        for s in &rec.spoken {
            let part = if left >= s.us {
                left -= s.us;
                s.text.trim().to_string()
            } else {
                let p = text::heard_prefix(&s.text, left, s.us);
                left = 0;
                cut_rounds.insert(s.round);
                p
            };
            if !part.is_empty() {
                heard_by_round
                    .entry(s.round)
                    .or_default()
                    .push(part.clone());
                all.push(part);
            }
        }
        for (round, ix) in &rec.msgs {
            if let Some(ChatMessage::Assistant {
                content,
                interrupted,
                ..
            }) = self.history.get_mut(*ix)
            {
                let heard = heard_by_round
                    .get(round)
                    .map(|v| v.join(" "))
                    .unwrap_or_default();
                if cut_rounds.contains(round) || heard.len() < content.len() {
                    *content = heard;
                    *interrupted = true;
                }
            }
        }
        Self::report(
            out,
            AgentReport::Transcript {
                role: Role::Agent,
                text: all.join(" "),
                interrupted: true,
            },
        );
    }
}

/// Ends a sentence where its audio ends: no more audio is awaited, and the text not handed out
/// with audio is dropped (also from what counts as spoken).
fn truncate_sentence(sp: &mut Speech, ix: usize) {
    let Some(s) = sp.sentences.get_mut(ix) else {
        return;
    };
    if s.done && s.truncated {
        // Already cut where its audio ended ([`cut_sentence`]).
        return;
    }
    s.done = true;
    s.truncated = true;
    s.peer = None;
    s.retry_at = None;
    let given = text::char_slice(&s.text, 0, s.given);
    if let Some(k) = s.spoken_ix
        && let Some(sp_entry) = sp.spoken.get_mut(k)
    {
        sp_entry.text = given.trim().to_string();
    }
    s.text = given;
    s.given = s.text.chars().count();
}

/// Ends sentence `ix` of `sp` after `cut` characters of its text (at least what was handed out
/// with audio): no more audio is awaited; the text up to `cut` goes with the audio received.
fn cut_sentence(sp: &mut Speech, ix: usize, cut: usize) {
    let Some(s) = sp.sentences.get_mut(ix) else {
        return;
    };
    s.done = true;
    s.truncated = true;
    s.peer = None;
    s.retry_at = None;
    let kept = text::char_slice(&s.text, 0, cut.max(s.given));
    if let Some(k) = s.spoken_ix
        && let Some(sp_entry) = sp.spoken.get_mut(k)
    {
        sp_entry.text = kept.trim().to_string();
    }
    s.text = kept;
}

/// Stops generating `sp`: closes nothing itself (returns the pipes to close), keeps only the
/// sentences that have started playing, cut where their audio ends.
fn stop_generating(sp: &mut Speech) -> Vec<Option<PeerId>> {
    let mut peers = Vec::new();
    let mut keep = VecDeque::new();
    let old = std::mem::take(&mut sp.sentences);
    for mut s in old {
        peers.push(s.peer.take());
        if s.spoken_ix.is_some() {
            keep.push_back(s);
        }
    }
    sp.sentences = keep;
    for ix in 0..sp.sentences.len() {
        truncate_sentence(sp, ix);
    }
    sp.closed = true;
    peers
}

fn join_spoken(spoken: &[Spoken], round: Option<usize>) -> String {
    spoken
        .iter()
        .filter(|s| round.is_none_or(|r| s.round == r))
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
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

    fn on_audio(&mut self, now: Instant, frame: &AudioFrame<'_>, _out: &mut Vec<Action>) {
        if frame.voiced {
            self.caller_voiced_at = Some(now);
        }
    }

    fn on_user_speech_start(&mut self, now: Instant, _media_ms: u64, _out: &mut Vec<Action>) {
        self.caller_speaking = true;
        self.caller_voiced_at = Some(now);
    }

    fn on_start(&mut self, now: Instant, info: &CallInfo, out: &mut Vec<Action>) {
        self.start_at = Some(now);
        let param = |name: &str| -> Option<String> {
            if name.is_empty() {
                return None;
            }
            info.parameters
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(p) = param(&self.cfg.system_prompt_param) {
            self.system_prompt = p;
        }
        let greeting = param(&self.cfg.greeting_param)
            .or_else(|| self.cfg.greeting.clone())
            .filter(|g| !g.trim().is_empty());
        if let Some(g) = greeting {
            self.say(now, Owner::Greeting, &g, out);
        }
        self.start_phrase(now, PhraseKind::Fallback, out);
        self.arm(out);
    }

    fn on_user_turn(&mut self, now: Instant, turn: UserTurn, out: &mut Vec<Action>) {
        self.caller_speaking = false;
        if self.stopped || turn.audio.is_empty() {
            return;
        }
        let filler_at = self
            .cfg
            .filler_text
            .as_deref()
            .is_some_and(|f| !f.trim().is_empty())
            .then(|| now + ms(self.cfg.filler_after_ms));
        let filler_cap = filler_at.map(|t| t + ms(FILLER_MAX_DEFER_MS));
        let wav = match audio::wav_16k(&turn.audio, turn.rate) {
            Ok(w) => w,
            Err(e) => {
                Self::report(
                    out,
                    AgentReport::ProviderFault {
                        provider: PROVIDER_STT.into(),
                        kind: "audio".into(),
                        detail: format!("cannot encode the utterance: {e}"),
                    },
                );
                return;
            }
        };
        // Speeches still being generated (a greeting, an answer) stop here: the caller has
        // the floor. One that has audio queued was or will be barged in on by the call.
        let restart = self.turn.as_ref().is_some_and(|t| {
            t.speech
                .and_then(|u| self.speech_ix(u))
                .is_none_or(|i| !self.speeches[i].started)
                && t.after.is_none()
        });
        let other: Vec<UtteranceId> = self
            .speeches
            .iter()
            .filter(|s| !restart || Some(s.utt) != self.turn.as_ref().and_then(|t| t.speech))
            .map(|s| s.utt)
            .collect();
        for u in other {
            let started = self.speech_ix(u).is_some_and(|i| self.speeches[i].started);
            if started {
                // Let the queued audio play; stop generating more.
                if let Some(i) = self.speech_ix(u) {
                    let peers = stop_generating(&mut self.speeches[i]);
                    for p in peers {
                        self.close(p, out);
                    }
                }
                if let Some(t) = self.turn.as_ref().filter(|t| t.speech == Some(u))
                    && let Some(l) = &t.llm
                {
                    let p = l.peer;
                    self.close(Some(p), out);
                    if let Some(t) = self.turn.as_mut() {
                        t.llm = None;
                    }
                }
                self.pump_speech(now, u, out);
            } else {
                self.cancel_speech(u, out);
            }
        }
        let seg_id = self.id();
        let seg = Segment {
            id: seg_id,
            wav,
            end_at: now,
            peer: None,
            retries: 0,
            retry_at: None,
            budget_until: now + ms(self.cfg.retry.budget_ms),
            deltas: String::new(),
            text: None,
        };
        if restart && let Some(t) = self.turn.as_mut() {
            // Still thinking: cancel the answer, transcribe the new audio, answer both.
            let llm = t.llm.take().map(|l| l.peer);
            t.llm_retry_at = None;
            t.rounds.clear();
            t.ttft_reported = false;
            let speech = t.speech.take();
            t.segments.push(seg);
            // The caller's turn ends now: the filler's time counts from here.
            t.filler_at = filler_at;
            t.filler_cap = filler_cap;
            self.close(llm, out);
            if let Some(u) = speech {
                // No audio yet: drop it without a trace.
                if let Some(i) = self.speech_ix(u) {
                    let peers: Vec<Option<PeerId>> =
                        self.speeches[i].sentences.iter().map(|s| s.peer).collect();
                    self.speeches.remove(i);
                    for p in peers {
                        self.close(p, out);
                    }
                }
            }
        } else {
            if let Some(old) = self.turn.take() {
                // An answer already speaking (not barged in on): it was committed or is
                // finishing above; forget its generation.
                self.close_turn_pipes(&old, out);
            }
            let id = self.id();
            self.turn = Some(Turn {
                id,
                segments: vec![seg],
                user_text: String::new(),
                rounds: Vec::new(),
                llm: None,
                llm_retries: 0,
                llm_retry_at: None,
                llm_budget_until: now,
                ttft_reported: false,
                speech: None,
                after: None,
                filler_at,
                filler_cap,
            });
        }
        self.start_stt(now, seg_id, out);
        self.arm(out);
    }

    fn on_barge_in(&mut self, _now: Instant, heard: &Interrupted, out: &mut Vec<Action>) {
        // Every speech that has audio is cut: stop generating it and commit what was said.
        let speaking: Vec<UtteranceId> = self
            .speeches
            .iter()
            .filter(|s| s.started || s.utt <= heard.id)
            .map(|s| s.utt)
            .collect();
        let mut afters = Vec::new();
        for u in speaking {
            if let Some(t) = self.turn.as_ref().filter(|t| t.speech == Some(u))
                && let Some(a) = &t.after
            {
                afters.push(a.clone());
            }
            self.cancel_speech(u, out);
        }
        self.truncate_record(heard.id, heard.heard_ms * 1000, out);
        for d in &heard.dropped {
            self.truncate_record(*d, 0, out);
        }
        // Records of utterances the playout no longer has are done with.
        self.records
            .retain(|r| r.utt > heard.id && !heard.dropped.contains(&r.utt));
        // A decided hang-up or transfer still happens.
        for a in afters {
            match a {
                After::Hangup(reason) => out.push(Action::Hangup { reason }),
                After::Transfer(to) => out.push(Action::Transfer { to }),
            }
        }
        self.arm(out);
    }

    fn on_played(&mut self, _now: Instant, id: UtteranceId, out: &mut Vec<Action>) {
        if let Some(ri) = self.records.iter().position(|r| r.utt == id) {
            let rec = self.records.remove(ri);
            let text = join_spoken(&rec.spoken, None);
            if !text.is_empty() {
                Self::report(
                    out,
                    AgentReport::Transcript {
                        role: Role::Agent,
                        text,
                        interrupted: false,
                    },
                );
            }
        }
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
        let Some(role) = self.pipes.get(&peer).map(|p| p.role) else {
            // A pipe already closed or given up on.
            return;
        };
        match event {
            ProviderEvent::Opened { .. } => {}
            ProviderEvent::Message { message, .. } => {
                // The LLM's first-token deadline holds until a content or tool-call delta
                // (see `on_llm_message`); any data counts for the other stages.
                if !matches!(role, Pipe::Llm { .. }) {
                    self.progress(now, peer);
                }
                match (role, message) {
                    (Pipe::Stt { seg, .. }, ProviderMessage::Text(t)) => {
                        self.on_stt_message(now, seg, peer, &t, out)
                    }
                    (Pipe::Llm { .. }, ProviderMessage::Text(t)) => {
                        self.on_llm_message(now, peer, &t, out)
                    }
                    (Pipe::Tts { utt, sid }, ProviderMessage::Binary(b)) => {
                        self.on_tts_bytes(now, utt, sid, &b, out)
                    }
                    (Pipe::Tts { utt, sid }, ProviderMessage::Text(t)) => {
                        self.on_tts_bytes(now, utt, sid, t.as_bytes(), out)
                    }
                    (Pipe::Phrase(k), m) => {
                        let b = match m {
                            ProviderMessage::Binary(b) => b,
                            ProviderMessage::Text(t) => t.into_bytes(),
                        };
                        if let Phrase::Rendering { pcm, samples, .. } = self.phrase_mut(k) {
                            pcm.push(&b, samples);
                        }
                    }
                    (_, ProviderMessage::Binary(b)) => {
                        // Binary where text was expected: try it as text.
                        let t = String::from_utf8_lossy(&b).into_owned();
                        match role {
                            Pipe::Stt { seg, .. } => self.on_stt_message(now, seg, peer, &t, out),
                            Pipe::Llm { .. } => self.on_llm_message(now, peer, &t, out),
                            _ => {}
                        }
                    }
                }
            }
            ProviderEvent::Closed { .. } => {
                self.pipes.remove(&peer);
                match role {
                    Pipe::Stt { seg, .. } => {
                        let pending = self
                            .turn
                            .as_ref()
                            .and_then(|t| t.segments.iter().find(|s| s.id == seg))
                            .is_some_and(|s| s.text.is_none() && s.peer == Some(peer));
                        if pending {
                            let class = FaultClass {
                                kind: "dropped".into(),
                                retryable: true,
                            };
                            let detail = "the transcription ended without a transcript".to_string();
                            self.stt_fault(now, seg, class, detail, None, out);
                        }
                    }
                    Pipe::Llm { .. } => self.on_llm_closed(now, peer, out),
                    Pipe::Tts { utt, sid } => self.on_tts_closed(now, utt, sid, out),
                    Pipe::Phrase(k) => {
                        let ok = matches!(self.phrase(k), Phrase::Rendering { samples, .. } if !samples.is_empty());
                        if ok {
                            if let Phrase::Rendering { samples, .. } = self.phrase_mut(k) {
                                let s = std::mem::take(samples);
                                *self.phrase_mut(k) = Phrase::Ready(s);
                            }
                            self.phrase_settled(now, k, out);
                        } else {
                            let class = FaultClass {
                                kind: "empty_audio".into(),
                                retryable: true,
                            };
                            self.phrase_fault(now, k, class, "no audio".into(), None, out);
                        }
                    }
                }
            }
            ProviderEvent::Failed {
                error,
                status,
                retry_after_ms,
                ..
            } => {
                self.pipes.remove(&peer);
                let class = classify_failure(status, &error);
                match role {
                    Pipe::Stt { seg, .. } => {
                        if let Some(s) = self.seg_mut(seg).filter(|s| s.peer == Some(peer)) {
                            s.peer = None;
                            self.stt_fault(now, seg, class, error, retry_after_ms, out);
                        }
                    }
                    Pipe::Llm { .. } => {
                        let ours = self
                            .turn
                            .as_ref()
                            .and_then(|t| t.llm.as_ref())
                            .is_some_and(|l| l.peer == peer);
                        if ours {
                            self.llm_fault(now, class, error, retry_after_ms, out);
                        }
                    }
                    Pipe::Tts { utt, sid } => {
                        self.tts_fault(now, utt, sid, class, error, retry_after_ms, out)
                    }
                    Pipe::Phrase(k) => self.phrase_fault(now, k, class, error, retry_after_ms, out),
                }
            }
        }
        self.arm(out);
    }

    fn on_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopped {
            return;
        }
        let expired: Vec<(PeerId, Pipe, &'static str, bool)> = self
            .pipes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| (*id, p.role, p.waiting_for, p.started))
            .collect();
        for (peer, role, waiting, started) in expired {
            self.close(Some(peer), out);
            // Nothing at all within the first deadline, or a stream that stopped sending.
            let (kind, detail) = if started {
                (
                    "stall",
                    format!(
                        "the stream stalled: no {waiting} for {} ms",
                        self.stall_ms(role)
                    ),
                )
            } else {
                ("timeout", format!("no {waiting} in time"))
            };
            let class = FaultClass {
                kind: kind.into(),
                retryable: true,
            };
            match role {
                Pipe::Stt { seg, .. } => {
                    if let Some(s) = self.seg_mut(seg) {
                        s.peer = None;
                    }
                    self.stt_fault(now, seg, class, detail, None, out)
                }
                Pipe::Llm { .. } => {
                    let ours = self
                        .turn
                        .as_ref()
                        .and_then(|t| t.llm.as_ref())
                        .is_some_and(|l| l.peer == peer);
                    if ours {
                        self.llm_fault(now, class, detail, None, out);
                    }
                }
                Pipe::Tts { utt, sid } => self.tts_fault(now, utt, sid, class, detail, None, out),
                Pipe::Phrase(k) => self.phrase_fault(now, k, class, detail, None, out),
            }
        }
        // Retries that are due.
        let due_segs: Vec<u64> = self
            .turn
            .as_ref()
            .map(|t| {
                t.segments
                    .iter()
                    .filter(|s| s.retry_at.is_some_and(|r| r <= now))
                    .map(|s| s.id)
                    .collect()
            })
            .unwrap_or_default();
        for s in due_segs {
            self.start_stt(now, s, out);
        }
        if self
            .turn
            .as_ref()
            .is_some_and(|t| t.llm_retry_at.is_some_and(|r| r <= now))
        {
            self.start_llm(now, out);
        }
        let due_speech: Vec<UtteranceId> = self
            .speeches
            .iter()
            .filter(|sp| {
                sp.sentences
                    .iter()
                    .any(|s| s.retry_at.is_some_and(|r| r <= now))
            })
            .map(|sp| sp.utt)
            .collect();
        for u in due_speech {
            self.pump_speech(now, u, out);
        }
        for k in [PhraseKind::Fallback, PhraseKind::Filler] {
            if matches!(self.phrase(k), Phrase::Rendering { retry_at: Some(r), .. } if *r <= now) {
                self.render_phrase(now, k, out);
            }
        }
        self.maybe_filler(now, out);
        self.arm(out);
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
        self.arm(out);
    }

    fn on_stop(&mut self, _now: Instant, out: &mut Vec<Action>) {
        self.stopped = true;
        let peers: Vec<PeerId> = self.pipes.keys().copied().collect();
        for p in peers {
            self.close(Some(p), out);
        }
    }
}
