//! The browser console: a phone that calls the agent from a browser tab (`GET /phone`) and a
//! calls dashboard (`GET /dashboard`, `GET /dashboard/calls/{sid}`), served by `hark serve`.
//!
//! The pages are plain HTML, CSS and JavaScript modules under `gateway/assets/console/`,
//! embedded in the binary (no framework, no CDN: they work offline).
//!
//! # Access
//!
//! Nothing but the login page and the static assets is open. A browser gets a console session
//! (an `HttpOnly`, `SameSite=Strict` cookie, 12 h) in one of two ways:
//! - the one-time link `hark serve` prints at start (`http://<addr>/console?token=<64 hex>`):
//!   the first visit consumes the token, sets the cookie and redirects to `/phone`; or
//! - the login form at `/console`, posting a `HARK_API_KEY` (checked as a bearer key is, with
//!   its rate limit).
//!
//! The phone's media socket (`/media-stream`) takes a console ticket in place of
//! `X-Twilio-Signature`: `POST /console/ticket` (session cookie) returns a single-use ticket,
//! valid for [`TICKET_TTL`], that the page puts in the socket URL as `?console_ticket=…`
//! ([`Console::admits_media_stream`]). Nothing else accepts a ticket.
//!
//! Every console response carries a strict Content-Security-Policy ([`CSP`]: scripts, styles
//! and workers from the server only, no inline script or style), `X-Content-Type-Options:
//! nosniff`, `Referrer-Policy: no-referrer` (the link's token never leaks in a `Referer`) and
//! `Cache-Control: no-store`.
//!
//! # Routes
//!
//! | route | access | what |
//! |---|---|---|
//! | `GET /console` | open | `?token=` one-time link → session; else the login form |
//! | `POST /console/login` | open (form `key`) | `HARK_API_KEY` → session |
//! | `POST /console/logout` | session | ends the session |
//! | `POST /console/ticket` | session | `{"ticket": "…", "expires_in_s": 60}` for `/media-stream` |
//! | `GET /console/calls/{sid}` | session | the call record as `GET /calls/{sid}` returns it (JSON) |
//! | `GET /console/calls/{sid}/recording.wav` | session | the call's audio recorded by hark, when it was (the record's `audio.file`) |
//! | `GET /console/config` | session | `{"voice_sdk": bool, …}`: whether the phone can call through Twilio ([`voice_sdk`]) |
//! | `POST /console/voice-token` | session | a Voice SDK token for the browser client `console` ([`voice_sdk`]) |
//! | `GET /console/assets/{file}` | open | the pages' scripts and styles, and the vendored Twilio Voice SDK |
//! | `GET /phone` | session | the browser phone |
//! | `GET /dashboard`, `GET /dashboard/calls/{sid}` | session | calls, one call |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::server::AppState;

mod dashboard;
mod html;
pub mod voice_sdk;

/// The console session cookie's name.
pub const COOKIE: &str = "hark_console";
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a media-socket ticket stays valid (it is also single-use).
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// Sessions (or tickets) kept at most; the oldest go first.
const MAX_LIVE: usize = 1024;
/// How long a refused sign-in waits before answering.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);
/// The query parameter of `/media-stream` that carries a console ticket.
pub const TICKET_PARAM: &str = "console_ticket";

/// The Content-Security-Policy of every console response: everything from this server only, no
/// inline scripts or styles, no framing; the phone's socket (`connect-src 'self'`, which covers
/// same-origin `ws:`/`wss:` in CSP 3) and its played audio (`media-src 'self' blob:`).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; \
                       worker-src 'self'; form-action 'self'; base-uri 'none'; \
                       frame-ancestors 'none'";

/// A secret's SHA-256 digest: what the console keeps instead of the secret.
type Digest32 = [u8; 32];

fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// The console's secrets: the one-time link, sessions and media-socket tickets, each kept as a
/// SHA-256 digest with its expiry.
pub struct Console {
    rng: SystemRandom,
    link: Mutex<Option<Digest32>>,
    sessions: Mutex<HashMap<Digest32, Instant>>,
    tickets: Mutex<HashMap<Digest32, Instant>>,
    /// `Secure` on the cookie (when `HARK_PUBLIC_URL` is `https://`).
    secure_cookie: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// Takes a lock even if a panicking thread poisoned it (the maps stay consistent: every
/// update is a single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Console {
    /// A console with no link issued yet; `secure_cookie` adds `Secure` to the cookie.
    pub fn new(secure_cookie: bool) -> Console {
        Console {
            rng: SystemRandom::new(),
            link: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            secure_cookie,
        }
    }

    /// 32 random bytes from the OS as 64 lowercase hex digits, or `None` if the OS's random
    /// source failed (then nothing is issued).
    fn secret(&self) -> Option<String> {
        let mut b = [0u8; 32];
        self.rng.fill(&mut b).ok()?;
        Some(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// Issues a new one-time link token (the previous one, if unused, stops working) and
    /// returns the link: `<base>/console?token=<64 hex>`, where `base` is e.g.
    /// `http://127.0.0.1:3000`. `None` if the OS's random source failed.
    pub fn issue_link(&self, base: &str) -> Option<String> {
        let token = self.secret()?;
        *lock(&self.link) = Some(digest(&token));
        Some(format!(
            "{}/console?token={token}",
            base.trim_end_matches('/')
        ))
    }

    /// Consumes the link token if `token` is it.
    fn take_link(&self, token: &str) -> bool {
        let mut link = lock(&self.link);
        let ok = link
            .as_ref()
            .is_some_and(|d| bool::from(subtle::ConstantTimeEq::ct_eq(&d[..], &digest(token)[..])));
        if ok {
            *link = None;
        }
        ok
    }

    /// Inserts a new secret valid for `ttl` into `map` and returns it.
    fn insert(&self, map: &Mutex<HashMap<Digest32, Instant>>, ttl: Duration) -> Option<String> {
        let s = self.secret()?;
        let now = Instant::now();
        let mut m = lock(map);
        m.retain(|_, until| *until > now);
        if m.len() >= MAX_LIVE
            && let Some(oldest) = m.iter().min_by_key(|(_, until)| **until).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(digest(&s), now + ttl);
        Some(s)
    }

    /// A new session secret (the cookie's value).
    fn new_session(&self) -> Option<String> {
        self.insert(&self.sessions, SESSION_TTL)
    }

    /// Whether `headers` carry a live session cookie.
    fn has_session(&self, headers: &HeaderMap) -> bool {
        let Some(value) = session_cookie(headers) else {
            return false;
        };
        lock(&self.sessions)
            .get(&digest(value))
            .is_some_and(|until| *until > Instant::now())
    }

    fn end_session(&self, headers: &HeaderMap) {
        if let Some(value) = session_cookie(headers) {
            lock(&self.sessions).remove(&digest(value));
        }
    }

    /// A new single-use media-socket ticket.
    fn new_ticket(&self) -> Option<String> {
        self.insert(&self.tickets, TICKET_TTL)
    }

    /// The `/media-stream` hook: whether the upgrade request `uri` carries a live console
    /// ticket (`?console_ticket=<64 hex>`, from `POST /console/ticket`). The ticket is consumed.
    /// A browser phone's socket is then accepted in place of an `X-Twilio-Signature` check;
    /// nothing else is.
    pub fn admits_media_stream(&self, uri: &Uri) -> bool {
        let Some(ticket) = uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == TICKET_PARAM)
                .map(|(_, v)| v.into_owned())
        }) else {
            return false;
        };
        let ok = lock(&self.tickets)
            .remove(&digest(&ticket))
            .is_some_and(|until| until > Instant::now());
        if ok {
            metrics::counter!("hark_console_media_streams_total").increment(1);
            info!("media stream admitted with a console ticket (browser phone)");
        } else {
            warn!("media stream upgrade with an unknown or expired console ticket");
        }
        ok
    }
}

/// The value of the console cookie in `headers`, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then_some(v)
        })
}

