//! Call events to the operator's backend through the persisted outbox, against a backend
//! double on 127.0.0.1 (axum, port 0) that records every request and checks its signature
//! with `ring::hmac`, an HMAC-SHA256 independent of hark's (`hmac` + `sha2`):
//!
//! - the backend down (connections refused, then 503) and then up: every event delivered
//!   exactly once, in order per call, each signature valid;
//! - the process killed mid-outbox (its runtime dropped between attempts) and restarted on the
//!   same database: what was delivered is never sent again, the rest is delivered once;
//! - a call whose events fail does not hold up another's; a refused event (400) is given up
//!   and the call's next event follows; an event undelivered at its maximum age is given up;
//!   `Retry-After` is honoured;
//! - end to end: a simulated call on the in-process server sends `call.started`, a
//!   `turn.ended` per stored turn, and `call.ended` with the summary.
//!
//! Retries use short pauses here (50 ms doubling); the service's are 1 s doubling to 5 min.

mod in_process;
mod operator_double;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hark_gateway::api::store::{EventState, OutboxRow};
use hark_gateway::api::{ApiSettings, ApiState, StreamSummary, TurnRow};
use hark_gateway::operator::delivery::DeliveryPolicy;
use hark_gateway::operator::events::Envelope;
use operator_double::{Backend, Mode, SECRET, Seen};
use serde_json::Value;

/// Short retries for tests.
fn quick_policy() -> DeliveryPolicy {
    DeliveryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        max_age: Duration::from_secs(600),
        request_timeout: Duration::from_secs(5),
        concurrency: 4,
        shutdown_grace: Duration::from_secs(2),
    }
}

