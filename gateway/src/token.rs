//! Twilio Access Tokens: the JWTs browser and mobile SDKs (Voice, Conversations) authenticate with.
//!
//! Format (twilio.com/docs/iam/access-tokens; twilio-python `twilio/jwt/access_token/__init__.py`
//! and `grants.py`; twilio-node `src/jwt/AccessToken.ts`; `reference/twilio.md` §2):
//! - header `{"typ":"JWT","alg":"HS256","cty":"twilio-fpa;v=1"}`, plus `"twr": region` only when a
//!   non-empty region (e.g. `ie1`) is requested;
//! - claims `jti` = `"<API key SID>-<now>"`, `grants` (with `identity` *inside* `grants`), `iss` =
//!   API key SID (`SK…`), `exp` = now + TTL, `nbf` = now, `sub` = Account SID (`AC…`); all times
//!   are Unix seconds. Like twilio-python, no `iat`;
//! - signature HMAC-SHA256 keyed with the API key *secret*, Base64url without padding.
//!
//! Signing uses `jsonwebtoken` 11 with its `rust_crypto` backend (exactly one backend must be
//! enabled in the whole build, or `encode` panics looking for a default provider).
//!
//! The clock is a parameter (`now_unix_s`), so tokens are reproducible in tests; callers pass
//! `SystemTime::now()` as seconds since the Unix epoch.
//!
//! ```
//! use hark_gateway::token::{Credentials, TokenOptions};
//!
//! let env = |name: &str| match name {
//!     "TWILIO_ACCOUNT_SID" => Some("ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_owned()),
//!     "TWILIO_API_KEY" => Some("SKxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_owned()),
//!     "TWILIO_API_SECRET" => Some("secret".to_owned()),
//!     "TWILIO_TWIML_APP_SID" => Some("APxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".to_owned()),
//!     _ => None,
//! };
//! let credentials = Credentials::from_lookup(env).unwrap();
//! let jwt = credentials.voice_token("alice", &[], &TokenOptions::default(), 1_700_000_000).unwrap();
//! assert_eq!(jwt.split('.').count(), 3);
//! ```

use std::collections::BTreeMap;
use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Environment variable holding the Account SID (`AC…`).
pub const ENV_ACCOUNT_SID: &str = "TWILIO_ACCOUNT_SID";
/// Environment variable holding the API key SID (`SK…`).
pub const ENV_API_KEY: &str = "TWILIO_API_KEY";
/// Environment variable holding the API key secret.
pub const ENV_API_SECRET: &str = "TWILIO_API_SECRET";
/// Environment variable holding the TwiML App SID (`AP…`) that voice tokens place calls through.
pub const ENV_TWIML_APP_SID: &str = "TWILIO_TWIML_APP_SID";
/// Environment variable holding the Conversations Service SID (`IS…`) for chat tokens.
pub const ENV_CONVERSATIONS_SERVICE_SID: &str = "TWILIO_CONVERSATIONS_SERVICE_SID";

/// Token lifetime when none is given: 3600 s, as in twilio-python and twilio-node.
pub const DEFAULT_TTL_S: u64 = 3600;
/// Longest lifetime Twilio accepts: 24 h = 86,400 s (error 20157, "exceeds 24 hours";
/// twilio.com/docs/iam/access-tokens). The SDKs do not check it; hark refuses longer TTLs when
/// minting instead of handing out a token Twilio will reject.
pub const MAX_TTL_S: u64 = 86_400;

/// Longest identity in a voice token, in characters. Twilio's error 51003 ("identity too long")
/// states no number; 121 is the limit commonly given for Voice client identities and is the one
/// hark enforces (unverified against a live account).
pub const MAX_VOICE_IDENTITY_CHARS: usize = 121;
/// Longest identity in a chat (Conversations) token, in characters: Conversations limits a
/// participant `Identity` to 256 characters (twilio-oai `twilio_conversations_v1.json`,
/// `CreateConversationParticipantRequest.Identity`).
pub const MAX_CHAT_IDENTITY_CHARS: usize = 256;

/// The JWT content type Twilio requires: `twilio-fpa;v=1` (twilio.com/docs/iam/access-tokens).
const CONTENT_TYPE: &str = "twilio-fpa;v=1";

