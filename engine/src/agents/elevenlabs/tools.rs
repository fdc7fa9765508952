//! The client tools of [`super::ElevenLabsAgent`]: `client_tool_call` → hark's end-call tool,
//! one of the operator's HTTP tools ([`crate::agents::http_tools::ToolRuns`]), or an error, and
//! the `client_tool_result` that answers each (`fixtures/specs/elevenlabs/agent.asyncapi.yaml`,
//! `ClientToolResultPayload`: `result` is a string).

use std::time::Instant;

use serde_json::json;

use super::wire::ToolCall;
use super::{ElevenLabsAgent, Phase};
use crate::agent::{Action, AgentReport};
use crate::agents::http_tools::{CallFacts, ToolEnd};

impl ElevenLabsAgent {
    /// A `client_tool_call`: reported, then answered at once (the end-call tool, an unknown
    /// tool) or run over HTTP (an operator tool; answered when it ends).
    pub(super) fn on_client_tool_call(&mut self, now: Instant, t: ToolCall, out: &mut Vec<Action>) {
        let arguments = t.parameters.to_string();
        out.push(Action::Report(AgentReport::ToolCall {
            name: t.tool_name.clone(),
            arguments: arguments.clone(),
        }));
        if t.tool_name == self.cfg.end_call_tool {
            self.send_tool_result(out, &t.tool_call_id, "ending the call", false);
            self.finish_utterance(out);
            out.push(Action::Hangup {
                reason: format!("elevenlabs agent called {}", t.tool_name),
            });
            return;
        }
        if self.cfg.tools.get(&t.tool_name).is_none() {
            let text = format!("hark has no client tool named {}", t.tool_name);
            self.send_tool_result(out, &t.tool_call_id, &text, true);
            return;
        }
        let facts = self.info.as_ref().map(CallFacts::from).unwrap_or_default();
        let call = (
            t.tool_name.as_str(),
            t.tool_call_id.as_str(),
            arguments.as_str(),
        );
        if let Err(end) = self.runs.start(now, &self.cfg.tools, &facts, call, out) {
            self.tool_ended(end, out);
        }
    }

    /// An operator tool's call ended: its `client_tool_result` (unless the conversation is
    /// over), and the hang-up after the next answer when the tool asks for it.
    pub(super) fn tool_ended(&mut self, end: ToolEnd, out: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        if end.end_call_after && self.end_after.is_none() {
            // Audio events carry no response id: the answer to the result is the audio that
            // comes after it, so what is under way now ends here and the next utterance is
            // the last.
            self.finish_utterance(out);
            self.end_after = Some((self.next_id, format!("tool {}", end.name)));
        }
        let (text, is_error) = match &end.result {
            Ok(json) => (json.as_str(), false),
            Err(e) => (e.as_str(), true),
        };
        self.send_tool_result(out, &end.call_id, text, is_error);
    }

    /// Ends the runs past their deadline (each with an error result) and asks to be woken at
    /// the next one.
    pub(super) fn tool_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        for end in self.runs.expired(now, out) {
            self.tool_ended(end, out);
        }
        out.extend(self.runs.poll_timeout().map(Action::WakeAt));
    }

    fn send_tool_result(&self, out: &mut Vec<Action>, call_id: &str, result: &str, is_error: bool) {
        let reply = json!({
            "type": "client_tool_result",
            "tool_call_id": call_id,
            "result": result,
            "is_error": is_error,
        });
        self.send(out, reply.to_string());
    }
}
