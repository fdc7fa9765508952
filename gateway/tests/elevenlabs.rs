//! `HARK_AGENT=elevenlabs` end to end over real sockets on 127.0.0.1: `hark serve` in-process,
//! the ElevenLabs double (signed URL + conversation WebSocket), and `hark call` playing the
//! multi-turn real-speech session at real time. Plus the `elevenlabs-direct` `/voice` TwiML
//! for 200/401/429/500 (golden files under `fixtures/twiml/`, `BLESS=1` rewrites them).
//! Every message both ways is checked against the ElevenLabs AsyncAPI spec.

mod in_process;
use in_process::{fixture, speech};
mod provider_doubles;
#[path = "elevenlabs_realtime_specs.rs"]
mod specs;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hark_gateway::agents::AgentSettings;
use hark_gateway::config::{AgentKind, Config};
use hark_gateway::server::{self, AppState};
use hark_gateway::simulator::{self, CallSetup, Report};
use http_body_util::BodyExt;
use in_process::Server;
use provider_doubles::elevenlabs::{Conversation, ElevenLabsDouble, Reply, Script, Step};
use serde_json::Value;
use specs::{Dir, check_elevenlabs};
use tower::ServiceExt;

fn tls() {
    // One TLS provider for the process, as `hark serve` does (crates.md: ring everywhere).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn settings(double: &ElevenLabsDouble, key: &str) -> AgentSettings {
    let env = [
        ("ELEVENLABS_AGENT_ID", "agent_double".to_string()),
        ("ELEVENLABS_API_KEY", key.to_string()),
        ("ELEVENLABS_API_BASE", double.base_url()),
    ];
    AgentSettings::from_lookup(AgentKind::ElevenLabs, &mut |k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })
    .expect("settings")
}

