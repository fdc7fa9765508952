//! Settings and construction of the `elevenlabs` agent (relayed through hark's engine) and the
//! `elevenlabs-direct` TwiML (Twilio connects to ElevenLabs itself).
//!
//! Settings (README "ElevenLabs"):
//! - `ELEVENLABS_AGENT_ID` (required): the Conversational AI agent.
//! - `ELEVENLABS_API_KEY`: for private agents (the usual case): each call gets a signed URL
//!   from `GET {ELEVENLABS_API_BASE}/v1/convai/conversation/get-signed-url?agent_id=…` with
//!   header `xi-api-key` (`shared/reference/providers.md` §5). Without it, hark connects to the
//!   public agent URL `wss://…/v1/convai/conversation?agent_id=…`.
//! - `ELEVENLABS_API_BASE` (default `https://api.elevenlabs.io`): the REST base; the public
//!   WebSocket URL uses the same host (`https` → `wss`).
//! - `HARK_ELEVENLABS_PROMPT`, `HARK_ELEVENLABS_FIRST_MESSAGE`, `HARK_ELEVENLABS_LANGUAGE`,
//!   `HARK_ELEVENLABS_VOICE_ID`: `conversation_config_override` values (each only if the
//!   agent allows overriding it), relay mode only.
//! - `HARK_ELEVENLABS_END_CALL_TOOL` (default `end_call`): the client tool that hangs up.
//! - The file's `[[tools]]` (relay mode): a `client_tool_call` with one of their names is
//!   POSTed to the operator's backend, signed with `HARK_OPERATOR_SECRET`, and its answer is
//!   the `client_tool_result` (the ElevenLabs agent must define each as a client tool).
//!
//! **Relay** ([`build`]): the settings become an [`ElevenLabsConfig`]; the engine's sans-IO
//! [`ElevenLabsAgent`] asks for the signed URL itself at stream start, as an HTTP provider
//! pipe the call's driver carries out ([`SignedUrlLookup`]), buffers caller audio until the
//! conversation is open, and ends the call with a provider fault when the lookup fails. The
//! lookup starts with Twilio's `start` message (the agent's first callback), a few ms after
//! the WebSocket is accepted.
//!
//! **Direct** ([`direct_voice`]): `/voice` fetches the signed URL (the same request and
//! answer parser as the relay, carried out by the engine's HTTP connector) and answers
//! `<Connect><Stream url="<signed url>" /></Connect>` followed by `HARK_AFTER_CONNECT`. On
//! failure: 401 → a configuration-error message, 429 → "busy, call back in a few minutes",
//! anything else → "technical difficulties", each `<Say>` + `<Hangup />`, logged with the
//! status. Caveat: the signed URL has a query string, which Twilio's `<Stream>` rules forbid
//! (error 31920, `reference/twilio.md` §1.1; hark's own [`crate::twiml`] writer refuses it);
//! the document is written here exactly as the seed project does. And the ElevenLabs endpoint
//! speaks its own protocol, not Twilio Media Streams: ElevenLabs' supported Twilio paths are
//! its native integration and register-call. Prefer the relay.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use hark_engine::agent::{Agent, ProviderEvent, ProviderFault, ProviderMessage};
use hark_engine::agents::elevenlabs::{
    DEFAULT_SIGNED_URL_TIMEOUT_MS, ElevenLabsAgent, ElevenLabsConfig, Overrides, SIGNED_URL_PEER,
    SignedUrlLookup, parse_signed_url,
};
use hark_engine::agents::http_tools::HttpTools;
use hark_engine::io::http;
use tracing::{info, warn};

use crate::config::{ConfigError, Values};
use crate::twiml::{self, Verb};

