//! Function calling of [`super::RealtimeAgent`]: the function calls of a `response.done` run as
//! the operator's HTTP tools ([`crate::agents::http_tools::ToolRuns`]); each result goes back
//! as a `function_call_output` item, and one `response.create` follows once every call has
//! ended and no response is active.

use std::time::Instant;

use super::wire::{ClientEvent, FunctionCall};
use super::{Phase, RealtimeAgent};
use crate::agent::{Action, AgentReport};
use crate::agents::http_tools::ToolEnd;

impl RealtimeAgent {
    /// `response.done` of response `id` (already no longer active): its function calls start
    /// (refused ones are answered at once); with none, it may be the answer after an
    /// `end_call_after` tool (the call ends) or free the way for a `response.create` due.
    pub(super) fn response_done(
        &mut self,
        now: Instant,
        id: &str,
        calls: Vec<FunctionCall>,
        out: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        if calls.is_empty()
            && let Some((reason, Some(answer))) = &self.end_after
            && answer == id
        {
            let reason = reason.clone();
            self.end_after = None;
            out.push(Action::Hangup { reason });
            return;
        }
        let mut refused = Vec::new();
        for c in calls {
            out.push(Action::Report(AgentReport::ToolCall {
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            }));
            self.create_due = true;
            let call = (c.name.as_str(), c.call_id.as_str(), c.arguments.as_str());
            if let Err(end) = self
                .runs
                .start(now, &self.cfg.tools, &self.facts, call, out)
            {
                refused.push(end);
            }
        }
        for end in refused {
            self.send_output(end, out);
        }
        self.maybe_create(out);
    }

    /// `response.created`: the response that answers an `end_call_after` tool's result, when
    /// hark asked for it (every call ended, `response.create` sent).
    pub(super) fn response_created(&mut self, id: &str) {
        if !self.create_due
            && self.runs.is_empty()
            && let Some((_, answer @ None)) = &mut self.end_after
        {
            *answer = Some(id.to_string());
        }
    }

    /// A tool call ended: its output, then the `response.create` if it was the last.
    pub(super) fn tool_ended(&mut self, end: ToolEnd, out: &mut Vec<Action>) {
        self.send_output(end, out);
        self.maybe_create(out);
    }

    /// Ends the runs past their deadline (each with an error output) and asks to be woken at
    /// the next one.
    pub(super) fn tool_deadlines(&mut self, now: Instant, out: &mut Vec<Action>) {
        for end in self.runs.expired(now, out) {
            self.send_output(end, out);
        }
        self.maybe_create(out);
        out.extend(self.runs.poll_timeout().map(Action::WakeAt));
    }

    /// `conversation.item.create` of the call's `function_call_output` (not once the session
    /// is over).
    fn send_output(&mut self, end: ToolEnd, out: &mut Vec<Action>) {
        if self.phase != Phase::Open {
            return;
        }
        if end.end_call_after {
            self.end_after
                .get_or_insert_with(|| (format!("tool {}", end.name), None));
        }
        let output = match end.result {
            Ok(t) | Err(t) => t,
        };
        self.send_event(
            out,
            ClientEvent::FunctionCallOutput {
                call_id: end.call_id,
                output,
            },
        );
    }

    /// Sends the `response.create` due once no call is out and no response is active.
    fn maybe_create(&mut self, out: &mut Vec<Action>) {
        if self.create_due
            && self.runs.is_empty()
            && self.active_response.is_none()
            && self.phase == Phase::Open
        {
            self.create_due = false;
            self.send_event(out, ClientEvent::ResponseCreate { instructions: None });
        }
    }
}
