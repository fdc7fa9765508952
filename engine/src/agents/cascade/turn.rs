//! A caller turn being answered: its audio transcribed (STT), then chat rounds (LLM) whose
//! sentences go to TTS as they are written, tool calls run between rounds.

use std::time::Instant;

use super::pipes::Pipe;
use super::retry::Attempt;
use super::text::SentenceSplitter;
use super::utterance::Owner;
use super::wire::{self, SttEvent, ToolCallAssembler};
use super::{CascadeAgent, ChatMessage, PROVIDER_LLM, ToolCall, ms, report, since_ms, tools};
use crate::agent::{Action, AgentReport, FaultKind, PeerId, ProviderFault, Role, Stage};
use crate::playout::UtteranceId;

/// One piece of the caller's audio (a user turn the call handed over) and its transcription.
#[derive(Debug)]
pub(super) struct Transcription {
    pub id: u64,
    /// The audio, 16 kHz 16-bit WAV.
    wav: Vec<u8>,
    /// When the caller's turn ended.
    pub end_at: Instant,
    pub attempt: Attempt,
    /// Streamed text so far.
    deltas: String,
    /// The transcript, once done.
    pub text: Option<String>,
}

/// The stream of one chat completion while it is being received.
#[derive(Debug)]
pub(super) struct ChatStream {
    sent_at: Instant,
    splitter: SentenceSplitter,
    content: String,
    tools: ToolCallAssembler,
    finish: Option<wire::Finish>,
    /// A sentence of this round went to TTS: a retry would repeat it.
    pub emitted: bool,
    got_any: bool,
}

/// A finished chat round: what the model wrote, its tool calls and their results.
#[derive(Debug, Default)]
pub(super) struct Round {
    pub llm_content: String,
    pub tool_calls: Vec<ToolCall>,
    /// (call id, result) per tool call.
    pub results: Vec<(String, String)>,
}

impl Round {
    /// Appends the round as the Chat Completions API has it: an assistant message with
    /// `content` and the tool calls, then one `tool` message per result.
    pub fn push_messages(&self, content: &str, to: &mut Vec<ChatMessage>) {
        to.push(ChatMessage::Assistant {
            content: content.to_string(),
            tool_calls: self.tool_calls.clone(),
            interrupted: false,
        });
        for (id, res) in &self.results {
            to.push(ChatMessage::Tool {
                call_id: id.clone(),
                content: res.clone(),
            });
        }
    }
}

/// What happens once the answer has been said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum After {
    Hangup(String),
    Transfer(String),
}

impl After {
    pub fn action(self) -> Action {
        match self {
            After::Hangup(reason) => Action::Hangup { reason },
            After::Transfer(to) => Action::Transfer { to },
        }
    }
}

/// The caller turn being answered.
#[derive(Debug)]
pub(super) struct Turn {
    pub id: u64,
    /// The caller's audio, in order (more than one when they spoke again while it thought).
    pub transcriptions: Vec<Transcription>,
    /// All of it transcribed, joined.
    pub user_text: String,
    pub rounds: Vec<Round>,
    /// The chat request of the current round.
    pub llm: Attempt,
    /// The current round's stream, while its request is in flight.
    pub chat: Option<ChatStream>,
    ttft_reported: bool,
    /// The answer's utterance, once it has one.
    pub answer: Option<UtteranceId>,
    pub after: Option<After>,
    /// When the filler plays if the caller has heard nothing of the answer by then; `None`
    /// once it played (or with no filler configured).
    pub filler_at: Option<Instant>,
    /// The latest time the filler may be deferred to for a caller who is talking again.
    pub filler_cap: Option<Instant>,
    /// The last round called the operator's tools: the next round starts once every run has
    /// ended (and every transcription is in).
    pub awaiting_tools: bool,
}

impl Turn {
    /// A retry due (a transcription's or the chat's), or the filler's time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let stt = self.transcriptions.iter().map(|s| s.attempt.poll_timeout());
        stt.chain([self.llm.poll_timeout(), self.filler_at])
            .flatten()
            .min()
    }
}

/// What a finished chat round asks for next.
struct RoundEnd {
    /// Its index in the turn's rounds.
    ix: usize,
    /// The text after the last whole sentence.
    rest: Option<String>,
    /// A tool call that ends or transfers the call.
    after: Option<After>,
    /// A tool call failed: the model gets another round.
    more: bool,
    /// The operator's tools are running: another round once they have answered.
    awaiting: bool,
    /// The model wrote something this round.
    said: bool,
}