/// Default REST base (`ELEVENLABS_API_BASE`).
pub const DEFAULT_API_BASE: &str = "https://api.elevenlabs.io";
/// Said on a 401 from the signed-URL lookup (direct mode).
pub const SAY_CONFIG_ERROR: &str = "Sorry, this line is not configured correctly. Please contact the business another way. Goodbye.";
/// Said on a 429 (direct mode).
pub const SAY_BUSY: &str = "The service is busy, please call back in a few minutes. Goodbye.";
/// Said on any other failure (direct mode).
pub const SAY_TECHNICAL: &str =
    "Sorry, we are experiencing technical difficulties. Please try again later. Goodbye.";

/// Settings of the `elevenlabs` and `elevenlabs-direct` agents (`[agent.elevenlabs]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ELEVENLABS_AGENT_ID`.
    pub agent_id: String,
    /// `ELEVENLABS_API_KEY`; `None` for a public agent.
    pub api_key: Option<String>,
    /// `ELEVENLABS_API_BASE`, without a trailing slash.
    pub api_base: String,
    /// `HARK_ELEVENLABS_*` overrides.
    pub overrides: Overrides,
    /// `HARK_ELEVENLABS_END_CALL_TOOL`.
    pub end_call_tool: String,
    /// The file's `[[tools]]`, run when the agent calls them as client tools.
    pub tools: HttpTools,
    /// `HARK_VOICEMAIL_TEXT`: left on an answering machine (the first message of a new
    /// conversation), then the hang-up.
    pub voicemail_text: Option<String>,
}

impl Settings {
    /// Reads the settings from the environment only, through `lookup`. For tests; `hark
    /// serve` reads them with the rest of [`crate::config::Config`].
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
    /// [`ConfigError`] when `ELEVENLABS_AGENT_ID` is missing, `ELEVENLABS_API_BASE` is not
    /// an `http(s)://` URL, a `[[tools]]` entry is invalid or takes the end-call tool's name,
    /// or there are tools without `HARK_OPERATOR_SECRET`.
    pub fn from_values(v: &Values) -> Result<Self, ConfigError> {
        let agent_id = v.text("ELEVENLABS_AGENT_ID").ok_or_else(|| {
            ConfigError::new(
                "ELEVENLABS_AGENT_ID",
                "required by HARK_AGENT=elevenlabs / elevenlabs-direct",
            )
        })?;
        let end_call_tool = v
            .get("HARK_ELEVENLABS_END_CALL_TOOL")
            .unwrap_or_else(|| "end_call".to_string());
        let tools = super::http_tools(v, None)?;
        if tools.get(&end_call_tool).is_some() {
            return Err(ConfigError::new(
                "HARK_ELEVENLABS_END_CALL_TOOL",
                format!("{end_call_tool:?} is also a [[tools]] name"),
            ));
        }
        Ok(Settings {
            agent_id,
            api_key: v.text("ELEVENLABS_API_KEY"),
            api_base: v
                .http_url("ELEVENLABS_API_BASE")?
                .unwrap_or_else(|| DEFAULT_API_BASE.to_string()),
            overrides: Overrides {
                prompt: v.get("HARK_ELEVENLABS_PROMPT"),
                first_message: v.get("HARK_ELEVENLABS_FIRST_MESSAGE"),
                language: v.get("HARK_ELEVENLABS_LANGUAGE"),
                voice_id: v.get("HARK_ELEVENLABS_VOICE_ID"),
            },
            end_call_tool,
            tools,
            voicemail_text: super::voicemail_text(v),
        })
    }

