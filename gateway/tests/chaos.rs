//! Issue 12 §1: TCP re-segmentation must not kill a live call. `hark serve` (in process, echo
//! agent, signatures on) is called by the Twilio simulator with the multi-turn real-speech
//! session (four caller turns, one barge-in) at real time, directly and through the chaos proxy
//! ([`hark_gateway::chaos`]) on 127.0.0.1:
//!
//! - random re-segmentation both ways (1 byte to 1,000 bytes, each segment held 0–20 ms),
//!   three seeds;
//! - every caller WebSocket frame written as two TCP writes 1–5 ms apart, cut after byte 2
//!   (inside the base header), 6 (inside the extended length and masking key) or 150 (inside
//!   the `media` payload), while the echo agent speaks.
//!
//! Every call through the proxy must have no errors at the phone, run to its end (all frames
//! and `stop` sent, closed by the server after `stop`), end normally on the server (its record
//! says `closed: …`, not `failed: websocket: …`), and give the same turns and barge-ins as the
//! direct call: the server's turns to the frame (the engine works in media time), the answers
//! heard within two frames plus the proxy's 20 ms each way, and the same `clear`s.

use std::sync::Arc;
use std::time::Duration;

mod in_process;
use in_process::{fixture, speech};

use hark_gateway::chaos::{ChaosConfig, ChaosProxy};
use hark_gateway::config::Config;
use hark_gateway::simulator::{self, CallSetup, Report, UserSpeech};
use in_process::Server;

/// The server's Auth Token: every call signs its upgrade.
const TOKEN: &str = "chaos-test-token";
/// Seeds of the random re-segmentation.
const SEEDS: [u64; 3] = [1, 2, 3];
/// Cuts of the split-frame cases, bytes into each caller frame.
const CUTS: [usize; 3] = [2, 6, 150];
/// How far an answer heard through the proxy may move from the direct call's, ms: two 20 ms
/// frames, plus the proxy's hold (≤ 20 ms) each way.
const ANSWER_SLACK_MS: i64 = 2 * 20 + 2 * 20;
/// Caller audio sent: the session (27,640 ms) and 300 ms of line noise.
const FRAMES: u64 = (27_640 + 300) / 20;

fn setup(url: &str, audio: &Arc<[u8]>, speech: &UserSpeech) -> CallSetup {
    let mut s = CallSetup::new(url, audio.clone());
    s.speech = Some(speech.clone());
    s.tail_ms = 300;
    s.auth_token = Some(TOKEN.into());
    s
}

/// One call and what the server recorded of it.
struct Outcome {
    name: String,
    report: Report,
    /// The record's `summary` (`ended`, `turns`, `barge_ins`, `malformed`, …).
    summary: serde_json::Value,
    /// The record's turns: (user_start_ms, user_end_ms, interrupted).
    turns: Vec<(i64, i64, bool)>,
}

async fn outcome(server: &Server, name: String, report: Report) -> Outcome {
    let detail = server
        .api()
        .store()
        .call(&report.call_sid)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{name}: call {} not recorded", report.call_sid));
    Outcome {
        name,
        turns: detail
            .turns
            .iter()
            .map(|t| (t.user_start_ms, t.user_end_ms, t.interrupted))
            .collect(),
        summary: detail.summary,
        report,
    }
}

