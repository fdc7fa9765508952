//! Real sockets on 127.0.0.1: `hark serve` (in-process, port 0) with the echo agent, called by
//! the Twilio simulator with real-speech sessions, at real time.

use std::sync::Arc;
use std::time::Duration;

mod in_process;
use in_process::{fixture, speech};

use hark_gateway::config::Config;
use hark_gateway::simulator::{self, CallSetup, Report};
use in_process::Server;

async fn start(f: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        workers: 2,
        ..Config::default()
    };
    f(&mut config);
    Server::start(config, None).await
}

fn session(url: &str, name: &str) -> CallSetup {
    let audio = std::fs::read(fixture(&format!("audio/{name}-8k.ulaw"))).unwrap();
    let mut s = CallSetup::new(url, Arc::from(audio));
    s.speech = Some(speech(name));
    s.tail_ms = 300;
    s
}

/// Every `clear` answers caller speech within budget, except those at or after `noise_from_ms`
/// (annotated non-speech sounds loud enough to interrupt, e.g. JFK's applause).
fn check_barge_ins(r: &Report, noise_from_ms: u64) {
    for b in r.barge_ins.iter().filter(|b| b.clear_ms < noise_from_ms) {
        let delay = b.delay_ms.expect("every clear answers caller speech");
        // Budget: 100 ms from the first voiced frame in the engine; on a loaded machine the
        // two loopback hops and the pacing of the simulator add a little.
        assert!((0..=150).contains(&delay), "barge-in delay {delay} ms");
    }
}

