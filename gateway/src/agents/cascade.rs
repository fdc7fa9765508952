//! Settings and construction of the `cascade` agent (`HARK_AGENT=cascade`): speech to text →
//! language model → text to speech over any OpenAI-compatible API
//! ([`hark_engine::agents::cascade`]).
//!
//! Each stage has its own base URL, key and model, so OpenAI, other hosted services and local
//! servers mix freely. `OPENAI_BASE_URL` and `OPENAI_API_KEY` are the defaults for all three;
//! `HARK_STT_*`, `HARK_LLM_*` and `HARK_TTS_*` override them per stage. A key is required only
//! for a stage that talks to `api.openai.com`; local servers may need none.
//!
//! In the configuration file these are keys of `[openai]`, `[agent.cascade]` and
//! `[agent.cascade.stt|llm|tts]` (`HARK_STT_MODEL` is `agent.cascade.stt.model`; the table is
//! [`crate::config::keys::SETTINGS`]).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `OPENAI_BASE_URL` | `https://api.openai.com/v1` | base URL of every stage (`/v1` is added when missing) |
//! | `OPENAI_API_KEY` | — | key of every stage (`Authorization: Bearer …`) |
//! | `HARK_STT_BASE_URL`, `HARK_STT_API_KEY` | the above | STT endpoint |
//! | `HARK_STT_MODEL` | `gpt-4o-mini-transcribe` | transcription model |
//! | `HARK_STT_STREAM` | `true` for `gpt-4o*` models | ask for SSE transcription events |
//! | `HARK_STT_PROMPT` | — | transcription prompt (names, jargon) |
//! | `HARK_LANGUAGE` | — | ISO-639-1 language of callers, sent to STT |
//! | `HARK_LLM_BASE_URL`, `HARK_LLM_API_KEY` | the above | LLM endpoint |
//! | `HARK_LLM_MODEL` | `gpt-4o-mini` | chat model |
//! | `HARK_LLM_TEMPERATURE`, `HARK_LLM_MAX_TOKENS` | — | sampling settings |
//! | `HARK_TTS_BASE_URL`, `HARK_TTS_API_KEY` | the above | TTS endpoint |
//! | `HARK_TTS_MODEL` | `gpt-4o-mini-tts` | speech model |
//! | `HARK_TTS_VOICE` | `alloy` | voice |
//! | `HARK_TTS_INSTRUCTIONS`, `HARK_TTS_SPEED` | — | voice style, speed 0.25–4 |
//! | `HARK_SYSTEM_PROMPT` | a short phone-assistant prompt | system prompt |
//! | `HARK_SYSTEM_PROMPT_PARAM` | `systemPrompt` | `<Parameter>` that overrides it per call |
//! | `HARK_GREETING` | `Hello! How can I help you today?` | spoken at the start; `off` for none |
//! | `HARK_GREETING_PARAM` | `greeting` | `<Parameter>` that overrides it per call |
//! | `HARK_FALLBACK_TEXT` | `Sorry, I'm having trouble…` | spoken when providers fail |
//! | `HARK_GOODBYE_TEXT`, `HARK_TRANSFER_TEXT` | `Goodbye!`, `One moment…` | said by tools when the model says nothing |
//! | `HARK_TRANSFER_FAILED_TEXT` | `Sorry, I couldn't transfer your call right now…` | said when a transfer fails; the call goes on |
//! | `HARK_TOOLS` | `end_call,transfer_call` | tools offered to the model; `none` for none |
//! | `HARK_TRANSFER_ALLOW` | — | comma-separated numbers `transfer_call` may dial (all when unset) |
//! | `HARK_BACKCHANNEL_WORDS` | `uh huh, mm hmm, mhm, yeah, okay, right, …` | comma-separated phrases: a short turn over the agent (under `HARK_BACKCHANNEL_CHECK_MS`) made only of these, or of no words, lets it play on; `off` for no word check |
//! | `HARK_STT_TIMEOUT_MS` | 1500 | first transcription event (or the JSON answer), from the request |
//! | `HARK_LLM_TIMEOUT_MS` | 1500 | first content or tool-call token, from the request |
//! | `HARK_TTS_TIMEOUT_MS` | 1200 | first audio bytes, from the request |
//! | `HARK_PROVIDER_IDLE_MS` | — | sets the three stall deadlines below at once |
//! | `HARK_STT_STALL_MS`, `HARK_LLM_STALL_MS`, `HARK_TTS_STALL_MS` | 1000, 1500, 1000 | a stream that sends nothing this long after its last data has stalled |
//! | `HARK_FILLER_TEXT` | `One moment.` | played when nothing of the answer was heard by `HARK_FILLER_AFTER_MS`; `off` for none |
//! | `HARK_FILLER_AFTER_MS` | 1800 | after hark's end of the caller's turn |
//! | `HARK_IDLE_REPROMPT_MS` | 8000 | caller silence (after the agent finished) before a re-prompt; `0` or `off` for none |
//! | `HARK_IDLE_REPROMPT_TEXT` | — | the re-prompt; unset: the model is told the caller is silent and re-prompts |
//! | `HARK_IDLE_HANGUP_MS` | 20000 | caller silence before the goodbye and hang-up (same start); `0` or `off` for none |
//! | `HARK_IDLE_GOODBYE_TEXT` | `HARK_GOODBYE_TEXT` | said before an idle hang-up; `off` for none |
//! | `HARK_VOICEMAIL_TEXT` | — | left on an answering machine (outbound calls with `machine_detection: DetectMessageEnd`), `{{placeholders}}` filled, then the hang-up; unset: hang up on machines |
//! | `HARK_RETRY_MAX` | 2 | retries per request |
//! | `HARK_RETRY_BUDGET_MS` | 3000 | retries only start within this long after the caller's turn |
//! | `HARK_RETRY_BACKOFF_MS` | 150 | first backoff, doubled per retry |

