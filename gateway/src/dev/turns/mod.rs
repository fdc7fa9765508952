//! `hark bench turns`: the turn-taking benchmark. Real speech from `fixtures/turns` (annotated
//! caller turns, sentences with inner pauses, and backchannels, coughs, clicks and real
//! barge-ins while the agent talks), mixed with noise (babble, a few talkers, a café, pink,
//! brown, telephone line hiss) at 20, 10, 5 and 0 dB SNR and sent through μ-law, is played to a
//! real [`hark_engine::Call`] in virtual time, once per VAD; every row is one VAD in one
//! condition.
//!
//! Per row: frame F1 of the VAD's verdicts; missed onsets; end-of-turn latency p50/p90 and the
//! share over 1.5 s; utterances cut in the middle; cut-offs at 400/600/800 ms inner pauses;
//! false barge-ins per minute of agent speech over noise; how often backchannels and
//! coughs/clicks interrupt the agent; real barge-ins missed and their `clear` delay p50/p90;
//! and the call's CPU per 20 ms frame. Definitions: [`score`]; mixing and SNR: [`corpus`].
//!
//! No network, no sockets, no real time: a full run is CPU-bound and deterministic (the same
//! corpus and VADs give the same numbers, but for the CPU column).

pub mod corpus;
pub mod drive;
pub mod score;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use hark_engine::CallConfig;
use hark_engine::config::VadKind;

use corpus::{Condition, Corpus, EventKind};
use drive::{Listener, Talker};

/// `hark bench turns`: the command-line arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TurnsArgs {
    /// The corpus folder (`scenes.json` and the WAV files it names).
    #[arg(long, value_name = "DIR", default_value = "fixtures/turns")]
    pub corpus: PathBuf,
    /// VADs to compare, comma-separated: `webrtc` (webrtc-vad behind the noise gate), `silero`
    /// (Silero on every window), `hybrid` (level stage, Silero when unsure, foreground gate).
    #[arg(
        long,
        value_name = "NAME,…",
        value_delimiter = ',',
        default_value = "webrtc,silero,hybrid"
    )]
    pub vad: Vec<String>,
    /// Noises, comma-separated (names in the corpus), or `all`.
    #[arg(
        long,
        value_name = "NAME,…",
        value_delimiter = ',',
        default_value = "all"
    )]
    pub noise: Vec<String>,
    /// SNRs in dB, comma-separated.
    #[arg(
        long,
        value_name = "DB,…",
        value_delimiter = ',',
        default_value = "20,10,5,0"
    )]
    pub snr: Vec<f64>,
    /// Leave out the clean condition.
    #[arg(long)]
    pub no_clean: bool,
    /// Print the rows as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Per-call parameters for every run, as a call's TwiML would give them
    /// (`hark_min_interruption_ms=60`, …; see README "Per call"), comma-separated.
    #[arg(long = "param", value_name = "NAME=VALUE", value_delimiter = ',')]
    pub params: Vec<String>,
    /// The agent's word check (the cascade's, on by default): a short turn over the held agent
    /// is judged by its words, from an "STT" that hears the annotated words and answers in this
    /// many ms of virtual time (coughs, clicks and noise are heard as words that are no
    /// backchannel). `0`: no word check, as for agents without one (the duration rule).
    #[arg(long, value_name = "MS", default_value_t = drive::DEFAULT_STT_MS)]
    pub stt_ms: u64,
    /// Worker threads (each runs whole conditions).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// One VAD in one condition.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The VAD.
    pub vad: String,
    /// `clean` or `<noise> <snr> dB`.
    pub condition: String,
    /// Frame F1 over the `turns` and `pauses` scenes.
    pub f1: f64,
    /// The frame counts behind `f1` (precision and recall follow from them).
    pub frames: score::Frames,
    /// Caller turns scored.
    pub utterances: usize,
    /// See [`score`].
    pub missed_onsets: usize,
    /// See [`score`].
    pub never_heard: usize,
    /// End-of-turn latency p50, ms (`None`: over half never ended).
    pub eot_p50_ms: Option<u64>,
    /// p90, ms.
    pub eot_p90_ms: Option<u64>,
    /// Share of turns ending more than 1.5 s after the speech, %.
    pub eot_over_1500_pct: f64,
    /// Utterances cut in the middle (`turns`).
    pub cut_offs: usize,
    /// `(pause_ms, cut, sentences)`.
    pub pause_cuts: Vec<(u64, usize, usize)>,
    /// False barge-ins per minute of agent speech over noise.
    pub false_barge_ins_per_min: f64,
    /// Backchannels that interrupted / backchannels while the agent spoke.
    pub backchannels: (usize, usize),
    /// Backchannels that made a `clear` (held, or interrupted).
    pub backchannels_held: usize,
    /// Coughs and clicks that interrupted / coughs and clicks while the agent spoke.
    pub coughs_clicks: (usize, usize),
    /// Real barge-ins that interrupted / real barge-ins while the agent spoke.
    pub barge_ins: (usize, usize),
    /// `clear` delay of real barge-ins, p50 and p90, ms, from the annotated start of speech.
    pub clear_p50_ms: Option<u64>,
    /// See [`Row::clear_p50_ms`].
    pub clear_p90_ms: Option<u64>,
    /// The call's CPU (wall time inside the call, one thread) per 20 ms frame, µs.
    pub us_per_frame: f64,
    /// End-of-turn model checks per minute of call audio (`hark_end_of_turn=smart-turn`; 0
    /// with the silence rule).
    pub model_checks_per_min: f64,
    /// Wall time of one model check, ms (one thread; `None` without checks).
    pub model_ms_per_check: Option<f64>,
}