impl CascadeAgent {
    /// Starts a turn with the caller's audio `wav`, or (`restart`: the answer so far has no
    /// audio) adds it to the current turn, whose answer starts over once it is transcribed.
    pub(super) fn take_turn(
        &mut self,
        now: Instant,
        wav: Vec<u8>,
        filler: (Option<Instant>, Option<Instant>),
        restart: bool,
        out: &mut Vec<Action>,
    ) {
        let seg_id = self.id();
        let seg = Transcription {
            id: seg_id,
            wav,
            end_at: now,
            attempt: Attempt::new(now + ms(self.cfg.retry.budget_ms)),
            deltas: String::new(),
            text: None,
        };
        self.join_turn(now, seg, filler, restart, out);
        self.start_stt(now, seg_id, out);
    }

    /// As [`CascadeAgent::take_turn`], with caller text that needs no STT (keys pressed, a
    /// note on the caller's silence): the chat starts once the turn's other audio (if any) is
    /// transcribed.
    pub(super) fn take_text_turn(
        &mut self,
        now: Instant,
        text: String,
        filler: (Option<Instant>, Option<Instant>),
        restart: bool,
        out: &mut Vec<Action>,
    ) {
        let seg = Transcription {
            id: self.id(),
            wav: Vec::new(),
            end_at: now,
            attempt: Attempt::new(now),
            deltas: String::new(),
            text: Some(text),
        };
        self.join_turn(now, seg, filler, restart, out);
        self.maybe_start_llm(now, out);
    }

    /// Starts a turn with `seg`, or (`restart`) adds it to the current one.
    fn join_turn(
        &mut self,
        now: Instant,
        seg: Transcription,
        filler: (Option<Instant>, Option<Instant>),
        restart: bool,
        out: &mut Vec<Action>,
    ) {
        let (filler_at, filler_cap) = filler;
        if restart && let Some(t) = self.turn.as_mut() {
            // Still thinking: cancel the answer, transcribe the new audio, answer both.
            t.chat = None;
            let llm = t.llm.stop();
            if !t.awaiting_tools {
                // Rounds waiting for tool answers stay: the answer uses both texts and them.
                t.rounds.clear();
            }
            t.ttft_reported = false;
            let answer = t.answer.take();
            t.transcriptions.push(seg);
            // The caller's turn ends now: the filler's time counts from here.
            t.filler_at = filler_at;
            t.filler_cap = filler_cap;
            self.pipes.close(llm, out);
            if let Some(i) = answer.and_then(|u| self.utt_ix(u)) {
                // No audio yet: drop it without a trace.
                let peers = self.utterances.remove(i).peers();
                for p in peers {
                    self.pipes.close(p, out);
                }
            }
        } else {
            if let Some(old) = self.turn.take() {
                // An answer already speaking (not barged in on): it was committed or is
                // finishing; forget its generation.
                self.close_turn_pipes(&old, out);
            }
            self.turn = Some(Turn {
                id: self.id(),
                transcriptions: vec![seg],
                user_text: String::new(),
                rounds: Vec::new(),
                llm: Attempt::new(now),
                chat: None,
                ttft_reported: false,
                answer: None,
                after: None,
                filler_at,
                filler_cap,
                awaiting_tools: false,
            });
        }
    }

    pub(super) fn close_turn_pipes(&mut self, turn: &Turn, out: &mut Vec<Action>) {
        for s in &turn.transcriptions {
            self.pipes.close(s.attempt.peer, out);
        }
        self.pipes.close(turn.llm.peer, out);
    }

    /// Whether `peer` carries the current chat request.
    pub(super) fn is_chat_pipe(&self, peer: PeerId) -> bool {
        self.turn.as_ref().is_some_and(|t| t.llm.peer == Some(peer))
    }

    /// The turn cannot be answered: end its reply (whatever already played stays) with the
    /// fallback phrase.
    pub(super) fn give_up_turn(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        let chat = turn.chat.take();
        let llm = turn.llm.stop();
        let stt: Vec<Option<PeerId>> = turn
            .transcriptions
            .iter_mut()
            .map(|s| s.attempt.stop())
            .collect();
        let round = turn.rounds.len() + usize::from(chat.is_some());
        turn.after = None;
        let Some(utt) = self.answer_utterance() else {
            return;
        };
        self.pipes.close(llm, out);
        for p in stt {
            self.pipes.close(p, out);
        }
        self.end_with_fallback(now, utt, round, out);
    }

