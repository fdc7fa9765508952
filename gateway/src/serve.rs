//! [`Hark`]: `hark serve` as a library, with agents of your own.
//!
//! `hark serve` is `Hark::load(file)?.run(shutdown_signal())`: read the configuration (`.env`,
//! `hark.toml` or `--config`, the environment on top), open the gateway API, bind, serve until
//! SIGINT/SIGTERM, then drain. A program of your own does the same and adds an
//! [`AgentFactory`]: each call's agent is then whatever your factory builds: an
//! [`hark_engine::Agent`] of your own, or one that wraps the configured agent (`HARK_AGENT`,
//! e.g. the cascade), which [`AgentContext::configured_agent`] builds.
//!
//! ```no_run
//! use hark_gateway::serve::{Hark, shutdown_signal};
//!
//! # async fn run() -> Result<(), hark_gateway::Error> {
//! Hark::load(None)?
//!     .agents(|cx| {
//!         // Here: wrap it, or build your own `Box<dyn Agent>`.
//!         let configured = cx.configured_agent()?;
//!         Ok(configured)
//!     })
//!     .run(shutdown_signal())
//!     .await
//! # }
//! ```
//!
//! `gateway/examples/dtmf_menu/` is a complete program: a keypad menu that hands the call over
//! to the configured agent on `1`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hark_engine::Agent;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::Error;
use crate::agents::{AgentError, AgentSettings};
use crate::api::ApiState;
use crate::config::{Config, Loaded, LogFormat};
use crate::server::{self, AppState};

/// Why an [`AgentFactory`] could not build a call's agent: any error (an [`AgentError`] from
/// [`AgentContext::configured_agent`], or one of your own). That call is refused: its WebSocket
/// closes before any audio, and the reason is logged; other calls continue.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the agent of each call, on the call's worker thread, when Twilio's media stream
/// connects (before its `start` message: the call's SIDs and custom parameters come to
/// [`Agent::on_start`]). Called once per call; shared by every call worker.
pub type AgentFactory =
    Arc<dyn Fn(&AgentContext<'_>) -> Result<Box<dyn Agent>, BuildError> + Send + Sync>;

/// The default [`AgentFactory`]: the configured agent (`HARK_AGENT` and its settings), as
/// `hark serve` runs it.
pub fn configured_agents() -> AgentFactory {
    Arc::new(|cx: &AgentContext<'_>| Ok(cx.configured_agent()?))
}

/// What is known when a call's agent is built: the server's whole [`Config`], which holds the
/// configured agent's settings.
#[derive(Debug, Clone, Copy)]
pub struct AgentContext<'a> {
    config: &'a Config,
}

impl<'a> AgentContext<'a> {
    /// The context of a server running `config` (for factories tested on their own).
    pub fn new(config: &'a Config) -> Self {
        AgentContext { config }
    }

    /// The server's configuration (every section, checked at start).
    pub fn config(&self) -> &'a Config {
        self.config
    }

    /// The configured agent's settings (`HARK_AGENT`, `[agent.*]`).
    pub fn settings(&self) -> &'a AgentSettings {
        &self.config.agent_settings
    }

    /// A new instance of the configured agent (echo, cascade, ElevenLabs, Realtime) for this
    /// call, to run as is or to wrap.
    ///
    /// # Errors
    /// [`AgentError`] when its settings are unusable (they are checked at start, so this is not
    /// expected).
    pub fn configured_agent(&self) -> Result<Box<dyn Agent>, AgentError> {
        self.config.agent_settings.build()
    }
}

/// `hark serve`, step by step: a configuration, an [`AgentFactory`] (the configured agent by
/// default), optionally an open gateway API; then [`Hark::run`] (or [`Hark::bind`] and
/// [`Bound::serve`]).
pub struct Hark {
    config: Config,
    agents: AgentFactory,
    api: Option<Arc<ApiState>>,
}

impl std::fmt::Debug for Hark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hark")
            .field("addr", &self.config.addr)
            .field("agent", &self.config.agent)
            .field("api", &self.api.is_some())
            .finish_non_exhaustive()
    }
}

