//! Twilio's asynchronous answering machine detection reaching a live call, over sockets: `hark
//! serve` in process (127.0.0.1, port 0) with the cascade agent on the OpenAI-compatible
//! double, a small Twilio-speaking phone on the media stream, and Twilio's signed
//! `POST /api/twilio/amd` sent over HTTP while the call runs.
//!
//! - `machine_end_beep`: the greeting is cut (`clear`), the voicemail message (its
//!   `{{name}}` filled from the stream's parameters) is synthesised and heard, then hark ends
//!   the stream; the record says why and who answered.
//! - `human`: nothing changes, the caller's turn is answered.
//! - a bad signature: 403, the call untouched; an unknown `CallSid`: 200, recorded only.

mod in_process;
mod twilio_double;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hark_engine::twilio::{Outbound, Start, inbound, parse_outbound};
use hark_gateway::agents::AgentSettings;
use hark_gateway::agents::cascade::Settings;
use hark_gateway::config::{AgentKind, Config};
use hark_gateway::doubles::openai::{self, Endpoint, Latency, OpenAiDouble, Reply, Script};
use hark_gateway::signature;
use in_process::{Server, fixture};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use twilio_double::harness::{ACCOUNT, AUTH_TOKEN, PUBLIC, base_env, state};

/// How long any one step may take before the test fails (a loaded machine is slow, not wrong).
const STEP: Duration = Duration::from_secs(30);
/// Long enough to be still playing when the beep comes (70 ms of audio per character).
const GREETING: &str = "Hello, this is Acme calling about your recent order with us, \
and I have a few quick questions for you today.";
const VOICEMAIL: &str = "Hi {{name}}, please call Acme back.";
const VOICEMAIL_FILLED: &str = "Hi Ann, please call Acme back.";
const ANSWER: &str = "Of course, let me check.";

