//! Settings of the cascade agent: per-stage endpoints, prompts and phrases, tools, the stage
//! deadlines, the filler and the retry policy. All durations are in ms.
//!
//! ## Deadlines
//! Every provider request has two deadlines of its own stage: the **first** (the first
//! transcription event, the first content or tool-call token, the first audio bytes), counted
//! from the request, and the **stall** (no new data), counted from the last data received. A
//! request that misses one is closed and counts as a fault (`timeout`, `stall`), retried within
//! [`RetryPolicy`]. Independently, when the caller has heard nothing of the answer
//! [`CascadeConfig::filler_after_ms`] after the end of their turn, the pre-rendered
//! [`CascadeConfig::filler_text`] plays. The defaults are chosen so that a hang anywhere is met
//! with the filler within 2 s of the turn's end and with a retry's answer or the fallback soon
//! after.

/// One OpenAI-compatible endpoint (OpenAI, another hosted service, or a local server such as
/// vLLM, llama.cpp's server, Ollama, Speaches or Kokoro-FastAPI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`. `/v1` is
    /// appended when the URL does not already end with it (so `http://127.0.0.1:8000` works
    /// too); a trailing `/` is ignored.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>`; `None` sends no `Authorization` header (local
    /// servers that need none).
    pub api_key: Option<String>,
    /// Model name sent as `model`.
    pub model: String,
}

impl Endpoint {
    /// An endpoint.
    pub fn new(
        base_url: impl Into<String>,
        api_key: Option<String>,
        model: impl Into<String>,
    ) -> Self {
        Endpoint {
            base_url: base_url.into(),
            api_key,
            model: model.into(),
        }
    }

    /// The absolute URL of `path` (`/audio/speech`, …) under this endpoint's `/v1`.
    pub fn url(&self, path: &str) -> String {
        let base = self.base_url.trim().trim_end_matches('/');
        let v1 = if base.ends_with("/v1") { "" } else { "/v1" };
        format!("{base}{v1}{path}")
    }

    /// The `Authorization` header, when there is a key.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.api_key
            .iter()
            .map(|k| ("Authorization".to_string(), format!("Bearer {k}")))
            .collect()
    }
}

/// OpenAI's public API.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Speech to text (`POST /v1/audio/transcriptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttConfig {
    /// Where and which model (default `gpt-4o-mini-transcribe`).
    pub endpoint: Endpoint,
    /// ISO-639-1 language of the caller (`en`, …), sent as `language`; `None` lets the model
    /// detect it.
    pub language: Option<String>,
    /// A prompt to steer the transcription (names, jargon), sent as `prompt`.
    pub prompt: Option<String>,
    /// Ask for the streamed form (`stream=true`, SSE `transcript.text.delta`/`done`). OpenAI's
    /// `gpt-4o(-mini)-transcribe` models stream; `whisper-1` ignores it and answers JSON, which
    /// the agent also accepts.
    pub stream: bool,
    /// The first transcription event (a streamed delta, or the whole JSON answer) must arrive
    /// this long after the request was sent (default 1500).
    pub timeout_ms: u64,
    /// A streamed transcription that sends nothing for this long after its last event has
    /// stalled (default 1000).
    pub stall_ms: u64,
}

/// The language model (`POST /v1/chat/completions`, streamed).
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// Where and which model (default `gpt-4o-mini`).
    pub endpoint: Endpoint,
    /// `temperature`, when set.
    pub temperature: Option<f32>,
    /// `max_tokens` (the form every OpenAI-compatible server accepts), when set.
    pub max_tokens: Option<u32>,
    /// The first content or tool-call delta must arrive this long after the request (default
    /// 1500): a stream that only sends its `role` chunk and then nothing has not answered.
    pub first_token_timeout_ms: u64,
    /// After the first token, a stream that sends nothing for this long has stalled (default
    /// 1500).
    pub stall_ms: u64,
}

/// Text to speech (`POST /v1/audio/speech`, `response_format: pcm`, streamed).
#[derive(Debug, Clone, PartialEq)]
pub struct TtsConfig {
    /// Where and which model (default `gpt-4o-mini-tts`).
    pub endpoint: Endpoint,
    /// `voice` (default `alloy`).
    pub voice: String,
    /// `instructions` (gpt-4o-mini-tts only), when set.
    pub instructions: Option<String>,
    /// `speed` 0.25–4.0, when set.
    pub speed: Option<f32>,
    /// The first audio bytes must arrive this long after the request (default 1200).
    pub first_byte_timeout_ms: u64,
    /// An audio stream that sends nothing for this long after its last bytes has stalled
    /// (default 1000); the rest of its sentence is asked for again (see the module docs of
    /// [`crate::agents::cascade`]).
    pub stall_ms: u64,
    /// Sentences synthesised at once (default 2): the next sentence's audio is fetched while
    /// the current one streams; audio always plays in sentence order.
    pub parallel: usize,
}

