//! `X-Twilio-Signature` validation for Twilio webhooks and the Media Streams WebSocket upgrade.
//!
//! Twilio signs every request it sends with HMAC-SHA1 keyed by the account's Auth Token
//! (twilio.com/docs/usage/security; twilio-python `twilio/request_validator.py`, twilio-node
//! `src/webhooks/webhooks.ts`). The string it signs is:
//!
//! 1. the full URL Twilio requested, scheme through the end of the query string;
//! 2. for a form POST (`application/x-www-form-urlencoded`), each parameter name and value appended
//!    with no separators, names sorted by byte order (case-sensitive, so uppercase first); a name
//!    that repeats contributes its *distinct* values in sorted order, `name + value` for each
//!    (python `sorted(set(values))`, node `Array.from(new Set(v)).sort()`);
//! 3. for a GET, a JSON body or a WebSocket upgrade: nothing (the parameters are in the URL).
//!
//! The header is the standard, padded Base64 of the 20-byte MAC. For a JSON body Twilio also adds
//! the query parameter `bodySHA256` = lowercase hex SHA-256 of the raw body, so the body is covered
//! by the URL's signature plus a hash check.
//!
//! Which exact URL form Twilio signs is not fully documented (with or without the default port,
//! `'` raw or as `%27`, a trailing `/` on WebSocket paths; see `reference/twilio.md` §3.2 and §7),
//! so every check here tries the URL variants
//! {as received, port stripped, default port added (443 for `https`/`wss`, 80 for `http`/`ws`)} ×
//! {query as received, `'` in the query percent-encoded as `%27`}, plus, for WebSocket upgrades,
//! each of those with a trailing `/` added to the path. Every candidate is computed and compared
//! in constant time (no early exit), and the first matching variant is reported in [`Matched`] so
//! logs can show which form Twilio used.
//!
//! Userinfo (`user:pass@`) is kept as received when the port is stripped or added; unlike
//! twilio-python's `remove_port`, which splits at the first `:` and so mangles `user:pass@host`.
//!
//! This module is pure: callers reconstruct the public URL (scheme, host and path as Twilio saw
//! them, e.g. from `HARK_PUBLIC_URL` or `X-Forwarded-Proto`) and pass the header value.
//!
//! ```
//! use hark_gateway::signature::{compute, Validator};
//!
//! let url = "https://hark.example/twilio/voice";
//! let params = [("CallSid", "CA123"), ("From", "+14155550100")];
//! let header = compute("auth-token", url, &params);
//! let validator = Validator::new("auth-token");
//! assert!(validator.validate_form(url, &params, Some(&header)).is_ok());
//! ```

//!
//! ## Layout
//! This file holds the MAC, the [`Validator`] and its errors; `variants.rs` splits a URL into
//! raw slices and lists the variants of it that Twilio may have signed.

mod variants;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use variants::{candidates, query_param, redact_userinfo};

/// The HTTP header carrying the signature: `X-Twilio-Signature` (twilio.com/docs/usage/security).
/// HTTP header names are case-insensitive; frameworks usually expose it lowercased.
pub const HEADER: &str = "X-Twilio-Signature";

/// The query parameter Twilio adds to a JSON webhook's URL: lowercase hex SHA-256 of the raw body
/// (twilio.com/docs/usage/security, "Validating requests with a JSON body").
pub const BODY_SHA256_PARAM: &str = "bodySHA256";