fn check_common(r: &Report) {
    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(
        r.marks_sent, r.marks_echoed,
        "every mark was echoed and matched"
    );
    // Nothing plays after a clear until the next answer: all audio received was either heard
    // in the bursts or dropped by a clear.
    let d = r.outbound_audio_ms as i64 - (r.heard_audio_ms + r.cleared_ms) as i64;
    assert!(
        d.abs() <= 2 * r.bursts as i64 + 2,
        "audio received {} != heard {} + cleared {}",
        r.outbound_audio_ms,
        r.heard_audio_ms,
        r.cleared_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_and_jfk_through_the_media_stream() {
    // webrtc-vad, barge-ins cut at once: the checks below (every mark echoed before the caller
    // hangs up) assume JFK's applause cuts the echo for good. The default hybrid VAD does not
    // take applause for speech, and a hold lets the echo play on: either way it plays past the
    // session's end. Holds are tested in `engine/tests/barge_in_hold.rs`.
    let server = start(|c| {
        c.call.vad.kind = hark_engine::config::VadKind::Webrtc;
        c.call.turn.resume_after_ms = 0;
    })
    .await;
    let (multi, jfk) = tokio::join!(
        simulator::run_call(session(&server.url, "multi-turn")),
        simulator::run_call(session(&server.url, "jfk")),
    );
    let multi = multi.unwrap();
    let jfk = jfk.unwrap();
    eprintln!("{}", simulator::format_table(&multi));
    eprintln!("{}", simulator::format_table(&jfk));

    check_common(&multi);
    check_barge_ins(&multi, u64::MAX);
    assert_eq!(multi.turns.len(), 4);
    for (i, t) in multi.turns.iter().enumerate() {
        let lat = t
            .latency_ms
            .unwrap_or_else(|| panic!("turn {i} got no answer"));
        // stop_ms (600) of endpointing, minus the VAD's view of where speech ended.
        assert!((400..=800).contains(&lat), "turn {i} latency {lat} ms");
        assert_eq!(
            t.interrupted,
            i == 0,
            "turn {i}: only the first answer is barged in on"
        );
    }
    assert_eq!(multi.clears, 1);
    assert_eq!(multi.barge_ins[0].speech_start_ms, Some(6800));
    assert_eq!(
        multi.bursts, 4,
        "one burst per answer: no audio of the interrupted answer after the clear"
    );
    assert_eq!(multi.inbound_frames * 20, 27_640 + 300);

    check_common(&jfk);
    // The applause after the sentence (annotated as other sounds from 10 710 ms, up to
    // -24 dBFS) is loud enough to interrupt the last echo.
    check_barge_ins(&jfk, 10_710);
    // JFK pauses three times for longer than stop_ms; each echo is cut when he resumes.
    let speech_clears = jfk.barge_ins.iter().filter(|b| b.clear_ms < 10_710).count();
    assert_eq!(speech_clears, 3, "{:?}", jfk.barge_ins);
    assert_eq!(jfk.inbound_frames * 20, 13_500 + 300);

    // The server closes the socket before its call task finishes its records: wait for it.
    assert_eq!(server.state.wait_idle(Duration::from_secs(10)).await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_signature_is_enforced_over_a_real_socket() {
    let server = start(|c| c.twilio_auth_token = Some("s3cret".into())).await;
    let audio: Arc<[u8]> = Arc::from(vec![0xFFu8; 8 * 200]);

    let mut bad = CallSetup::new(&server.url, audio.clone());
    bad.speed = 0.0;
    bad.auth_token = Some("wrong".into());
    let err = simulator::run_call(bad)
        .await
        .expect_err("a bad signature is refused");
    assert!(err.to_string().contains("403"), "{err}");

    let mut none = CallSetup::new(&server.url, audio.clone());
    none.speed = 0.0;
    assert!(
        simulator::run_call(none).await.is_err(),
        "a missing signature is refused"
    );

    let mut good = CallSetup::new(&server.url, audio);
    good.speed = 0.0;
    good.tail_ms = 0;
    good.auth_token = Some("s3cret".into());
    let r = simulator::run_call(good).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.inbound_frames, 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_simultaneous_calls_at_full_speed() {
    let server = start(|_| {}).await;
    // The first 6 s of the multi-turn session: caller turn A and the start of the answer.
    let mut audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    audio.truncate(6_000 * 8);
    let audio: Arc<[u8]> = Arc::from(audio);
    let speech = speech("multi-turn");
    let frames = audio.len() as u64 / 160;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut s = CallSetup::new(&server.url, audio.clone());
        s.speed = 0.0;
        s.tail_ms = 0;
        s.speech = Some(speech.clone());
        // 200 calls share two call workers (unoptimised in debug builds): allow for the queue.
        s.close_timeout = Duration::from_secs(60);
        set.spawn(simulator::run_call(s));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), set.join_all())
        .await
        .expect("200 calls finish within 2 minutes");
    let mut sids = std::collections::HashSet::new();
    for r in all {
        let r = r.unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.inbound_frames, frames);
        // At full speed the phone's clock stops with the last frame, so marks sent after it
        // are never echoed; none may be echoed that was not sent.
        assert!(r.marks_echoed <= r.marks_sent);
        assert!(sids.insert(r.stream_sid.clone()), "stream SIDs are unique");
    }
    // Every call ended on the server too.
    assert_eq!(server.state.wait_idle(Duration::from_secs(10)).await, 0);
    server.stop().await;
}

/// Issue 12 §4 over real sockets: the media WebSocket's signature policy.
/// - No `TWILIO_AUTH_TOKEN`: refused with 503 naming the variable, unless the server runs with
///   `HARK_DEV_INSECURE=no-signatures`, when an unsigned call runs.
/// - A token and `HARK_PUBLIC_URL`: an unsigned upgrade, or one signed for the `ws://` URL
///   dialled, is refused with 403; signed for the URL Twilio dials (`--public-url`) it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_stream_signature_policy_over_a_real_socket() {
    let audio: Arc<[u8]> = Arc::from(vec![0xFFu8; 8 * 200]);
    let quick = |url: &str| {
        let mut s = CallSetup::new(url, audio.clone());
        s.speed = 0.0;
        s.tail_ms = 0;
        s
    };

    let closed = Server::start_as_configured(
        Config {
            workers: 1,
            ..Config::default()
        },
        None,
    )
    .await;
    let err = simulator::run_call(quick(&closed.url))
        .await
        .expect_err("no token: refused");
    let msg = err.to_string();
    assert!(
        msg.contains("503") && msg.contains("TWILIO_AUTH_TOKEN"),
        "{msg}"
    );
    let mut signed = quick(&closed.url);
    signed.auth_token = Some("whatever".into());
    assert!(simulator::run_call(signed).await.is_err(), "still refused");
    closed.stop().await;

    let dev = Server::start_as_configured(
        Config {
            workers: 1,
            dev_insecure: hark_gateway::config::parse_dev_insecure("no-signatures").unwrap(),
            ..Config::default()
        },
        None,
    )
    .await;
    let r = simulator::run_call(quick(&dev.url)).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.inbound_frames, 10);
    dev.stop().await;

    let public = "https://abc123.ngrok.app";
    let server = start(|c| {
        c.twilio_auth_token = Some("s3cret".into());
        c.public_url = Some(public.into());
    })
    .await;
    let mut dialled = quick(&server.url);
    dialled.auth_token = Some("s3cret".into());
    let err = simulator::run_call(dialled)
        .await
        .expect_err("the ws:// URL dialled is not the one Twilio signs");
    assert!(err.to_string().contains("403"), "{err}");
    assert!(
        simulator::run_call(quick(&server.url)).await.is_err(),
        "unsigned: refused"
    );
    let mut good = quick(&server.url);
    good.auth_token = Some("s3cret".into());
    good.public_url = Some(public.into());
    assert_eq!(
        simulator::signed_url(&server.url, Some(public)).unwrap(),
        "wss://abc123.ngrok.app/media-stream"
    );
    let r = simulator::run_call(good).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.inbound_frames, 10);
    server.stop().await;
}
