//! `hark bench`: many simulated Twilio calls at real-time pacing against a hark server, ramped
//! in steps, each judged against a service level.
//!
//! ## A step
//! A step runs `N` call slots against the server (in this process by default, or `--url`).
//! Slot `i` starts at `ramp · i / N` (which also spreads the calls' 20 ms frame phases), then
//! plays caller sessions back to back — the bundled `fixtures/bench` sessions in turn, with fresh
//! SIDs — until `--duration-s` has passed; a call in progress always plays to its end, so every
//! call is measured whole. Each call is [`crate::simulator::run_call`] at speed 1 (real time):
//! a 20 ms `media` frame on an absolute schedule, a virtual phone ([`hark_engine::sim::Phone`])
//! that plays the agent's audio in real time, echoes marks, and honours `clear`.
//!
//! ## What a step reports
//! - **underruns**: gaps in agent audio at the phone inside an answer (the phone ran dry and
//!   more of the same answer arrived within 200 ms), plus answers split in two by a longer gap.
//! - **late frames**: caller frames the simulator handed to its socket more than 20 ms after they
//!   were due — the simulator (or the socket) fell behind real time, so the step's numbers are
//!   suspect. The largest lateness is reported too.
//! - **barge-in delay**: from the first voiced frame of an annotated interruption (its annotated
//!   start + 20 ms, when that frame was sent) to the `clear` at the phone; an annotated barge-in
//!   that got no `clear` counts as infinitely late.
//! - **voice-to-voice**: annotated end of a caller turn → first answer audio heard at the phone.
//! - **engine share** of it: voice-to-voice minus the endpointing wait minus the provider's
//!   latency, i.e. first answer heard − the moment the frame that completed `stop_ms` of silence
//!   was sent ([`sessions::endpoints`] finds that frame with the engine's own detectors) − the
//!   agent's provider latency (0 for echo; the double's STT + TTFT + TTS first byte for
//!   cascade). It includes the loopback hops (and for cascade the three HTTP exchanges with the
//!   double and the double's own work) and the simulator's timer granularity (tokio, 1 ms), so
//!   it is an upper bound on the engine's own time.
//! - **CPU**: time on a CPU of the server's threads and of the simulator's, per thread from
//!   `/proc` ([`measure`]), in % of one core, over the step's steady window (from the end of the
//!   ramp to `--duration-s`, when all `N` calls are up); per call by dividing by the calls
//!   active on average in that window; and as server µs per call per 20 ms frame. In process,
//!   the server's share of its HTTP runtime (accept, upgrade, and the I/O driver the call
//!   sockets stay registered with) is reported on its own too.
//! - **RSS**: the peak during the step minus the idle RSS before the first step, per call. In
//!   process this is the whole process (server and simulator); with `--url --server-pid` the
//!   server process alone.
//! - **engine time per inbound message**: the server's `hark_engine_message_seconds` histogram
//!   (one message in 50 is timed), its mean and the buckets holding p50 and p99.
//! - **errors**: anything the simulator reports (invalid messages, early closes, connect
//!   failures, …), `clear`s with the caller silent, and the server's `hark_ws_errors_total` and
//!   `hark_malformed_messages_total`.
//! - **others**: CPU used by other processes on the machine during the window: a step measured
//!   on a busy machine is skewed, and this says so.
//!
//! ## Agents
//! `echo` (default) answers every turn at once with the turn itself. `cascade` runs hark's
//! STT → LLM → TTS agent against the OpenAI-compatible double ([`crate::doubles::openai`]) on
//! its own runtime in this process (threads `hark-double`, counted as neither server nor
//! simulator), with fixed latencies (`--double-latency-ms`) and [`CASCADE_REPLY`] as every
//! answer; their sum is subtracted as the provider's share.
//!
//! ## Through the chaos proxy (`--chaos SEED`)
//! Every call's TCP connection goes through one [`crate::chaos::ChaosProxy`] in front of the
//! server: both directions cut at random offsets (1 byte to 1,000 bytes), each segment held
//! 0–20 ms, seeded per connection from `SEED` (issue 12 §1: what a proxy, a retransmit or a
//! TLS terminator does to the stream). The proxy runs on its own runtime (threads
//! `hark-chaos`); its CPU counts as `other`, neither server nor simulator. Its hold adds up to
//! 20 ms each way to voice-to-voice, the engine share and barge-in delays, so compare those
//! with a run without it; underruns and errors must stay 0.
//!
//! ## Signatures
//! The in-process server gets a fresh random `TWILIO_AUTH_TOKEN` and every call signs its
//! upgrade with it, as Twilio would. Against `--url`, give the server's token with
//! `--auth-token` (or `TWILIO_AUTH_TOKEN`), and its `HARK_PUBLIC_URL` with `--public-url` when
//! it has one; a server without a token refuses unsigned calls (503) unless it runs with
//! `HARK_DEV_INSECURE=no-signatures`.
//!
//! ## Service level
//! A step meets it with no underruns, no errors, barge-in p99 ≤ 150 ms and engine share p99 ≤
//! 5 ms (`--slo-*`). The bench states the largest `N` that met it. With `--chaos` only
//! underruns and errors are judged (the proxy's hold is in the latencies by design).
//!
//! ## Where the simulator runs
//! On its own multi-threaded tokio runtime (threads `hark-sim`, one task per call, tokio's timer
//! wheel for pacing) in the same process as the in-process server, whose HTTP side runs on the
//! caller's runtime and whose calls run on its call workers (`hark-call-N`). The two share the
//! machine's cores; their CPU is measured separately, so the report shows whether the simulator
//! could be the bottleneck (compare `sim CPU` with `server CPU`, and watch `late`). For a
//! separate server process, pinned apart: `taskset -c 0 hark serve` and
//! `taskset -c 1 hark bench --url ws://… --server-pid <pid>`. Measured on a 2-core machine
//! (`docs/readme-performance.md`): the simulator needs about as much CPU as the server per call;
//! one process, two unpinned processes, and two processes pinned to a core each all met the
//! service level up to the same N.

pub mod measure;
pub mod plot;
pub mod sessions;
pub mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hark_engine::config::CallConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::mpsc;

use crate::agents::AgentSettings;
use crate::config::{AgentKind, Config};
use crate::doubles::openai::{self, OpenAiDouble};
use crate::server::{self, AppState, STREAM_PATH};
use crate::simulator::{self, CallSetup, FRAME_MS, Report, SimError};
use measure::{CpuSample, Scrape, ServerProcess};
use sessions::BenchSession;
use stats::{Samples, Summary};

/// Largest `N` a step may have (two sockets per call in process; keep below `ulimit -n`).
pub const MAX_CALLS: usize = 10_000;
/// How often a step samples CPU, memory and active calls.
const TICK: Duration = Duration::from_millis(250);
/// Errors kept verbatim per step (the rest are counted).
const ERROR_SAMPLES: usize = 5;

