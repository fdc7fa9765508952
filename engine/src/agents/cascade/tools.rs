//! The tools the model may call: `end_call` and `transfer_call(number)`, run at once, and the
//! operator's own tools ([`crate::agents::http_tools`]), run over HTTP while the turn waits.

use std::time::Instant;

use super::turn::After;
use super::{CascadeAgent, ChatMessage, ToolCall, ToolsConfig, ms};
use crate::agent::{Action, PeerId};
use crate::agents::http_tools::{self, ToolEnd};

/// Whether `n` is a number `transfer_call` may dial (E.164 or a `sip:` URI).
pub use crate::dial::is_transfer_target as valid_transfer_target;

/// Runs tool call `c`: its result for the model, and what happens after the answer when it
/// succeeded (`None`: an error the model gets one more round to correct).
pub(super) fn run(tools: &ToolsConfig, c: &ToolCall) -> (String, Option<After>) {
    let arg = |name: &str| {
        serde_json::from_str::<serde_json::Value>(&c.arguments)
            .ok()
            .and_then(|v| v.get(name).and_then(|r| r.as_str()).map(str::to_string))
    };
    match c.name.as_str() {
        "end_call" if tools.end_call => {
            let reason = arg("reason").unwrap_or_else(|| "end_call".into());
            let after = After::Hangup(format!("end_call: {reason}"));
            (
                "ok: the call ends after your goodbye".to_string(),
                Some(after),
            )
        }
        "transfer_call" if tools.transfer_call => {
            match arg("number").map(|n| n.trim().to_string()) {
                Some(n)
                    if valid_transfer_target(&n)
                        && (tools.transfer_allow.is_empty()
                            || tools.transfer_allow.iter().any(|a| a == &n)) =>
                {
                    let result = format!("ok: transferring the call to {n}");
                    (result, Some(After::Transfer(n)))
                }
                Some(n) if valid_transfer_target(&n) => (
                    format!("error: {n} is not a number this line may transfer to"),
                    None,
                ),
                _ => (
                    format!(
                        "error: arguments must be {{\"number\": \"+<E.164 digits>\"}}, got {}",
                        c.arguments
                    ),
                    None,
                ),
            }
        }
        other => (format!("error: there is no tool named {other:?}"), None),
    }
}

/// The result a tool call holds while its HTTP request is out (replaced by the answer).
pub(super) const PENDING: &str = "(waiting for the tool's answer)";

/// A slow tool's filler: said at `at` unless the run has ended by then.
#[derive(Debug)]
pub(super) struct ToolFiller {
    call_id: String,
    at: Instant,
    text: String,
}

/// The first peer id of the operator's tool runs ([`ToolRuns`]), far above the agent's own
/// pipes ([`super::pipes::Pipes`] count up from 1).
pub(super) const FIRST_TOOL_PEER: PeerId = PeerId(1 << 48);

impl CascadeAgent {
    /// Starts call `c` of one of the operator's tools ([`ToolRuns`]: checked against its
    /// schema, POSTed signed, ended by its answer, a fault or its timeout). The runs belong to
    /// the agent, not the turn: a caller who barges in while one runs does not lose its result
    /// (it fills the history's placeholder when it comes), and no chat request starts until
    /// every run has ended.
    ///
    /// # Errors
    /// The error result for the model, at once (no request), when the schema refuses the
    /// arguments.
    pub(super) fn start_http_tool(
        &mut self,
        now: Instant,
        c: &ToolCall,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let call = (c.name.as_str(), c.id.as_str(), c.arguments.as_str());
        self.tool_runs
            .start(now, &self.cfg.tools.http, &self.facts, call, out)
            .map_err(|end| match end.result {
                Ok(t) | Err(t) => t,
            })?;
        if let Some(text) = self
            .cfg
            .tools
            .http
            .get(&c.name)
            .and_then(|t| t.filler.clone())
            .filter(|f| !f.trim().is_empty())
        {
            self.tool_fillers.push(ToolFiller {
                call_id: c.id.clone(),
                at: now + ms(http_tools::FILLER_AFTER_MS),
                text,
            });
        }
        Ok(())
    }

    /// A run ended: its result replaces the call's placeholder (in the turn or, when the turn
    /// was cut and committed meanwhile, in the history). Once no run is out, the turn waiting
    /// for them goes on.
    pub(super) fn tool_ended(&mut self, now: Instant, end: ToolEnd, out: &mut Vec<Action>) {
        self.tool_fillers.retain(|f| f.call_id != end.call_id);
        if end.end_call_after {
            self.end_after
                .get_or_insert_with(|| format!("tool {}", end.name));
        }
        let text = match end.result {
            Ok(t) | Err(t) => t,
        };
        self.fill_tool_result(&end.call_id, text);
        if self.tool_runs.is_empty() {
            self.maybe_start_llm(now, out);
        }
    }

    /// Puts `text` where the call `call_id`'s placeholder is.
    fn fill_tool_result(&mut self, call_id: &str, text: String) {
        let in_turn = self.turn.as_mut().and_then(|t| {
            t.rounds
                .iter_mut()
                .flat_map(|r| r.results.iter_mut())
                .find(|(id, _)| id == call_id)
        });
        if let Some((_, res)) = in_turn {
            *res = text;
            return;
        }
        for m in self.history.iter_mut().rev() {
            if let ChatMessage::Tool {
                call_id: id,
                content,
            } = m
                && id == call_id
            {
                *content = text;
                return;
            }
        }
    }

    /// The soonest tool deadline or filler.
    pub(super) fn tools_poll_timeout(&self) -> Option<Instant> {
        let fillers = self.tool_fillers.iter().map(|f| f.at);
        fillers.chain(self.tool_runs.poll_timeout()).min()
    }

    /// Ends the runs past their timeout, and says the filler of each slow run (once, into the
    /// current answer; not over a talking caller).
    pub(super) fn tool_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        for end in self.tool_runs.expired(now, out) {
            self.tool_ended(now, end, out);
        }
        let (due, kept): (Vec<ToolFiller>, Vec<ToolFiller>) =
            std::mem::take(&mut self.tool_fillers)
                .into_iter()
                .partition(|f| f.at <= now);
        self.tool_fillers = kept;
        for f in due {
            if self.caller_speaking {
                // Not over the caller: they are talking (their turn will be answered).
                continue;
            }
            let round = self
                .turn
                .as_ref()
                .map_or(0, |t| t.rounds.len().saturating_sub(1));
            // No turn (it was cut: the caller is talking): no filler over them.
            if let Some(utt) = self.answer_utterance() {
                self.add_sentence(now, utt, f.text, round);
                self.pump_utterance(now, utt, out);
            }
        }
    }
}
