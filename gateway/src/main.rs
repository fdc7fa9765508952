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
        tracing::warn!("TWILIO_AUTH_TOKEN is unset: X-Twilio-Signature is not checked");
    }
    let state = match server::AppState::new(config) {
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

fn main() -> ExitCode {
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
    }
}
