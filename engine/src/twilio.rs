//! Twilio Media Streams wire format: parsing what Twilio sends, encoding what hark sends back.
//!
//! Source: twilio.com/docs/voice/media-streams/websocket-messages (summarised with examples in
//! `shared/reference/twilio.md` §1). Facts this module rests on:
//! - Every message is a JSON **text** frame with an `event` field. Twilio → hark: `connected`,
//!   `start` (once), `media`, `dtmf`, `mark` (echo of ours), `stop`.
//! - `sequenceNumber`, `media.chunk` and `media.timestamp` are JSON **strings** holding integers;
//!   `mediaFormat.sampleRate` and `channels` are numbers. We accept either form for all of them.
//! - `media.payload` is base64 of headerless μ-law 8 kHz mono: 8 bytes = 1 ms. Frame size is not
//!   documented (20 ms / 160 bytes in practice), so callers derive duration from the bytes.
//! - hark → Twilio: exactly `{"event":"media","streamSid":…,"media":{"payload":…}}`,
//!   `{"event":"mark","streamSid":…,"mark":{"name":…}}` and `{"event":"clear","streamSid":…}`.
//!   Any extra or missing field earns warning 31951, so the encoders write these and nothing else.
//!
//! Unknown events and unknown fields are tolerated: the parser reports how many fields it
//! ignored so the call can count them, and an unknown `event` parses as [`Inbound::Unknown`].

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Why an inbound text frame could not be used. The call always goes on: the frame is counted
/// and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or JSON of the wrong shape (e.g. `media` without a `payload`).
    #[error("malformed message: {0}")]
    Json(String),
    /// JSON without an `event` field.
    #[error("message has no `event` field")]
    NoEvent,
    /// A known event lacks a field it cannot do without (named).
    #[error("`{event}` message lacks `{field}`")]
    Missing {
        /// The event.
        event: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

/// Which audio track a `media` message carries (`media.track`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The caller's audio (`"inbound"`).
    Inbound,
    /// The call's outbound audio, sent only by unidirectional `both_tracks` streams (`"outbound"`).
    Outbound,
    /// Anything else, or absent.
    Other,
}

/// The `start` message's payload (`start.start` plus the top-level `streamSid`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Start {
    /// `streamSid` (`MZ…`): goes into every message hark sends.
    pub stream_sid: String,
    /// `callSid` (`CA…`).
    pub call_sid: String,
    /// `accountSid` (`AC…`).
    pub account_sid: String,
    /// `tracks`, e.g. `["inbound"]`.
    pub tracks: Vec<String>,
    /// `customParameters`: the `<Parameter>` values from TwiML, in document order.
    pub custom_parameters: Vec<(String, String)>,
    /// `mediaFormat.encoding`, `"audio/x-mulaw"` on every Twilio stream.
    pub encoding: String,
    /// `mediaFormat.sampleRate` in Hz (8000).
    pub sample_rate: u32,
    /// `mediaFormat.channels` (1).
    pub channels: u32,
}

/// A `media` message, borrowing its payload from the text frame when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    /// `media.track`.
    pub track: Track,
    /// `media.chunk`: 1-based message counter per track (a string on the wire).
    pub chunk: Option<u64>,
    /// `media.timestamp`: ms since the stream started (a string on the wire).
    pub timestamp_ms: Option<u64>,
    /// `media.payload`: base64 μ-law, not yet decoded.
    pub payload: Cow<'a, str>,
}

/// An inbound message from Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// `connected`: the first message, before `start`.
    Connected,
    /// `start`: stream metadata, once.
    Start(Box<Start>),
    /// `media`: a chunk of caller audio.
    Media(Media<'a>),
    /// `dtmf`: a key the caller pressed (`dtmf.digit`, one of `0-9*#A-D`).
    Dtmf {
        /// The digit as Twilio sent it.
        digit: String,
    },
    /// `mark`: Twilio's echo of a mark hark sent, once the audio before it played or was cleared.
    Mark {
        /// `mark.name`.
        name: Cow<'a, str>,
    },
    /// `stop`: the stream ended (call hung up, `<Stop>`, or the socket is about to close).
    Stop,
    /// Any other `event`: tolerated and counted.
    Unknown {
        /// The event name.
        event: String,
    },
}

/// The result of parsing one text frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The message.
    pub message: Inbound<'a>,
    /// `sequenceNumber`, when present and numeric.
    pub sequence_number: Option<u64>,
    /// Top-level `streamSid`, when present.
    pub stream_sid: Option<Cow<'a, str>>,
    /// How many JSON fields the parser did not know and skipped (extra fields are legal; they
    /// are counted so a change on Twilio's side shows in the metrics).
    pub ignored_fields: u32,
}