/// Why a request's signature was not accepted.
///
/// Every variant means the request must be refused; the call itself is Twilio's and is not
/// affected by hark's refusal beyond Twilio's own handling of the failed webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request carried no `X-Twilio-Signature` header. twilio-node's middleware answers 400.
    #[error("missing {HEADER} header")]
    MissingSignature,
    /// A JSON body arrived but the URL has no `bodySHA256` query parameter, so the body is not
    /// covered by the signature (twilio-node `validateRequestWithBody` rejects this too).
    #[error("JSON body but no {BODY_SHA256_PARAM} query parameter in the URL")]
    MissingBodyHash,
    /// The URL's signature matched, but the SHA-256 of the body differs from the URL's
    /// `bodySHA256`: the body was altered or re-encoded after Twilio sent it.
    #[error("body SHA-256 does not match the URL's {BODY_SHA256_PARAM}")]
    BodyHashMismatch,
    /// The header matches none of the URL variants tried. Usual causes: wrong Auth Token, the URL
    /// reconstructed differently from what Twilio requested (scheme behind a proxy, host, path,
    /// trailing slash), or parameters altered (trimmed, re-encoded).
    #[error("{HEADER} does not match any of {candidates} URL variants of {url}")]
    Mismatch {
        /// The URL as given to the validator, with any userinfo replaced by `***@` so the error
        /// can be logged without leaking a Basic-auth password.
        url: String,
        /// How many distinct URL variants were tried.
        candidates: usize,
    },
}

impl SignatureError {
    /// The HTTP status to answer with, as twilio-node's `webhook()` middleware does:
    /// 400 for a missing header, 403 for every failed check.
    pub fn http_status(&self) -> u16 {
        match self {
            SignatureError::MissingSignature => 400,
            _ => 403,
        }
    }
}

/// How the port of a candidate URL relates to the URL as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortForm {
    /// The authority exactly as received.
    AsReceived,
    /// The explicit port removed (`https://host:1234/` → `https://host/`); Twilio drops the
    /// port for voice over HTTPS (twilio.com/docs/usage/security).
    Stripped,
    /// The scheme's default port added where none was given (`https://host/` →
    /// `https://host:443/`; 443 for `https`/`wss`, 80 for `http`/`ws`).
    DefaultAdded,
}

/// The URL variant whose signature matched the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The candidate URL that was signed (without any form parameters appended). Keeps any
    /// userinfo (`user:pass@`) as received: redact before logging if you put credentials there.
    pub url: String,
    /// How its port differs from the URL as received.
    pub port: PortForm,
    /// `true` if `'` in the query was percent-encoded as `%27` (what a WHATWG URL parser does,
    /// e.g. twilio-node's `new URL()`).
    pub apostrophe_encoded: bool,
    /// `true` if a `/` was appended to the path (WebSocket upgrades only; Twilio's docs say to
    /// retry voice WSS handshakes with a trailing `/`).
    pub trailing_slash_added: bool,
}

/// Computes the `X-Twilio-Signature` value for `url` and form `params` with `auth_token`.
///
/// `url` is used byte for byte, no variants. `params` are the decoded form fields of a POST
/// (names and values after percent-decoding), in any order, names possibly repeated; pass an
/// empty slice for GET requests, JSON bodies and WebSocket upgrades. Returns the standard padded
/// Base64 of HMAC-SHA1 (28 characters). Algorithm: twilio.com/docs/usage/security and
/// twilio-python `RequestValidator.compute_signature`.
pub fn compute<K: AsRef<str>, V: AsRef<str>>(
    auth_token: &str,
    url: &str,
    params: &[(K, V)],
) -> String {
    sign(auth_token, url, &params_suffix(params))
}

/// Lowercase hex SHA-256 of `body`, the value Twilio puts in the `bodySHA256` query parameter
/// (64 characters).
pub fn body_sha256_hex(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Checks `X-Twilio-Signature` headers with one Auth Token.
///
/// The token is kept in memory and never printed (`Debug` redacts it).
#[derive(Clone)]
pub struct Validator {
    auth_token: String,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("auth_token", &"<redacted>")
            .finish()
    }
}

impl Validator {
    /// A validator for the account whose Auth Token (`TWILIO_AUTH_TOKEN`) is `auth_token`.
    pub fn new(auth_token: impl Into<String>) -> Self {
        Self {
            auth_token: auth_token.into(),
        }
    }

    /// Validates a form POST: `url` as Twilio requested it (query included), `params` the decoded
    /// body fields (repeated names allowed, any order), `signature` the header value if present.
    ///
    /// Errors: [`SignatureError::MissingSignature`], [`SignatureError::Mismatch`].
    pub fn validate_form<K: AsRef<str>, V: AsRef<str>>(
        &self,
        url: &str,
        params: &[(K, V)],
        signature: Option<&str>,
    ) -> Result<Matched, SignatureError> {
        let signature = signature.ok_or(SignatureError::MissingSignature)?;
        self.check(url, &params_suffix(params), signature, false)
    }

