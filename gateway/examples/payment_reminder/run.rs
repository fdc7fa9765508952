//! The whole walkthrough in one function, [`run`]: the three stand-ins, hark between them,
//! one scheduled call, and what each side saw.

use std::sync::Arc;
use std::time::Duration;

use hark_gateway::Hark;
use hark_gateway::config::{Config, Values};
use hark_gateway::doubles::openai::Endpoint;
use hark_gateway::simulator::{Report, Speech, TurnSource, UserSpeech};
use serde_json::{Value, json};

use crate::llm;
use crate::operator::{self, Received};
use crate::twilio::{self, Callee};

/// hark's public base URL: what Twilio is told to call back (an ngrok URL in real life).
pub const PUBLIC_URL: &str = "https://hark.example.test";
/// The Twilio account (a made-up SID: the stand-in only checks it is the one in the path).
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000042";
/// Its Auth Token: Twilio signs the webhook and the Media Stream with it, hark checks.
pub const AUTH_TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// The key of hark's API (`Authorization: Bearer …` on `POST /calls`).
pub const API_KEY: &str = "example-scheduler-key-0123456789";
/// The secret hark signs operator requests with (`X-Hark-Signature`).
pub const OPERATOR_SECRET: &str = "whsec_payment_reminder_0123456789";
/// The payer's phone.
pub const PAYER_PHONE: &str = "+14155550142";
/// The longest the walkthrough may take before it gives up, s.
pub const DEADLINE_S: u64 = 60;

/// `hark.toml` for this line. `{…}` are filled in with the stand-ins' addresses.
const HARK_TOML: &str = r#"
[server]
addr = "127.0.0.1:0"
public_url = "{public_url}"
workers = 1
stream_params = "payerId"        # <Parameter>s passed from /voice to the stream

[twilio]
account_sid = "{account_sid}"
auth_token = "{auth_token}"
phone_number = "+14155550100"    # caller ID of POST /calls
api_base = "{twilio}"             # the Twilio stand-in, instead of https://api.twilio.com

[api]
keys = "{api_key}"
calls_per_second = 10

[records]
database_url = "sqlite://{database}"

[operator]
secret = "{secret}"
context_url = "{ops}/context"
events_url = "{ops}/events"

[agent]
kind = "cascade"

[openai]
base_url = "{openai}"             # the OpenAI-compatible double
api_key = "sk-double"

[agent.cascade]
idle_reprompt_ms = "off"

[[tools]]
name = "lookup_balance"
description = "The payer's open balance and due date."
url = "{ops}/tools/balance"
timeout_ms = 3000
parameters = { type = "object", required = ["payerId"], properties = { payerId = { type = "string" } } }

[[tools]]
name = "record_promise"
description = "Records the payer's promise to pay an amount on a date."
url = "{ops}/tools/promise"
timeout_ms = 3000
end_call_after = true
parameters = { type = "object", required = ["amount", "date"], properties = { amount = { type = "number" }, date = { type = "string" } } }
"#;

/// What happened, as each side saw it.
#[derive(Debug)]
pub struct Summary {
    /// The call's SID, from `POST /calls`.
    pub call_sid: String,
    /// Every request the operator's backend received, in order.
    pub operator: Vec<Received>,
    /// The `<Parameter>`s the Twilio stand-in found in hark's TwiML.
    pub stream_parameters: Vec<(String, String)>,
    /// Everything the agent said (the text of each speech request).
    pub spoken: Vec<String>,
    /// The system prompt of the model's first request.
    pub system_prompt: String,
    /// What the simulated callee measured.
    pub caller: Report,
}

impl Summary {
    /// The bodies of the events received, in order.
    pub fn events(&self) -> Vec<&Value> {
        self.operator
            .iter()
            .filter(|r| r.path == "/events")
            .map(|r| &r.body)
            .collect()
    }
}

/// Runs the walkthrough: starts the operator's backend, the model double, the Twilio
/// stand-in and hark (all on 127.0.0.1, port 0), schedules the call with `POST /calls`, and
/// waits for `call.ended` at the backend.
///
/// # Errors
/// What did not happen, within [`DEADLINE_S`] s in all.
pub async fn run() -> Result<Summary, String> {
    tokio::time::timeout(Duration::from_secs(DEADLINE_S), walkthrough())
        .await
        .map_err(|_| format!("no call.ended within {DEADLINE_S} s"))?
}