/// Why an access token could not be made.
///
/// None of these affects a call in progress; the token request is refused (configuration errors
/// → 500 with the variable names, identity and TTL errors → 400).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Settings this token needs are missing or empty; names the environment variables.
    #[error("missing setting(s): {}", .names.join(", "))]
    MissingSetting {
        /// The environment variable names, e.g. `["TWILIO_API_SECRET"]`.
        names: Vec<&'static str>,
    },
    /// The identity breaks the rules of [`validate_identity`]; `reason` says which.
    #[error("invalid identity: {reason}")]
    InvalidIdentity {
        /// Human-readable reason, safe to return to the client.
        reason: String,
    },
    /// TTL is 0 or above [`MAX_TTL_S`] (Twilio error 20157).
    #[error("ttl {ttl_s} s is out of range 1..={MAX_TTL_S} s")]
    InvalidTtl {
        /// The TTL asked for, in seconds.
        ttl_s: u64,
    },
    /// The JWT library failed to serialise or sign (not expected with HS256 and plain claims).
    #[error("could not sign the token: {0}")]
    Encoding(#[from] jsonwebtoken::errors::Error),
}

/// The Twilio credentials tokens are minted with.
///
/// `Debug` redacts the API secret.
#[derive(Clone)]
pub struct Credentials {
    /// Account SID, `AC…` (`TWILIO_ACCOUNT_SID`); becomes the `sub` claim.
    pub account_sid: String,
    /// API key SID, `SK…` (`TWILIO_API_KEY`); becomes `iss` and the prefix of `jti`.
    pub api_key_sid: String,
    /// API key secret (`TWILIO_API_SECRET`); the HMAC key.
    api_secret: String,
    /// TwiML App SID, `AP…` (`TWILIO_TWIML_APP_SID`); needed by [`Credentials::voice_token`].
    pub twiml_app_sid: Option<String>,
    /// Conversations Service SID, `IS…` (`TWILIO_CONVERSATIONS_SERVICE_SID`); needed by
    /// [`Credentials::chat_token`].
    pub conversations_service_sid: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("account_sid", &self.account_sid)
            .field("api_key_sid", &self.api_key_sid)
            .field("api_secret", &"<redacted>")
            .field("twiml_app_sid", &self.twiml_app_sid)
            .field("conversations_service_sid", &self.conversations_service_sid)
            .finish()
    }
}

impl Credentials {
    /// Credentials from explicit values, with no TwiML App or Conversations Service.
    pub fn new(
        account_sid: impl Into<String>,
        api_key_sid: impl Into<String>,
        api_secret: impl Into<String>,
    ) -> Self {
        Self {
            account_sid: account_sid.into(),
            api_key_sid: api_key_sid.into(),
            api_secret: api_secret.into(),
            twiml_app_sid: None,
            conversations_service_sid: None,
        }
    }

    /// Reads the settings through `lookup` (an environment variable name → its value). `hark
    /// serve` passes the values of its one configuration ([`crate::api::ApiSettings`]), so the
    /// environment is not read a second time; tests pass their own. Empty values count as
    /// missing.
    ///
    /// Required: [`ENV_ACCOUNT_SID`], [`ENV_API_KEY`], [`ENV_API_SECRET`]; optional:
    /// [`ENV_TWIML_APP_SID`], [`ENV_CONVERSATIONS_SERVICE_SID`].
    ///
    /// Errors: [`TokenError::MissingSetting`] naming every missing required variable.
    pub fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Result<Self, TokenError> {
        let mut get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let account_sid = get(ENV_ACCOUNT_SID);
        let api_key_sid = get(ENV_API_KEY);
        let api_secret = get(ENV_API_SECRET);
        let twiml_app_sid = get(ENV_TWIML_APP_SID);
        let conversations_service_sid = get(ENV_CONVERSATIONS_SERVICE_SID);
        match (account_sid, api_key_sid, api_secret) {
            (Some(account_sid), Some(api_key_sid), Some(api_secret)) => Ok(Self {
                account_sid,
                api_key_sid,
                api_secret,
                twiml_app_sid,
                conversations_service_sid,
            }),
            (account_sid, api_key_sid, api_secret) => {
                let names = [
                    (account_sid.is_none(), ENV_ACCOUNT_SID),
                    (api_key_sid.is_none(), ENV_API_KEY),
                    (api_secret.is_none(), ENV_API_SECRET),
                ]
                .into_iter()
                .filter_map(|(missing, name)| missing.then_some(name))
                .collect();
                Err(TokenError::MissingSetting { names })
            }
        }
    }

