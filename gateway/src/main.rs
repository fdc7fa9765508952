//! `hark`: the real-time voice-agent media engine for Twilio phone calls.

use std::process::ExitCode;

use clap::Parser;
use hark_gateway::Error;
use hark_gateway::serve::{Hark, shutdown_signal};

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
    /// /healthz and /metrics. Configured from an optional TOML file with the environment and
    /// .env on top (see README, "Configuration").
    Serve {
        /// The configuration file (else $HARK_CONFIG, else ./hark.toml if it exists).
        #[arg(long, value_name = "PATH")]
        config: Option<std::path::PathBuf>,
    },
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
    ///
    /// `hark bench turns`: the turn-taking benchmark instead (VAD, end of turn and barge-in on
    /// real speech in noise, in virtual time).
    #[cfg(feature = "dev-tools")]
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        /// `turns`, or nothing for the load test.
        #[command(subcommand)]
        what: Option<BenchWhat>,
        #[command(flatten)]
        load: Box<hark_gateway::bench::BenchArgs>,
    },
}

/// What `hark bench` measures besides the load test.
#[cfg(feature = "dev-tools")]
#[derive(Debug, clap::Subcommand)]
enum BenchWhat {
    /// Turn-taking on real speech in noise: frame F1, missed onsets, end-of-turn latency,
    /// cut-offs at inner pauses, false barge-ins, backchannels, clear delay, CPU per frame;
    /// one row per VAD and condition (see README, "Turn-taking benchmark").
    Turns(hark_gateway::turns::TurnsArgs),
}

/// `hark demo`: its report as JSON or a table; exit code 1 when the call had errors.
#[cfg(feature = "dev-tools")]
async fn demo(out: std::path::PathBuf, speed: f64, json: bool) -> Result<ExitCode, Error> {
    println!(
        "hark demo: starting hark serve on 127.0.0.1 (echo agent) and calling it with a 28 s real-speech session…"
    );
    let report = hark_gateway::demo::run(speed, Some(&out)).await?;
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("hark demo: {e}"),
        }
    } else {
        hark_gateway::simulator::print_table(&report);
        println!("what the caller heard: {}", out.display());
    }
    Ok(exit_for(&report.errors))
}

/// Exit code 0 for a simulated call without errors, else 1.
#[cfg(feature = "dev-tools")]
fn exit_for(errors: &[String]) -> ExitCode {
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs one subcommand on `rt`.
fn run(command: Command, rt: &tokio::runtime::Runtime) -> Result<ExitCode, Error> {
    match command {
        // The whole configuration, every section, is read and checked once, before listening.
        Command::Serve { config } => {
            let served =
                rt.block_on(async { Hark::load(config.as_deref())?.run(shutdown_signal()).await });
            // The trace export (feature `otlp`) sends what is left and stops.
            hark_gateway::telemetry::shutdown();
            served.map(|()| ExitCode::SUCCESS)
        }
        #[cfg(feature = "dev-tools")]
        Command::Call(args) => {
            let report = rt.block_on(hark_gateway::simulator::command(&args))?;
            Ok(exit_for(&report.errors))
        }
        #[cfg(feature = "dev-tools")]
        Command::Demo { out, speed, json } => rt.block_on(demo(out, speed, json)),
        #[cfg(feature = "dev-tools")]
        Command::Bench {
            what: Some(BenchWhat::Turns(args)),
            ..
        } => Ok(hark_gateway::turns::main(&args)),
        #[cfg(feature = "dev-tools")]
        Command::Bench { what: None, load } => Ok(hark_gateway::bench::main(&load, rt.handle())),
    }
}

fn main() -> ExitCode {
    // Settings such as TWILIO_AUTH_TOKEN may come from .env for every subcommand; a malformed
    // .env is an error, not a silently half-read configuration.
    if let Err(e) = hark_gateway::config::load_dotenv() {
        let e = Error::from(e);
        eprintln!("hark: {e}");
        return ExitCode::from(e.exit_code());
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = Error::Start(e);
            eprintln!("hark: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match run(cli.command, &rt) {
        Ok(code) => code,
        Err(e) => {
            // Logs may not be set up yet (configuration errors come first): stderr, always.
            eprintln!("hark: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