/// Which agent answers the bench's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchAgent {
    /// The echo agent: plays each caller turn back as soon as it ends (provider latency 0).
    Echo,
    /// The cascade agent (STT → LLM → TTS) against hark's OpenAI-compatible double, started in
    /// process at fixed latencies (--double-latency-ms) and answering every turn with "Right,
    /// one moment.". Against --url, give the latencies of the double that server uses with
    /// --provider-latency-ms.
    Cascade,
}

/// `hark bench`: the command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent calls of each step, run in this order (increasing: the RSS per call is
    /// measured against the idle RSS before the first step).
    #[arg(
        long,
        value_name = "N,N,…",
        value_delimiter = ',',
        default_value = "100,500,1000,2000"
    )]
    pub calls: Vec<usize>,

    /// Seconds each step keeps starting calls; calls in progress then play to their end (the
    /// bundled sessions last 28–38 s, so at 30 a slot whose first call was the 28 s one starts
    /// a second call, played while the others finish).
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    pub duration_s: f64,

    /// Seconds over which a step's calls are started, evenly.
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    pub ramp_s: f64,

    /// The agent answering the calls.
    #[arg(long, value_enum, default_value_t = BenchAgent::Echo)]
    pub agent: BenchAgent,

    /// Call a running server's Media Streams endpoint (`ws://host:port/media-stream`, no TLS)
    /// instead of starting one in process. Its metrics are read from `http://host:port/metrics`.
    #[arg(long, value_name = "WS-URL")]
    pub url: Option<String>,

    /// With --url: the server's process id, to measure its CPU and RSS from /proc.
    #[arg(long, value_name = "PID", requires = "url")]
    pub server_pid: Option<u32>,

    /// Caller sessions, comma-separated or repeated: bundled names (support, interrupts, calm,
    /// short) or annotation files (`<stem>.json` with `<stem>.ulaw` beside it).
    /// Default: support,interrupts,calm.
    #[arg(long = "session", value_name = "NAME|FILE", value_delimiter = ',')]
    pub sessions: Vec<String>,

    /// Call worker threads of the in-process server (default: one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Threads of the simulator's runtime (default: one per core).
    #[arg(long, value_name = "N")]
    pub sim_threads: Option<usize>,

    /// With --agent cascade in process: the OpenAI-compatible double's latencies, ms: STT
    /// final transcript, LLM first token, TTS first byte (tokens all at once, speech in one
    /// piece). Their sum is the provider's share of each answer.
    #[arg(
        long,
        value_name = "STT,TTFT,TTFB",
        value_delimiter = ',',
        default_value = "50,100,50"
    )]
    pub double_latency_ms: Vec<u64>,

    /// The agent's provider latency in each answer, ms, subtracted for the engine share (with
    /// --url against a server whose agent talks to a double at fixed latencies).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub provider_latency_ms: u64,

    /// With --url: the server's HARK_STOP_MS (default 600), for the engine share.
    #[arg(long, value_name = "MS", requires = "url")]
    pub stop_ms: Option<u32>,

    /// Service level: barge-in delay p99, ms.
    #[arg(long, value_name = "MS", default_value_t = 150.0)]
    pub slo_barge_in_ms: f64,

    /// Service level: engine share of voice-to-voice p99, ms.
    #[arg(long, value_name = "MS", default_value_t = 5.0)]
    pub slo_engine_share_ms: f64,

    /// Run every step even after one misses the service level (default: stop there).
    #[arg(long)]
    pub keep_going: bool,

    /// Write the results as JSON here.
    #[arg(long, value_name = "FILE.json")]
    pub json: Option<PathBuf>,

    /// Draw the latency CDFs per step and CPU and memory against N as SVG here.
    #[arg(long, value_name = "FILE.svg")]
    pub svg: Option<PathBuf>,

    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,

    /// Send every call through a byte-level chaos proxy (see `hark_gateway::chaos`): TCP
    /// segments cut at random offsets (1 to 1,000 bytes) and held 0–20 ms, both ways, seeded
    /// per connection from SEED.
    #[arg(long, value_name = "SEED")]
    pub chaos: Option<u64>,

    /// With --url: the server's TWILIO_AUTH_TOKEN, to sign each upgrade as Twilio does (the
    /// in-process server has its own random token).
    #[arg(
        long,
        value_name = "T",
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// With --url and --auth-token: the server's HARK_PUBLIC_URL (e.g. https://abc.ngrok.app);
    /// the signature covers the URL Twilio would dial there (see `hark call --public-url`).
    #[arg(long, value_name = "URL", requires = "auth_token")]
    pub public_url: Option<String>,
}

/// Why `hark bench` could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting is unusable. Nothing ran.
    #[error("{0}")]
    Invalid(String),
    /// A session could not be loaded. Nothing ran.
    #[error("session {name}: {message}")]
    Session {
        /// The session's name or path.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A runtime, the in-process server or a thread could not start.
    #[error("cannot start: {0}")]
    Start(#[from] std::io::Error),
    /// A result file could not be written (the bench itself ran).
    #[error("writing {path}: {message}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The service level a step is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServiceLevel {
    /// Playout underruns allowed (0).
    pub max_underruns: u64,
    /// Errors allowed (0).
    pub max_errors: u64,
    /// Barge-in delay p99, ms.
    pub barge_in_p99_ms: f64,
    /// Engine share of voice-to-voice p99, ms.
    pub engine_share_p99_ms: f64,
    /// Whether the two latency limits are judged. Not through the chaos proxy (`--chaos`):
    /// its 0–20 ms hold each way is in both figures by design, so such a step is judged on
    /// underruns and errors only (the figures are still reported).
    pub latency_judged: bool,
}

/// The machine, when the bench ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to this process.
    pub cores: usize,
    /// 1/5/15-minute load averages before the first step.
    pub load_avg_before: Option<[f64; 3]>,
    /// … and after the last.
    pub load_avg_after: Option<[f64; 3]>,
}

/// A session as used by the bench.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Name.
    pub name: String,
    /// Length, ms.
    pub duration_ms: u64,
    /// Annotated caller turns.
    pub turns: usize,
    /// Annotated barge-ins.
    pub barge_ins: usize,
}

/// The server's engine time per inbound Twilio message in one step
/// (`hark_engine_message_seconds`, one message in 50 timed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EngineMessage {
    /// Messages timed.
    pub samples: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Upper bound of the histogram bucket holding the median, µs.
    pub p50_le_us: Option<f64>,
    /// Upper bound of the bucket holding p99, µs.
    pub p99_le_us: Option<f64>,
}

/// Empirical CDFs of a step (101 points each: the 0th…100th percentile of the values present).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cdfs {
    /// Voice-to-voice latency, ms.
    pub voice_to_voice_ms: Vec<f64>,
    /// Engine share, ms.
    pub engine_share_ms: Vec<f64>,
    /// Barge-in delay, ms.
    pub barge_in_ms: Vec<f64>,
}

