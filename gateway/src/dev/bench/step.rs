//! One step of the bench: `N` call slots on the simulator's runtime, each playing sessions back
//! to back ([`slot`]); meanwhile a tick samples CPU, RSS and the calls active; each call's
//! report is summed into [`Acc`], and the step's [`StepResult`] is built from the sums.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::BenchArgs;
use super::measure::{self, CpuSample, Scrape, ServerProcess};
use super::results::{Cdfs, EngineMessage, StepResult, mib};
use super::sessions::BenchSession;
use super::setup::{Chaos, Dial, Target, host_port};
use super::stats::Samples;
use crate::simulator::{self, CallSetup, FRAME_MS, Report, SimError};

/// How often a step samples CPU, memory and active calls.
const TICK: Duration = Duration::from_millis(250);
/// Errors kept verbatim per step (the rest are counted).
const ERROR_SAMPLES: usize = 5;

/// What every step shares.
pub(super) struct Ctx<'a> {
    sim: &'a Runtime,
    /// What the calls dial (the chaos proxy with `--chaos`) and how they sign.
    dial: Arc<Dial>,
    chaos: Option<&'a Chaos>,
    pub(super) sessions: Arc<Vec<BenchSession>>,
    process: ServerProcess,
    /// `host:port` to scrape `/metrics` from; `None`: this process's recorder.
    metrics_from: Option<String>,
    /// Whose RSS: `Some(None)` this process, `Some(Some(pid))` another, `None` unknown.
    rss_pid: Option<Option<u32>>,
    /// Idle RSS before the first step, bytes.
    pub(super) baseline_rss: Option<u64>,
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

    /// Counts the server's WebSocket errors and malformed messages during the step (from the
    /// metrics `delta`) as errors; returns them.
    fn server_errors(&mut self, delta: Option<&Scrape>) -> (u64, u64) {
        let (ws_errors, malformed) =
            delta.map_or((0, 0), |d| (d.ws_errors as u64, d.malformed as u64));
        if ws_errors + malformed > 0 {
            self.errors += ws_errors + malformed;
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(format!(
                    "server: {ws_errors} WebSocket errors, {malformed} malformed messages"
                ));
            }
        }
        (ws_errors, malformed)
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

impl<'a> Ctx<'a> {
    /// The context of a run's steps: calls on `sim` dialling as `dial` says (through `chaos`,
    /// if any), playing `sessions`; RSS is measured from here on against the RSS now.
    pub(super) fn new(
        args: &'a BenchArgs,
        target: &Target,
        sim: &'a Runtime,
        dial: Arc<Dial>,
        chaos: Option<&'a Chaos>,
        sessions: Vec<BenchSession>,
    ) -> Self {
        let rss_pid = match target.process {
            ServerProcess::Pid(p) => Some(Some(p)),
            ServerProcess::InProcess => Some(None),
            ServerProcess::Unknown => None,
        };
        Ctx {
            sim,
            dial,
            chaos,
            sessions: Arc::new(sessions),
            process: target.process,
            metrics_from: if args.url.is_some() {
                host_port(&target.url).map(str::to_string)
            } else {
                None
            },
            rss_pid,
            baseline_rss: rss_pid.and_then(measure::rss_bytes),
            provider_ms: target.provider_ms,
            args,
        }
    }
}

/// Slot `i`'s offset within a 20 ms frame: `frac(i · φ) · 20 ms` (φ the golden ratio's
/// conjugate), which spreads the calls' frame phases evenly over the frame for any number of
/// calls. The ramp alone does not: with a 5 s ramp and 250, 500 or 1,000 calls the starts are
/// 20, 10 or 5 ms apart, so every call's frames would fall due at one, two or four instants
/// per 20 ms, a burst no set of real calls (which start at random times) sends.
fn frame_phase(i: usize) -> Duration {
    const PHI_CONJUGATE: f64 = 0.618_033_988_749_894_9;
    Duration::from_millis(crate::simulator::FRAME_MS).mul_f64((i as f64 * PHI_CONJUGATE).fract())
}

