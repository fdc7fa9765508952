//! Two `hark serve` processes on one real PostgreSQL (see `pg/mod.rs`), as behind a load
//! balancer that sends each request to either:
//!
//! - 20 outbound calls, half through each node, paced at 2 CPS *together* (the spacing is
//!   measured at the Twilio REST double: one node each at 2 CPS would take half as long);
//! - `GET /calls` on either node lists all of them;
//! - the same status callback delivered twice to each node is stored once;
//! - Twilio's asynchronous answering machine verdict sent to the node that does *not* run the
//!   call reaches the live call (Postgres `LISTEN`/`NOTIFY`);
//! - a node killed (`kill -9`) mid-call: the other finds it silent, closes its call as
//!   `ended: crashed` (seen through the other node's `GET /calls/{sid}`) and delivers that
//!   call's events to the operator's backend, each event exactly once across both nodes.

mod hark_process;
mod operator_double;
mod pg;
mod twilio_double;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hark_gateway::simulator::{self, CallSetup, UserSpeech};
use hark_process::Hark;
use operator_double::{Backend, Mode, SECRET};
use serde_json::{Value, json};
use twilio_double::Double;
use twilio_double::harness::{
    ACCOUNT, API_KEY_SID, API_SECRET, AUTH_TOKEN, HARK_KEY, PHONE, PUBLIC,
};

/// Twilio's pace for the account, calls per second.
const CPS: f64 = 2.0;

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

/// A node of the pair: `hark serve` with the shared settings.
fn node(dir: &std::path::Path, db: &str, name: &str, twilio: &str, events: &str) -> Hark {
    let cps = CPS.to_string();
    Hark::start(
        dir,
        db,
        name,
        &[
            ("HARK_API_KEY", HARK_KEY),
            ("TWILIO_ACCOUNT_SID", ACCOUNT),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("TWILIO_API_KEY", API_KEY_SID),
            ("TWILIO_API_SECRET", API_SECRET),
            ("TWILIO_PHONE_NUMBER", PHONE),
            ("HARK_PUBLIC_URL", PUBLIC),
            ("HARK_TWILIO_API_BASE", twilio),
            ("HARK_CALLS_PER_SECOND", &cps),
            ("HARK_CALL_QUEUE", "30"),
            ("HARK_NODE_LOST_AFTER_S", "2"),
            ("HARK_EVENTS_URL", events),
            ("HARK_OPERATOR_SECRET", SECRET),
        ],
    )
}

/// A form POST to `node` signed as Twilio signs it for `PUBLIC + path`.
async fn twilio_post(
    http: &reqwest::Client,
    node: &Hark,
    path: &str,
    form: &[(&str, &str)],
) -> u16 {
    let sig = hark_gateway::signature::compute(AUTH_TOKEN, &format!("{PUBLIC}{path}"), form);
    http.post(format!("{}{path}", node.http()))
        .header(hark_gateway::signature::HEADER, sig)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        )
        .send()
        .await
        .expect("callback sent")
        .status()
        .as_u16()
}

async fn get_json(http: &reqwest::Client, node: &Hark, path: &str) -> Value {
    http.get(format!("{}{path}", node.http()))
        .bearer_auth(HARK_KEY)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("JSON"))
        .expect("body")
}