    /// The public agent's WebSocket URL (no signature): `wss://<api host>/v1/convai/
    /// conversation?agent_id=…`.
    pub fn public_url(&self) -> String {
        let ws = if let Some(rest) = self.api_base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.api_base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.api_base.clone()
        };
        let id: String = form_urlencoded::byte_serialize(self.agent_id.as_bytes()).collect();
        format!("{ws}/v1/convai/conversation?agent_id={id}")
    }

    /// The signed-URL lookup of a private agent (`None` without an API key): `GET {api base}
    /// /v1/convai/conversation/get-signed-url?agent_id=…` with `xi-api-key`, answered within
    /// [`DEFAULT_SIGNED_URL_TIMEOUT_MS`] (Twilio waits 15 s for `/voice`).
    pub fn signed_url_lookup(&self) -> Option<SignedUrlLookup> {
        let key = self.api_key.as_ref()?;
        let id: String = form_urlencoded::byte_serialize(self.agent_id.as_bytes()).collect();
        Some(SignedUrlLookup {
            url: format!(
                "{}/v1/convai/conversation/get-signed-url?agent_id={id}",
                self.api_base
            ),
            api_key: key.clone(),
            timeout_ms: DEFAULT_SIGNED_URL_TIMEOUT_MS,
        })
    }

    /// The relay agent's settings: the signed-URL lookup with an API key, else the public
    /// agent URL.
    pub fn agent_config(&self) -> ElevenLabsConfig {
        let signed_url = self.signed_url_lookup();
        ElevenLabsConfig {
            url: signed_url.is_none().then(|| self.public_url()),
            signed_url,
            overrides: self.overrides.clone(),
            end_call_tool: self.end_call_tool.clone(),
            tools: self.tools.clone(),
            voicemail_text: self.voicemail_text.clone(),
            ..ElevenLabsConfig::default()
        }
    }
}

/// Why a signed URL could not be had. Each ends the call (relay) or is answered with a spoken
/// message and `<Hangup />` (direct).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignedUrlError {
    /// The lookup pipe failed: ElevenLabs answered an error status (401 bad key, 422 bad
    /// agent id, 429 busy, …; the detail is the start of the body, at most 200 characters) or
    /// could not be reached (connect, TLS, timeout).
    #[error("get-signed-url failed: {0}")]
    Lookup(ProviderFault),
    /// The HTTP connector's client could not be built (its TLS backend failed).
    #[error("get-signed-url failed: {0}")]
    Client(#[from] http::HttpError),
    /// The 200 answer had no usable `signed_url` (`ws://` or `wss://`).
    #[error("get-signed-url answered without a usable signed_url: {0}")]
    BadAnswer(String),
}

impl SignedUrlError {
    /// The HTTP status, when ElevenLabs answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SignedUrlError::Lookup(f) => f.http_status(),
            _ => None,
        }
    }

    /// A short kind for metric labels and [`hark_engine::agent::AgentReport::ProviderFault`]:
    /// the relay agent's labels ([`SignedUrlLookup::fault_label`]: `signed_url_http_<status>`,
    /// `signed_url_connect`), or `signed_url_bad_answer`.
    pub fn kind(&self) -> String {
        match self {
            SignedUrlError::Lookup(f) => SignedUrlLookup::fault_label(f),
            SignedUrlError::Client(_) => "signed_url_connect".into(),
            SignedUrlError::BadAnswer(_) => "signed_url_bad_answer".into(),
        }
    }
}

/// The process's HTTP connector client for direct-mode lookups (built once).
fn client() -> Result<http::Client, SignedUrlError> {
    static CLIENT: OnceLock<Result<http::Client, http::HttpError>> = OnceLock::new();
    Ok(CLIENT
        .get_or_init(|| http::Client::new(http::ClientConfig::default()))
        .clone()?)
}

