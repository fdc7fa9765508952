//! `hark`: the real-time voice-agent media engine for Twilio phone calls.

use std::process::ExitCode;

use clap::Parser;
use hark_gateway::config::{Config, LogFormat};
use hark_gateway::server;
use tracing::{error, info};

/// hark: a real-time voice-agent media engine for Twilio Media Streams.
#[derive(Debug, Parser)]
#[command(name = "hark", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the server: TwiML webhook (/voice), Media Streams WebSocket (/media-stream),
    /// /healthz and /metrics. Configured from the environment and .env (see README).
    Serve,
    /// Call a hark server the way Twilio does: stream caller audio over a Media Stream, play
    /// the agent's audio on a virtual phone, report latency, barge-ins and marks.
    #[cfg(feature = "dev-tools")]
    Call(hark_gateway::simulator::CallArgs),
    /// Run the server in-process with the echo agent and call it with a bundled multi-turn
    /// real-speech session (one barge-in). No keys, no network, under a minute.
    #[cfg(feature = "dev-tools")]
    Demo {
        /// Where to write what the caller heard (8 kHz μ-law WAV).
        #[arg(long, default_value = "demo-out.wav")]
        out: std::path::PathBuf,
        /// Playback speed (1 = real time; latencies are only meaningful at 1).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print the machine-readable report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Load test: N simulated Twilio calls at real-time pacing against a hark server
    /// (in-process by default), ramped in steps; reports underruns, barge-in delay,
    /// voice-to-voice latency and the engine's share, CPU and memory per call, and the largest
    /// N meeting the service level.
    #[cfg(feature = "dev-tools")]
    Bench(hark_gateway::bench::BenchArgs),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    // A second init (e.g. in-process demo) is harmless.
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn shutdown_signal() {
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

async fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hark: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    for (name, nearest) in
        hark_gateway::config::unknown_hark_variables(std::env::vars().map(|(k, _)| k))
    {
        match nearest {
            Some(n) => tracing::warn!(variable = name, "unknown setting: did you mean {n}?"),
            None => tracing::warn!(variable = name, "unknown setting (not read by hark)"),
        }
    }
    // Every setting is checked before listening: the gateway API's too.
    let api = match hark_gateway::api::ApiState::from_lookup(|k| std::env::var(k).ok()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hark: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match hark_gateway::conns::raise_nofile_limit() {
        Ok(n) => info!(open_files = n, "RLIMIT_NOFILE raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            error!(addr = %config.addr, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(
        %addr,
        agent = config.agent.as_str(),
        public_url = config.public_url.as_deref().unwrap_or("(from Host header)"),
        signatures = config.twilio_auth_token.is_some(),
        workers = config.workers,
        "hark listening"
    );
    if config.twilio_auth_token.is_none() {
        tracing::warn!(
            "TWILIO_AUTH_TOKEN is unset: media-stream upgrades and Twilio webhooks are refused (503) unless HARK_DEV_INSECURE=no-signatures"
        );
    }
    // Calls this node left open when it crashed or was killed: closed as `ended: crashed`.
    if let Err(e) = api.recover_crashed().await {
        error!(error = %e, "cannot close the calls left open by an earlier run");
    }
    let state = match server::AppState::with_api(config, api) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot start call workers");
            return ExitCode::FAILURE;
        }
    };
    match server::serve(listener, state, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "dev-tools")]
async fn demo(out: std::path::PathBuf, speed: f64, json: bool) -> ExitCode {
    println!(
        "hark demo: starting hark serve on 127.0.0.1 (echo agent) and calling it with a 28 s real-speech session…"
    );
    match hark_gateway::demo::run(speed, Some(&out)).await {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("hark demo: {e}"),
                }
            } else {
                hark_gateway::simulator::print_table(&report);
                println!("what the caller heard: {}", out.display());
            }
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("hark demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Settings such as TWILIO_AUTH_TOKEN may come from .env for every subcommand; a malformed
    // .env is an error, not a silently half-read configuration.
    if let Err(e) = hark_gateway::config::load_dotenv() {
        eprintln!("hark: configuration error: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hark: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve => rt.block_on(serve()),
        #[cfg(feature = "dev-tools")]
        Command::Call(args) => match rt.block_on(hark_gateway::simulator::command(&args)) {
            Ok(r) if r.errors.is_empty() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("hark call: {e}");
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "dev-tools")]
        Command::Demo { out, speed, json } => rt.block_on(demo(out, speed, json)),
        #[cfg(feature = "dev-tools")]
        Command::Bench(args) => hark_gateway::bench::main(&args, rt.handle()),
    }
}