/// Which tools the model may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolsConfig {
    /// `end_call`: say goodbye, then end the call (default on).
    pub end_call: bool,
    /// `transfer_call(number)`: hand the call to a number (default on).
    pub transfer_call: bool,
    /// When not empty, `transfer_call` only accepts these numbers (E.164 or `sip:` URIs).
    pub transfer_allow: Vec<String>,
    /// The operator's own tools, POSTed to its backend (offered beside the two above).
    pub http: crate::agents::http_tools::HttpTools,
}

/// Bounded retries of failed provider requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per request (default 2): a request is tried at most `1 + max_retries` times.
    pub max_retries: u32,
    /// Retries start only within this long after the caller's turn ended (or, for the greeting,
    /// after the stream started; for a TTS sentence, after the sentence was written) (default
    /// 3000). A `Retry-After` that points past it is not waited for: the fallback phrase plays at
    /// once.
    pub budget_ms: u64,
    /// First backoff after a 5xx, a dropped connection or an error inside a stream (default
    /// 150); doubled per retry. A 429 waits for its `retry-after-ms`/`Retry-After` instead when
    /// it has one. Timeouts retry at once (their time is already spent).
    pub backoff_ms: u64,
}

/// Everything the cascade agent needs. [`CascadeConfig::default`] talks to OpenAI with no key
/// (set [`Endpoint::api_key`] on each stage).
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeConfig {
    /// Speech to text.
    pub stt: SttConfig,
    /// Language model.
    pub llm: LlmConfig,
    /// Text to speech.
    pub tts: TtsConfig,
    /// The system prompt (default: a short, phone-friendly assistant prompt).
    pub system_prompt: String,
    /// A TwiML `<Parameter>` of this name overrides `system_prompt` for the call (default
    /// `systemPrompt`; empty disables).
    pub system_prompt_param: String,
    /// Spoken when the stream starts; `None` or empty for no greeting.
    pub greeting: Option<String>,
    /// A `<Parameter>` of this name overrides the greeting (default `greeting`; empty
    /// disables).
    pub greeting_param: String,
    /// Ask the operator's backend for this call's prompt, greeting, variables, voice, tools
    /// and language when the stream starts ([`crate::agents::context`]); the greeting waits
    /// for the answer at most its timeout. `None`: the settings above for every call.
    pub context: Option<crate::agents::context::ContextConfig>,
    /// Spoken when a turn cannot be answered (providers down after retries). Rendered once when
    /// the call starts, so it plays even if TTS is down later; if TTS is already down then, a
    /// short synthesized chime plays instead (never dead air).
    pub fallback_text: String,
    /// Spoken before hanging up when the model calls `end_call` without saying anything.
    pub goodbye_text: String,
    /// Spoken before transferring when the model calls `transfer_call` without saying anything.
    pub transfer_text: String,
    /// Spoken when a transfer could not be carried out; the conversation then goes on.
    pub transfer_failed_text: String,
    /// A short phrase played when the caller has heard nothing of the answer
    /// [`CascadeConfig::filler_after_ms`] after their turn ended (default `One moment.`); the
    /// answer (or the fallback) follows it. Rendered once per call, after the fallback phrase;
    /// if it could not be rendered, the chime plays instead. `None` or empty: no filler.
    pub filler_text: Option<String>,
    /// When the filler plays, ms after hark's end-of-turn decision (default 1800): late enough
    /// that an answer (or a fallback after fast failures) that is merely slow is not held up
    /// behind it, early enough that it is heard within a 2 s budget (the way to the phone is
    /// 15–40 ms over loopback). Deferred while the caller is talking again.
    pub filler_after_ms: u64,
    /// Caller silence before the agent prompts again, ms, counted from when the agent's last
    /// utterance finished playing with no caller turn under way; a caller who starts speaking
    /// (or presses a key) starts the count over. At most one re-prompt per silence. `None`
    /// (the default here; the gateway's default is [`IDLE_REPROMPT_MS`]): never.
    pub idle_reprompt_ms: Option<u64>,
    /// What the re-prompt says. `None` or empty (the default): the model is told the caller
    /// has been silent (a user message) and re-prompts in its own words.
    pub idle_reprompt_text: Option<String>,
    /// Caller silence after which the agent says [`CascadeConfig::idle_goodbye_text`] and
    /// hangs up (reason `idle`), ms from the same point as `idle_reprompt_ms`; must be longer
    /// than it. `None` (the default here; the gateway's default is [`IDLE_HANGUP_MS`]): never.
    pub idle_hangup_ms: Option<u64>,
    /// Said before an idle hang-up; `None` (the default): [`CascadeConfig::goodbye_text`].
    /// Empty: hang up without a word.
    pub idle_goodbye_text: Option<String>,
    /// The message left on an answering machine: when Twilio's answering machine detection
    /// says the machine's greeting is over ([`crate::AnsweredBy::MachineEnd`]), whatever the
    /// agent is saying or preparing stops, this is said (`{{name}}` placeholders filled from
    /// the call's context variables and `<Parameter>`s) and the call hangs up once it has
    /// played (reason `voicemail`). `None` or empty (the default): hang up at once (reason
    /// `machine`).
    pub voicemail_text: Option<String>,
    /// Tools.
    pub tools: ToolsConfig,
    /// Retries.
    pub retry: RetryPolicy,
    /// Whole-request backstop for every provider request, given to the connector (default
    /// 60 000): the agent's own deadlines (per stage) fire first.
    pub request_timeout_ms: u64,
    /// Tool-call rounds per caller turn (default 3): a model that keeps calling tools that
    /// need another round is stopped with the fallback phrase.
    pub max_tool_rounds: u32,
    /// Phrases that make a short caller turn over the agent a backchannel
    /// ([`crate::agents::backchannel`]; default [`crate::agents::backchannel::DEFAULT_WORDS`]):
    /// when the call asks ([`crate::Agent::on_backchannel_check`], turns shorter than
    /// [`crate::config::TurnConfig::backchannel_check_ms`]), the turn's audio is transcribed and
    /// a transcript of nothing but these (or no words at all) lets the agent play on; anything
    /// else interrupts it and is answered, with no second transcription. Empty: no word check
    /// (the call decides by duration).
    pub backchannel_words: Vec<String>,
}