    /// Validates a GET (or any request whose parameters are all in the URL): the URL is signed
    /// with nothing appended.
    ///
    /// Errors: [`SignatureError::MissingSignature`], [`SignatureError::Mismatch`].
    pub fn validate_get(
        &self,
        url: &str,
        signature: Option<&str>,
    ) -> Result<Matched, SignatureError> {
        let signature = signature.ok_or(SignatureError::MissingSignature)?;
        self.check(url, "", signature, false)
    }

    /// Validates a request with a JSON (or any non-form) body: `url` must carry `bodySHA256`; the
    /// URL is signed with no parameters, then the SHA-256 of `body` (raw bytes as received) must
    /// equal `bodySHA256` (compared case-insensitively).
    ///
    /// Errors, in the order checked: [`SignatureError::MissingSignature`],
    /// [`SignatureError::MissingBodyHash`], [`SignatureError::Mismatch`],
    /// [`SignatureError::BodyHashMismatch`].
    pub fn validate_json(
        &self,
        url: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<Matched, SignatureError> {
        let signature = signature.ok_or(SignatureError::MissingSignature)?;
        let claimed = query_param(url, BODY_SHA256_PARAM).ok_or(SignatureError::MissingBodyHash)?;
        let matched = self.check(url, "", signature, false)?;
        let actual = body_sha256_hex(body);
        let claimed = claimed.to_ascii_lowercase();
        if bool::from(actual.as_bytes().ct_eq(claimed.as_bytes())) {
            Ok(matched)
        } else {
            Err(SignatureError::BodyHashMismatch)
        }
    }

    /// Validates a webhook whichever way Twilio signed it, deciding as twilio-node's
    /// `validateIncomingRequest` (`src/webhooks/webhooks.ts`) and twilio-python's
    /// `RequestValidator.validate` do: when the URL's query carries `bodySHA256`, the request
    /// has a raw (JSON) body, checked with [`Validator::validate_json`] over `body`; otherwise
    /// `form` holds the decoded form fields (empty for a GET), checked with
    /// [`Validator::validate_form`].
    ///
    /// Refusing a JSON body that comes *without* `bodySHA256` (nothing would cover it) is the
    /// caller's decision, since only it knows the `Content-Type`; see
    /// [`SignatureError::MissingBodyHash`].
    ///
    /// Errors: as [`Validator::validate_json`] or [`Validator::validate_form`].
    pub fn validate_webhook<K: AsRef<str>, V: AsRef<str>>(
        &self,
        url: &str,
        form: &[(K, V)],
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<Matched, SignatureError> {
        if has_body_hash(url) {
            self.validate_json(url, body, signature)
        } else {
            self.validate_form(url, form, signature)
        }
    }

    /// Validates a Media Streams WebSocket upgrade: `url` is the `wss://` (or `ws://`) URL Twilio
    /// connected to, path as requested; it is signed with no parameters. Besides the usual
    /// variants, each is also tried with a `/` appended to the path (twilio.com/docs/usage/security:
    /// for voice WSS handshakes, retry with a trailing slash).
    ///
    /// Errors: [`SignatureError::MissingSignature`], [`SignatureError::Mismatch`].
    pub fn validate_websocket(
        &self,
        url: &str,
        signature: Option<&str>,
    ) -> Result<Matched, SignatureError> {
        let signature = signature.ok_or(SignatureError::MissingSignature)?;
        self.check(url, "", signature, true)
    }

    /// Tries every candidate URL with `suffix` appended; no early exit, constant-time compares.
    fn check(
        &self,
        url: &str,
        suffix: &str,
        signature: &str,
        trailing_slash: bool,
    ) -> Result<Matched, SignatureError> {
        let candidates = candidates(url, trailing_slash);
        let mut found: Option<usize> = None;
        for (index, candidate) in candidates.iter().enumerate() {
            let expected = sign(&self.auth_token, &candidate.url, suffix);
            let equal = bool::from(expected.as_bytes().ct_eq(signature.as_bytes()));
            if equal && found.is_none() {
                found = Some(index);
            }
        }
        let count = candidates.len();
        match found.and_then(|index| candidates.into_iter().nth(index)) {
            Some(matched) => Ok(matched),
            None => Err(SignatureError::Mismatch {
                url: redact_userinfo(url),
                candidates: count,
            }),
        }
    }
}

/// HMAC-SHA1 over `url + suffix`, standard padded Base64.
fn sign(auth_token: &str, url: &str, suffix: &str) -> String {
    // HMAC is defined for keys of any length (RFC 2104 hashes long keys, pads short ones), so
    // `new_from_slice` cannot fail for HMAC-SHA1.
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC accepts any key length");
    mac.update(url.as_bytes());
    mac.update(suffix.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The form parameters as Twilio appends them: names in byte order, distinct values of each
/// name in byte order, `name + value` for each, no separators.
fn params_suffix<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut grouped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped
            .entry(name.as_ref())
            .or_default()
            .insert(value.as_ref());
    }
    let mut out = String::new();
    for (name, values) in grouped {
        for value in values {
            out.push_str(name);
            out.push_str(value);
        }
    }
    out
}

/// Whether `url`'s query carries a `bodySHA256` parameter: Twilio signed a raw (JSON) body
/// (twilio.com/docs/usage/security, "Validating requests with a JSON body").
pub fn has_body_hash(url: &str) -> bool {
    query_param(url, BODY_SHA256_PARAM).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Auth Token of the official vectors (twilio-python `tests/unit/test_request_validator.py`,
    /// twilio-node `spec/validation.spec.js`).
    const TOKEN: &str = "12345";
    /// U in `reference/twilio.md` §3.3.
    const U: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    /// SHA-256 of body B.
    const H: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
    /// SHA-256 of `{}`.
    const H0: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    /// Body B, exact bytes.
    const B: &[u8] = br#"{"property": "value", "boolean": true}"#;

    /// P in `reference/twilio.md` §3.3.
    fn p() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn validator() -> Validator {
        Validator::new(TOKEN)
    }

    #[test]
    fn base_string_and_body_hashes_match_the_reference() {
        assert_eq!(
            format!("{U}{}", params_suffix(&p())),
            "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212"
        );
        assert_eq!(body_sha256_hex(B), H);
        assert_eq!(body_sha256_hex(b"{}"), H0);
    }

    #[test]
    fn vector_01_form_as_given() {
        assert_eq!(compute(TOKEN, U, &p()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        let m = validator()
            .validate_form(U, &p(), Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
        assert_eq!(m.url, U);
        assert!(!m.apostrophe_encoded);
    }

    #[test]
    fn vector_02_https_port_stripped() {
        let url = "https://mycompany.com:1234/myapp.php?foo=1&bar=2";
        let m = validator()
            .validate_form(url, &p(), Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="))
            .unwrap();
        assert_eq!(m.port, PortForm::Stripped);
        assert_eq!(m.url, U);
    }

    #[test]
    fn vector_03_http_with_port_as_given() {
        let url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(compute(TOKEN, url, &p()), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=");
        let m = validator()
            .validate_form(url, &p(), Some("Zmvh+3yNM1Phv2jhDCwEM3q5ebU="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
    }

    #[test]
    fn vector_04_https_default_port_added() {
        let m = validator()
            .validate_form(U, &p(), Some("kvajT1Ptam85bY51eRf/AJRuM3w="))
            .unwrap();
        assert_eq!(m.port, PortForm::DefaultAdded);
        assert_eq!(m.url, "https://mycompany.com:443/myapp.php?foo=1&bar=2");
    }

    #[test]
    fn vector_05_http_default_port_added() {
        let url = "http://mycompany.com/myapp.php?foo=1&bar=2";
        let m = validator()
            .validate_form(url, &p(), Some("0ZXoZLH/DfblKGATFgpif+LLRf4="))
            .unwrap();
        assert_eq!(m.port, PortForm::DefaultAdded);
        assert_eq!(m.url, "http://mycompany.com:80/myapp.php?foo=1&bar=2");
    }

    #[test]
    fn vector_06_repeated_names_deduped_and_sorted() {
        let params = [
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ];
        assert_eq!(
            params_suffix(&params),
            "Digits1234Digits5678SidCA123SidAccountAC123"
        );
        let m = validator()
            .validate_form(U, &params, Some("IK+Dwps556ElfBT0I3Rgjkr1wJU="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
    }

    #[test]
    fn vector_07_json_body() {
        let url = format!("{U}&bodySHA256={H}");
        let m = validator()
            .validate_json(&url, B, Some("a9nBmqA0ju/hNViExpshrM61xv4="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
    }

    #[test]
    fn vector_08_json_empty_object_default_port_added_only() {
        let url = format!("{U}&bodySHA256={H0}");
        let sig = "Ldidvp12m26NI7eqEvxnEpkd9Hc=";
        assert_ne!(compute(TOKEN, &url, &[] as &[(&str, &str)]), sig);
        let m = validator().validate_json(&url, b"{}", Some(sig)).unwrap();
        assert_eq!(m.port, PortForm::DefaultAdded);
    }

    #[test]
    fn vector_09_json_hash_only_query() {
        let url = format!("https://mycompany.com/myapp.php?bodySHA256={H}");
        let m = validator()
            .validate_json(&url, B, Some("y77kIzt2vzLz71DgmJGsen2scGs="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
    }

    #[test]
    fn vector_10_userinfo_with_password_as_given() {
        let url = "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2";
        let m = validator()
            .validate_form(url, &p(), Some("CukzLTc1tT5dXEDIHm/tKBanW10="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
    }

    #[test]
    fn vector_11_userinfo_without_password_as_given() {
        let url = "https://user@mycompany.com/myapp.php?foo=1&bar=2";
        let m = validator()
            .validate_form(url, &p(), Some("2YRLlVAflCqxaNicjMpJcSTgzSs="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
    }

    #[test]
    fn vector_12_userinfo_default_port_added() {
        let url = "https://user:pass@mycompany.com/myapp.php?foo=1&bar=2";
        let m = validator()
            .validate_form(url, &p(), Some("ZQFR1PTIZXF2MXB8ZnKCvnnA+rI="))
            .unwrap();
        assert_eq!(m.port, PortForm::DefaultAdded);
        // Userinfo survives intact (twilio-python's remove_port would split at "user:").
        assert_eq!(
            m.url,
            "https://user:pass@mycompany.com:443/myapp.php?foo=1&bar=2"
        );
    }

    #[test]
    fn vector_13_apostrophe_matches_only_percent_encoded() {
        let url = format!("{U}&Body=It's+amazing");
        let sig = "TfZzewPq8wqrGlMfyAud8+/IvJ0=";
        assert_ne!(compute(TOKEN, &url, &p()), sig);
        let m = validator().validate_form(&url, &p(), Some(sig)).unwrap();
        assert!(m.apostrophe_encoded);
        assert_eq!(m.port, PortForm::AsReceived);
        assert_eq!(m.url, format!("{U}&Body=It%27s+amazing"));
        // The pre-2024 twilio-node expectation signed the literal `'`: also accepted.
        let old = validator()
            .validate_form(&url, &p(), Some("dsq4Ehbj6cs+KdTkpF5sSSplOWw="))
            .unwrap();
        assert!(!old.apostrophe_encoded);
    }

    #[test]
    fn vector_14_repeated_dotted_name_either_order() {
        let sig = "83O6e2vORAoJHUNzJjDWN1jz+BA=";
        let forward = [
            ("MessagingBinding.Address", "+1325xxxxxxx"),
            ("MessagingBinding.Address", "+1415xxxxxxx"),
        ];
        let backward = [
            ("MessagingBinding.Address", "+1415xxxxxxx"),
            ("MessagingBinding.Address", "+1325xxxxxxx"),
        ];
        assert_eq!(compute(TOKEN, U, &forward), sig);
        assert_eq!(compute(TOKEN, U, &backward), sig);
        assert!(validator().validate_form(U, &backward, Some(sig)).is_ok());
    }

    #[test]
    fn vector_15_docs_worked_example() {
        let url = "https://example.com/myapp.php?foo=1&bar=2";
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ];
        assert_eq!(compute(TOKEN, url, &params), "L/OH5YylLD5NRKLltdqwSvS0BnU=");
        assert!(
            validator()
                .validate_form(url, &params, Some("L/OH5YylLD5NRKLltdqwSvS0BnU="))
                .is_ok()
        );
    }

    #[test]
    fn must_fail_wrong_signature() {
        let err = validator()
            .validate_form(U, &p(), Some("RSOYDt4T1cUTdK1PDd93/VVr8B9="))
            .unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
        assert_eq!(err.http_status(), 403);
        // Right signature, wrong token.
        let err =
            Validator::new("54321").validate_form(U, &p(), Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(matches!(err, Err(SignatureError::Mismatch { .. })));
        // Right signature, one parameter altered (e.g. a framework trimmed a value).
        let mut altered = p();
        altered[2].1 = "1235".to_owned();
        let err = validator().validate_form(U, &altered, Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(matches!(err, Err(SignatureError::Mismatch { .. })));
    }

    #[test]
    fn must_fail_missing_signature() {
        let v = validator();
        assert_eq!(
            v.validate_form(U, &p(), None),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            v.validate_get(U, None),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            v.validate_json(&format!("{U}&bodySHA256={H}"), B, None),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            v.validate_websocket("wss://h/x", None),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(SignatureError::MissingSignature.http_status(), 400);
    }

    #[test]
    fn must_fail_wrong_body_hash() {
        let url = format!("{U}&bodySHA256={H}");
        let err = validator()
            .validate_json(
                &url,
                br#"{"property": "value", "boolean": false}"#,
                Some("a9nBmqA0ju/hNViExpshrM61xv4="),
            )
            .unwrap_err();
        assert_eq!(err, SignatureError::BodyHashMismatch);
        // Whitespace re-encoding of the same JSON is a different body.
        let err = validator().validate_json(
            &url,
            br#"{"property":"value","boolean":true}"#,
            Some("a9nBmqA0ju/hNViExpshrM61xv4="),
        );
        assert_eq!(err, Err(SignatureError::BodyHashMismatch));
    }

    #[test]
    fn webhook_picks_json_or_form_by_body_sha256() {
        let v = validator();
        // Vector 7: bodySHA256 in the query → the raw body is hashed, no parameters appended.
        let url = format!("{U}&bodySHA256={H}");
        let none: &[(&str, &str)] = &[];
        let m = v
            .validate_webhook(&url, none, B, Some("a9nBmqA0ju/hNViExpshrM61xv4="))
            .unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
        // Vector 8 (only with :443 added) and 9 (hash-only query).
        assert!(
            v.validate_webhook(
                &format!("{U}&bodySHA256={H0}"),
                none,
                b"{}",
                Some("Ldidvp12m26NI7eqEvxnEpkd9Hc=")
            )
            .is_ok()
        );
        assert!(
            v.validate_webhook(
                &format!("https://mycompany.com/myapp.php?bodySHA256={H}"),
                none,
                B,
                Some("y77kIzt2vzLz71DgmJGsen2scGs=")
            )
            .is_ok()
        );
        // A tampered body fails the hash even though the URL's signature matches.
        assert_eq!(
            v.validate_webhook(&url, none, b"{}", Some("a9nBmqA0ju/hNViExpshrM61xv4=")),
            Err(SignatureError::BodyHashMismatch)
        );
        // Vector 1: no bodySHA256 → form parameters.
        assert!(
            v.validate_webhook(U, &p(), b"ignored", Some("RSOYDt4T1cUTdK1PDd93/VVr8B8="))
                .is_ok()
        );
        assert!(has_body_hash(&url) && !has_body_hash(U));
    }

    #[test]
    fn must_fail_body_without_body_sha256() {
        // The URL's own signature is valid, but nothing covers the body.
        let sig = compute(TOKEN, U, &[] as &[(&str, &str)]);
        assert!(validator().validate_get(U, Some(&sig)).is_ok());
        assert_eq!(
            validator().validate_json(U, B, Some(&sig)),
            Err(SignatureError::MissingBodyHash)
        );
    }

    #[test]
    fn json_hash_compare_ignores_hex_case_but_signature_covers_url() {
        let url = format!("{U}&bodySHA256={}", H.to_ascii_uppercase());
        let sig = compute(TOKEN, &url, &[] as &[(&str, &str)]);
        assert!(validator().validate_json(&url, B, Some(&sig)).is_ok());
    }

    #[test]
    fn get_signs_url_with_no_params() {
        let url = "https://hark.example/twilio/status?CallSid=CA1&CallStatus=completed";
        let sig = compute(TOKEN, url, &[] as &[(&str, &str)]);
        let m = validator().validate_get(url, Some(&sig)).unwrap();
        assert_eq!(m.port, PortForm::AsReceived);
        // A form validator with the same params appended would not match.
        let as_form = validator().validate_form(url, &[("CallSid", "CA1")], Some(&sig));
        assert!(matches!(as_form, Err(SignatureError::Mismatch { .. })));
    }

    #[test]
    fn websocket_round_trip_and_trailing_slash() {
        let v = validator();
        let url = "wss://hark.example/twilio/media";
        let sig = compute(TOKEN, url, &[] as &[(&str, &str)]);
        let m = v.validate_websocket(url, Some(&sig)).unwrap();
        assert_eq!(
            (m.port, m.trailing_slash_added),
            (PortForm::AsReceived, false)
        );

        // Twilio signed the URL with a trailing slash; hark saw it without.
        let slashed = compute(
            TOKEN,
            "wss://hark.example/twilio/media/",
            &[] as &[(&str, &str)],
        );
        let m = v.validate_websocket(url, Some(&slashed)).unwrap();
        assert!(m.trailing_slash_added);
        assert_eq!(m.url, "wss://hark.example/twilio/media/");

        // …or with the default port, and the slash.
        let both = compute(
            TOKEN,
            "wss://hark.example:443/twilio/media/",
            &[] as &[(&str, &str)],
        );
        let m = v.validate_websocket(url, Some(&both)).unwrap();
        assert_eq!(
            (m.port, m.trailing_slash_added),
            (PortForm::DefaultAdded, true)
        );

        // Behind a proxy on a non-default port: stripped.
        let m = v
            .validate_websocket("wss://hark.example:8443/twilio/media", Some(&sig))
            .unwrap();
        assert_eq!(m.port, PortForm::Stripped);

        // The slash variant is only for WebSocket upgrades.
        assert!(v.validate_get(url, Some(&slashed)).is_err());
        // An https URL is not a wss URL (twilio-labs/twilio-aspnet #162).
        let https = compute(
            TOKEN,
            "https://hark.example/twilio/media",
            &[] as &[(&str, &str)],
        );
        assert!(v.validate_websocket(url, Some(&https)).is_err());
    }

    #[test]
    fn ws_default_port_is_80() {
        let c = candidates("ws://127.0.0.1/media", true);
        let urls: Vec<&str> = c.iter().map(|m| m.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "ws://127.0.0.1/media",
                "ws://127.0.0.1:80/media",
                "ws://127.0.0.1/media/",
                "ws://127.0.0.1:80/media/"
            ]
        );
    }

    #[test]
    fn mismatch_error_redacts_userinfo() {
        let url = "https://user:hunter2@mycompany.com:8443/myapp.php?foo=1";
        let err = validator()
            .validate_form(url, &p(), Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
            .unwrap_err();
        assert_eq!(
            err,
            SignatureError::Mismatch {
                url: "https://***@mycompany.com:8443/myapp.php?foo=1".into(),
                candidates: 2
            }
        );
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn debug_redacts_token() {
        let shown = format!("{:?}", Validator::new("super-secret"));
        assert!(!shown.contains("super-secret"));
    }
}
