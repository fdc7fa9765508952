//! An agent of one's own in `hark serve`: the `dtmf_menu` example's [`menu::DtmfMenu`] served
//! through [`Hark`] (in process, 127.0.0.1 port 0) with the echo agent configured, called by a
//! small Twilio-speaking phone that sends `dtmf` messages and decides when to echo marks.
//!
//! Marks held back keep the prompt "playing" as far as hark knows, so a key pressed then must
//! cut it with `clear`, whatever the machine's speed.

#[path = "../examples/dtmf_menu/menu.rs"]
mod menu;

mod in_process;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hark_engine::twilio::Start;
use hark_engine::twilio::{Outbound, inbound, parse_outbound};
use hark_gateway::Hark;
use hark_gateway::api::ApiState;
use hark_gateway::api::store::CallDetail;
use hark_gateway::config::Config;
use hark_gateway::serve::{AgentContext, BuildError};
use hark_gateway::server::{AppState, STREAM_PATH};
use in_process::{fixture, memory_api};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where `0` transfers to.
const OPERATOR: &str = "+14155550100";

/// How long any one step may take before the test fails (a loaded machine is slow, not wrong).
const STEP: Duration = Duration::from_secs(30);

/// μ-law bytes of the prompt's chime: 520 ms at 8 bytes per ms.
const CHIME_BYTES: usize = 4_160;

/// A running server and its gateway API.
struct Running {
    url: String,
    state: Arc<AppState>,
    api: Arc<ApiState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), hark_gateway::Error>>,
}