/// The default system prompt.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful voice assistant on a phone call. \
Answer briefly in plain spoken sentences: no lists, no markdown, no emoji. \
If the caller wants to end the call, say a short goodbye and call end_call. \
If the caller asks for a person or another department, call transfer_call.";

/// The suggested caller silence before a re-prompt, ms (the gateway's default for
/// [`CascadeConfig::idle_reprompt_ms`]).
pub const IDLE_REPROMPT_MS: u64 = 8_000;
/// The suggested caller silence before an idle hang-up, ms (the gateway's default for
/// [`CascadeConfig::idle_hangup_ms`]).
pub const IDLE_HANGUP_MS: u64 = 20_000;

/// The default filler phrase.
pub const DEFAULT_FILLER: &str = "One moment.";

impl Default for CascadeConfig {
    fn default() -> Self {
        let ep = |model: &str| Endpoint::new(OPENAI_BASE_URL, None, model);
        CascadeConfig {
            stt: SttConfig {
                endpoint: ep("gpt-4o-mini-transcribe"),
                language: None,
                prompt: None,
                stream: true,
                timeout_ms: 1_500,
                stall_ms: 1_000,
            },
            llm: LlmConfig {
                endpoint: ep("gpt-4o-mini"),
                temperature: None,
                max_tokens: None,
                first_token_timeout_ms: 1_500,
                stall_ms: 1_500,
            },
            tts: TtsConfig {
                endpoint: ep("gpt-4o-mini-tts"),
                voice: "alloy".into(),
                instructions: None,
                speed: None,
                first_byte_timeout_ms: 1_200,
                stall_ms: 1_000,
                parallel: 2,
            },
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            system_prompt_param: "systemPrompt".into(),
            greeting: Some("Hello! How can I help you today?".into()),
            context: None,
            greeting_param: "greeting".into(),
            fallback_text: "Sorry, I'm having trouble right now. Could you say that again?".into(),
            goodbye_text: "Goodbye!".into(),
            transfer_text: "One moment, I'm transferring your call.".into(),
            transfer_failed_text:
                "Sorry, I couldn't transfer your call right now. Is there anything else I can help with?"
                    .into(),
            filler_text: Some(DEFAULT_FILLER.into()),
            filler_after_ms: 1_800,
            idle_reprompt_ms: None,
            idle_reprompt_text: None,
            idle_hangup_ms: None,
            idle_goodbye_text: None,
            voicemail_text: None,
            tools: ToolsConfig {
                end_call: true,
                transfer_call: true,
                transfer_allow: Vec::new(),
                http: Default::default(),
            },
            retry: RetryPolicy {
                max_retries: 2,
                budget_ms: 3_000,
                backoff_ms: 150,
            },
            request_timeout_ms: 60_000,
            max_tool_rounds: 3,
            backchannel_words: crate::agents::backchannel::DEFAULT_WORDS
                .iter()
                .map(|w| w.to_string())
                .collect(),
        }
    }
}

