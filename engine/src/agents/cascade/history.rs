//! The conversation the model sees: answers join the history when all their audio is queued
//! (or they are cut), and are cut again to what the caller heard when a barge-in says so.

use std::collections::{BTreeMap, BTreeSet};

use super::text;
use super::turn::{Round, Turn};
use super::utterance::{Spoken, Utterance};
use super::{CascadeAgent, ChatMessage, report};
use crate::agent::{Action, AgentReport, Role};
use crate::playout::UtteranceId;

/// An utterance committed to the history (or kept out of it), until the playout says what of
/// it was heard: played whole, or cut by a barge-in.
#[derive(Debug)]
pub(super) struct Committed {
    utt: UtteranceId,
    /// (round, index in the history) of each assistant message.
    msgs: Vec<(usize, usize)>,
    spoken: Vec<Spoken>,
}

/// The text of `spoken` (of one chat round, or all), joined by spaces.
pub(super) fn join_spoken(spoken: &[Spoken], round: Option<usize>) -> String {
    spoken
        .iter()
        .filter(|s| round.is_none_or(|r| s.round == r))
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl CascadeAgent {
    /// The messages of a chat request for `turn`: the system prompt, the history, the caller's
    /// words and the turn's rounds so far.
    pub(super) fn messages(&self, turn: &Turn) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(self.history.len() + 4);
        m.push(ChatMessage::System(self.system_prompt.clone()));
        m.extend(self.history.iter().cloned());
        m.push(ChatMessage::User(turn.user_text.clone()));
        for r in &turn.rounds {
            r.push_messages(&r.llm_content, &mut m);
        }
        m
    }

    /// A greeting or notice: one assistant message of what was said.
    pub(super) fn commit_greeting(&mut self, sp: Utterance) {
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
        self.keep_committed(sp, msgs);
    }

    /// Reported as heard like any utterance, but the model never sees it (the filler).
    pub(super) fn commit_outside_history(&mut self, sp: Utterance) {
        self.keep_committed(sp, Vec::new());
    }

    /// Keeps what `sp` said, with its messages in the history, until the playout says what of
    /// it was heard.
    fn keep_committed(&mut self, sp: Utterance, msgs: Vec<(usize, usize)>) {
        self.committed.push(Committed {
            utt: sp.utt,
            msgs,
            spoken: sp.spoken,
        });
    }

    /// An answer: the caller's words, then per chat round what was said with its tool calls and
    /// their results.
    pub(super) fn commit_turn(&mut self, mut turn: Turn, sp: Utterance) {
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
            round.push_messages(&content, &mut self.history);
        }
        self.keep_committed(sp, msgs);
    }

    /// `utt` played whole: the agent's transcript.
    pub(super) fn played(&mut self, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(ri) = self.committed.iter().position(|r| r.utt == utt) else {
            return;
        };
        let rec = self.committed.remove(ri);
        let text = join_spoken(&rec.spoken, None);
        if !text.is_empty() {
            report(
                out,
                AgentReport::Transcript {
                    role: Role::Agent,
                    text,
                    interrupted: false,
                },
            );
        }
    }

    /// Cuts the committed messages of `utt` to what the caller heard (`heard_us` of its audio),
    /// and reports the agent's transcript.
    pub(super) fn cut_to_heard(&mut self, utt: UtteranceId, heard_us: u64, out: &mut Vec<Action>) {
        let Some(ri) = self.committed.iter().position(|r| r.utt == utt) else {
            return;
        };
        let rec = self.committed.remove(ri);
        let mut left = heard_us;
        let mut heard_by_round: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut cut_rounds = BTreeSet::new();
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
        report(
            out,
            AgentReport::Transcript {
                role: Role::Agent,
                text: all.join(" "),
                interrupted: true,
            },
        );
    }

    /// Forgets the committed utterances the playout no longer has: `heard` and those before
    /// it, and `dropped`.
    pub(super) fn forget_committed(&mut self, heard: UtteranceId, dropped: &[UtteranceId]) {
        self.committed
            .retain(|r| r.utt > heard && !dropped.contains(&r.utt));
    }
}