use hark_engine::Agent;
use hark_engine::agents::cascade::config as cascade_config;
use hark_engine::agents::cascade::{CascadeAgent, CascadeConfig, CascadeError, Endpoint};
use hark_engine::agents::context::ContextConfig;

use crate::config::{ConfigError, Values};

/// Settings of the `cascade` agent (`[agent.cascade]` and `[openai]` in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The engine-side configuration every call's agent is built from (boxed: it is large
    /// next to the other agents' settings).
    pub config: Box<CascadeConfig>,
}

/// Whether `base` is OpenAI's hosted API (which always needs a key).
fn is_openai(base: &str) -> bool {
    let lower = base.to_ascii_lowercase();
    let host = lower
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "api.openai.com"
}

/// A text setting where `off` or `none` (any case) means none.
fn unless_off(text: String) -> Option<String> {
    match text.to_ascii_lowercase().as_str() {
        "off" | "none" => None,
        _ => Some(text),
    }
}

/// One stage's endpoint: its own URL, key and model variables over `OPENAI_BASE_URL` (`base`)
/// and `OPENAI_API_KEY` (`key`).
fn endpoint(
    v: &Values,
    (base, key): (&str, Option<&String>),
    (url_var, key_var, model_var): (&'static str, &'static str, &'static str),
    default_model: &str,
) -> Result<Endpoint, ConfigError> {
    let own_url = v.http_url(url_var)?;
    let url = own_url.clone().unwrap_or_else(|| base.to_string());
    let api_key = v.get(key_var).or_else(|| key.cloned());
    if api_key.is_none() && is_openai(&url) {
        let var = if own_url.is_some() {
            key_var
        } else {
            "OPENAI_API_KEY"
        };
        return Err(ConfigError::new(
            var,
            format!(
                "HARK_AGENT=cascade calls {url} and needs an API key (set OPENAI_API_KEY, or {key_var} for this stage)"
            ),
        ));
    }
    let model = v
        .get(model_var)
        .unwrap_or_else(|| default_model.to_string());
    Ok(Endpoint::new(url, api_key, model.trim()))
}

impl Settings {
    /// Reads the settings from the environment only, through `lookup` (empty values count as
    /// unset). For tests and the bench; `hark serve` reads them with the rest of
    /// [`crate::config::Config`].
    ///
    /// # Errors
    /// As [`Settings::from_values`].
    pub fn from_lookup(
        lookup: &mut dyn FnMut(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Settings::from_values(&Values::from_lookup(lookup))
    }

    /// Parses the settings from `v`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the missing or bad variable: a stage on `api.openai.com` without
    /// a key names `OPENAI_API_KEY` (or the stage's `HARK_*_API_KEY`).
    pub fn from_values(v: &Values) -> Result<Self, ConfigError> {
        let mut c = CascadeConfig::default();
        stages(v, &mut c)?;
        conversation(v, &mut c)?;
        operator(v, &mut c)?;
        deadlines(v, &mut c)?;
        idle(v, &mut c)?;
        c.validate()
            .map_err(|e| ConfigError::new("HARK_* cascade settings", e.to_string()))?;
        Ok(Settings {
            config: Box::new(c),
        })
    }
}

/// The three stages' endpoints and their model settings.
fn stages(v: &Values, c: &mut CascadeConfig) -> Result<(), ConfigError> {
    let base = v
        .http_url("OPENAI_BASE_URL")?
        .unwrap_or_else(|| hark_engine::agents::cascade::config::OPENAI_BASE_URL.to_string());
    let key = v.get("OPENAI_API_KEY");
    let shared = (base.as_str(), key.as_ref());
    c.stt.endpoint = endpoint(
        v,
        shared,
        ("HARK_STT_BASE_URL", "HARK_STT_API_KEY", "HARK_STT_MODEL"),
        &c.stt.endpoint.model,
    )?;
    c.llm.endpoint = endpoint(
        v,
        shared,
        ("HARK_LLM_BASE_URL", "HARK_LLM_API_KEY", "HARK_LLM_MODEL"),
        &c.llm.endpoint.model,
    )?;
    c.tts.endpoint = endpoint(
        v,
        shared,
        ("HARK_TTS_BASE_URL", "HARK_TTS_API_KEY", "HARK_TTS_MODEL"),
        &c.tts.endpoint.model,
    )?;
    // Streaming transcription: gpt-4o transcribe models stream; whisper-1 ignores it.
    c.stt.stream = match v.flag("HARK_STT_STREAM")? {
        Some(on) => on,
        None => c.stt.endpoint.model.starts_with("gpt-4o"),
    };
    c.stt.prompt = v.get("HARK_STT_PROMPT");
    c.stt.language = v.text("HARK_LANGUAGE");
    if let Some(l) = &c.stt.language
        && !(l.len() == 2 && l.bytes().all(|b| b.is_ascii_lowercase()))
    {
        return Err(ConfigError::new(
            "HARK_LANGUAGE",
            format!("{l:?} is not an ISO-639-1 code like en or de"),
        ));
    }
    if let Some(t) = v.num_in::<f32>("HARK_LLM_TEMPERATURE", 0.0, 2.0)? {
        c.llm.temperature = Some(t);
    }
    if let Some(n) = v.num("HARK_LLM_MAX_TOKENS")? {
        c.llm.max_tokens = Some(n);
    }
    if let Some(voice) = v.text("HARK_TTS_VOICE") {
        c.tts.voice = voice;
    }
    c.tts.instructions = v.get("HARK_TTS_INSTRUCTIONS");
    if let Some(speed) = v.num_in::<f32>("HARK_TTS_SPEED", 0.25, 4.0)? {
        c.tts.speed = Some(speed);
    }
    Ok(())
}

/// Prompts, spoken texts and tools.
fn conversation(v: &Values, c: &mut CascadeConfig) -> Result<(), ConfigError> {
    if let Some(p) = v.get("HARK_SYSTEM_PROMPT") {
        c.system_prompt = p;
    }
    if let Some(g) = v.text("HARK_GREETING") {
        c.greeting = unless_off(g);
    }
    if let Some(f) = v.text("HARK_FILLER_TEXT") {
        c.filler_text = unless_off(f);
    }
    c.voicemail_text = super::voicemail_text(v);
    for (var, field) in [
        ("HARK_SYSTEM_PROMPT_PARAM", &mut c.system_prompt_param),
        ("HARK_GREETING_PARAM", &mut c.greeting_param),
        ("HARK_FALLBACK_TEXT", &mut c.fallback_text),
        ("HARK_GOODBYE_TEXT", &mut c.goodbye_text),
        ("HARK_TRANSFER_TEXT", &mut c.transfer_text),
        ("HARK_TRANSFER_FAILED_TEXT", &mut c.transfer_failed_text),
    ] {
        if let Some(t) = v.text(var) {
            *field = t;
        }
    }
    if let Some(tools) = v.list("HARK_TOOLS", ',') {
        c.tools.end_call = false;
        c.tools.transfer_call = false;
        let (entries, _) = v.tools();
        for t in tools {
            match t.as_str() {
                "end_call" => c.tools.end_call = true,
                "transfer_call" => c.tools.transfer_call = true,
                "none" => {}
                // One of the file's `[[tools]]`: kept by `http_tools`.
                name if entries.iter().any(|e| e.name.trim() == name) => {}
                other => {
                    let mut names = vec!["end_call", "transfer_call", "none"];
                    names.extend(entries.iter().map(|e| e.name.trim()));
                    return Err(ConfigError::new(
                        "HARK_TOOLS",
                        format!(
                            "unknown tool {other:?} (available: {}; define your own as [[tools]] in hark.toml)",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    if let Some(allow) = v.list("HARK_TRANSFER_ALLOW", ',') {
        if let Some(n) = allow
            .iter()
            .find(|n| !hark_engine::agents::cascade::valid_transfer_target(n))
        {
            return Err(ConfigError::new(
                "HARK_TRANSFER_ALLOW",
                format!("{n:?} is not an E.164 number (+14155550100) or a sip: URI"),
            ));
        }
        c.tools.transfer_allow = allow;
    }
    if let Some(words) = v.list("HARK_BACKCHANNEL_WORDS", ',') {
        let off = matches!(words.as_slice(), [w] if unless_off(w.clone()).is_none());
        c.backchannel_words = if off { Vec::new() } else { words };
    }
    Ok(())
}

/// The operator's backend (read by the one parser of `[operator]`): the per-call context
/// (`HARK_CONTEXT_URL`), and the tools, the file's `[[tools]]` (those `HARK_TOOLS` names, when
/// it is set), both signed with `HARK_OPERATOR_SECRET`.
fn operator(v: &Values, c: &mut CascadeConfig) -> Result<(), ConfigError> {
    let operator = crate::operator::OperatorSettings::from_values(v)?;
    if let Some(url) = &operator.context_url {
        c.context = Some(ContextConfig {
            url: url.clone(),
            timeout_ms: operator.context_timeout_ms,
            secret: operator.require_secret(crate::operator::ENV_CONTEXT_URL)?,
        });
    }
    let chosen = v.list("HARK_TOOLS", ',');
    c.tools.http = super::http_tools(v, chosen.as_deref())?;
    Ok(())
}

/// Stage deadlines, the filler, and retries (all ms).
fn deadlines(v: &Values, c: &mut CascadeConfig) -> Result<(), ConfigError> {
    if let Some(stall) = v.num::<u64>("HARK_PROVIDER_IDLE_MS")? {
        c.stt.stall_ms = stall;
        c.llm.stall_ms = stall;
        c.tts.stall_ms = stall;
    }
    for (var, field) in [
        ("HARK_STT_TIMEOUT_MS", &mut c.stt.timeout_ms),
        ("HARK_LLM_TIMEOUT_MS", &mut c.llm.first_token_timeout_ms),
        ("HARK_TTS_TIMEOUT_MS", &mut c.tts.first_byte_timeout_ms),
        ("HARK_STT_STALL_MS", &mut c.stt.stall_ms),
        ("HARK_LLM_STALL_MS", &mut c.llm.stall_ms),
        ("HARK_TTS_STALL_MS", &mut c.tts.stall_ms),
        ("HARK_RETRY_BUDGET_MS", &mut c.retry.budget_ms),
        ("HARK_RETRY_BACKOFF_MS", &mut c.retry.backoff_ms),
    ] {
        if let Some(ms) = v.num(var)? {
            *field = ms;
        }
    }
    if let Some(after) = v.num_in("HARK_FILLER_AFTER_MS", 100, 60_000)? {
        c.filler_after_ms = after;
    }
    if let Some(n) = v.num::<u32>("HARK_RETRY_MAX")? {
        c.retry.max_retries = n.min(10);
    }
    Ok(())
}

/// A silent caller: the re-prompt and the hang-up (ms within 1000..=3600000; `0`, `off` or
/// `none` for never), their texts.
fn idle(v: &Values, c: &mut CascadeConfig) -> Result<(), ConfigError> {
    let ms = |var: &'static str, default: u64| -> Result<Option<u64>, ConfigError> {
        match v.text(var) {
            None => Ok(Some(default)),
            Some(t) if matches!(t.to_ascii_lowercase().as_str(), "0" | "off" | "none") => Ok(None),
            Some(_) => v.num_in(var, 1_000, 3_600_000),
        }
    };
    c.idle_reprompt_ms = ms("HARK_IDLE_REPROMPT_MS", cascade_config::IDLE_REPROMPT_MS)?;
    c.idle_hangup_ms = ms("HARK_IDLE_HANGUP_MS", cascade_config::IDLE_HANGUP_MS)?;
    if let (Some(r), Some(h)) = (c.idle_reprompt_ms, c.idle_hangup_ms)
        && h <= r
    {
        return Err(ConfigError::new(
            "HARK_IDLE_HANGUP_MS",
            format!("{h} ms must be longer than HARK_IDLE_REPROMPT_MS ({r} ms)"),
        ));
    }
    c.idle_reprompt_text = v.text("HARK_IDLE_REPROMPT_TEXT").and_then(unless_off);
    // `off`: hang up without a word (an empty goodbye).
    c.idle_goodbye_text = v
        .text("HARK_IDLE_GOODBYE_TEXT")
        .map(|t| unless_off(t).unwrap_or_default());
    Ok(())
}

/// A new agent for one call.
///
/// # Errors
/// [`CascadeError`] when the settings are unusable (those that [`Settings::from_values`]
/// checked, so not expected).
pub fn build(settings: &Settings) -> Result<Box<dyn Agent>, CascadeError> {
    Ok(Box::new(CascadeAgent::new((*settings.config).clone())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(&mut |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    /// `hark.toml` text with the environment `vars` on top.
    fn from_file(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_values(&crate::agents::test_tools::values(text, vars))
    }

    #[test]
    fn file_tools_are_offered_signed_and_chosen_by_hark_tools() {
        let file = r#"
[openai]
api_key = "sk-1"

[[tools]]
name = "lookup_balance"
description = "The payer's open balance."
url = "http://127.0.0.1:9/balance"
parameters = { type = "object", properties = { payerId = { type = "string" } } }

[[tools]]
name = "record_promise"
description = "Records a promise to pay."
url = "http://127.0.0.1:9/promise"
parameters = { type = "object" }
"#;
        let e = from_file(file, &[]).unwrap_err();
        assert_eq!(e.var, "HARK_OPERATOR_SECRET", "{e}");
        let secret = ("HARK_OPERATOR_SECRET", "0123456789abcdef0123");
        let s = from_file(file, &[secret]).unwrap();
        let names = |s: &Settings| -> Vec<String> {
            s.config
                .tools
                .http
                .tools
                .iter()
                .map(|t| t.name.clone())
                .collect()
        };
        assert_eq!(names(&s), ["lookup_balance", "record_promise"]);
        assert!(s.config.tools.end_call && s.config.tools.http.secret.is_some());
        // HARK_TOOLS picks among hark's tools and the file's.
        let s = from_file(file, &[secret, ("HARK_TOOLS", "end_call,record_promise")]).unwrap();
        assert_eq!(names(&s), ["record_promise"]);
        assert!(s.config.tools.end_call && !s.config.tools.transfer_call);
        let e = from_file(file, &[secret, ("HARK_TOOLS", "lookup_order")]).unwrap_err();
        assert_eq!(e.var, "HARK_TOOLS");
        assert!(
            e.reason.contains("lookup_balance") && e.reason.contains("[[tools]]"),
            "{e}"
        );
    }

    #[test]
    fn openai_needs_a_key_and_names_the_variable() {
        let e = read(&[]).unwrap_err();
        assert_eq!(e.var, "OPENAI_API_KEY");
        let s = read(&[("OPENAI_API_KEY", "sk-1")]).unwrap();
        assert_eq!(s.config.llm.endpoint.api_key.as_deref(), Some("sk-1"));
        assert_eq!(
            s.config.stt.endpoint.url("/audio/transcriptions"),
            "https://api.openai.com/v1/audio/transcriptions"
        );
        assert!(s.config.stt.stream);
        // A stage moved to OpenAI explicitly names its own key variable.
        let e = read(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
            ("HARK_TTS_BASE_URL", "https://api.openai.com/v1"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "HARK_TTS_API_KEY");
    }

    #[test]
    fn local_servers_per_stage_without_keys() {
        let s = read(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:8000"),
            ("HARK_STT_BASE_URL", "http://127.0.0.1:9000/v1/"),
            ("HARK_STT_MODEL", "whisper-1"),
            ("HARK_LLM_MODEL", "llama3.1"),
            ("HARK_TTS_BASE_URL", "http://127.0.0.1:8880/v1"),
            ("HARK_TTS_API_KEY", "kokoro"),
            ("HARK_TTS_VOICE", "af_bella"),
            ("HARK_GREETING", "off"),
            ("HARK_LANGUAGE", "de"),
            ("HARK_TOOLS", "end_call"),
            ("HARK_RETRY_BUDGET_MS", "2500"),
        ])
        .unwrap();
        let c = &s.config;
        assert_eq!(c.stt.endpoint.url("/x"), "http://127.0.0.1:9000/v1/x");
        assert!(!c.stt.stream, "whisper-1 does not stream");
        assert_eq!(c.llm.endpoint.url("/x"), "http://127.0.0.1:8000/v1/x");
        assert_eq!(c.llm.endpoint.api_key, None);
        assert_eq!(c.llm.endpoint.model, "llama3.1");
        assert_eq!(c.tts.endpoint.api_key.as_deref(), Some("kokoro"));
        assert_eq!(c.tts.voice, "af_bella");
        assert_eq!(c.greeting, None);
        assert_eq!(c.stt.language.as_deref(), Some("de"));
        assert!(c.tools.end_call && !c.tools.transfer_call);
        assert_eq!(c.retry.budget_ms, 2500);
        assert!(build(&s).is_ok());
    }

    #[test]
    fn deadlines_and_filler() {
        let s = read(&[("OPENAI_API_KEY", "k")]).unwrap();
        let c = &s.config;
        assert_eq!(
            (
                c.stt.timeout_ms,
                c.llm.first_token_timeout_ms,
                c.tts.first_byte_timeout_ms
            ),
            (1500, 1500, 1200)
        );
        assert_eq!(
            (c.stt.stall_ms, c.llm.stall_ms, c.tts.stall_ms),
            (1000, 1500, 1000)
        );
        assert_eq!(c.filler_text.as_deref(), Some("One moment."));
        assert_eq!(c.filler_after_ms, 1800);
        assert!(c.backchannel_words.iter().any(|w| w == "uh huh"));
        let s = read(&[
            ("OPENAI_API_KEY", "k"),
            ("HARK_BACKCHANNEL_WORDS", "oui, d'accord ,ah bon"),
        ])
        .unwrap();
        assert_eq!(s.config.backchannel_words, ["oui", "d'accord", "ah bon"]);
        let s = read(&[("OPENAI_API_KEY", "k"), ("HARK_BACKCHANNEL_WORDS", "off")]).unwrap();
        assert!(s.config.backchannel_words.is_empty());
        let s = read(&[
            ("OPENAI_API_KEY", "k"),
            ("HARK_PROVIDER_IDLE_MS", "2000"),
            ("HARK_LLM_STALL_MS", "3000"),
            ("HARK_FILLER_TEXT", "off"),
            ("HARK_FILLER_AFTER_MS", "1200"),
        ])
        .unwrap();
        let c = &s.config;
        assert_eq!(
            (c.stt.stall_ms, c.llm.stall_ms, c.tts.stall_ms),
            (2000, 3000, 2000)
        );
        assert_eq!(c.filler_text, None);
        assert_eq!(c.filler_after_ms, 1200);
        let s = read(&[
            ("OPENAI_API_KEY", "k"),
            ("HARK_FILLER_TEXT", "Just a second."),
        ])
        .unwrap();
        assert_eq!(s.config.filler_text.as_deref(), Some("Just a second."));
    }

    #[test]
    fn idle_defaults_texts_and_off() {
        let s = read(&[("OPENAI_API_KEY", "k")]).unwrap();
        let c = &s.config;
        assert_eq!(
            (c.idle_reprompt_ms, c.idle_hangup_ms),
            (Some(8000), Some(20000))
        );
        assert_eq!(
            (
                c.idle_reprompt_text.as_deref(),
                c.idle_goodbye_text.as_deref()
            ),
            (None, None)
        );
        let s = read(&[
            ("OPENAI_API_KEY", "k"),
            ("HARK_IDLE_REPROMPT_MS", "off"),
            ("HARK_IDLE_HANGUP_MS", "30000"),
            ("HARK_IDLE_REPROMPT_TEXT", "Still there?"),
            ("HARK_IDLE_GOODBYE_TEXT", "off"),
        ])
        .unwrap();
        let c = &s.config;
        assert_eq!((c.idle_reprompt_ms, c.idle_hangup_ms), (None, Some(30000)));
        assert_eq!(c.idle_reprompt_text.as_deref(), Some("Still there?"));
        assert_eq!(c.idle_goodbye_text.as_deref(), Some(""));
        let text = "[agent.cascade]\nidle_reprompt_ms = 5000\nidle_hangup_ms = 0\nidle_goodbye_text = \"Bye.\"\n";
        let s = from_file(text, &[("OPENAI_API_KEY", "k")]).unwrap();
        let c = &s.config;
        assert_eq!((c.idle_reprompt_ms, c.idle_hangup_ms), (Some(5000), None));
        assert_eq!(c.idle_goodbye_text.as_deref(), Some("Bye."));
    }

    #[test]
    fn voicemail_text_from_the_environment_or_the_file() {
        let s = read(&[("OPENAI_API_KEY", "k")]).unwrap();
        assert_eq!(s.config.voicemail_text, None);
        let s = read(&[
            ("OPENAI_API_KEY", "k"),
            ("HARK_VOICEMAIL_TEXT", "Hi {{name}}, call us back."),
        ])
        .unwrap();
        assert_eq!(
            s.config.voicemail_text.as_deref(),
            Some("Hi {{name}}, call us back.")
        );
        let s = read(&[("OPENAI_API_KEY", "k"), ("HARK_VOICEMAIL_TEXT", "off")]).unwrap();
        assert_eq!(s.config.voicemail_text, None);
        let text = "[agent]\nvoicemail_text = \"Please call back.\"\n";
        let s = from_file(text, &[("OPENAI_API_KEY", "k")]).unwrap();
        assert_eq!(
            s.config.voicemail_text.as_deref(),
            Some("Please call back.")
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = [("OPENAI_API_KEY", "k")];
        for (var, val) in [
            ("OPENAI_BASE_URL", "ftp://x"),
            ("HARK_LLM_BASE_URL", "localhost:8000"),
            ("HARK_TTS_SPEED", "9"),
            ("HARK_LLM_TEMPERATURE", "hot"),
            ("HARK_STT_STREAM", "maybe"),
            ("HARK_LANGUAGE", "english"),
            ("HARK_TOOLS", "launch_rockets"),
            ("HARK_TRANSFER_ALLOW", "555-1234"),
            ("HARK_RETRY_MAX", "-1"),
            ("HARK_FILLER_AFTER_MS", "5"),
            ("HARK_TTS_STALL_MS", "soon"),
            ("HARK_IDLE_REPROMPT_MS", "50"),
            ("HARK_IDLE_HANGUP_MS", "later"),
            ("HARK_IDLE_HANGUP_MS", "5000"),
        ] {
            let mut v = base.to_vec();
            v.push((var, val));
            let e = read(&v).unwrap_err();
            assert_eq!(e.var, var, "{e}");
        }
    }
}
