//! TwiML documents for Twilio's voice webhooks, written the way twilio-python writes them.
//!
//! Output conventions (twilio-python 9.x `twilio/twiml/__init__.py`, which serialises with
//! CPython's `xml.etree.ElementTree`; `reference/twilio.md` §4):
//! - `<?xml version="1.0" encoding="UTF-8"?>` immediately followed by `<Response>` (no newline),
//!   no whitespace between elements;
//! - attributes sorted by name (byte order), camelCase names (`statusCallback`, `callerId`);
//! - elements with neither text nor children written as `<Hangup />` (space before `/>`);
//! - text escapes `&`, `<`, `>`; attribute values also escape `"`, and `\r`, `\n`, `\t` as
//!   `&#13;`, `&#10;`, `&#09;` (ElementTree's `_escape_attrib`; otherwise an XML parser would
//!   normalise them to spaces, XML 1.0 §3.3.3). `'` is never escaped.
//!
//! Twilio ignores whitespace and attribute order; the fixed form exists so documents can be
//! compared byte for byte with golden files (`fixtures/twiml/`).
//!
//! Checks done here because they are cheap and Twilio would otherwise fail the call later:
//! the `<Stream>` URL must be `ws://` or `wss://` with a host and **no query string**
//! (twilio.com/docs/voice/twiml/stream; a query string is a listed cause of error 31920;
//! `reference/twilio.md` §1.1); each `<Parameter>` name + value must be under 500 characters
//! combined (§1.7); `<Dial>` needs at least one `<Number>`; and every string must consist of
//! characters XML 1.0 can represent (no NUL or other C0 controls except tab, LF, CR).
//!
//! Serve the result as `Content-Type: text/xml`.
//!
//! ```
//! use hark_gateway::twiml::{agent_connect, Connect, Stream, DEFAULT_AFTER_CONNECT};
//!
//! let stream = Stream::new("wss://hark.example/media-stream").parameter("callId", "abc123");
//! let xml = agent_connect(&Connect::new(stream), DEFAULT_AFTER_CONNECT).unwrap();
//! assert_eq!(
//!     xml,
//!     "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"wss://hark.example/media-stream\">\
//!      <Parameter name=\"callId\" value=\"abc123\" /></Stream></Connect><Hangup /></Response>"
//! );
//! ```
//!
//! ## Layout
//! This file holds the document model ([`Response`], [`Verb`], …) and the documents hark
//! serves; `xml.rs` writes them out (ElementTree's conventions, escaping, the checks on
//! characters and the stream URL).

mod xml;

pub(crate) use xml::escape_attr_lossy;
use xml::{Writer, is_xml_char};

/// The XML declaration twilio-python writes before `<Response>`.
pub const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// The media type to serve TwiML with.
pub const CONTENT_TYPE: &str = "text/xml";

/// `<Parameter>` name + value must be shorter than this many characters (Unicode scalar values)
/// combined (twilio.com/docs/voice/twiml/stream, "Custom parameters"; `reference/twilio.md` §1.7).
pub const MAX_PARAMETER_CHARS: usize = 500;

/// What hark puts after `</Connect>` unless told otherwise: hang up. When hark closes the media
/// WebSocket, Twilio runs the next verb (`reference/twilio.md` §1.6); without one the call would
/// also end, but an explicit `<Hangup />` says so, and covers a stream that fails to connect.
pub const DEFAULT_AFTER_CONNECT: &[Verb] = &[Verb::Hangup];