/// The base URL to print the console link under: `HARK_PUBLIC_URL` when set, else
/// `http://<addr>` (a wildcard address shown as loopback).
pub fn link_base(public_url: Option<&str>, addr: SocketAddr) -> String {
    if let Some(u) = public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{a}")
}

/// The console's routes (see the module docs), each response with the security headers.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/console", get(console_entry))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/ticket", post(ticket))
        .route("/console/calls/{sid}", get(call_json))
        .route(
            "/console/calls/{sid}/recording.wav",
            get(dashboard::recording),
        )
        .route("/console/config", get(voice_sdk::config))
        .route("/console/voice-token", post(voice_sdk::token))
        .route("/console/assets/{file}", get(asset))
        .route("/phone", get(phone))
        .route("/dashboard", get(dashboard::list))
        .route("/dashboard/calls/{sid}", get(dashboard::show))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

async fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    // A page with its own policy (the phone in the Voice SDK mode) keeps it.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The session check of a page: `None` to go on, else a redirect to the login page.
pub(crate) fn require_session(st: &AppState, headers: &HeaderMap) -> Option<Response> {
    if st.console().has_session(headers) {
        None
    } else {
        Some(Redirect::to("/console").into_response())
    }
}

fn set_cookie(st: &AppState, value: &str, max_age_s: u64) -> HeaderValue {
    let secure = if st.console().secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let c =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A new session: the cookie and a redirect to the phone.
fn start_session(st: &AppState, how: &'static str) -> Response {
    let Some(session) = st.console().new_session() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a session",
        )
            .into_response();
    };
    info!(how, "console session started");
    let mut r = Redirect::to("/phone").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(st, &session, SESSION_TTL.as_secs()),
    );
    r
}

#[derive(Debug, Deserialize)]
struct EntryQuery {
    token: Option<String>,
}

/// `GET /console[?token=…]`.
async fn console_entry(State(st): State<Arc<AppState>>, Query(q): Query<EntryQuery>) -> Response {
    match q.token.as_deref() {
        Some(t) if st.console().take_link(t) => start_session(&st, "one-time link"),
        Some(_) => {
            metrics::counter!("hark_console_refused_total", "reason" => "link").increment(1);
            login_page(
                StatusCode::FORBIDDEN,
                "This console link was already used or is not valid. Sign in with an API key, \
                 or restart hark serve for a new link.",
            )
        }
        None => login_page(StatusCode::OK, ""),
    }
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let body = html::page(
        "hark console — sign in",
        &[],
        &format!(
            "<main class=\"narrow\"><h1>hark console</h1>{msg}\
             <p>Open the one-time link <code>hark serve</code> printed at start, or sign in with \
             an API key (<code>HARK_API_KEY</code>).</p>\
             <form method=\"post\" action=\"/console/login\">\
             <label>API key <input type=\"password\" name=\"key\" autocomplete=\"off\" required></label>\
             <button type=\"submit\">Sign in</button></form></main>",
            msg = if message.is_empty() {
                String::new()
            } else {
                format!(
                    "<p class=\"error\" role=\"alert\">{}</p>",
                    html::esc(message)
                )
            }
        ),
    );
    (status, body).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

/// `POST /console/login` (form `key`).
async fn login(State(st): State<Arc<AppState>>, Form(f): Form<LoginForm>) -> Response {
    let Some(api) = st.api() else {
        return login_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "API keys are not available here.",
        );
    };
    let mut h = HeaderMap::new();
    let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", f.key.trim())) else {
        return login_page(StatusCode::UNAUTHORIZED, "invalid API key");
    };
    h.insert(header::AUTHORIZATION, v);
    match api.authenticate(&h, crate::api::auth::Need::ApiKey, "console_login") {
        Ok(_) => start_session(&st, "API key"),
        Err(e) => {
            metrics::counter!("hark_console_refused_total", "reason" => "key").increment(1);
            // Wrong keys are not rate-limited by the API (no key, no bucket): slow guessing.
            tokio::time::sleep(FAILED_LOGIN_DELAY).await;
            login_page(e.status(), &e.to_string())
        }
    }
}