/// The call configuration for a VAD name (`webrtc`, `silero`, `hybrid`; the rest of the
/// configuration is the default). Errors: an unknown name.
pub fn config_for(vad: &str) -> Result<CallConfig, String> {
    let kind = VadKind::from_name(vad)
        .ok_or_else(|| format!("unknown VAD {vad:?} (known: webrtc, silero, hybrid)"))?;
    let mut cfg = CallConfig::default();
    cfg.vad.kind = kind;
    Ok(cfg)
}

/// Runs the three scenes in one condition with one VAD (the default configuration otherwise,
/// the agent's word check answering in [`drive::DEFAULT_STT_MS`]) and scores them.
pub fn run_condition(corpus: &Corpus, vad: &str, condition: &Condition) -> Result<Row, String> {
    run_config(
        corpus,
        vad,
        config_for(vad)?,
        condition,
        drive::DEFAULT_STT_MS,
    )
}

/// [`run_condition`] with a whole call configuration and the word check's latency `stt_ms`
/// (0: the agent checks no words); `vad` labels the row.
pub fn run_config(
    corpus: &Corpus,
    vad: &str,
    cfg: CallConfig,
    condition: &Condition,
    stt_ms: u64,
) -> Result<Row, String> {
    let level = corpus.annotation.active_level_dbfs;
    let noise = match &condition.noise {
        Some(n) => Some(corpus.noise(n).ok_or_else(|| format!("no noise {n:?}"))?),
        None => None,
    };
    let name = condition.noise.as_deref().unwrap_or("");
    let mix = |scene: &str, pcm: &[i16]| {
        let offset = noise.map_or(0, |n| corpus::offset_for(scene, name, n.len()));
        corpus::mix(pcm, noise, condition.snr_db, level, offset)
    };
    let scenes = &corpus.annotation.scenes;
    let turns_audio = mix("turns", &corpus.turns);
    let pauses_audio = mix("pauses", &corpus.pauses);
    let agent_audio = mix("agent", &corpus.agent);

    let (listener, turns_voiced) = Listener::new();
    let t = drive::run(cfg, Box::new(listener), &turns_audio)?;
    let (listener, pauses_voiced) = Listener::new();
    let p = drive::run(cfg, Box::new(listener), &pauses_audio)?;
    let mut frames = score::Frames::default();
    frames.add(&turns_voiced.borrow(), &scenes.turns.speech);
    frames.add(&pauses_voiced.borrow(), &scenes.pauses.speech);
    let talker = if stt_ms > 0 {
        Talker::with_words(&scenes.agent.events, Duration::from_millis(stt_ms))
    } else {
        Talker::new()
    };
    let a = drive::run(cfg, Box::new(talker), &agent_audio)?;
    let busy: Duration = t.busy + p.busy + a.busy;
    let n_frames = t.frames + p.frames + a.frames;
    let checks = t.model_checks + p.model_checks + a.model_checks;
    let model_busy = t.model_busy + p.model_busy + a.model_busy;

    let ts = score::turns(&scenes.turns, &t.events);
    let ps = score::pauses(&scenes.pauses, &p.events);
    let ag = score::agent(&scenes.agent, &a.events);
    let kind = |k: EventKind| {
        ag.by_kind
            .iter()
            .filter(|(kk, _, _)| *kk == k)
            .fold((0, 0), |acc, (_, h, n)| (acc.0 + h, acc.1 + n))
    };
    let cc = kind(EventKind::Cough);
    let ck = kind(EventKind::Click);
    Ok(Row {
        vad: vad.to_string(),
        condition: condition.label(),
        f1: frames.f1(),
        frames,
        utterances: ts.utterances,
        missed_onsets: ts.missed_onsets,
        never_heard: ts.never_heard,
        eot_p50_ms: score::percentile(&ts.eot_ms, 50.0),
        eot_p90_ms: score::percentile(&ts.eot_ms, 90.0),
        eot_over_1500_pct: 100.0 * score::over(&ts.eot_ms, 1_500) as f64
            / ts.eot_ms.len().max(1) as f64,
        cut_offs: ts.cut_offs,
        pause_cuts: ps.by_pause,
        false_barge_ins_per_min: if ag.quiet_min > 0.0 {
            ag.false_barge_ins as f64 / ag.quiet_min
        } else {
            0.0
        },
        backchannels: kind(EventKind::Backchannel),
        backchannels_held: ag
            .held_by_kind
            .iter()
            .filter(|(k, _)| *k == EventKind::Backchannel)
            .map(|(_, h)| h)
            .sum(),
        coughs_clicks: (cc.0 + ck.0, cc.1 + ck.1),
        barge_ins: kind(EventKind::BargeIn),
        clear_p50_ms: score::percentile(&ag.clear_ms, 50.0),
        clear_p90_ms: score::percentile(&ag.clear_ms, 90.0),
        us_per_frame: busy.as_secs_f64() * 1e6 / n_frames.max(1) as f64,
        model_checks_per_min: checks as f64 / (n_frames as f64 * 0.02 / 60.0).max(1e-9),
        model_ms_per_check: (checks > 0).then(|| model_busy.as_secs_f64() * 1e3 / checks as f64),
    })
}

