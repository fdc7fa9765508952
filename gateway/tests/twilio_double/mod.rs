//! A local double of Twilio's REST API (v2010 `Calls.json` and the Conversations v1 operations
//! hark uses), on 127.0.0.1:0, that checks every request against the official OpenAPI specs
//! in `fixtures/specs/twilio-oai/` (twilio/twilio-oai 2.6.7) so hark cannot drift from the
//! real API:
//!
//! - the path matches an operation of the spec, with that HTTP method; path parameters match
//!   their schema (`pattern`, lengths);
//! - HTTP Basic auth with the expected user and password; `Accept: application/json`;
//! - POST bodies are `application/x-www-form-urlencoded` (the only request type in both specs);
//!   every parameter exists in the operation's `requestBody` schema `properties`; only `array`
//!   properties repeat (repeated keys, never `Key[]`); values fit the property's type
//!   (`integer`, `boolean` as `true`/`false`), `enum`, `pattern`, `minLength`/`maxLength` and
//!   `format: uri`; every `required` property is present. Where a property has no `enum` but
//!   its description says "Can be: `a`, `b` …", those values are enforced too (the spec states
//!   `StatusCallbackEvent`, `MachineDetection`, `RecordingChannels`, … only that way);
//! - query parameters of GETs and header parameters exist in the operation's `parameters` and
//!   fit their schema.
//!
//! A request that breaks a rule is answered 400 with a Twilio-shaped error and recorded in
//! [`Double::violations`]; tests assert that list is empty. Answers are shaped like the spec's
//! response schemas (every property of e.g. `api.v2010.account.call`), errors like Twilio's
//! `{code, message, more_info, status}`.
//!
//! If the specs are missing the double panics: the check must not be skipped silently.

#![allow(dead_code)]

pub mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The two specs, parsed once per test binary.
pub struct Specs {
    /// `twilio_api_v2010.json`.
    pub api: Value,
    /// `twilio_conversations_v1.json`.
    pub conversations: Value,
}

/// `fixtures/specs/twilio-oai/` in this repository (vendored; provenance in `fixtures/README.md`).
pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/specs/twilio-oai")
}

/// Loads the specs, panicking loudly when they are absent.
pub fn specs() -> &'static Specs {
    static SPECS: OnceLock<Specs> = OnceLock::new();
    SPECS.get_or_init(|| {
        let load = |name: &str| -> Value {
            let path = spec_dir().join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "the Twilio OpenAPI spec {} is required by this test and could not be read ({e}). \
                     The specs are vendored under `fixtures/specs/twilio-oai/` (see `fixtures/README.md`).",
                    path.display()
                )
            });
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
        };
        Specs {
            api: load("twilio_api_v2010.json"),
            conversations: load("twilio_conversations_v1.json"),
        }
    })
}

/// One request the double received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET` or `POST`.
    pub method: Method,
    /// Path, e.g. `/2010-04-01/Accounts/AC…/Calls.json`.
    pub path: String,
    /// The spec's path template it matched.
    pub template: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Decoded form pairs, in order.
    pub form: Vec<(String, String)>,
    /// Raw body.
    pub raw_body: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// Every value of form parameter `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.form
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of form parameter `name`.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} repeated: {all:?}");
        all.first().copied()
    }
}

