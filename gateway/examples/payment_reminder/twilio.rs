//! A tiny stand-in for Twilio (and for the tunnel, e.g. ngrok, in front of hark).
//!
//! hark's `POST /calls` asks Twilio's REST API to place the call (`HARK_TWILIO_API_BASE` points
//! hark here instead of `https://api.twilio.com`). Like Twilio, this stand-in answers
//! `Calls.json` with 201 and the new call's SID, then "connects" the call:
//!
//! 1. it POSTs the voice webhook hark gave as `Url` (`<public URL>/voice?payerId=…`), signed
//!    with `X-Twilio-Signature` as Twilio signs it, with the call's `CallSid`, `From`, `To` and
//!    `Direction=outbound-api`;
//! 2. it reads the TwiML answer: `<Connect><Stream url="wss://…/media-stream">` with one
//!    `<Parameter>` per per-call value (`payerId` among them);
//! 3. it opens that Media Stream and plays the callee with hark's simulator
//!    ([`simulator::run_call`]): recorded speech, line noise between turns, marks echoed.
//!
//! hark's public URL (`https://hark.example.test`) is what Twilio would see; the stand-in
//! sends everything to hark's local address instead, as a tunnel would.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hark_gateway::simulator::{self, CallSetup, Report, UserSpeech};
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use serde_json::json;
use tokio::sync::Notify;

/// The callee this stand-in plays: what it says and when.
#[derive(Debug, Clone)]
pub struct Callee {
    /// μ-law 8 kHz mono, 8 bytes per ms.
    pub audio: Arc<[u8]>,
    /// Where the turns are in `audio`.
    pub speech: UserSpeech,
}

/// The stand-in's state.
#[derive(Debug)]
pub struct Twilio {
    account_sid: String,
    auth_token: String,
    public_url: String,
    callee: Callee,
    /// hark's local address (`127.0.0.1:<port>`), set once hark is bound.
    pub hark_addr: OnceLock<std::net::SocketAddr>,
    /// The `Calls.json` forms received.
    pub placed: Mutex<Vec<Vec<(String, String)>>>,
    /// The `<Parameter>`s of the stream hark's TwiML asked for.
    pub stream_parameters: Mutex<Vec<(String, String)>>,
    /// What the simulated callee measured, or why the call could not be connected.
    pub report: Mutex<Option<Result<Report, String>>>,
    /// Notified when the simulated call is over.
    pub done: Notify,
}

/// Starts the stand-in on 127.0.0.1 (port 0) for an account whose Auth Token is `auth_token`
/// and a hark served at `public_url`. Returns its base URL and state.
///
/// # Errors
/// The listener could not be bound.
pub async fn start(
    account_sid: &str,
    auth_token: &str,
    public_url: &str,
    callee: Callee,
) -> std::io::Result<(String, Arc<Twilio>)> {
    let twilio = Arc::new(Twilio {
        account_sid: account_sid.to_string(),
        auth_token: auth_token.to_string(),
        public_url: public_url.to_string(),
        callee,
        hark_addr: OnceLock::new(),
        placed: Mutex::default(),
        stream_parameters: Mutex::default(),
        report: Mutex::default(),
        done: Notify::new(),
    });
    let app = Router::new().fallback(rest).with_state(twilio.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, twilio))
}