/// `cfg` with the `--param`s applied. Errors: a parameter that is not `name=value`, or one
/// hark refuses.
pub fn with_args(cfg: CallConfig, args: &TurnsArgs) -> Result<CallConfig, String> {
    let mut params = Vec::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--param {p:?}: want name=value"))?;
        params.push((k.trim().to_string(), v.trim().to_string()));
    }
    let (cfg, errors) = cfg.with_parameters(&params);
    match errors.first() {
        Some(e) => Err(format!("--param: {e}")),
        None => Ok(cfg),
    }
}

/// The conditions `args` asks for, in order: clean first, then each noise at each SNR.
pub fn conditions(args: &TurnsArgs, corpus: &Corpus) -> Result<Vec<Condition>, String> {
    let names: Vec<String> = if args.noise.iter().any(|n| n == "all") {
        corpus.noises.iter().map(|(n, _)| n.clone()).collect()
    } else {
        for n in &args.noise {
            if corpus.noise(n).is_none() {
                return Err(format!("no noise {n:?} in {}", corpus.dir.display()));
            }
        }
        args.noise.clone()
    };
    let mut out = Vec::new();
    if !args.no_clean {
        out.push(Condition {
            noise: None,
            snr_db: f64::INFINITY,
        });
    }
    for n in names {
        for &snr in &args.snr {
            out.push(Condition {
                noise: Some(n.clone()),
                snr_db: snr,
            });
        }
    }
    Ok(out)
}