/// One step's results. Times in ms unless named otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Concurrent call slots (`N`).
    pub calls: usize,
    /// Calls that ran (connected and finished).
    pub calls_completed: u64,
    /// Calls that could not connect.
    pub connect_failures: u64,
    /// Wall time of the step, s.
    pub wall_s: f64,
    /// The steady window CPU was measured over, s.
    pub window_s: f64,
    /// Calls active on average in that window.
    pub avg_active: f64,
    /// Caller turns played.
    pub turns: u64,
    /// Turns the agent never answered.
    pub unanswered: u64,
    /// Voice-to-voice latency (unanswered turns missing).
    pub voice_to_voice_ms: Summary,
    /// Engine share of it (unanswered turns missing).
    pub engine_share_ms: Summary,
    /// Barge-in delay (annotated barge-ins without a `clear` missing).
    pub barge_in_ms: Summary,
    /// Annotated barge-ins played.
    pub barge_ins_expected: u64,
    /// … that got no `clear`.
    pub barge_ins_missed: u64,
    /// `clear`s during caller speech not annotated as a barge-in (the agent was still talking).
    pub unexpected_clears: u64,
    /// `clear`s with the caller silent (counted as errors).
    pub spurious_clears: u64,
    /// Playout underruns (gaps inside an answer), plus answers split by a gap > 200 ms.
    pub underruns: u64,
    /// Silence heard in those gaps (within-answer gaps only), ms.
    pub underrun_ms: u64,
    /// Answers split in two by a gap > 200 ms (included in `underruns`).
    pub split_answers: u64,
    /// Caller frames sent.
    pub inbound_frames: u64,
    /// Caller frames sent more than 20 ms late.
    pub late_frames: u64,
    /// The latest a caller frame was sent, ms after it was due.
    pub max_late_ms: f64,
    /// Errors of any kind (see the module docs).
    pub errors: u64,
    /// The first few errors.
    pub error_samples: Vec<String>,
    /// Server CPU over the window, % of one core.
    pub server_cpu_pct: Option<f64>,
    /// Of that, the in-process server's HTTP runtime (accepting, upgrading, and the I/O driver
    /// the call sockets stay registered with), % of one core.
    pub server_http_cpu_pct: Option<f64>,
    /// … per active call.
    pub server_cpu_pct_per_call: Option<f64>,
    /// Server CPU per call per 20 ms of call, µs.
    pub server_us_per_call_frame: Option<f64>,
    /// Simulator CPU over the window, % of one core.
    pub client_cpu_pct: Option<f64>,
    /// … per active call.
    pub client_cpu_pct_per_call: Option<f64>,
    /// The bench's own main thread (progress, sampling), the cascade double, and anything
    /// else in this process, % of one core.
    pub other_cpu_pct: Option<f64>,
    /// Other processes on the machine during the window, % of one core: a step measured on a
    /// busy machine is skewed (this is what the table's `others` column shows).
    pub others_cpu_pct: Option<f64>,
    /// Peak RSS during the step, MiB (scope: [`BenchResults::rss_scope`]).
    pub rss_peak_mib: Option<f64>,
    /// (Peak RSS − idle RSS before the first step) / N, KiB.
    pub rss_per_call_kib: Option<f64>,
    /// Engine time per inbound message.
    pub engine_message: Option<EngineMessage>,
    /// `hark_ws_errors_total` during the step (included in `errors`).
    pub server_ws_errors: u64,
    /// `hark_malformed_messages_total` during the step (included in `errors`).
    pub server_malformed: u64,
    /// Load averages when the step started.
    pub load_avg_start: Option<[f64; 3]>,
    /// With `--chaos`: what the proxy did during the step (its `max_hold_us` is the longest
    /// since the bench started).
    pub chaos: Option<crate::chaos::ChaosStats>,
    /// Whether the step met the service level.
    pub meets_service_level: bool,
    /// Why not.
    pub misses: Vec<String>,
    /// CDFs for plots.
    pub cdf: Cdfs,
}

/// Everything one `hark bench` run measured (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResults {
    /// hark's version.
    pub hark_version: &'static str,
    /// `in-process` or `url`.
    pub mode: &'static str,
    /// The Media Streams URL called.
    pub url: String,
    /// The agent.
    pub agent: BenchAgent,
    /// The machine.
    pub machine: Machine,
    /// Call workers of the in-process server.
    pub server_workers: Option<usize>,
    /// Threads of the simulator's runtime.
    pub sim_threads: usize,
    /// `--duration-s`.
    pub duration_s: f64,
    /// `--ramp-s`.
    pub ramp_s: f64,
    /// Provider latency subtracted for the engine share, ms.
    pub provider_latency_ms: u64,
    /// The sessions played.
    pub sessions: Vec<SessionInfo>,
    /// The service level.
    pub service_level: ServiceLevel,
    /// What the RSS numbers cover.
    pub rss_scope: &'static str,
    /// Idle RSS before the first step, MiB.
    pub baseline_rss_mib: Option<f64>,
    /// The steps, in order.
    pub steps: Vec<StepResult>,
    /// The largest `N` whose step met the service level.
    pub largest_n_meeting_service_level: Option<usize>,
    /// `--chaos`: every call went through the chaos proxy with this seed.
    pub chaos_seed: Option<u64>,
}

/// The in-process server.
struct InProcess {
    url: String,
    /// Its `TWILIO_AUTH_TOKEN`, fresh and random: every call signs with it.
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The OpenAI-compatible double the cascade agent talks to, on its own runtime.
    double: Option<Double>,
}

/// The cascade agent's answer in the bench: one sentence, so with `token_ms` 0 the provider's
/// share is exactly STT + TTFT + TTS first byte; 18 characters ≈ 1.26 s of the double's speech
/// (70 ms per character), so with the bundled sessions every annotated barge-in lands inside an
/// answer and every calm turn starts after the previous answer has played.
pub const CASCADE_REPLY: &str = "Right, one moment.";

/// Thread name of the double's runtime (its CPU counts as "other", neither server nor
/// simulator).
pub const DOUBLE_THREAD: &str = "hark-double";

/// A running OpenAI-compatible double and the runtime it runs on.
struct Double {
    rt: Runtime,
    double: Option<OpenAiDouble>,
}

impl Double {
    /// Starts the double with `latency_ms` = [STT, TTFT, TTS first byte], no time between
    /// tokens, the speech in one piece, and [`CASCADE_REPLY`] for every turn.
    fn start(latency_ms: [u64; 3]) -> Result<Self, BenchError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(DOUBLE_THREAD)
            .enable_all()
            .build()?;
        let script = openai::Script {
            latency: openai::Latency {
                stt_ms: latency_ms[0],
                ttft_ms: latency_ms[1],
                token_ms: 0,
                ttfb_ms: latency_ms[2],
                audio_speed: 0.0,
                chunk_ms: 40,
            },
            default_reply: openai::Reply::text(CASCADE_REPLY),
            ..openai::Script::default()
        };
        let double = rt.block_on(openai::start(script));
        Ok(Double {
            rt,
            double: Some(double),
        })
    }

    fn stop(mut self) {
        if let Some(d) = self.double.take() {
            self.rt.block_on(d.stop());
        }
    }
}

