//! The vendors' own specs as test oracles: `fixtures/specs/elevenlabs/agent.asyncapi.yaml`
//! (ElevenLabs Agents, AsyncAPI 2.6.0) and the Realtime schemas of
//! `fixtures/specs/openai/openapi.yaml` (GA) and `openapi-manual_spec-2025-04-29.yaml` (beta
//! names), with a small JSON Schema validator, so neither hark nor the doubles can drift from
//! the wire formats.
//!
//! The validator knows `$ref` (with sibling keywords), `type` (one or a list, `null`),
//! `nullable`, `enum`, `const`, `properties`, `required`, `additionalProperties`, `items`,
//! `oneOf` (exactly one), `anyOf`, `allOf`, `minimum`/`maximum`, `minLength`/`maxLength`,
//! `minItems`/`maxItems` and `format: base64`. It is **stricter** than JSON Schema in one way:
//! a property an object schema does not declare is an error (unless `additionalProperties`
//! allows it), so a misspelt field is caught.
//!
//! The specs must be present (vendored under `fixtures/specs/`): a missing spec fails
//! loudly rather than skipping the check.
//!
//! Included as a module by the ElevenLabs and Realtime gateway tests; built alone, it runs the
//! validator's own tests.
#![allow(dead_code)]
// Built alone as a test target too, where its helpers count as a crate's public items.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;

/// `fixtures/specs/` in this repository (vendored copies; provenance in `fixtures/README.md`).
pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/specs")
}

fn load(rel: &str) -> Value {
    let path = spec_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the spec {} is required by this test and could not be read ({e}). \
             The specs are vendored under `fixtures/specs/` (see `fixtures/README.md`).",
            path.display()
        )
    });
    // serde_yaml cannot hold integers beyond 64 bits (the OpenAI spec's `seed` bounds are
    // ±9223372036854776000): write such literals as floats first.
    let text: String = text
        .lines()
        .map(|l| match l.rsplit_once(": ") {
            Some((k, n))
                if n.trim_start_matches('-').len() >= 19
                    && n.trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
            {
                format!("{k}: {n}.0\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    let y: serde_yaml::Value = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    to_json(y)
}

/// YAML → JSON; numbers beyond i64/u64 (the spec has `minimum: -9223372036854776000`) become
/// floats.
fn to_json(y: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match y {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(a) => Value::Array(a.into_iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Y::String(s) => s,
                        other => serde_yaml::to_string(&other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (k, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => to_json(t.value),
    }
}

/// The ElevenLabs AsyncAPI document.
pub fn elevenlabs() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| load("elevenlabs/agent.asyncapi.yaml"))
}

/// The OpenAI OpenAPI document (GA Realtime names).
pub fn openai() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| load("openai/openapi.yaml"))
}

/// The OpenAI OpenAPI document of 2025-04-29 (beta Realtime names).
pub fn openai_beta() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| load("openai/openapi-manual_spec-2025-04-29.yaml"))
}

/// Resolves a local `$ref` (`#/a/b/c`).
pub fn resolve<'a>(root: &'a Value, r: &str) -> &'a Value {
    let ptr = r
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local refs are supported: {r}"));
    root.pointer(ptr)
        .unwrap_or_else(|| panic!("dangling $ref {r}"))
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// Properties an object schema declares, through `allOf` and `$ref`.
fn declared<'a>(root: &'a Value, schema: &'a Value, out: &mut Vec<&'a str>) -> bool {
    let mut open = false;
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        open |= declared(root, resolve(root, r), out);
    }
    if let Some(p) = schema.get("properties").and_then(Value::as_object) {
        out.extend(p.keys().map(String::as_str));
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) | None => {}
        Some(_) => open = true,
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            open |= declared(root, s, out);
        }
    }
    open
}

/// Validates `v` against `schema` (in document `root`), pushing errors with their JSON path.
pub fn validate(root: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    validate_inner(root, schema, v, path, errs, true);
}