impl Running {
    /// Serves the default configuration (echo agent, one worker, unsigned streams accepted)
    /// with the gateway API on an in-memory database and `agents` as the factory.
    async fn start(
        agents: impl Fn(&AgentContext<'_>) -> Result<Box<dyn hark_engine::Agent>, BuildError>
        + Send
        + Sync
        + 'static,
    ) -> Running {
        let mut config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            workers: 1,
            ..Config::default()
        };
        config.dev_insecure.no_signatures = true;
        let api = memory_api().await;
        let bound = Hark::from_config(config)
            .api(api.clone())
            .agents(agents)
            .bind()
            .await
            .expect("binds");
        let url = format!("ws://{}{STREAM_PATH}", bound.local_addr());
        let state = bound.state().clone();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async {
            let _ = rx.await;
        }));
        Running {
            url,
            state,
            api,
            stop,
            task,
        }
    }

    /// The record of `call_sid`, once every call task has ended and the records are written.
    async fn record(&self, call_sid: &str) -> CallDetail {
        assert_eq!(self.state.wait_idle(STEP).await, 0, "calls still running");
        assert!(self.api.flush().await, "records could not be written");
        self.api
            .store()
            .call(call_sid)
            .await
            .unwrap()
            .expect("call recorded")
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Twilio's side of one call: sends a 20 ms `media` frame per 20 ms (queued caller audio, else
/// silence), reads what hark sends with Twilio's strict rules, echoes marks unless told to
/// hold them (held marks are echoed at a `clear`, as Twilio does).
struct Phone {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    start: Start,
    seq: u64,
    chunk: u64,
    /// Caller audio still to send, μ-law.
    to_send: VecDeque<u8>,
    /// Echo marks as they come (else hold them).
    echo_marks: bool,
    held: Vec<String>,
    /// μ-law bytes of agent audio received (8 per ms).
    media: usize,
    clears: usize,
    /// The socket ended (with the close code, when there was a close frame).
    closed: Option<Option<u16>>,
    tick: tokio::time::Interval,
    frame: String,
}

impl Phone {
    /// Connects and sends `connected` and `start`.
    async fn dial(url: &str) -> Phone {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade");
        let mut p = Phone {
            ws,
            start: hark_gateway::simulator::fresh_start(vec![]),
            seq: 0,
            chunk: 0,
            to_send: VecDeque::new(),
            echo_marks: true,
            held: vec![],
            media: 0,
            clears: 0,
            closed: None,
            tick: tokio::time::interval(Duration::from_millis(20)),
            frame: String::new(),
        };
        p.send(inbound::connected()).await;
        p.seq += 1;
        let start = inbound::start(p.seq, &p.start);
        p.send(start).await;
        p
    }

    async fn send(&mut self, text: String) {
        if self.closed.is_none() && self.ws.send(Message::text(text)).await.is_err() {
            self.closed = Some(None);
        }
    }

    /// Presses `digit`.
    async fn press(&mut self, digit: &str) {
        self.seq += 1;
        let msg = inbound::dtmf(self.seq, &self.start.stream_sid, digit);
        self.send(msg).await;
    }

    async fn echo(&mut self, name: &str) {
        self.seq += 1;
        let msg = inbound::mark(self.seq, &self.start.stream_sid, name);
        self.send(msg).await;
    }

    /// Runs the call until `done` holds (true), or the socket ends or [`STEP`] passes first
    /// (false).
    async fn until(&mut self, done: impl Fn(&Phone) -> bool) -> bool {
        let deadline = Instant::now() + STEP;
        while !done(self) {
            if self.closed.is_some() {
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
                Outbound::Media { stream_sid, mulaw } => {
                    assert_eq!(stream_sid, self.start.stream_sid);
                    self.media += mulaw.len();
                }
                Outbound::Mark { name, .. } if self.echo_marks => self.echo(&name).await,
                Outbound::Mark { name, .. } => self.held.push(name),
                Outbound::Clear { .. } => {
                    self.clears += 1;
                    for name in std::mem::take(&mut self.held) {
                        self.echo(&name).await;
                    }
                }
            },
            Some(Ok(Message::Close(f))) => self.closed = Some(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => self.closed = Some(None),
        }
    }

    async fn send_frame(&mut self) {
        let n = self.to_send.len().min(160);
        let mut bytes: Vec<u8> = self.to_send.drain(..n).collect();
        bytes.resize(160, 0xFF);
        self.seq += 1;
        self.chunk += 1;
        let mut frame = std::mem::take(&mut self.frame);
        inbound::media(
            self.seq,
            &self.start.stream_sid,
            self.chunk,
            (self.chunk - 1) * 20,
            &bytes,
            &mut frame,
        );
        self.send(frame.clone()).await;
        self.frame = frame;
    }
}

/// 3.4 s of the multi-turn session around one caller turn ("And so my fellow Americans",
/// 6800–8580 ms: 1.78 s of speech with quiet on both sides), μ-law.
fn caller_turn() -> Vec<u8> {
    let audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio[6_000 * 8..9_400 * 8].to_vec()
}

/// Starts a call and waits until the prompt has begun to play, its marks held back (so it has
/// not finished as far as hark knows).
async fn prompt_playing(server: &Running) -> Phone {
    let mut p = Phone::dial(&server.url).await;
    p.echo_marks = false;
    assert!(
        p.until(|p| p.media >= 800 && !p.held.is_empty()).await,
        "the prompt plays ({} bytes)",
        p.media
    );
    assert!(
        p.media <= CHIME_BYTES,
        "{} bytes of a 520 ms prompt",
        p.media
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cuts_the_prompt_and_hands_the_call_to_the_configured_agent() {
    let server = Running::start(menu::factory(None)).await;
    let mut p = prompt_playing(&server).await;
    let call_sid = p.start.call_sid.clone();

    p.press("1").await;
    assert!(p.until(|p| p.clears == 1).await, "the prompt was cut");
    p.echo_marks = true;

    // The caller talks: the echo agent (HARK_AGENT's default) plays it back: 1.78 s of speech
    // with its pre-roll, not the 520 ms prompt again.
    let before = p.media;
    p.to_send.extend(caller_turn());
    assert!(
        p.until(|p| p.media >= before + 1_500 * 8).await,
        "the echo agent answers ({} ms)",
        (p.media - before) / 8
    );
    // Keys are the echo agent's now, and it ignores them: `#` does not hang up, the next turn
    // is echoed too (one echo is at most the turn's 1.78 s and its pre-roll: 3.2 s needs two).
    p.press("#").await;
    p.to_send.extend(caller_turn());
    assert!(
        p.until(|p| p.media >= before + 3_200 * 8).await,
        "the call goes on ({} ms echoed, closed: {:?})",
        (p.media - before) / 8,
        p.closed
    );
    p.seq += 1;
    let stop = inbound::stop(p.seq, &p.start.stream_sid, &p.start.account_sid, &call_sid);
    p.send(stop).await;
    assert!(p.until(|p| p.closed.is_some()).await, "the stream ends");
    assert_eq!(p.clears, 1);

    let detail = server.record(&call_sid).await;
    let ended = detail.summary["ended"].as_str().unwrap_or_default();
    assert!(!ended.contains(menu::HANGUP_REASON), "{ended}");
    // Two caller turns, each answered by the echo agent and heard (voice-to-voice from the
    // marks).
    assert_eq!(detail.turns.len(), 2, "{:#?}", detail.turns);
    assert!(
        detail.turns.iter().all(|t| t.heard_latency_ms.is_some()),
        "{:#?}",
        detail.turns
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_cuts_the_prompt_and_hangs_up() {
    let server = Running::start(menu::factory(None)).await;
    let mut p = prompt_playing(&server).await;
    let call_sid = p.start.call_sid.clone();

    p.press("#").await;
    assert!(
        p.until(|p| p.closed.is_some()).await,
        "hark ends the stream"
    );
    assert_eq!(p.clears, 1, "the prompt was cut first");

    let detail = server.record(&call_sid).await;
    assert_eq!(
        detail.summary["ended"],
        format!("closed: Hangup({:?})", menu::HANGUP_REASON)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_transfers_and_a_failed_transfer_brings_the_prompt_back() {
    let server = Running::start(menu::factory(Some(OPERATOR.into()))).await;
    let mut p = prompt_playing(&server).await;
    let call_sid = p.start.call_sid.clone();

    // No Twilio credentials: the transfer fails and the call goes on with the menu.
    p.press("0").await;
    assert!(p.until(|p| p.clears == 1).await, "the prompt was cut");
    let before = p.media;
    assert!(
        p.until(|p| p.media >= before + CHIME_BYTES).await,
        "the prompt plays again ({} bytes)",
        p.media - before
    );
    p.press("#").await;
    assert!(
        p.until(|p| p.closed.is_some()).await,
        "hark ends the stream"
    );

    let detail = server.record(&call_sid).await;
    let ended = detail.summary["ended"].as_str().unwrap_or_default();
    assert!(
        ended.starts_with(&format!("closed: Hangup({:?})", menu::HANGUP_REASON)),
        "{ended}"
    );
    assert!(
        ended.contains(&format!("transfer to {OPERATOR} failed")),
        "{ended}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_error_refuses_the_call_before_any_audio() {
    let server =
        Running::start(|_cx: &AgentContext<'_>| Err(BuildError::from("no agent for this call")))
            .await;
    let mut p = Phone::dial(&server.url).await;
    assert!(p.until(|p| p.closed.is_some()).await, "the socket closes");
    assert_eq!(p.media, 0);
    assert_eq!(server.state.wait_idle(STEP).await, 0);
    server.stop().await;
}