    /// A Voice SDK token for `identity`: incoming calls allowed, outgoing calls through the
    /// TwiML App (`TWILIO_TWIML_APP_SID`) with `params` passed to its voice webhook (omitted when
    /// empty; later duplicates of a name win).
    ///
    /// Errors: [`TokenError::MissingSetting`] (`TWILIO_TWIML_APP_SID`), plus those of [`mint`].
    pub fn voice_token(
        &self,
        identity: &str,
        params: &[(String, String)],
        options: &TokenOptions,
        now_unix_s: u64,
    ) -> Result<String, TokenError> {
        let app_sid = self
            .twiml_app_sid
            .clone()
            .ok_or(TokenError::MissingSetting {
                names: vec![ENV_TWIML_APP_SID],
            })?;
        let grant = VoiceGrant {
            incoming_allow: true,
            outgoing_application_sid: Some(app_sid),
            outgoing_params: params.iter().cloned().collect(),
            push_credential_sid: None,
            endpoint_id: None,
        };
        mint(self, identity, &Grant::Voice(grant), options, now_unix_s)
    }

    /// A Conversations SDK token for `identity`: a ChatGrant for the Conversations Service
    /// (`TWILIO_CONVERSATIONS_SERVICE_SID`).
    ///
    /// Errors: [`TokenError::MissingSetting`] (`TWILIO_CONVERSATIONS_SERVICE_SID`), plus those of
    /// [`mint`].
    pub fn chat_token(
        &self,
        identity: &str,
        options: &TokenOptions,
        now_unix_s: u64,
    ) -> Result<String, TokenError> {
        let service_sid =
            self.conversations_service_sid
                .clone()
                .ok_or(TokenError::MissingSetting {
                    names: vec![ENV_CONVERSATIONS_SERVICE_SID],
                })?;
        let grant = ChatGrant {
            service_sid: Some(service_sid),
            ..ChatGrant::default()
        };
        mint(self, identity, &Grant::Chat(grant), options, now_unix_s)
    }
}

/// Lifetime and region of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOptions {
    /// Seconds from `now` to `exp`; 1..=[`MAX_TTL_S`]. Default [`DEFAULT_TTL_S`].
    pub ttl_s: u64,
    /// Twilio region for the `twr` header (e.g. `ie1`, `au1`); `None` or empty: no `twr`
    /// (Twilio's default, US1).
    pub region: Option<String>,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            ttl_s: DEFAULT_TTL_S,
            region: None,
        }
    }
}

/// Voice SDK permissions (twilio-python `VoiceGrant`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoiceGrant {
    /// Allow incoming calls to `client:<identity>`; written as `"incoming": {"allow": true}`
    /// only when `true`.
    pub incoming_allow: bool,
    /// TwiML App SID (`AP…`) for outgoing calls; `outgoing` is written only when set.
    pub outgoing_application_sid: Option<String>,
    /// Parameters passed to the TwiML App's voice webhook on outgoing calls; written as
    /// `outgoing.params` only when non-empty (and only with an application SID).
    pub outgoing_params: BTreeMap<String, String>,
    /// Push credential SID (`CR…`) for mobile push notifications.
    pub push_credential_sid: Option<String>,
    /// Endpoint ID (mobile SDKs).
    pub endpoint_id: Option<String>,
}

/// Conversations / Chat permissions (twilio-python `ChatGrant`); `{}` when all are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatGrant {
    /// Conversations Service SID (`IS…`).
    pub service_sid: Option<String>,
    /// Endpoint ID.
    pub endpoint_id: Option<String>,
    /// Deployment role SID.
    pub deployment_role_sid: Option<String>,
    /// Push credential SID (`CR…`).
    pub push_credential_sid: Option<String>,
}

/// The grant a token carries (one per token here; Twilio allows several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `grants.voice`.
    Voice(VoiceGrant),
    /// `grants.chat`.
    Chat(ChatGrant),
}

