//! The one table of settings: every environment variable hark reads and its key in the
//! configuration file (`hark.toml`), and the nearest-name suggestions for unknown ones.
//!
//! A variable and its key mean the same thing and are parsed by the same code: the file's value
//! is used when the variable is unset (or empty). Keys are `section.name` (or
//! `section.sub.name`), lower case; a list setting may be written in the file as a TOML array,
//! which is the variable's value joined by [`Setting::list`].

/// The variable naming the configuration file (`hark serve --config PATH` wins over it). It is
/// the one variable without a key: a file cannot name itself.
pub const CONFIG_VAR: &str = "HARK_CONFIG";

/// One setting: its environment variable and its key in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable, e.g. `HARK_STOP_MS`.
    pub var: &'static str,
    /// The file key, e.g. `call.stop_ms`.
    pub key: &'static str,
    /// For list settings, the separator of the variable's value (`,` or `|`); the file may
    /// then give a TOML array of strings instead.
    pub list: Option<char>,
}

const fn s(var: &'static str, key: &'static str) -> Setting {
    Setting {
        var,
        key,
        list: None,
    }
}

const fn l(var: &'static str, key: &'static str, sep: char) -> Setting {
    Setting {
        var,
        key,
        list: Some(sep),
    }
}

/// Every setting hark reads, grouped by file section. A test keeps it in step with the
/// variables quoted in the sources and with `hark.toml.example`.
pub const SETTINGS: &[Setting] = &[
    // server: what `hark serve` listens on and how it answers `/voice`.
    s("HARK_ADDR", "server.addr"),
    s("HARK_PUBLIC_URL", "server.public_url"),
    s("HARK_WORKERS", "server.workers"),
    s("HARK_SHUTDOWN_TIMEOUT_S", "server.shutdown_timeout_s"),
    s("HARK_DRAIN_S", "server.drain_s"),
    s("HARK_METRICS_TOKEN", "server.metrics_token"),
    s("HARK_METRICS_ADDR", "server.metrics_addr"),
    l("HARK_STREAM_PARAMS", "server.stream_params", ','),
    l("HARK_AFTER_CONNECT", "server.after_connect", '|'),
    l("HARK_DEV_INSECURE", "server.dev_insecure", ','),
    s("HARK_LOG_FORMAT", "log.format"),
    // limits: connection limits and deadlines.
    s(
        "HARK_MAX_PENDING_CONNECTIONS",
        "limits.max_pending_connections",
    ),
    s("HARK_HEADER_TIMEOUT_S", "limits.header_timeout_s"),
    s(
        "HARK_WS_HANDSHAKE_TIMEOUT_S",
        "limits.ws_handshake_timeout_s",
    ),
    s("HARK_START_TIMEOUT_S", "limits.start_timeout_s"),
    s("HARK_IDLE_TIMEOUT_S", "limits.idle_timeout_s"),
    // call: per-call engine settings (VAD, turn-taking, playout).
    s("HARK_VAD", "call.vad"),
    s("HARK_VAD_THRESHOLD_PCT", "call.vad_threshold_pct"),
    s("HARK_VAD_MODE", "call.vad_mode"),
    s("HARK_VAD_RATE", "call.vad_rate"),
    s("HARK_NOISE_MARGIN_DB", "call.noise_margin_db"),
    s("HARK_STOP_MS", "call.stop_ms"),
    s("HARK_MIN_UTTERANCE_MS", "call.min_utterance_ms"),
    s("HARK_START_VOICED_MS", "call.start_voiced_ms"),
    s("HARK_MIN_INTERRUPTION_MS", "call.min_interruption_ms"),
    s("HARK_RESUME_AFTER_MS", "call.resume_after_ms"),
    s("HARK_BACKCHANNEL_MAX_MS", "call.backchannel_max_ms"),
    s("HARK_BACKCHANNEL_CHECK_MS", "call.backchannel_check_ms"),
    s("HARK_END_OF_TURN", "call.end_of_turn"),
    s(
        "HARK_TURN_MODEL_THRESHOLD_PCT",
        "call.turn_model_threshold_pct",
    ),
    s("HARK_TURN_MODEL_STOP_MS", "call.turn_model_stop_ms"),
    s("HARK_TURN_MODEL_THREADS", "call.turn_model_threads"),
    s("HARK_LEAD_MS", "call.lead_ms"),
    s("HARK_REFILL_MS", "call.refill_ms"),
    s("HARK_MARK_EVERY_MS", "call.mark_every_ms"),
    // twilio: account, credentials and REST bases.
    s("TWILIO_ACCOUNT_SID", "twilio.account_sid"),
    s("TWILIO_AUTH_TOKEN", "twilio.auth_token"),
    s("TWILIO_API_KEY", "twilio.api_key"),
    s("TWILIO_API_SECRET", "twilio.api_secret"),
    s("TWILIO_TWIML_APP_SID", "twilio.twiml_app_sid"),
    s(
        "TWILIO_CONVERSATIONS_SERVICE_SID",
        "twilio.conversations_service_sid",
    ),
    s("TWILIO_PHONE_NUMBER", "twilio.phone_number"),
    s("TWILIO_VOICE_REGION", "twilio.voice_region"),
    s("HARK_TWILIO_API_BASE", "twilio.api_base"),
    s(
        "HARK_TWILIO_CONVERSATIONS_BASE",
        "twilio.conversations_base",
    ),
    // api: the gateway API (tokens, outbound calls, Conversations).
    l("HARK_API_KEY", "api.keys", ','),
    s(
        "HARK_TRUSTED_IDENTITY_HEADER",
        "api.trusted_identity_header",
    ),
    s("HARK_CALLS_PER_SECOND", "api.calls_per_second"),
    s("HARK_CALL_QUEUE", "api.call_queue"),
    s("HARK_TOKEN_TTL_S", "api.token_ttl_s"),
    s("HARK_RATE_LIMIT_PER_MIN", "api.rate_limit_per_min"),
    s("HARK_RATE_LIMIT_BURST", "api.rate_limit_burst"),
    // records: the call records' database.
    s("HARK_DATABASE_URL", "records.database_url"),
    s("HARK_STORE_QUEUE", "records.store_queue"),
    s("HARK_STORE_COMMIT_MS", "records.store_commit_ms"),
    s("HARK_NODE_ID", "records.node_id"),
    s("HARK_NODE_LOST_AFTER_S", "records.node_lost_after_s"),
    // recording: call audio recorded by hark.
    s("HARK_RECORD", "recording.enabled"),
    s("HARK_RECORD_DIR", "recording.dir"),
    s("HARK_RECORD_RETENTION_DAYS", "recording.retention_days"),
    // operator: hark's signed requests to the operator's backend.
    s("HARK_OPERATOR_SECRET", "operator.secret"),
    s("HARK_EVENTS_URL", "operator.events_url"),
    s("HARK_CONTEXT_URL", "operator.context_url"),
    s("HARK_CONTEXT_TIMEOUT_MS", "operator.context_timeout_ms"),
    // agent: which agent answers, and each agent's settings.
    s("HARK_AGENT", "agent.kind"),
    s("HARK_VOICEMAIL_TEXT", "agent.voicemail_text"),
    s("OPENAI_API_KEY", "openai.api_key"),
    s("OPENAI_BASE_URL", "openai.base_url"),
    s("HARK_LANGUAGE", "agent.cascade.language"),
    s("HARK_STT_BASE_URL", "agent.cascade.stt.base_url"),
    s("HARK_STT_API_KEY", "agent.cascade.stt.api_key"),
    s("HARK_STT_MODEL", "agent.cascade.stt.model"),
    s("HARK_STT_STREAM", "agent.cascade.stt.stream"),
    s("HARK_STT_PROMPT", "agent.cascade.stt.prompt"),
    s("HARK_STT_TIMEOUT_MS", "agent.cascade.stt.timeout_ms"),
    s("HARK_STT_STALL_MS", "agent.cascade.stt.stall_ms"),
    s("HARK_LLM_BASE_URL", "agent.cascade.llm.base_url"),
    s("HARK_LLM_API_KEY", "agent.cascade.llm.api_key"),
    s("HARK_LLM_MODEL", "agent.cascade.llm.model"),
    s("HARK_LLM_TEMPERATURE", "agent.cascade.llm.temperature"),
    s("HARK_LLM_MAX_TOKENS", "agent.cascade.llm.max_tokens"),
    s("HARK_LLM_TIMEOUT_MS", "agent.cascade.llm.timeout_ms"),
    s("HARK_LLM_STALL_MS", "agent.cascade.llm.stall_ms"),
    s("HARK_TTS_BASE_URL", "agent.cascade.tts.base_url"),
    s("HARK_TTS_API_KEY", "agent.cascade.tts.api_key"),
    s("HARK_TTS_MODEL", "agent.cascade.tts.model"),
    s("HARK_TTS_VOICE", "agent.cascade.tts.voice"),
    s("HARK_TTS_INSTRUCTIONS", "agent.cascade.tts.instructions"),
    s("HARK_TTS_SPEED", "agent.cascade.tts.speed"),
    s("HARK_TTS_TIMEOUT_MS", "agent.cascade.tts.timeout_ms"),
    s("HARK_TTS_STALL_MS", "agent.cascade.tts.stall_ms"),
    s("HARK_PROVIDER_IDLE_MS", "agent.cascade.provider_idle_ms"),
    s("HARK_SYSTEM_PROMPT", "agent.cascade.system_prompt"),
    s(
        "HARK_SYSTEM_PROMPT_PARAM",
        "agent.cascade.system_prompt_param",
    ),
    s("HARK_GREETING", "agent.cascade.greeting"),
    s("HARK_GREETING_PARAM", "agent.cascade.greeting_param"),
    s("HARK_FALLBACK_TEXT", "agent.cascade.fallback_text"),
    s("HARK_GOODBYE_TEXT", "agent.cascade.goodbye_text"),
    s("HARK_TRANSFER_TEXT", "agent.cascade.transfer_text"),
    s(
        "HARK_TRANSFER_FAILED_TEXT",
        "agent.cascade.transfer_failed_text",
    ),
    l("HARK_TOOLS", "agent.cascade.tools", ','),
    l("HARK_TRANSFER_ALLOW", "agent.cascade.transfer_allow", ','),
    l(
        "HARK_BACKCHANNEL_WORDS",
        "agent.cascade.backchannel_words",
        ',',
    ),
    s("HARK_FILLER_TEXT", "agent.cascade.filler_text"),
    s("HARK_FILLER_AFTER_MS", "agent.cascade.filler_after_ms"),
    s("HARK_IDLE_REPROMPT_MS", "agent.cascade.idle_reprompt_ms"),
    s(
        "HARK_IDLE_REPROMPT_TEXT",
        "agent.cascade.idle_reprompt_text",
    ),
    s("HARK_IDLE_HANGUP_MS", "agent.cascade.idle_hangup_ms"),
    s("HARK_IDLE_GOODBYE_TEXT", "agent.cascade.idle_goodbye_text"),
    s("HARK_RETRY_MAX", "agent.cascade.retry_max"),
    s("HARK_RETRY_BUDGET_MS", "agent.cascade.retry_budget_ms"),
    s("HARK_RETRY_BACKOFF_MS", "agent.cascade.retry_backoff_ms"),
    s("ELEVENLABS_AGENT_ID", "agent.elevenlabs.agent_id"),
    s("ELEVENLABS_API_KEY", "agent.elevenlabs.api_key"),
    s("ELEVENLABS_API_BASE", "agent.elevenlabs.api_base"),
    s("HARK_ELEVENLABS_PROMPT", "agent.elevenlabs.prompt"),
    s(
        "HARK_ELEVENLABS_FIRST_MESSAGE",
        "agent.elevenlabs.first_message",
    ),
    s("HARK_ELEVENLABS_LANGUAGE", "agent.elevenlabs.language"),
    s("HARK_ELEVENLABS_VOICE_ID", "agent.elevenlabs.voice_id"),
    s(
        "HARK_ELEVENLABS_END_CALL_TOOL",
        "agent.elevenlabs.end_call_tool",
    ),
    s("HARK_REALTIME_URL", "agent.realtime.url"),
    s("HARK_REALTIME_MODEL", "agent.realtime.model"),
    s("HARK_REALTIME_API", "agent.realtime.api"),
    s(
        "HARK_REALTIME_TURN_DETECTION",
        "agent.realtime.turn_detection",
    ),
    s("HARK_REALTIME_SILENCE_MS", "agent.realtime.silence_ms"),
    s(
        "HARK_REALTIME_VAD_THRESHOLD",
        "agent.realtime.vad_threshold",
    ),
    s(
        "HARK_REALTIME_PREFIX_PADDING_MS",
        "agent.realtime.prefix_padding_ms",
    ),
    s("HARK_REALTIME_EAGERNESS", "agent.realtime.eagerness"),
    s("HARK_REALTIME_VOICE", "agent.realtime.voice"),
    s("HARK_REALTIME_INSTRUCTIONS", "agent.realtime.instructions"),
    s("HARK_REALTIME_GREETING", "agent.realtime.greeting"),
    s(
        "HARK_REALTIME_TRANSCRIBE_MODEL",
        "agent.realtime.transcribe_model",
    ),
];