/// A TwiML document could not be written.
///
/// Each variant means this document is refused; the caller should answer with a fallback
/// document (e.g. [`say_hangup`]) rather than an error status, so the call can still end cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwimlError {
    /// `<Stream url>` is not an absolute `ws://` / `wss://` URL with a host. Twilio connects only
    /// to `wss://` (error 31922 otherwise); `ws://` is accepted here for local tests.
    #[error("Stream url must be an absolute ws:// or wss:// URL, got {url:?}")]
    StreamUrlScheme {
        /// The URL given.
        url: String,
    },
    /// `<Stream url>` carries a query string, which Twilio rejects (error 31920); pass per-call
    /// data as `<Parameter>` elements instead.
    #[error("Stream url must not have a query string (use <Parameter>), got {url:?}")]
    StreamUrlQuery {
        /// The URL given.
        url: String,
    },
    /// A `<Parameter>`'s name + value is [`MAX_PARAMETER_CHARS`] characters or more.
    #[error(
        "Parameter {name:?}: name + value is {chars} characters, must be under {MAX_PARAMETER_CHARS}"
    )]
    ParameterTooLong {
        /// The parameter's name.
        name: String,
        /// Characters in name + value.
        chars: usize,
    },
    /// A `<Dial>` has no `<Number>` to dial.
    #[error("Dial needs at least one Number")]
    DialWithoutNumber,
    /// A string holds a character XML 1.0 cannot represent (C0 controls other than tab, LF, CR;
    /// U+FFFE, U+FFFF).
    #[error("{place} contains U+{codepoint:04X}, which XML 1.0 cannot represent")]
    InvalidCharacter {
        /// Element or `Element@attribute` where it was found.
        place: String,
        /// The offending code point.
        codepoint: u32,
    },
}

/// `GET` or `POST`, for `method`-style attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET`.
    Get,
    /// `POST` (Twilio's default wherever a method attribute exists).
    Post,
}

impl HttpMethod {
    /// The attribute value: `"GET"` or `"POST"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// `<Stream>` inside `<Connect>`: a bidirectional Media Stream to hark
/// (twilio.com/docs/voice/twiml/stream; `reference/twilio.md` §1.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// `url`: absolute `wss://` URL of hark's media WebSocket, no query string.
    pub url: String,
    /// `name`: unique per call; Twilio reports it as `StreamName` in status callbacks.
    pub name: Option<String>,
    /// `statusCallback`: absolute URL for `stream-started` / `stream-stopped` / `stream-error`.
    pub status_callback: Option<String>,
    /// `statusCallbackMethod` (Twilio's default: `POST`).
    pub status_callback_method: Option<HttpMethod>,
    /// `<Parameter name value />` children, in order; they arrive as `start.customParameters`.
    pub parameters: Vec<(String, String)>,
}

impl Stream {
    /// A stream to `url` with no optional attributes and no parameters.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            status_callback: None,
            status_callback_method: None,
            parameters: Vec::new(),
        }
    }

    /// Sets `name`.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets `statusCallback` and, if given, `statusCallbackMethod`.
    #[must_use]
    pub fn status_callback(mut self, url: impl Into<String>, method: Option<HttpMethod>) -> Self {
        self.status_callback = Some(url.into());
        self.status_callback_method = method;
        self
    }

    /// Appends a `<Parameter name value />`.
    #[must_use]
    pub fn parameter(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameters.push((name.into(), value.into()));
        self
    }
}

/// `<Connect>` holding one `<Stream>` (one bidirectional stream per call, §1.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// `action`: URL Twilio requests when the stream ends, instead of running the next verb.
    pub action: Option<String>,
    /// `method` for `action` (Twilio's default: `POST`).
    pub method: Option<HttpMethod>,
    /// The stream.
    pub stream: Stream,
}

impl Connect {
    /// `<Connect>` with no `action`.
    pub fn new(stream: Stream) -> Self {
        Self {
            action: None,
            method: None,
            stream,
        }
    }

    /// Sets `action` and, if given, `method`.
    #[must_use]
    pub fn action(mut self, url: impl Into<String>, method: Option<HttpMethod>) -> Self {
        self.action = Some(url.into());
        self.method = method;
        self
    }
}

