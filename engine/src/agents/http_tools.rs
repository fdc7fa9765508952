//! The operator's own tools, called over HTTP: a tool the model (or a speech-to-speech agent)
//! calls is POSTed to the operator's backend, signed, and the JSON answer is its result.
//!
//! # The request
//! `POST {url}` with `Content-Type: application/json`, the signature headers of
//! [`crate::operator`] (`X-Hark-Timestamp`, `X-Hark-Signature`) and this body:
//! ```json
//! {"call_sid": "CA…", "stream_sid": "MZ…", "tool": "lookup_balance", "call_id": "call_1",
//!  "arguments": {"payerId": "p-42"}, "parameters": {"payerId": "p-42"}}
//! ```
//! `arguments` are the model's, already checked against the tool's JSON Schema;
//! `parameters` are the call's TwiML `<Parameter>`s; `call_id` is the model's id of this tool
//! call (unique within the call: a key for the backend to deduplicate on).
//!
//! # The answer
//! A 2xx with a JSON body: the body (compact, at most [`MAX_RESULT_BYTES`]) is the tool's
//! result. Anything else is a tool error the model is told about (and the agent reports as a
//! fault of provider [`PROVIDER_TOOL`]): no answer within the tool's `timeout_ms`, a 4xx/5xx,
//! a body that is not JSON, arguments the schema refuses (then no request is made). The call
//! never waits longer than the timeout.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::agent::{HttpBody, HttpRequest, ResponseMode};
use crate::operator::Secret;

/// `provider` label of tool faults in [`crate::agent::AgentReport::ProviderFault`].
pub const PROVIDER_TOOL: &str = "tool";

/// Longest tool result passed to the model, bytes; a longer answer is a tool error (the
/// backend should answer what the model needs, not a whole record).
pub const MAX_RESULT_BYTES: usize = 16 * 1024;

/// Names the agents' own tools use; an HTTP tool may not take them.
pub const RESERVED_NAMES: [&str; 2] = ["end_call", "transfer_call"];

/// A tool's JSON Schema, compiled once. Compares by the schema's JSON.
#[derive(Clone)]
pub struct ToolSchema {
    json: Value,
    validator: Arc<jsonschema::Validator>,
}

impl ToolSchema {
    /// Compiles `schema` (a JSON Schema object, e.g. `{"type":"object","properties":{…}}`).
    ///
    /// # Errors
    /// The schema is not an object or not a valid JSON Schema: the reason.
    pub fn new(schema: Value) -> Result<Self, String> {
        if !schema.is_object() {
            return Err("parameters must be a JSON Schema object".into());
        }
        let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
        Ok(ToolSchema {
            json: schema,
            validator: Arc::new(validator),
        })
    }

    /// The schema as written (offered to the model as the function's `parameters`).
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Checks `args` against the schema.
    ///
    /// # Errors
    /// Every violation, `; `-separated, each with its JSON pointer (`/payerId: …`).
    pub fn check(&self, args: &Value) -> Result<(), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(args)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl PartialEq for ToolSchema {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for ToolSchema {}

impl std::fmt::Debug for ToolSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ToolSchema({})", self.json)
    }
}

/// One of the operator's tools (`[[tools]]` in `hark.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTool {
    /// The function name the model calls (`^[A-Za-z0-9_-]{1,64}$`, OpenAI's rule).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Its arguments' JSON Schema.
    pub parameters: ToolSchema,
    /// Where it is POSTed (`http(s)://`).
    pub url: String,
    /// How long the backend may take, ms (connect + answer).
    pub timeout_ms: u64,
    /// Said if the tool has not answered after [`FILLER_AFTER_MS`] (e.g. "Let me check that
    /// for you."); `None` for silence.
    pub filler: Option<String>,
    /// The call ends after the answer that follows a successful call of this tool (e.g. a
    /// `record_promise` that closes the conversation).
    pub end_call_after: bool,
}

/// How long a tool may take before its filler is said, ms.
pub const FILLER_AFTER_MS: u64 = 1_000;