/// Sets `config` up for `agent`; returns the provider latency (ms) each answer includes and,
/// for the cascade agent, the double it talks to.
///
/// # Errors
/// [`BenchError::Start`] if the double's runtime cannot start; [`BenchError::Invalid`] if the
/// cascade settings are refused.
fn configure_agent(
    agent: BenchAgent,
    double_latency_ms: [u64; 3],
    config: &mut Config,
) -> Result<(u64, Option<Double>), BenchError> {
    match agent {
        BenchAgent::Echo => Ok((0, None)),
        BenchAgent::Cascade => {
            let double = Double::start(double_latency_ms)?;
            let base = double
                .double
                .as_ref()
                .map(OpenAiDouble::base_url)
                .unwrap_or_default();
            let vars = [
                ("OPENAI_BASE_URL", base),
                ("OPENAI_API_KEY", "sk-double".to_string()),
                // A greeting would be an answer to no turn; tools would end calls early.
                ("HARK_GREETING", "off".to_string()),
                ("HARK_TOOLS", "none".to_string()),
            ];
            let settings = crate::agents::cascade::Settings::from_lookup(&mut |k| {
                vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
            })
            .map_err(|e| BenchError::Invalid(format!("cascade settings: {e}")))?;
            config.agent = AgentKind::Cascade;
            config.agent_settings = AgentSettings::Cascade(settings);
            Ok((double_latency_ms.iter().sum(), Some(double)))
        }
    }
}

fn start_in_process(
    rt: &Handle,
    workers: usize,
    agent: BenchAgent,
    double_latency_ms: [u64; 3],
) -> Result<(InProcess, CallConfig, u64), BenchError> {
    let token = simulator::random_token();
    let mut config = Config {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        workers,
        shutdown_timeout: Duration::from_secs(10),
        twilio_auth_token: Some(token.clone()),
        ..Config::default()
    };
    let (provider_ms, double) = configure_agent(agent, double_latency_ms, &mut config)?;
    let call = config.call;
    let listener = rt.block_on(tokio::net::TcpListener::bind(config.addr))?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = rt.spawn(server::serve(listener, state, async {
        let _ = rx.await;
    }));
    Ok((
        InProcess {
            url: format!("ws://{addr}{STREAM_PATH}"),
            token,
            stop: Some(tx),
            task,
            double,
        },
        call,
        provider_ms,
    ))
}

impl InProcess {
    fn stop(mut self, rt: &Handle) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = rt.block_on(self.task);
        if let Some(d) = self.double.take() {
            d.stop();
        }
    }
}

/// Thread name of the chaos proxy's runtime (its CPU counts as "other").
pub const CHAOS_THREAD: &str = "hark-chaos";

/// `--chaos`: the proxy every call goes through, on its own runtime.
struct Chaos {
    rt: Runtime,
    proxy: Option<crate::chaos::ChaosProxy>,
    /// The URL the calls dial: the server's, with the proxy's address.
    url: String,
}

impl Chaos {
    /// Starts a proxy to the `ws://host:port/…` server `url`, seeded with `seed`, on a runtime
    /// of `threads` threads.
    fn start(url: &str, seed: u64, threads: usize) -> Result<Self, BenchError> {
        use std::net::ToSocketAddrs;
        let invalid = || BenchError::Invalid(format!("--chaos: cannot resolve the server {url}"));
        let target = host_port(url)
            .and_then(|hp| hp.to_socket_addrs().ok())
            .and_then(|mut a| a.next())
            .ok_or_else(invalid)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(CHAOS_THREAD)
            .enable_all()
            .build()?;
        let proxy = rt.block_on(crate::chaos::ChaosProxy::start(
            target,
            crate::chaos::ChaosConfig::new(seed),
        ))?;
        let url = proxy.url(url).ok_or_else(invalid)?;
        Ok(Chaos {
            rt,
            proxy: Some(proxy),
            url,
        })
    }

    fn stats(&self) -> Option<crate::chaos::ChaosStats> {
        self.proxy.as_ref().map(crate::chaos::ChaosProxy::stats)
    }

    fn stop(mut self) {
        // Aborts its tasks; the runtime then shuts down with nothing left to run.
        self.proxy.take();
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// What the calls dial, and how they sign their upgrade.
#[derive(Debug, Clone, Default)]
struct Dial {
    /// The server's Media Streams URL (the chaos proxy's with `--chaos`).
    url: String,
    /// The Auth Token to sign with.
    token: Option<String>,
    /// The server's `HARK_PUBLIC_URL`, for the signed URL.
    public_url: Option<String>,
}

/// `host:port` of a `ws://host:port/…` URL.
fn host_port(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("WS://"))?;
    Some(rest.split('/').next().unwrap_or(rest))
}

fn check(args: &BenchArgs) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::Invalid(m));
    if args.calls.is_empty() {
        return bad("--calls: give at least one step".into());
    }
    if let Some(n) = args.calls.iter().find(|&&n| n == 0 || n > MAX_CALLS) {
        return bad(format!("--calls: {n} is not within 1..={MAX_CALLS}"));
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        return bad(format!(
            "--duration-s {}: must be within (0, 3600]",
            args.duration_s
        ));
    }
    if !(args.ramp_s >= 0.0 && args.ramp_s <= 3600.0) {
        return bad(format!(
            "--ramp-s {}: must be within [0, 3600]",
            args.ramp_s
        ));
    }
    if let Some(url) = &args.url
        && host_port(url).is_none()
    {
        return bad(format!(
            "--url {url}: expected ws://host:port/media-stream (no TLS)"
        ));
    }
    if let Some(p) = &args.public_url
        && let Err(e) = simulator::signed_url("ws://h/media-stream", Some(p))
    {
        return bad(e.to_string());
    }
    if args.workers == Some(0) || args.sim_threads == Some(0) {
        return bad("--workers and --sim-threads must be at least 1".into());
    }
    Ok(())
}