/// `<Dial>` with `<Number>` nouns (twilio.com/docs/voice/twiml/dial). Without `action`, Twilio
/// continues with the rest of the document after the dialed call ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// `callerId`: the number shown to the callee (E.164, must be a number on the account).
    pub caller_id: Option<String>,
    /// `action`: URL Twilio requests when the dialed call ends.
    pub action: Option<String>,
    /// `timeout`: seconds to ring before giving up (Twilio's default: 30).
    pub timeout_s: Option<u32>,
    /// The numbers to ring, at least one: each a `<Number>` (E.164, e.g. `+14155550100`), or a
    /// `<Sip>` for a `sip:`/`sips:` URI (twilio.com/docs/voice/twiml/sip).
    pub numbers: Vec<String>,
}

impl Dial {
    /// `<Dial><Number>number</Number></Dial>` with no attributes.
    pub fn number(number: impl Into<String>) -> Self {
        Self {
            caller_id: None,
            action: None,
            timeout_s: None,
            numbers: vec![number.into()],
        }
    }

    /// Sets `callerId`.
    #[must_use]
    pub fn caller_id(mut self, caller_id: impl Into<String>) -> Self {
        self.caller_id = Some(caller_id.into());
        self
    }
}

/// `<Say>`: text-to-speech by Twilio (twilio.com/docs/voice/twiml/say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    /// The words to speak (escaped on output).
    pub text: String,
    /// `voice`, e.g. `alice` or `Polly.Joanna`; Twilio's default if `None`.
    pub voice: Option<String>,
    /// `language`, e.g. `en-US`; Twilio's default if `None`.
    pub language: Option<String>,
}

impl Say {
    /// `<Say>text</Say>` with Twilio's default voice and language.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            voice: None,
            language: None,
        }
    }
}

/// One verb of a `<Response>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `<Connect><Stream …>…</Stream></Connect>`.
    Connect(Connect),
    /// `<Dial …><Number>…</Number>…</Dial>`.
    Dial(Dial),
    /// `<Say …>text</Say>`.
    Say(Say),
    /// `<Pause length="s" />`, or `<Pause />` for Twilio's default of 1 s.
    Pause {
        /// Seconds of silence.
        length_s: Option<u32>,
    },
    /// `<Redirect [method]>url</Redirect>`: fetch more TwiML from `url`.
    Redirect {
        /// Absolute or relative URL.
        url: String,
        /// Twilio's default: `POST`.
        method: Option<HttpMethod>,
    },
    /// `<Hangup />`.
    Hangup,
}

impl From<Connect> for Verb {
    fn from(connect: Connect) -> Self {
        Verb::Connect(connect)
    }
}

impl From<Dial> for Verb {
    fn from(dial: Dial) -> Self {
        Verb::Dial(dial)
    }
}

impl From<Say> for Verb {
    fn from(say: Say) -> Self {
        Verb::Say(say)
    }
}

/// A `<Response>` document: verbs run in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The verbs, in order.
    pub verbs: Vec<Verb>,
}

impl Response {
    /// An empty `<Response />` (Twilio hangs up).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a verb.
    #[must_use]
    pub fn push(mut self, verb: impl Into<Verb>) -> Self {
        self.verbs.push(verb.into());
        self
    }

    /// Writes the document (declaration included) or says why it is invalid; see the module docs
    /// for the format and the checks.
    pub fn render(&self) -> Result<String, TwimlError> {
        let mut xml = Writer {
            out: String::with_capacity(256),
        };
        xml.out.push_str(XML_DECLARATION);
        if self.verbs.is_empty() {
            xml.empty("Response", &mut [])?;
            return Ok(xml.out);
        }
        xml.start("Response", &mut [])?;
        for verb in &self.verbs {
            xml.verb(verb)?;
        }
        xml.end("Response");
        Ok(xml.out)
    }
}

/// (a) The agent call: `<Connect [action]><Stream …>…</Stream></Connect>` followed by `after`
/// (usually [`DEFAULT_AFTER_CONNECT`], i.e. `<Hangup />`).
///
/// Errors: the [`TwimlError`] checks on the stream URL, parameters and characters.
pub fn agent_connect(connect: &Connect, after: &[Verb]) -> Result<String, TwimlError> {
    let mut response = Response {
        verbs: Vec::with_capacity(1 + after.len()),
    };
    response.verbs.push(Verb::Connect(connect.clone()));
    response.verbs.extend_from_slice(after);
    response.render()
}