impl HttpTool {
    /// Checks the name, URL and timeout.
    ///
    /// # Errors
    /// What is wrong, naming the tool.
    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        let ok_name = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_name {
            return Err(format!(
                "tool name {n:?} must be 1–64 letters, digits, _ or -"
            ));
        }
        if RESERVED_NAMES.contains(&n.as_str()) {
            return Err(format!("tool name {n:?} is hark's own"));
        }
        let u = self.url.to_ascii_lowercase();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!(
                "tool {n}: url {:?} must start with https:// (or http://)",
                self.url
            ));
        }
        if !(50..=60_000).contains(&self.timeout_ms) {
            return Err(format!(
                "tool {n}: timeout_ms {} is outside 50..=60000",
                self.timeout_ms
            ));
        }
        if self.description.trim().is_empty() {
            return Err(format!("tool {n}: description is empty"));
        }
        Ok(())
    }
}

/// The operator's tools offered on a call, and the secret their requests are signed with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpTools {
    /// The tools, in the order offered.
    pub tools: Arc<[HttpTool]>,
    /// The signing secret (required when there are tools; [`HttpTools::validate`] checks).
    pub secret: Option<Secret>,
}

impl HttpTools {
    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&HttpTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Checks every tool, unique names, and that there is a secret when there are tools.
    ///
    /// # Errors
    /// What is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for (i, t) in self.tools.iter().enumerate() {
            t.validate()?;
            if self.tools[..i].iter().any(|o| o.name == t.name) {
                return Err(format!("tool {:?} is defined twice", t.name));
            }
        }
        if !self.tools.is_empty() && self.secret.is_none() {
            return Err("tools are POSTed signed: the operator secret is needed".into());
        }
        Ok(())
    }
}

/// The facts of a call a tool request carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    /// Twilio's `callSid`.
    pub call_sid: String,
    /// Twilio's `streamSid`.
    pub stream_sid: String,
    /// The call's `<Parameter>`s.
    pub parameters: Vec<(String, String)>,
}

/// The model's arguments for `tool`, parsed (empty text is `{}`) and checked.
///
/// # Errors
/// The error text for the model: not JSON, or what the schema refuses.
pub fn parse_arguments(tool: &HttpTool, arguments: &str) -> Result<Value, String> {
    let args: Value = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(arguments)
            .map_err(|e| format!("error: the arguments are not JSON ({e})"))?
    };
    tool.parameters
        .check(&args)
        .map_err(|e| format!("error: invalid arguments: {e}"))?;
    Ok(args)
}

impl CallFacts {
    /// The custom parameters as a JSON object of strings.
    pub fn parameters_json(&self) -> Value {
        let m: serde_json::Map<String, Value> = self
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        Value::Object(m)
    }
}

/// A POST of JSON `body` to the operator's `url`, signed with `secret`, whose whole JSON answer
/// is wanted within `timeout_ms` (tools, per-call context); `stage` is its metrics label
/// ([`HttpRequest::stage`]: [`crate::agent::STAGE_TOOL`], [`crate::agent::STAGE_CONTEXT`]).
pub fn operator_post(
    stage: &'static str,
    url: &str,
    body: Value,
    timeout_ms: u64,
    secret: Option<&Secret>,
) -> HttpRequest {
    HttpRequest {
        stage,
        method: "POST".into(),
        url: url.to_string(),
        headers: Vec::new(),
        body: HttpBody::Json(body),
        response: ResponseMode::Whole,
        timeout_ms: Some(timeout_ms),
        accept: vec!["application/json".into(), "application/*+json".into()],
        sign: secret.cloned(),
    }
}

/// The signed POST of a call of `tool` (see the module docs).
pub fn request(
    tool: &HttpTool,
    secret: Option<&Secret>,
    call: &CallFacts,
    call_id: &str,
    arguments: Value,
) -> HttpRequest {
    let body = json!({
        "call_sid": call.call_sid,
        "stream_sid": call.stream_sid,
        "tool": tool.name,
        "call_id": call_id,
        "arguments": arguments,
        "parameters": call.parameters_json(),
    });
    operator_post(
        crate::agent::STAGE_TOOL,
        &tool.url,
        body,
        tool.timeout_ms,
        secret,
    )
}