/// The OpenAI double and hark serving the cascade agent on it, with the gateway API (signed
/// Twilio callbacks, `HARK_PUBLIC_URL` = [`PUBLIC`]); media streams unsigned.
async fn serve() -> (OpenAiDouble, Server) {
    let double = openai::start(Script {
        latency: Latency::REALISTIC,
        transcripts: vec!["Hi, who is this?".into()],
        default_reply: Reply::text(ANSWER),
        ..Script::default()
    })
    .await;
    let vars: Vec<(String, String)> = vec![
        ("OPENAI_BASE_URL".into(), double.base_url()),
        ("OPENAI_API_KEY".into(), "sk-double".into()),
        ("HARK_GREETING".into(), GREETING.into()),
        ("HARK_VOICEMAIL_TEXT".into(), VOICEMAIL.into()),
        ("HARK_FILLER_TEXT".into(), "off".into()),
    ];
    let settings =
        Settings::from_lookup(&mut |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
            .unwrap();
    let config = Config {
        workers: 1,
        agent: AgentKind::Cascade,
        agent_settings: AgentSettings::Cascade(settings),
        ..Config::default()
    };
    let api = state(base_env()).await;
    let server = Server::start(config, Some(api)).await;
    (double, server)
}

/// Twilio's side of one call: a 20 ms `media` frame per 20 ms (queued caller audio, else
/// silence), marks echoed, what hark sends read with Twilio's strict rules.
struct Phone {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    start: Start,
    seq: u64,
    chunk: u64,
    to_send: VecDeque<u8>,
    /// μ-law bytes of agent audio received (8 per ms), in all and since the last `clear`.
    media: usize,
    since_clear: usize,
    clears: usize,
    /// The socket ended.
    closed: bool,
    tick: tokio::time::Interval,
}

impl Phone {
    async fn dial(url: &str) -> Phone {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        let params = vec![("name".to_string(), "Ann".to_string())];
        let mut p = Phone {
            ws,
            start: hark_gateway::simulator::fresh_start(params),
            seq: 1,
            chunk: 0,
            to_send: VecDeque::new(),
            media: 0,
            since_clear: 0,
            clears: 0,
            closed: false,
            tick: tokio::time::interval(Duration::from_millis(20)),
        };
        p.send(inbound::connected()).await;
        let start = inbound::start(p.seq, &p.start);
        p.send(start).await;
        p
    }

    async fn send(&mut self, text: String) {
        if !self.closed && self.ws.send(Message::text(text)).await.is_err() {
            self.closed = true;
        }
    }

    /// Runs the call until `done` holds (true), or the socket ends or [`STEP`] passes first.
    async fn until(&mut self, done: impl Fn(&Phone) -> bool) -> bool {
        let deadline = Instant::now() + STEP;
        while !done(self) {
            if self.closed {
                return false;
            }
            tokio::select! {
                m = self.ws.next() => self.read(m).await,
                _ = self.tick.tick() => self.send_frame().await,
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
        true
    }

    async fn read(&mut self, m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        match m {
            Some(Ok(Message::Text(t))) => match parse_outbound(&t).expect("Twilio accepts it") {
                Outbound::Media { mulaw, .. } => {
                    self.media += mulaw.len();
                    self.since_clear += mulaw.len();
                }
                Outbound::Mark { name, .. } => {
                    self.seq += 1;
                    let msg = inbound::mark(self.seq, &self.start.stream_sid, &name);
                    self.send(msg).await;
                }
                Outbound::Clear { .. } => {
                    self.clears += 1;
                    self.since_clear = 0;
                }
            },
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => self.closed = true,
            Some(Ok(_)) => {}
        }
    }

    async fn send_frame(&mut self) {
        let n = self.to_send.len().min(160);
        let mut bytes: Vec<u8> = self.to_send.drain(..n).collect();
        bytes.resize(160, 0xFF);
        self.seq += 1;
        self.chunk += 1;
        let mut frame = String::new();
        let ts = (self.chunk - 1) * 20;
        inbound::media(
            self.seq,
            &self.start.stream_sid,
            self.chunk,
            ts,
            &bytes,
            &mut frame,
        );
        self.send(frame).await;
    }

    async fn stop(&mut self) {
        self.seq += 1;
        let s = &self.start;
        let msg = inbound::stop(self.seq, &s.stream_sid, &s.account_sid, &s.call_sid);
        self.send(msg).await;
    }
}

/// Twilio's AMD callback for `call_sid`, over HTTP to `server`, signed with `sig` (`None`:
/// correctly). Returns the status.
async fn post_amd(server: &Server, call_sid: &str, answered_by: &str, sig: Option<&str>) -> u16 {
    let form = [
        ("AccountSid", ACCOUNT),
        ("AnsweredBy", answered_by),
        ("CallSid", call_sid),
        ("MachineDetectionDuration", "4210"),
    ];
    let good = signature::compute(AUTH_TOKEN, &format!("{PUBLIC}/api/twilio/amd"), &form);
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form {
        body.append_pair(k, v);
    }
    reqwest::Client::new()
        .post(format!("http://{}/api/twilio/amd", server.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(signature::HEADER, sig.unwrap_or(&good))
        .body(body.finish())
        .send()
        .await
        .expect("the gateway answers")
        .status()
        .as_u16()
}

/// Waits until the call `call_sid` is live on the server (its stream has started).
async fn live(server: &Server) {
    let deadline = Instant::now() + STEP;
    while server.api().live_calls().is_empty() {
        assert!(Instant::now() < deadline, "the call never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_gets_the_voicemail_message_then_hark_hangs_up() {
    let (double, server) = serve().await;
    let mut p = Phone::dial(&server.url).await;
    let call_sid = p.start.call_sid.clone();
    live(&server).await;
    // The greeting is playing when the beep comes.
    assert!(p.until(|p| p.media >= 200 * 8).await, "the greeting plays");

    // A bad signature is refused and changes nothing.
    assert_eq!(
        post_amd(&server, &call_sid, "machine_end_beep", Some("AAAA")).await,
        403
    );
    assert!(p.until(|p| p.media >= 600 * 8).await);
    assert_eq!(p.clears, 0, "a refused callback reaches no call");

    assert_eq!(
        post_amd(&server, &call_sid, "machine_end_beep", None).await,
        200
    );
    // The greeting is cut, the message is heard, then hark ends the stream.
    assert!(p.until(|p| p.closed).await, "hark hangs up");
    assert_eq!(p.clears, 1, "the greeting was cut");
    let message_ms = p.since_clear / 8;
    let expected_ms = VOICEMAIL_FILLED.len() as u64 * 70;
    assert!(
        message_ms as u64 >= expected_ms * 9 / 10,
        "the whole message was heard: {message_ms} ms of {expected_ms}"
    );
    let said: Vec<String> = double
        .exchanges_with(Endpoint::Speech)
        .iter()
        .map(|x| x.request["input"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(said.iter().any(|s| s == VOICEMAIL_FILLED), "{said:?}");
    assert!(double.exchanges_with(Endpoint::ChatCompletions).is_empty());

    let detail = server.record(&call_sid, STEP).await;
    assert_eq!(detail.summary["ended"], "closed: Hangup(\"voicemail\")");
    assert_eq!(detail.call.answered_by.as_deref(), Some("machine_end_beep"));
    assert!(server.api().live_calls().is_empty(), "out once over");
    // Twilio's retry after the call is over: 200, recorded only.
    assert_eq!(
        post_amd(&server, &call_sid, "machine_end_beep", None).await,
        200
    );
    server.stop().await;
    double.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_goes_on_talking_with_the_agent() {
    let (double, server) = serve().await;
    let mut p = Phone::dial(&server.url).await;
    let call_sid = p.start.call_sid.clone();
    live(&server).await;
    assert!(p.until(|p| p.media >= 200 * 8).await, "the greeting plays");
    assert_eq!(post_amd(&server, &call_sid, "human", None).await, 200);
    // The greeting plays on, whole.
    let greeting_bytes = GREETING.len() * 70 * 8;
    assert!(
        p.until(|p| p.media >= greeting_bytes * 9 / 10).await,
        "the greeting played on ({} ms)",
        p.media / 8
    );
    // The caller speaks: the turn is answered.
    let audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    p.to_send.extend(&audio[6_000 * 8..9_400 * 8]);
    assert!(
        p.until(|_| !double.exchanges_with(Endpoint::ChatCompletions).is_empty())
            .await,
        "the caller's turn reached the model"
    );
    let before = p.media;
    assert!(
        p.until(|p| p.media >= before + 500 * 8).await,
        "the answer is heard"
    );
    assert_eq!(p.clears, 0);
    assert!(!p.closed);
    p.stop().await;
    assert!(p.until(|p| p.closed).await);

    let detail = server.record(&call_sid, STEP).await;
    assert_eq!(detail.summary["ended"], "closed: Stopped");
    assert_eq!(detail.call.answered_by.as_deref(), Some("human"));
    // Unknown calls are recorded only.
    assert_eq!(
        post_amd(&server, "CA00000000000000000000000000000000", "fax", None).await,
        200
    );
    server.stop().await;
    double.stop().await;
}