/// Runs the bench described by `args`; the in-process server's HTTP side runs on `server_rt`.
/// Calls `on_step` after each step (e.g. to print its row). Blocking: call it from outside any
/// async context.
///
/// # Errors
/// [`BenchError`] if the bench cannot start; what goes wrong during calls is in the results.
pub fn run(
    args: &BenchArgs,
    server_rt: &Handle,
    on_step: &mut dyn FnMut(&StepResult),
) -> Result<BenchResults, BenchError> {
    check(args)?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = args.workers.unwrap_or(cores);
    let sim_threads = args.sim_threads.unwrap_or(cores);

    let (server, url, call, provider_ms, process) = match &args.url {
        Some(url) => {
            let mut call = CallConfig::default();
            if let Some(ms) = args.stop_ms {
                call.turn.stop_ms = ms;
            }
            let process = args
                .server_pid
                .map_or(ServerProcess::Unknown, ServerProcess::Pid);
            (None, url.clone(), call, args.provider_latency_ms, process)
        }
        None => {
            let latency = match args.double_latency_ms.as_slice() {
                &[a, b, c] => [a, b, c],
                _ => {
                    return Err(BenchError::Invalid(
                        "--double-latency-ms: give STT,TTFT,TTFB (three numbers)".into(),
                    ));
                }
            };
            let (s, call, provider_ms) = start_in_process(server_rt, workers, args.agent, latency)?;
            let url = s.url.clone();
            (
                Some(s),
                url,
                call,
                provider_ms.max(args.provider_latency_ms),
                ServerProcess::InProcess,
            )
        }
    };
    let chaos = match args.chaos.map(|seed| Chaos::start(&url, seed, sim_threads)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            if let Some(s) = server {
                s.stop(server_rt);
            }
            return Err(e);
        }
    };
    let dial = Arc::new(Dial {
        url: chaos
            .as_ref()
            .map_or_else(|| url.clone(), |c| c.url.clone()),
        token: match &server {
            Some(s) => Some(s.token.clone()),
            None => args.auth_token.clone(),
        },
        public_url: args.public_url.clone().filter(|_| server.is_none()),
    });
    let result = (|| {
        let names: Vec<String> = if args.sessions.is_empty() {
            sessions::DEFAULT_SESSIONS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            args.sessions.clone()
        };
        let loaded = names
            .iter()
            .map(|n| BenchSession::load(n, &call))
            .collect::<Result<Vec<_>, _>>()?;
        let sim = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(sim_threads)
            .thread_name(measure::SIM_THREAD)
            .enable_all()
            .build()?;
        let rss_pid = match process {
            ServerProcess::Pid(p) => Some(Some(p)),
            ServerProcess::InProcess => Some(None),
            ServerProcess::Unknown => None,
        };
        let ctx = Ctx {
            sim: &sim,
            dial: dial.clone(),
            chaos: chaos.as_ref(),
            sessions: Arc::new(loaded),
            process,
            metrics_from: if args.url.is_some() {
                host_port(&url).map(str::to_string)
            } else {
                None
            },
            rss_pid,
            baseline_rss: rss_pid.and_then(measure::rss_bytes),
            provider_ms,
            args,
        };
        let slo = ServiceLevel {
            max_underruns: 0,
            max_errors: 0,
            barge_in_p99_ms: args.slo_barge_in_ms,
            engine_share_p99_ms: args.slo_engine_share_ms,
            latency_judged: args.chaos.is_none(),
        };
        let load_before = measure::load_avg();
        let mut steps = Vec::new();
        for &n in &args.calls {
            let mut step = ctx.step(n);
            judge(&mut step, &slo);
            on_step(&step);
            let met = step.meets_service_level;
            steps.push(step);
            if !met && !args.keep_going {
                break;
            }
        }
        let largest = steps
            .iter()
            .filter(|s| s.meets_service_level)
            .map(|s| s.calls)
            .max();
        Ok(BenchResults {
            hark_version: env!("CARGO_PKG_VERSION"),
            mode: if args.url.is_some() {
                "url"
            } else {
                "in-process"
            },
            url: url.clone(),
            agent: args.agent,
            machine: Machine {
                cores,
                load_avg_before: load_before,
                load_avg_after: measure::load_avg(),
            },
            server_workers: args.url.is_none().then_some(workers),
            sim_threads,
            duration_s: args.duration_s,
            ramp_s: args.ramp_s,
            provider_latency_ms: provider_ms,
            sessions: ctx
                .sessions
                .iter()
                .map(|s| SessionInfo {
                    name: s.name.clone(),
                    duration_ms: s.duration_ms(),
                    turns: s.turns(),
                    barge_ins: s.barge_in_starts.len(),
                })
                .collect(),
            service_level: slo,
            rss_scope: match process {
                ServerProcess::InProcess => "process (server and simulator)",
                ServerProcess::Pid(_) => "server process",
                ServerProcess::Unknown => "unknown",
            },
            baseline_rss_mib: ctx.baseline_rss.map(mib),
            steps,
            largest_n_meeting_service_level: largest,
            chaos_seed: args.chaos,
        })
    })();
    if let Some(c) = chaos {
        c.stop();
    }
    if let Some(s) = server {
        s.stop(server_rt);
    }
    result
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Sets `meets_service_level` and `misses` of `step`.
fn judge(step: &mut StepResult, slo: &ServiceLevel) {
    let mut misses = Vec::new();
    if step.calls_completed == 0 {
        misses.push("no call completed".to_string());
    }
    if step.underruns > slo.max_underruns {
        misses.push(format!("{} underruns", step.underruns));
    }
    if step.errors > slo.max_errors {
        misses.push(format!("{} errors", step.errors));
    }
    let p99 = |s: &Summary| s.p99.map_or_else(|| "∞".to_string(), |v| format!("{v:.0}"));
    if step.engine_share_ms.n == 0 {
        misses.push("no turn was answered".to_string());
    }
    if !slo.latency_judged {
        step.meets_service_level = misses.is_empty();
        step.misses = misses;
        return;
    }
    if step.barge_in_ms.n > 0 && step.barge_in_ms.p99.is_none_or(|v| v > slo.barge_in_p99_ms) {
        misses.push(format!(
            "barge-in p99 {} ms > {} ms",
            p99(&step.barge_in_ms),
            slo.barge_in_p99_ms
        ));
    }
    if step.engine_share_ms.n > 0
        && step
            .engine_share_ms
            .p99
            .is_none_or(|v| v > slo.engine_share_p99_ms)
    {
        misses.push(format!(
            "engine share p99 {} ms > {} ms",
            p99(&step.engine_share_ms),
            slo.engine_share_p99_ms
        ));
    }
    step.meets_service_level = misses.is_empty();
    step.misses = misses;
}

/// What every step shares.
struct Ctx<'a> {
    sim: &'a Runtime,
    /// What the calls dial (the chaos proxy with `--chaos`) and how they sign.
    dial: Arc<Dial>,
    chaos: Option<&'a Chaos>,
    sessions: Arc<Vec<BenchSession>>,
    process: ServerProcess,
    /// `host:port` to scrape `/metrics` from; `None`: this process's recorder.
    metrics_from: Option<String>,
    /// Whose RSS: `Some(None)` this process, `Some(Some(pid))` another, `None` unknown.
    rss_pid: Option<Option<u32>>,
    baseline_rss: Option<u64>,
    provider_ms: u64,
    args: &'a BenchArgs,
}

/// A step's running totals over its calls.
#[derive(Default)]
struct Acc {
    completed: u64,
    connect_failures: u64,
    turns: u64,
    unanswered: u64,
    v2v: Samples,
    share: Samples,
    barge: Samples,
    expected: u64,
    missed: u64,
    unexpected: u64,
    spurious: u64,
    underruns: u64,
    underrun_ms: u64,
    split: u64,
    inbound_frames: u64,
    late: u64,
    max_late_us: u64,
    errors: u64,
    samples: Vec<String>,
}