/// The tool's result from its answer body: compact JSON.
///
/// # Errors
/// The error text for the model: not JSON, or longer than [`MAX_RESULT_BYTES`].
pub fn read_answer(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("error: the tool answered something that is not JSON ({e})"))?;
    let s = v.to_string();
    if s.len() > MAX_RESULT_BYTES {
        return Err(format!(
            "error: the tool's answer is {} bytes, more than {MAX_RESULT_BYTES}",
            s.len()
        ));
    }
    Ok(s)
}

// -------------------------------------------------- tool runs of the speech-to-speech agents

use std::time::{Duration, Instant};

use crate::agent::{
    Action, AgentReport, CallInfo, FaultKind, OpenSpec, PeerId, ProviderCommand, ProviderEvent,
    ProviderFault, ProviderMessage,
};

/// The end of one tool call of a speech-to-speech agent ([`ToolRuns`]): what to answer the
/// provider with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEnd {
    /// The provider's id of the call (ElevenLabs `tool_call_id`, Realtime `call_id`).
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The answer's compact JSON, or the error text for the model (`error: …`).
    pub result: Result<String, String>,
    /// The tool succeeded and is [`HttpTool::end_call_after`]: the call ends after the
    /// agent's next answer.
    pub end_call_after: bool,
}

/// One request out.
#[derive(Debug, Clone)]
struct Run {
    peer: PeerId,
    call_id: String,
    tool: HttpTool,
    /// When it is given up (`timeout_ms` after the request).
    deadline: Instant,
}

/// The operator's tool calls of an agent (the cascade, ElevenLabs, OpenAI Realtime), out
/// over HTTP pipes, sans-IO: each is checked, POSTed ([`request`]) on a pipe of its own and
/// ends in a [`ToolEnd`] — its answer, or an error result when the arguments are refused (no
/// request), the backend fails, or nothing comes within the tool's `timeout_ms` (the agent
/// asks to be woken at [`ToolRuns::poll_timeout`]). Nothing is retried, and every fault of a
/// request is reported as [`AgentReport::ProviderFault`] with provider [`PROVIDER_TOOL`]. The
/// tool's `filler` is the agent's to say (the cascade does; speech-to-speech providers speak
/// for themselves while they wait).
#[derive(Debug)]
pub struct ToolRuns {
    runs: Vec<Run>,
    first_peer: u64,
    next_peer: u64,
}

impl ToolRuns {
    /// No runs; their pipes get ids from `first_peer` up (above the agent's own pipes).
    pub fn new(first_peer: PeerId) -> Self {
        ToolRuns {
            runs: Vec::new(),
            first_peer: first_peer.0,
            next_peer: first_peer.0,
        }
    }

    /// No run is out.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Whether `peer` is a tool pipe (running or ended): its events go to
    /// [`ToolRuns::on_event`].
    pub fn owns(&self, peer: PeerId) -> bool {
        peer.0 >= self.first_peer
    }

    /// Starts call `call_id` of the tool `name` with the model's `arguments` (JSON text): the
    /// signed request goes out on a new pipe (`out`), with a wake-up at its deadline.
    ///
    /// # Errors
    /// The call's end at once, with an error result and no request, when `tools` has no tool
    /// `name` or its schema refuses the arguments.
    pub fn start(
        &mut self,
        now: Instant,
        tools: &HttpTools,
        facts: &CallFacts,
        call: (&str, &str, &str),
        out: &mut Vec<Action>,
    ) -> Result<(), ToolEnd> {
        let (name, call_id, arguments) = call;
        let refused = |text: String| ToolEnd {
            call_id: call_id.to_string(),
            name: name.to_string(),
            result: Err(text),
            end_call_after: false,
        };
        let Some(tool) = tools.get(name) else {
            return Err(refused(format!("error: there is no tool named {name:?}")));
        };
        let args = parse_arguments(tool, arguments).map_err(refused)?;
        let req = request(tool, tools.secret.as_ref(), facts, call_id, args);
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        let deadline = now + Duration::from_millis(tool.timeout_ms);
        out.push(Action::Provider(ProviderCommand::Open {
            peer,
            spec: OpenSpec::Http(req),
        }));
        out.push(Action::WakeAt(deadline));
        self.runs.push(Run {
            peer,
            call_id: call_id.to_string(),
            tool: tool.clone(),
            deadline,
        });
        Ok(())
    }