/// (b) An outbound leg: `<Dial callerId="caller_id"><Number>number</Number></Dial>`.
///
/// Errors: [`TwimlError::InvalidCharacter`].
pub fn dial_number(number: &str, caller_id: &str) -> Result<String, TwimlError> {
    Response::new()
        .push(Dial::number(number).caller_id(caller_id))
        .render()
}

/// (c) Tell the caller something and hang up: `<Say>message</Say><Hangup />`; hark's answer
/// when it cannot serve the call.
///
/// Errors: [`TwimlError::InvalidCharacter`] (see [`say_hangup_lossy`] for a version that cannot
/// fail).
pub fn say_hangup(message: &str) -> Result<String, TwimlError> {
    Response::new()
        .push(Say::new(message))
        .push(Verb::Hangup)
        .render()
}

/// [`say_hangup`] for error paths: characters XML cannot represent are dropped from `message`
/// first, so this always returns a document.
pub fn say_hangup_lossy(message: &str) -> String {
    let clean: String = message.chars().filter(|&c| is_xml_char(c)).collect();
    match say_hangup(&clean) {
        Ok(xml) => xml,
        // Unreachable: the only possible error is an invalid character, all removed above.
        // Fall back to a document without the message rather than panicking.
        Err(_) => format!("{XML_DECLARATION}<Response><Hangup /></Response>"),
    }
}

/// Whether a dial target is a SIP URI (`sip:` or `sips:`, any case), dialled with `<Sip>`.
pub fn is_sip_uri(target: &str) -> bool {
    let t = target.as_bytes();
    (t.len() > 4 && t[..4].eq_ignore_ascii_case(b"sip:"))
        || (t.len() > 5 && t[..5].eq_ignore_ascii_case(b"sips:"))
}

