//! The browser console (`/phone`, `/dashboard`) against the real `hark serve` binary
//! (`CARGO_BIN_EXE_hark`, echo agent, SQLite in a temporary directory, signatures on).
//!
//! - `console_access_is_guarded` (no browser): the one-time link, the login form, sessions,
//!   media-socket tickets in place of `X-Twilio-Signature`, and the security headers.
//! - `browser_phone_calls_the_echo_agent`: headless Chromium (Debian's `chromium` and
//!   `chromium-driver`, driven over WebDriver by fantoccini) with a fake microphone playing
//!   `fixtures/audio/multi-turn-8k.ulaw` (four caller turns, the second over the agent's
//!   answer). The page calls hark over `/media-stream`; the server's call record must show the
//!   caller's turns, agent audio heard (from the page's mark echoes) and a barge-in, and the
//!   page must have received `clear`. Then the dashboard's list and call pages, checked as
//!   HTML. The JavaScript μ-law codec is checked code for code against hark-codecs. Screenshots
//!   are written under `target/tmp/console/` (paths printed).
//!
//! Without `chromedriver` and `chromium` the browser test fails, unless
//! `HARK_SKIP_BROWSER_TESTS=1` (then it says so loudly and passes). `.ci/run` installs both.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

const API_KEY: &str = "console-test-api-key";
const AUTH_TOKEN: &str = "console-test-auth-token";
const TEST_ACCOUNT: &str = "AC00000000000000000000000000000001";
const TEST_KEY_SID: &str = "SK00000000000000000000000000000002";
const TEST_APP: &str = "AP00000000000000000000000000000003";

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

/// A fresh directory under `target/tmp` (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hark-console-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `hark serve` and its console link.
struct Hark {
    child: Child,
    base: String,
    link: String,
}

impl Hark {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Hark {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hark"));
        cmd.arg("serve")
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HARK_ADDR", "127.0.0.1:0")
            .env(
                "HARK_DATABASE_URL",
                format!("sqlite://{}", dir.join("hark.db").display()),
            )
            .env("HARK_AGENT", "echo")
            .env("HARK_API_KEY", API_KEY)
            .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
            .env("HARK_LOG_FORMAT", "json")
            .env("HARK_WORKERS", "2")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("hark starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lock").push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let link = loop {
            let found = lines.lock().expect("lock").iter().find_map(|l| {
                l.split_whitespace()
                    .find(|w| w.starts_with("http://") && w.contains("/console?token="))
                    .map(str::to_owned)
            });
            if let Some(l) = found {
                break l;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("hark exited before printing its console link: {status}");
            }
            assert!(Instant::now() < deadline, "hark printed no console link");
            std::thread::sleep(Duration::from_millis(20));
        };
        let base = link
            .split("/console?")
            .next()
            .expect("link has a base")
            .to_owned();
        Hark { child, base, link }
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }
}