/// When a step starts its calls, stops starting them, and gives up.
struct Clock {
    /// The step's start.
    t0: Instant,
    /// Slot `i` of `n` starts at `t0 + ramp · i / n + frame_phase(i)`.
    ramp: Duration,
    /// No call starts after it (`t0 + --duration-s`).
    deadline: Instant,
    /// Calls still running at `t0 + hard_limit` are aborted.
    hard_limit: Duration,
    /// Whether the steady window (all calls up, from the end of the ramp to `deadline`) is at
    /// least 1 s long; if not (smoke runs), the whole step is the window.
    windowed: bool,
    /// Start of the window CPU is measured over.
    window_start: Instant,
    /// The step's expected length, ms (for the progress bar).
    expected_ms: u64,
}

/// The calls of a running step.
struct Slots {
    set: tokio::task::JoinSet<()>,
    /// Each call's report, with the index of its session.
    rx: mpsc::UnboundedReceiver<(usize, Result<Report, SimError>)>,
    /// Calls in progress.
    active: Arc<AtomicUsize>,
}

/// What the tick samples while a step runs.
#[derive(Default)]
struct Sampled {
    /// CPU at the start of the window …
    cpu_a: Option<CpuSample>,
    /// … and at its end.
    cpu_b: Option<CpuSample>,
    /// Sum of the calls active at each tick in the window, and the ticks.
    active_sum: f64,
    active_n: u64,
    /// Peak RSS, bytes.
    rss_peak: Option<u64>,
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
    pub(super) fn step(&self, n: usize) -> StepResult {
        let before = self.scrape();
        let chaos_before = self.chaos.and_then(Chaos::stats);
        let load_start = measure::load_avg();
        let clock = self.clock();
        let mut slots = self.spawn_slots(n, &clock);
        let pb = progress_bar(n, clock.expected_ms, self.args.quiet);
        let mut acc = Acc::default();
        let mut sampled = Sampled {
            rss_peak: self.rss(),
            ..Sampled::default()
        };
        let timed_out =
            self.sim
                .block_on(self.watch(&mut slots, &clock, &pb, &mut acc, &mut sampled));
        if sampled.cpu_b.is_none() {
            sampled.cpu_b = measure::cpu(self.process);
        }
        self.sim.block_on(slots.set.shutdown());
        pb.finish_and_clear();
        let wall = clock.t0.elapsed();
        if timed_out {
            acc.error(format!(
                "the step did not finish within {:?}: {} calls aborted",
                clock.hard_limit,
                slots.active.load(Ordering::Relaxed)
            ));
        }
        let after = self.scrape();
        let delta = before.zip(after).map(|(b, a)| b.delta(&a));
        let chaos = self
            .chaos
            .and_then(Chaos::stats)
            .map(|a| chaos_before.map_or(a, |b| a.since(&b)));
        let mut result = self.result(n, acc, &sampled, delta.as_ref());
        result.wall_s = wall.as_secs_f64();
        result.load_avg_start = load_start;
        result.chaos = chaos;
        result
    }

    /// The clock of a step starting now.
    fn clock(&self) -> Clock {
        let args = self.args;
        let duration = Duration::from_secs_f64(args.duration_s);
        let ramp = Duration::from_secs_f64(args.ramp_s.min(args.duration_s));
        let longest = self
            .sessions
            .iter()
            .map(BenchSession::duration_ms)
            .max()
            .unwrap_or(0);
        let t0 = Instant::now();
        // The steady window: all N calls up (after the ramp) until calls stop being started.
        // Too short a step for that (smoke runs): the whole step.
        let windowed = duration >= ramp + Duration::from_secs(1);
        Clock {
            t0,
            ramp,
            deadline: t0 + duration,
            // Bounded: the last calls start before `duration` and last at most `longest` plus
            // the simulator's connect (10 s) and close (5 s + 1 s) timeouts; a step never runs
            // longer.
            hard_limit: duration + Duration::from_millis(longest) + Duration::from_secs(45),
            windowed,
            window_start: if windowed { t0 + ramp } else { t0 },
            expected_ms: (duration.as_millis() as u64 + longest).max(1),
        }
    }