async fn api(db_url: &str, node: &str, events_url: &str, policy: DeliveryPolicy) -> Arc<ApiState> {
    let env = [
        ("HARK_DATABASE_URL", db_url),
        ("HARK_NODE_ID", node),
        ("HARK_OPERATOR_SECRET", SECRET),
        ("HARK_EVENTS_URL", events_url),
    ];
    let mut settings = ApiSettings::from_lookup(|k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("settings");
    settings.event_delivery = policy;
    ApiState::new(settings).await.expect("api state")
}

/// Waits (up to a minute: a guard against hanging, not a measure) until `f` holds.
async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn outbox(api: &ApiState) -> Vec<OutboxRow> {
    api.store().outbox_events(None).await.expect("outbox")
}

async fn pending(api: &ApiState) -> i64 {
    api.store().outbox_pending().await.expect("pending")
}

fn turn(index: u32, start: i64) -> TurnRow {
    TurnRow {
        index: Some(index),
        user_start_ms: start,
        user_end_ms: start + 1500,
        latency_ms: Some(600),
        text: Some(format!("caller words {index}")),
        agent_text: Some(format!("agent words {index}")),
        ..TurnRow::default()
    }
}

/// A call's records as a live call hands them in (the observer's calls): the stream's start,
/// each turn as it ends and as its answer plays, each turn as it is over, the stream's end.
/// With events on: `turns + 2` events.
fn record_call(api: &ApiState, sid: &str, turns: u32) {
    let rec = api.recorder();
    rec.stream_started(
        sid,
        &format!("MZ{sid}"),
        &[("From".into(), "+15550100".into())],
    );
    for i in 0..turns {
        let t = turn(i, i64::from(i) * 4000);
        rec.turn(sid, t.clone());
        rec.turn_ended(sid, t);
    }
    rec.stream_stopped(
        sid,
        StreamSummary {
            turns: u64::from(turns),
            ended: "closed: Stopped".into(),
            ..StreamSummary::default()
        },
    );
}

/// What every delivery must satisfy, whatever happened on the way (requests to `backends` in
/// the order given, each backend's in arrival order):
/// - each request's headers agree with its body, and its signature checked out;
/// - per call, each request carries the next event not yet accepted: event `n + 1` is never
///   sent before `n` was accepted, and an accepted event is never sent again;
/// - every event of `rows` was accepted exactly once, and nothing else was.
fn check_once_in_order(backends: &[&Backend], rows: &[OutboxRow]) {
    let mut seen = Vec::new();
    for b in backends {
        let st = b.lock();
        assert!(st.bad.is_empty(), "bad requests: {:?}", st.bad);
        seen.extend(st.seen.iter().cloned());
    }
    let mut next: HashMap<&str, u64> = HashMap::new();
    let mut accepted: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        let e = &s.envelope;
        assert_eq!(s.idempotency_key, e.id, "Idempotency-Key is the id");
        assert_eq!(s.event_header, e.event_type, "X-Hark-Event is the type");
        assert_eq!(e.id, format!("{}:{}", e.call_sid, e.seq));
        let want = next.entry(e.call_sid.as_str()).or_default();
        assert_eq!(
            e.seq, *want,
            "{}: event {} sent while {} was the next not accepted",
            e.call_sid, e.seq, want
        );
        if (200..300).contains(&s.status) {
            *want += 1;
            *accepted.entry(e.id.as_str()).or_default() += 1;
        }
    }
    let dup: Vec<_> = accepted.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dup.is_empty(), "accepted more than once: {dup:?}");
    let want: Vec<&str> = {
        let mut v: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        v.sort_unstable();
        v
    };
    let got: Vec<&str> = accepted.keys().copied().collect();
    assert_eq!(got, want, "every event accepted once");
    for r in rows {
        assert_eq!(r.state, EventState::Delivered, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_then_up_gets_every_event_once_in_order_signed() {
    let backend = Backend::down();
    let api = api(
        "sqlite::memory:",
        "events-down",
        &backend.url(),
        quick_policy(),
    )
    .await;
    let calls = ["CA_down_1", "CA_down_2", "CA_down_3"];
    for sid in calls {
        record_call(&api, sid, 3);
    }
    assert!(api.flush().await);
    assert_eq!(outbox(&api).await.len(), calls.len() * 5);

    // Down: nothing listens. Every call's first event is tried again and again.
    wait_until(
        "each call's first event failed to connect 3 times",
        async || {
            let rows = outbox(&api).await;
            rows.iter().filter(|r| r.seq == 0).all(|r| {
                r.attempts >= 3
                    && r.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("connect"))
            }) && rows.iter().filter(|r| r.seq == 0).count() == calls.len()
        },
    )
    .await;
    assert!(
        outbox(&api)
            .await
            .iter()
            .all(|r| r.seq == 0 || r.attempts == 0),
        "no later event is tried while the first is undelivered"
    );
    // Starting: it answers 503.
    backend.listen(Mode::Unavailable);
    wait_until("503s answered", async || backend.answered(503) >= 6).await;
    // Up.
    backend.set(Mode::Up);
    wait_until("every event delivered", async || pending(&api).await == 0).await;

    let rows = outbox(&api).await;
    check_once_in_order(&[&backend], &rows);
    assert!(rows.iter().filter(|r| r.seq == 0).all(|r| r.attempts >= 4));
    // The shapes, by type.
    let seen = backend.seen();
    let ok: Vec<&Envelope> = seen
        .iter()
        .filter(|s| s.status == 200 && s.envelope.call_sid == "CA_down_2")
        .map(|s| &s.envelope)
        .collect();
    let types: Vec<&str> = ok.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "call.started",
            "turn.ended",
            "turn.ended",
            "turn.ended",
            "call.ended"
        ]
    );
    assert_eq!(ok[0].data["from"], "+15550100");
    assert_eq!(ok[0].stream_sid.as_deref(), Some("MZCA_down_2"));
    assert_eq!(ok[2].data["turn"], 1);
    assert_eq!(ok[2].data["caller_text"], "caller words 1");
    assert_eq!(ok[2].data["agent_text"], "agent words 1");
    assert_eq!(ok[2].data["latency_ms"], 600);
    assert_eq!(ok[2].data["barge_in"], false);
    let ended = &ok[4].data;
    assert_eq!(ended["ended"], "closed: Stopped");
    assert_eq!(ended["summary"]["turns"], 3);
    assert_eq!(ended["transcript"].as_array().map(Vec::len), Some(6));
    assert_eq!(ended["transcript"][5]["text"], "agent words 2");
    assert!(ok[4].created_at.ends_with('Z') && ok[4].created_at.len() == 24);

    let report = api.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.events_pending, 0);
}