/// Integer counters arrive as strings (`"42"`); accept numbers too. A value that is neither a
/// number nor a numeric string becomes `None` rather than failing the whole message.
fn counter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(CounterVisitor { lenient: true })
}

/// [`counter`] for the fast path: an array or object fails (then the general path reads the
/// message, and counts what it skips inside as ignored fields, so both paths agree).
fn scalar_counter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(CounterVisitor { lenient: false })
}

#[derive(Clone, Copy)]
struct CounterVisitor {
    /// Skip arrays and objects (as `None`) instead of failing.
    lenient: bool,
}

impl<'de> Visitor<'de> for CounterVisitor {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer or a string holding one")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).ok())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok((v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64).then_some(v as u64))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.trim().parse().ok())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        if !self.lenient {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        while a.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        if !self.lenient {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Deserializes an optional string, borrowing from the input when it has no escapes
/// (serde's own `Option<Cow<str>>` always allocates).
fn cow_str<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(V)
        }
    }
    d.deserialize_option(V)
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(default, borrow, deserialize_with = "cow_str")]
    event: Option<Cow<'a, str>>,
    #[serde(default, rename = "sequenceNumber", deserialize_with = "counter")]
    sequence_number: Option<u64>,
    #[serde(default, borrow, rename = "streamSid", deserialize_with = "cow_str")]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(default, borrow)]
    mark: Option<RawMark<'a>>,
    #[serde(default)]
    dtmf: Option<RawDtmf>,
    // `connected` carries `protocol`/`version`, `stop` carries `stop {accountSid, callSid}`:
    // nothing hark needs, but known, so they are not counted as extra fields.
    #[serde(default, borrow, rename = "protocol")]
    _protocol: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "version")]
    _version: Option<Cow<'a, str>>,
    #[serde(default, rename = "stop")]
    _stop: Option<RawStop>,
}

/// A `media` or `mark` message with exactly the documented fields (§1.2), for the fast path of
/// [`parse`]: in steady state Twilio sends 50 `media` a second per call and a `mark` echo every
/// 100 ms of agent audio, and `serde_ignored` (needed to count extra fields) copies every key
/// into a `String`, 5–8 allocations per message. Anything else — an extra field, another
/// event, an error — fails here and takes the general path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plain<'a> {
    #[serde(borrow, deserialize_with = "cow_str")]
    event: Option<Cow<'a, str>>,
    #[serde(
        default,
        rename = "sequenceNumber",
        deserialize_with = "scalar_counter"
    )]
    sequence_number: Option<u64>,
    #[serde(default, borrow, rename = "streamSid", deserialize_with = "cow_str")]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    media: Option<PlainMedia<'a>>,
    #[serde(default, borrow)]
    mark: Option<PlainMark<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMedia<'a> {
    #[serde(default, borrow, deserialize_with = "cow_str")]
    track: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "scalar_counter")]
    chunk: Option<u64>,
    #[serde(default, deserialize_with = "scalar_counter")]
    timestamp: Option<u64>,
    #[serde(borrow, deserialize_with = "cow_str")]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainMark<'a> {
    #[serde(borrow, deserialize_with = "cow_str")]
    name: Option<Cow<'a, str>>,
}

/// [`parse`] without allocating, for plain `media` and `mark` messages; `None` for anything
/// else (then the general path decides, so both paths always agree).
fn parse_plain(text: &str) -> Option<Parsed<'_>> {
    let p: Plain<'_> = serde_json::from_str(text).ok()?;
    let message = match (p.event.as_deref()?, p.media, p.mark) {
        ("media", Some(m), None) => Inbound::Media(Media {
            track: track(m.track.as_deref()),
            chunk: m.chunk,
            timestamp_ms: m.timestamp,
            payload: m.payload?,
        }),
        ("mark", None, Some(k)) => Inbound::Mark { name: k.name? },
        _ => return None,
    };
    Some(Parsed {
        message,
        sequence_number: p.sequence_number,
        stream_sid: p.stream_sid,
        ignored_fields: 0,
    })
}