/// The conversation URL for one call (direct mode): a fresh signed URL when an API key is
/// set, else the public agent URL. The lookup is the relay's [`SignedUrlLookup`] request,
/// carried out by the engine's HTTP connector with its own timeout as the deadline.
///
/// # Errors
/// [`SignedUrlError`] when ElevenLabs refuses or cannot be reached.
pub async fn conversation_url(s: &Settings) -> Result<String, SignedUrlError> {
    let Some(lookup) = s.signed_url_lookup() else {
        return Ok(s.public_url());
    };
    let mut req = lookup.request();
    req.timeout_ms = Some(lookup.timeout_ms);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    http::run(client()?, SIGNED_URL_PEER, req, tx).await;
    let mut body = None;
    while let Some(event) = rx.recv().await {
        match event {
            ProviderEvent::Message { message, .. } => body = Some(message),
            ProviderEvent::Failed { mut fault, .. } => {
                if fault.http_status().is_some() {
                    // The body's start is enough for the log.
                    fault.detail = fault.detail.chars().take(200).collect();
                }
                return Err(SignedUrlError::Lookup(fault));
            }
            ProviderEvent::Opened { .. } | ProviderEvent::Closed { .. } => {}
        }
    }
    match body {
        Some(ProviderMessage::Text(text)) => parse_signed_url(&text)
            .ok_or_else(|| SignedUrlError::BadAnswer(text.chars().take(200).collect())),
        Some(ProviderMessage::Binary(b)) => Err(SignedUrlError::BadAnswer(format!(
            "a binary body of {} bytes",
            b.len()
        ))),
        None => Err(SignedUrlError::BadAnswer("no body".to_string())),
    }
}

/// A new relay agent for one call (see the module docs).
pub fn build(settings: &Settings) -> Box<dyn Agent> {
    Box::new(ElevenLabsAgent::new(settings.agent_config()))
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, twiml::CONTENT_TYPE)], body).into_response()
}

/// `<Say>`s `message` and hangs up (the lossy writer cannot fail).
fn say_hangup(message: &str) -> Response {
    xml(twiml::say_hangup_lossy(message))
}

/// The direct-mode document: `<Connect><Stream url="…" /></Connect>` then `after`, in
/// [`crate::twiml`]'s conventions. The URL's query string is kept (see the module docs).
///
/// # Errors
/// [`twiml::TwimlError`] from the `after` verbs.
pub fn direct_twiml(stream_url: &str, after: &[Verb]) -> Result<String, twiml::TwimlError> {
    let rest = twiml::Response {
        verbs: after.to_vec(),
    }
    .render()?;
    // `render` gives `<?xml …?><Response>…</Response>` or `<?xml …?><Response />`.
    let inner = rest
        .strip_prefix(twiml::XML_DECLARATION)
        .and_then(|r| r.strip_prefix("<Response>"))
        .and_then(|r| r.strip_suffix("</Response>"))
        .unwrap_or("");
    let mut out = String::with_capacity(160 + stream_url.len() + inner.len());
    out.push_str(twiml::XML_DECLARATION);
    out.push_str("<Response><Connect><Stream url=\"");
    twiml::escape_attr_lossy(&mut out, stream_url);
    out.push_str("\" /></Connect>");
    out.push_str(inner);
    out.push_str("</Response>");
    Ok(out)
}