    /// What a tool pipe reported: the end of its run when this ends it (its answer body, a
    /// failure, or the end of the body without an answer). Events of pipes that are not
    /// running (an answer's `Closed`) are ignored.
    pub fn on_event(&mut self, event: ProviderEvent, out: &mut Vec<Action>) -> Option<ToolEnd> {
        match event {
            ProviderEvent::Opened { .. } => None,
            ProviderEvent::Message { peer, message } => {
                let body = match &message {
                    ProviderMessage::Text(t) => t.as_bytes(),
                    ProviderMessage::Binary(b) => &b[..],
                };
                let result = read_answer(body);
                let run = self.take(peer)?;
                if let Err(e) = &result {
                    Self::report(&run, "bad_answer", e, out);
                }
                Some(Self::ended(run, result))
            }
            ProviderEvent::Closed { peer } => {
                let run = self.take(peer)?;
                let fault = ProviderFault::new(FaultKind::Dropped, "no answer body");
                Some(Self::failed(run, &fault, out))
            }
            ProviderEvent::Failed { peer, fault } => {
                let run = self.take(peer)?;
                Some(Self::failed(run, &fault, out))
            }
        }
    }

    /// The soonest deadline of a run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.runs.iter().map(|r| r.deadline).min()
    }

    /// The runs whose deadline has passed at `now`: their pipes are closed and each ends with
    /// a `timeout` error result.
    pub fn expired(&mut self, now: Instant, out: &mut Vec<Action>) -> Vec<ToolEnd> {
        let (due, kept): (Vec<Run>, Vec<Run>) = std::mem::take(&mut self.runs)
            .into_iter()
            .partition(|r| r.deadline <= now);
        self.runs = kept;
        due.into_iter()
            .map(|run| {
                out.push(Action::Provider(ProviderCommand::Close { peer: run.peer }));
                let detail = format!("no answer within {} ms", run.tool.timeout_ms);
                let fault = ProviderFault::new(FaultKind::Timeout, detail);
                Self::failed(run, &fault, out)
            })
            .collect()
    }

    /// Closes every run's pipe (the call is over): no ends follow.
    pub fn close_all(&mut self, out: &mut Vec<Action>) {
        for run in self.runs.drain(..) {
            out.push(Action::Provider(ProviderCommand::Close { peer: run.peer }));
        }
    }

    fn take(&mut self, peer: PeerId) -> Option<Run> {
        let i = self.runs.iter().position(|r| r.peer == peer)?;
        Some(self.runs.remove(i))
    }

    fn report(run: &Run, kind: &str, detail: &str, out: &mut Vec<Action>) {
        out.push(Action::Report(AgentReport::ProviderFault {
            provider: PROVIDER_TOOL.into(),
            kind: kind.into(),
            detail: format!("{}: {detail}", run.tool.name),
        }));
    }

    /// A run that failed: reported, and told to the model as the cascade tells it.
    fn failed(run: Run, fault: &ProviderFault, out: &mut Vec<Action>) -> ToolEnd {
        Self::report(&run, &fault.label(), &fault.to_string(), out);
        let text = match fault.http_status() {
            Some(s) => format!(
                "error: the tool failed (HTTP {s}); tell the caller you cannot do it right now"
            ),
            None => format!(
                "error: the tool did not answer ({}); tell the caller you cannot do it right now",
                fault.label()
            ),
        };
        Self::ended(run, Err(text))
    }

    fn ended(run: Run, result: Result<String, String>) -> ToolEnd {
        ToolEnd {
            end_call_after: result.is_ok() && run.tool.end_call_after,
            call_id: run.call_id,
            name: run.tool.name,
            result,
        }
    }
}