impl Hark {
    /// Reads the configuration as `hark serve` does: `.env` (variables already set win), the
    /// file `file` (else `$HARK_CONFIG`, else `./hark.toml` if it exists), the environment on
    /// top; every section is checked at once. Then starts the logs (`HARK_LOG_FORMAT`,
    /// `RUST_LOG`, default `info`) and warns about every setting hark does not read, with the
    /// nearest known name.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file, the key and line or the variable (exit code 2).
    pub fn load(file: Option<&Path>) -> Result<Hark, Error> {
        crate::config::load_dotenv()?;
        let loaded = Config::load(file)?;
        init_logs(loaded.config.log_format);
        if let Some(f) = &loaded.file {
            info!(file = %f.display(), "configuration file read");
        }
        warn_unknown(&loaded);
        Ok(Hark::from_config(loaded.config))
    }

    /// A server for `config` as it is (no file, environment or logs read), with the configured
    /// agent.
    pub fn from_config(config: Config) -> Hark {
        Hark {
            config,
            agents: configured_agents(),
            api: None,
        }
    }

    /// The configuration it will serve.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Builds each call's agent with `factory` instead of the configured agent.
    pub fn agents(
        mut self,
        factory: impl Fn(&AgentContext<'_>) -> Result<Box<dyn Agent>, BuildError>
        + Send
        + Sync
        + 'static,
    ) -> Hark {
        self.agents = Arc::new(factory);
        self
    }

    /// Serves with this gateway API (e.g. one on another database) instead of opening one from
    /// the configuration's `api` section.
    pub fn api(mut self, api: Arc<ApiState>) -> Hark {
        self.api = Some(api);
        self
    }

    /// Opens the gateway API (unless given), raises the open-files limit, binds `config.addr`,
    /// closes the calls an earlier run left open (`ended: crashed`) and starts the call
    /// workers. Nothing is accepted until [`Bound::serve`].
    ///
    /// # Errors
    /// [`Error::Api`] (database, migrations, Twilio client; exit code 2), [`Error::Listen`],
    /// [`Error::Start`] (the call workers).
    pub async fn bind(self) -> Result<Bound, Error> {
        let Hark {
            config,
            agents,
            api,
        } = self;
        let api = match api {
            Some(api) => api,
            None => ApiState::new(config.api.clone()).await?,
        };
        match crate::conns::raise_nofile_limit() {
            Ok(n) => info!(open_files = n, "RLIMIT_NOFILE raised to the hard limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Listen {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(Error::Start)?;
        info!(
            %addr,
            agent = config.agent.as_str(),
            public_url = config.public_url.as_deref().unwrap_or("(from Host header)"),
            signatures = config.twilio_auth_token.is_some(),
            workers = config.workers,
            "hark listening"
        );
        start_turn_model(&config);
        if config.twilio_auth_token.is_none() {
            tracing::warn!(
                "TWILIO_AUTH_TOKEN is unset: media-stream upgrades and Twilio webhooks are refused (503) unless HARK_DEV_INSECURE=no-signatures"
            );
        }
        // Calls this node left open when it crashed or was killed: closed as `ended: crashed`.
        if let Err(e) = api.recover_crashed().await {
            error!(error = %e, "cannot close the calls left open by an earlier run");
        }
        let base = crate::console::link_base(config.public_url.as_deref(), addr);
        let state = AppState::with_agents(config, Some(api), agents).map_err(Error::Start)?;
        // The browser console's one-time link: on stderr for the person at the terminal, not
        // in the logs (a log pipeline would keep the secret).
        if let Some(link) = state.console().issue_link(&base) {
            eprintln!(
                "hark console (browser phone and calls; one-time link, opens a session): {link}"
            );
        }
        Ok(Bound {
            listener,
            addr,
            state,
        })
    }

    /// [`Hark::bind`], then [`Bound::serve`] until `shutdown` resolves (e.g.
    /// [`shutdown_signal`]).
    ///
    /// # Errors
    /// As [`Hark::bind`] and [`Bound::serve`].
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        self.bind().await?.serve(shutdown).await
    }
}

/// A bound server, not yet accepting.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
}

impl Bound {
    /// Where it listens (the port chosen when `config.addr` has port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its state: configuration, live calls, connections.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains: see [`server::serve`].
    ///
    /// # Errors
    /// [`Error::Serve`] when the accept loop fails.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        // Recordings older than HARK_RECORD_RETENTION_DAYS, deleted hourly while serving.
        let sweeper = crate::recording::start_sweeper(&self.state.config.recording);
        let served = server::serve(self.listener, self.state, shutdown).await;
        if let Some(s) = sweeper {
            s.abort();
        }
        // The last calls' spans (feature `otlp`; nothing to do otherwise).
        let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
        served.map_err(Error::Serve)
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, `hark serve`'s signal to stop taking calls.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    info!("shutdown requested: no new calls, waiting for live calls");
}

/// Starts the logs: `RUST_LOG` (default `info`), as text (ANSI colours on a terminal) or JSON;
/// and, built with the feature `otlp`, OpenTelemetry traces when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (see [`crate::telemetry`]). A second call
/// changes nothing.
pub fn init_logs(format: LogFormat) {
    let otlp = crate::telemetry::OtlpSettings::from_env();
    match crate::telemetry::init(format, otlp.as_ref()) {
        Ok(()) => {
            if let Some(s) = &otlp {
                info!(
                    endpoint = s.traces_endpoint,
                    service = s.service_name,
                    "sending traces over OTLP"
                );
            }
        }
        // A second init (e.g. in-process demo) is harmless.
        Err(crate::telemetry::TelemetryError::AlreadyInstalled) => {}
        Err(e) => tracing::warn!(error = %e, "no traces"),
    }
}

/// Logs the names in the configuration that hark does not read, with the nearest known one.
fn warn_unknown(loaded: &Loaded) {
    for (name, nearest) in &loaded.unknown_variables {
        match nearest {
            Some(n) => tracing::warn!(variable = name, "unknown setting: did you mean {n}?"),
            None => tracing::warn!(variable = name, "unknown setting (not read by hark)"),
        }
    }
    let file = loaded
        .file
        .as_deref()
        .map(|f| f.display().to_string())
        .unwrap_or_default();
    for u in &loaded.unknown_keys {
        match u.nearest {
            Some(n) => tracing::warn!(
                file,
                line = u.line,
                key = u.key,
                "unknown key in the configuration file: did you mean {n}?"
            ),
            None => tracing::warn!(
                file,
                line = u.line,
                key = u.key,
                "unknown key in the configuration file (not read by hark)"
            ),
        }
    }
}

/// Sizes the end-of-turn model's pool (`HARK_TURN_MODEL_THREADS`) and, when calls use the model
/// by default (`HARK_END_OF_TURN=smart-turn`), loads it now rather than on the first call's
/// first pause (a call may still turn it on with `hark_end_of_turn`: it loads then).
fn start_turn_model(config: &Config) {
    use hark_engine::io::turn_model::{TurnModelPoolConfig, configure};
    let threads = config.turn_model_threads;
    configure(TurnModelPoolConfig {
        threads,
        queue: 2 * threads,
    });
    if config.call.turn.end_of_turn == hark_engine::config::EndOfTurn::SmartTurn {
        let began = std::time::Instant::now();
        match hark_engine::smart_turn::SmartTurn::shared() {
            Ok(_) => info!(
                threads,
                load_ms = began.elapsed().as_millis() as u64,
                "end-of-turn model loaded"
            ),
            Err(e) => error!(error = %e, "end-of-turn model failed to load: silence rule only"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_factory_builds_the_configured_agent() {
        let config = Config::default();
        let agent = configured_agents()(&AgentContext::new(&config)).unwrap();
        assert_eq!(agent.name(), "echo");
    }

    #[test]
    fn a_factory_can_refuse_with_its_own_error() {
        let config = Config::default();
        let hark = Hark::from_config(config)
            .agents(|_cx: &AgentContext<'_>| Err(BuildError::from("no agent for you")));
        let e = match (hark.agents)(&AgentContext::new(&hark.config)) {
            Err(e) => e,
            Ok(a) => panic!("built {}", a.name()),
        };
        assert_eq!(e.to_string(), "no agent for you");
    }
}