    /// The current turn's answer, created on first use.
    pub(super) fn answer_utterance(&mut self) -> Option<UtteranceId> {
        let tid = self.turn.as_ref()?.id;
        if let Some(u) = self.turn.as_ref().and_then(|t| t.answer) {
            return Some(u);
        }
        let u = self.new_utterance(Owner::Reply(tid));
        if let Some(t) = self.turn.as_mut() {
            t.answer = Some(u);
        }
        Some(u)
    }

    /// Starts the retries that are due: transcriptions, then the chat.
    pub(super) fn retry_turn(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(t) = self.turn.as_ref() else {
            return;
        };
        let due: Vec<u64> = t
            .transcriptions
            .iter()
            .filter(|s| s.attempt.is_due(now))
            .map(|s| s.id)
            .collect();
        for s in due {
            self.start_stt(now, s, out);
        }
        if self.turn.as_ref().is_some_and(|t| t.llm.is_due(now)) {
            self.start_llm(now, out);
        }
    }

    // ---------------------------------------------------------------- STT

    pub(super) fn transcription_mut(&mut self, seg_id: u64) -> Option<&mut Transcription> {
        self.turn
            .as_mut()
            .and_then(|t| t.transcriptions.iter_mut().find(|s| s.id == seg_id))
    }

    pub(super) fn start_stt(&mut self, now: Instant, seg_id: u64, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let Some(seg) = turn.transcriptions.iter().find(|s| s.id == seg_id) else {
            return;
        };
        let req = wire::transcription_request(&self.cfg, seg.wav.clone());
        let role = Pipe::Stt {
            turn: turn.id,
            seg: seg_id,
        };
        let peer = self.open(now, role, req, out);
        if let Some(s) = self.transcription_mut(seg_id) {
            s.attempt.sent(peer);
            s.deltas.clear();
        }
    }

    pub(super) fn on_stt_message(
        &mut self,
        now: Instant,
        seg_id: u64,
        peer: PeerId,
        data: &str,
        out: &mut Vec<Action>,
    ) {
        let role = Pipe::Stt {
            turn: self.turn.as_ref().map_or(0, |t| t.id),
            seg: seg_id,
        };
        match wire::parse_stt(data) {
            SttEvent::Delta(d) => {
                if let Some(s) = self.transcription_mut(seg_id) {
                    s.deltas.push_str(&d);
                }
            }
            SttEvent::Done(text) => {
                self.pipes.ended(peer);
                self.transcribed(now, seg_id, text.trim().to_string(), out);
            }
            SttEvent::Error(e) => {
                self.pipes.close(Some(peer), out);
                let f = ProviderFault::new(FaultKind::StreamError, e);
                self.fault(now, role, f, out);
            }
            SttEvent::NotJson(e) => {
                // Never taken as the caller's words.
                self.pipes.close(Some(peer), out);
                if let Some(s) = self.transcription_mut(seg_id) {
                    s.attempt.peer = None;
                }
                let f = ProviderFault::new(FaultKind::ContentType, e);
                self.fault(now, role, f, out);
            }
            SttEvent::Ignore => {}
        }
    }

    /// The transcript of `seg_id`: reported, and the chat starts once all are in.
    fn transcribed(&mut self, now: Instant, seg_id: u64, text: String, out: &mut Vec<Action>) {
        let Some(s) = self.transcription_mut(seg_id) else {
            return;
        };
        s.attempt.peer = None;
        s.text = Some(text.clone());
        let end_at = s.end_at;
        report_transcript(out, since_ms(now, end_at), text);
        self.maybe_start_llm(now, out);
    }

    // ---------------------------------------------------------------- LLM