/// Every REST request: `POST /2010-04-01/Accounts/{AccountSid}/Calls.json` places a call;
/// anything else (e.g. a redirect of a live call) is logged and answered 200.
async fn rest(State(t): State<Arc<Twilio>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let create = format!("/2010-04-01/Accounts/{}/Calls.json", t.account_sid);
    if method != Method::POST || uri.path() != create {
        println!("twilio: {method} {} (ignored)", uri.path());
        return axum::Json(json!({})).into_response();
    }
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let call_sid = format!("CA{}", simulator::random_token());
    println!(
        "twilio: Calls.json To={} Url={}",
        field("To").unwrap_or_default(),
        field("Url").unwrap_or_default()
    );
    t.placed.lock().expect("not poisoned").push(form.clone());
    let answer = json!({
        "sid": call_sid, "account_sid": t.account_sid, "status": "queued",
        "to": field("To"), "from": field("From"), "direction": "outbound-api",
        "api_version": "2010-04-01",
    });
    // The callee "picks up" right after the answer, as a real phone would a moment later.
    let t2 = t.clone();
    tokio::spawn(async move {
        let result = connect(&t2, &call_sid, &form).await;
        if let Err(e) = &result {
            eprintln!("twilio: the call could not be connected: {e}");
        }
        *t2.report.lock().expect("not poisoned") = Some(result);
        t2.done.notify_one();
    });
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

/// Asks hark's voice webhook for TwiML and plays the callee on the Media Stream it names.
async fn connect(t: &Twilio, call_sid: &str, form: &[(String, String)]) -> Result<Report, String> {
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let url = field("Url").ok_or("Calls.json without Url")?;
    let addr = *t.hark_addr.get().ok_or("hark's address is not known yet")?;
    // The webhook, as Twilio sends it for an answered outbound call.
    let webhook: Vec<(String, String)> = [
        ("CallSid", call_sid.to_string()),
        ("AccountSid", t.account_sid.clone()),
        ("From", field("From").unwrap_or_default()),
        ("To", field("To").unwrap_or_default()),
        ("Direction", "outbound-api".to_string()),
        ("CallStatus", "in-progress".to_string()),
        ("ApiVersion", "2010-04-01".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let signature = hark_gateway::signature::compute(&t.auth_token, &url, &webhook);
    let path = url
        .strip_prefix(&t.public_url)
        .ok_or_else(|| format!("Url {url} is not under {}", t.public_url))?;
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&webhook)
        .finish();
    let twiml = reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("voice webhook: {e}"))?;
    let status = twiml.status();
    let twiml = twiml
        .text()
        .await
        .map_err(|e| format!("voice webhook: {e}"))?;
    if !status.is_success() {
        return Err(format!("voice webhook answered {status}: {twiml}"));
    }
    if std::env::var_os("REMINDER_VERBOSE").is_some() {
        println!("twilio: Calls.json form {form:?}\ntwilio: TwiML {twiml}");
    }
    let (stream_url, parameters) = stream_of(&twiml)?;
    println!("twilio: TwiML streams to {stream_url} with {parameters:?}");
    *t.stream_parameters.lock().expect("not poisoned") = parameters.clone();

    // The Media Stream, on hark's local address; signed for the public URL, as Twilio does.
    let stream_path = stream_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .ok_or_else(|| format!("stream URL {stream_url} has no path"))?;
    let mut setup = CallSetup::new(format!("ws://{addr}{stream_path}"), t.callee.audio.clone());
    setup.start = simulator::fresh_start(parameters);
    setup.start.call_sid = call_sid.to_string();
    setup.start.account_sid = t.account_sid.clone();
    setup.speech = Some(t.callee.speech.clone());
    setup.auth_token = Some(t.auth_token.clone());
    setup.public_url = Some(t.public_url.clone());
    // The callee stays on the line (line noise) until hark hangs up.
    setup.tail_ms = 20_000;
    setup.close_timeout = Duration::from_secs(10);
    simulator::run_call(setup)
        .await
        .map_err(|e| format!("media stream: {e}"))
}

/// The `<Stream url>` and its `<Parameter name value>`s in a TwiML document.
fn stream_of(twiml: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut reader = Reader::from_str(twiml);
    let mut url = None;
    let mut parameters = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("TwiML: {e}: {twiml}"))?;
        let e = match event {
            Event::Start(e) | Event::Empty(e) => e,
            Event::Eof => break,
            _ => continue,
        };
        let attr = |name: &str| -> Option<String> {
            e.attributes().flatten().find_map(|a| {
                (a.key.as_ref() as &str == name)
                    .then(|| a.normalized_value(XmlVersion::Explicit1_0).ok())
                    .flatten()
                    .map(|v| v.to_string())
            })
        };
        match e.name().as_ref() as &str {
            "Stream" => url = attr("url"),
            "Parameter" => {
                if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
                    parameters.push((n, v));
                }
            }
            _ => {}
        }
    }
    let url = url.ok_or_else(|| format!("TwiML without <Stream url>: {twiml}"))?;
    Ok((url, parameters))
}
