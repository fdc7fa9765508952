//! Call records that survive what happens to a real process: a stream-only call's status, end
//! and timeline; turns on disk within a second of their end, so `kill -9` loses at most the
//! last second; calls a killed process left open closed as `ended: crashed` at the next start
//! (and only this node's); the shutdown path writing every summary (`ended: shutdown`) and
//! turn before the writer stops.
//!
//! The process tests run the real `hark` binary (`CARGO_BIN_EXE_hark`) on 127.0.0.1 port 0
//! with a SQLite file in a temporary directory, call it with the Twilio simulator (real-speech
//! session, real time, signed upgrades) and read the database directly. Which turns hark ended,
//! and when, comes from its own log (`HARK_LOG_FORMAT=json`, the "caller turn" line each turn
//! end writes), timed as this test reads it: a turn read at T ended at or before T.

mod hark_process;
mod in_process;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hark_gateway::api::{ApiState, Store, StreamSummary, TurnRow};
use hark_gateway::config::Config;
use hark_gateway::simulator::{self, CallSetup, Report, UserSpeech};
use hark_process::{Hark, TOKEN};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

/// A fresh temporary directory (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("hark-records-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn db_url(&self) -> String {
        format!("sqlite://{}", self.0.join("hark.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A log line of the child and when this test read it.
/// One simulated call of the 28 s multi-turn session at real time, signed.
fn call_setup(url: &str, speech: &UserSpeech, audio: &Arc<[u8]>) -> CallSetup {
    let mut s = CallSetup::new(url, audio.clone());
    s.speech = Some(speech.clone());
    s.auth_token = Some(TOKEN.to_owned());
    s.tail_ms = 300;
    s.close_timeout = Duration::from_secs(3);
    s
}

fn session() -> (UserSpeech, Arc<[u8]>) {
    let speech =
        UserSpeech::from_annotation(&fixture("sessions/multi-turn.json")).expect("annotation");
    let audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).expect("audio");
    (speech, Arc::from(audio))
}

/// Waits until every one of `calls` has at least `n` caller turns in hark's log.
async fn wait_for_turns(hark: &Hark, calls: usize, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let turns = hark.turns();
        let mut per_call = std::collections::BTreeMap::<String, usize>::new();
        for (_, sid, _, _) in &turns {
            *per_call.entry(sid.clone()).or_default() += 1;
        }
        if per_call.len() >= calls && per_call.values().all(|&c| c >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "calls did not reach {n} turns each: {per_call:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every (call SID, start, end) stored in `turns`.
async fn stored_turns(store: &Store) -> Vec<(String, i64, i64)> {
    sqlx::query_as("SELECT call_sid, user_start_ms, user_end_ms FROM turns")
        .fetch_all(store.pool())
        .await
        .expect("turns")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_last_second_and_the_restart_closes_the_calls_as_crashed() {
    // `RECORDS_CALLS=20` for a heavier run (a measurement, not the default).
    let n_calls: usize = std::env::var("RECORDS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = TempDir::new("kill9");
    let db = dir.db_url();
    let node = format!("records-kill9-{}", std::process::id());
    let mut hark = Hark::start(&dir.0, &db, &node, &[]);
    let (speech, audio) = session();
    let calls: Vec<_> = (0..n_calls)
        .map(|_| {
            tokio::spawn(simulator::run_call(call_setup(
                &hark.url(),
                &speech,
                &audio,
            )))
        })
        .collect();

    // Mid-call: every call has had turns end, and 1.5 s more have passed.
    wait_for_turns(&hark, n_calls, 2, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let logged = hark.turns();
    let lag = commit_lag(&hark).await;
    let killed_at = Instant::now();
    hark.child.kill().expect("kill -9");
    hark.wait(Duration::from_secs(10));
    for c in calls {
        // The socket died under the callers: errors are expected, panics are not.
        let _ = c.await.expect("call task");
    }

    let store = Store::open(&db)
        .await
        .expect("the database opens after the kill");
    let stored = stored_turns(&store).await;
    let due: Vec<_> = logged
        .iter()
        .filter(|(at, ..)| *at + Duration::from_secs(1) <= killed_at)
        .collect();
    assert!(
        due.len() >= 2 * n_calls,
        "the test needs turns that ended ≥ 1 s before the kill: {logged:?}"
    );
    let missing: Vec<_> = due
        .iter()
        .filter(|(_, sid, start, end)| {
            !stored
                .iter()
                .any(|(s, a, b)| s == sid && a == start && b == end)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} turns that ended ≥ 1 s before kill -9 are not stored: {missing:?}",
        missing.len(),
        due.len()
    );
    let last_second = logged.len() - due.len();
    let stored_of_all = logged
        .iter()
        .filter(|(_, sid, start, end)| {
            stored
                .iter()
                .any(|(s, a, b)| s == sid && a == start && b == end)
        })
        .count();
    eprintln!(
        "kill -9: {} turns ended, {} of them ≥ 1 s before the kill (all stored), {} in the last second; {stored_of_all} of {} stored; commit lag of turns: {lag:?}",
        logged.len(),
        due.len(),
        last_second,
        logged.len()
    );
    // The binary's own measure of the lag: every quantile of turn commits under a second.
    for (q, secs) in &lag {
        assert!(*secs < 1.0, "turn commit lag quantile {q} is {secs} s");
    }
    let sids: std::collections::BTreeSet<String> =
        logged.iter().map(|(_, sid, ..)| sid.clone()).collect();
    assert_eq!(sids.len(), n_calls);
    for sid in &sids {
        let call = store.call(sid).await.expect("read").expect("call row");
        assert!(
            call.call.ended_at_ms.is_none(),
            "still open before the restart"
        );
    }
    store.close().await;

    // The restart closes them, as crashed, at their last known activity.
    let restarted = Hark::start(&dir.0, &db, &node, &[]);
    restarted.wait_for("crash recovery done");
    let store = Store::open(&db).await.expect("database");
    let kill_wall_ms = now_ms() - i64::try_from(killed_at.elapsed().as_millis()).unwrap_or(0);
    for sid in &sids {
        let call = store.call(sid).await.expect("read").expect("call row");
        assert_eq!(
            call.summary["ended"], "crashed",
            "{sid}: {:?}",
            call.summary
        );
        let ended = call.call.ended_at_ms.expect("an end time");
        assert!(
            ended <= kill_wall_ms + 200,
            "{sid}: the end is the last activity before the kill ({ended} vs kill at {kill_wall_ms})"
        );
        assert!(
            ended >= kill_wall_ms - 5_000,
            "{sid}: the last activity was shortly before the kill"
        );
        assert_eq!(call.call.status.as_deref(), Some("completed"));
        let last = call.timeline.last().expect("timeline");
        assert_eq!(
            (
                last.source.as_str(),
                last.status.as_str(),
                last.detail.as_deref()
            ),
            ("media", "stream-stopped", Some("crashed"))
        );
        assert_eq!(call.timeline[0].status, "stream-started");
    }
    drop(restarted);
}

/// `hark_record_commit_lag_seconds{op="turn"}` quantiles from the server's `/metrics`.
async fn commit_lag(hark: &Hark) -> Vec<(String, f64)> {
    // reqwest needs a process-wide TLS provider even for plain HTTP; already set is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", hark.port))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let lag: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("hark_record_commit_lag_seconds{") && l.contains("op=\"turn\""))
        .filter_map(|l| {
            let q = l.split("quantile=\"").nth(1)?.split('"').next()?.to_owned();
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((q, v))
        })
        .collect();
    assert!(!lag.is_empty(), "the commit lag is measured: {text}");
    lag
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_live_calls_stores_every_summary_and_turn() {
    const CALLS: usize = 4;
    let dir = TempDir::new("sigterm");
    let db = dir.db_url();
    let node = format!("records-sigterm-{}", std::process::id());
    let mut hark = Hark::start(&dir.0, &db, &node, &[("HARK_SHUTDOWN_TIMEOUT_S", "1")]);
    let (speech, audio) = session();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            tokio::spawn(simulator::run_call(call_setup(
                &hark.url(),
                &speech,
                &audio,
            )))
        })
        .collect();
    wait_for_turns(&hark, CALLS, 1, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    hark.signal("TERM");
    let signalled = Instant::now();
    let status = hark.wait(Duration::from_secs(20));
    let exit_after = signalled.elapsed();
    assert!(
        status.success(),
        "hark exits cleanly after SIGTERM: {status}"
    );
    let mut reports: Vec<Report> = Vec::new();
    for c in calls {
        reports.push(c.await.expect("call task").expect("the call connected"));
    }
    for r in &reports {
        assert!(
            !r.errors
                .iter()
                .any(|e| e.contains("reset") || e.contains("without closing handshake")),
            "{}: the server closed the socket properly: {:?}",
            r.call_sid,
            r.errors
        );
    }
    assert_eq!(hark.count("call record dropped"), 0, "no record dropped");

    let store = Store::open(&db).await.expect("database");
    let stored = stored_turns(&store).await;
    let logged = hark.turns();
    assert!(logged.len() >= CALLS);
    let missing: Vec<_> = logged
        .iter()
        .filter(|(_, sid, start, end)| {
            !stored
                .iter()
                .any(|(s, a, b)| s == sid && a == start && b == end)
        })
        .collect();
    assert!(missing.is_empty(), "turns lost at shutdown: {missing:?}");
    eprintln!(
        "SIGTERM: exited after {exit_after:?} (timeout 1 s); {} turns ended, all stored; {} calls closed",
        logged.len(),
        reports.len()
    );
    for r in &reports {
        let call = store
            .call(&r.call_sid)
            .await
            .expect("read")
            .expect("call row");
        assert_eq!(
            call.summary["ended"], "shutdown",
            "{}: {:?}",
            r.call_sid, call.summary
        );
        assert!(call.call.ended_at_ms.is_some());
        let last = call.timeline.last().expect("timeline");
        assert_eq!(last.detail.as_deref(), Some("shutdown"));
    }

    // Nothing was left open: a restart closes nothing.
    let restarted = Hark::start(&dir.0, &db, &node, &[]);
    restarted.wait_for("crash recovery done");
    drop(restarted);
    for r in &reports {
        let call = store.call(&r.call_sid).await.expect("read").expect("row");
        assert_eq!(call.summary["ended"], "shutdown");
    }
}

async fn file_api(dir: &TempDir, node: &str) -> Arc<ApiState> {
    let env = [
        ("HARK_DATABASE_URL".to_owned(), dir.db_url()),
        ("HARK_NODE_ID".to_owned(), node.to_owned()),
    ];
    ApiState::from_lookup(move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        .await
        .expect("api state")
}

fn turn(index: u32, start: i64) -> TurnRow {
    TurnRow {
        index: Some(index),
        user_start_ms: start,
        user_end_ms: start + 1500,
        latency_ms: Some(600),
        ..TurnRow::default()
    }
}

#[tokio::test]
async fn recovery_closes_only_this_nodes_calls_left_open() {
    let dir = TempDir::new("recover");
    {
        // Node A's first run: two calls, one ended, one cut by a crash.
        let a = file_api(&dir, "node-a").await;
        let rec = a.recorder();
        rec.stream_started("CA_ended", "MZ_ended", &[]);
        rec.turn("CA_ended", turn(0, 1000));
        rec.stream_stopped(
            "CA_ended",
            StreamSummary {
                ended: "closed: Stopped".into(),
                ..StreamSummary::default()
            },
        );
        rec.stream_started("CA_cut", "MZ_cut", &[]);
        rec.turn("CA_cut", turn(0, 1000));
        rec.turn("CA_cut", turn(1, 4000));
        assert!(a.flush().await);
        // Node B, live on the same database.
        let b = file_api(&dir, "node-b").await;
        b.recorder().stream_started("CA_other", "MZ_other", &[]);
        assert!(b.flush().await);
        // (No shutdown: the process "crashed".)
    }
    let before = now_ms();
    let a = file_api(&dir, "node-a").await;
    let closed = a.recover_crashed().await.expect("recovery");
    assert_eq!(closed, ["CA_cut"]);
    let cut = a.store().call("CA_cut").await.expect("read").expect("row");
    assert_eq!(cut.summary["ended"], "crashed");
    assert_eq!(cut.summary["turns"], 2);
    let ended = cut.call.ended_at_ms.expect("end time");
    assert!(
        ended <= before,
        "the end is the last activity, not the restart"
    );
    assert_eq!(cut.turns.len(), 2);
    let ended_call = a
        .store()
        .call("CA_ended")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(ended_call.summary["ended"], "closed: Stopped");
    let other = a
        .store()
        .call("CA_other")
        .await
        .expect("read")
        .expect("row");
    assert!(
        other.call.ended_at_ms.is_none() && other.summary.is_null(),
        "another node's live call is left alone"
    );
    // Idempotent, and this run's own calls are never "crashed".
    a.recorder().stream_started("CA_live", "MZ_live", &[]);
    assert!(a.flush().await);
    assert!(a.recover_crashed().await.expect("again").is_empty());
}

#[tokio::test]
async fn shutdown_waits_for_call_tasks_then_drains_and_closes_the_rest() {
    let dir = TempDir::new("shutdown");
    let api = file_api(&dir, "node-s").await;
    // A call task that is still finishing when shutdown starts: its records must all land.
    let rec = api.recorder();
    rec.stream_started("CA_finishing", "MZ_finishing", &[]);
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..500 {
            rec.turn("CA_finishing", turn(i, i64::from(i) * 3000));
        }
        rec.stream_stopped(
            "CA_finishing",
            StreamSummary {
                ended: "shutdown".into(),
                turns: 500,
                ..StreamSummary::default()
            },
        );
    });
    // A call whose task never hands in its close (stuck): closed as shutdown.
    let stuck = api.recorder();
    stuck.stream_started("CA_stuck", "MZ_stuck", &[]);
    stuck.turn("CA_stuck", turn(0, 1000));
    let report = api.shutdown(Duration::from_secs(2)).await;
    task.await.expect("task");
    assert_eq!(report.calls_still_running, 1, "{report:?}");
    assert_eq!(report.closed_as_shutdown, ["CA_stuck"]);
    assert_eq!(report.stats.dropped, 0);
    let done = api
        .store()
        .call("CA_finishing")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(done.turns.len(), 500);
    assert_eq!(done.summary["ended"], "shutdown");
    assert_eq!(done.summary["turns"], 500);
    let stuck_call = api
        .store()
        .call("CA_stuck")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(stuck_call.summary["ended"], "shutdown");
    assert_eq!(stuck_call.turns.len(), 1);
    assert!(stuck_call.call.ended_at_ms.is_some());
    // After the stop, a late record is dropped and counted, not written.
    stuck.turn("CA_stuck", turn(1, 9000));
    assert_eq!(stuck.dropped(), 1);
    assert!(!api.flush().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_only_call_gets_its_status_end_and_timeline() {
    let dir = TempDir::new("streamonly");
    let api = file_api(&dir, "node-stream").await;
    let server = in_process::Server::start(
        Config {
            workers: 1,
            ..Config::default()
        },
        Some(api.clone()),
    )
    .await;
    // The first two turns of the session (≈ 10 s), then `stop`.
    let (_, audio) = session();
    let cut = &audio[..10_000 * 8];
    let mut setup = CallSetup::new(server.url.clone(), Arc::from(cut));
    setup.speed = 1.0;
    let report = simulator::run_call(setup).await.expect("call");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    // The phone is done; the server's call task hands in the stream's end just after.
    assert_eq!(
        server
            .state
            .wait_idle(std::time::Duration::from_secs(5))
            .await,
        0
    );
    assert!(api.flush().await);
    let call = api
        .store()
        .call(&report.call_sid)
        .await
        .expect("read")
        .expect("row");
    assert_eq!(call.call.status.as_deref(), Some("completed"));
    assert!(call.call.ended_at_ms.is_some());
    let timeline: Vec<_> = call
        .timeline
        .iter()
        .map(|e| (e.source.as_str(), e.status.as_str()))
        .collect();
    assert_eq!(
        timeline,
        [("media", "stream-started"), ("media", "stream-stopped")]
    );
    let stopped = &call.timeline[1];
    assert_eq!(stopped.detail.as_deref(), call.summary["ended"].as_str());
    assert!(
        stopped
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("Stop")),
        "{:?}",
        stopped.detail
    );
    assert!(!call.turns.is_empty());
    assert!(call.turns.iter().all(|t| t.user_end_ms > t.user_start_ms));
    // Writes are measured: the commit lag is bounded well within the 1 s promise.
    let stats = api.writer_stats();
    assert!(stats.commit_lag_max_us < 1_000_000, "commit lag {stats:?}");
    server.stop().await;
}