/// The setting of environment variable `var`, if hark reads it.
pub fn by_var(var: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.var == var)
}

/// The setting of file key `key`, if hark reads it.
pub fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The file key of variable `var` (`None` for names that are not settings, such as `.env`).
pub fn key_of(var: &str) -> Option<&'static str> {
    by_var(var).map(|s| s.key)
}

/// The `HARK_*` variables among `names` that hark does not read (a typo such as `HARK_STOPMS`
/// would otherwise be silently ignored), each with the nearest known name when one is close
/// (Levenshtein distance ≤ 3). Sorted by name.
pub fn unknown_hark_variables<I, S>(names: I) -> Vec<(String, Option<&'static str>)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref();
        if !name.starts_with("HARK_") || name == CONFIG_VAR || by_var(name).is_some() {
            continue;
        }
        let nearest = SETTINGS
            .iter()
            .map(|k| (strsim::levenshtein(name, k.var), k.var))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| k);
        out.push((name.to_string(), nearest));
    }
    out.sort();
    out
}

/// The known file key nearest to the unknown `key`: a key within Levenshtein distance 3 of it
/// (`call.stopms` → `call.stop_ms`), else one whose last part is within 2 of its last part (a
/// key in the wrong section: `server.stop_ms` → `call.stop_ms`). A variable's name written as a
/// key gets that variable's key (`HARK_STOP_MS` → `call.stop_ms`).
pub fn nearest_key(key: &str) -> Option<&'static str> {
    if let Some(k) = key_of(&key.to_ascii_uppercase()) {
        return Some(k);
    }
    let leaf = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let close = SETTINGS
        .iter()
        .map(|s| (strsim::levenshtein(key, s.key), s.key))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k);
    close.or_else(|| {
        let mine = leaf(key);
        SETTINGS
            .iter()
            .map(|s| (strsim::levenshtein(&mine, &leaf(s.key)), s.key))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, k)| k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_has_one_key_and_every_key_one_variable() {
        let mut vars = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for s in SETTINGS {
            assert!(vars.insert(s.var), "{} twice", s.var);
            assert!(keys.insert(s.key), "{} twice", s.key);
            let parts: Vec<&str> = s.key.split('.').collect();
            assert!(
                (2..=4).contains(&parts.len())
                    && parts.iter().all(|p| !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')),
                "{}: keys are section.name in lower case",
                s.key
            );
            // No key is a section of another ("a.b" and "a.b.c" cannot both hold values).
            assert!(
                !SETTINGS
                    .iter()
                    .any(|o| o.key.starts_with(&format!("{}.", s.key))),
                "{} is also a section",
                s.key
            );
        }
        assert!(by_var(CONFIG_VAR).is_none());
    }

    #[test]
    fn unknown_hark_variables_get_the_nearest_known_name() {
        let found = unknown_hark_variables([
            "HARK_STOPMS",
            "HARK_STOP_MS",
            "HARK_CONFIG",
            "PATH",
            "HARK_TOTALLY_DIFFERENT_THING",
        ]);
        assert_eq!(
            found,
            vec![
                ("HARK_STOPMS".to_string(), Some("HARK_STOP_MS")),
                ("HARK_TOTALLY_DIFFERENT_THING".to_string(), None),
            ]
        );
    }

    #[test]
    fn unknown_keys_get_the_nearest_known_key() {
        assert_eq!(nearest_key("call.stopms"), Some("call.stop_ms"));
        assert_eq!(nearest_key("server.stop_ms"), Some("call.stop_ms"));
        assert_eq!(nearest_key("HARK_STOP_MS"), Some("call.stop_ms"));
        assert_eq!(nearest_key("agnet.kind"), Some("agent.kind"));
        assert_eq!(nearest_key("nothing.like.this_at_all"), None);
    }
}
