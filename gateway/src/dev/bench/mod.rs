//! `hark bench`: many simulated Twilio calls at real-time pacing against a hark server, ramped
//! in steps, each judged against a service level.
//!
//! ## A step
//! A step runs `N` call slots against the server (in this process by default, or `--url`).
//! Slot `i` starts at `ramp · i / N` plus an offset within the 20 ms frame (`frac(i · 0.618…)
//! · 20 ms`, which spreads the calls' frame phases evenly whatever `N`: the ramp alone put
//! every call of a 250-call step on one phase), then plays caller sessions back to back — the
//! bundled `fixtures/bench` sessions in turn, with fresh SIDs — until `--duration-s` has
//! passed; a call in progress always plays to its end, so every call is measured whole. Each
//! call is [`crate::simulator::run_call`] at speed 1 (real time): a 20 ms `media` frame on an
//! absolute schedule, a virtual phone ([`hark_engine::sim::Phone`]) that plays the agent's
//! audio in real time, echoes marks, and honours `clear`.
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
//!
//! ## Layout
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`BenchError`], the checks of the arguments, [`run`] (server, sessions, steps, results) and [`main`] (the printed command) |
//! | `args.rs` | the command line ([`BenchArgs`], [`BenchAgent`]) |
//! | `setup.rs` | what the calls talk to: the in-process server and its configuration, the cascade agent's double, the chaos proxy, and how calls dial and sign |
//! | `step.rs` | one step: `N` call slots on the simulator's runtime, sampling CPU, RSS and active calls meanwhile, and the sum of the calls' reports |
//! | `results.rs` | what a run reports ([`BenchResults`], [`StepResult`]), the service-level verdict, the table rows |
//! | [`sessions`] | the caller sessions played, and where the engine's endpointing fires in them |
//! | [`measure`] | CPU per thread and RSS from `/proc`, `/metrics` scrapes |
//! | [`stats`] | percentiles and CDFs |
//! | [`plot`] | the `--svg` picture |

mod args;
pub mod measure;
pub mod plot;
mod results;
pub mod sessions;
mod setup;
pub mod stats;
mod step;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::simulator;
use measure::ServerProcess;
use sessions::BenchSession;
use setup::{Chaos, Dial, Target, host_port};
use step::Ctx;

pub use args::{BenchAgent, BenchArgs};
pub use results::{
    BenchResults, Cdfs, EngineMessage, Machine, ServiceLevel, SessionInfo, StepResult,
    table_header, table_row,
};
pub use setup::{CASCADE_REPLY, CHAOS_THREAD, DOUBLE_THREAD};

/// Largest `N` a step may have (two sockets per call in process; keep below `ulimit -n`).
pub const MAX_CALLS: usize = 10_000;

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
    let threads = Threads {
        cores,
        workers: args.workers.unwrap_or(cores),
        sim: args.sim_threads.unwrap_or(cores),
    };
    let target = Target::start(args, server_rt, threads.workers)?;
    let chaos = match args
        .chaos
        .map(|seed| Chaos::start(&target.url, seed, threads.sim))
    {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            target.stop(server_rt);
            return Err(e);
        }
    };
    let dial = Arc::new(target.dial(args, chaos.as_ref()));
    let result = run_steps(args, &target, chaos.as_ref(), dial, threads, on_step);
    if let Some(c) = chaos {
        c.stop();
    }
    target.stop(server_rt);
    result
}

/// Cores of the machine and the threads a run uses.
#[derive(Debug, Clone, Copy)]
struct Threads {
    /// Cores available to this process.
    cores: usize,
    /// Call workers of the in-process server (`--workers`, default one per core).
    workers: usize,
    /// Threads of the simulator's runtime (`--sim-threads`, default one per core).
    sim: usize,
}

/// The steps of a run, against `target` (through `chaos`, if any), dialled as `dial` says.
fn run_steps(
    args: &BenchArgs,
    target: &Target,
    chaos: Option<&Chaos>,
    dial: Arc<Dial>,
    threads: Threads,
    on_step: &mut dyn FnMut(&StepResult),
) -> Result<BenchResults, BenchError> {
    let sessions = load_sessions(args, target)?;
    let sim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.sim)
        .thread_name(measure::SIM_THREAD)
        .enable_all()
        .build()?;
    let ctx = Ctx::new(args, target, &sim, dial, chaos, sessions);
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
        results::judge(&mut step, &slo);
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
        url: target.url.clone(),
        agent: args.agent,
        machine: Machine {
            cores: threads.cores,
            load_avg_before: load_before,
            load_avg_after: measure::load_avg(),
        },
        server_workers: args.url.is_none().then_some(threads.workers),
        sim_threads: threads.sim,
        duration_s: args.duration_s,
        ramp_s: args.ramp_s,
        provider_latency_ms: target.provider_ms,
        sessions: ctx.sessions.iter().map(SessionInfo::of).collect(),
        service_level: slo,
        rss_scope: match target.process {
            ServerProcess::InProcess => "process (server and simulator)",
            ServerProcess::Pid(_) => "server process",
            ServerProcess::Unknown => "unknown",
        },
        baseline_rss_mib: ctx.baseline_rss.map(results::mib),
        steps,
        largest_n_meeting_service_level: largest,
        chaos_seed: args.chaos,
    })
}

/// The sessions `--session` names (default [`sessions::DEFAULT_SESSIONS`]), with their
/// endpoints found with `target`'s call settings.
fn load_sessions(args: &BenchArgs, target: &Target) -> Result<Vec<BenchSession>, BenchError> {
    let names: Vec<String> = if args.sessions.is_empty() {
        sessions::DEFAULT_SESSIONS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.sessions.clone()
    };
    names
        .iter()
        .map(|n| BenchSession::load(n, &target.call))
        .collect()
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
}
