//! Per-call context from the operator's backend: when a stream starts, the call's facts are
//! POSTed (signed, [`crate::operator`]) to `context_url` and the answer shapes this call —
//! system prompt, greeting, variables, voice, tools, language. Prompts and greetings may hold
//! `{{variable}}` placeholders, filled from the answer's `variables` and the call's custom
//! parameters.
//!
//! # The request
//! `POST {context_url}`, JSON:
//! `{"call_sid", "stream_sid", "from", "to", "direction", "parameters": {…}}` — `from`, `to`
//! and `direction` are Twilio's `From`, `To` and `Direction` webhook values passed as stream
//! `<Parameter>`s by hark's `/voice` (`null` when absent, e.g. a stream started elsewhere).
//!
//! # The answer
//! A JSON object; every field is optional:
//! `{"system_prompt": "…", "greeting": "…", "variables": {"name": "Ada", "balance": 120},
//!   "voice": "alloy", "tools": ["lookup_balance"], "language": "en"}`.
//! `greeting: ""` means no greeting; `tools` lists which of the configured tools (hark's and
//! the operator's) this call offers. If no answer comes within the deadline (default 1,500 ms)
//! or it is not such an object, the configured defaults apply and the fault is reported.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::agent::HttpRequest;
use crate::agents::http_tools::{CallFacts, operator_post};
use crate::operator::Secret;

/// `provider` label of context faults.
pub const PROVIDER_CONTEXT: &str = "context";

/// Where and how long to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextConfig {
    /// `http(s)://` URL.
    pub url: String,
    /// How long the answer may take before the defaults apply, ms.
    pub timeout_ms: u64,
    /// The signing secret.
    pub secret: Secret,
}

/// What the backend answered for one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallContext {
    /// Replaces the configured system prompt.
    pub system_prompt: Option<String>,
    /// Replaces the configured greeting (`Some("")`: no greeting).
    pub greeting: Option<String>,
    /// Values for `{{name}}` placeholders (numbers and booleans as JSON writes them).
    pub variables: BTreeMap<String, String>,
    /// The TTS voice for this call.
    pub voice: Option<String>,
    /// The tools this call offers, by name.
    pub tools: Option<Vec<String>>,
    /// The caller's language (ISO-639-1) for STT.
    pub language: Option<String>,
}

/// The context request for a call.
pub fn request(cfg: &ContextConfig, call: &CallFacts) -> HttpRequest {
    let param = |name: &str| {
        call.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Value::String(v.clone()))
            .unwrap_or(Value::Null)
    };
    let body = json!({
        "call_sid": call.call_sid,
        "stream_sid": call.stream_sid,
        "from": param("From"),
        "to": param("To"),
        "direction": param("Direction"),
        "parameters": call.parameters_json(),
    });
    operator_post(
        crate::agent::STAGE_CONTEXT,
        &cfg.url,
        body,
        cfg.timeout_ms,
        Some(&cfg.secret),
    )
}

/// Reads an answer body.
///
/// # Errors
/// What is wrong: not JSON, not an object, a field of the wrong type.
pub fn parse(body: &[u8]) -> Result<CallContext, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let text = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{k} must be a string, not {other}")),
        }
    };
    let mut variables = BTreeMap::new();
    match o.get("variables") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    Value::Null => String::new(),
                    _ => return Err(format!("variables.{k} must be a string, number or boolean")),
                };
                variables.insert(k.clone(), s);
            }
        }
        Some(_) => return Err("variables must be an object".into()),
    }
    let tools = match o.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|t| t.as_str().map(str::to_string).ok_or("tools must be names"))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("tools must be an array of names".into()),
    };
    Ok(CallContext {
        system_prompt: text("system_prompt")?,
        greeting: text("greeting")?,
        variables,
        voice: text("voice")?.filter(|v| !v.trim().is_empty()),
        tools,
        language: text("language")?.filter(|v| !v.trim().is_empty()),
    })
}

/// `template` with each `{{name}}` (spaces inside the braces allowed) replaced by `vars`'
/// value, or by the call's custom parameter of that name; an unknown name becomes empty (never
/// spoken as braces).
pub fn fill(
    template: &str,
    vars: &BTreeMap<String, String>,
    params: &[(String, String)],
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + 2 + len].trim();
        let value = vars.get(name).map(String::as_str).or_else(|| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        });
        out.push_str(value.unwrap_or(""));
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_from_variables_then_parameters() {
        let vars = BTreeMap::from([("name".to_string(), "Ada".to_string())]);
        let params = vec![("payerId".to_string(), "p-42".to_string())];
        assert_eq!(
            fill(
                "Hi {{name}}, account {{ payerId }}.{{missing}}",
                &vars,
                &params
            ),
            "Hi Ada, account p-42."
        );
        assert_eq!(fill("no {{ end", &vars, &params), "no {{ end");
        assert_eq!(fill("plain", &vars, &params), "plain");
    }

    #[test]
    fn answers_are_read_strictly() {
        let c = parse(
            br#"{"system_prompt":"You collect payments for {{company}}.","greeting":"",
                 "variables":{"company":"Acme","balance":120.5,"vip":true},
                 "voice":"verse","tools":["lookup_balance"],"language":"es","extra":1}"#,
        )
        .unwrap();
        assert_eq!(c.greeting.as_deref(), Some(""));
        assert_eq!(c.variables["balance"], "120.5");
        assert_eq!(c.variables["vip"], "true");
        assert_eq!(c.tools, Some(vec!["lookup_balance".to_string()]));
        assert_eq!(
            (c.voice.as_deref(), c.language.as_deref()),
            (Some("verse"), Some("es"))
        );
        assert_eq!(parse(b"{}").unwrap(), CallContext::default());
        assert!(parse(b"[]").is_err());
        assert!(parse(b"<html>").is_err());
        assert!(
            parse(br#"{"greeting":5}"#)
                .unwrap_err()
                .contains("greeting")
        );
        assert!(parse(br#"{"variables":{"a":[1]}}"#).is_err());
    }

    #[test]
    fn the_request_carries_the_call_facts() {
        let cfg = ContextConfig {
            url: "http://ops.test/context".into(),
            timeout_ms: 1_500,
            secret: Secret::new("0123456789abcdef"),
        };
        let facts = CallFacts {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            parameters: vec![
                ("From".into(), "+14155550100".into()),
                ("payerId".into(), "p-42".into()),
            ],
        };
        let r = request(&cfg, &facts);
        assert_eq!((r.timeout_ms, r.sign.is_some()), (Some(1_500), true));
        let crate::agent::HttpBody::Json(b) = r.body else {
            panic!("json")
        };
        assert_eq!(b["from"], "+14155550100");
        assert_eq!(b["to"], Value::Null);
        assert_eq!(b["parameters"]["payerId"], "p-42");
    }
}
