//! `hark call` against a scripted agent: a small WebSocket server on 127.0.0.1:0 that checks
//! every message the simulator sends the way Twilio's peer would see it, and answers with
//! `media` + `mark` (and `clear`, pings, bad frames) after given numbers of inbound frames.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hark_engine::twilio::{self, Inbound, Start};
use hark_gateway::signature::Validator;
use hark_gateway::simulator::{
    self, CallArgs, CallSetup, Report, SimError, TurnSource, UserSpeech,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(rel)
}

/// What the scripted agent does once it has received a given number of inbound frames.
#[derive(Debug, Clone)]
enum Act {
    /// Sends `ms` of audio in `media` messages of `chunk_ms`, a `mark` after every
    /// `mark_every_ms` and at the end, all in one flush.
    Speak {
        ms: u64,
        chunk_ms: u64,
        mark_every_ms: u64,
    },
    /// Sends `clear`.
    Clear,
    /// Sends a binary frame and a message Twilio would reject (an extra field).
    Misbehave,
    /// Closes the socket.
    Close,
}

#[derive(Debug, Clone)]
struct Script {
    acts: Vec<(u64, Act)>,
    ping_first: bool,
    close_on_stop: bool,
}

impl Script {
    fn new(acts: Vec<(u64, Act)>) -> Self {
        Script {
            acts,
            ping_first: false,
            close_on_stop: true,
        }
    }
}

/// What the agent saw.
#[derive(Debug, Default)]
struct Seen {
    path: String,
    signature: Option<String>,
    connected_first: bool,
    start: Option<Start>,
    media: u64,
    /// Problems with the inbound messages' shape or numbering.
    problems: Vec<String>,
    echoes: Vec<String>,
    marks_sent: u64,
    media_sent: u64,
    stop: bool,
    pong: bool,
}

/// Agent audio: alternating μ-law codes, never 0xFF, so the heard timeline shows it.
const AGENT_CODES: [u8; 2] = [0x20, 0xA0];

async fn agent(script: Script, calls: usize) -> (String, JoinHandle<Vec<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "ws://127.0.0.1:{}/media-stream",
        listener.local_addr().unwrap().port()
    );
    let handle = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..calls {
            let (tcp, _) = listener.accept().await.unwrap();
            tasks.push(tokio::spawn(serve(tcp, script.clone())));
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await.unwrap());
        }
        seen
    });
    (url, handle)
}

// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's signature.
#[allow(clippy::result_large_err)]
async fn serve(tcp: tokio::net::TcpStream, script: Script) -> Seen {
    let hdr: Arc<Mutex<(String, Option<String>)>> = Arc::default();
    let h = hdr.clone();
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
        let sig = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        *h.lock().unwrap() = (req.uri().path().to_string(), sig);
        Ok(resp)
    })
    .await
    .unwrap();
    let mut seen = Seen::default();
    {
        let (path, sig) = hdr.lock().unwrap().clone();
        seen.path = path;
        seen.signature = sig;
    }
    if script.ping_first {
        ws.send(Message::Ping("are you there".into()))
            .await
            .unwrap();
    }
    let mut sid = String::new();
    let mut last_seq = 0u64;
    let mut first = true;
    let mut out = String::new();
    let mut mulaw = Vec::new();
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Pong(_)) => {
                seen.pong = true;
                continue;
            }
            Ok(Message::Close(_)) => continue,
            Ok(other) => {
                seen.problems.push(format!("unexpected frame {other:?}"));
                continue;
            }
            Err(e) => {
                seen.problems.push(format!("socket error {e}"));
                break;
            }
        };
        let parsed = match twilio::parse(&text) {
            Ok(p) => p,
            Err(e) => {
                seen.problems.push(format!("unparsable {text}: {e}"));
                continue;
            }
        };
        if parsed.ignored_fields != 0 {
            seen.problems.push(format!("extra fields in {text}"));
        }
        if first {
            seen.connected_first = parsed.message == Inbound::Connected;
            first = false;
        }
        if !matches!(parsed.message, Inbound::Connected) {
            match parsed.sequence_number {
                Some(n) if n == last_seq + 1 => last_seq = n,
                other => seen
                    .problems
                    .push(format!("sequenceNumber {other:?} after {last_seq}")),
            }
            if !text.contains(&format!("\"sequenceNumber\":\"{last_seq}\"")) {
                seen.problems
                    .push(format!("sequenceNumber not a string: {text}"));
            }
        }
        match parsed.message {
            Inbound::Start(s) => {
                sid = s.stream_sid.clone();
                seen.start = Some(*s);
            }
            Inbound::Media(m) => {
                seen.media += 1;
                let n = seen.media;
                if m.chunk != Some(n) || m.timestamp_ms != Some(20 * (n - 1)) {
                    seen.problems.push(format!(
                        "frame {n}: chunk {:?} timestamp {:?}",
                        m.chunk, m.timestamp_ms
                    ));
                }
                mulaw.clear();
                if twilio::decode_payload(&m.payload, &mut mulaw) != Ok(160) {
                    seen.problems
                        .push(format!("frame {n}: payload not 160 bytes"));
                }
                if parsed.stream_sid.as_deref() != Some(sid.as_str()) {
                    seen.problems.push(format!("frame {n}: streamSid"));
                }
                for (at, act) in &script.acts {
                    if *at != n {
                        continue;
                    }
                    match act {
                        Act::Speak {
                            ms,
                            chunk_ms,
                            mark_every_ms,
                        } => {
                            let chunk: Vec<u8> = AGENT_CODES
                                .iter()
                                .copied()
                                .cycle()
                                .take((chunk_ms * 8) as usize)
                                .collect();
                            let mut since_mark = 0;
                            for _ in 0..ms / chunk_ms {
                                twilio::encode_media(&sid, &chunk, &mut out);
                                ws.feed(Message::text(out.clone())).await.unwrap();
                                seen.media_sent += 1;
                                since_mark += chunk_ms;
                                if since_mark >= *mark_every_ms {
                                    since_mark = 0;
                                    seen.marks_sent += 1;
                                    let name = format!("m{}", seen.marks_sent);
                                    twilio::encode_mark(&sid, &name, &mut out);
                                    ws.feed(Message::text(out.clone())).await.unwrap();
                                }
                            }
                            if since_mark > 0 {
                                seen.marks_sent += 1;
                                let name = format!("m{}", seen.marks_sent);
                                twilio::encode_mark(&sid, &name, &mut out);
                                ws.feed(Message::text(out.clone())).await.unwrap();
                            }
                            ws.flush().await.unwrap();
                        }
                        Act::Clear => {
                            twilio::encode_clear(&sid, &mut out);
                            ws.send(Message::text(out.clone())).await.unwrap();
                        }
                        Act::Misbehave => {
                            ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
                            let bad = format!(
                                r#"{{"event":"clear","streamSid":"{sid}","sequenceNumber":"1"}}"#
                            );
                            ws.send(Message::text(bad)).await.unwrap();
                        }
                        Act::Close => {
                            let _ = ws.close(None).await;
                        }
                    }
                }
            }
            Inbound::Mark { name } => seen.echoes.push(name.to_string()),
            Inbound::Stop => {
                seen.stop = true;
                if script.close_on_stop {
                    let _ = ws.close(None).await;
                }
            }
            Inbound::Connected => {}
            other => seen.problems.push(format!("unexpected {other:?}")),
        }
    }
    seen
}

fn args(url: &str, audio: Option<PathBuf>, speed: f64, tail_ms: u64) -> CallArgs {
    CallArgs {
        url: url.to_string(),
        audio,
        params: Vec::new(),
        speed,
        out: None,
        auth_token: None,
        public_url: None,
        tail_ms,
        json: false,
        annotation: None,
    }
}

fn annotation(name: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("sessions/{name}.json"))).unwrap(),
    )
    .unwrap()
}

fn assert_annotated_turns(report: &Report) {
    assert_eq!(report.turn_source, TurnSource::Annotation);
    let ann = annotation("multi-turn");
    let segs = ann["segments"].as_array().unwrap();
    assert_eq!(report.turns.len(), segs.len());
    for (t, s) in report.turns.iter().zip(segs) {
        assert_eq!(t.user_start_ms, s["start_ms"].as_u64().unwrap());
        assert_eq!(t.user_end_ms, s["end_ms"].as_u64().unwrap());
    }
}

