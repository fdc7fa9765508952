//! Hostile and idle clients against `hark serve` (in process, real sockets on 127.0.0.1):
//! slow headers (slowloris), idle keep-alive connections, upgraded sockets that never send
//! `start`, a flood of connections beyond the cap, and a 1 GB frame header — while a live call
//! goes on unharmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod in_process;
use in_process::fixture;

use futures_util::{SinkExt, StreamExt};
use hark_gateway::config::Config;
use hark_gateway::conns::ConnState;
use hark_gateway::simulator::{self, CallSetup};
use in_process::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn start(f: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        workers: 2,
        ..Config::default()
    };
    f(&mut config);
    Server::start(config, None).await
}

/// Reads until the server closes the connection (or `limit` passes); returns what was read and
/// how long it took.
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, t.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let server = start(|c| c.limits.header_timeout = Duration::from_millis(500)).await;
    // Slowloris: one byte every 200 ms never completes the headers in time.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let t = Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut closed_after = None;
    for b in request {
        if slow.write_all(&[*b]).await.is_err() {
            closed_after = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut probe = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            // A 408 or a close: either way the server gave up on it.
            let _ = n;
            closed_after = Some(t.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("a slowloris connection must be closed");
    assert!(closed_after < Duration::from_secs(2), "{closed_after:?}");

    // Keep-alive: one request answered, then silence: closed after the header deadline.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(request).await.unwrap();
    let (got, took) = read_to_close(&mut idle, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_socket_without_start_is_closed_with_1008() {
    let server = start(|c| c.limits.start_timeout = Duration::from_millis(500)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url.as_str())
        .await
        .unwrap();
    let t = Instant::now();
    // `connected` every 200 ms keeps it busy but is not a call.
    let code = loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let _ = ws.send(Message::text(hark_engine::twilio::inbound::connected())).await;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(5), "never closed");
    };
    assert_eq!(code, Some(1008));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_header_of_a_gigabyte_is_refused_with_1009() {
    let server = start(|_| {}).await;
    let (ws, _) = tokio_tungstenite::connect_async(server.url.as_str())
        .await
        .unwrap();
    let mut tcp = match ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(t) => t,
        _ => unreachable!("plain ws://"),
    };
    // A masked text frame header announcing 1 GiB, and a little of it.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 30).to_be_bytes());
    frame.extend_from_slice(&[9, 9, 9, 9]);
    frame.extend_from_slice(&[0u8; 1000]);
    tcp.write_all(&frame).await.unwrap();
    let (got, _) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    // Server frame: FIN|close, length, then the status code.
    assert!(got.len() >= 4, "{got:?}");
    assert_eq!(got[0], 0x88);
    assert_eq!(u16::from_be_bytes([got[2], got[3]]), 1009);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_while_a_live_call_goes_on() {
    let server = start(|c| {
        c.limits.max_pending_connections = 8;
        c.limits.header_timeout = Duration::from_secs(30);
    })
    .await;
    // A live call first (the echo agent; a multi-turn real-speech session).
    let audio = std::fs::read(fixture("audio/multi-turn-8k.ulaw")).unwrap();
    let mut setup = CallSetup::new(&server.url, Arc::from(audio));
    setup.tail_ms = 300;
    let call = tokio::spawn(simulator::run_call(setup));
    // Wait until it is counted as a call.
    let t = Instant::now();
    while server.state.connections().count(ConnState::Call) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the call never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 8 idle connections fill the cap; 40 more are refused at once with 503.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let t = Instant::now();
    while server.state.connections().pending() < 8 {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..40 {
        let mut c = TcpStream::connect(server.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, took) = read_to_close(&mut c, Duration::from_secs(3)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.contains("too many connections"), "{text}");
        assert!(took < Duration::from_secs(2));
    }
    // Freed slots are usable again.
    drop(idle);
    let t = Instant::now();
    while server.state.connections().pending() > 0 {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut c, Duration::from_secs(3)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hark_connections_refused_total"), "{text}");
    assert!(
        text.contains("hark_connections{state=\"call\"} 1"),
        "{text}"
    );
    // The call was not disturbed.
    let report = call.await.unwrap().expect("call");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.turns.len(), 4, "{:?}", report.turns);
    server.stop().await;
}

/// A client frame (masked, RFC 6455 §5.3) carrying `text`.
fn masked_text(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let key = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_upgrade_request_reach_the_call() {
    // The upgrade request and a whole short call in one write: hyper reads past the request,
    // and those bytes must follow the connection onto the call's worker.
    let server = Server::start(
        Config {
            workers: 2,
            ..Config::default()
        },
        Some(in_process::memory_api().await),
    )
    .await;
    let mut bytes = format!(
        "GET /media-stream HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr.port()
    )
    .into_bytes();
    let (stream, call) = (
        "MZ00000000000000000000000000000001",
        "CA00000000000000000000000000000001",
    );
    bytes.extend(masked_text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ));
    bytes.extend(masked_text(&format!(
        r#"{{"event":"start","sequenceNumber":"1","streamSid":"{stream}","start":{{"accountSid":"AC1","streamSid":"{stream}","callSid":"{call}","tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"customParameters":{{}}}}}}"#
    )));
    let silence = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0xffu8; 160]);
    for i in 0..10 {
        bytes.extend(masked_text(&format!(
            r#"{{"event":"media","sequenceNumber":"{}","streamSid":"{stream}","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{silence}"}}}}"#,
            i + 2,
            i + 1,
            i * 20
        )));
    }
    bytes.extend(masked_text(&format!(
        r#"{{"event":"stop","sequenceNumber":"12","streamSid":"{stream}","stop":{{"accountSid":"AC1","callSid":"{call}"}}}}"#
    )));
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(&bytes).await.expect("one write");
    let (got, _) = read_to_close(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let api = server.api().clone();
    // The call task hands in its summary after the socket has closed: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let detail = loop {
        assert!(api.flush().await);
        let d = api.store().call(call).await.expect("read");
        if let Some(d) = d.filter(|d| !d.summary.is_null()) {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the call was never recorded as ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(detail.call.stream_sid.as_deref(), Some(stream));
    assert_eq!(
        detail.summary["ended"], "closed: Stopped",
        "the stop (in the same write) ended it: {}",
        detail.summary
    );
    server.stop().await;
}
