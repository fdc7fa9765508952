//! What Twilio puts on the wire before any audio: the URL it dials and signs ([`signed_url`],
//! checked by `check_url`) and the `start` message's SIDs and customParameters ([`fresh_start`]).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use hark_engine::twilio::Start;

use super::SimError;

/// A `start` with fresh random SIDs (`MZ`, `CA`, `AC` + 32 lowercase hex digits), tracks
/// `["inbound"]`, mediaFormat `audio/x-mulaw` 8000 Hz mono, and `params` as customParameters.
pub fn fresh_start(params: Vec<(String, String)>) -> Start {
    Start {
        stream_sid: format!("MZ{}", random_hex32()),
        call_sid: format!("CA{}", random_hex32()),
        account_sid: format!("AC{}", random_hex32()),
        tracks: vec!["inbound".to_string()],
        custom_parameters: params,
        encoding: "audio/x-mulaw".to_string(),
        sample_rate: 8_000,
        channels: 1,
    }
}

/// A fresh Auth Token for a server and its simulated callers in one process (`hark demo`,
/// `hark bench`): 32 lowercase hex digits (as the SIDs of [`fresh_start`]). Unguessable enough for a
/// loopback server that lives as long as the process, not for credentials that outlive it.
pub fn random_token() -> String {
    random_hex32()
}

/// 32 lowercase hex digits, unique per process and random across processes (std's randomly
/// keyed SipHash over a counter and the time; not for secrets).
pub(super) fn random_hex32() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut out = String::with_capacity(32);
    for half in 0..2u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u8(half);
        // Writing to a String cannot fail.
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

/// Merges `over` into `base`: a parameter of the same name is replaced, a new one appended.
pub(super) fn merge_params(base: &mut Vec<(String, String)>, over: &[(String, String)]) {
    for (k, v) in over {
        match base.iter_mut().find(|(bk, _)| bk == k) {
            Some(e) => e.1 = v.clone(),
            None => base.push((k.clone(), v.clone())),
        }
    }
}

/// The URL whose signature Twilio sends when it dials `url` for a server whose public base URL
/// is `public_url` (its `HARK_PUBLIC_URL`): `https://` becomes `wss://` and `http://` becomes
/// `ws://`, a trailing `/` is dropped, and the path of `url` is appended (`https://abc.ngrok.app`
/// and `ws://127.0.0.1:3000/media-stream` → `wss://abc.ngrok.app/media-stream`). Without
/// `public_url`, `url` itself.
///
/// # Errors
/// [`SimError::Invalid`] when `public_url` is not an `https://`, `http://`, `wss://` or `ws://`
/// URL with a host, or has a query string or fragment.
pub fn signed_url(url: &str, public_url: Option<&str>) -> Result<String, SimError> {
    let Some(public) = public_url else {
        return Ok(url.to_string());
    };
    let public = public.trim().trim_end_matches('/');
    let lower = public.to_ascii_lowercase();
    let rest = [
        ("https://", "wss://"),
        ("http://", "ws://"),
        ("wss://", "wss://"),
        ("ws://", "ws://"),
    ]
    .into_iter()
    .find_map(|(from, to)| lower.starts_with(from).then(|| (to, &public[from.len()..])));
    let Some((scheme, rest)) = rest.filter(|(_, r)| !r.is_empty()) else {
        return Err(SimError::Invalid(format!(
            "--public-url {public}: expected the server's HARK_PUBLIC_URL, like https://abc.ngrok.app"
        )));
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(SimError::Invalid(format!(
            "--public-url {public}: no query string or fragment"
        )));
    }
    // The path of the dialled URL: after `ws://host[:port]`.
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    Ok(format!("{scheme}{rest}{path}"))
}

/// Checks that `url` is one Twilio would connect to and this build can reach.
pub(super) fn check_url(url: &str) -> Result<(), SimError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("wss://") {
        return Err(SimError::Invalid(format!(
            "{url}: wss:// needs TLS, which `hark call` is built without; connect to the server directly with ws://"
        )));
    }
    if !lower.starts_with("ws://") {
        return Err(SimError::Invalid(format!(
            "{url}: expected a ws:// URL (the server's Media Streams endpoint)"
        )));
    }
    if url.contains('?') {
        return Err(SimError::Invalid(format!(
            "{url}: Twilio refuses a Stream url with a query string (error 31920); pass data with --param"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_twilio_would_refuse_are_refused() {
        assert!(check_url("ws://127.0.0.1:8080/media-stream").is_ok());
        assert!(check_url("WS://h/x").is_ok());
        assert!(check_url("wss://h/x").is_err());
        assert!(check_url("http://h/x").is_err());
        assert!(check_url("ws://h/x?a=1").is_err());
    }

    #[test]
    fn the_signed_url_is_the_one_twilio_dials() {
        let dial = "ws://127.0.0.1:3000/media-stream";
        assert_eq!(signed_url(dial, None).unwrap(), dial);
        for public in [
            "https://abc.ngrok.app",
            "https://abc.ngrok.app/",
            "HTTPS://abc.ngrok.app",
            "wss://abc.ngrok.app",
        ] {
            assert_eq!(
                signed_url(dial, Some(public)).unwrap(),
                "wss://abc.ngrok.app/media-stream",
                "{public}"
            );
        }
        assert_eq!(
            signed_url(dial, Some("http://h:8080/hark")).unwrap(),
            "ws://h:8080/hark/media-stream"
        );
        for bad in ["abc.ngrok.app", "https://", "https://h/?x=1", "ftp://h"] {
            assert!(signed_url(dial, Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn fresh_sids_look_like_twilios() {
        let a = fresh_start(vec![("k".into(), "v".into())]);
        let b = fresh_start(Vec::new());
        for (sid, prefix) in [
            (&a.stream_sid, "MZ"),
            (&a.call_sid, "CA"),
            (&a.account_sid, "AC"),
        ] {
            assert_eq!(sid.len(), 34);
            assert!(sid.starts_with(prefix));
            assert!(
                sid[2..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            );
        }
        assert_ne!(a.stream_sid, b.stream_sid);
        assert_eq!(a.tracks, vec!["inbound"]);
        assert_eq!((a.sample_rate, a.channels), (8000, 1));
    }
}