/// Replays multi-turn.jsonl at 10× real time against an agent that answers turn A (and is
/// interrupted by B with a `clear`), B and D: turns from the annotation, latencies, barge-in,
/// marks, the signature, the `start` from the recording, and the heard WAV.
#[tokio::test]
async fn replays_a_session_with_turns_marks_barge_in_signature_and_wav() {
    let speak = |ms, chunk_ms, mark_every_ms| Act::Speak {
        ms,
        chunk_ms,
        mark_every_ms,
    };
    let script = Script::new(vec![
        // 5800 ms: 700 ms after A ends, 2 s of answer (until 7800 if not interrupted), in
        // 20 ms messages with a mark every 100 ms.
        (290, speak(2000, 20, 100)),
        // Frame 346 (audio 6900-6920 ms, sent at 6920) is B's 6th voiced frame: barge-in.
        (346, Act::Clear),
        // 10000 ms: B's answer, 1 s in 100 ms messages, each followed by a mark.
        (500, speak(1000, 100, 100)),
        // 23000 ms: D's answer, 0.5 s in one message.
        (1150, speak(500, 500, 500)),
    ]);
    let (url, server) = agent(script, 1).await;
    let dir = std::env::temp_dir().join(format!("hark-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("heard.wav");
    let mut a = args(&url, Some(fixture("sessions/multi-turn.jsonl")), 10.0, 500);
    a.params = vec![
        ("caller".into(), "test".into()),
        ("lang".into(), "en".into()),
    ];
    a.out = Some(out.clone());
    a.auth_token = Some("test-token".into());
    let t = Instant::now();
    let report = simulator::run(&a).await.unwrap();
    let elapsed = t.elapsed();
    let seen = server.await.unwrap().pop().unwrap();
    println!("{}", simulator::format_table(&report));

    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    // 27,640 ms / 20 = 1382 frames, plus 500 ms of tail.
    assert_eq!(report.inbound_frames, 1382 + 25);
    assert_eq!(seen.media, report.inbound_frames);
    assert!(seen.connected_first && seen.stop);
    assert!(
        elapsed < Duration::from_secs(10),
        "28 s of media at 10x took {elapsed:?}"
    );

    // The upgrade is signed like Twilio's, over the exact URL.
    assert_eq!(seen.path, "/media-stream");
    let sig = seen.signature.as_deref();
    assert!(sig.is_some());
    Validator::new("test-token")
        .validate_websocket(&url, sig)
        .unwrap();
    assert!(
        Validator::new("other")
            .validate_websocket(&url, sig)
            .is_err()
    );

    // `start` from the recording, with --param merged in.
    let start = seen.start.unwrap();
    let call = &annotation("multi-turn")["call"];
    assert_eq!(start.stream_sid, call["streamSid"].as_str().unwrap());
    assert_eq!(start.call_sid, call["callSid"].as_str().unwrap());
    assert_eq!(start.account_sid, call["accountSid"].as_str().unwrap());
    assert_eq!(report.stream_sid, start.stream_sid);
    let mut params = start.custom_parameters.clone();
    params.sort();
    assert_eq!(
        params,
        vec![
            ("caller".to_string(), "test".to_string()),
            ("lang".to_string(), "en".to_string()),
            ("session".to_string(), "multi-turn".to_string()),
        ]
    );
    assert_eq!(start.tracks, vec!["inbound"]);
    assert_eq!(
        (start.encoding.as_str(), start.sample_rate, start.channels),
        ("audio/x-mulaw", 8000, 1)
    );

    // Outbound totals and marks: every mark the agent sent was echoed exactly once.
    assert_eq!(report.outbound_frames, 100 + 10 + 1);
    assert_eq!(report.outbound_frames, seen.media_sent);
    assert_eq!(report.outbound_audio_ms, 3500);
    assert_eq!(report.marks_sent, seen.marks_sent);
    assert_eq!(report.marks_sent, 20 + 10 + 1);
    assert_eq!(report.marks_echoed, report.marks_sent);
    let mut echoes = seen.echoes.clone();
    echoes.sort();
    echoes.dedup();
    assert_eq!(echoes.len(), seen.echoes.len(), "a mark echoed twice");
    assert_eq!(seen.echoes.len() as u64, report.marks_echoed);

    // Turns from the annotation, matched to what the caller heard.
    assert_annotated_turns(&report);
    let [a_, b_, c_, d_] = &report.turns[..] else {
        panic!("{:?}", report.turns)
    };
    let a_start = a_.agent_start_ms.unwrap();
    assert!((5800..6300).contains(&a_start), "{a_:?}");
    assert_eq!(a_.latency_ms, Some(a_start - 5100));
    assert!(a_.interrupted, "{a_:?}");
    assert!(a_.agent_audio_ms > 0 && a_.agent_audio_ms < 2000, "{a_:?}");
    assert!(b_.agent_start_ms.unwrap() >= 10_000, "{b_:?}");
    // 1000 ms unless a scheduling stall of 20 ms (200 ms of media at 10x, the phone's burst
    // gap) between two of its messages split it.
    assert!((100..=1000).contains(&b_.agent_audio_ms), "{b_:?}");
    assert!(!b_.interrupted);
    assert_eq!((c_.agent_start_ms, c_.latency_ms), (None, None));
    assert!(d_.latency_ms.unwrap() >= 480, "{d_:?}");
    // One message: played whole, to the ms.
    assert_eq!(d_.agent_audio_ms, 500);

    // The clear arrived while B was speaking; measured from B's first voiced frame.
    assert_eq!(report.clears, 1);
    let bi = &report.barge_ins[0];
    assert_eq!(bi.speech_start_ms, Some(6800));
    let delay = bi.delay_ms.unwrap();
    assert!((100..700).contains(&delay), "{bi:?}");
    assert_eq!(delay, bi.clear_ms as i64 - 6820);

    // The WAV holds what the caller heard, placed in media time.
    let wav = hark_codecs::wav::read_file(&out).unwrap();
    let heard = wav.mulaw.expect("a μ-law 8 kHz WAV");
    assert_eq!(heard.len() as u64, report.duration_ms * 8);
    assert!(report.duration_ms >= 27_640 + 500);
    let agent_bytes = heard.iter().filter(|b| AGENT_CODES.contains(b)).count() as u64;
    let heard_ms: u64 = report.turns.iter().map(|t| t.agent_audio_ms).sum();
    assert!(
        agent_bytes / 8 >= heard_ms && agent_bytes / 8 <= 3500,
        "{agent_bytes} bytes vs {heard_ms} ms"
    );
    let a_pos = (a_start * 8) as usize;
    // The answer starts exactly where the report says (the phone's clock runs in whole ms).
    assert!(
        heard[a_pos - 8..a_pos]
            .iter()
            .all(|b| !AGENT_CODES.contains(b))
    );
    assert!(
        heard[a_pos..a_pos + 8]
            .iter()
            .all(|b| AGENT_CODES.contains(b))
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // The table and the JSON carry the same facts.
    let table = simulator::format_table(&report);
    assert!(table.contains("1000-5100"), "{table}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["turns"][0]["user_end_ms"], 5100);
    assert_eq!(json["barge_ins"][0]["speech_start_ms"], 6800);
    assert_eq!(json["marks_echoed"], report.marks_echoed);
}

/// At speed 0 the whole session goes out as fast as the socket takes it; pings are answered;
/// no signature without a token.
#[tokio::test]
async fn speed_zero_sends_as_fast_as_possible_and_answers_pings() {
    let mut script = Script::new(vec![(
        50,
        Act::Speak {
            ms: 200,
            chunk_ms: 20,
            mark_every_ms: 100,
        },
    )]);
    script.ping_first = true;
    let (url, server) = agent(script, 1).await;
    let t = Instant::now();
    let report = simulator::run(&args(
        &url,
        Some(fixture("sessions/multi-turn.jsonl")),
        0.0,
        3000,
    ))
    .await
    .unwrap();
    let elapsed = t.elapsed();
    let seen = server.await.unwrap().pop().unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    assert!(seen.pong, "ping not answered");
    assert_eq!(seen.signature, None);
    assert_eq!(report.inbound_frames, 1382 + 150);
    assert_eq!(seen.media, report.inbound_frames);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_annotated_turns(&report);
    assert_eq!(report.outbound_frames, 10);
    assert_eq!(report.outbound_audio_ms, 200);
    assert_eq!(report.marks_sent, 2);
    // Echoes only for audio played before `stop` (the phone's clock follows the media sent).
    assert!(report.marks_echoed <= 2);
    assert_eq!(seen.echoes.len() as u64, report.marks_echoed);
    assert_eq!(report.duration_ms, (1382 + 150) * 20);
}

/// A 16 kHz PCM WAV is resampled to 8 kHz μ-law; without an annotation hark's VAD finds the
/// caller's turns.
#[tokio::test]
async fn wav_audio_is_resampled_and_turns_come_from_the_vad() {
    let (url, server) = agent(Script::new(vec![]), 1).await;
    let report = simulator::run(&args(&url, Some(fixture("audio/jfk.wav")), 0.0, 1000))
        .await
        .unwrap();
    let seen = server.await.unwrap().pop().unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(seen.problems.is_empty(), "{:?}", seen.problems);
    // 11,000 ms of audio + 1,000 ms of tail.
    assert_eq!(report.inbound_frames, 600);
    assert_eq!(report.turn_source, TurnSource::Vad);
    assert!(report.turns.len() >= 2, "{:?}", report.turns);
    // Speech in jfk.wav runs from 330 ms to 10,210 ms (its own background, about -40 dBFS,
    // starts at 0 ms, before the VAD's noise gate has a floor).
    let first = &report.turns[0];
    assert!(first.user_start_ms <= 420, "{:?}", report.turns);
    let last = report.turns.last().unwrap();
    assert!(
        (10_000..=11_000).contains(&last.user_end_ms),
        "{:?}",
        report.turns
    );
    assert!(report.turns.iter().all(|t| t.agent_start_ms.is_none()));
}

/// Protocol problems end up in `errors`, never in a panic.
#[tokio::test]
async fn a_misbehaving_server_is_reported() {
    let script = Script::new(vec![(10, Act::Misbehave), (20, Act::Close)]);
    let (url, server) = agent(script, 1).await;
    let report = simulator::run(&args(
        &url,
        Some(fixture("audio/line-noise-8k.ulaw")),
        10.0,
        0,
    ))
    .await
    .unwrap();
    let seen = server.await.unwrap().pop().unwrap();
    let errors = report.errors.join("\n");
    assert!(errors.contains("binary frame"), "{errors}");
    assert!(
        errors.contains("invalid message from the server"),
        "{errors}"
    );
    assert!(errors.contains("before stop"), "{errors}");
    assert!(!seen.stop);
    assert!(report.inbound_frames >= 20 && report.inbound_frames < 150);
}

/// A server that never closes after `stop` is closed by the simulator after the timeout.
#[tokio::test]
async fn a_server_that_does_not_close_is_closed_after_the_timeout() {
    let mut script = Script::new(vec![]);
    script.close_on_stop = false;
    let (url, server) = agent(script, 1).await;
    let mut setup = CallSetup::new(url, Arc::from(vec![0xFFu8; 800]));
    setup.speed = 0.0;
    setup.tail_ms = 0;
    setup.close_timeout = Duration::from_millis(200);
    let t = Instant::now();
    let report = simulator::run_call(setup).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    let seen = server.await.unwrap().pop().unwrap();
    assert!(seen.stop);
    assert_eq!(report.inbound_frames, 5);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].contains("did not close"));
}

/// A server that stops reading (its socket's receive buffer full, the simulator's send buffer
/// full behind it) is reported after `close_timeout` without progress, and the call ends: frames
/// are not piled up without bound in the simulator's write buffer meanwhile.
#[tokio::test]
async fn a_server_that_stops_reading_is_reported_and_the_call_ends() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4).unwrap();
    let url = format!("ws://{}/media-stream", listener.local_addr().unwrap());
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        // `connected`, then `start`; then nothing more is read until the test is done.
        for _ in 0..2 {
            ws.next().await.unwrap().unwrap();
        }
        let _ = released.await;
    });
    // Ten minutes of audio at speed 0: far more than the two sockets' buffers hold.
    let frames = 30_000u64;
    let mut setup = CallSetup::new(url, Arc::from(vec![0xFFu8; frames as usize * 160]));
    setup.speed = 0.0;
    setup.tail_ms = 0;
    setup.close_timeout = Duration::from_millis(300);
    let t = Instant::now();
    let report = simulator::run_call(setup).await.unwrap();
    let took = t.elapsed();
    let _ = release.send(());
    server.await.unwrap();
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        report.errors.iter().any(|e| e.contains("stopped reading")),
        "{:?}",
        report.errors
    );
    // Stuck well before the end, and not by an unbounded write buffer: what the simulator
    // counts as sent is what the kernel's buffers took plus one flush's worth.
    assert!(
        report.inbound_frames > 10 && report.inbound_frames < frames / 2,
        "{} frames sent",
        report.inbound_frames
    );
}