impl Drop for Hark {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Resp {
    status: u16,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let client: HttpClient<HttpConnector, Full<Bytes>> =
        HttpClient::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut req = axum::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = client.request(req).await.expect("http request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The `name=value` of the console cookie a response sets.
fn cookie_of(r: &Resp) -> String {
    let c = r.header("set-cookie");
    assert!(c.contains("HttpOnly"), "{c}");
    assert!(c.contains("SameSite=Strict"), "{c}");
    c.split(';').next().expect("cookie").to_owned()
}

fn assert_secure_headers(r: &Resp, what: &str) {
    let csp = r.header("content-security-policy");
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "media-src 'self' blob:",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(part), "{what}: CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("unsafe"), "{what}: CSP {csp:?}");
    assert_eq!(r.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(r.header("referrer-policy"), "no-referrer", "{what}");
}

/// No inline script: every `<script` has a `src`, and no `on…=` handler attributes.
fn assert_no_inline_script(html: &str, what: &str) {
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..html[i..].find('>').map_or(html.len(), |j| i + j)];
        assert!(tag.contains("src="), "{what}: inline script {tag}");
    }
    assert!(!html.contains(" onclick="), "{what}: inline handler");
}

async fn ticket(h: &Hark, cookie: &str) -> String {
    let r = http(
        "POST",
        &format!("{}/console/ticket", h.base),
        &[("cookie", cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("ticket JSON");
    v["ticket"].as_str().expect("ticket").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_access_is_guarded() {
    let dir = TempDir::new("access");
    let h = Hark::start(&dir.0, &[]);
    // Closed without a session: pages redirect to the sign-in page, the API refuses.
    for page in [
        "/phone",
        "/dashboard",
        "/dashboard/calls/CA1",
        "/console/calls/CA1/recording.wav",
    ] {
        let r = http("GET", &format!("{}{page}", h.base), &[], "").await;
        assert_eq!(r.status, 303, "{page}");
        assert_eq!(r.header("location"), "/console", "{page}");
        assert_secure_headers(&r, page);
    }
    let r = http("POST", &format!("{}/console/ticket", h.base), &[], "").await;
    assert_eq!(r.status, 401);
    let r = http("GET", &format!("{}/console/calls/CA1", h.base), &[], "").await;
    assert_eq!(r.status, 401);
    let r = http("GET", &format!("{}/console/config", h.base), &[], "").await;
    assert_eq!(r.status, 401);
    let r = http("POST", &format!("{}/console/voice-token", h.base), &[], "").await;
    assert_eq!(r.status, 401);
    let r = http("GET", &format!("{}/console?token=00", h.base), &[], "").await;
    assert_eq!(r.status, 403);
    assert_secure_headers(&r, "bad link");
    // The one-time link: a session cookie and the phone, once.
    let r = http("GET", &h.link, &[], "").await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), "/phone");
    let cookie = cookie_of(&r);
    let again = http("GET", &h.link, &[], "").await;
    assert_eq!(again.status, 403, "the link is single-use");
    assert!(again.header("set-cookie").is_empty());
    for page in ["/phone", "/dashboard"] {
        let r = http(
            "GET",
            &format!("{}{page}", h.base),
            &[("cookie", &cookie)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{page}: {}", r.body);
        assert!(r.header("content-type").starts_with("text/html"));
        assert_secure_headers(&r, page);
        assert_no_inline_script(&r.body, page);
    }
    for (asset, ct) in [
        ("phone.js", "text/javascript"),
        ("worklet.js", "text/javascript"),
        ("g711.js", "text/javascript"),
        ("console.css", "text/css"),
    ] {
        let r = http(
            "GET",
            &format!("{}/console/assets/{asset}", h.base),
            &[],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{asset}");
        assert!(r.header("content-type").starts_with(ct), "{asset}");
        assert_secure_headers(&r, asset);
    }
    // No TwiML App or API key credentials here: no Voice SDK mode, no token.
    let r = http(
        "GET",
        &format!("{}/console/config", h.base),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let cfg: Value = serde_json::from_str(&r.body).expect("config JSON");
    assert_eq!(cfg["voice_sdk"], false, "{cfg}");
    let r = http(
        "POST",
        &format!("{}/console/voice-token", h.base),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    // The login form: a wrong key is refused, HARK_API_KEY opens a session.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = http(
        "POST",
        &format!("{}/console/login", h.base),
        &form,
        "key=wrong",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_empty());
    let r = http(
        "POST",
        &format!("{}/console/login", h.base),
        &form,
        &format!("key={API_KEY}"),
    )
    .await;
    assert_eq!(r.status, 303);
    let key_cookie = cookie_of(&r);
    assert_ne!(key_cookie, cookie);
    // Media socket: unsigned is refused (TWILIO_AUTH_TOKEN is set), a ticket is accepted
    // once, a used or made-up ticket is refused.
    let ws = format!("ws://{}/media-stream", h.addr());
    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    };
    assert_eq!(refused(tokio_tungstenite::connect_async(&ws).await), 403);
    let t = ticket(&h, &key_cookie).await;
    let with = format!("{ws}?console_ticket={t}");
    let (mut sock, _) = tokio_tungstenite::connect_async(&with)
        .await
        .expect("a ticket opens the media socket");
    let _ = sock.close(None).await;
    assert_eq!(refused(tokio_tungstenite::connect_async(&with).await), 403);
    let made_up = format!("{ws}?console_ticket={}", "ab".repeat(32));
    assert_eq!(
        refused(tokio_tungstenite::connect_async(&made_up).await),
        403
    );
    // Signing out ends the session.
    let r = http(
        "POST",
        &format!("{}/console/logout", h.base),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 303);
    let r = http(
        "GET",
        &format!("{}/phone", h.base),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 303);
}

/// `chromedriver` and the browser, or `None` when missing.
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |env: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(env) {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.is_file())
    };
    Some((
        find("HARK_CHROMEDRIVER", &["chromedriver"])?,
        find(
            "HARK_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        )?,
    ))
}

/// A running chromedriver on a free loopback port.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(path: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let client: HttpClient<HttpConnector, Full<Bytes>> =
                HttpClient::builder(hyper_util::rt::TokioExecutor::new()).build_http();
            let ready = client
                .get(format!("{url}/status").parse().expect("uri"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The caller's audio for Chromium's fake microphone: the multi-turn session (μ-law, committed)
/// as 16-bit PCM WAV, which `--use-file-for-fake-audio-capture` reads (it loops the file).
fn fake_mic_wav(dir: &Path) -> PathBuf {
    let codes = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).expect("fixture");
    let mut pcm = vec![0i16; codes.len()];
    hark_codecs::mulaw::decode(&codes, &mut pcm);
    let path = dir.join("multi-turn-8k-s16.wav");
    hark_codecs::wav::write_pcm16(&path, hark_codecs::SampleRate::HZ_8000, &pcm).expect("wav");
    path
}

fn screenshots_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

async fn screenshot(c: &fantoccini::Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = screenshots_dir().join(name);
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
    path
}

async fn stats(c: &fantoccini::Client) -> Value {
    c.execute("return window.harkPhone.stats;", vec![])
        .await
        .expect("page stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_phone_calls_the_echo_agent() {
    let Some((driver_path, chromium)) = browser_tools() else {
        if std::env::var("HARK_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! SKIPPED: the browser console test (HARK_SKIP_BROWSER_TESTS=1);      !!\n\
                 !! chromedriver or chromium is not installed. Nothing was checked.     !!\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return;
        }
        panic!(
            "chromedriver and chromium are needed for the browser console test: \
             `apt-get install -y chromium chromium-driver` (or set HARK_CHROMEDRIVER and \
             HARK_CHROMIUM; HARK_SKIP_BROWSER_TESTS=1 skips this test, loudly)"
        );
    };
    let began = Instant::now();
    let dir = TempDir::new("browser");
    let wav = fake_mic_wav(&dir.0);
    // Call audio recorded by hark (when this build has it), for the dashboard's player.
    let rec_dir = dir.0.join("recordings");
    let rec_dir_s = rec_dir.display().to_string();
    let h = Hark::start(
        &dir.0,
        &[
            ("HARK_RECORD", "1"),
            ("HARK_RECORD_DIR", rec_dir_s.as_str()),
            // The Voice SDK mode (nothing dials Twilio here: the SDK is loaded, not used).
            ("TWILIO_ACCOUNT_SID", TEST_ACCOUNT),
            ("TWILIO_API_KEY", TEST_KEY_SID),
            ("TWILIO_API_SECRET", "console-test-api-secret"),
            ("TWILIO_TWIML_APP_SID", TEST_APP),
        ],
    );
    let driver = Driver::start(&driver_path).await;
    let profile = dir.0.join("chromium-profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1400",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                format!("--use-file-for-fake-audio-capture={}", wav.display()),
                "--autoplay-policy=no-user-gesture-required",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let c = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium");

    // The one-time link signs in and lands on the phone.
    c.goto(&h.link).await.expect("open the console link");
    let url = c.current_url().await.expect("url");
    assert_eq!(url.path(), "/phone", "the link redirects to the phone");

    // The page's μ-law codec is hark's, code for code.
    let codec = c
        .execute(
            "return import('/console/assets/g711.js').then((m) => { \
               const enc = []; for (let s = -32768; s < 32768; s++) enc.push(m.encodeSample(s)); \
               const dec = []; for (let c = 0; c < 256; c++) dec.push(m.decodeSample(c)); \
               return {enc, dec}; });",
            vec![],
        )
        .await
        .expect("the page's codec");
    let enc = codec["enc"].as_array().expect("enc");
    assert_eq!(enc.len(), 65536);
    for (i, v) in enc.iter().enumerate() {
        let s = (i as i32 - 32768) as i16;
        assert_eq!(
            v.as_u64(),
            Some(u64::from(hark_codecs::mulaw::encode_sample(s))),
            "encode {s}"
        );
    }
    for (code, v) in codec["dec"].as_array().expect("dec").iter().enumerate() {
        assert_eq!(
            v.as_i64(),
            Some(i64::from(hark_codecs::mulaw::decode_sample(code as u8))),
            "decode {code}"
        );
    }

    // The Voice SDK mode: the vendored SDK loads under the page's CSP, the console's token
    // carries the TwiML App, and the phone's CSP admits Twilio's endpoints (only here).
    let sdk_began = Instant::now();
    let twilio = loop {
        let t = c
            .execute("return window.harkPhone.twilio || null;", vec![])
            .await
            .expect("twilio mode");
        if t["state"] == "ready" {
            break t;
        }
        assert!(
            sdk_began.elapsed() < Duration::from_secs(10),
            "the Voice SDK mode did not get ready: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(twilio["loaded"], true, "{twilio}");
    let sdk = c
        .execute(
            "return Promise.all([ \
               fetch('/console/voice-token', {method: 'POST'}).then((r) => r.json()), \
               fetch('/phone').then((r) => r.headers.get('content-security-policy'))]) \
             .then(([t, csp]) => ({token: t.token, identity: t.identity, csp, \
               visible: !document.getElementById('twilio-mode').hidden}));",
            vec![],
        )
        .await
        .expect("the console's voice token");
    assert_eq!(sdk["identity"], "console", "{sdk}");
    assert_eq!(sdk["visible"], true, "{sdk}");
    assert!(
        sdk["csp"]
            .as_str()
            .is_some_and(|c| c.contains("wss://*.twilio.com")),
        "{sdk}"
    );
    let jwt = sdk["token"].as_str().expect("a JWT");
    let claims: Value = {
        use base64::Engine as _;
        let part = jwt.split('.').nth(1).expect("JWT payload");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("claims")
    };
    assert_eq!(claims["sub"], TEST_ACCOUNT, "{claims}");
    assert_eq!(claims["iss"], TEST_KEY_SID, "{claims}");
    assert_eq!(claims["grants"]["identity"], "console", "{claims}");
    assert_eq!(
        claims["grants"]["voice"]["outgoing"]["application_sid"], TEST_APP,
        "{claims}"
    );

    // Call: the fake microphone plays the four-turn session.
    c.find(Locator::Id("call"))
        .await
        .expect("call button")
        .click()
        .await
        .expect("click call");
    let call_began = Instant::now();
    let call_sid = loop {
        let s = stats(&c).await;
        if s["state"] == "in-call" {
            break s["callSid"].as_str().expect("call SID").to_owned();
        }
        assert!(
            s["state"] != "idle" || call_began.elapsed() < Duration::from_secs(2),
            "the call did not start: {s}"
        );
        assert!(
            call_began.elapsed() < Duration::from_secs(15),
            "no call: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let api = |sid: String| {
        let base = h.base.clone();
        async move {
            let r = http(
                "GET",
                &format!("{base}/calls/{sid}"),
                &[("authorization", &format!("Bearer {API_KEY}"))],
                "",
            )
            .await;
            (r.status == 200).then(|| serde_json::from_str::<Value>(&r.body).expect("record"))
        }
    };
    // Until the record has three answered turns and a barge-in (one loop of the file is 27.6 s).
    let deadline = Instant::now() + Duration::from_secs(75);
    let mut record = Value::Null;
    loop {
        if let Some(r) = api(call_sid.clone()).await {
            let turns = r["turns"].as_array().cloned().unwrap_or_default();
            let answered = turns
                .iter()
                .filter(|t| t["heard_ms"].as_i64().unwrap_or(0) > 0)
                .count();
            let barged = turns.iter().any(|t| t["interrupted"] == true);
            record = r;
            if answered >= 3 && barged {
                break;
            }
        }
        let s = stats(&c).await;
        assert_eq!(s["state"], "in-call", "the call ended early: {s}");
        assert!(
            Instant::now() < deadline,
            "no three heard answers and a barge-in within 75 s: page {s}, record {record}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A keypad press goes out as Twilio's `dtmf` (the record's `malformed` stays 0 below).
    c.find(Locator::Css("#keypad [data-digit='5']"))
        .await
        .expect("keypad 5")
        .click()
        .await
        .expect("press 5");
    // Let the page's poll show the turns, then the picture.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let phone_png = screenshot(&c, "phone.png").await;
    let page = stats(&c).await;
    eprintln!("page counters: {page}");
    c.find(Locator::Id("hangup"))
        .await
        .expect("hang-up button")
        .click()
        .await
        .expect("hang up");
    let hung = Instant::now();
    while stats(&c).await["state"] != "ended" {
        assert!(hung.elapsed() < Duration::from_secs(5), "no hang-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call_secs = call_began.elapsed().as_secs_f64();

    // The page: frames sent, agent audio received and played, marks echoed, clear honoured.
    let n = |k: &str| page[k].as_f64().unwrap_or(0.0);
    assert!(n("framesSent") > 500.0, "{page}");
    assert!(n("mediaMs") > 2000.0, "{page}");
    assert!(n("playedMs") > 1000.0, "{page}");
    assert!(n("marksIn") >= 10.0 && n("marksEchoed") >= 10.0, "{page}");
    assert!(n("marksEchoed") <= n("marksIn"), "{page}");
    assert!(n("clears") >= 1.0, "a barge-in sent clear: {page}");
    assert!(
        page["errors"].as_array().is_some_and(Vec::is_empty),
        "{page}"
    );
    assert_eq!(page["dtmf"], "5", "{page}");
    // Everything received was played or cut by `clear` (nothing left unplayed).
    let unplayed = n("mediaMs") - n("playedMs") - n("clearedMs");
    assert!(unplayed.abs() < 100.0, "{page}");

    // The server's record after the stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let r = api(call_sid.clone()).await.expect("the call's record");
        if r["summary"]["ended"].is_string() {
            break r;
        }
        assert!(Instant::now() < deadline, "no stream summary: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let turns = record["turns"].as_array().expect("turns");
    assert!(turns.len() >= 3, "{record}");
    let heard: Vec<&Value> = turns
        .iter()
        .filter(|t| t["heard_ms"].as_i64().unwrap_or(0) > 0)
        .collect();
    assert!(
        heard.len() >= 3,
        "agent audio heard (mark echoes): {record}"
    );
    for t in &heard {
        // Echoed once played: the caller hears the answer no sooner than hark sent it.
        let l = t["heard_latency_ms"]
            .as_i64()
            .expect("heard latency from the first echo");
        let sent = t["latency_ms"].as_i64().expect("latency");
        // (A page echoing marks on arrival would make it ~100 ms, one mark's audio, earlier.)
        assert!(l + 40 >= sent && l < sent + 1000, "{t}");
    }
    assert_eq!(
        record["summary"]["malformed"], 0,
        "every message parsed: {record}"
    );
    assert!(turns.iter().any(|t| t["interrupted"] == true), "{record}");
    assert!(
        record["summary"]["barge_ins"].as_u64().unwrap_or(0) >= 1,
        "{record}"
    );
    // The page's `stop`: the socket closes after it (`closed: Stopped`).
    let ended = record["summary"]["ended"].as_str().unwrap_or("");
    assert!(ended.contains("Stopped"), "{record}");
    assert_eq!(record["stream_parameters"]["From"], "browser", "{record}");

    // The dashboard: the call listed, its page with turns, chart and barge-in.
    c.goto(&format!("{}/dashboard", h.base))
        .await
        .expect("dashboard");
    let list = c.source().await.expect("dashboard HTML");
    assert!(
        list.contains(&format!("/dashboard/calls/{call_sid}")),
        "{list}"
    );
    assert!(list.contains(ended), "outcome shown");
    let list_png = screenshot(&c, "dashboard.png").await;
    c.goto(&format!("{}/dashboard/calls/{call_sid}", h.base))
        .await
        .expect("call page");
    let detail = c.source().await.expect("call HTML");
    let rows = c
        .find_all(Locator::Css("table.turns tbody tr"))
        .await
        .expect("turn rows");
    assert_eq!(rows.len(), turns.len(), "one row per recorded turn");
    let barge_rows = c
        .find_all(Locator::Css("table.turns tr.barge-in"))
        .await
        .expect("barge-in rows");
    assert!(!barge_rows.is_empty(), "barge-in shown");
    let bars = c
        .find_all(Locator::Css("svg.chart.latency rect.seg.endpointing"))
        .await
        .expect("chart bars");
    let answered = turns.iter().filter(|t| t["latency_ms"].is_i64()).count();
    assert_eq!(bars.len(), answered, "one latency bar per answered turn");
    assert!(detail.contains(&call_sid));
    if record["audio"]["file"].is_string() {
        // hark recorded the call: the page plays it, fetched with the session cookie.
        let player = c
            .find(Locator::Css("audio.recording"))
            .await
            .expect("an audio player for the recorded call");
        let src = player.attr("src").await.expect("src").expect("src set");
        assert_eq!(src, format!("/console/calls/{call_sid}/recording.wav"));
        let head = c
            .execute(
                "return fetch(arguments[0]).then((r) => r.arrayBuffer()).then((b) => \
                 [b.byteLength, String.fromCharCode(...new Uint8Array(b.slice(0, 4)))]);",
                vec![json!(src)],
            )
            .await
            .expect("fetch the recording");
        assert_eq!(head[1], "RIFF", "{head}");
        assert!(head[0].as_u64().unwrap_or(0) > 8000 * 2 * 2 * 10, "{head}");
    } else {
        eprintln!(
            "note: this build recorded no call audio (no `audio` in the record); the player was not checked"
        );
    }
    let detail_png = screenshot(&c, "dashboard-call.png").await;
    c.close().await.expect("close the browser");
    eprintln!(
        "browser test: {:.1} s in all, the call {call_secs:.1} s; screenshots {}, {}, {}",
        began.elapsed().as_secs_f64(),
        phone_png.display(),
        list_png.display(),
        detail_png.display()
    );
}