/// (d) A transfer of the caller to `number`: `<Dial><Number>number</Number></Dial>`, or
/// `<Dial><Sip>uri</Sip></Dial>` for a `sip:` URI; the call continues with the caller's own
/// caller ID. hark sends it as `Twiml` of a call update when an agent transfers a call.
///
/// Errors: [`TwimlError::InvalidCharacter`].
pub fn transfer(number: &str) -> Result<String, TwimlError> {
    Response::new().push(Dial::number(number)).render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use quick_xml::events::Event;
    use quick_xml::{Reader, XmlVersion};

    /// Compares `actual` with `fixtures/twiml/<name>` byte for byte; `BLESS=1` rewrites the file.
    fn golden(name: &str, actual: &str) {
        let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "fixtures", "twiml", name]
            .iter()
            .collect();
        assert_well_formed(actual);
        if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with BLESS=1 to create it", path.display()));
        assert_eq!(
            actual, expected,
            "{name} differs from its golden file; BLESS=1 rewrites it"
        );
    }

    /// Parses `xml` with quick-xml, checking balance and escapes; returns a flat trace of
    /// `start name [attr=value…]`, `text …`, `end name` with attribute values and text unescaped.
    fn assert_well_formed(xml: &str) -> Vec<String> {
        assert!(xml.starts_with(XML_DECLARATION), "{xml}");
        let mut reader = Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut depth = 0usize;
        let mut roots = 0usize;
        let mut trace = Vec::new();
        let attrs = |e: &quick_xml::events::BytesStart<'_>| -> String {
            e.attributes()
                .map(|a| {
                    let a = a.expect("attribute");
                    let value = a
                        .normalized_value(XmlVersion::Explicit1_0)
                        .expect("attribute value");
                    format!(" {}={value}", a.key.as_ref() as &str)
                })
                .collect()
        };
        loop {
            match reader
                .read_event()
                .unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"))
            {
                Event::Decl(_) => assert_eq!(depth, 0),
                Event::Start(e) => {
                    roots += usize::from(depth == 0);
                    depth += 1;
                    trace.push(format!("start {}{}", e.name().as_ref() as &str, attrs(&e)));
                }
                Event::Empty(e) => {
                    roots += usize::from(depth == 0);
                    trace.push(format!("empty {}{}", e.name().as_ref() as &str, attrs(&e)));
                }
                Event::End(e) => {
                    depth = depth.checked_sub(1).expect("unbalanced end tag");
                    trace.push(format!("end {}", e.name().as_ref() as &str));
                }
                Event::Text(t) => {
                    assert!(depth > 0, "text outside the root element");
                    let text = t.xml10_content();
                    push_text(&mut trace, &text);
                }
                Event::GeneralRef(r) => {
                    if let Some(c) = r.resolve_char_ref().expect("character reference") {
                        push_text(&mut trace, &c.to_string());
                        continue;
                    }
                    let name = r.xml10_content();
                    let resolved = match &*name {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" => "'",
                        other => panic!("unexpected entity &{other};"),
                    };
                    push_text(&mut trace, resolved);
                }
                Event::Eof => break,
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert_eq!(depth, 0, "unclosed elements");
        assert_eq!(roots, 1, "exactly one root element");
        assert!(trace[0].starts_with("start Response") || trace[0] == "empty Response");
        trace
    }

    /// Appends text to the trace, merging with a preceding text entry (quick-xml splits text at
    /// entity references).
    fn push_text(trace: &mut Vec<String>, text: &str) {
        match trace.last_mut() {
            Some(last) if last.starts_with("text ") => last.push_str(text),
            _ => trace.push(format!("text {text}")),
        }
    }

    #[test]
    fn reference_agent_example_byte_exact() {
        // reference/twilio.md §4, "Agent call (Python style, illustrative host)".
        let stream = Stream::new("wss://hark.example/twilio/media")
            .name("agent")
            .status_callback("https://hark.example/twilio/stream-status", None)
            .parameter("callId", "abc123");
        let xml = agent_connect(
            &Connect::new(stream),
            &[Say::new("Goodbye").into(), Verb::Hangup],
        )
        .unwrap();
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream name="agent" statusCallback="https://hark.example/twilio/stream-status" url="wss://hark.example/twilio/media"><Parameter name="callId" value="abc123" /></Stream></Connect><Say>Goodbye</Say><Hangup /></Response>"#
        );
        golden("reference-agent.xml", &xml);
    }

    #[test]
    fn python_and_node_test_strings() {
        // twilio-python tests/unit/twiml/test_voice_response.py: `<Response><Hangup /></Response>`.
        let xml = Response::new().push(Verb::Hangup).render().unwrap();
        assert_eq!(
            xml,
            format!("{XML_DECLARATION}<Response><Hangup /></Response>")
        );
        golden("hangup.xml", &xml);
        // twilio-node spec/unit/twiml/VoiceResponse.spec.js `<Pause length="5"/>`, Python spacing.
        let xml = Response::new()
            .push(Verb::Pause { length_s: Some(5) })
            .render()
            .unwrap();
        assert_eq!(
            xml,
            format!(r#"{XML_DECLARATION}<Response><Pause length="5" /></Response>"#)
        );
        // An empty response.
        assert_eq!(
            Response::new().render().unwrap(),
            format!("{XML_DECLARATION}<Response />")
        );
    }

    #[test]
    fn reference_escaping_example() {
        // reference/twilio.md §4: `a<b & "c"` → `<Say>a&lt;b &amp; "c"</Say>`.
        let xml = say_hangup(r#"a<b & "c""#).unwrap();
        assert_eq!(
            xml,
            format!(
                r#"{XML_DECLARATION}<Response><Say>a&lt;b &amp; "c"</Say><Hangup /></Response>"#
            )
        );
        let trace = assert_well_formed(&xml);
        assert_eq!(
            trace,
            [
                "start Response",
                r#"start Say"#,
                r#"text a<b & "c""#,
                "end Say",
                "empty Hangup",
                "end Response"
            ]
        );
        golden("say-escaping.xml", &xml);
    }

    #[test]
    fn attribute_escaping_round_trips() {
        let tricky = "a<b & \"c\" 'd' >\r\n\tend";
        let stream = Stream::new("wss://h.example/media-stream").parameter("note", tricky);
        let xml = agent_connect(&Connect::new(stream), DEFAULT_AFTER_CONNECT).unwrap();
        assert!(
            xml.contains(r#"value="a&lt;b &amp; &quot;c&quot; 'd' &gt;&#13;&#10;&#09;end""#),
            "{xml}"
        );
        let trace = assert_well_formed(&xml);
        assert_eq!(
            trace[3],
            format!("empty Parameter name=note value={tricky}")
        );
        golden("connect-escaping.xml", &xml);
    }

    #[test]
    fn connect_minimal() {
        let xml = agent_connect(
            &Connect::new(Stream::new("wss://hark.example/media-stream")),
            DEFAULT_AFTER_CONNECT,
        )
        .unwrap();
        assert_eq!(
            xml,
            format!(
                r#"{XML_DECLARATION}<Response><Connect><Stream url="wss://hark.example/media-stream" /></Connect><Hangup /></Response>"#
            )
        );
        golden("connect-minimal.xml", &xml);
    }

    #[test]
    fn connect_full_with_after_verbs() {
        let stream = Stream::new("wss://hark.example/media-stream")
            .name("agent")
            .status_callback(
                "https://hark.example/twilio/stream-status",
                Some(HttpMethod::Post),
            )
            .parameter("callId", "c_01")
            .parameter("agent", "support");
        let connect = Connect::new(stream).action(
            "https://hark.example/twilio/after-stream",
            Some(HttpMethod::Get),
        );
        let after = [
            Verb::Say(Say {
                text: "Sorry, something went wrong.".into(),
                voice: Some("alice".into()),
                language: Some("en-US".into()),
            }),
            Verb::Pause { length_s: Some(1) },
            Verb::Redirect {
                url: "https://hark.example/twilio/voice?retry=1&x=y".into(),
                method: Some(HttpMethod::Post),
            },
            Verb::Hangup,
        ];
        let xml = agent_connect(&connect, &after).unwrap();
        let trace = assert_well_formed(&xml);
        assert_eq!(
            trace,
            [
                "start Response",
                "start Connect action=https://hark.example/twilio/after-stream method=GET",
                "start Stream name=agent statusCallback=https://hark.example/twilio/stream-status statusCallbackMethod=POST url=wss://hark.example/media-stream",
                "empty Parameter name=callId value=c_01",
                "empty Parameter name=agent value=support",
                "end Stream",
                "end Connect",
                "start Say language=en-US voice=alice",
                "text Sorry, something went wrong.",
                "end Say",
                "empty Pause length=1",
                "start Redirect method=POST",
                "text https://hark.example/twilio/voice?retry=1&x=y",
                "end Redirect",
                "empty Hangup",
                "end Response",
            ]
        );
        golden("connect-full.xml", &xml);
    }

    #[test]
    fn dial_with_caller_id() {
        let xml = dial_number("+14155550100", "+14155550199").unwrap();
        assert_eq!(
            xml,
            format!(
                r#"{XML_DECLARATION}<Response><Dial callerId="+14155550199"><Number>+14155550100</Number></Dial></Response>"#
            )
        );
        golden("dial.xml", &xml);
    }

    #[test]
    fn transfer_to_a_sip_uri_uses_the_sip_noun() {
        assert_eq!(
            transfer("sip:desk@pbx.example.com;transport=tls").unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial>\
             <Sip>sip:desk@pbx.example.com;transport=tls</Sip></Dial></Response>"
        );
        assert!(is_sip_uri("SIPS:a@b") && !is_sip_uri("sip:") && !is_sip_uri("+14155550100"));
    }

    #[test]
    fn transfer_document() {
        let xml = transfer("+14155550123").unwrap();
        assert_eq!(
            xml,
            format!(
                "{XML_DECLARATION}<Response><Dial><Number>+14155550123</Number></Dial></Response>"
            )
        );
        golden("transfer.xml", &xml);
        // All attributes, several numbers: sorted attribute order.
        let dial = Dial {
            caller_id: Some("+1".into()),
            action: Some("/a".into()),
            timeout_s: Some(20),
            numbers: vec!["+2".into(), "+3".into()],
        };
        let xml = Response::new().push(dial).render().unwrap();
        assert!(
            xml.contains(r#"<Dial action="/a" callerId="+1" timeout="20"><Number>+2</Number><Number>+3</Number></Dial>"#),
            "{xml}"
        );
        assert_well_formed(&xml);
    }

    #[test]
    fn say_hangup_document() {
        let xml = say_hangup("Sorry, the agent is unavailable. Goodbye.").unwrap();
        golden("say-hangup.xml", &xml);
        // Empty text is written as an empty element, as ElementTree does.
        let xml = say_hangup("").unwrap();
        assert_eq!(
            xml,
            format!("{XML_DECLARATION}<Response><Say /><Hangup /></Response>")
        );
    }

    #[test]
    fn stream_url_checks() {
        let render =
            |url: &str| agent_connect(&Connect::new(Stream::new(url)), DEFAULT_AFTER_CONNECT);
        assert!(render("wss://h.example/media").is_ok());
        assert!(render("WSS://h.example").is_ok());
        assert!(render("ws://127.0.0.1:8080/media").is_ok());
        for bad in [
            "https://h.example/media",
            "/media",
            "wss:///media",
            "wss://",
            "h.example/media",
            "wss://:443/x",
        ] {
            assert_eq!(
                render(bad),
                Err(TwimlError::StreamUrlScheme { url: bad.into() }),
                "{bad}"
            );
        }
        for bad in ["wss://h.example/media?callId=1", "wss://h.example?x"] {
            assert_eq!(
                render(bad),
                Err(TwimlError::StreamUrlQuery { url: bad.into() }),
                "{bad}"
            );
        }
    }

    #[test]
    fn parameter_length_limit() {
        let render = |name: &str, value: &str| {
            agent_connect(
                &Connect::new(Stream::new("wss://h/m").parameter(name, value)),
                DEFAULT_AFTER_CONNECT,
            )
        };
        assert!(render("n", &"v".repeat(498)).is_ok()); // 499 combined
        assert_eq!(
            render("n", &"v".repeat(499)),
            Err(TwimlError::ParameterTooLong {
                name: "n".into(),
                chars: 500
            })
        );
        // Characters, not bytes: 499 two-byte characters pass.
        assert!(render("é", &"é".repeat(498)).is_ok());
    }

    #[test]
    fn invalid_xml_characters_are_refused() {
        let err = say_hangup("bell\u{7}").unwrap_err();
        assert_eq!(
            err,
            TwimlError::InvalidCharacter {
                place: "Say".into(),
                codepoint: 7
            }
        );
        let err = agent_connect(
            &Connect::new(Stream::new("wss://h/m").parameter("k", "\u{0}")),
            DEFAULT_AFTER_CONNECT,
        )
        .unwrap_err();
        assert_eq!(
            err,
            TwimlError::InvalidCharacter {
                place: "Parameter@value".into(),
                codepoint: 0
            }
        );
        assert!(say_hangup("\u{FFFF}").is_err());
        // Tab, LF, CR and astral characters are fine.
        assert!(say_hangup("a\tb\nc\rd 😀").is_ok());
        // The lossy form drops what cannot be written.
        assert_eq!(
            say_hangup_lossy("bell\u{7} rang"),
            format!("{XML_DECLARATION}<Response><Say>bell rang</Say><Hangup /></Response>")
        );
    }

    #[test]
    fn dial_without_number_is_refused() {
        let dial = Dial {
            caller_id: None,
            action: None,
            timeout_s: None,
            numbers: vec![],
        };
        assert_eq!(
            Response::new().push(dial).render(),
            Err(TwimlError::DialWithoutNumber)
        );
    }
}
