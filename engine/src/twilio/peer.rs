//! Twilio's side of the wire, for the call simulator, fixtures and tests: strict parsing of
//! what hark sends ([`parse_outbound`]: anything Twilio would refuse is an error) and encoders
//! for what Twilio sends ([`inbound`]). The serving path never uses these.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::{Start, push_json_str};
use std::fmt::Write as _;
/// A message hark sends to Twilio, as parsed strictly by [`parse_outbound`] (for the call
/// simulator and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// `media` with its decoded μ-law payload.
    Media {
        /// `streamSid`.
        stream_sid: String,
        /// Decoded payload (μ-law bytes).
        mulaw: Vec<u8>,
    },
    /// `mark`.
    Mark {
        /// `streamSid`.
        stream_sid: String,
        /// `mark.name`.
        name: String,
    },
    /// `clear`.
    Clear {
        /// `streamSid`.
        stream_sid: String,
    },
}

/// Why an outbound message is not one Twilio accepts (it would raise warning 31951).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid outbound Twilio message: {0}")]
pub struct OutboundError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictPayload {
    payload: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictName {
    name: String,
}

#[derive(Deserialize)]
#[serde(tag = "event", rename_all = "lowercase", deny_unknown_fields)]
enum StrictOutbound {
    Media {
        #[serde(rename = "streamSid")]
        stream_sid: String,
        media: StrictPayload,
    },
    Mark {
        #[serde(rename = "streamSid")]
        stream_sid: String,
        mark: StrictName,
    },
    Clear {
        #[serde(rename = "streamSid")]
        stream_sid: String,
    },
}

/// Parses a message meant for Twilio with Twilio's rules: exactly the documented fields, no
/// more, no fewer, and a valid base64 payload. Used by the simulator and by tests to prove that
/// every message hark sends is one Twilio accepts.
///
/// # Errors
/// [`OutboundError`] naming what is wrong.
pub fn parse_outbound(text: &str) -> Result<Outbound, OutboundError> {
    let m: StrictOutbound = serde_json::from_str(text).map_err(|e| OutboundError(e.to_string()))?;
    Ok(match m {
        StrictOutbound::Media { stream_sid, media } => Outbound::Media {
            stream_sid,
            mulaw: B64
                .decode(media.payload.as_bytes())
                .map_err(|e| OutboundError(format!("media.payload: {e}")))?,
        },
        StrictOutbound::Mark { stream_sid, mark } => Outbound::Mark {
            stream_sid,
            name: mark.name,
        },
        StrictOutbound::Clear { stream_sid } => Outbound::Clear { stream_sid },
    })
}

/// Encoders for the messages Twilio sends, used by the call simulator (`hark call`) and by
/// fixtures and tests. Shapes and key order follow the examples in Twilio's
/// websocket-messages page (see `shared/reference/twilio.md` §1.2).
pub mod inbound {
    use super::*;
    use serde_json::json;

    /// `{"event":"connected","protocol":"Call","version":"1.0.0"}`.
    pub fn connected() -> String {
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_string()
    }

    /// The `start` message with `sequenceNumber` `seq`.
    pub fn start(seq: u64, start: &Start) -> String {
        let params: serde_json::Map<String, serde_json::Value> = start
            .custom_parameters
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        json!({
            "event": "start",
            "sequenceNumber": seq.to_string(),
            "start": {
                "accountSid": start.account_sid,
                "streamSid": start.stream_sid,
                "callSid": start.call_sid,
                "tracks": start.tracks,
                "mediaFormat": {
                    "encoding": start.encoding,
                    "sampleRate": start.sample_rate,
                    "channels": start.channels,
                },
                "customParameters": params,
            },
            "streamSid": start.stream_sid,
        })
        .to_string()
    }

    /// An inbound-track `media` message; `timestamp_ms` is ms since stream start, `mulaw` the
    /// raw μ-law bytes (base64-encoded here). Written into `out` (cleared first).
    pub fn media(
        seq: u64,
        stream_sid: &str,
        chunk: u64,
        timestamp_ms: u64,
        mulaw: &[u8],
        out: &mut String,
    ) {
        out.clear();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "{{\"event\":\"media\",\"sequenceNumber\":\"{seq}\",\"media\":{{\"track\":\"inbound\",\"chunk\":\"{chunk}\",\"timestamp\":\"{timestamp_ms}\",\"payload\":\""
        );
        B64.encode_string(mulaw, out);
        out.push_str("\"},\"streamSid\":");
        push_json_str(out, stream_sid);
        out.push('}');
    }

    /// A `mark` echo.
    pub fn mark(seq: u64, stream_sid: &str, name: &str) -> String {
        json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": stream_sid, "mark": {"name": name}}).to_string()
    }

    /// A `dtmf` message (track `inbound_track`).
    pub fn dtmf(seq: u64, stream_sid: &str, digit: &str) -> String {
        json!({"event": "dtmf", "streamSid": stream_sid, "sequenceNumber": seq.to_string(), "dtmf": {"track": "inbound_track", "digit": digit}}).to_string()
    }

    /// The `stop` message.
    pub fn stop(seq: u64, stream_sid: &str, account_sid: &str, call_sid: &str) -> String {
        json!({"event": "stop", "sequenceNumber": seq.to_string(), "stop": {"accountSid": account_sid, "callSid": call_sid}, "streamSid": stream_sid}).to_string()
    }
}