/// Many calls share one audio buffer and one speech analysis (what `hark bench` does), each
/// with its own SIDs.
#[tokio::test]
async fn concurrent_calls_share_one_buffer() {
    let calls = 4;
    let script = Script::new(vec![(
        25,
        Act::Speak {
            ms: 100,
            chunk_ms: 20,
            mark_every_ms: 100,
        },
    )]);
    let (url, server) = agent(script, calls).await;
    let loaded = simulator::load_audio(&fixture("audio/line-noise-8k.ulaw")).unwrap();
    assert_eq!(loaded.mulaw.len(), 24_000);
    let speech = UserSpeech::detect(&loaded.mulaw, 200);
    assert!(speech.spans.is_empty());
    let mut tasks = Vec::new();
    for _ in 0..calls {
        let mut setup = CallSetup::new(url.clone(), loaded.mulaw.clone());
        setup.speed = 50.0;
        setup.tail_ms = 200;
        setup.speech = Some(speech.clone());
        // `run_call` is Send: calls can be spawned on a multi-threaded runtime.
        tasks.push(tokio::spawn(simulator::run_call(setup)));
    }
    let mut sids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.inbound_frames, 160);
        assert_eq!(
            (r.outbound_audio_ms, r.marks_sent, r.marks_echoed),
            (100, 1, 1)
        );
        assert!(r.heard.is_none());
        assert!(r.turns.is_empty());
        sids.push(r.stream_sid);
    }
    sids.sort();
    sids.dedup();
    assert_eq!(sids.len(), calls);
    for seen in server.await.unwrap() {
        assert!(seen.problems.is_empty(), "{:?}", seen.problems);
        assert_eq!(seen.media, 160);
    }
}