/// `/voice` in `elevenlabs-direct` mode: the TwiML that connects Twilio to ElevenLabs, or a
/// spoken goodbye when the signed URL cannot be had (see the module docs). `form` is the
/// webhook's parameters (only `CallSid` is used, for the log).
pub async fn direct_voice(
    settings: &Settings,
    form: &[(String, String)],
    after: &[Verb],
) -> Response {
    let call_sid = form
        .iter()
        .find(|(k, _)| k == "CallSid")
        .map_or("", |(_, v)| v.as_str());
    match conversation_url(settings).await {
        Ok(url) => match direct_twiml(&url, after) {
            Ok(doc) => {
                info!(
                    call_sid,
                    "elevenlabs-direct: connecting Twilio to ElevenLabs"
                );
                xml(doc)
            }
            Err(e) => {
                warn!(call_sid, error = %e, "elevenlabs-direct: cannot write TwiML");
                say_hangup(SAY_TECHNICAL)
            }
        },
        Err(e) => {
            let status = e.status();
            metrics::counter!("hark_provider_faults_total", "provider" => "elevenlabs", "kind" => e.kind())
                .increment(1);
            warn!(call_sid, status, error = %e, "elevenlabs-direct: no signed URL");
            match status {
                Some(401) => say_hangup(SAY_CONFIG_ERROR),
                Some(429) => say_hangup(SAY_BUSY),
                _ => say_hangup(SAY_TECHNICAL),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(&mut |k| m.get(k).cloned())
    }

    #[test]
    fn settings_name_the_missing_variable() {
        assert_eq!(settings(&[]).unwrap_err().var, "ELEVENLABS_AGENT_ID");
        assert_eq!(
            settings(&[
                ("ELEVENLABS_AGENT_ID", "a"),
                ("ELEVENLABS_API_BASE", "ftp://x")
            ])
            .unwrap_err()
            .var,
            "ELEVENLABS_API_BASE"
        );
        let s = settings(&[("ELEVENLABS_AGENT_ID", "agent 1")]).unwrap();
        assert_eq!(s.api_base, DEFAULT_API_BASE);
        assert_eq!(
            s.public_url(),
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent+1"
        );
        assert_eq!(s.end_call_tool, "end_call");
    }

    #[test]
    fn a_key_makes_the_agent_look_the_url_up_else_it_is_public() {
        let private = settings(&[
            ("ELEVENLABS_AGENT_ID", "agent 1"),
            ("ELEVENLABS_API_KEY", " xi-key "),
            ("ELEVENLABS_API_BASE", "http://127.0.0.1:9/"),
        ])
        .unwrap();
        let cfg = private.agent_config();
        assert_eq!(cfg.url, None);
        let lookup = cfg.signed_url.expect("a lookup with a key");
        assert_eq!(
            lookup.url,
            "http://127.0.0.1:9/v1/convai/conversation/get-signed-url?agent_id=agent+1"
        );
        assert_eq!(lookup.api_key, "xi-key");
        assert_eq!(lookup.timeout_ms, DEFAULT_SIGNED_URL_TIMEOUT_MS);
        let public = settings(&[("ELEVENLABS_AGENT_ID", "a")])
            .unwrap()
            .agent_config();
        assert_eq!(public.signed_url, None);
        assert_eq!(
            public.url.as_deref(),
            Some("wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a")
        );
        assert_eq!(public.end_call_tool, "end_call");
    }

    #[test]
    fn file_tools_go_to_the_relay_agent() {
        use crate::agents::test_tools::{FILE, values};
        let id = ("ELEVENLABS_AGENT_ID", "a");
        let secret = ("HARK_OPERATOR_SECRET", "0123456789abcdef0123");
        let s = Settings::from_values(&values(FILE, &[id, secret])).unwrap();
        let cfg = s.agent_config();
        assert_eq!(cfg.tools.tools[0].name, "lookup_balance");
        assert!(cfg.tools.secret.is_some());
        let e = Settings::from_values(&values(FILE, &[id])).unwrap_err();
        assert_eq!(e.var, "HARK_OPERATOR_SECRET");
        let clash = ("HARK_ELEVENLABS_END_CALL_TOOL", "lookup_balance");
        let e = Settings::from_values(&values(FILE, &[id, secret, clash])).unwrap_err();
        assert_eq!(e.var, "HARK_ELEVENLABS_END_CALL_TOOL");
        assert!(
            settings(&[id])
                .unwrap()
                .agent_config()
                .tools
                .tools
                .is_empty()
        );
    }

    #[test]
    fn direct_twiml_keeps_the_query_string_escaped() {
        let doc = direct_twiml(
            "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&conversation_signature=s",
            &[Verb::Hangup],
        )
        .unwrap();
        assert_eq!(
            doc,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&amp;conversation_signature=s" /></Connect><Hangup /></Response>"#
        );
        let bare = direct_twiml("wss://h/x", &[]).unwrap();
        assert!(
            bare.ends_with(r#"<Stream url="wss://h/x" /></Connect></Response>"#),
            "{bare}"
        );
    }
}