impl From<&CallInfo> for CallFacts {
    fn from(info: &CallInfo) -> Self {
        CallFacts {
            call_sid: info.call_sid.clone(),
            stream_sid: info.stream_sid.clone(),
            parameters: info.parameters.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> HttpTool {
        HttpTool {
            name: "lookup_balance".into(),
            description: "The payer's balance.".into(),
            parameters: ToolSchema::new(json!({
                "type": "object",
                "properties": {"payerId": {"type": "string", "minLength": 1}},
                "required": ["payerId"],
                "additionalProperties": false
            }))
            .unwrap(),
            url: "http://127.0.0.1:9/tools/balance".into(),
            timeout_ms: 2_000,
            filler: None,
            end_call_after: false,
        }
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let t = tool();
        assert_eq!(
            parse_arguments(&t, r#"{"payerId":"p-42"}"#).unwrap(),
            json!({"payerId": "p-42"})
        );
        let e = parse_arguments(&t, r#"{"payerId":42}"#).unwrap_err();
        assert!(e.contains("/payerId") && e.contains("string"), "{e}");
        let e = parse_arguments(&t, "").unwrap_err();
        assert!(e.contains("payerId") && e.contains("required"), "{e}");
        let e = parse_arguments(&t, r#"{"payerId":"p","x":1}"#).unwrap_err();
        assert!(e.contains("Additional properties"), "{e}");
        assert!(
            parse_arguments(&t, "{not json")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(ToolSchema::new(json!({"type": 12})).is_err());
        assert!(ToolSchema::new(json!("string")).is_err());
    }

    #[test]
    fn request_carries_the_call_and_is_signed() {
        let t = tool();
        let facts = CallFacts {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            parameters: vec![("payerId".into(), "p-42".into())],
        };
        let secret = Secret::new("0123456789abcdef");
        let r = request(
            &t,
            Some(&secret),
            &facts,
            "call_7",
            json!({"payerId": "p-42"}),
        );
        assert_eq!(
            (r.method.as_str(), r.url.as_str()),
            ("POST", t.url.as_str())
        );
        assert_eq!(r.timeout_ms, Some(2_000));
        assert_eq!(r.sign, Some(secret));
        let HttpBody::Json(b) = r.body else {
            panic!("json body")
        };
        assert_eq!(
            b,
            json!({"call_sid": "CA1", "stream_sid": "MZ1", "tool": "lookup_balance",
                   "call_id": "call_7", "arguments": {"payerId": "p-42"},
                   "parameters": {"payerId": "p-42"}})
        );
    }

    #[test]
    fn answers_and_tool_sets_are_checked() {
        assert_eq!(
            read_answer(br#"{ "balance": 120.5 }"#).unwrap(),
            r#"{"balance":120.5}"#
        );
        assert!(read_answer(b"<html>").unwrap_err().contains("not JSON"));
        let big = format!("\"{}\"", "x".repeat(MAX_RESULT_BYTES));
        assert!(read_answer(big.as_bytes()).unwrap_err().contains("bytes"));
        let mut set = HttpTools {
            tools: vec![tool()].into(),
            secret: None,
        };
        assert!(set.validate().unwrap_err().contains("secret"));
        set.secret = Some(Secret::new("0123456789abcdef"));
        assert!(set.validate().is_ok());
        set.tools = vec![tool(), tool()].into();
        assert!(set.validate().unwrap_err().contains("twice"));
        let mut t = tool();
        t.name = "end_call".into();
        assert!(t.validate().is_err());
        t.name = "has space".into();
        assert!(t.validate().is_err());
    }
}