fn track(name: Option<&str>) -> Track {
    match name {
        Some("inbound") | None => Track::Inbound,
        Some("outbound") => Track::Outbound,
        Some(_) => Track::Other,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStop {
    #[serde(default, rename = "accountSid")]
    _account_sid: Option<String>,
    #[serde(default, rename = "callSid")]
    _call_sid: Option<String>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(default, borrow, deserialize_with = "cow_str")]
    track: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "counter")]
    chunk: Option<u64>,
    #[serde(default, deserialize_with = "counter")]
    timestamp: Option<u64>,
    #[serde(default, borrow, deserialize_with = "cow_str")]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawMark<'a> {
    #[serde(default, borrow, deserialize_with = "cow_str")]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawDtmf {
    #[serde(default)]
    digit: Option<String>,
    #[serde(default, rename = "track")]
    _track: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawStart {
    #[serde(default)]
    stream_sid: Option<String>,
    #[serde(default)]
    call_sid: Option<String>,
    #[serde(default)]
    account_sid: Option<String>,
    #[serde(default)]
    tracks: Option<Vec<String>>,
    #[serde(default)]
    custom_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    media_format: Option<RawMediaFormat>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMediaFormat {
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default, deserialize_with = "counter")]
    sample_rate: Option<u64>,
    #[serde(default, deserialize_with = "counter")]
    channels: Option<u64>,
}

/// Parses one inbound text frame.
///
/// # Errors
/// [`ParseError`] for non-JSON, a missing `event`, or a known event without the field it needs
/// (`media.payload`, `mark.name`, `dtmf.digit`, `start.streamSid`). Extra fields and unknown
/// events are not errors.
pub fn parse(text: &str) -> Result<Parsed<'_>, ParseError> {
    // Fast path: a plain `media` or `mark` message, parsed without allocating.
    if let Some(p) = parse_plain(text) {
        return Ok(p);
    }
    let mut ignored = 0u32;
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawMessage<'_> = serde_ignored::deserialize(&mut de, |_path| {
        #[cfg(test)]
        eprintln!("ignored field {_path}");
        ignored += 1
    })
    .map_err(|e| ParseError::Json(e.to_string()))?;
    de.end().map_err(|e| ParseError::Json(e.to_string()))?;
    let event = raw.event.ok_or(ParseError::NoEvent)?;
    let message = match event.as_ref() {
        "media" => {
            let m = raw.media.ok_or(ParseError::Missing {
                event: "media",
                field: "media",
            })?;
            Inbound::Media(Media {
                track: track(m.track.as_deref()),
                chunk: m.chunk,
                timestamp_ms: m.timestamp,
                payload: m.payload.ok_or(ParseError::Missing {
                    event: "media",
                    field: "media.payload",
                })?,
            })
        }
        "mark" => Inbound::Mark {
            name: raw.mark.and_then(|m| m.name).ok_or(ParseError::Missing {
                event: "mark",
                field: "mark.name",
            })?,
        },
        "dtmf" => Inbound::Dtmf {
            digit: raw.dtmf.and_then(|d| d.digit).ok_or(ParseError::Missing {
                event: "dtmf",
                field: "dtmf.digit",
            })?,
        },
        "start" => {
            let s = raw.start.ok_or(ParseError::Missing {
                event: "start",
                field: "start",
            })?;
            let stream_sid = s
                .stream_sid
                .or_else(|| raw.stream_sid.as_ref().map(|c| c.to_string()))
                .ok_or(ParseError::Missing {
                    event: "start",
                    field: "start.streamSid",
                })?;
            let fmt = s.media_format.unwrap_or_default();
            Inbound::Start(Box::new(Start {
                stream_sid,
                call_sid: s.call_sid.unwrap_or_default(),
                account_sid: s.account_sid.unwrap_or_default(),
                tracks: s.tracks.unwrap_or_default(),
                custom_parameters: s
                    .custom_parameters
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, v)
                    })
                    .collect(),
                encoding: fmt.encoding.unwrap_or_else(|| "audio/x-mulaw".into()),
                sample_rate: fmt.sample_rate.unwrap_or(8000) as u32,
                channels: fmt.channels.unwrap_or(1) as u32,
            }))
        }
        "connected" => Inbound::Connected,
        "stop" => Inbound::Stop,
        other => Inbound::Unknown {
            event: other.to_string(),
        },
    };
    Ok(Parsed {
        message,
        sequence_number: raw.sequence_number,
        stream_sid: raw.stream_sid,
        ignored_fields: ignored,
    })
}