#[derive(Debug, Clone, Default)]
struct Participant {
    sid: String,
    identity: Option<String>,
    address: Option<String>,
    proxy: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Conversation {
    sid: String,
    unique_name: Option<String>,
    friendly_name: Option<String>,
    participants: Vec<Participant>,
    messages: Vec<Value>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    violations: Vec<String>,
    /// Answers to use (status, body) for the next `Calls.json` creations, in order.
    call_failures: Vec<(u16, Value)>,
    /// Answers to use (status, body) for the next call updates (`Calls/{Sid}.json`), in order.
    update_failures: Vec<(u16, Value)>,
    conversations: Vec<Conversation>,
    counter: u64,
}

/// The running double.
pub struct Double {
    /// `http://127.0.0.1:<port>`: use as `HARK_TWILIO_API_BASE` and
    /// `HARK_TWILIO_CONVERSATIONS_BASE`.
    pub base: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Double {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Config {
    user: String,
    password: String,
}

impl Double {
    /// Starts the double; requests must use Basic auth `user:password`.
    pub async fn start(user: &str, password: &str) -> Double {
        specs(); // fail early and loudly if missing
        let state = Arc::new(Mutex::new(State::default()));
        let config = Arc::new(Config {
            user: user.to_owned(),
            password: password.to_owned(),
        });
        let st = state.clone();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                let config = config.clone();
                async move { handle(&st, &config, method, uri, headers, body) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Double {
            base: format!("http://{addr}"),
            state,
            task,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests whose spec template ends with `suffix` and method is `method`.
    pub fn requests_to(&self, method: &str, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method.as_str() == method && r.template.ends_with(suffix))
            .collect()
    }

    /// Rule violations so far (empty means hark spoke the spec).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Panics listing the violations, if any.
    pub fn assert_clean(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "requests broke the Twilio spec:\n{}",
            v.join("\n")
        );
    }

    /// The next `Calls.json` creation answers `status` with `body` (a Twilio error).
    pub fn fail_next_call(&self, status: u16, body: Value) {
        self.lock().call_failures.push((status, body));
    }

    /// The next call update (`POST Calls/{Sid}.json`) answers `status` with `body`.
    pub fn fail_next_update(&self, status: u16, body: Value) {
        self.lock().update_failures.push((status, body));
    }

    /// Seeds a conversation with `unique_name`; returns its sid.
    pub fn seed_conversation(&self, unique_name: &str) -> String {
        let mut st = self.lock();
        let sid = next_sid(&mut st, "CH");
        st.conversations.push(Conversation {
            sid: sid.clone(),
            unique_name: Some(unique_name.to_owned()),
            ..Conversation::default()
        });
        sid
    }

    /// Messages posted to conversation `sid`, as answered.
    pub fn messages(&self, sid: &str) -> Vec<Value> {
        self.lock()
            .conversations
            .iter()
            .find(|c| c.sid == sid)
            .map(|c| c.messages.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn next_sid(st: &mut State, prefix: &str) -> String {
    st.counter += 1;
    format!("{prefix}{:032x}", st.counter)
}

fn twilio_error(status: u16, code: i64, message: &str) -> Response {
    let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        s,
        axum::Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        })),
    )
        .into_response()
}

/// Finds the spec path template matching `path`: (spec, template, path parameters).
fn match_path(path: &str) -> Option<(&'static Value, String, BTreeMap<String, String>)> {
    let specs = specs();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut best: Option<(usize, &'static Value, String, BTreeMap<String, String>)> = None;
    for spec in [&specs.api, &specs.conversations] {
        let Some(paths) = spec["paths"].as_object() else {
            continue;
        };
        for template in paths.keys() {
            let tsegs: Vec<&str> = template.trim_start_matches('/').split('/').collect();
            if tsegs.len() != segs.len() {
                continue;
            }
            let mut params = BTreeMap::new();
            let mut literal = 0;
            let mut ok = true;
            for (t, s) in tsegs.iter().zip(&segs) {
                // Templates like `{Sid}.json` or `{AccountSid}`.
                if let Some(open) = t.find('{') {
                    let close = t.find('}').unwrap_or(t.len());
                    let (pre, name, post) = (&t[..open], &t[open + 1..close], &t[close + 1..]);
                    if s.len() > pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post) {
                        params.insert(
                            name.to_owned(),
                            percent_decode(&s[pre.len()..s.len() - post.len()]),
                        );
                    } else {
                        ok = false;
                        break;
                    }
                } else if t == s {
                    literal += 1;
                } else {
                    ok = false;
                    break;
                }
            }
            if ok && best.as_ref().is_none_or(|b| literal > b.0) {
                best = Some((literal, spec, template.clone(), params));
            }
        }
    }
    best.map(|(_, spec, t, p)| (spec, t, p))
}

/// Decodes `%XX` escapes of a path segment (`+` stays `+`, unlike a form).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            out.push(hex(b[i + 1]) * 16 + hex(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves a `$ref` (one level is enough for these specs).
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Matches the spec's only pattern shapes: `^XX[0-9a-fA-F]{N}$`, `^(XX|YY)[0-9a-fA-F]{N}$`,
/// `^[a-zA-Z]{2}[0-9a-fA-F]{N}$`. Any other pattern panics, so nothing is skipped silently.
fn pattern_matches(pattern: &str, v: &str) -> bool {
    let body = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (prefix, hex) = body
        .split_once("[0-9a-fA-F]{")
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let n: usize = hex
        .strip_suffix('}')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let prefix_ok = |p: &str| -> bool {
        if p == "[a-zA-Z]{2}" {
            v.len() >= 2 && v.as_bytes()[..2].iter().all(u8::is_ascii_alphabetic)
        } else {
            v.starts_with(p)
        }
    };
    let (plen, ok) = if let Some(alts) = prefix.strip_prefix('(').and_then(|p| p.strip_suffix(')'))
    {
        let hit = alts.split('|').find(|a| v.starts_with(a));
        (hit.map_or(0, str::len), hit.is_some())
    } else if prefix == "[a-zA-Z]{2}" {
        (2, prefix_ok(prefix))
    } else {
        assert!(
            prefix.bytes().all(|b| b.is_ascii_uppercase()),
            "unsupported pattern {pattern}"
        );
        (prefix.len(), prefix_ok(prefix))
    };
    ok && v.len() == plen + n && v[plen..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Values a description lists as "Can be: `a`, `b` … ." (up to the sentence's end), when two
/// or more are given.
fn described_values(description: &str) -> Option<Vec<String>> {
    let start = description.find("Can be: ")? + "Can be: ".len();
    let rest = &description[start..];
    let end = rest.find(". ").map_or(rest.len(), |i| i + 1);
    let sentence = &rest[..end];
    let values: Vec<String> = sentence
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    (values.len() >= 2).then_some(values)
}

/// Checks `value` against `schema`; `Err(reason)`.
fn check_value(spec: &Value, schema: &Value, value: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => {
            let n: i64 = value
                .parse()
                .map_err(|_| format!("{value:?} is not an integer"))?;
            if let Some(min) = schema.get("minimum").and_then(Value::as_i64)
                && n < min
            {
                return Err(format!("{n} < minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_i64)
                && n > max
            {
                return Err(format!("{n} > maximum {max}"));
            }
        }
        Some("number") => {
            value
                .parse::<f64>()
                .map_err(|_| format!("{value:?} is not a number"))?;
        }
        Some("boolean") if value != "true" && value != "false" => {
            return Err(format!("{value:?} is not true/false"));
        }
        Some("array") => {
            // Items are checked by their own schema; values listed only in the array's
            // description ("Can be: `initiated`, `ringing` …") apply to each item.
            check_value(spec, &schema["items"], value)?;
            let items = resolve(spec, &schema["items"]);
            if items.get("enum").is_none()
                && let Some(values) = schema
                    .get("description")
                    .and_then(Value::as_str)
                    .and_then(described_values)
                && !values.iter().any(|e| e == value)
            {
                return Err(format!(
                    "{value:?} is not one of the documented values {values:?}"
                ));
            }
            return Ok(());
        }
        _ => {}
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.iter().any(|e| e.as_str() == Some(value)) {
            return Err(format!("{value:?} is not one of {values:?}"));
        }
    } else if let Some(values) = schema
        .get("description")
        .and_then(Value::as_str)
        .and_then(described_values)
        && !values.iter().any(|e| e == value)
    {
        return Err(format!(
            "{value:?} is not one of the documented values {values:?}"
        ));
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str)
        && !pattern_matches(p, value)
    {
        return Err(format!("{value:?} does not match {p}"));
    }
    let chars = value.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        return Err(format!("{value:?} is shorter than {min}"));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        return Err(format!("{value:?} is longer than {max}"));
    }
    if schema.get("format").and_then(Value::as_str) == Some("uri")
        && !(value.starts_with("https://") || value.starts_with("http://"))
    {
        return Err(format!("{value:?} is not an absolute http(s) URI"));
    }
    Ok(())
}

/// The parts of a request the validator reads.
#[derive(Clone, Copy)]
struct Incoming<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    query: &'a [(String, String)],
    form: &'a [(String, String)],
}

/// Validates one request against its operation; returns the violations.
fn validate(
    spec: &Value,
    template: &str,
    path_params: &BTreeMap<String, String>,
    incoming: Incoming<'_>,
    config: &Config,
) -> Vec<String> {
    let Incoming {
        method,
        headers,
        query,
        form,
    } = incoming;
    let mut out = Vec::new();
    let op_name = method.as_str().to_ascii_lowercase();
    let op = &spec["paths"][template][&op_name];
    if op.is_null() {
        out.push(format!(
            "{method} {template}: no such operation in the spec"
        ));
        return out;
    }
    // Auth.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", config.user, config.password))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        out.push(format!("{method} {template}: missing or wrong Basic auth"));
    }
    if !headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
    {
        out.push(format!(
            "{method} {template}: Accept is not application/json"
        ));
    }
    let params: Vec<&Value> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            spec["paths"][template]["parameters"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .collect();
    let param = |name: &str, place: &str| {
        params
            .iter()
            .find(|p| p["in"] == place && p["name"] == name)
            .copied()
    };
    for (name, value) in path_params {
        match param(name, "path") {
            Some(p) => {
                if let Err(e) = check_value(spec, &p["schema"], value) {
                    out.push(format!("{method} {template}: path {name}: {e}"));
                }
            }
            None => out.push(format!(
                "{method} {template}: path parameter {name} not in the spec"
            )),
        }
    }
    for (name, value) in query {
        match param(name, "query") {
            Some(p) => {
                if let Err(e) = check_value(spec, &p["schema"], value) {
                    out.push(format!("{method} {template}: query {name}: {e}"));
                }
            }
            None => out.push(format!(
                "{method} {template}: query parameter {name} not in the spec"
            )),
        }
    }
    for p in params.iter().filter(|p| p["in"] == "header") {
        let name = p["name"].as_str().unwrap_or_default();
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok())
            && let Err(e) = check_value(spec, &p["schema"], v)
        {
            out.push(format!("{method} {template}: header {name}: {e}"));
        }
    }
    if *method == Method::POST {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            out.push(format!(
                "POST {template}: Content-Type {ct:?} is not application/x-www-form-urlencoded"
            ));
        }
        let schema = &op["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
        if schema.is_null() {
            if !form.is_empty() {
                out.push(format!("POST {template}: the operation takes no form body"));
            }
            return out;
        }
        let schema = resolve(spec, schema);
        let title = schema["title"].as_str().unwrap_or("?");
        let props = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, v) in form {
            *counts.entry(k.as_str()).or_default() += 1;
            if k.ends_with("[]") {
                out.push(format!("{title}: {k}: arrays are repeated keys, not `[]`"));
                continue;
            }
            match props.get(k) {
                None => out.push(format!("{title}: unknown parameter {k}")),
                Some(p) => {
                    if let Err(e) = check_value(spec, p, v) {
                        out.push(format!("{title}: {k}: {e}"));
                    }
                }
            }
        }
        for (k, n) in counts {
            let is_array = props
                .get(k)
                .map(|p| resolve(spec, p)["type"] == "array")
                .unwrap_or(false);
            if n > 1 && !is_array {
                out.push(format!("{title}: {k} given {n} times but is not an array"));
            }
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !form.iter().any(|(k, _)| k == r) {
                out.push(format!("{title}: required parameter {r} missing"));
            }
        }
    } else if !form.is_empty() {
        out.push(format!("{method} {template}: unexpected body"));
    }
    out
}

/// An object with every property of component schema `name`, `null` unless given.
fn shaped(spec: &Value, name: &str, given: Value) -> Value {
    let mut obj = Map::new();
    if let Some(props) = spec["components"]["schemas"][name]["properties"].as_object() {
        for k in props.keys() {
            obj.insert(k.clone(), Value::Null);
        }
    }
    assert!(!obj.is_empty(), "no schema {name}");
    if let Value::Object(g) = given {
        for (k, v) in g {
            assert!(obj.contains_key(&k), "{k} is not a property of {name}");
            obj.insert(k, v);
        }
    }
    Value::Object(obj)
}

fn handle(
    state: &Mutex<State>,
    config: &Config,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let Some((spec, template, path_params)) = match_path(&path) else {
        st.violations
            .push(format!("{method} {path}: no such path in the specs"));
        return twilio_error(404, 20404, "The requested resource was not found");
    };
    st.requests.push(Recorded {
        method: method.clone(),
        path: path.clone(),
        template: template.clone(),
        query: query.clone(),
        form: form.clone(),
        raw_body: String::from_utf8_lossy(&body).into_owned(),
        headers: headers.clone(),
        at: Instant::now(),
    });
    let incoming = Incoming {
        method: &method,
        headers: &headers,
        query: &query,
        form: &form,
    };
    let problems = validate(spec, &template, &path_params, incoming, config);
    if !problems.is_empty() {
        let msg = problems.join("; ");
        st.violations.extend(problems);
        return twilio_error(400, 20001, &msg);
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let p = |k: &str| path_params.get(k).cloned().unwrap_or_default();
    let account = "AC".to_owned() + &"0".repeat(32);
    match (method.as_str(), template.as_str()) {
        ("POST", "/2010-04-01/Accounts/{AccountSid}/Calls.json") => {
            if !st.call_failures.is_empty() {
                let (status, body) = st.call_failures.remove(0);
                let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                return (s, axum::Json(body)).into_response();
            }
            let sid = next_sid(&mut st, "CA");
            let acc = p("AccountSid");
            let uri = format!("/2010-04-01/Accounts/{acc}/Calls/{sid}.json");
            let sub = |r: &str| format!("/2010-04-01/Accounts/{acc}/Calls/{sid}/{r}.json");
            let call = shaped(
                spec,
                "api.v2010.account.call",
                json!({
                    "sid": sid,
                    "account_sid": acc,
                    "to": get("To"),
                    "to_formatted": get("To"),
                    "from": get("From"),
                    "from_formatted": get("From"),
                    "status": "queued",
                    "direction": "outbound-api",
                    "api_version": "2010-04-01",
                    "date_created": "Tue, 31 Aug 2010 20:36:28 +0000",
                    "date_updated": "Tue, 31 Aug 2010 20:36:28 +0000",
                    "uri": uri,
                    "subresource_uris": {"streams": sub("Streams"), "recordings": sub("Recordings"), "events": sub("Events")},
                }),
            );
            (StatusCode::CREATED, axum::Json(call)).into_response()
        }
        ("POST", "/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json") => {
            // `Twiml` and `Url` are mutually exclusive (the spec's `Twiml` description); TwiML
            // is a `<Response>` document.
            if get("Twiml").is_some() && get("Url").is_some() {
                st.violations
                    .push("UpdateCallRequest: Twiml and Url are mutually exclusive".into());
                return twilio_error(400, 21205, "Twiml and Url are mutually exclusive");
            }
            if let Some(x) = get("Twiml") {
                let x = x.trim();
                let x = match x.strip_prefix("<?xml") {
                    Some(rest) => rest.split_once("?>").map_or("", |(_, doc)| doc),
                    None => x,
                };
                if !(x.starts_with("<Response>") && x.ends_with("</Response>")) {
                    st.violations
                        .push(format!("UpdateCallRequest: Twiml is not a <Response>: {x}"));
                    return twilio_error(400, 12100, "Document parse failure");
                }
            }
            if !st.update_failures.is_empty() {
                let (status, body) = st.update_failures.remove(0);
                let s = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                return (s, axum::Json(body)).into_response();
            }
            let (acc, sid) = (p("AccountSid"), p("Sid"));
            let call = shaped(
                spec,
                "api.v2010.account.call",
                json!({
                    "sid": sid,
                    "account_sid": acc,
                    "status": "in-progress",
                    "direction": "inbound",
                    "api_version": "2010-04-01",
                    "uri": format!("/2010-04-01/Accounts/{acc}/Calls/{sid}.json"),
                }),
            );
            axum::Json(call).into_response()
        }
        ("POST", "/v1/Services/{ChatServiceSid}/Conversations") => {
            let unique = get("UniqueName");
            if let Some(u) = &unique
                && st
                    .conversations
                    .iter()
                    .any(|c| c.unique_name.as_ref() == Some(u))
            {
                return twilio_error(
                    409,
                    50353,
                    "Conversation with provided unique name already exists",
                );
            }
            let sid = next_sid(&mut st, "CH");
            let c = Conversation {
                sid: sid.clone(),
                unique_name: unique,
                friendly_name: get("FriendlyName"),
                ..Conversation::default()
            };
            let body = conversation_json(spec, &p("ChatServiceSid"), &account, &c);
            st.conversations.push(c);
            (StatusCode::CREATED, axum::Json(body)).into_response()
        }
        ("GET", "/v1/Services/{ChatServiceSid}/Conversations/{Sid}") => {
            let key = p("Sid");
            match st
                .conversations
                .iter()
                .find(|c| c.sid == key || c.unique_name.as_deref() == Some(&key))
            {
                Some(c) => axum::Json(conversation_json(spec, &p("ChatServiceSid"), &account, c))
                    .into_response(),
                None => twilio_error(404, 20404, "The requested resource was not found"),
            }
        }
        ("POST", "/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Participants") => {
            let conv_sid = p("ConversationSid");
            let service = p("ChatServiceSid");
            let identity = get("Identity");
            let address = get("MessagingBinding.Address");
            let proxy = get("MessagingBinding.ProxyAddress");
            let taken = st.conversations.iter().any(|c| {
                c.participants.iter().any(|x| {
                    (identity.is_some() && c.sid == conv_sid && x.identity == identity)
                        || (address.is_some() && x.address == address && x.proxy == proxy)
                })
            });
            if taken {
                return if identity.is_some() {
                    twilio_error(409, 50433, "Participant already exists")
                } else {
                    twilio_error(
                        409,
                        50416,
                        "A binding for this participant and proxy address already exists",
                    )
                };
            }
            let sid = next_sid(&mut st, "MB");
            let Some(c) = st.conversations.iter_mut().find(|c| c.sid == conv_sid) else {
                return twilio_error(404, 20404, "The requested resource was not found");
            };
            let part = Participant {
                sid,
                identity,
                address,
                proxy,
            };
            c.participants.push(part.clone());
            (
                StatusCode::CREATED,
                axum::Json(participant_json(spec, &service, &account, &conv_sid, &part)),
            )
                .into_response()
        }
        ("GET", "/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Participants") => {
            let conv_sid = p("ConversationSid");
            let service = p("ChatServiceSid");
            let Some(c) = st.conversations.iter().find(|c| c.sid == conv_sid) else {
                return twilio_error(404, 20404, "The requested resource was not found");
            };
            let list: Vec<Value> = c
                .participants
                .iter()
                .map(|x| participant_json(spec, &service, &account, &conv_sid, x))
                .collect();
            axum::Json(json!({"participants": list, "meta": meta("participants")})).into_response()
        }
        (
            "GET",
            "/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Participants/{Sid}",
        ) => {
            let conv_sid = p("ConversationSid");
            let key = p("Sid");
            let found = st
                .conversations
                .iter()
                .find(|c| c.sid == conv_sid)
                .and_then(|c| {
                    c.participants
                        .iter()
                        .find(|x| x.sid == key || x.identity.as_deref() == Some(&key))
                });
            match found {
                Some(x) => axum::Json(participant_json(
                    spec,
                    &p("ChatServiceSid"),
                    &account,
                    &conv_sid,
                    x,
                ))
                .into_response(),
                None => twilio_error(404, 20404, "The requested resource was not found"),
            }
        }
        ("POST", "/v1/Services/{ChatServiceSid}/Conversations/{ConversationSid}/Messages") => {
            let conv_sid = p("ConversationSid");
            let sid = next_sid(&mut st, "IM");
            let Some(c) = st.conversations.iter_mut().find(|c| c.sid == conv_sid) else {
                return twilio_error(404, 20404, "The requested resource was not found");
            };
            let msg = shaped(
                spec,
                "conversations.v1.service.service_conversation.service_conversation_message",
                json!({
                    "sid": sid,
                    "account_sid": account,
                    "chat_service_sid": p("ChatServiceSid"),
                    "conversation_sid": conv_sid,
                    "author": get("Author").unwrap_or_else(|| "system".into()),
                    "body": get("Body"),
                    "attributes": get("Attributes").unwrap_or_else(|| "{}".into()),
                    "index": c.messages.len(),
                }),
            );
            c.messages.push(msg.clone());
            (StatusCode::CREATED, axum::Json(msg)).into_response()
        }
        ("GET", "/v1/Services/{ChatServiceSid}/ParticipantConversations") => {
            let identity = query
                .iter()
                .find(|(k, _)| k == "Identity")
                .map(|(_, v)| v.clone());
            let list: Vec<Value> = st
                .conversations
                .iter()
                .filter_map(|c| {
                    let x = c
                        .participants
                        .iter()
                        .find(|x| x.identity.is_some() && x.identity == identity)?;
                    Some(shaped(
                        spec,
                        "conversations.v1.service.service_participant_conversation",
                        json!({
                            "account_sid": account,
                            "chat_service_sid": p("ChatServiceSid"),
                            "participant_sid": x.sid,
                            "participant_identity": x.identity,
                            "conversation_sid": c.sid,
                            "conversation_unique_name": c.unique_name,
                            "conversation_friendly_name": c.friendly_name,
                            "conversation_state": "active",
                        }),
                    ))
                })
                .collect();
            axum::Json(json!({"conversations": list, "meta": meta("conversations")}))
                .into_response()
        }
        _ => {
            st.violations.push(format!(
                "{method} {template}: valid per spec, but the double does not implement it"
            ));
            twilio_error(405, 20004, "Method not allowed in this double")
        }
    }
}

fn meta(key: &str) -> Value {
    json!({"page": 0, "page_size": 50, "first_page_url": "https://conversations.twilio.com/v1/x?PageSize=50&Page=0",
           "previous_page_url": null, "url": "https://conversations.twilio.com/v1/x?PageSize=50&Page=0",
           "next_page_url": null, "key": key})
}

fn conversation_json(spec: &Value, service: &str, account: &str, c: &Conversation) -> Value {
    shaped(
        spec,
        "conversations.v1.service.service_conversation",
        json!({
            "sid": c.sid,
            "account_sid": account,
            "chat_service_sid": service,
            "unique_name": c.unique_name,
            "friendly_name": c.friendly_name,
            "state": "active",
            "attributes": "{}",
        }),
    )
}

fn participant_json(
    spec: &Value,
    service: &str,
    account: &str,
    conv: &str,
    x: &Participant,
) -> Value {
    let binding = x.address.as_ref().map(|a| {
        json!({"type": if a.starts_with("whatsapp:") { "whatsapp" } else { "sms" }, "address": a, "proxy_address": x.proxy})
    });
    shaped(
        spec,
        "conversations.v1.service.service_conversation.service_conversation_participant",
        json!({
            "sid": x.sid,
            "account_sid": account,
            "chat_service_sid": service,
            "conversation_sid": conv,
            "identity": x.identity,
            "messaging_binding": binding,
            "attributes": "{}",
        }),
    )
}

/// The double's own checks: call from one test.
pub mod self_tests {
    use super::*;

    /// Pattern matcher and "Can be:" parsing.
    pub fn patterns_and_described_values() {
        assert!(pattern_matches(
            "^AC[0-9a-fA-F]{32}$",
            &format!("AC{}", "a".repeat(32))
        ));
        assert!(!pattern_matches(
            "^AC[0-9a-fA-F]{32}$",
            &format!("AC{}", "g".repeat(32))
        ));
        assert!(pattern_matches(
            "^(SM|MM)[0-9a-fA-F]{32}$",
            &format!("MM{}", "0".repeat(32))
        ));
        assert!(pattern_matches(
            "^[a-zA-Z]{2}[0-9a-fA-F]{32}$",
            &format!("zz{}", "0".repeat(32))
        ));
        assert_eq!(
            described_values("Whether. Can be: `mono` or `dual`. The default is `mono`."),
            Some(vec!["mono".to_owned(), "dual".to_owned()])
        );
    }

    /// The validator rejects each kind of drift.
    pub fn the_validator_catches_drift() {
        let spec = &specs().api;
        let t = "/2010-04-01/Accounts/{AccountSid}/Calls.json";
        let config = Config {
            user: "u".into(),
            password: "p".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        headers.insert(header::AUTHORIZATION, "Basic dTpw".parse().unwrap());
        let mut pp = BTreeMap::new();
        pp.insert("AccountSid".to_owned(), format!("AC{}", "0".repeat(32)));
        let f = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let good = f(&[
            ("To", "+1"),
            ("From", "+2"),
            ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"),
        ]);
        assert_eq!(
            validate(
                spec,
                t,
                &pp,
                Incoming {
                    method: &Method::POST,
                    headers: &headers,
                    query: &[],
                    form: &good
                },
                &config
            ),
            Vec::<String>::new()
        );
        for (bad, why) in [
            (f(&[("From", "+2")]), "required parameter To"),
            (
                f(&[("To", "+1"), ("From", "+2"), ("Bogus", "1")]),
                "unknown parameter Bogus",
            ),
            (
                f(&[("To", "+1"), ("From", "+2"), ("Method", "PUT")]),
                "Method",
            ),
            (
                f(&[("To", "+1"), ("From", "+2"), ("Timeout", "ten")]),
                "Timeout",
            ),
            (
                f(&[("To", "+1"), ("From", "+2"), ("Record", "yes")]),
                "Record",
            ),
            (
                f(&[("To", "+1"), ("From", "+2"), ("To", "+3")]),
                "not an array",
            ),
            (
                f(&[
                    ("To", "+1"),
                    ("From", "+2"),
                    ("StatusCallbackEvent[]", "ringing"),
                ]),
                "[]",
            ),
            (
                f(&[
                    ("To", "+1"),
                    ("From", "+2"),
                    ("StatusCallbackEvent", "hangup"),
                ]),
                "StatusCallbackEvent",
            ),
            (
                f(&[("To", "+1"), ("From", "+2"), ("MachineDetection", "enable")]),
                "MachineDetection",
            ),
            (
                f(&[
                    ("To", "+1"),
                    ("From", "+2"),
                    ("StatusCallback", "/relative"),
                ]),
                "StatusCallback",
            ),
        ] {
            let v = validate(
                spec,
                t,
                &pp,
                Incoming {
                    method: &Method::POST,
                    headers: &headers,
                    query: &[],
                    form: &bad,
                },
                &config,
            );
            assert!(v.iter().any(|m| m.contains(why)), "{bad:?}: {v:?}");
        }
        let mut no_auth = headers.clone();
        no_auth.remove(header::AUTHORIZATION);
        assert!(
            !validate(
                spec,
                t,
                &pp,
                Incoming {
                    method: &Method::POST,
                    headers: &no_auth,
                    query: &[],
                    form: &good
                },
                &config
            )
            .is_empty()
        );
        pp.insert("AccountSid".to_owned(), "ACnope".to_owned());
        assert!(
            !validate(
                spec,
                t,
                &pp,
                Incoming {
                    method: &Method::POST,
                    headers: &headers,
                    query: &[],
                    form: &good
                },
                &config
            )
            .is_empty()
        );
    }
}