impl Acc {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(e);
        }
    }

    fn add(&mut self, s: &BenchSession, r: Result<Report, SimError>, provider_ms: u64) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.connect_failures += 1;
                self.error(e.to_string());
                return;
            }
        };
        self.completed += 1;
        let mut answered = 0u64;
        for t in &r.turns {
            self.turns += 1;
            match (t.agent_start_ms, t.latency_ms) {
                (Some(heard), Some(latency)) => {
                    answered += 1;
                    self.v2v.push(latency as f64);
                    match s.endpoints_ms.iter().rev().find(|&&e| e <= heard) {
                        Some(&e) => self.share.push((heard - e) as f64 - provider_ms as f64),
                        None => self.share.push_missing(),
                    }
                }
                _ => {
                    self.unanswered += 1;
                    self.v2v.push_missing();
                    self.share.push_missing();
                }
            }
        }
        let mut seen = vec![false; s.barge_in_starts.len()];
        for b in &r.barge_ins {
            match (b.speech_start_ms, b.delay_ms) {
                (Some(start), Some(delay)) => {
                    self.barge.push(delay as f64);
                    match s.barge_in_starts.iter().position(|&x| x == start) {
                        Some(i) => seen[i] = true,
                        None => self.unexpected += 1,
                    }
                }
                _ => {
                    self.spurious += 1;
                    self.error(format!(
                        "{} ({}): clear at {} ms with the caller silent",
                        r.call_sid, s.name, b.clear_ms
                    ));
                }
            }
        }
        let missed = seen.iter().filter(|&&x| !x).count() as u64;
        self.expected += seen.len() as u64;
        self.missed += missed;
        for _ in 0..missed {
            self.barge.push_missing();
        }
        let split = r.bursts.saturating_sub(answered);
        self.split += split;
        self.underruns += r.underruns + split;
        self.underrun_ms += r.underrun_ms;
        self.inbound_frames += r.inbound_frames;
        self.late += r.late_frames;
        self.max_late_us = self.max_late_us.max(r.max_late_us);
        for e in &r.errors {
            self.error(format!("{} ({}): {e}", r.call_sid, s.name));
        }
    }
}

/// One call slot of a step: waits for its start, then plays sessions back to back until
/// `deadline`, sending each call's report (with its session's index) to `tx`.
async fn slot(
    i: usize,
    start_at: Instant,
    deadline: Instant,
    dial: Arc<Dial>,
    sessions: Arc<Vec<BenchSession>>,
    tx: mpsc::UnboundedSender<(usize, Result<Report, SimError>)>,
    active: Arc<AtomicUsize>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let mut k = 0usize;
    loop {
        let si = (i + k) % sessions.len();
        let s = &sessions[si];
        let mut setup = CallSetup::new(dial.url.clone(), s.audio.clone());
        setup.speech = Some(s.speech.clone());
        setup.tail_ms = 0;
        setup.auth_token.clone_from(&dial.token);
        setup.public_url.clone_from(&dial.public_url);
        setup.start = simulator::fresh_start(vec![
            ("source".into(), "hark bench".into()),
            ("session".into(), s.name.clone()),
        ]);
        active.fetch_add(1, Ordering::Relaxed);
        let r = simulator::run_call(setup).await;
        active.fetch_sub(1, Ordering::Relaxed);
        let failed = r.is_err();
        if tx.send((si, r)).is_err() {
            return;
        }
        k += 1;
        if Instant::now() >= deadline {
            return;
        }
        if failed {
            // Do not hammer a server that refuses connections.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Ctx<'_> {
    fn scrape(&self) -> Option<Scrape> {
        match &self.metrics_from {
            None => Some(Scrape::parse(&crate::metrics::render())),
            Some(hp) => measure::fetch_metrics(hp, Duration::from_secs(5))
                .ok()
                .map(|t| Scrape::parse(&t)),
        }
    }

    fn rss(&self) -> Option<u64> {
        self.rss_pid.and_then(measure::rss_bytes)
    }

    /// Runs one step of `n` call slots.
    fn step(&self, n: usize) -> StepResult {
        let args = self.args;
        let duration = Duration::from_secs_f64(args.duration_s);
        let ramp = Duration::from_secs_f64(args.ramp_s.min(args.duration_s));
        let longest = self
            .sessions
            .iter()
            .map(BenchSession::duration_ms)
            .max()
            .unwrap_or(0);
        // Bounded: the last calls start before `duration` and last at most `longest` plus the
        // simulator's connect (10 s) and close (5 s + 1 s) timeouts; a step never runs longer.
        let hard_limit = duration + Duration::from_millis(longest) + Duration::from_secs(45);
        let before = self.scrape();
        let chaos_before = self.chaos.and_then(Chaos::stats);
        let load_start = measure::load_avg();
        let t0 = Instant::now();
        let deadline = t0 + duration;
        // The steady window: all N calls up (after the ramp) until calls stop being started.
        // Too short a step for that (smoke runs): the whole step.
        let windowed = duration >= ramp + Duration::from_secs(1);
        let window_start = if windowed { t0 + ramp } else { t0 };

        let active = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let start_at = t0 + ramp.mul_f64(i as f64 / n as f64);
            set.spawn_on(
                slot(
                    i,
                    start_at,
                    deadline,
                    self.dial.clone(),
                    self.sessions.clone(),
                    tx.clone(),
                    active.clone(),
                ),
                self.sim.handle(),
            );
        }
        drop(tx);

        let expected_ms = (duration.as_millis() as u64 + longest).max(1);
        let pb = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(expected_ms)
        };
        pb.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:32}] {elapsed:>3} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(format!("N={n}"));

        let mut acc = Acc::default();
        let mut cpu_a: Option<CpuSample> = None;
        let mut cpu_b: Option<CpuSample> = None;
        let (mut active_sum, mut active_n) = (0f64, 0u64);
        let mut rss_peak = self.rss();
        let sessions = self.sessions.clone();
        let provider_ms = self.provider_ms;
        let process = self.process;
        let timed_out = self.sim.block_on(async {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let limit = tokio::time::sleep_until((t0 + hard_limit).into());
            tokio::pin!(limit);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some((si, r)) => acc.add(&sessions[si], r, provider_ms),
                        None => break false,
                    },
                    _ = tick.tick() => {
                        let now = Instant::now();
                        if cpu_a.is_none() && now >= window_start {
                            cpu_a = measure::cpu(process);
                        }
                        let in_window = cpu_a.is_some() && cpu_b.is_none();
                        if windowed && in_window && now >= deadline {
                            cpu_b = measure::cpu(process);
                        } else if in_window {
                            active_sum += active.load(Ordering::Relaxed) as f64;
                            active_n += 1;
                        }
                        if let Some(r) = self.rss() {
                            rss_peak = Some(rss_peak.map_or(r, |p| p.max(r)));
                        }
                        pb.set_position((now - t0).as_millis() as u64);
                        pb.set_message(format!(
                            "{} active, {} calls done, {} errors",
                            active.load(Ordering::Relaxed),
                            acc.completed + acc.connect_failures,
                            acc.errors
                        ));
                    }
                    () = &mut limit => {
                        set.abort_all();
                        break true;
                    }
                }
            }
        });
        if cpu_b.is_none() {
            cpu_b = measure::cpu(process);
        }
        self.sim.block_on(set.shutdown());
        pb.finish_and_clear();
        let wall = t0.elapsed();
        if timed_out {
            acc.error(format!(
                "the step did not finish within {hard_limit:?}: {} calls aborted",
                active.load(Ordering::Relaxed)
            ));
        }
        let after = self.scrape();
        let delta = before.zip(after).map(|(b, a)| b.delta(&a));
        let chaos = self
            .chaos
            .and_then(Chaos::stats)
            .map(|a| chaos_before.map_or(a, |b| a.since(&b)));

        let (server_pct, http_pct, client_pct, other_pct, others_pct, window_s) =
            match (&cpu_a, &cpu_b) {
                (Some(a), Some(b)) => {
                    let p = measure::cpu_pct(a, b);
                    (
                        p.server,
                        p.server_http,
                        Some(p.client),
                        Some(p.other),
                        p.others,
                        b.at.saturating_duration_since(a.at).as_secs_f64(),
                    )
                }
                _ => (None, None, None, None, None, 0.0),
            };
        let avg_active = if active_n > 0 {
            active_sum / active_n as f64
        } else {
            0.0
        };
        let per_call = |p: Option<f64>| p.filter(|_| avg_active >= 1.0).map(|p| p / avg_active);
        let server_per_call = per_call(server_pct);
        let (server_ws_errors, server_malformed) = delta
            .as_ref()
            .map_or((0, 0), |d| (d.ws_errors as u64, d.malformed as u64));
        if server_ws_errors + server_malformed > 0 {
            acc.errors += server_ws_errors + server_malformed;
            if acc.samples.len() < ERROR_SAMPLES {
                acc.samples.push(format!(
                    "server: {server_ws_errors} WebSocket errors, {server_malformed} malformed messages"
                ));
            }
        }
        let engine_message = delta.as_ref().and_then(|d| {
            (d.message_count > 0.0).then(|| EngineMessage {
                samples: d.message_count as u64,
                mean_us: d.message_sum / d.message_count * 1e6,
                p50_le_us: d.message_quantile_le(0.5).map(|s| s * 1e6),
                p99_le_us: d.message_quantile_le(0.99).map(|s| s * 1e6),
            })
        });
        let rss_per_call = rss_peak
            .zip(self.baseline_rss)
            .map(|(p, b)| p.saturating_sub(b) as f64 / 1024.0 / n as f64);
        StepResult {
            calls: n,
            calls_completed: acc.completed,
            connect_failures: acc.connect_failures,
            wall_s: wall.as_secs_f64(),
            window_s,
            avg_active,
            turns: acc.turns,
            unanswered: acc.unanswered,
            voice_to_voice_ms: acc.v2v.summary(),
            engine_share_ms: acc.share.summary(),
            barge_in_ms: acc.barge.summary(),
            barge_ins_expected: acc.expected,
            barge_ins_missed: acc.missed,
            unexpected_clears: acc.unexpected,
            spurious_clears: acc.spurious,
            underruns: acc.underruns,
            underrun_ms: acc.underrun_ms,
            split_answers: acc.split,
            inbound_frames: acc.inbound_frames,
            late_frames: acc.late,
            max_late_ms: acc.max_late_us as f64 / 1000.0,
            errors: acc.errors,
            error_samples: acc.samples.clone(),
            server_cpu_pct: server_pct,
            server_http_cpu_pct: http_pct,
            server_cpu_pct_per_call: server_per_call,
            server_us_per_call_frame: server_per_call.map(|p| p / 100.0 * FRAME_MS as f64 * 1000.0),
            client_cpu_pct: client_pct,
            client_cpu_pct_per_call: per_call(client_pct),
            other_cpu_pct: other_pct,
            others_cpu_pct: others_pct,
            rss_peak_mib: rss_peak.map(mib),
            rss_per_call_kib: rss_per_call,
            engine_message,
            server_ws_errors,
            server_malformed,
            load_avg_start: load_start,
            chaos,
            meets_service_level: false,
            misses: Vec::new(),
            cdf: Cdfs {
                voice_to_voice_ms: acc.v2v.cdf_points(),
                engine_share_ms: acc.share.cdf_points(),
                barge_in_ms: acc.barge.cdf_points(),
            },
        }
    }
}

