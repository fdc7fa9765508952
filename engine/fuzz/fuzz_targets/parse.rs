//! Fuzzes the Twilio Media Streams wire format (`hark_engine::twilio`) with arbitrary bytes.
//!
//! Properties checked, beyond "never panics":
//! - [`twilio::parse`] and [`twilio::parse_outbound`] take any text;
//! - [`twilio::decode_payload`] appends exactly what it reports, and leaves the buffer as it was
//!   on error;
//! - the outbound encoders, for any `streamSid`, mark name and payload, write a message that
//!   Twilio's strict shape ([`twilio::parse_outbound`]) accepts with exactly those values;
//! - the inbound encoders (used by the call simulator) round-trip through [`twilio::parse`];
//! - the allocation-free fast path of [`twilio::parse`] (plain `media` and `mark`) agrees with
//!   the general path (forced by adding an unknown field).
#![no_main]

use hark_engine::twilio::{self, Inbound, Outbound};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(p) = twilio::parse(&text) {
        if let Inbound::Media(m) = &p.message {
            let mut buf = vec![1u8, 2, 3];
            match twilio::decode_payload(&m.payload, &mut buf) {
                Ok(n) => assert_eq!(buf.len(), 3 + n),
                Err(_) => assert_eq!(buf, [1, 2, 3]),
            }
        }
        // Differential: one more (unknown) top-level field forces the general parser past the
        // allocation-free fast path; both must read the same message.
        let body = text.trim_start();
        if let Some(rest) = body.strip_prefix('{') {
            let extra = format!("{{\"zzExtra\":0,{rest}");
            let q = twilio::parse(&extra).expect("an extra field does not break a message");
            assert_eq!(q.message, p.message);
            assert_eq!(q.sequence_number, p.sequence_number);
            assert_eq!(q.stream_sid, p.stream_sid);
            assert_eq!(q.ignored_fields, p.ignored_fields + 1);
        }
    }
    let _ = twilio::parse_outbound(&text);

    // Any text as streamSid and mark name, any bytes as payload.
    let half = text.chars().count() / 2;
    let mid = text.char_indices().nth(half).map_or(text.len(), |(i, _)| i);
    let (sid, name) = text.split_at(mid);
    let mut s = String::new();

    twilio::encode_media(sid, data, &mut s);
    assert_eq!(
        twilio::parse_outbound(&s),
        Ok(Outbound::Media {
            stream_sid: sid.to_string(),
            mulaw: data.to_vec()
        }),
        "{s}"
    );
    twilio::encode_mark(sid, name, &mut s);
    assert_eq!(
        twilio::parse_outbound(&s),
        Ok(Outbound::Mark {
            stream_sid: sid.to_string(),
            name: name.to_string()
        }),
        "{s}"
    );
    twilio::encode_clear(sid, &mut s);
    assert_eq!(
        twilio::parse_outbound(&s),
        Ok(Outbound::Clear {
            stream_sid: sid.to_string()
        }),
        "{s}"
    );

    twilio::inbound::media(1, sid, 1, 0, data, &mut s);
    let p = twilio::parse(&s).expect("inbound media encoder output parses");
    assert_eq!(p.stream_sid.as_deref(), Some(sid));
    assert_eq!(p.ignored_fields, 0);
    let Inbound::Media(m) = p.message else {
        panic!("not media: {s}")
    };
    let mut buf = Vec::new();
    twilio::decode_payload(&m.payload, &mut buf).expect("valid base64");
    assert_eq!(buf, data);
    let s = twilio::inbound::mark(2, sid, name);
    assert_eq!(
        twilio::parse(&s).expect("inbound mark parses").message,
        Inbound::Mark { name: name.into() }
    );
});