/// Checks `identity` for a token carrying `grant`; returns it unchanged when valid.
///
/// Rules (characters are Unicode scalar values):
/// - never empty (twilio-node requires an identity; a token without one cannot receive calls or
///   join conversations);
/// - Voice: at most [`MAX_VOICE_IDENTITY_CHARS`], and only ASCII letters, digits and `_`
///   (twilio.com/docs/iam/access-tokens: "Voice tokens may only contain alpha-numeric and
///   underscore characters"; the identity becomes the `client:<identity>` address, where other
///   characters are not reliably routable);
/// - Chat: at most [`MAX_CHAT_IDENTITY_CHARS`], any characters except control characters
///   (Conversations identities are free-form, often e-mail addresses; controls would be invisible
///   in logs and UIs and have no legitimate use).
///
/// Errors: [`TokenError::InvalidIdentity`] with the rule broken.
pub fn validate_identity<'a>(identity: &'a str, grant: &Grant) -> Result<&'a str, TokenError> {
    let invalid = |reason: String| Err(TokenError::InvalidIdentity { reason });
    if identity.is_empty() {
        return invalid("identity is empty".to_owned());
    }
    let chars = identity.chars().count();
    match grant {
        Grant::Voice(_) => {
            if chars > MAX_VOICE_IDENTITY_CHARS {
                return invalid(format!(
                    "identity is {chars} characters, voice allows at most {MAX_VOICE_IDENTITY_CHARS}"
                ));
            }
            if let Some(c) = identity
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || c == '_'))
            {
                return invalid(format!(
                    "voice identities may contain only ASCII letters, digits and '_', found {c:?}"
                ));
            }
        }
        Grant::Chat(_) => {
            if chars > MAX_CHAT_IDENTITY_CHARS {
                return invalid(format!(
                    "identity is {chars} characters, chat allows at most {MAX_CHAT_IDENTITY_CHARS}"
                ));
            }
            if let Some(c) = identity.chars().find(|c| c.is_control()) {
                return invalid(format!(
                    "identity contains control character U+{:04X}",
                    u32::from(c)
                ));
            }
        }
    }
    Ok(identity)
}

/// Mints a signed access token for `identity` with `grant`, valid from `now_unix_s` (Unix
/// seconds) for `options.ttl_s` seconds. Returns the compact JWT `header.claims.signature`.
///
/// Errors: [`TokenError::InvalidIdentity`] (see [`validate_identity`]),
/// [`TokenError::InvalidTtl`], [`TokenError::Encoding`].
pub fn mint(
    credentials: &Credentials,
    identity: &str,
    grant: &Grant,
    options: &TokenOptions,
    now_unix_s: u64,
) -> Result<String, TokenError> {
    validate_identity(identity, grant)?;
    if options.ttl_s == 0 || options.ttl_s > MAX_TTL_S {
        return Err(TokenError::InvalidTtl {
            ttl_s: options.ttl_s,
        });
    }

    let mut header = Header::new(Algorithm::HS256);
    header.cty = Some(CONTENT_TYPE.to_owned());
    if let Some(region) = options.region.as_deref().filter(|r| !r.is_empty()) {
        header.extras.insert("twr", region);
    }

    let (voice, chat) = match grant {
        Grant::Voice(voice) => (Some(WireVoice::from(voice)), None),
        Grant::Chat(chat) => (None, Some(WireChat::from(chat))),
    };
    let claims = Claims {
        jti: format!("{}-{now_unix_s}", credentials.api_key_sid),
        grants: Grants {
            identity,
            voice,
            chat,
        },
        iss: &credentials.api_key_sid,
        // `ttl_s` ≤ MAX_TTL_S; saturating only matters for a clock near u64::MAX.
        exp: now_unix_s.saturating_add(options.ttl_s),
        nbf: now_unix_s,
        sub: &credentials.account_sid,
    };
    let key = EncodingKey::from_secret(credentials.api_secret.as_bytes());
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}

/// JWT claims in twilio-python's key order (`jti, grants, iss, exp, nbf, sub`).
#[derive(Serialize)]
struct Claims<'a> {
    jti: String,
    grants: Grants<'a>,
    iss: &'a str,
    exp: u64,
    nbf: u64,
    sub: &'a str,
}