/// The header of the per-step table.
pub fn table_header() -> String {
    format!(
        "{:>6} {:>6} {:>11} {:>9} {:>11} {:>5} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>8}  {}",
        "N",
        "calls",
        "v2v p50/99",
        "eng 50/99",
        "barge 50/99",
        "under",
        "late",
        "errors",
        "srv CPU",
        "(http)",
        "/call",
        "µs/20ms",
        "sim CPU",
        "others",
        "RSS/call",
        "eng µs",
        "service level"
    )
}

/// One row of the per-step table: N, calls completed, voice-to-voice, engine share and
/// barge-in p50/p99 (ms), underruns, late frames, errors, server CPU (% of one core; of it the
/// HTTP runtime; per call; µs per call per 20 ms), simulator CPU, other processes' CPU, RSS
/// per call, mean engine µs per message, verdict.
pub fn table_row(s: &StepResult) -> String {
    let pct = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.d$}%"));
    let num = |v: Option<f64>, d: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.d$}"));
    format!(
        "{:>6} {:>6} {:>11} {:>9} {:>11} {:>5} {:>6} {:>6} {:>8} {:>7} {:>7} {:>7} {:>8} {:>7} {:>9} {:>8}  {}",
        s.calls,
        s.calls_completed,
        s.voice_to_voice_ms.cell(),
        s.engine_share_ms.cell(),
        s.barge_in_ms.cell(),
        s.underruns,
        s.late_frames,
        s.errors,
        pct(s.server_cpu_pct, 1),
        pct(s.server_http_cpu_pct, 1),
        pct(s.server_cpu_pct_per_call, 3),
        num(s.server_us_per_call_frame, 1),
        pct(s.client_cpu_pct, 1),
        pct(s.others_cpu_pct, 0),
        s.rss_per_call_kib
            .map_or_else(|| "-".to_string(), |v| format!("{v:.0} KiB")),
        num(s.engine_message.map(|e| e.mean_us), 2),
        if s.meets_service_level {
            "met".to_string()
        } else {
            format!("missed: {}", s.misses.join(", "))
        }
    )
}