fn validate_inner(
    root: &Value,
    schema: &Value,
    v: &Value,
    path: &str,
    errs: &mut Vec<String>,
    strict_props: bool,
) {
    let Some(obj) = schema.as_object() else {
        return; // `true` / `{}`
    };
    if v.is_null() && obj.get("nullable").and_then(Value::as_bool) == Some(true) {
        return;
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        validate_inner(root, resolve(root, r), v, path, errs, strict_props);
    }
    if let Some(t) = obj.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)),
            _ => true,
        };
        if !ok {
            errs.push(format!("{path}: expected type {t}, got {v}"));
            return;
        }
    }
    if let Some(e) = obj.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!(
            "{path}: {v} not in enum {}",
            Value::Array(e.clone())
        ));
    }
    if let Some(c) = obj.get("const")
        && c != v
    {
        errs.push(format!("{path}: {v} != const {c}"));
    }
    if let (Some(min), Some(x)) = (obj.get("minimum").and_then(Value::as_f64), v.as_f64())
        && x < min
    {
        errs.push(format!("{path}: {x} < minimum {min}"));
    }
    if let (Some(max), Some(x)) = (obj.get("maximum").and_then(Value::as_f64), v.as_f64())
        && x > max
    {
        errs.push(format!("{path}: {x} > maximum {max}"));
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as u64;
        if obj
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{path}: longer than maxLength"));
        }
        if obj
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{path}: shorter than minLength"));
        }
        if obj.get("format").and_then(Value::as_str) == Some("base64")
            && base64::engine::general_purpose::STANDARD.decode(s).is_err()
        {
            errs.push(format!("{path}: not base64"));
        }
    }
    if let Some(a) = v.as_array() {
        let n = a.len() as u64;
        if obj
            .get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{path}: more than maxItems"));
        }
        if obj
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{path}: fewer than minItems"));
        }
        if let Some(items) = obj.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate_inner(root, items, x, &format!("{path}[{i}]"), errs, true);
            }
        }
    }
    if let Some(o) = v.as_object() {
        if let Some(req) = obj.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !o.contains_key(r) {
                    errs.push(format!("{path}: missing required {r}"));
                }
            }
        }
        let props = obj.get("properties").and_then(Value::as_object);
        if let Some(props) = props {
            for (k, s) in props {
                if let Some(x) = o.get(k) {
                    validate_inner(root, s, x, &format!("{path}.{k}"), errs, true);
                }
            }
        }
        match obj.get("additionalProperties") {
            Some(Value::Object(_)) => {
                let extra = obj.get("additionalProperties").unwrap_or(&Value::Null);
                for (k, x) in o {
                    if props.is_none_or(|p| !p.contains_key(k)) {
                        validate_inner(root, extra, x, &format!("{path}.{k}"), errs, true);
                    }
                }
            }
            Some(Value::Bool(true)) => {}
            _ => {
                if strict_props && (props.is_some() || obj.contains_key("allOf")) {
                    let mut names = Vec::new();
                    let open = declared(root, schema, &mut names);
                    if !open {
                        for k in o.keys() {
                            if !names.contains(&k.as_str()) {
                                errs.push(format!("{path}: undeclared property {k}"));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate_inner(root, s, v, path, errs, false);
        }
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
        let mut first = Vec::new();
        let ok = any.iter().any(|s| {
            let mut e = Vec::new();
            validate_inner(root, s, v, path, &mut e, strict_props);
            if first.is_empty() {
                first = e.clone();
            }
            e.is_empty()
        });
        if !ok {
            errs.push(format!(
                "{path}: matches no anyOf branch (first branch: {:?})",
                first.first()
            ));
        }
    }
    if let Some(one) = obj.get("oneOf").and_then(Value::as_array) {
        let mut matched = 0;
        let mut why = Vec::new();
        for s in one {
            let mut e = Vec::new();
            validate_inner(root, s, v, path, &mut e, strict_props);
            if e.is_empty() {
                matched += 1;
            } else if let Some(x) = e.into_iter().next() {
                why.push(x);
            }
        }
        if matched != 1 {
            errs.push(format!(
                "{path}: matches {matched} oneOf branches (need 1); e.g. {:?}",
                why.iter().take(3).collect::<Vec<_>>()
            ));
        }
    }
}

/// ElevenLabs message directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client → server (`AgentMessages.subscribe`).
    ToServer,
    /// Server → client (`AgentMessages.publish`).
    ToClient,
}

/// Validates one ElevenLabs message: it must match exactly one message payload of the
/// channel's direction. Returns the errors (empty when valid).
pub fn check_elevenlabs(dir: Dir, msg: &Value) -> Vec<String> {
    let root = elevenlabs();
    let op = match dir {
        Dir::ToServer => "subscribe",
        Dir::ToClient => "publish",
    };
    let msgs = root
        .pointer(&format!("/channels/AgentMessages/{op}/message/oneOf"))
        .and_then(Value::as_array)
        .expect("AgentMessages channel in the AsyncAPI spec");
    let payloads: Vec<Value> = msgs
        .iter()
        .map(|m| {
            let m = resolve(root, m["$ref"].as_str().expect("message $ref"));
            m["payload"].clone()
        })
        .collect();
    let schema = serde_json::json!({ "oneOf": payloads });
    let mut errs = Vec::new();
    validate(root, &schema, msg, "$", &mut errs);
    errs
}

/// Which OpenAI spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// GA names (`openapi.yaml`).
    Ga,
    /// Beta names (`openapi-manual_spec-2025-04-29.yaml`).
    Beta,
}

/// Validates one Realtime event against `RealtimeClientEvent` (`to_server`) or
/// `RealtimeServerEvent`. Returns the errors (empty when valid).
pub fn check_realtime(api: Api, to_server: bool, msg: &Value) -> Vec<String> {
    let root = match api {
        Api::Ga => openai(),
        Api::Beta => openai_beta(),
    };
    let name = if to_server {
        "RealtimeClientEvent"
    } else {
        "RealtimeServerEvent"
    };
    // Pick the member whose `type` enum names this event, for a precise error; fall back to
    // the whole union.
    let union = resolve(root, &format!("#/components/schemas/{name}"));
    let members = union
        .get("anyOf")
        .or_else(|| union.get("oneOf"))
        .and_then(Value::as_array)
        .expect("event union");
    let ty = msg.get("type").cloned().unwrap_or(Value::Null);
    let member = members.iter().find(|m| {
        let s = m
            .get("$ref")
            .and_then(Value::as_str)
            .map(|r| resolve(root, r));
        s.and_then(|s| s.pointer("/properties/type/enum"))
            .and_then(Value::as_array)
            .is_some_and(|e| e.contains(&ty))
    });
    let mut errs = Vec::new();
    match member {
        Some(m) => validate(root, m, msg, "$", &mut errs),
        None => errs.push(format!("$: no {name} has type {ty}")),
    }
    errs.retain(|e| !BETA_ERRATA.iter().any(|x| api == Api::Beta && e == x));
    errs
}

/// Errors the beta spec's schemas raise against its own prose and examples:
/// - `turn_detection` is typed `object` without `nullable`, while its description says "This
///   can be set to `null` to turn off" (the GA schema adds `type: "null"`); hark's own turn
///   detection needs it;
/// - `RealtimeResponse.status` lists only final states, while the spec's own
///   `response.created` example has `"status": "in_progress"`.
const BETA_ERRATA: &[&str] = &[
    "$.session.turn_detection: expected type \"object\", got null",
    "$.response.status: \"in_progress\" not in enum [\"completed\",\"cancelled\",\"failed\",\"incomplete\"]",
];

#[cfg(test)]
mod self_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn elevenlabs_examples_from_the_reference_validate() {
        let ok_client = [
            json!({"user_audio_chunk": "AAAA"}),
            json!({"type": "pong", "event_id": 12345}),
            json!({"type": "conversation_initiation_client_data", "conversation_config_override": {"agent": {"prompt": {"prompt": "x"}, "first_message": "Hi", "language": "en"}, "tts": {"voice_id": "v"}}, "dynamic_variables": {"a": "b"}}),
            json!({"type": "client_tool_result", "tool_call_id": "t", "result": "ok", "is_error": false}),
        ];
        for m in &ok_client {
            assert_eq!(
                check_elevenlabs(Dir::ToServer, m),
                Vec::<String>::new(),
                "{m}"
            );
        }
        let ok_server = [
            json!({"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": 1}}),
            json!({"type": "interruption", "interruption_event": {"event_id": 5}}),
            json!({"type": "ping", "ping_event": {"event_id": 1, "ping_ms": null}}),
            json!({"type": "error", "error_event": {"code": 1008, "message": "m", "error_type": "missing_fields", "reason": null}}),
        ];
        for m in &ok_server {
            assert_eq!(
                check_elevenlabs(Dir::ToClient, m),
                Vec::<String>::new(),
                "{m}"
            );
        }
    }

    #[test]
    fn the_validator_catches_drift() {
        let bad = [
            (Dir::ToServer, json!({"type": "pong", "event_id": "12"})),
            (Dir::ToServer, json!({"type": "pong"})),
            (Dir::ToServer, json!({"user_audio_chunk": "not base64!"})),
            (
                Dir::ToServer,
                json!({"user_audio_chunk": "AAAA", "typo": 1}),
            ),
            (
                Dir::ToServer,
                json!({"type": "conversation_initiation_client_data", "conversation_config_override": {"agent": {"firstMessage": "x"}}}),
            ),
            (
                Dir::ToClient,
                json!({"type": "audio", "audio_event": {"audio_base_64": "AAAA"}}),
            ),
            (
                Dir::ToClient,
                json!({"type": "error", "error_event": {"code": 4000}}),
            ),
        ];
        for (d, m) in &bad {
            assert!(!check_elevenlabs(*d, m).is_empty(), "{m} should fail");
        }
        let bad_rt = [
            json!({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0}),
            json!({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 1.5}),
            json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/ulaw"}}}}}),
            json!({"type": "no.such.event"}),
        ];
        for m in &bad_rt {
            assert!(
                !check_realtime(Api::Ga, true, m).is_empty(),
                "{m} should fail"
            );
        }
        assert!(
            !check_realtime(
                Api::Ga,
                false,
                &json!({"type": "response.audio.delta", "event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0, "delta": "AAAA"})
            )
            .is_empty(),
            "a beta name is not a GA event"
        );
        assert_eq!(
            check_realtime(
                Api::Beta,
                false,
                &json!({"type": "response.audio.delta", "event_id": "e", "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0, "delta": "AAAA"})
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn realtime_reference_examples_validate() {
        let client = [
            json!({"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"], "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}}, "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"}}, "instructions": "You are …"}}),
            json!({"type": "input_audio_buffer.append", "audio": "AAAA"}),
            json!({"type": "conversation.item.truncate", "item_id": "item_002", "content_index": 0, "audio_end_ms": 1500}),
            json!({"type": "response.cancel", "response_id": "resp_12345"}),
            json!({"type": "response.create"}),
            json!({"type": "input_audio_buffer.commit"}),
        ];
        for m in &client {
            assert_eq!(
                check_realtime(Api::Ga, true, m),
                Vec::<String>::new(),
                "{m}"
            );
        }
        let server = [
            json!({"type": "input_audio_buffer.speech_started", "event_id": "event_1516", "audio_start_ms": 1000, "item_id": "msg_003"}),
            json!({"type": "response.output_audio.delta", "event_id": "event_4950", "response_id": "resp_001", "item_id": "msg_008", "output_index": 0, "content_index": 0, "delta": "AAAA"}),
            json!({"type": "conversation.item.truncated", "event_id": "event_2526", "item_id": "msg_004", "content_index": 0, "audio_end_ms": 1500}),
            json!({"type": "error", "event_id": "event_890", "error": {"type": "invalid_request_error", "code": "invalid_event", "message": "The 'type' field is missing.", "param": null, "event_id": "event_567"}}),
        ];
        for m in &server {
            assert_eq!(
                check_realtime(Api::Ga, false, m),
                Vec::<String>::new(),
                "{m}"
            );
        }
        let beta_client = json!({"type": "session.update", "session": {"turn_detection": {"type": "server_vad"}, "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw", "voice": "alloy", "instructions": "You are …", "modalities": ["text", "audio"], "temperature": 0.8}});
        assert_eq!(
            check_realtime(Api::Beta, true, &beta_client),
            Vec::<String>::new()
        );
    }
}