/// Decodes a base64 `media.payload` into μ-law bytes, appending to `out` (reuse it across
/// frames: no allocation once it has capacity). Returns the number of bytes appended.
///
/// # Errors
/// [`base64::DecodeSliceError`] for invalid base64; `out` is left as it was.
pub fn decode_payload(payload: &str, out: &mut Vec<u8>) -> Result<usize, base64::DecodeSliceError> {
    let start = out.len();
    let max = payload.len().div_ceil(4) * 3;
    out.resize(start + max, 0);
    match B64.decode_slice(payload.as_bytes(), &mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(n)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Appends `s` as a JSON string literal (with quotes) to `out`.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes an outbound `media` message into `out` (cleared first):
/// `{"event":"media","streamSid":"…","media":{"payload":"<base64 μ-law>"}}`.
/// `mulaw` is headerless μ-law 8 kHz mono (8 bytes per ms). No allocation once `out` has
/// capacity (a 20 ms frame needs 270 bytes with a 34-character SID).
pub fn encode_media(stream_sid: &str, mulaw: &[u8], out: &mut String) {
    out.clear();
    out.push_str("{\"event\":\"media\",\"streamSid\":");
    push_json_str(out, stream_sid);
    out.push_str(",\"media\":{\"payload\":\"");
    B64.encode_string(mulaw, out);
    out.push_str("\"}}");
}

/// Writes an outbound `mark` message into `out` (cleared first):
/// `{"event":"mark","streamSid":"…","mark":{"name":"…"}}`.
pub fn encode_mark(stream_sid: &str, name: &str, out: &mut String) {
    out.clear();
    out.push_str("{\"event\":\"mark\",\"streamSid\":");
    push_json_str(out, stream_sid);
    out.push_str(",\"mark\":{\"name\":");
    push_json_str(out, name);
    out.push_str("}}");
}

/// Writes an outbound `clear` message into `out` (cleared first):
/// `{"event":"clear","streamSid":"…"}`.
pub fn encode_clear(stream_sid: &str, out: &mut String) {
    out.clear();
    out.push_str("{\"event\":\"clear\",\"streamSid\":");
    push_json_str(out, stream_sid);
    out.push('}');
}

mod peer;

pub use peer::{Outbound, OutboundError, inbound, parse_outbound};

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"ACxx","streamSid":"MZxx","callSid":"CAxx","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"FirstName":"Jane","LastName":"Doe"}},"streamSid":"MZxx"}"#;

    #[test]
    fn parses_the_documented_examples() {
        let p = parse(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#).unwrap();
        assert_eq!(p.message, Inbound::Connected);
        assert_eq!(p.ignored_fields, 0);

        let p = parse(START).unwrap();
        let Inbound::Start(s) = p.message else {
            panic!("not start")
        };
        assert_eq!(s.stream_sid, "MZxx");
        assert_eq!(s.call_sid, "CAxx");
        assert_eq!(s.account_sid, "ACxx");
        assert_eq!(s.tracks, vec!["inbound"]);
        assert_eq!(s.sample_rate, 8000);
        assert_eq!(s.custom_parameters.len(), 2);
        assert_eq!(p.sequence_number, Some(1));
        assert_eq!(p.ignored_fields, 0);

        let p = parse(r#"{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"no+JhoaJjpw="},"streamSid":"MZxx"}"#).unwrap();
        let Inbound::Media(m) = &p.message else {
            panic!("not media")
        };
        assert_eq!(
            (m.chunk, m.timestamp_ms, m.track),
            (Some(2), Some(5), Track::Inbound)
        );
        assert!(matches!(m.payload, Cow::Borrowed(_)));
        assert_eq!(p.ignored_fields, 0);

        let p = parse(r#"{"event":"dtmf","streamSid":"MZxx","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#).unwrap();
        assert_eq!(p.message, Inbound::Dtmf { digit: "1".into() });
        assert_eq!(p.ignored_fields, 0);

        let p = parse(r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZxx","mark":{"name":"my label"}}"#).unwrap();
        assert_eq!(
            p.message,
            Inbound::Mark {
                name: "my label".into()
            }
        );

        let p = parse(r#"{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"ACxx","callSid":"CAxx"},"streamSid":"MZxx"}"#).unwrap();
        assert_eq!(p.message, Inbound::Stop);
        assert_eq!(p.ignored_fields, 0);
    }

    #[test]
    fn numbers_accepted_where_strings_are_documented() {
        let p = parse(r#"{"event":"media","sequenceNumber":4,"media":{"chunk":2,"timestamp":5,"payload":""}}"#).unwrap();
        let Inbound::Media(m) = p.message else {
            panic!()
        };
        assert_eq!(
            (p.sequence_number, m.chunk, m.timestamp_ms),
            (Some(4), Some(2), Some(5))
        );
        // A junk counter does not lose the audio.
        let p = parse(
            r#"{"event":"media","sequenceNumber":"x","media":{"timestamp":null,"payload":"AA=="}}"#,
        )
        .unwrap();
        assert!(matches!(p.message, Inbound::Media(_)));
        assert_eq!(p.sequence_number, None);
    }

    #[test]
    fn extra_fields_and_unknown_events_are_counted_not_fatal() {
        let p = parse(r#"{"event":"media","extra":1,"media":{"payload":"AA==","volume":{"a":1}}}"#)
            .unwrap();
        assert_eq!(p.ignored_fields, 2);
        let p = parse(r#"{"event":"telemetry","x":1}"#).unwrap();
        assert_eq!(
            p.message,
            Inbound::Unknown {
                event: "telemetry".into()
            }
        );
    }

    #[test]
    fn escaped_payload_is_owned_and_correct() {
        let p = parse(r#"{"event":"media","media":{"payload":"ab\/c"}}"#).unwrap();
        let Inbound::Media(m) = p.message else {
            panic!()
        };
        assert_eq!(m.payload, "ab/c");
    }

    #[test]
    fn errors() {
        assert!(matches!(parse("not json"), Err(ParseError::Json(_))));
        assert!(matches!(parse("{}"), Err(ParseError::NoEvent)));
        assert!(matches!(
            parse(r#"{"event":"media"}"#),
            Err(ParseError::Missing { .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"media","media":{}}"#),
            Err(ParseError::Missing { .. })
        ));
        assert!(matches!(
            parse(r#"{"event":"mark","mark":{}}"#),
            Err(ParseError::Missing { .. })
        ));
        assert!(parse(r#"{"event":"media","media":{"payload":"AA=="}} trailing"#).is_err());
    }

    #[test]
    fn payload_decoding() {
        let mut buf = Vec::new();
        assert_eq!(decode_payload("AAEC", &mut buf).unwrap(), 3);
        assert_eq!(buf, vec![0, 1, 2]);
        assert!(decode_payload("!!!!", &mut buf).is_err());
        assert_eq!(buf, vec![0, 1, 2]);
        assert_eq!(decode_payload("", &mut buf).unwrap(), 0);
    }

    #[test]
    fn outbound_messages_have_exactly_twilios_fields() {
        let mut s = String::new();
        encode_media("MZ1", &[0xFF; 160], &mut s);
        assert_eq!(
            parse_outbound(&s).unwrap(),
            Outbound::Media {
                stream_sid: "MZ1".into(),
                mulaw: vec![0xFF; 160]
            }
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["media"]["payload"].as_str().unwrap().len(), 216);
        encode_mark("MZ1", "a \"q\"", &mut s);
        assert_eq!(
            parse_outbound(&s).unwrap(),
            Outbound::Mark {
                stream_sid: "MZ1".into(),
                name: "a \"q\"".into()
            }
        );
        encode_clear("MZ1", &mut s);
        assert_eq!(s, r#"{"event":"clear","streamSid":"MZ1"}"#);
        assert!(
            parse_outbound(r#"{"event":"clear","streamSid":"MZ1","sequenceNumber":"1"}"#).is_err()
        );
        assert!(parse_outbound(r#"{"event":"media","streamSid":"MZ1","media":{"payload":"AA==","track":"outbound"}}"#).is_err());
        assert!(parse_outbound(r#"{"event":"mark","streamSid":"MZ1"}"#).is_err());
    }

    #[test]
    fn inbound_encoders_round_trip() {
        let mut s = String::new();
        inbound::media(7, "MZ1", 6, 100, &[1, 2, 3], &mut s);
        let p = parse(&s).unwrap();
        assert_eq!(p.sequence_number, Some(7));
        assert_eq!(p.ignored_fields, 0);
        let Inbound::Media(m) = p.message else {
            panic!()
        };
        assert_eq!((m.chunk, m.timestamp_ms), (Some(6), Some(100)));
        let start = Start {
            stream_sid: "MZ1".into(),
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            tracks: vec!["inbound".into()],
            custom_parameters: vec![("k".into(), "v".into())],
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        };
        let text = inbound::start(1, &start);
        let p = parse(&text).unwrap();
        assert_eq!(p.message, Inbound::Start(Box::new(start)));
        assert_eq!(p.ignored_fields, 0);
        assert_eq!(
            parse(&inbound::stop(9, "MZ1", "AC1", "CA1"))
                .unwrap()
                .ignored_fields,
            0
        );
        assert_eq!(
            parse(&inbound::dtmf(9, "MZ1", "#")).unwrap().message,
            Inbound::Dtmf { digit: "#".into() }
        );
        assert_eq!(
            parse(&inbound::mark(9, "MZ1", "m1")).unwrap().message,
            Inbound::Mark { name: "m1".into() }
        );
    }
}
