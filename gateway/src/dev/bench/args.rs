//! The `hark bench` command line: [`BenchArgs`] and [`BenchAgent`].

use std::path::PathBuf;

use serde::Serialize;

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
