//! Requests hark makes to the **operator's** backend (tool webhooks, per-call context, call
//! events) are signed so the backend can tell them from anyone else's.
//!
//! # The scheme
//! Two headers on every request:
//! - [`TIMESTAMP_HEADER`] `X-Hark-Timestamp`: the Unix time the request was signed, in
//!   seconds, as decimal digits.
//! - [`SIGNATURE_HEADER`] `X-Hark-Signature`: `v1=` followed by the lowercase hex HMAC-SHA256
//!   of the bytes `{timestamp}.{body}` (the timestamp header's value, a full stop, the raw
//!   request body exactly as sent) under the shared secret (`HARK_OPERATOR_SECRET`).
//!
//! The receiver recomputes the HMAC over the raw body it received (before any JSON parsing),
//! compares it in constant time, and refuses a timestamp more than [`REPLAY_WINDOW_S`] from its
//! own clock: hark does not remember what it sent, so refusing replays is the receiver's job.
//! The same construction as Stripe's and Slack's webhook signatures (a timestamp bound into the
//! MAC so a captured request cannot be replayed later with a fresh timestamp).
//!
//! This module is pure (no clock): the caller passes the time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header with the signing time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Hark-Timestamp";
/// The header with the signature: `v1=<64 lowercase hex digits>`.
pub const SIGNATURE_HEADER: &str = "X-Hark-Signature";
/// The signature scheme's version prefix.
pub const SCHEME: &str = "v1=";
/// How far (seconds, either way) a receiver should let a timestamp be from its clock: 5
/// minutes. Older requests are replays to refuse.
pub const REPLAY_WINDOW_S: u64 = 300;

/// The shared secret requests to the operator are signed with. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<[u8]>);

impl Secret {
    /// A secret from its bytes (as configured; any length, ≥ 32 random bytes advised).
    pub fn new(bytes: impl AsRef<[u8]>) -> Self {
        Secret(bytes.as_ref().into())
    }

    /// The header value of [`SIGNATURE_HEADER`] for `body` signed at `timestamp_s` (Unix
    /// seconds): `v1=` + hex HMAC-SHA256(secret, `"{timestamp_s}." ‖ body`).
    pub fn sign(&self, timestamp_s: u64, body: &[u8]) -> String {
        let tag = self.mac(timestamp_s, body).finalize().into_bytes();
        let mut s = String::with_capacity(SCHEME.len() + 64);
        s.push_str(SCHEME);
        for b in tag {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xF)]));
        }
        s
    }

    /// The two headers ([`TIMESTAMP_HEADER`], [`SIGNATURE_HEADER`]) for `body` at
    /// `timestamp_s` (Unix seconds).
    pub fn headers(&self, timestamp_s: u64, body: &[u8]) -> [(String, String); 2] {
        [
            (TIMESTAMP_HEADER.to_string(), timestamp_s.to_string()),
            (SIGNATURE_HEADER.to_string(), self.sign(timestamp_s, body)),
        ]
    }

    /// Checks a request as a receiver should: the signature matches (constant-time) and the
    /// timestamp is within [`REPLAY_WINDOW_S`] of `now_s` (Unix seconds). For hark's own tests
    /// and for operators writing their backend in Rust.
    ///
    /// # Errors
    /// [`VerifyError`] says which check failed.
    pub fn verify(
        &self,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), VerifyError> {
        let ts: u64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        if ts.abs_diff(now_s) > REPLAY_WINDOW_S {
            return Err(VerifyError::Stale {
                age_s: now_s.saturating_sub(ts),
            });
        }
        let hex = signature
            .trim()
            .strip_prefix(SCHEME)
            .ok_or(VerifyError::BadSignature)?;
        let tag = decode_hex(hex).ok_or(VerifyError::BadSignature)?;
        self.mac(ts, body)
            .verify_slice(&tag)
            .map_err(|_| VerifyError::Mismatch)
    }

    fn mac(&self, timestamp_s: u64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why [`Secret::verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp header is not decimal Unix seconds.
    #[error("{TIMESTAMP_HEADER} is not Unix seconds")]
    BadTimestamp,
    /// The timestamp is more than [`REPLAY_WINDOW_S`] from the receiver's clock.
    #[error("{TIMESTAMP_HEADER} is {age_s} s old (more than {REPLAY_WINDOW_S} s): a replay?")]
    Stale {
        /// Seconds between the timestamp and the receiver's clock (0 when in the future).
        age_s: u64,
    },
    /// The signature header is not `v1=` and 64 hex digits.
    #[error("{SIGNATURE_HEADER} is not v1=<hex>")]
    BadSignature,
    /// The signature does not match the body and timestamp under this secret.
    #[error("{SIGNATURE_HEADER} does not match")]
    Mismatch,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected value was made with Python's standard library, independently of this code:
    /// `hmac.new(b"whsec_test", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()`.
    #[test]
    fn matches_an_independent_hmac() {
        let s = Secret::new("whsec_test");
        let sig = s.sign(1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verify_round_trip_and_refusals() {
        let s = Secret::new(b"k");
        let body = br#"{"event":"call.ended"}"#;
        let sig = s.sign(1_000, body);
        assert_eq!(s.verify("1000", &sig, body, 1_100), Ok(()));
        assert_eq!(
            s.verify("1000", &sig, body, 1_000 + 301),
            Err(VerifyError::Stale { age_s: 301 })
        );
        assert_eq!(
            s.verify("1001", &sig, body, 1_000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            s.verify("1000", &sig, b"{}", 1_000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            s.verify("x", &sig, body, 1_000),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            s.verify("1000", "sha256=00", body, 1_000),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            Secret::new(b"other").verify("1000", &sig, body, 1_000),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