/// Runs every (VAD, condition) pair on `threads` threads; rows in (VAD, condition) order.
pub fn run_all(
    corpus: &Corpus,
    vads: &[String],
    conds: &[Condition],
    args: &TurnsArgs,
) -> Result<Vec<Row>, String> {
    let threads = args.threads;
    let jobs: Vec<(usize, &String, &Condition)> = vads
        .iter()
        .flat_map(|v| conds.iter().map(move |c| (v, c)))
        .enumerate()
        .map(|(i, (v, c))| (i, v, c))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(idx, vad, cond)) = jobs.get(i) else {
                        break;
                    };
                    let row = config_for(vad)
                        .and_then(|cfg| with_args(cfg, args))
                        .and_then(|cfg| run_config(corpus, vad, cfg, cond, args.stt_ms));
                    if let Ok(mut r) = results.lock() {
                        r.push((idx, row));
                    }
                }
            });
        }
    });
    let mut rows = results.into_inner().map_err(|e| e.to_string())?;
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

fn ms(v: Option<u64>) -> String {
    v.map_or("∞".into(), |x| x.to_string())
}

fn ratio((a, b): (usize, usize)) -> String {
    format!("{a}/{b}")
}

/// The rows as a text table.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:<14} {:>5} {:>7} {:>6} {:>6} {:>6} {:>5} {:>14} {:>6} {:>6} {:>4} {:>6} {:>6} {:>5} {:>5} {:>6} {:>7}",
        "vad",
        "condition",
        "F1",
        "missed",
        "eot50",
        "eot90",
        ">1.5s%",
        "cut",
        "pause 4/6/8",
        "fb/min",
        "bc",
        "held",
        "cough",
        "barge",
        "clr50",
        "clr90",
        "µs/fr",
        "chk/min"
    );
    for r in rows {
        let pauses: Vec<String> = r
            .pause_cuts
            .iter()
            .map(|(_, c, n)| format!("{c}/{n}"))
            .collect();
        let _ = writeln!(
            s,
            "{:<8} {:<14} {:>5.2} {:>7} {:>6} {:>6} {:>6.0} {:>5} {:>14} {:>6.1} {:>6} {:>4} {:>6} {:>6} {:>5} {:>5} {:>6.1} {:>7.1}",
            r.vad,
            r.condition,
            r.f1,
            format!("{}/{}", r.missed_onsets, r.utterances),
            ms(r.eot_p50_ms),
            ms(r.eot_p90_ms),
            r.eot_over_1500_pct,
            r.cut_offs,
            pauses.join(" "),
            r.false_barge_ins_per_min,
            ratio(r.backchannels),
            r.backchannels_held,
            ratio(r.coughs_clicks),
            ratio(r.barge_ins),
            ms(r.clear_p50_ms),
            ms(r.clear_p90_ms),
            r.us_per_frame,
            r.model_checks_per_min
        );
    }
    s
}

/// `hark bench turns`: loads the corpus, runs, prints. Exit code 1 on an error (a bad corpus or
/// an unknown VAD), else 0.
pub fn main(args: &TurnsArgs) -> ExitCode {
    let result = Corpus::load(&args.corpus).and_then(|corpus| {
        for v in &args.vad {
            with_args(config_for(v)?, args)?;
        }
        let conds = conditions(args, &corpus)?;
        run_all(&corpus, &args.vad, &conds, args)
    });
    match result {
        Ok(rows) if args.json => {
            match serde_json::to_string_pretty(&rows) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("hark bench turns: {e}"),
            }
            ExitCode::SUCCESS
        }
        Ok(rows) => {
            print!("{}", table(&rows));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hark bench turns: {e}");
            ExitCode::from(1)
        }
    }
}
