//! What the bench's calls talk to: the in-process server (its `Config`, and for the cascade agent
//! the OpenAI-compatible double on its own runtime) or a server at `--url`, the chaos proxy in
//! front of it (`--chaos`), and what each call dials and signs with ([`Dial`]).

use std::time::Duration;

use hark_engine::config::CallConfig;
use tokio::runtime::{Handle, Runtime};

use super::measure::ServerProcess;
use super::{BenchAgent, BenchArgs, BenchError};
use crate::agents::AgentSettings;
use crate::config::{AgentKind, Config};
use crate::doubles::openai::{self, OpenAiDouble};
use crate::server::{self, AppState, STREAM_PATH};
use crate::simulator;

/// The in-process server.
pub(super) struct InProcess {
    url: String,
    /// Its `TWILIO_AUTH_TOKEN`, fresh and random: every call signs with it.
    pub(super) token: String,
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
pub(super) struct Chaos {
    rt: Runtime,
    proxy: Option<crate::chaos::ChaosProxy>,
    /// The URL the calls dial: the server's, with the proxy's address.
    pub(super) url: String,
}

impl Chaos {
    /// Starts a proxy to the `ws://host:port/…` server `url`, seeded with `seed`, on a runtime
    /// of `threads` threads.
    pub(super) fn start(url: &str, seed: u64, threads: usize) -> Result<Self, BenchError> {
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

    pub(super) fn stats(&self) -> Option<crate::chaos::ChaosStats> {
        self.proxy.as_ref().map(crate::chaos::ChaosProxy::stats)
    }

    pub(super) fn stop(mut self) {
        // Aborts its tasks; the runtime then shuts down with nothing left to run.
        self.proxy.take();
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// What the calls dial, and how they sign their upgrade.
#[derive(Debug, Clone, Default)]
pub(super) struct Dial {
    /// The server's Media Streams URL (the chaos proxy's with `--chaos`).
    pub(super) url: String,
    /// The Auth Token to sign with.
    pub(super) token: Option<String>,
    /// The server's `HARK_PUBLIC_URL`, for the signed URL.
    pub(super) public_url: Option<String>,
}

/// `host:port` of a `ws://host:port/…` URL.
pub(super) fn host_port(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("WS://"))?;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The server a run's calls go to, and what the bench knows about it.
pub(super) struct Target {
    /// The in-process server, unless `--url` named one.
    pub(super) server: Option<InProcess>,
    /// Its Media Streams URL (`ws://host:port/media-stream`).
    pub(super) url: String,
    /// Its call settings (the sessions' endpoints are found with its turn detector).
    pub(super) call: CallConfig,
    /// Provider latency each answer includes, ms (subtracted for the engine share).
    pub(super) provider_ms: u64,
    /// Whose CPU counts as the server's.
    pub(super) process: ServerProcess,
}

impl Target {
    /// The server at `--url`, or else one started in this process with `workers` call workers,
    /// its HTTP side on `rt`.
    ///
    /// # Errors
    /// [`BenchError::Invalid`] for `--double-latency-ms` without three numbers, and the errors
    /// of starting the in-process server.
    pub(super) fn start(args: &BenchArgs, rt: &Handle, workers: usize) -> Result<Self, BenchError> {
        if let Some(url) = &args.url {
            let mut call = CallConfig::default();
            if let Some(ms) = args.stop_ms {
                call.turn.stop_ms = ms;
            }
            return Ok(Target {
                server: None,
                url: url.clone(),
                call,
                provider_ms: args.provider_latency_ms,
                process: args
                    .server_pid
                    .map_or(ServerProcess::Unknown, ServerProcess::Pid),
            });
        }
        let latency = match args.double_latency_ms.as_slice() {
            &[a, b, c] => [a, b, c],
            _ => {
                return Err(BenchError::Invalid(
                    "--double-latency-ms: give STT,TTFT,TTFB (three numbers)".into(),
                ));
            }
        };
        let (s, call, provider_ms) = start_in_process(rt, workers, args.agent, latency)?;
        Ok(Target {
            url: s.url.clone(),
            server: Some(s),
            call,
            provider_ms: provider_ms.max(args.provider_latency_ms),
            process: ServerProcess::InProcess,
        })
    }

    /// What the calls dial (the chaos proxy when there is one) and how they sign: with the
    /// in-process server's token, or else `--auth-token` and `--public-url`.
    pub(super) fn dial(&self, args: &BenchArgs, chaos: Option<&Chaos>) -> Dial {
        Dial {
            url: chaos.map_or_else(|| self.url.clone(), |c| c.url.clone()),
            token: match &self.server {
                Some(s) => Some(s.token.clone()),
                None => args.auth_token.clone(),
            },
            public_url: args.public_url.clone().filter(|_| self.server.is_none()),
        }
    }

    /// Stops the in-process server, if any (its HTTP side runs on `rt`).
    pub(super) fn stop(self, rt: &Handle) {
        if let Some(s) = self.server {
            s.stop(rt);
        }
    }
}
