//! Writing TwiML out in ElementTree's conventions (see [`super`]): elements and sorted
//! attributes, escaping, and the checks on characters and the `<Stream>` URL.

use super::{Connect, HttpMethod, MAX_PARAMETER_CHARS, TwimlError, Verb, is_sip_uri};

/// Minimal writer in ElementTree's output conventions.
pub(super) struct Writer {
    /// The document so far.
    pub(super) out: String,
}

/// An attribute: name, value (`None`: omitted).
type Attr<'a> = (&'static str, Option<&'a str>);

impl Writer {
    pub(super) fn verb(&mut self, verb: &Verb) -> Result<(), TwimlError> {
        match verb {
            Verb::Connect(connect) => self.connect(connect),
            Verb::Dial(dial) => {
                if dial.numbers.is_empty() {
                    return Err(TwimlError::DialWithoutNumber);
                }
                let timeout = dial.timeout_s.map(|s| s.to_string());
                self.start(
                    "Dial",
                    &mut [
                        ("action", dial.action.as_deref()),
                        ("callerId", dial.caller_id.as_deref()),
                        ("timeout", timeout.as_deref()),
                    ],
                )?;
                for number in &dial.numbers {
                    let noun = if is_sip_uri(number) { "Sip" } else { "Number" };
                    self.text_element(noun, &mut [], number)?;
                }
                self.end("Dial");
                Ok(())
            }
            Verb::Say(say) => self.text_element(
                "Say",
                &mut [
                    ("language", say.language.as_deref()),
                    ("voice", say.voice.as_deref()),
                ],
                &say.text,
            ),
            Verb::Pause { length_s } => {
                let length = length_s.map(|s| s.to_string());
                self.empty("Pause", &mut [("length", length.as_deref())])
            }
            Verb::Redirect { url, method } => self.text_element(
                "Redirect",
                &mut [("method", method.map(HttpMethod::as_str))],
                url,
            ),
            Verb::Hangup => self.empty("Hangup", &mut []),
        }
    }

    fn connect(&mut self, connect: &Connect) -> Result<(), TwimlError> {
        let stream = &connect.stream;
        check_stream_url(&stream.url)?;
        for (name, value) in &stream.parameters {
            let chars = name.chars().count() + value.chars().count();
            if chars >= MAX_PARAMETER_CHARS {
                return Err(TwimlError::ParameterTooLong {
                    name: name.clone(),
                    chars,
                });
            }
        }
        self.start(
            "Connect",
            &mut [
                ("action", connect.action.as_deref()),
                ("method", connect.method.map(HttpMethod::as_str)),
            ],
        )?;
        let mut attrs = [
            ("name", stream.name.as_deref()),
            ("statusCallback", stream.status_callback.as_deref()),
            (
                "statusCallbackMethod",
                stream.status_callback_method.map(HttpMethod::as_str),
            ),
            ("url", Some(stream.url.as_str())),
        ];
        if stream.parameters.is_empty() {
            self.empty("Stream", &mut attrs)?;
        } else {
            self.start("Stream", &mut attrs)?;
            for (name, value) in &stream.parameters {
                self.empty(
                    "Parameter",
                    &mut [("name", Some(name)), ("value", Some(value))],
                )?;
            }
            self.end("Stream");
        }
        self.end("Connect");
        Ok(())
    }

    /// `<name attrs>text</name>`, or `<name attrs />` if `text` is empty (as ElementTree does).
    fn text_element(
        &mut self,
        name: &'static str,
        attrs: &mut [Attr<'_>],
        text: &str,
    ) -> Result<(), TwimlError> {
        if text.is_empty() {
            return self.empty(name, attrs);
        }
        self.start(name, attrs)?;
        check_chars(text, || name.to_owned())?;
        escape_into(&mut self.out, text, false);
        self.end(name);
        Ok(())
    }

    pub(super) fn start(
        &mut self,
        name: &'static str,
        attrs: &mut [Attr<'_>],
    ) -> Result<(), TwimlError> {
        self.open(name, attrs)?;
        self.out.push('>');
        Ok(())
    }

    pub(super) fn empty(
        &mut self,
        name: &'static str,
        attrs: &mut [Attr<'_>],
    ) -> Result<(), TwimlError> {
        self.open(name, attrs)?;
        self.out.push_str(" />");
        Ok(())
    }

    pub(super) fn end(&mut self, name: &'static str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    /// `<name a="v" …` with attributes sorted by name and `None` values left out.
    fn open(&mut self, name: &'static str, attrs: &mut [Attr<'_>]) -> Result<(), TwimlError> {
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        self.out.push('<');
        self.out.push_str(name);
        for &mut (attr, value) in attrs {
            let Some(value) = value else { continue };
            check_chars(value, || format!("{name}@{attr}"))?;
            self.out.push(' ');
            self.out.push_str(attr);
            self.out.push_str("=\"");
            escape_into(&mut self.out, value, true);
            self.out.push('"');
        }
        Ok(())
    }
}

/// `url` must be `ws://` / `wss://` (any case), have a host, and have no query string.
fn check_stream_url(url: &str) -> Result<(), TwimlError> {
    let rest = url.split_once("://").and_then(|(scheme, rest)| {
        (scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("ws")).then_some(rest)
    });
    let host_present =
        rest.is_some_and(|rest| !rest.starts_with(['/', '?', '#', ':']) && !rest.is_empty());
    if !host_present {
        return Err(TwimlError::StreamUrlScheme {
            url: url.to_owned(),
        });
    }
    if url.contains('?') {
        return Err(TwimlError::StreamUrlQuery {
            url: url.to_owned(),
        });
    }
    Ok(())
}

/// XML 1.0 `Char`: `#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]`
/// (surrogates cannot occur in a Rust `char`).
pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `Err(InvalidCharacter)` naming `place()` if `value` holds a character XML 1.0 cannot
/// represent.
fn check_chars(value: &str, place: impl FnOnce() -> String) -> Result<(), TwimlError> {
    match value.chars().find(|&c| !is_xml_char(c)) {
        Some(c) => Err(TwimlError::InvalidCharacter {
            place: place(),
            codepoint: u32::from(c),
        }),
        None => Ok(()),
    }
}

/// Appends `value` escaped as ElementTree does: text escapes `& < >`; attributes also `"` and
/// CR, LF, TAB as character references.
fn escape_into(out: &mut String, value: &str, attribute: bool) {
    for c in value.chars() {
        escape_char(out, c, attribute);
    }
}

/// Appends `value` as an attribute value, escaped as [`Response::render`](super::Response::render)
/// escapes one, after dropping the characters XML 1.0 cannot represent (where `render` refuses
/// them): for a value hark did not write and must pass on whatever it holds, such as the signed
/// URL a provider returns (`agents::elevenlabs::direct_twiml`).
pub(crate) fn escape_attr_lossy(out: &mut String, value: &str) {
    for c in value.chars().filter(|&c| is_xml_char(c)) {
        escape_char(out, c, true);
    }
}

/// Appends one character, escaped as in text or (`attribute`) in an attribute value.
fn escape_char(out: &mut String, c: char, attribute: bool) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' if attribute => out.push_str("&quot;"),
        '\r' if attribute => out.push_str("&#13;"),
        '\n' if attribute => out.push_str("&#10;"),
        '\t' if attribute => out.push_str("&#09;"),
        c => out.push(c),
    }
}
