//! The tools the model may call: `end_call` and `transfer_call(number)`, run at once, and the
//! operator's own tools ([`crate::agents::http_tools`]), run over HTTP while the turn waits.

use std::time::Instant;

use super::pipes::{Pipe, Wait};
use super::turn::After;
use super::{CascadeAgent, ChatMessage, ToolCall, ToolsConfig, ms, report};
use crate::agent::{Action, AgentReport, PeerId, ProviderFault};
use crate::agents::http_tools::{self, HttpTool};

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

/// A call of one of the operator's tools, out over HTTP. Owned by the agent, not the turn: a
/// caller who barges in while it runs does not lose its result (it fills the history's
/// placeholder when it comes), and no chat request starts until every run has ended.
#[derive(Debug)]
pub(super) struct ToolRun {
    pub peer: PeerId,
    /// The model's tool-call id.
    pub call_id: String,
    pub tool: HttpTool,
    /// When its filler is said if it has not answered; `None` once said (or none).
    pub filler_at: Option<Instant>,
}

impl CascadeAgent {
    /// Starts the operator's tool `tool` for call `c` of the current turn: its arguments are
    /// checked first (an error result at once when the schema refuses them). Returns the
    /// result to hold for now: [`PENDING`] while the request is out.
    pub(super) fn start_http_tool(
        &mut self,
        now: Instant,
        tool: HttpTool,
        c: &ToolCall,
        out: &mut Vec<Action>,
    ) -> Result<(), String> {
        let args = http_tools::parse_arguments(&tool, &c.arguments)?;
        let req = http_tools::request(
            &tool,
            self.cfg.tools.http.secret.as_ref(),
            &self.facts,
            &c.id,
            args,
        );
        let wait = Wait {
            first_ms: tool.timeout_ms,
            stall_ms: tool.timeout_ms,
            waiting_for: "the tool's answer",
        };
        let peer = self.pipes.open(now, Pipe::Tool, wait, req, out);
        let filler_at = tool
            .filler
            .as_deref()
            .is_some_and(|f| !f.trim().is_empty())
            .then(|| now + ms(http_tools::FILLER_AFTER_MS));
        self.tool_runs.push(ToolRun {
            peer,
            call_id: c.id.clone(),
            tool,
            filler_at,
        });
        Ok(())
    }

    /// A tool run's answer body arrived.
    pub(super) fn on_tool_answer(
        &mut self,
        now: Instant,
        peer: PeerId,
        body: &[u8],
        out: &mut Vec<Action>,
    ) {
        self.pipes.ended(peer);
        let result = http_tools::read_answer(body);
        if let Err(e) = &result {
            self.tool_fault(peer, "bad_answer", e, out);
        }
        self.tool_ended(now, peer, result, out);
    }

    /// A tool run failed (timeout, connection, an error status, a non-JSON content type) or
    /// ended without an answer.
    pub(super) fn on_tool_failed(
        &mut self,
        now: Instant,
        peer: PeerId,
        fault: &ProviderFault,
        out: &mut Vec<Action>,
    ) {
        self.pipes.ended(peer);
        self.tool_fault(peer, &fault.label(), &fault.to_string(), out);
        let text = match fault.http_status() {
            Some(s) => format!(
                "error: the tool failed (HTTP {s}); tell the caller you cannot do it right now"
            ),
            None => format!(
                "error: the tool did not answer ({}); tell the caller you cannot do it right now",
                fault.label()
            ),
        };
        self.tool_ended(now, peer, Err(text), out);
    }

    fn tool_fault(&self, peer: PeerId, kind: &str, detail: &str, out: &mut Vec<Action>) {
        let name = self
            .tool_runs
            .iter()
            .find(|r| r.peer == peer)
            .map_or("?", |r| r.tool.name.as_str());
        report(
            out,
            AgentReport::ProviderFault {
                provider: http_tools::PROVIDER_TOOL.into(),
                kind: kind.into(),
                detail: format!("{name}: {detail}"),
            },
        );
    }

    /// The run on `peer` ended with `result`: it replaces the call's placeholder (in the turn
    /// or, when the turn was cut and committed meanwhile, in the history). Once no run is out,
    /// the turn waiting for them goes on.
    fn tool_ended(
        &mut self,
        now: Instant,
        peer: PeerId,
        result: Result<String, String>,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.tool_runs.iter().position(|r| r.peer == peer) else {
            return;
        };
        let run = self.tool_runs.remove(i);
        if result.is_ok() && run.tool.end_call_after {
            self.end_after
                .get_or_insert_with(|| format!("tool {}", run.tool.name));
        }
        let text = match result {
            Ok(t) | Err(t) => t,
        };
        self.fill_tool_result(&run.call_id, text);
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

    /// The soonest tool filler due.
    pub(super) fn tools_poll_timeout(&self) -> Option<Instant> {
        self.tool_runs.iter().filter_map(|r| r.filler_at).min()
    }

    /// Says the filler of each run that is slow (once per run, into the current answer).
    pub(super) fn tool_fillers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due: Vec<String> = self
            .tool_runs
            .iter_mut()
            .filter(|r| r.filler_at.is_some_and(|t| t <= now))
            .filter_map(|r| {
                r.filler_at = None;
                r.tool.filler.clone()
            })
            .collect();
        for text in due {
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
                self.add_sentence(now, utt, text, round);
                self.pump_utterance(now, utt, out);
            }
        }
    }
}
