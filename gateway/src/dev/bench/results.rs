//! What `hark bench` reports: [`BenchResults`] (the `--json` file) with one [`StepResult`] per
//! step, the service-level verdict on a step (`judge`), and the printed table's rows.

use serde::Serialize;

use super::BenchAgent;
use super::sessions::BenchSession;
use super::stats::Summary;

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

impl SessionInfo {
    /// What the results say about `s`.
    pub(super) fn of(s: &BenchSession) -> Self {
        SessionInfo {
            name: s.name.clone(),
            duration_ms: s.duration_ms(),
            turns: s.turns(),
            barge_ins: s.barge_in_starts.len(),
        }
    }
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

/// `bytes` in MiB.
pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Sets `meets_service_level` and `misses` of `step`.
pub(super) fn judge(step: &mut StepResult, slo: &ServiceLevel) {
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

#[cfg(test)]
mod tests {
    use super::super::stats::Samples;
    use super::*;

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