/// `POST /console/logout`.
async fn logout(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    st.console().end_session(&headers);
    let mut r = Redirect::to("/console").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&st, "", 0));
    r
}

/// `POST /console/ticket`.
async fn ticket(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !st.console().has_session(&headers) {
        return (StatusCode::UNAUTHORIZED, "no console session").into_response();
    }
    match st.console().new_ticket() {
        Some(t) => axum::Json(serde_json::json!({
            "ticket": t,
            "param": TICKET_PARAM,
            "expires_in_s": TICKET_TTL.as_secs(),
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a ticket",
        )
            .into_response(),
    }
}

/// `GET /console/calls/{sid}`: the call record (JSON), for the phone's live view.
async fn call_json(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Response {
    if !st.console().has_session(&headers) {
        return (StatusCode::UNAUTHORIZED, "no console session").into_response();
    }
    match dashboard::load(&st, &sid).await {
        Ok(Some(d)) => axum::Json(d).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such call (yet)").into_response(),
        Err(r) => r,
    }
}

/// `GET /phone`.
async fn phone(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = require_session(&st, &headers) {
        return r;
    }
    let csp = if voice_sdk::enabled(&st) {
        voice_sdk::CSP_WITH_SDK
    } else {
        CSP
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp),
        ],
        include_str!("../../assets/console/phone.html"),
    )
        .into_response()
}

/// The embedded assets: name → (content type, bytes).
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/console/console.css"),
    ),
    (
        "phone.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/phone.js"),
    ),
    (
        "g711.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/g711.js"),
    ),
    (
        "worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/worklet.js"),
    ),
    (
        "twilio-mode.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/twilio-mode.js"),
    ),
    // @twilio/voice-sdk 2.18.5's browser bundle (Apache-2.0; see vendor/README.md).
    (
        "twilio.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/console/vendor/twilio.min.js"),
    ),
];

/// `GET /console/assets/{file}`.
async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ct, body)) => ([(header::CONTENT_TYPE, *ct)], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_works_once() {
        let c = Console::new(false);
        let link = c.issue_link("http://127.0.0.1:3000/").unwrap();
        let token = link
            .strip_prefix("http://127.0.0.1:3000/console?token=")
            .unwrap();
        assert_eq!(token.len(), 64);
        assert!(!c.take_link("0".repeat(64).as_str()));
        assert!(c.take_link(token));
        assert!(!c.take_link(token), "single use");
    }

    #[test]
    fn a_new_link_replaces_the_old_one() {
        let c = Console::new(false);
        let a = c.issue_link("http://h").unwrap();
        let b = c.issue_link("http://h").unwrap();
        assert_ne!(a, b);
        assert!(!c.take_link(a.rsplit('=').next().unwrap()));
        assert!(c.take_link(b.rsplit('=').next().unwrap()));
    }

    #[test]
    fn sessions_are_checked_by_cookie() {
        let c = Console::new(false);
        let s = c.new_session().unwrap();
        let mut h = HeaderMap::new();
        assert!(!c.has_session(&h));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={s}")).unwrap(),
        );
        assert!(c.has_session(&h));
        c.end_session(&h);
        assert!(!c.has_session(&h));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}=nope")).unwrap(),
        );
        assert!(!c.has_session(&h));
    }

    #[test]
    fn tickets_admit_one_media_stream() {
        let c = Console::new(false);
        let t = c.new_ticket().unwrap();
        let uri: Uri = format!("/media-stream?{TICKET_PARAM}={t}").parse().unwrap();
        assert!(!c.admits_media_stream(&"/media-stream".parse().unwrap()));
        assert!(
            !c.admits_media_stream(&format!("/media-stream?{TICKET_PARAM}=x").parse().unwrap())
        );
        assert!(c.admits_media_stream(&uri));
        assert!(!c.admits_media_stream(&uri), "single use");
    }

    #[test]
    fn link_base_prefers_the_public_url() {
        let a: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        assert_eq!(link_base(None, a), "http://127.0.0.1:3000");
        assert_eq!(
            link_base(Some("https://x.ngrok.app/"), a),
            "https://x.ngrok.app"
        );
    }
}