/// Errors of the cascade agent's settings. The agent cannot be built; the call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CascadeError {
    /// A setting is unusable; the text names it.
    #[error("cascade agent: {0}")]
    Config(String),
}

impl CascadeConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`CascadeError::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), CascadeError> {
        let bad = |s: String| Err(CascadeError::Config(s));
        for (name, ep) in [
            ("stt", &self.stt.endpoint),
            ("llm", &self.llm.endpoint),
            ("tts", &self.tts.endpoint),
        ] {
            let b = ep.base_url.trim().to_ascii_lowercase();
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return bad(format!(
                    "{name} base URL {:?} must start with http:// or https://",
                    ep.base_url
                ));
            }
            if ep.model.trim().is_empty() {
                return bad(format!("{name} model is empty"));
            }
        }
        if self.tts.voice.trim().is_empty() {
            return bad("tts voice is empty".into());
        }
        if let Some(s) = self.tts.speed
            && !(0.25..=4.0).contains(&s)
        {
            return bad(format!("tts speed {s} is outside 0.25..=4.0"));
        }
        if self.tts.parallel == 0 || self.tts.parallel > 8 {
            return bad("tts parallel must be within 1..=8".into());
        }
        if self.fallback_text.trim().is_empty() {
            return bad("fallback text is empty".into());
        }
        for (name, v) in [
            ("stt timeout", self.stt.timeout_ms),
            ("llm first-token timeout", self.llm.first_token_timeout_ms),
            ("tts first-byte timeout", self.tts.first_byte_timeout_ms),
            ("stt stall", self.stt.stall_ms),
            ("llm stall", self.llm.stall_ms),
            ("tts stall", self.tts.stall_ms),
            ("request timeout", self.request_timeout_ms),
        ] {
            if v < 50 {
                return bad(format!("{name} of {v} ms is too short (at least 50)"));
            }
        }
        self.tools.http.validate().map_err(CascadeError::Config)?;
        if !(100..=60_000).contains(&self.filler_after_ms) {
            return bad(format!(
                "filler delay of {} ms is outside 100..=60000",
                self.filler_after_ms
            ));
        }
        self.validate_idle()
    }

    /// The idle settings: each within 1 s..=1 h, the hang-up after the re-prompt.
    fn validate_idle(&self) -> Result<(), CascadeError> {
        for (name, v) in [
            ("idle re-prompt", self.idle_reprompt_ms),
            ("idle hang-up", self.idle_hangup_ms),
        ] {
            if let Some(v) = v
                && !(1_000..=3_600_000).contains(&v)
            {
                return Err(CascadeError::Config(format!(
                    "{name} delay of {v} ms is outside 1000..=3600000"
                )));
            }
        }
        if let (Some(r), Some(h)) = (self.idle_reprompt_ms, self.idle_hangup_ms)
            && h <= r
        {
            return Err(CascadeError::Config(format!(
                "idle hang-up delay ({h} ms) must be longer than the idle re-prompt delay ({r} ms)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_v1_once() {
        let e = |b: &str| Endpoint::new(b, None, "m").url("/audio/speech");
        assert_eq!(
            e("https://api.openai.com/v1"),
            "https://api.openai.com/v1/audio/speech"
        );
        assert_eq!(
            e("https://api.openai.com/v1/"),
            "https://api.openai.com/v1/audio/speech"
        );
        assert_eq!(
            e("http://127.0.0.1:8000"),
            "http://127.0.0.1:8000/v1/audio/speech"
        );
        assert_eq!(e("http://h/openai/v1"), "http://h/openai/v1/audio/speech");
    }

    #[test]
    fn default_is_valid_and_bad_values_are_named() {
        assert!(CascadeConfig::default().validate().is_ok());
        let mut c = CascadeConfig::default();
        c.llm.endpoint.base_url = "ftp://x".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("llm base URL")
        );
        let mut c = CascadeConfig::default();
        c.tts.speed = Some(9.0);
        assert!(c.validate().unwrap_err().to_string().contains("speed"));
        let c = CascadeConfig {
            filler_after_ms: 5,
            ..CascadeConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("filler"));
        let mut c = CascadeConfig::default();
        c.llm.stall_ms = 0;
        assert!(c.validate().unwrap_err().to_string().contains("llm stall"));
        let c = CascadeConfig {
            idle_reprompt_ms: Some(500),
            ..CascadeConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("re-prompt"));
        let c = CascadeConfig {
            idle_reprompt_ms: Some(9_000),
            idle_hangup_ms: Some(9_000),
            ..CascadeConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("longer"));
        let c = CascadeConfig {
            idle_reprompt_ms: None,
            idle_hangup_ms: Some(5_000),
            ..CascadeConfig::default()
        };
        assert!(c.validate().is_ok());
    }
}