/// [`run`] without the deadline.
async fn walkthrough() -> Result<Summary, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ops, backend) = operator::start(OPERATOR_SECRET)
        .await
        .map_err(|e| format!("operator: {e}"))?;
    let model = llm::start().await;
    let (twilio_url, twilio) = twilio::start(ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, callee()?)
        .await
        .map_err(|e| format!("twilio stand-in: {e}"))?;
    let database = TempDb::new();

    // hark, configured from a hark.toml text as `hark serve` would read it.
    let text = HARK_TOML
        .replace("{public_url}", PUBLIC_URL)
        .replace("{account_sid}", ACCOUNT_SID)
        .replace("{auth_token}", AUTH_TOKEN)
        .replace("{twilio}", &twilio_url)
        .replace("{api_key}", API_KEY)
        .replace("{database}", &database.path.display().to_string())
        .replace("{secret}", OPERATOR_SECRET)
        .replace("{ops}", &ops)
        .replace("{openai}", &model.base_url());
    let (values, unknown) =
        Values::from_toml("hark.toml", "hark.toml", &text).map_err(|e| e.to_string())?;
    if !unknown.is_empty() {
        return Err(format!("hark.toml keys hark does not read: {unknown:?}"));
    }
    let config = Config::from_values(&values).map_err(|e| e.to_string())?;
    let bound = Hark::from_config(config)
        .bind()
        .await
        .map_err(|e| e.to_string())?;
    let hark = bound.local_addr();
    let _ = twilio.hark_addr.set(hark);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    println!("hark: listening on {hark} (public URL {PUBLIC_URL})");

    // The scheduler: one request places the call.
    let call_sid = schedule(&format!("http://{hark}")).await?;
    println!("scheduler: POST /calls → {call_sid}");

    // Wait for the backend's `call.ended`, then for the callee to hang up.
    backend.ended.notified().await;
    if twilio.report.lock().expect("not poisoned").is_none() {
        twilio.done.notified().await;
    }
    let caller = twilio
        .report
        .lock()
        .expect("not poisoned")
        .take()
        .unwrap_or_else(|| Err("no call".into()))?;

    let _ = stop.send(());
    let _ = served.await;
    let spoken = model
        .exchanges_with(Endpoint::Speech)
        .iter()
        .map(|e| e.request["input"].as_str().unwrap_or("").to_string())
        .collect();
    let system_prompt = model
        .exchanges_with(Endpoint::ChatCompletions)
        .first()
        .and_then(|e| {
            e.request["messages"][0]["content"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    model.stop().await;
    let stream_parameters = twilio
        .stream_parameters
        .lock()
        .expect("not poisoned")
        .clone();
    Ok(Summary {
        call_sid,
        operator: backend.received(),
        stream_parameters,
        spoken,
        system_prompt,
        caller,
    })
}

/// `POST /calls` as a scheduler sends it; the call's SID.
async fn schedule(hark: &str) -> Result<String, String> {
    let body = json!({"to": PAYER_PHONE, "parameters": {"payerId": operator::PAYER_ID}});
    let answer = reqwest::Client::new()
        .post(format!("{hark}/calls"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("POST /calls: {e}"))?;
    let status = answer.status();
    let text = answer
        .text()
        .await
        .map_err(|e| format!("POST /calls: {e}"))?;
    if status.as_u16() != 201 {
        return Err(format!("POST /calls answered {status}: {text}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("POST /calls: {e}: {text}"))?;
    v["call_sid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("POST /calls: no call_sid in {text}"))
}

/// The callee: 6.5 s of line noise (the greeting plays), turn 1 (4.1 s of speech), 7.4 s of
/// noise (the balance is looked up and said), turn 2 (2.1 s), then noise until hark hangs up.
/// The speech is cut from `fixtures/audio/multi-turn-8k.ulaw`; what the model "hears" is
/// [`llm::CALLER_SAYS`].
fn callee() -> Result<Callee, String> {
    let read = |name: &str| {
        let path = format!("{}/../fixtures/audio/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).map_err(|e| format!("{path}: {e}"))
    };
    let speech = read("multi-turn-8k.ulaw")?;
    let noise = read("line-noise-8k.ulaw")?;
    let ms = |t: usize| t * 8;
    let mut audio = Vec::new();
    let mut spans = Vec::new();
    let pad = |audio: &mut Vec<u8>, len_ms: usize| {
        audio.extend(noise.iter().cycle().take(ms(len_ms)));
    };
    for (gap_ms, (from, to)) in [(6_500, (1_000, 5_100)), (7_400, (20_400, 22_520))] {
        pad(&mut audio, gap_ms);
        let start_ms = (audio.len() / 8) as u64;
        audio.extend_from_slice(&speech[ms(from)..ms(to)]);
        spans.push(Speech {
            start_ms,
            end_ms: (audio.len() / 8) as u64,
            turn: true,
        });
    }
    Ok(Callee {
        audio: Arc::from(audio),
        speech: UserSpeech {
            source: TurnSource::Annotation,
            spans: Arc::from(spans),
        },
    })
}

/// A SQLite file for this run's records, removed (with its WAL files) when dropped.
struct TempDb {
    path: std::path::PathBuf,
}

impl TempDb {
    fn new() -> TempDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "hark-payment-reminder-{}-{nanos}.db",
            std::process::id()
        ));
        TempDb { path }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}
