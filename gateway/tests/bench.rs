//! `hark bench` smoke run: a few calls of the 5 s `short` session (one turn, one barge-in) at
//! real time against the in-process server, two steps (1 and 3 calls), with the JSON and the
//! picture written.
//! Then the same with the cascade agent against the OpenAI-compatible double. Bounded: every
//! call ends with its session (≈ 5 s), a step cannot outlive its hard limit.

use clap::Parser;
use hark_gateway::bench::{self, BenchArgs, BenchResults};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(calls: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "bench",
        "--calls",
        calls,
        "--duration-s",
        "1",
        "--ramp-s",
        "0.5",
        "--session",
        "short",
        "--quiet",
        "--keep-going",
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).bench
}

#[test]
fn smoke_run_measures_every_step_and_writes_json_and_svg() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("hark-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let a = args("1,3", &[]);
    let mut rows = Vec::new();
    let r: BenchResults = bench::run(&a, rt.handle(), &mut |s| rows.push(bench::table_row(s)))
        .expect("the bench runs");
    eprintln!("{}\n{}", bench::table_header(), rows.join("\n"));

    assert_eq!(r.mode, "in-process");
    assert_eq!(r.steps.len(), 2, "--keep-going runs every step");
    assert_eq!(rows.len(), 2);
    for s in &r.steps {
        // Every slot played one call (a call outlasts the step's 1 s), all of it.
        assert_eq!(s.calls_completed, s.calls as u64, "{:?}", s.error_samples);
        assert_eq!(s.connect_failures, 0);
        assert_eq!(s.errors, 0, "{:?}", s.error_samples);
        assert_eq!(s.turns, 2 * s.calls as u64);
        assert_eq!(s.unanswered, 0);
        // The annotated barge-in got its clear, within budget even on a busy machine.
        assert_eq!(s.barge_ins_expected, s.calls as u64);
        assert_eq!(s.barge_ins_missed, 0);
        assert_eq!(s.spurious_clears, 0);
        let b = s.barge_in_ms.p99.expect("a delay per barge-in");
        assert!((0.0..=150.0).contains(&b), "barge-in p99 {b} ms");
        // Echo answers stop_ms (600) after the VAD's end of speech; its share is small.
        let v = s.voice_to_voice_ms.p50.expect("answered");
        assert!((500.0..=800.0).contains(&v), "voice-to-voice p50 {v} ms");
        let e = s.engine_share_ms.p50.expect("answered");
        assert!((0.0..=20.0).contains(&e), "engine share p50 {e} ms");
        // Real time: ≈ 5.1 s of caller audio per call.
        assert_eq!(s.inbound_frames, s.calls as u64 * 256);
        assert!(s.wall_s >= 5.0 && s.wall_s < 30.0, "{} s", s.wall_s);
        assert_eq!(s.cdf.voice_to_voice_ms.len(), 101);
        if cfg!(target_os = "linux") {
            assert!(s.server_cpu_pct.is_some_and(|c| c > 0.0));
            assert!(s.client_cpu_pct.is_some_and(|c| c > 0.0));
            assert!(s.rss_peak_mib.is_some());
            let m = s.engine_message.expect("the server timed some messages");
            assert!(m.samples > 0 && m.mean_us > 0.0);
        }
    }

    // What --json and --svg write.
    std::fs::write(&json, serde_json::to_string_pretty(&r).unwrap()).unwrap();
    bench::plot::write_svg(&r, &svg).expect("the picture is drawn");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("--json is JSON");
    assert_eq!(v["steps"][1]["calls"], 3);
    assert!(v["steps"][0]["voice_to_voice_ms"]["p99"].is_number());
    assert_eq!(v["sessions"][0]["name"], "short");
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(
        picture.starts_with("<svg"),
        "{}",
        &picture[..50.min(picture.len())]
    );
    assert!(picture.contains("Voice-to-voice") && picture.contains("N=3"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cascade_smoke_run_against_the_openai_double() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = args(
        "2",
        &["--agent", "cascade", "--double-latency-ms", "50,100,50"],
    );
    let r = bench::run(&a, rt.handle(), &mut |_| {}).expect("the bench runs");
    assert_eq!(r.provider_latency_ms, 200);
    let s = &r.steps[0];
    eprintln!("{}\n{}", bench::table_header(), bench::table_row(s));
    assert_eq!(s.calls_completed, 2, "{:?}", s.error_samples);
    assert_eq!(s.errors, 0, "{:?}", s.error_samples);
    assert_eq!((s.turns, s.unanswered), (4, 0));
    assert_eq!((s.barge_ins_expected, s.barge_ins_missed), (2, 0));
    // Endpointing (600) + the double (200) + hark's share.
    let v = s.voice_to_voice_ms.p50.expect("answered");
    assert!((700.0..=1000.0).contains(&v), "voice-to-voice p50 {v} ms");
    let e = s.engine_share_ms.p50.expect("answered");
    // A debug build on a shared 2-core machine: a loose bound (the release figures are in
    // README "Performance").
    assert!((0.0..=120.0).contains(&e), "engine share p50 {e} ms");
}

/// `--chaos SEED`: every call through the chaos proxy (TCP segments re-cut and held 0–20 ms
/// both ways); the calls still run whole, with no errors and no underruns, and the step reports
/// what the proxy did.
#[test]
fn chaos_smoke_run_through_the_proxy() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = args("2", &["--chaos", "7"]);
    assert_eq!(a.chaos, Some(7));
    let r = bench::run(&a, rt.handle(), &mut |_| {}).expect("the bench runs");
    assert_eq!(r.chaos_seed, Some(7));
    let s = &r.steps[0];
    eprintln!("{}\n{}", bench::table_header(), bench::table_row(s));
    assert_eq!(s.calls_completed, 2, "{:?}", s.error_samples);
    assert_eq!(s.errors, 0, "{:?}", s.error_samples);
    assert_eq!(s.underruns, 0);
    assert_eq!((s.turns, s.unanswered), (4, 0));
    assert_eq!((s.barge_ins_expected, s.barge_ins_missed), (2, 0));
    assert_eq!(s.inbound_frames, 2 * 256);
    let c = s.chaos.expect("the proxy's figures");
    assert_eq!((c.connections, c.connect_failures), (2, 0));
    assert!(c.segments > 2 * s.inbound_frames && c.cuts > 0, "{c:?}");
}