    pub(super) fn start_llm(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        let req = wire::chat_request(&self.cfg, &self.messages(turn));
        let peer = self.open(now, Pipe::Llm { turn: turn.id }, req, out);
        if let Some(turn) = self.turn.as_mut() {
            turn.llm.sent(peer);
            turn.chat = Some(ChatStream {
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

    /// Starts the LLM once every transcription of the turn is done and no tool run is out
    /// (a tool call's result must follow it in the request): the turn's first round, or the
    /// round after its tool calls.
    pub(super) fn maybe_start_llm(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.tool_runs.is_empty() {
            return;
        }
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.llm.peer.is_some()
            || turn.llm.retry_at.is_some()
            || (!turn.rounds.is_empty() && !turn.awaiting_tools)
        {
            return;
        }
        if turn.transcriptions.iter().any(|s| s.text.is_none()) {
            return;
        }
        let text = turn
            .transcriptions
            .iter()
            .filter_map(|s| s.text.as_deref())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() && turn.rounds.is_empty() {
            // Nothing was said (noise): no answer.
            self.turn = None;
            return;
        }
        turn.user_text = text;
        if std::mem::take(&mut turn.awaiting_tools) {
            self.another_round(now, out);
            return;
        }
        // Retries start only within the budget of the caller's turn end (its last part).
        let turn_end = turn.transcriptions.iter().map(|s| s.end_at).max();
        turn.llm = Attempt::new(turn_end.unwrap_or(now) + ms(self.cfg.retry.budget_ms));
        self.start_llm(now, out);
    }

    pub(super) fn on_llm_message(
        &mut self,
        now: Instant,
        peer: PeerId,
        data: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(turn) = self.turn.as_mut().filter(|t| t.llm.peer == Some(peer)) else {
            return;
        };
        let Some(chat) = turn.chat.as_mut() else {
            return;
        };
        let chunk = match wire::parse_chat(data) {
            Ok(c) => c,
            Err(e) => {
                self.pipes.close(Some(peer), out);
                // Not JSON at all (an HTML page): not what was asked for; else an error
                // object in the stream, or JSON that is no chunk.
                let kind = match e {
                    wire::ChatFault::NotJson(_) => FaultKind::ContentType,
                    wire::ChatFault::Stream(_) | wire::ChatFault::Shape(_) => {
                        FaultKind::StreamError
                    }
                };
                let role = Pipe::Llm { turn: turn.id };
                self.fault(now, role, ProviderFault::new(kind, e.into_detail()), out);
                return;
            }
        };
        if !chat.got_any && (chunk.content.is_some() || !chunk.tool_calls.is_empty()) {
            chat.got_any = true;
            if !turn.ttft_reported {
                turn.ttft_reported = true;
                let t = since_ms(now, chat.sent_at);
                report(
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
            chat.content.push_str(c);
            chat.splitter.push(c, &mut sentences);
        }
        for d in &chunk.tool_calls {
            chat.tools.push(d);
        }
        if let Some(f) = chunk.finish_reason {
            chat.finish = Some(f);
        }
        if !sentences.is_empty() {
            chat.emitted = true;
        }
        let progressed = chat.got_any;
        let round = turn.rounds.len();
        if progressed {
            self.pipes.progress(now, peer);
        }
        if !sentences.is_empty()
            && let Some(utt) = self.answer_utterance()
        {
            for s in sentences {
                self.add_sentence(now, utt, s, round);
            }
            self.pump_utterance(now, utt, out);
        }
        if chunk.done {
            // The connector ends the pipe by itself right after.
            self.pipes.ended(peer);
            self.complete_llm(now, out);
        }
    }

    pub(super) fn on_llm_closed(&mut self, now: Instant, peer: PeerId, out: &mut Vec<Action>) {
        let Some(turn) = self.turn.as_ref().filter(|t| t.llm.peer == Some(peer)) else {
            return;
        };
        let Some(chat) = turn.chat.as_ref() else {
            return;
        };
        let role = Pipe::Llm { turn: turn.id };
        if chat.finish.is_some() {
            // No `[DONE]`, but the model said it finished: accept.
            self.complete_llm(now, out);
        } else {
            let f = ProviderFault::new(
                FaultKind::Dropped,
                "the stream ended before finish_reason and [DONE]",
            );
            self.fault(now, role, f, out);
        }
    }

    /// Ends the current round: its tool calls run (reported), it joins the turn's rounds.
    fn end_round(&mut self, now: Instant, out: &mut Vec<Action>) -> Option<RoundEnd> {
        let turn = self.turn.as_mut()?;
        let mut chat = turn.chat.take()?;
        turn.llm.peer = None;
        let ix = turn.rounds.len();
        let rest = chat.splitter.finish();
        let mut round = Round {
            llm_content: chat.content,
            tool_calls: std::mem::take(&mut chat.tools).finish(),
            results: Vec::new(),
        };
        let (mut after, mut more, mut awaiting) = (None, false, false);
        for c in &round.tool_calls {
            report(
                out,
                AgentReport::ToolCall {
                    name: c.name.clone(),
                    arguments: c.arguments.clone(),
                },
            );
            if self.cfg.tools.http.get(&c.name).is_some() {
                // The operator's tool: over HTTP; its result comes later.
                let result = match self.start_http_tool(now, c, out) {
                    Ok(()) => {
                        awaiting = true;
                        tools::PENDING.to_string()
                    }
                    Err(e) => {
                        more = true;
                        e
                    }
                };
                round.results.push((c.id.clone(), result));
                continue;
            }
            let (result, then) = tools::run(&self.cfg.tools, c);
            match then {
                Some(a) => {
                    after.get_or_insert(a);
                }
                None => more = true,
            }
            round.results.push((c.id.clone(), result));
        }
        let said = !round.llm_content.trim().is_empty();
        if let Some(t) = self.turn.as_mut() {
            t.rounds.push(round);
        }
        Some(RoundEnd {
            ix,
            rest,
            after,
            more,
            awaiting,
            said,
        })
    }

    /// The chat stream ended: the rest of its text is said, then the call ends or transfers
    /// (a goodbye said when the model said nothing), or another round runs after a failed
    /// tool call, or the answer is complete.
    fn complete_llm(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(mut end) = self.end_round(now, out) else {
            return;
        };
        if end.after.is_none() && !end.more && !end.awaiting {
            // A tool with `end_call_after` answered: this answer is the last.
            end.after = self.end_after.take().map(After::Hangup);
        }
        let utt = self.answer_utterance();
        if let (Some(utt), Some(r)) = (utt, end.rest) {
            self.add_sentence(now, utt, r, end.ix);
        }
        if let Some(after) = end.after {
            if let Some(t) = self.turn.as_mut() {
                t.after = Some(after.clone());
            }
            if !end.said
                && let Some(utt) = utt
            {
                let phrase = match after {
                    After::Hangup(_) => self.cfg.goodbye_text.clone(),
                    After::Transfer(_) => self.cfg.transfer_text.clone(),
                };
                if !phrase.trim().is_empty() {
                    self.add_sentence(now, utt, phrase, end.ix);
                }
            }
        } else if end.awaiting {
            // The answer so far plays; the next round starts when the tools have answered.
            if let Some(t) = self.turn.as_mut() {
                t.awaiting_tools = true;
            }
            return;
        } else if end.more {
            self.another_round(now, out);
            return;
        }
        if let Some(utt) = utt {
            self.close_answer(now, utt, out);
        }
    }

    /// A tool call failed: the model gets another round to correct it, up to
    /// [`super::CascadeConfig::max_tool_rounds`].
    fn another_round(&mut self, now: Instant, out: &mut Vec<Action>) {
        let rounds = self.turn.as_ref().map_or(0, |t| t.rounds.len()) as u32;
        if rounds < self.cfg.max_tool_rounds {
            if let Some(t) = self.turn.as_mut() {
                t.llm = Attempt::new(now + ms(self.cfg.retry.budget_ms));
            }
            self.start_llm(now, out);
            return;
        }
        report(
            out,
            AgentReport::ProviderFault {
                provider: PROVIDER_LLM.into(),
                kind: "tool_rounds".into(),
                detail: format!("{rounds} tool rounds without an answer"),
            },
        );
        self.give_up_turn(now, out);
    }

    /// The answer `utt` has all its sentences — or, with nothing at all to say (no text in
    /// any round, no tool to act on), is a faulty answer that ends with the fallback.
    fn close_answer(&mut self, now: Instant, utt: UtteranceId, out: &mut Vec<Action>) {
        let empty = self.utt_ix(utt).is_none_or(|i| {
            let sp = &self.utterances[i];
            sp.sentences.is_empty() && sp.spoken.is_empty()
        });
        if empty {
            report(
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
        if let Some(i) = self.utt_ix(utt) {
            self.utterances[i].closed = true;
        }
        self.pump_utterance(now, utt, out);
    }
}

/// Reports a transcription: its STT latency (`ms` from the turn's end) and, if not empty, the
/// caller's words.
pub(super) fn report_transcript(out: &mut Vec<Action>, ms: u64, text: String) {
    report(
        out,
        AgentReport::Latency {
            stage: Stage::Stt,
            ms,
        },
    );
    if !text.is_empty() {
        report(
            out,
            AgentReport::Transcript {
                role: Role::User,
                text,
                interrupted: false,
            },
        );
    }
}