/// Phase one of the restart test, on a runtime of its own: events are written, the backend
/// takes the first `accepted` then fails, and the runtime (the "process") is dropped between
/// attempts, with no shutdown.
fn run_until_killed(db: &str, node: &str, backend: &Backend, accepted: usize) -> Arc<ApiState> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt.block_on(async {
        let api = api(db, node, &backend.url(), quick_policy()).await;
        for sid in ["CA_restart_1", "CA_restart_2"] {
            record_call(&api, sid, 4);
        }
        assert!(api.flush().await);
        wait_until(
            "the first events delivered and later ones failing",
            async || {
                let rows = outbox(&api).await;
                let delivered = rows
                    .iter()
                    .filter(|r| r.state == EventState::Delivered)
                    .count();
                let failing = rows
                    .iter()
                    .filter(|r| r.attempts >= 2 && r.state == EventState::Pending)
                    .count();
                delivered == accepted && failing == 2
            },
        )
        .await;
        api
    });
    // kill: every task of the process stops where it is.
    drop(rt);
    api
}

#[test]
fn a_restart_mid_outbox_delivers_each_event_once() {
    let dir = TempDir::new("restart");
    let db = format!("sqlite://{}", dir.0.join("hark.db").display());
    let node = "events-restart";
    // The backend takes three events, then fails until the process is killed. It stays down
    // afterwards, so a request of the killed process still on its way is not taken either;
    // the next run finds the backend (up) at a new address.
    let first = Backend::up(Mode::AcceptThenFail(3));
    let killed = run_until_killed(&db, node, &first, 3);
    let accepted_before: Vec<String> = first
        .seen()
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.envelope.id.clone())
        .collect();
    assert_eq!(accepted_before.len(), 3);

    // The next run of the node.
    let second = Backend::up(Mode::Up);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let api = api(&db, node, &second.url(), quick_policy()).await;
        wait_until("every event delivered", async || pending(&api).await == 0).await;
        let rows = outbox(&api).await;
        assert_eq!(rows.len(), 2 * 6);
        check_once_in_order(&[&first, &second], &rows);
        let resent: Vec<_> = second
            .seen()
            .iter()
            .filter(|s| accepted_before.contains(&s.envelope.id))
            .map(|s| s.envelope.id.clone())
            .collect();
        assert!(
            resent.is_empty(),
            "delivered before the kill, sent again: {resent:?}"
        );
        let retried = rows.iter().filter(|r| r.attempts >= 3).count();
        assert_eq!(retried, 2, "the heads failing at the kill were tried again");
        api.shutdown(Duration::from_secs(1)).await;
        // The killed run's handles, dropped where a runtime runs.
        drop(killed);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_does_not_hold_up_others_and_a_refused_event_is_given_up() {
    let backend = Backend::up(Mode::Up);
    {
        let mut st = backend.lock();
        st.failing_calls.insert("CA_stuck".into());
        st.refused.insert("CA_refused:1".into());
        st.throttled_once.insert("CA_ok:0".into());
    }
    let api = api(
        "sqlite::memory:",
        "events-indep",
        &backend.url(),
        quick_policy(),
    )
    .await;
    record_call(&api, "CA_stuck", 2);
    record_call(&api, "CA_refused", 2);
    record_call(&api, "CA_ok", 3);
    assert!(api.flush().await);
    wait_until("the other calls' events are settled", async || {
        outbox(&api)
            .await
            .iter()
            .filter(|r| r.call_sid != "CA_stuck")
            .all(|r| r.state != EventState::Pending)
    })
    .await;
    let rows = outbox(&api).await;
    let state = |id: &str| {
        let r = rows.iter().find(|r| r.event_id == id).expect("row");
        (r.state, r.last_error.clone())
    };
    assert!(
        rows.iter()
            .filter(|r| r.call_sid == "CA_ok")
            .all(|r| r.state == EventState::Delivered)
    );
    assert_eq!(
        state("CA_refused:1"),
        (EventState::Failed, Some("HTTP 400".to_owned()))
    );
    for id in ["CA_refused:0", "CA_refused:2", "CA_refused:3"] {
        assert_eq!(state(id).0, EventState::Delivered, "{id}: the call goes on");
    }
    // The stuck call is still being tried, its first event only.
    wait_until("the stuck call retried", async || {
        outbox(&api)
            .await
            .iter()
            .any(|r| r.event_id == "CA_stuck:0" && r.attempts >= 3)
    })
    .await;
    let stuck: Vec<_> = backend
        .seen()
        .into_iter()
        .filter(|s| s.envelope.call_sid == "CA_stuck")
        .collect();
    assert!(stuck.iter().all(|s| s.envelope.seq == 0 && s.status == 503));
    assert_eq!(pending(&api).await, 4);
    // `Retry-After: 1` after a 429: the next attempt came no sooner.
    let ok0: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|s| s.envelope.id == "CA_ok:0")
        .collect();
    assert_eq!(ok0.len(), 2, "{ok0:?}");
    assert_eq!((ok0[0].status, ok0[1].status), (429, 200));
    assert!(ok0[1].at.duration_since(ok0[0].at) >= Duration::from_millis(950));
    api.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_undelivered_at_its_max_age_is_given_up_in_order() {
    let backend = Backend::up(Mode::Up);
    backend.lock().failing_calls.insert("CA_old".into());
    let policy = DeliveryPolicy {
        max_age: Duration::from_millis(800),
        ..quick_policy()
    };
    let api = api("sqlite::memory:", "events-age", &backend.url(), policy).await;
    record_call(&api, "CA_old", 1);
    assert!(api.flush().await);
    wait_until("every event settled", async || pending(&api).await == 0).await;
    let rows = outbox(&api).await;
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.state, EventState::Failed, "{r:?}");
        assert!(
            r.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("HTTP 503")),
            "{r:?}"
        );
    }
    assert!(
        rows[0].attempts >= 2,
        "retried until it expired: {:?}",
        rows[0]
    );
    // The call's order held through the give-ups: every try of event 0, then 1, then 2.
    let seqs: Vec<u64> = backend.seen().iter().map(|s| s.envelope.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
    assert_eq!(seqs.last(), Some(&2));
    api.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_events_url_without_a_secret_is_refused_at_start() {
    let mut settings = ApiSettings::from_lookup(|k| {
        (k == "HARK_DATABASE_URL").then(|| "sqlite::memory:".to_owned())
    })
    .expect("settings");
    settings.operator.events_url = Some("http://127.0.0.1:9/hark/events".into());
    let err = ApiState::new(settings).await.expect_err("refused");
    assert!(err.to_string().contains("HARK_OPERATOR_SECRET"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_call_sends_started_turns_and_ended() {
    use hark_gateway::config::Config;
    use hark_gateway::simulator::{self, CallSetup};

    let backend = Backend::up(Mode::Up);
    let api = api(
        "sqlite::memory:",
        "events-e2e",
        &backend.url(),
        quick_policy(),
    )
    .await;
    let server = in_process::Server::start(
        Config {
            workers: 1,
            ..Config::default()
        },
        Some(api.clone()),
    )
    .await;
    // The first two turns of the session (≈ 10 s), then `stop`.
    let audio = std::fs::read(in_process::fixture("audio/multi-turn-8k.ulaw")).expect("audio");
    let mut setup = CallSetup::new(server.url.clone(), Arc::from(&audio[..10_000 * 8]));
    setup.speed = 1.0;
    let report = simulator::run_call(setup).await.expect("call");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let record = server
        .record(&report.call_sid, Duration::from_secs(5))
        .await;
    // Stopping the server drains the outbox within the grace.
    server.stop().await;
    assert_eq!(pending(&api).await, 0);

    let rows = outbox(&api).await;
    check_once_in_order(&[&backend], &rows);
    let events: Vec<Envelope> = backend.seen().into_iter().map(|s| s.envelope).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(record.turns.len() >= 2, "{:?}", record.turns);
    let mut want = vec!["call.started"];
    want.extend(std::iter::repeat_n("turn.ended", record.turns.len()));
    want.push("call.ended");
    assert_eq!(types, want);
    for e in &events {
        assert_eq!(e.call_sid, report.call_sid);
        assert_eq!(e.stream_sid.as_deref(), Some(report.stream_sid.as_str()));
    }
    for (t, e) in record.turns.iter().zip(&events[1..]) {
        assert_eq!(e.data["turn"], Value::from(t.index));
        assert_eq!(
            (&e.data["start_ms"], &e.data["end_ms"]),
            (&Value::from(t.user_start_ms), &Value::from(t.user_end_ms))
        );
        assert_eq!(e.data["latency_ms"], serde_json::json!(t.latency_ms));
    }
    let ended = &events.last().expect("call.ended").data;
    assert_eq!(ended["summary"], record.summary);
    assert_eq!(ended["ended"], record.summary["ended"]);
    assert_eq!(ended["status"], "completed");
}

/// A fresh temporary directory (removed on drop).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("hark-events-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