/// Agent audio of reply `k`: bytes `16k .. 16k+15` repeating, so each reply is recognisable
/// in what the caller heard.
fn reply_audio(k: u8, ms: usize) -> Arc<[u8]> {
    (0..ms * 8)
        .map(|i| k * 16 + (i % 16) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn reply(k: u8, ms: usize, user: &str, agent: &str) -> Reply {
    Reply {
        user_text: Some(user.into()),
        agent_text: agent.into(),
        audio: reply_audio(k, ms),
    }
}

/// The multi-turn session's conversation: a reply 300 ms after each caller turn (A ends at
/// 5 100, B at 8 580, C at 15 380, D at 22 520 ms), an interruption 200 ms into B (which
/// starts at 6 800 while the first reply plays), two pings.
fn multi_turn_script() -> Script {
    Script {
        steps: vec![
            Step::Ping {
                at_ms: 1_000,
                event_id: 4242,
            },
            Step::Reply {
                at_ms: 5_400,
                reply: reply(
                    1,
                    4_000,
                    "Hi, I'm calling about my order, it was supposed to arrive yesterday.",
                    "I'm sorry to hear that. Let me look up your order and see where it is right now.",
                ),
            },
            Step::Interrupt {
                at_ms: 7_000,
                stale_chunks: 2,
                correction: Some("I'm sorry to hear that.".into()),
            },
            Step::Reply {
                at_ms: 8_900,
                reply: reply(2, 2_500, "And so my fellow Americans", "Yes, go on."),
            },
            Step::Ping {
                at_ms: 10_000,
                event_id: 4343,
            },
            Step::Reply {
                at_ms: 15_700,
                reply: reply(3, 2_500, "ask what you can do for your country", "Noted."),
            },
            Step::Reply {
                at_ms: 22_800,
                reply: reply(4, 2_000, "Okay, thank you. Goodbye.", "Goodbye!"),
            },
        ],
        ..Script::default()
    }
}

async fn start(agent: AgentKind, settings: AgentSettings) -> Server {
    let config = Config {
        workers: 2,
        agent,
        agent_settings: settings,
        ..Config::default()
    };
    Server::start(config, Some(in_process::memory_api().await)).await
}

fn check_spec(c: &Conversation) {
    for (_, m) in &c.received {
        let e = check_elevenlabs(Dir::ToServer, m);
        assert!(
            e.is_empty(),
            "hark sent a message the spec refuses: {m}\n{e:?}"
        );
    }
    for (_, m) in &c.sent {
        let e = check_elevenlabs(Dir::ToClient, m);
        assert!(
            e.is_empty(),
            "the double sent a message the spec refuses: {m}\n{e:?}"
        );
    }
    assert!(c.violations.is_empty(), "{:?}", c.violations);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    (0..hay.len().saturating_sub(needle.len() - 1))
        .filter(|&i| hay[i] == first)
        .find(|&i| hay[i..i + needle.len()] == *needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_multi_turn_through_the_media_stream() {
    tls();
    let double = ElevenLabsDouble::start(multi_turn_script()).await.unwrap();
    let server = start(AgentKind::ElevenLabs, settings(&double, "xi-test-key")).await;
    let audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    let mut setup = CallSetup::new(&server.url, Arc::from(audio.clone()));
    setup.speech = Some(speech("multi-turn"));
    setup.tail_ms = 300;
    setup.keep_heard = true;
    let call_sid = setup.start.call_sid.clone();
    // As hark's /voice TwiML passes them (`<Parameter>`s).
    setup.start.custom_parameters = vec![
        ("CallSid".into(), call_sid.clone()),
        ("payerId".into(), "P-42".into()),
    ];
    let r: Report = simulator::run_call(setup).await.unwrap();
    eprintln!("{}", simulator::format_table(&r));

    assert!(r.errors.is_empty(), "errors: {:?}", r.errors);
    assert_eq!(
        r.marks_sent, r.marks_echoed,
        "every mark echoed and matched"
    );
    assert_eq!(double.signed_url_requests(), 1, "one signed URL per call");
    let convs = double.wait_ended(1, Duration::from_secs(5)).await;
    assert_eq!(convs.len(), 1);
    let c = &convs[0];
    check_spec(c);

    // Turns answered; only the first answer is cut, by ElevenLabs' interruption.
    assert_eq!(r.turns.len(), 4);
    for (i, t) in r.turns.iter().enumerate() {
        let lat = t
            .latency_ms
            .unwrap_or_else(|| panic!("turn {i} got no answer"));
        // The double answers 300 ms after the turn + 50 ms to the first audio.
        assert!((300..=700).contains(&lat), "turn {i} latency {lat} ms");
        assert_eq!(t.interrupted, i == 0, "turn {i}");
    }
    assert_eq!(r.clears, 1);
    let clear_ms = r.barge_ins[0].clear_ms;
    assert!(
        (7_000..=7_300).contains(&clear_ms),
        "clear at {clear_ms} ms"
    );

    // Caller audio reached ElevenLabs byte for byte (μ-law passthrough).
    assert!(c.audio_in.len() >= audio.len());
    assert!(
        c.audio_in[..audio.len()] == audio[..],
        "caller audio relayed untouched"
    );
    // The answers reached the caller byte for byte, and nothing of the interrupted answer
    // (bytes 0x10..0x1F) played after the clear, although ElevenLabs re-sent stale chunks.
    let heard = r.heard.as_deref().expect("heard timeline");
    for k in 2..=4u8 {
        let a = reply_audio(k, if k == 4 { 2_000 } else { 2_500 });
        assert!(find(heard, &a).is_some(), "reply {k} heard byte for byte");
    }
    let after = &heard[(clear_ms as usize * 8).min(heard.len())..];
    assert!(
        !after.iter().any(|b| (0x10..0x20).contains(b)),
        "stale audio played after the interruption"
    );
    assert_eq!(
        c.sent_of("audio")
            .iter()
            .filter(|a| a["audio_event"]["audio_base_64"].as_str().is_some())
            .count(),
        40 + 2 + 25 + 25 + 20,
        "the double's audio events (incl. 2 stale re-sends)"
    );

    // Pings answered with their ids; the initiation went first.
    let pongs: Vec<i64> = c
        .received_of("pong")
        .iter()
        .map(|p| p["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(pongs, vec![4242, 4343]);
    assert_eq!(
        c.received[0].1["type"], "conversation_initiation_client_data",
        "initiation first"
    );
    assert_eq!(
        c.received[0].1["dynamic_variables"]["CallSid"],
        Value::String(call_sid.clone())
    );
    assert_eq!(c.received[0].1["dynamic_variables"]["payerId"], "P-42");

    // The call record: four turns, the first interrupted with what was heard (from marks)
    // and its heard words (from the alignment).
    let detail = server.record(&call_sid, Duration::from_secs(5)).await;
    let t0 = &detail.turns[0];
    assert!(t0.interrupted, "{:?}", detail.turns);
    let heard_ms = t0.heard_ms.expect("heard ms") as u64;
    assert!(
        heard_ms > 0 && heard_ms.is_multiple_of(100),
        "heard {heard_ms} ms, from marks"
    );
    // The transcripts: ElevenLabs sends `user_transcript` and `agent_response` 300 ms after
    // each turn, before hark's endpointing (600 ms) ends it; each still lands in its own turn.
    // The cut answer keeps what was heard: ElevenLabs' `agent_response_correction`.
    let said: Vec<(Option<&str>, Option<&str>)> = detail
        .turns
        .iter()
        .map(|t| (t.text.as_deref(), t.agent_text.as_deref()))
        .collect();
    assert_eq!(
        said,
        [
            (
                Some("Hi, I'm calling about my order, it was supposed to arrive yesterday."),
                Some("I'm sorry to hear that.")
            ),
            (Some("And so my fellow Americans"), Some("Yes, go on.")),
            (Some("ask what you can do for your country"), Some("Noted.")),
            (Some("Okay, thank you. Goodbye."), Some("Goodbye!")),
        ]
    );
    // Telemetry per turn: the provider's first audio (its end of turn → first audio, ≈ 50 ms
    // in the double) and voice-to-voice at the phone from the marks.
    // Voice-to-voice from the marks matches when the phone started hearing the answer,
    // both from the end of speech hark's VAD found.
    for (i, t) in detail.turns.iter().enumerate() {
        eprintln!("turn {i}: {t:?}");
        assert!(
            t.first_audio_ms.is_some_and(|ms| ms < 300),
            "turn {i}: {:?}",
            t.first_audio_ms
        );
        let phone = r.turns[i].agent_start_ms.unwrap() as i64 - t.user_end_ms;
        let heard = t.heard_latency_ms.expect("voice-to-voice from the marks");
        assert!(
            (heard - phone).abs() <= 25,
            "turn {i}: marks {heard} ms, phone {phone} ms"
        );
        assert!(t.latency_ms.is_some_and(|l| l <= heard), "turn {i}");
    }
    server.stop().await;
}

/// The relay's added latency per direction, measured on loopback with the double (`cargo test
/// --release -p hark-gateway --test elevenlabs -- --ignored --nocapture relay_latency`).
/// Inbound: a Twilio `media` sent → its `user_audio_chunk` at ElevenLabs. Outbound: an `audio`
/// event sent → its `media` at Twilio (20 ms events at real-time pace, so the playout's queue
/// never holds them back). Both include two loopback hops. `hark serve` sets `TCP_NODELAY` on
/// the Twilio socket; without it the outbound figure included the wait for Twilio's next packet
/// (its ACK), up to one inbound frame (≈ 19 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn relay_latency() {
    use futures_util::{SinkExt, StreamExt};
    use hark_engine::twilio;
    use tokio_tungstenite::tungstenite::Message;
    tls();
    // The double answers once with 10 s of audio in 20 ms chunks at real-time pace.
    // Every 20 ms chunk unique: its number in the first two bytes.
    let unique: Vec<u8> = (0..80_000u32)
        .map(|i| match i % 160 {
            0 => ((i / 160) >> 8) as u8 | 0x40,
            1 => (i / 160) as u8,
            _ => 0x55,
        })
        .collect();
    let script = Script {
        steps: vec![Step::Reply {
            at_ms: 200,
            reply: Reply {
                user_text: None,
                agent_text: "x".into(),
                audio: unique.into(),
            },
        }],
        chunk_ms: 20,
        speed: 1.0,
        first_audio_delay_ms: 0,
        ..Script::default()
    };
    let double = ElevenLabsDouble::start(script).await.unwrap();
    let server = start(AgentKind::ElevenLabs, settings(&double, "xi-test-key")).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&server.url).await.unwrap();
    let start = simulator::fresh_start(vec![]);
    let sid = start.stream_sid.clone();
    ws.send(Message::Text(twilio::inbound::connected().into()))
        .await
        .unwrap();
    ws.send(Message::Text(twilio::inbound::start(1, &start).into()))
        .await
        .unwrap();
    // One task reads and writes (a split tokio-tungstenite reader is only woken by the
    // writer's next poll: that would add up to 20 ms to the outbound figure).
    let mut sent = Vec::new();
    let mut got = Vec::new();
    let mut s = String::new();
    let t0 = tokio::time::Instant::now();
    let end = t0 + Duration::from_secs(12);
    let mut k = 0u64;
    loop {
        let next = t0 + Duration::from_millis(20 * (k + 1));
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(twilio::Outbound::Media { mulaw, .. }) = twilio::parse_outbound(t.as_str()) {
                        got.push((tokio::time::Instant::now(), mulaw));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = tokio::time::sleep_until(next), if k < 600 => {
                // Unique frames: the frame number in the first two bytes.
                let mut frame = vec![0xFFu8; 160];
                frame[0] = (k >> 8) as u8 & 0x7F;
                frame[1] = k as u8;
                twilio::inbound::media(k + 2, &sid, k + 1, 20 * k, &frame, &mut s);
                ws.send(Message::Text(s.clone().into())).await.unwrap();
                sent.push((tokio::time::Instant::now(), frame));
                k += 1;
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    let convs = double.conversations();
    let c = &convs[0];
    let mut inbound: Vec<u64> = sent
        .iter()
        .filter_map(|(t, f)| {
            c.chunks_in
                .iter()
                .find(|(_, b)| b[..] == f[..])
                .map(|(at, _)| at.duration_since(*t).as_micros() as u64)
        })
        .collect();
    let audio_events: Vec<(tokio::time::Instant, Vec<u8>)> = c
        .sent
        .iter()
        .filter_map(|(t, v)| {
            v["audio_event"]["audio_base_64"].as_str().map(|b| {
                use base64::Engine as _;
                (
                    *t,
                    base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
                )
            })
        })
        .collect();
    let mut outbound: Vec<u64> = audio_events
        .iter()
        .filter_map(|(t, b)| {
            got.iter()
                .find(|(_, m)| m[..] == b[..])
                .map(|(at, _)| at.duration_since(*t).as_micros() as u64)
        })
        .collect();
    inbound.sort_unstable();
    outbound.sort_unstable();
    let pct = |v: &[u64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    eprintln!(
        "relay latency, µs: inbound (Twilio media → user_audio_chunk) n={} p50={} p90={} p99={} max={}",
        inbound.len(),
        pct(&inbound, 0.5),
        pct(&inbound, 0.9),
        pct(&inbound, 0.99),
        inbound.last().unwrap()
    );
    eprintln!(
        "relay latency, µs: outbound (audio event → Twilio media) n={} p50={} p90={} p99={} max={}",
        outbound.len(),
        pct(&outbound, 0.5),
        pct(&outbound, 0.9),
        pct(&outbound, 0.99),
        outbound.last().unwrap()
    );
    assert!(inbound.len() > 500 && outbound.len() > 300);
    drop(ws);
    server.stop().await;
}

// ---- elevenlabs-direct: /voice TwiML ----

fn golden(name: &str, got: &str) {
    let path = fixture("twiml").join(name);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden {path:?}; run with BLESS=1"));
    assert_eq!(got, want, "golden {name} differs");
}

async fn voice(double: &ElevenLabsDouble) -> (StatusCode, String) {
    let mut config = Config {
        workers: 1,
        agent: AgentKind::ElevenLabsDirect,
        ..Config::default()
    };
    let s = settings(double, "xi-test-key");
    config.agent_settings = s;
    let st = AppState::new(config).unwrap();
    let req = Request::post("/voice")
        .header(header::HOST, "hark.example.com")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            "CallSid=CA1234567890abcdef1234567890abcdef&From=%2B15551234567&To=%2B15557654321",
        ))
        .unwrap();
    let resp = server::router(st).oneshot(req).await.unwrap();
    let status = resp.status();
    assert_eq!(
        resp.headers().get(header::CONTENT_TYPE).unwrap(),
        "text/xml"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    // The double's port and the signature change every run.
    let base = double.base_url().replace("http://", "");
    let body = body.replace(&base, "elevenlabs.double");
    let body = match body.split_once("conversation_signature=") {
        Some((a, b)) => {
            let rest = &b[b.find('"').unwrap()..];
            format!("{a}conversation_signature=SIGNATURE{rest}")
        }
        None => body,
    };
    (status, body)
}

#[tokio::test]
async fn direct_mode_connects_twilio_to_the_signed_url() {
    tls();
    let double = ElevenLabsDouble::start(Script::default()).await.unwrap();
    let (status, body) = voice(&double).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#"<Stream url="ws://elevenlabs.double/v1/convai/conversation?agent_id=agent_double&amp;conversation_signature=SIGNATURE" />"#),
        "{body}"
    );
    golden("elevenlabs-direct-ok.xml", &body);
    assert_eq!(double.signed_url_requests(), 1);
}

#[tokio::test]
async fn direct_mode_failures_are_spoken_and_hang_up() {
    tls();
    let double = ElevenLabsDouble::start(Script::default()).await.unwrap();
    for (status, file, words) in [
        (401, "elevenlabs-direct-401.xml", "not configured correctly"),
        (
            429,
            "elevenlabs-direct-429.xml",
            "busy, please call back in a few minutes",
        ),
        (500, "elevenlabs-direct-500.xml", "technical difficulties"),
    ] {
        double.fail_signed_url(Some(status));
        let (code, body) = voice(&double).await;
        assert_eq!(code, StatusCode::OK, "Twilio must get TwiML it can play");
        assert!(
            body.contains(words) && body.ends_with("<Hangup /></Response>"),
            "{body}"
        );
        golden(file, &body);
    }
    // A wrong key is a real 401 from the double.
    double.fail_signed_url(None);
    let mut config = Config {
        workers: 1,
        agent: AgentKind::ElevenLabsDirect,
        ..Config::default()
    };
    config.agent_settings = settings(&double, "wrong-key");
    let st = AppState::new(config).unwrap();
    let req = Request::post("/voice")
        .header(header::HOST, "h")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("CallSid=CA1"))
        .unwrap();
    let resp = server::router(st).oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("not configured correctly"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_ends_the_call_when_the_signed_url_is_refused() {
    tls();
    let double = ElevenLabsDouble::start(Script::default()).await.unwrap();
    double.fail_signed_url(Some(429));
    let server = start(AgentKind::ElevenLabs, settings(&double, "xi-test-key")).await;
    let mut setup = CallSetup::new(&server.url, Arc::from(vec![0xFFu8; 8 * 3_000]));
    setup.speed = 4.0;
    setup.tail_ms = 0;
    let r = simulator::run_call(setup).await.unwrap();
    // The server closed the stream early (the agent hung up): no audio, no conversation.
    assert_eq!(r.outbound_frames, 0);
    assert!(
        r.inbound_frames < 150,
        "ended early: {} frames",
        r.inbound_frames
    );
    assert!(double.conversations().is_empty());
    server.stop().await;
}