/// Polls `f` every 50 ms until it returns `Some`, for up to `limit`.
async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Places 20 calls, alternating between the nodes, all at once; returns their SIDs.
async fn twenty_calls(http: &reqwest::Client, nodes: [&Hark; 2], twilio: &Double) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = format!("{}/calls", nodes[i % 2].http());
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(HARK_KEY)
                .header("content-type", "application/json")
                .body(json!({"to": format!("+1415555{:04}", 100 + i)}).to_string())
                .send()
                .await
                .expect("POST /calls");
            let status = r.status().as_u16();
            let body: Value =
                serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
            assert_eq!(status, 201, "{body}");
            body["call_sid"].as_str().expect("call_sid").to_owned()
        }));
    }
    let mut sids = Vec::new();
    for t in tasks {
        sids.push(t.await.expect("task"));
    }
    let mut at: Vec<Instant> = twilio
        .requests_to("POST", "/Calls.json")
        .iter()
        .map(|r| r.at)
        .collect();
    at.sort();
    assert_eq!(at.len(), 20);
    let period = Duration::from_secs_f64(1.0 / CPS);
    let mut gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    eprintln!(
        "creation gaps: min {:?}, median {:?}, max {:?}; span {:?}",
        gaps[0],
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        at[19] - at[0]
    );
    // Each node alone at 2 CPS would put two creations in every 500 ms. A late timer on a busy
    // machine shortens the gap after it, so check each gap loosely and the span tightly.
    assert!(gaps[0] >= period.mul_f64(0.6), "gaps {gaps:?}");
    assert!(
        at[19] - at[0] >= period.mul_f64(19.0 * 0.95),
        "span {:?}",
        at[19] - at[0]
    );
    twilio.assert_clean();
    sids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_pacing_records_callbacks_and_take_over_a_killed_node() {
    let Some(db) = pg::fresh_database().await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hark-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let twilio = Double::start(API_KEY_SID, API_SECRET).await;
    let backend = Backend::up(Mode::Up);
    let mut a = node(&dir, &db, "node-a", &twilio.base, &backend.url());
    let b = node(&dir, &db, "node-b", &twilio.base, &backend.url());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // Pacing held across the nodes.
    let sids = twenty_calls(&http, [&a, &b], &twilio).await;

    // Every node sees every call.
    for n in [&a, &b] {
        let list = get_json(&http, n, "/calls?limit=100").await;
        let listed: Vec<&str> = list["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter_map(|c| c["call_sid"].as_str())
            .collect();
        for sid in &sids {
            assert!(listed.contains(&sid.as_str()), "{sid} missing on a node");
        }
    }

    // A retried callback, received by both nodes, twice each: stored once.
    let sid = sids[0].clone();
    let form = [
        ("CallSid", sid.as_str()),
        ("AccountSid", ACCOUNT),
        ("CallStatus", "ringing"),
        ("SequenceNumber", "1"),
        ("Timestamp", "Thu, 03 Dec 2026 13:00:00 +0000"),
    ];
    let sent = tokio::join!(
        twilio_post(&http, &a, "/api/twilio/status", &form),
        twilio_post(&http, &b, "/api/twilio/status", &form),
        twilio_post(&http, &a, "/api/twilio/status", &form),
        twilio_post(&http, &b, "/api/twilio/status", &form),
    );
    assert!(
        [sent.0, sent.1, sent.2, sent.3]
            .iter()
            .all(|s| (200..300).contains(s)),
        "{sent:?}"
    );
    let ringing = wait_for(
        "the status callback stored",
        Duration::from_secs(10),
        async || {
            let detail = get_json(&http, &b, &format!("/calls/{sid}")).await;
            let n = detail["timeline"]
                .as_array()?
                .iter()
                .filter(|e| e["source"] == "status" && e["sequence_number"] == 1)
                .count();
            (n > 0).then_some(n)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let detail = get_json(&http, &a, &format!("/calls/{sid}")).await;
    let stored = detail["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["source"] == "status" && e["sequence_number"] == 1)
        .count();
    assert_eq!((ringing, stored), (1, 1), "{detail}");

    // The call's media stream runs on node A.
    let speech =
        UserSpeech::from_annotation(&fixture("sessions/multi-turn.json")).expect("annotation");
    let audio: Arc<[u8]> =
        Arc::from(std::fs::read(fixture("audio/multi-turn-8k.ulaw")).expect("audio"));
    let mut setup = CallSetup::new(a.url(), audio);
    setup.speech = Some(speech);
    setup.auth_token = Some(AUTH_TOKEN.to_owned());
    setup.public_url = Some(PUBLIC.to_owned());
    setup.start.call_sid = sid.clone();
    setup.close_timeout = Duration::from_secs(2);
    let call = tokio::spawn(async move { simulator::run_call(setup).await });
    wait_for(
        "the stream on node A",
        Duration::from_secs(10),
        async || {
            let d = get_json(&http, &b, &format!("/calls/{sid}")).await;
            d["stream_sid"].as_str().map(drop)
        },
    )
    .await;

    // The verdict reaches node B; node A runs the call and gets it.
    let amd = [
        ("CallSid", sid.as_str()),
        ("AccountSid", ACCOUNT),
        ("AnsweredBy", "human"),
        ("MachineDetectionDuration", "2100"),
    ];
    assert_eq!(twilio_post(&http, &b, "/api/twilio/amd", &amd).await, 200);
    wait_for(
        "node A to get node B's verdict",
        Duration::from_secs(5),
        async || {
            a.lines("callback from another node reached the live call")
                .iter()
                .any(|l| l["call_sid"] == sid.as_str())
                .then_some(())
        },
    )
    .await;

    // Node A dies mid-call; node B closes the call as crashed.
    a.signal("KILL");
    a.wait(Duration::from_secs(5));
    let detail = wait_for(
        "node B to close node A's call",
        Duration::from_secs(15),
        async || {
            let d = get_json(&http, &b, &format!("/calls/{sid}")).await;
            (d["summary"]["ended"] == "crashed").then_some(d)
        },
    )
    .await;
    assert!(
        detail["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .any(|e| e["status"] == "stream-stopped" && e["detail"] == "crashed"),
        "{detail}"
    );
    assert_eq!(
        b.count("a node stopped beating: its open calls are closed as crashed"),
        1
    );
    let _ = call.await;

    // The call's events reach the backend once each, whichever node sent them.
    let seen = wait_for(
        "call.ended of the killed node's call",
        Duration::from_secs(15),
        async || {
            let seen = backend.seen();
            seen.iter()
                .any(|s| s.envelope.call_sid == sid && s.envelope.event_type == "call.ended")
                .then_some(seen)
        },
    )
    .await;
    let mut ids: Vec<&str> = seen
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.envelope.id.as_str())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event was delivered twice: {ids:?}");
    let of_call: Vec<&str> = seen
        .iter()
        .filter(|s| s.envelope.call_sid == sid)
        .map(|s| s.envelope.event_type.as_str())
        .collect();
    assert_eq!(of_call.first(), Some(&"call.started"), "{of_call:?}");
    assert_eq!(of_call.last(), Some(&"call.ended"), "{of_call:?}");
    let ended = seen
        .iter()
        .find(|s| s.envelope.call_sid == sid && s.envelope.event_type == "call.ended")
        .expect("call.ended");
    assert_eq!(ended.envelope.data["ended"], "crashed");
    assert!(backend.lock().bad.is_empty(), "{:?}", backend.lock().bad);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