#[derive(Serialize)]
struct Grants<'a> {
    identity: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    voice: Option<WireVoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat: Option<WireChat<'a>>,
}

/// `grants.voice` as twilio-python's `VoiceGrant.to_payload` writes it.
#[derive(Serialize)]
struct WireVoice<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    incoming: Option<Allow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outgoing: Option<Outgoing<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_credential_sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Allow {
    allow: bool,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    application_sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a BTreeMap<String, String>>,
}

impl<'a> From<&'a VoiceGrant> for WireVoice<'a> {
    fn from(grant: &'a VoiceGrant) -> Self {
        Self {
            incoming: grant.incoming_allow.then_some(Allow { allow: true }),
            outgoing: grant
                .outgoing_application_sid
                .as_deref()
                .map(|application_sid| Outgoing {
                    application_sid,
                    params: (!grant.outgoing_params.is_empty()).then_some(&grant.outgoing_params),
                }),
            push_credential_sid: grant.push_credential_sid.as_deref(),
            endpoint_id: grant.endpoint_id.as_deref(),
        }
    }
}

/// `grants.chat` as twilio-python's `ChatGrant.to_payload` writes it.
#[derive(Serialize)]
struct WireChat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    service_sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment_role_sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_credential_sid: Option<&'a str>,
}