    /// Spawns the `n` call slots of a step on the simulator's runtime.
    fn spawn_slots(&self, n: usize, clock: &Clock) -> Slots {
        let active = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let start_at = clock.t0 + clock.ramp.mul_f64(i as f64 / n as f64) + frame_phase(i);
            set.spawn_on(
                slot(
                    i,
                    start_at,
                    clock.deadline,
                    self.dial.clone(),
                    self.sessions.clone(),
                    tx.clone(),
                    active.clone(),
                ),
                self.sim.handle(),
            );
        }
        Slots { set, rx, active }
    }

    /// Sums the calls' reports into `acc` as they come, sampling at every [`TICK`], until every
    /// slot has ended (`false`) or the hard limit passed and the calls were aborted (`true`).
    async fn watch(
        &self,
        slots: &mut Slots,
        clock: &Clock,
        pb: &ProgressBar,
        acc: &mut Acc,
        sampled: &mut Sampled,
    ) -> bool {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let limit = tokio::time::sleep_until((clock.t0 + clock.hard_limit).into());
        tokio::pin!(limit);
        loop {
            tokio::select! {
                msg = slots.rx.recv() => match msg {
                    Some((si, r)) => acc.add(&self.sessions[si], r, self.provider_ms),
                    None => return false,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    let active = slots.active.load(Ordering::Relaxed);
                    self.sample(sampled, clock, now, active);
                    pb.set_position((now - clock.t0).as_millis() as u64);
                    pb.set_message(format!(
                        "{active} active, {} calls done, {} errors",
                        acc.completed + acc.connect_failures,
                        acc.errors
                    ));
                }
                () = &mut limit => {
                    slots.set.abort_all();
                    return true;
                }
            }
        }
    }

    /// One tick's samples: CPU at the window's edges, the calls `active` within it, RSS.
    fn sample(&self, s: &mut Sampled, clock: &Clock, now: Instant, active: usize) {
        if s.cpu_a.is_none() && now >= clock.window_start {
            s.cpu_a = measure::cpu(self.process);
        }
        let in_window = s.cpu_a.is_some() && s.cpu_b.is_none();
        if clock.windowed && in_window && now >= clock.deadline {
            s.cpu_b = measure::cpu(self.process);
        } else if in_window {
            s.active_sum += active as f64;
            s.active_n += 1;
        }
        if let Some(r) = self.rss() {
            s.rss_peak = Some(s.rss_peak.map_or(r, |p| p.max(r)));
        }
    }

    /// The result of a step of `n` slots from its sums, samples and the server's metrics
    /// (`delta`: what changed during the step). Wall time, load and chaos stats are left for
    /// the caller; not yet judged.
    fn result(
        &self,
        n: usize,
        mut acc: Acc,
        sampled: &Sampled,
        delta: Option<&Scrape>,
    ) -> StepResult {
        let (server_pct, http_pct, client_pct, other_pct, others_pct, window_s) =
            match (&sampled.cpu_a, &sampled.cpu_b) {
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
        let avg_active = if sampled.active_n > 0 {
            sampled.active_sum / sampled.active_n as f64
        } else {
            0.0
        };
        let per_call = |p: Option<f64>| p.filter(|_| avg_active >= 1.0).map(|p| p / avg_active);
        let server_per_call = per_call(server_pct);
        let (server_ws_errors, server_malformed) = acc.server_errors(delta);
        let engine_message = delta.and_then(|d| {
            (d.message_count > 0.0).then(|| EngineMessage {
                samples: d.message_count as u64,
                mean_us: d.message_sum / d.message_count * 1e6,
                p50_le_us: d.message_quantile_le(0.5).map(|s| s * 1e6),
                p99_le_us: d.message_quantile_le(0.99).map(|s| s * 1e6),
            })
        });
        let rss_per_call = sampled
            .rss_peak
            .zip(self.baseline_rss)
            .map(|(p, b)| p.saturating_sub(b) as f64 / 1024.0 / n as f64);
        StepResult {
            calls: n,
            calls_completed: acc.completed,
            connect_failures: acc.connect_failures,
            wall_s: 0.0,
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
            rss_peak_mib: sampled.rss_peak.map(mib),
            rss_per_call_kib: rss_per_call,
            engine_message,
            server_ws_errors,
            server_malformed,
            load_avg_start: None,
            chaos: None,
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

/// The progress bar of a step of `n` calls expected to last `expected_ms` (hidden if `quiet`).
fn progress_bar(n: usize, expected_ms: u64, quiet: bool) -> ProgressBar {
    let pb = if quiet {
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
    pb
}