/// The whole `hark bench` command: runs the steps printing a table row after each (with a
/// progress bar meanwhile), states the largest N meeting the service level, writes `--json` and
/// `--svg`. Exit status 0 when the bench ran (whatever it found), 2 when it could not.
pub fn main(args: &BenchArgs, server_rt: &Handle) -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let load = measure::load_avg()
        .map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "hark bench: {} agent, {}; simulator on {} thread(s); {cores} cores, load average {load}",
        match (args.agent, &args.url) {
            (BenchAgent::Echo, _) => "echo".to_string(),
            (BenchAgent::Cascade, Some(_)) => "cascade".to_string(),
            (BenchAgent::Cascade, None) => format!(
                "cascade (OpenAI-compatible double in process, STT,TTFT,TTFB = {:?} ms)",
                args.double_latency_ms
            ),
        },
        match &args.url {
            Some(u) => format!("server at {u}"),
            None => format!(
                "in-process server ({} call workers)",
                args.workers.unwrap_or(cores)
            ),
        },
        args.sim_threads.unwrap_or(cores),
    );
    let service_level = if let Some(seed) = args.chaos {
        println!(
            "every call through the chaos proxy, seed {seed}: TCP segments of 1-1000 bytes, each held 0-20 ms, both ways (its CPU is not in srv or sim CPU)"
        );
        "0 underruns, 0 errors (latencies include the proxy's hold: reported, not judged)"
            .to_string()
    } else {
        format!(
            "0 underruns, 0 errors, barge-in p99 <= {} ms, engine share p99 <= {} ms",
            args.slo_barge_in_ms, args.slo_engine_share_ms
        )
    };
    println!(
        "each step: N calls started over {} s, new calls until {} s, each played to its end; \
         service level: {service_level}",
        args.ramp_s, args.duration_s
    );
    println!(
        "(times in ms; eng = engine share of voice-to-voice; CPU in % of one core, (http) = the \
         server's HTTP runtime within srv CPU; µs/20ms = server CPU per call per 20 ms frame; \
         others = other processes on the machine; eng µs = engine time per inbound message)"
    );
    println!("{}", table_header());
    let res = run(args, server_rt, &mut |s| {
        println!("{}", table_row(s));
        for e in &s.error_samples {
            println!("         error: {e}");
        }
    });
    let results = match res {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hark bench: {e}");
            return ExitCode::from(2);
        }
    };
    match results.largest_n_meeting_service_level {
        Some(n) => println!("largest N meeting the service level: {n}"),
        None => println!("no step met the service level"),
    }
    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &args.json {
        let written = serde_json::to_string_pretty(&results)
            .map_err(|e| e.to_string())
            .and_then(|s| std::fs::write(path, s + "\n").map_err(|e| e.to_string()));
        match written {
            Ok(()) => println!("results: {}", path.display()),
            Err(e) => {
                eprintln!("hark bench: writing {}: {e}", path.display());
                status = ExitCode::from(2);
            }
        }
    }
    if let Some(path) = &args.svg {
        match plot::write_svg(&results, path) {
            Ok(()) => println!("picture: {}", path.display()),
            Err(e) => {
                eprintln!("hark bench: {e}");
                status = ExitCode::from(2);
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_limits() {
        assert_eq!(
            host_port("ws://127.0.0.1:3000/media-stream"),
            Some("127.0.0.1:3000")
        );
        assert_eq!(host_port("http://x"), None);
        let args = |calls: Vec<usize>, d: f64| BenchArgs {
            calls,
            duration_s: d,
            ramp_s: 1.0,
            agent: BenchAgent::Echo,
            url: None,
            server_pid: None,
            sessions: vec![],
            workers: None,
            sim_threads: None,
            double_latency_ms: vec![50, 100, 50],
            provider_latency_ms: 0,
            stop_ms: None,
            slo_barge_in_ms: 150.0,
            slo_engine_share_ms: 5.0,
            keep_going: false,
            json: None,
            svg: None,
            quiet: true,
            chaos: None,
            auth_token: None,
            public_url: None,
        };
        assert!(check(&args(vec![1, 10], 1.0)).is_ok());
        assert!(check(&args(vec![], 1.0)).is_err());
        assert!(check(&args(vec![0], 1.0)).is_err());
        assert!(check(&args(vec![MAX_CALLS + 1], 1.0)).is_err());
        assert!(check(&args(vec![1], 0.0)).is_err());
        assert!(check(&args(vec![1], f64::NAN)).is_err());
    }

    #[test]
    fn a_missed_barge_in_or_an_underrun_misses_the_service_level() {
        let slo = ServiceLevel {
            max_underruns: 0,
            max_errors: 0,
            barge_in_p99_ms: 150.0,
            engine_share_p99_ms: 5.0,
            latency_judged: true,
        };
        let mut ok = Samples::default();
        ok.push(2.0);
        let mut barge = Samples::default();
        barge.push(90.0);
        let mut step = StepResult {
            calls: 1,
            calls_completed: 1,
            connect_failures: 0,
            wall_s: 1.0,
            window_s: 1.0,
            avg_active: 1.0,
            turns: 1,
            unanswered: 0,
            voice_to_voice_ms: ok.summary(),
            engine_share_ms: ok.summary(),
            barge_in_ms: barge.summary(),
            barge_ins_expected: 1,
            barge_ins_missed: 0,
            unexpected_clears: 0,
            spurious_clears: 0,
            underruns: 0,
            underrun_ms: 0,
            split_answers: 0,
            inbound_frames: 50,
            late_frames: 0,
            max_late_ms: 0.0,
            errors: 0,
            error_samples: vec![],
            server_cpu_pct: None,
            server_http_cpu_pct: None,
            server_cpu_pct_per_call: None,
            server_us_per_call_frame: None,
            client_cpu_pct: None,
            client_cpu_pct_per_call: None,
            other_cpu_pct: None,
            others_cpu_pct: None,
            rss_peak_mib: None,
            rss_per_call_kib: None,
            engine_message: None,
            server_ws_errors: 0,
            server_malformed: 0,
            load_avg_start: None,
            chaos: None,
            meets_service_level: false,
            misses: vec![],
            cdf: Cdfs::default(),
        };
        judge(&mut step, &slo);
        assert!(step.meets_service_level, "{:?}", step.misses);
        barge.push_missing();
        step.barge_in_ms = barge.summary();
        judge(&mut step, &slo);
        assert!(!step.meets_service_level);
        assert!(
            step.misses[0].contains("barge-in p99 ∞"),
            "{:?}",
            step.misses
        );
        step.barge_in_ms = Samples::default().summary();
        step.underruns = 1;
        judge(&mut step, &slo);
        assert_eq!(step.misses, vec!["1 underruns".to_string()]);
        // Through the chaos proxy only underruns and errors count.
        let chaos = ServiceLevel {
            latency_judged: false,
            ..slo
        };
        step.underruns = 0;
        step.engine_share_ms = barge.summary();
        judge(&mut step, &chaos);
        assert!(step.meets_service_level, "{:?}", step.misses);
        step.errors = 2;
        judge(&mut step, &chaos);
        assert_eq!(step.misses, vec!["2 errors".to_string()]);
        // The row says why.
        assert!(table_row(&step).contains("missed: 2 errors"));
        assert!(table_header().starts_with("     N  calls"));
    }
}