impl<'a> From<&'a ChatGrant> for WireChat<'a> {
    fn from(grant: &'a ChatGrant) -> Self {
        Self {
            service_sid: grant.service_sid.as_deref(),
            endpoint_id: grant.endpoint_id.as_deref(),
            deployment_role_sid: grant.deployment_role_sid.as_deref(),
            push_credential_sid: grant.push_credential_sid.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    use serde_json::{Value, json};
    use sha2::Sha256;

    const ACCOUNT: &str = "AC00000000000000000000000000000000";
    const KEY: &str = "SK11111111111111111111111111111111";
    const SECRET: &str = "test-api-secret";
    const APP: &str = "AP22222222222222222222222222222222";
    const SERVICE: &str = "IS33333333333333333333333333333333";
    const NOW: u64 = 1_700_000_000;

    fn env(vars: &[(&str, &str)]) -> impl FnMut(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    fn credentials() -> Credentials {
        Credentials::from_lookup(env(&[
            (ENV_ACCOUNT_SID, ACCOUNT),
            (ENV_API_KEY, KEY),
            (ENV_API_SECRET, SECRET),
            (ENV_TWIML_APP_SID, APP),
            (ENV_CONVERSATIONS_SERVICE_SID, SERVICE),
        ]))
        .unwrap()
    }

    /// Splits a JWT, checks its HS256 signature with an independent HMAC-SHA256 over
    /// `header.claims`, and returns (raw header JSON, header, claims).
    fn open(jwt: &str, secret: &str) -> (String, Value, Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        for part in &parts {
            assert!(!part.contains('='), "Base64url without padding: {part}");
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 32);
        mac.verify_slice(&signature)
            .expect("HS256 signature verifies with the API secret");

        let header_raw = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let header = serde_json::from_str(&header_raw).unwrap();
        let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        (header_raw, header, claims)
    }

    #[test]
    fn voice_token_header_and_claims_exact() {
        let params = vec![("agent".to_owned(), "support".to_owned())];
        let jwt = credentials()
            .voice_token("alice", &params, &TokenOptions::default(), NOW)
            .unwrap();
        let (raw, header, claims) = open(&jwt, SECRET);
        assert_eq!(
            header,
            json!({"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1"})
        );
        // Same bytes as the header of the example token on twilio.com/docs/iam/access-tokens
        // (`eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImN0eSI6InR3aWxpby1mcGE7dj0xIn0`).
        assert_eq!(raw, r#"{"typ":"JWT","alg":"HS256","cty":"twilio-fpa;v=1"}"#);
        assert!(
            jwt.starts_with("eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImN0eSI6InR3aWxpby1mcGE7dj0xIn0.")
        );
        assert_eq!(
            claims,
            json!({
                "jti": format!("{KEY}-{NOW}"),
                "grants": {
                    "identity": "alice",
                    "voice": {
                        "incoming": {"allow": true},
                        "outgoing": {"application_sid": APP, "params": {"agent": "support"}}
                    }
                },
                "iss": KEY,
                "sub": ACCOUNT,
                "nbf": NOW,
                "exp": NOW + 3600
            })
        );
    }

    #[test]
    fn claims_key_order_follows_twilio_python() {
        let jwt = credentials()
            .voice_token("alice", &[], &TokenOptions::default(), NOW)
            .unwrap();
        let payload = URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            format!(
                r#"{{"jti":"{KEY}-{NOW}","grants":{{"identity":"alice","voice":{{"incoming":{{"allow":true}},"outgoing":{{"application_sid":"{APP}"}}}}}},"iss":"{KEY}","exp":{},"nbf":{NOW},"sub":"{ACCOUNT}"}}"#,
                NOW + 3600
            )
        );
    }

    #[test]
    fn chat_token_claims_exact() {
        let jwt = credentials()
            .chat_token("alice@example.com", &TokenOptions::default(), NOW)
            .unwrap();
        let (_, header, claims) = open(&jwt, SECRET);
        assert_eq!(
            header,
            json!({"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1"})
        );
        assert_eq!(
            claims,
            json!({
                "jti": format!("{KEY}-{NOW}"),
                "grants": {"identity": "alice@example.com", "chat": {"service_sid": SERVICE}},
                "iss": KEY,
                "sub": ACCOUNT,
                "nbf": NOW,
                "exp": NOW + 3600
            })
        );
    }

    #[test]
    fn grant_shapes_follow_twilio_python() {
        let creds = credentials();
        let opts = TokenOptions::default();
        // Incoming only: no `outgoing`.
        let grant = Grant::Voice(VoiceGrant {
            incoming_allow: true,
            ..VoiceGrant::default()
        });
        let (_, _, claims) = open(&mint(&creds, "bob", &grant, &opts, NOW).unwrap(), SECRET);
        assert_eq!(
            claims["grants"]["voice"],
            json!({"incoming": {"allow": true}})
        );
        // Nothing allowed: `{}`.
        let grant = Grant::Voice(VoiceGrant::default());
        let (_, _, claims) = open(&mint(&creds, "bob", &grant, &opts, NOW).unwrap(), SECRET);
        assert_eq!(claims["grants"]["voice"], json!({}));
        // Push credential and endpoint.
        let grant = Grant::Voice(VoiceGrant {
            push_credential_sid: Some("CR1".into()),
            endpoint_id: Some("e1".into()),
            ..VoiceGrant::default()
        });
        let (_, _, claims) = open(&mint(&creds, "bob", &grant, &opts, NOW).unwrap(), SECRET);
        assert_eq!(
            claims["grants"]["voice"],
            json!({"push_credential_sid": "CR1", "endpoint_id": "e1"})
        );
        // Empty chat grant: `{}`.
        let (_, _, claims) = open(
            &mint(
                &creds,
                "bob",
                &Grant::Chat(ChatGrant::default()),
                &opts,
                NOW,
            )
            .unwrap(),
            SECRET,
        );
        assert_eq!(claims["grants"], json!({"identity": "bob", "chat": {}}));
    }

    #[test]
    fn region_header_only_when_non_empty() {
        let creds = credentials();
        let ie1 = TokenOptions {
            region: Some("ie1".into()),
            ..TokenOptions::default()
        };
        let (raw, header, _) = open(&creds.voice_token("alice", &[], &ie1, NOW).unwrap(), SECRET);
        assert_eq!(
            header,
            json!({"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1", "twr": "ie1"})
        );
        assert_eq!(
            raw,
            r#"{"typ":"JWT","alg":"HS256","cty":"twilio-fpa;v=1","twr":"ie1"}"#
        );
        let empty = TokenOptions {
            region: Some(String::new()),
            ..TokenOptions::default()
        };
        let (_, header, _) = open(
            &creds.voice_token("alice", &[], &empty, NOW).unwrap(),
            SECRET,
        );
        assert_eq!(header.get("twr"), None);
    }

    #[test]
    fn ttl_default_custom_and_cap() {
        let creds = credentials();
        let with_ttl = |ttl_s| TokenOptions {
            ttl_s,
            region: None,
        };
        let (_, _, claims) = open(&creds.chat_token("a", &with_ttl(60), NOW).unwrap(), SECRET);
        assert_eq!(
            (claims["nbf"].as_u64(), claims["exp"].as_u64()),
            (Some(NOW), Some(NOW + 60))
        );
        let (_, _, claims) = open(
            &creds.chat_token("a", &with_ttl(MAX_TTL_S), NOW).unwrap(),
            SECRET,
        );
        assert_eq!(claims["exp"].as_u64(), Some(NOW + 86_400));
        for ttl_s in [0, MAX_TTL_S + 1, u64::MAX] {
            let err = creds.chat_token("a", &with_ttl(ttl_s), NOW).unwrap_err();
            assert!(
                matches!(err, TokenError::InvalidTtl { ttl_s: t } if t == ttl_s),
                "{err}"
            );
        }
    }

    #[test]
    fn identity_rules() {
        let voice = Grant::Voice(VoiceGrant::default());
        let chat = Grant::Chat(ChatGrant::default());
        assert!(validate_identity("alice_01", &voice).is_ok());
        assert!(validate_identity(&"a".repeat(MAX_VOICE_IDENTITY_CHARS), &voice).is_ok());
        assert!(validate_identity("alice@example.com", &chat).is_ok());
        assert!(validate_identity("Zoë Ünal", &chat).is_ok());
        assert!(validate_identity(&"é".repeat(MAX_CHAT_IDENTITY_CHARS), &chat).is_ok());
        let rejected = [
            ("", &voice),
            ("", &chat),
            (&*"a".repeat(MAX_VOICE_IDENTITY_CHARS + 1), &voice),
            (&*"a".repeat(MAX_CHAT_IDENTITY_CHARS + 1), &chat),
            ("alice smith", &voice),
            ("alice@example.com", &voice),
            ("zoë", &voice),
            ("alice\n", &chat),
            ("a\u{0}b", &chat),
            ("a\u{7f}", &chat),
        ];
        for (identity, grant) in rejected {
            let err = validate_identity(identity, grant).unwrap_err();
            assert!(
                matches!(err, TokenError::InvalidIdentity { .. }),
                "{identity:?}: {err}"
            );
        }
        // mint refuses too.
        let err = credentials()
            .voice_token("bad identity", &[], &TokenOptions::default(), NOW)
            .unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
    }

    #[test]
    fn credentials_from_lookup_names_missing_variables() {
        let err = Credentials::from_lookup(env(&[(ENV_ACCOUNT_SID, ACCOUNT), (ENV_API_KEY, "")]))
            .unwrap_err();
        match &err {
            TokenError::MissingSetting { names } => {
                assert_eq!(names, &[ENV_API_KEY, ENV_API_SECRET])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "missing setting(s): TWILIO_API_KEY, TWILIO_API_SECRET"
        );

        let basic = Credentials::from_lookup(env(&[
            (ENV_ACCOUNT_SID, ACCOUNT),
            (ENV_API_KEY, KEY),
            (ENV_API_SECRET, SECRET),
        ]))
        .unwrap();
        let err = basic
            .voice_token("alice", &[], &TokenOptions::default(), NOW)
            .unwrap_err();
        assert_eq!(err.to_string(), "missing setting(s): TWILIO_TWIML_APP_SID");
        let err = basic
            .chat_token("alice", &TokenOptions::default(), NOW)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing setting(s): TWILIO_CONVERSATIONS_SERVICE_SID"
        );
    }

    #[test]
    fn debug_redacts_secret() {
        let shown = format!("{:?}", credentials());
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains(KEY));
    }

    #[test]
    fn wrong_secret_does_not_verify() {
        let jwt = credentials()
            .chat_token("a", &TokenOptions::default(), NOW)
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        let mut mac = Hmac::<Sha256>::new_from_slice(b"other-secret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert!(
            mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
                .is_err()
        );
    }

    #[test]
    fn jsonwebtoken_decodes_it_too() {
        use jsonwebtoken::{DecodingKey, Validation, decode};
        let jwt = credentials()
            .chat_token("a", &TokenOptions::default(), NOW)
            .unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false; // NOW is in the past.
        validation.required_spec_claims.clear();
        let data = decode::<Value>(
            &jwt,
            &DecodingKey::from_secret(SECRET.as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], ACCOUNT);
        assert_eq!(data.header.cty.as_deref(), Some("twilio-fpa;v=1"));
    }
}