/// What is wrong with `o` (a direct call when `base` is `None`, else compared with `base`).
fn problems(o: &Outcome, base: Option<&Outcome>) -> Vec<String> {
    let mut p = Vec::new();
    let r = &o.report;
    if !r.errors.is_empty() {
        p.push(format!("errors at the phone: {:?}", r.errors));
    }
    if r.inbound_frames != FRAMES {
        p.push(format!(
            "the call did not run to its end: {} of {FRAMES} frames sent",
            r.inbound_frames
        ));
    }
    if r.marks_echoed != r.marks_sent {
        p.push(format!(
            "{} marks sent, {} echoed",
            r.marks_sent, r.marks_echoed
        ));
    }
    let ended = o.summary["ended"].as_str().unwrap_or("(no summary)");
    if !ended.starts_with("closed") {
        p.push(format!("the server ended the call with {ended:?}"));
    }
    if o.summary["malformed"] != 0 {
        p.push(format!("malformed messages: {}", o.summary["malformed"]));
    }
    let Some(b) = base else {
        // The direct call: what tests/live.rs checks of this session.
        if r.turns.len() != 4 || r.turns.iter().any(|t| t.agent_start_ms.is_none()) {
            p.push(format!("expected 4 answered turns: {:?}", r.turns));
        }
        if r.clears != 1 || r.barge_ins.first().and_then(|b| b.speech_start_ms) != Some(6800) {
            p.push(format!(
                "expected one barge-in at 6800 ms: {:?}",
                r.barge_ins
            ));
        }
        return p;
    };
    // The server saw the same turns, to the frame (media time does not depend on the network).
    if o.turns.len() != b.turns.len()
        || o.turns
            .iter()
            .zip(&b.turns)
            .any(|(x, y)| (x.0 - y.0).abs() > 20 || (x.1 - y.1).abs() > 20 || x.2 != y.2)
    {
        p.push(format!("server turns {:?}, direct {:?}", o.turns, b.turns));
    }
    for k in ["turns", "barge_ins"] {
        if o.summary[k] != b.summary[k] {
            p.push(format!(
                "server {k}: {} vs {} direct",
                o.summary[k], b.summary[k]
            ));
        }
    }
    // The phone heard the same answers, at about the same times.
    if r.turns.len() != b.report.turns.len() {
        p.push(format!(
            "{} turns at the phone, {} direct",
            r.turns.len(),
            b.report.turns.len()
        ));
    }
    for (i, (t, d)) in r.turns.iter().zip(&b.report.turns).enumerate() {
        let moved = match (t.agent_start_ms, d.agent_start_ms) {
            (Some(x), Some(y)) => (x as i64 - y as i64).abs() <= ANSWER_SLACK_MS,
            (None, None) => true,
            _ => false,
        };
        if !moved || t.interrupted != d.interrupted {
            p.push(format!("turn {i}: {t:?}, direct {d:?}"));
        }
    }
    if r.bursts != b.report.bursts || r.clears != b.report.clears {
        p.push(format!(
            "{} answers heard and {} clears, direct {} and {}",
            r.bursts, r.clears, b.report.bursts, b.report.clears
        ));
    }
    let starts = |r: &Report| -> Vec<Option<u64>> {
        r.barge_ins.iter().map(|b| b.speech_start_ms).collect()
    };
    if starts(r) != starts(&b.report) {
        p.push(format!(
            "barge-ins {:?}, direct {:?}",
            r.barge_ins, b.report.barge_ins
        ));
    }
    for bi in &r.barge_ins {
        // The budget (speech-start window + a frame), plus the proxy both ways.
        if !bi.delay_ms.is_some_and(|d| (0..=150 + 40).contains(&d)) {
            p.push(format!("barge-in delay: {bi:?}"));
        }
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_turn_call_survives_split_and_delayed_tcp_segments() {
    let config = Config {
        workers: 2,
        twilio_auth_token: Some(TOKEN.into()),
        ..Config::default()
    };
    let server = Server::start(config, Some(in_process::memory_api().await)).await;
    let audio: Arc<[u8]> = Arc::from(std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap());
    let speech = speech("multi-turn");

    let mut proxies = Vec::new();
    for seed in SEEDS {
        let proxy = ChaosProxy::start(server.addr, ChaosConfig::new(seed))
            .await
            .unwrap();
        proxies.push((format!("random segments, seed {seed}"), proxy));
    }
    for cut in CUTS {
        let proxy = ChaosProxy::start(server.addr, ChaosConfig::split_frames(cut as u64, cut))
            .await
            .unwrap();
        proxies.push((format!("each caller frame cut after byte {cut}"), proxy));
    }

    // All at once: the direct call and the calls through the proxies, at real time.
    let mut set = tokio::task::JoinSet::new();
    let direct = setup(&server.url, &audio, &speech);
    set.spawn(async move { ("direct".to_string(), simulator::run_call(direct).await) });
    for (name, proxy) in &proxies {
        let s = setup(&proxy.url(&server.url).unwrap(), &audio, &speech);
        let name = name.clone();
        set.spawn(async move { (name, simulator::run_call(s).await) });
    }
    let results = tokio::time::timeout(Duration::from_secs(90), set.join_all())
        .await
        .expect("the calls end");
    assert_eq!(server.state.wait_idle(Duration::from_secs(10)).await, 0);
    assert!(server.api().flush().await);

    let mut direct = None;
    let mut through = Vec::new();
    for (name, r) in results {
        let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
        let o = outcome(&server, name, r).await;
        if o.name == "direct" {
            direct = Some(o);
        } else {
            through.push(o);
        }
    }
    let direct = direct.expect("the direct call ran");
    eprintln!("direct:\n{}", simulator::format_table(&direct.report));
    let mut failures = Vec::new();
    for p in problems(&direct, None) {
        failures.push(format!("direct: {p}"));
    }
    through.sort_by(|a, b| a.name.cmp(&b.name));
    for o in &through {
        eprintln!(
            "{} (server: {}):\n{}",
            o.name,
            o.summary["ended"],
            simulator::format_table(&o.report)
        );
        for p in problems(o, Some(&direct)) {
            failures.push(format!("{}: {p}", o.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The proxies really cut: many more segments than the peers' messages, mostly mid-read.
    for (name, proxy) in &proxies {
        let st = proxy.stats();
        eprintln!("{name}: {st:?}");
        assert_eq!((st.connections, st.connect_failures), (1, 0), "{name}");
        assert!(
            st.segments > 2 * FRAMES && st.cuts > FRAMES / 2,
            "{name}: {st:?}"
        );
        assert!(st.max_hold_us <= 100_000, "{name}: held too long: {st:?}");
    }
    server.stop().await;
}
