//! `hark`: the real-time voice-agent media engine for Twilio phone calls.

use clap::Parser;

/// hark: a real-time voice-agent media engine for Twilio Media Streams.
#[derive(Debug, Parser)]
#[command(name = "hark", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {}

fn main() {
    let cli = Cli::parse();
    if cli.command.is_none() {
        use clap::CommandFactory;
        // Printing help cannot fail in a way worth reporting.
        let _ = Cli::command().print_help();
    }
}
