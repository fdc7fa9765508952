//! `POST /v1/chat/completions`: `stream: true` only; the scripted reply streamed as
//! `chat.completion.chunk`s (role, one per word, tool calls in fragments, finish, usage) and
//! `data: [DONE]`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::plan::{
    Plan, bad_request, check_auth, error_body, fault_plan, ms, record, respond, sse, take_fault,
    words,
};
use super::{Endpoint, Fault, Reply, Script, ScriptedToolCall, State, lock};

fn chat_chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish: Option<&str>,
    usage: bool,
) -> Value {
    let mut c = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": "fp_hark_double",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if usage {
        c["usage"] = Value::Null;
    }
    c
}

pub(super) async fn chat(state: Arc<Mutex<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (plan, resp, fault) = {
        let mut st = lock(&state);
        let lat = st.script.latency;
        if let Some((p, r)) = check_auth(&st, &headers) {
            (p, r, None)
        } else if !request.is_object()
            || request.get("model").and_then(Value::as_str).is_none()
            || request
                .get("messages")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
        {
            let (p, r) = bad_request("'model' and a non-empty 'messages' are required");
            (p, r, None)
        } else if request.get("stream") != Some(&Value::Bool(true)) {
            let (p, r) = bad_request("this double only answers stream: true");
            (p, r, None)
        } else {
            let fault = take_fault(&mut st, Endpoint::ChatCompletions);
            match fault.as_ref().and_then(|f| fault_plan(f, ms(lat.ttft_ms))) {
                Some((p, r)) => (p, r, fault),
                None => {
                    let (p, r) = answer(&mut st, &request, fault.as_ref());
                    (p, r, fault)
                }
            }
        }
    };
    let plan = record(
        &state,
        at,
        Endpoint::ChatCompletions,
        request,
        plan,
        resp,
        fault,
    );
    respond(plan).await
}

/// The reply the script gives to `messages`: [`Script::after_tool`] after a tool result, else
/// the first [`Rule`] whose `when` is in the last user message (case-insensitive), else
/// [`Script::default_reply`].
fn pick_reply(script: &Script, messages: &[Value]) -> Reply {
    let last = messages.last().cloned().unwrap_or(Value::Null);
    if last["role"] == "tool" {
        return script.after_tool.clone();
    }
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_lowercase();
    script
        .rules
        .iter()
        .find(|r| user.contains(&r.when.to_lowercase()))
        .map(|r| r.reply.clone())
        .unwrap_or_else(|| script.default_reply.clone())
}

/// The SSE stream of one chat answer being written: each event's bytes with the delay before
/// it, and its JSON for the record.
struct ChatStream {
    id: String,
    created: u64,
    model: String,
    /// `stream_options.include_usage`: every chunk carries `"usage": null`, and a usage chunk
    /// comes last.
    usage: bool,
    pieces: Vec<(Duration, Vec<u8>)>,
    resp: Vec<Value>,
}

impl ChatStream {
    /// Appends one event.
    fn push(&mut self, delay: Duration, v: Value) {
        self.pieces.push((delay, sse(&v)));
        self.resp.push(v);
    }

    /// Appends a `chat.completion.chunk` with `delta` (and `finish_reason` `finish`).
    fn chunk(&mut self, delay: Duration, delta: Value, finish: Option<&str>) {
        let c = chat_chunk(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish,
            self.usage,
        );
        self.push(delay, c);
    }

    /// Appends tool call `i`: a chunk with its `id`, `type` and `name`, then its `arguments` in
    /// two pieces, each `tok` apart.
    fn tool_call(&mut self, i: usize, t: &ScriptedToolCall, seq: u64, tok: Duration) {
        self.chunk(
            tok,
            json!({"tool_calls": [{"index": i, "id": format!("call_double{seq}_{i}"), "type": "function", "function": {"name": t.name, "arguments": ""}}]}),
            None,
        );
        let mid = t
            .arguments
            .char_indices()
            .nth(t.arguments.chars().count() / 2)
            .map_or(0, |(b, _)| b);
        for piece in [&t.arguments[..mid], &t.arguments[mid..]] {
            self.chunk(
                tok,
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                None,
            );
        }
    }

    /// Appends the usage chunk (`choices: []`): `completion` tokens, and a prompt of a quarter
    /// of the request's length in tokens.
    fn usage_chunk(&mut self, request: &Value, completion: u64) {
        let prompt = request.to_string().len() as u64 / 4;
        let v = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": "fp_hark_double", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        });
        self.push(Duration::ZERO, v);
    }
}

/// The streamed answer to a valid chat request: the role chunk, one chunk per word, the tool
/// calls, the finish chunk, the usage chunk if asked, `[DONE]`; cut short by a
/// [`Fault::StreamError`] (an error object instead) or a [`Fault::Drop`] (the connection drops
/// after the role chunk).
fn answer(st: &mut State, request: &Value, fault: Option<&Fault>) -> (Plan, Vec<Value>) {
    let lat = st.script.latency;
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let reply = pick_reply(&st.script, &messages);
    st.seq += 1;
    let mut out = ChatStream {
        id: format!("chatcmpl-double{}", st.seq),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: request["model"]
            .as_str()
            .unwrap_or("gpt-4o-mini")
            .to_string(),
        usage: request["stream_options"]["include_usage"] == Value::Bool(true),
        pieces: Vec::new(),
        resp: Vec::new(),
    };
    let tok = ms(lat.token_ms);
    out.chunk(
        Duration::ZERO,
        json!({"role": "assistant", "content": "", "refusal": null}),
        None,
    );
    let fail_mid = matches!(fault, Some(Fault::StreamError | Fault::Drop));
    let ws = words(&reply.text);
    let stop_after = if fail_mid { 0 } else { ws.len() };
    for (i, w) in ws.iter().take(stop_after).enumerate() {
        let delay = if i == 0 { Duration::ZERO } else { tok };
        out.chunk(delay, json!({"content": w}), None);
    }
    if !fail_mid {
        for (i, t) in reply.tool_calls.iter().enumerate() {
            out.tool_call(i, t, st.seq, tok);
        }
        let finish = if reply.tool_calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        out.chunk(Duration::ZERO, json!({}), Some(finish));
        if out.usage {
            out.usage_chunk(request, (ws.len() + reply.tool_calls.len() * 8) as u64);
        }
    }
    if matches!(fault, Some(Fault::StreamError)) {
        out.push(
            Duration::ZERO,
            error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
        );
    }
    if !fail_mid {
        out.pieces
            .push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
    }
    let plan = Plan {
        status: 200,
        content_type: "text/event-stream; charset=utf-8",
        headers: vec![("x-request-id", format!("req_double{}", st.seq))],
        pieces: out.pieces,
        drop_at_end: matches!(fault, Some(Fault::Drop)),
        head_delay: ms(lat.ttft_ms),
    };
    (plan, out.resp)
}