#[tokio::test]
async fn connection_refused_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let setup = CallSetup::new(
        format!("ws://127.0.0.1:{port}/media-stream"),
        Arc::from(&[][..]),
    );
    assert!(matches!(
        simulator::run_call(setup).await,
        Err(SimError::Connect { .. })
    ));
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    call: CallArgs,
}

#[test]
fn command_line() {
    let cli = Cli::try_parse_from([
        "hark",
        "ws://127.0.0.1:8080/media-stream",
        "--audio",
        "x.jsonl",
        "--param",
        "a=1",
        "--param",
        "b=x=y",
        "--speed",
        "0",
        "--out",
        "o.wav",
        "--tail-ms",
        "100",
        "--json",
        "--annotation",
        "x.json",
        "--auth-token",
        "tok",
        "--public-url",
        "https://abc.ngrok.app",
    ])
    .unwrap();
    let c = cli.call;
    assert_eq!(c.url, "ws://127.0.0.1:8080/media-stream");
    assert_eq!(
        c.params,
        vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
    );
    assert_eq!((c.speed, c.tail_ms, c.json), (0.0, 100, true));
    assert_eq!(c.auth_token.as_deref(), Some("tok"));
    assert_eq!(c.public_url.as_deref(), Some("https://abc.ngrok.app"));
    assert!(Cli::try_parse_from(["hark", "ws://h/x", "--speed", "-2"]).is_err());
    assert!(Cli::try_parse_from(["hark", "ws://h/x", "--param", "nokey"]).is_err());
    let d = Cli::try_parse_from(["hark", "ws://h/x"]).unwrap().call;
    assert_eq!((d.speed, d.tail_ms, d.json), (1.0, 3000, false));
    assert!(d.audio.is_none() && d.out.is_none() && d.annotation.is_none());
    assert!(d.public_url.is_none());
}

#[test]
fn bad_settings_are_refused_before_connecting() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for url in ["wss://h/x", "ws://h/x?a=b", "http://h/x"] {
        let r = rt.block_on(simulator::run(&args(url, None, 1.0, 0)));
        assert!(matches!(r, Err(SimError::Invalid(_))), "{url}");
    }
    let mut a = args("ws://127.0.0.1:9/x", Some(fixture("nope.wav")), 1.0, 0);
    assert!(matches!(
        rt.block_on(simulator::run(&a)),
        Err(SimError::Audio { .. })
    ));
    a.audio = None;
    a.annotation = Some(fixture("nope.json"));
    assert!(matches!(
        rt.block_on(simulator::run(&a)),
        Err(SimError::Annotation { .. })
    ));
}
