//! The HTTP connector (`hark_engine::io::http`) against a local axum server on 127.0.0.1:0:
//! bodies (JSON, bytes, multipart), the three response modes streamed as they arrive, non-2xx
//! answers with `Retry-After`/`retry-after-ms`, timeouts, refused connections, a connection
//! dropped mid-body, cancellation by `Close` (the server sees the connection go), and
//! connection reuse through the shared client.
#![cfg(feature = "io")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hark_engine::agent::{
    FaultKind, HttpBody, HttpRequest, MultipartPart, OpenSpec, PeerId, ProviderCommand,
    ProviderEvent, ProviderMessage, ResponseMode,
};
use hark_engine::io::http::{self, Client};
use hark_engine::io::{Connectors, Providers};
use tokio::sync::mpsc;

#[derive(Default)]
struct Seen {
    /// Remote ports of requests, in order.
    ports: Vec<u16>,
    /// Set when a streaming body was dropped (the client went away).
    dropped: bool,
}

type Shared = Arc<Mutex<Seen>>;

/// A body that yields `parts` with `gap` between them; `fail_after` parts then an error (the
/// server aborts the connection).
fn slow_body(parts: Vec<Vec<u8>>, gap: Duration, fail_after: Option<usize>, seen: Shared) -> Body {
    struct Guard(Shared);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.lock().unwrap().dropped = true;
        }
    }
    let guard = Guard(seen);
    let stream =
        futures_util::stream::unfold((0usize, parts, guard), move |(i, parts, g)| async move {
            if Some(i) == fail_after {
                tokio::time::sleep(gap).await;
                return Some((Err(std::io::Error::other("boom")), (usize::MAX, parts, g)));
            }
            if i >= parts.len() {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let p = Bytes::from(parts[i].clone());
            Some((Ok::<_, std::io::Error>(p), (i + 1, parts, g)))
        });
    Body::from_stream(stream)
}

async fn server(seen: Shared) -> SocketAddr {
    let s = seen.clone();
    let s2 = seen.clone();
    let s3 = seen.clone();
    let s4 = seen.clone();
    let app = Router::new()
        .route(
            "/echo",
            post(
                move |ConnectInfo(addr): ConnectInfo<SocketAddr>, headers: HeaderMap, body: Bytes| {
                    let s = s.clone();
                    async move {
                        s.lock().unwrap().ports.push(addr.port());
                        let h = |k: &str| {
                            headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        axum::Json(serde_json::json!({
                            "auth": h("authorization"),
                            "content_type": h("content-type"),
                            "body": String::from_utf8_lossy(&body),
                            "len": body.len(),
                        }))
                    }
                },
            ),
        )
        .route(
            "/sse",
            get(move || {
                let s = s2.clone();
                async move {
                    // Events split at awkward places, CRLF and LF, a comment, [DONE].
                    let parts: Vec<Vec<u8>> = vec![
                        b": keep-alive\r\n\r\ndata: {\"n\":1}\r\n".to_vec(),
                        b"\r\nda".to_vec(),
                        b"ta:{\"n\":2}\n\n".to_vec(),
                        b"data: [DONE]\n\n".to_vec(),
                    ];
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
                        .body(slow_body(parts, Duration::from_millis(150), None, s))
                        .unwrap()
                }
            }),
        )
        .route(
            "/chunks",
            get(move || {
                let s = s3.clone();
                async move {
                    let parts: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 301]).collect();
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .body(slow_body(parts, Duration::from_millis(100), None, s))
                        .unwrap()
                }
            }),
        )
        .route(
            "/endless",
            get(move || {
                let s = s4.clone();
                async move {
                    let parts: Vec<Vec<u8>> = (0..1000).map(|_| vec![0u8; 480]).collect();
                    Response::builder()
                        .body(slow_body(parts, Duration::from_millis(20), None, s))
                        .unwrap()
                }
            }),
        )
        .route(
            "/drop",
            get(|| async {
                let parts: Vec<Vec<u8>> = vec![vec![1u8; 100], vec![2u8; 100]];
                Response::builder()
                    .body(slow_body(
                        parts,
                        Duration::from_millis(50),
                        Some(1),
                        Arc::new(Mutex::new(Seen::default())),
                    ))
                    .unwrap()
            }),
        )
        .route(
            "/html",
            post(|| async {
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                    .body(Body::from("<html>502 Bad Gateway</html>"))
                    .unwrap()
            }),
        )
        .route(
            "/json-not-sse",
            post(|| async { axum::Json(serde_json::json!({"text": "hello"})) }),
        )
        .route(
            "/status/{code}",
            get(|axum::extract::Path(code): axum::extract::Path<u16>| async move {
                let status = StatusCode::from_u16(code).unwrap();
                let mut h = HeaderMap::new();
                match code {
                    429 => {
                        h.insert("retry-after", "2".parse().unwrap());
                    }
                    430 => {
                        h.insert("retry-after", "2".parse().unwrap());
                        h.insert("retry-after-ms", "150.5".parse().unwrap());
                    }
                    _ => {}
                }
                let body = format!(
                    r#"{{"error":{{"message":"status {code}","type":"test","param":null,"code":"c{code}"}}}}"#
                );
                (status, h, body).into_response()
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn req(url: String, method: &str, body: HttpBody, mode: ResponseMode) -> HttpRequest {
    HttpRequest {
        stage: hark_engine::agent::STAGE_LLM,
        method: method.into(),
        url,
        headers: vec![("Authorization".into(), "Bearer sk-test".into())],
        body,
        response: mode,
        timeout_ms: Some(5_000),
        accept: Vec::new(),
        sign: None,
    }
}

/// Runs one request; returns its events with their arrival time since the start.
async fn collect(client: &Client, r: HttpRequest) -> Vec<(Duration, ProviderEvent)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    tokio::spawn(http::run(client.clone(), PeerId(7), r, tx));
    let mut out = Vec::new();
    while let Some(ev) = rx.recv().await {
        let end = matches!(
            ev,
            ProviderEvent::Closed { .. } | ProviderEvent::Failed { .. }
        );
        out.push((t0.elapsed(), ev));
        if end {
            break;
        }
    }
    out
}

fn texts(evs: &[(Duration, ProviderEvent)]) -> Vec<String> {
    evs.iter()
        .filter_map(|(_, e)| match e {
            ProviderEvent::Message {
                message: ProviderMessage::Text(t),
                ..
            } => Some(t.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn json_whole_multipart_and_connection_reuse() {
    let seen: Shared = Arc::default();
    let addr = server(seen.clone()).await;
    let client = Client::default();
    let url = format!("http://{addr}/echo");
    let evs = collect(
        &client,
        req(
            url.clone(),
            "POST",
            HttpBody::Json(serde_json::json!({"a": 1})),
            ResponseMode::Whole,
        ),
    )
    .await;
    assert!(matches!(
        evs[0].1,
        ProviderEvent::Opened {
            status: Some(200),
            ..
        }
    ));
    assert!(matches!(
        evs.last().unwrap().1,
        ProviderEvent::Closed { .. }
    ));
    let v: serde_json::Value = serde_json::from_str(&texts(&evs)[0]).unwrap();
    assert_eq!(v["auth"], "Bearer sk-test");
    assert_eq!(v["content_type"], "application/json");
    assert_eq!(v["body"], r#"{"a":1}"#);

    // Multipart: a file part and a text field, with the boundary from the content type.
    let parts = vec![
        MultipartPart {
            name: "file".into(),
            filename: Some("audio.wav".into()),
            content_type: Some("audio/wav".into()),
            data: b"RIFF....WAVE".to_vec(),
        },
        MultipartPart {
            name: "model".into(),
            filename: None,
            content_type: None,
            data: b"whisper-1".to_vec(),
        },
    ];
    let evs = collect(
        &client,
        req(
            url.clone(),
            "POST",
            HttpBody::Multipart(parts),
            ResponseMode::Whole,
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&texts(&evs)[0]).unwrap();
    let ct = v["content_type"].as_str().unwrap();
    let boundary = ct
        .strip_prefix("multipart/form-data; boundary=")
        .expect("multipart content type");
    let body = v["body"].as_str().unwrap();
    assert!(body.starts_with(&format!("--{boundary}\r\n")));
    assert!(body.contains(
        "Content-Disposition: form-data; name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....WAVE\r\n"
    ));
    assert!(body.contains("name=\"model\"\r\n\r\nwhisper-1\r\n"));
    assert!(body.ends_with(&format!("--{boundary}--\r\n")));

    // Raw bytes with their content type.
    let evs = collect(
        &client,
        req(
            url,
            "POST",
            HttpBody::Bytes {
                content_type: "text/plain".into(),
                data: b"xyz".to_vec(),
            },
            ResponseMode::Whole,
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&texts(&evs)[0]).unwrap();
    assert_eq!(v["content_type"], "text/plain");
    assert_eq!(v["len"], 3);

    // One pooled keep-alive connection served all three.
    let ports = seen.lock().unwrap().ports.clone();
    assert_eq!(ports.len(), 3);
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "connections reused: {ports:?}"
    );
}

#[tokio::test]
async fn sse_events_arrive_as_they_are_sent() {
    let seen: Shared = Arc::default();
    let addr = server(seen).await;
    let client = Client::default();
    let evs = collect(
        &client,
        req(
            format!("http://{addr}/sse"),
            "GET",
            HttpBody::Empty,
            ResponseMode::Sse,
        ),
    )
    .await;
    assert_eq!(texts(&evs), vec!["{\"n\":1}", "{\"n\":2}", "[DONE]"]);
    let at: Vec<Duration> = evs
        .iter()
        .filter(|(_, e)| matches!(e, ProviderEvent::Message { .. }))
        .map(|(t, _)| *t)
        .collect();
    // Event 1 completes with the second part (150 ms), event 2 with the third (300 ms): each
    // is delivered then, not at the end of the body (450 ms).
    assert!(at[0] < Duration::from_millis(290), "{at:?}");
    assert!(at[2] - at[0] >= Duration::from_millis(250), "{at:?}");

    // An SSE request answered with plain JSON comes back whole.
    let evs = collect(
        &client,
        req(
            format!("http://{addr}/json-not-sse"),
            "POST",
            HttpBody::Empty,
            ResponseMode::Sse,
        ),
    )
    .await;
    assert_eq!(texts(&evs), vec![r#"{"text":"hello"}"#]);
}

#[tokio::test]
async fn chunks_stream_as_they_arrive() {
    let seen: Shared = Arc::default();
    let addr = server(seen).await;
    let client = Client::default();
    let evs = collect(
        &client,
        req(
            format!("http://{addr}/chunks"),
            "GET",
            HttpBody::Empty,
            ResponseMode::Chunks,
        ),
    )
    .await;
    let mut all = Vec::new();
    let mut first = None;
    for (t, e) in &evs {
        if let ProviderEvent::Message {
            message: ProviderMessage::Binary(b),
            ..
        } = e
        {
            first.get_or_insert(*t);
            all.extend_from_slice(b);
        }
    }
    let want: Vec<u8> = (0..4u8).flat_map(|i| vec![i; 301]).collect();
    assert_eq!(all, want);
    let last = evs.last().unwrap().0;
    assert!(
        last - first.unwrap() >= Duration::from_millis(250),
        "the first chunk came before the body ended"
    );
}

#[tokio::test]
async fn non_2xx_report_status_retry_after_and_body() {
    let seen: Shared = Arc::default();
    let addr = server(seen).await;
    let client = Client::default();
    for (code, retry) in [
        (429, Some(2000)),
        (430, Some(151)),
        (503, None),
        (401, None),
    ] {
        let evs = collect(
            &client,
            req(
                format!("http://{addr}/status/{code}"),
                "GET",
                HttpBody::Empty,
                ResponseMode::Sse,
            ),
        )
        .await;
        assert_eq!(evs.len(), 1, "{evs:?}");
        let ProviderEvent::Failed { fault, .. } = &evs[0].1 else {
            panic!("{evs:?}")
        };
        assert_eq!(fault.http_status(), Some(code));
        assert_eq!(fault.retry_after_ms, retry, "{code}");
        assert_eq!(fault.kind, FaultKind::Status(code), "{fault}");
        assert!(
            fault.detail.contains(&format!("\"code\":\"c{code}\"")),
            "{fault}"
        );
    }
}

#[tokio::test]
async fn timeouts_refusals_and_drops_fail_with_their_kind() {
    let seen: Shared = Arc::default();
    let addr = server(seen).await;
    let client = Client::default();
    let mut r = req(
        format!("http://{addr}/slow"),
        "GET",
        HttpBody::Empty,
        ResponseMode::Whole,
    );
    r.timeout_ms = Some(200);
    let evs = collect(&client, r).await;
    let (t, ProviderEvent::Failed { fault, .. }) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert_eq!(fault.kind, FaultKind::Timeout, "{fault}");
    assert_eq!(fault.http_status(), None);
    assert!(*t >= Duration::from_millis(190) && *t < Duration::from_secs(2));

    // Nothing listens on a port just released.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = l.local_addr().unwrap();
    drop(l);
    let evs = collect(
        &client,
        req(
            format!("http://{free}/x"),
            "GET",
            HttpBody::Empty,
            ResponseMode::Whole,
        ),
    )
    .await;
    let ProviderEvent::Failed { fault, .. } = &evs[0].1 else {
        panic!("{evs:?}")
    };
    assert_eq!(fault.kind, FaultKind::Connect, "{fault}");

    // The server breaks the connection after the first chunk.
    let evs = collect(
        &client,
        req(
            format!("http://{addr}/drop"),
            "GET",
            HttpBody::Empty,
            ResponseMode::Chunks,
        ),
    )
    .await;
    assert!(matches!(evs[0].1, ProviderEvent::Opened { .. }));
    assert!(matches!(evs[1].1, ProviderEvent::Message { .. }));
    let ProviderEvent::Failed { fault, .. } = &evs.last().unwrap().1 else {
        panic!("{evs:?}")
    };
    assert_eq!(fault.kind, FaultKind::Dropped, "{fault}");
    assert_eq!(fault.http_status(), None);

    // A request that cannot be built.
    let evs = collect(
        &client,
        req(
            "not a url".into(),
            "GET",
            HttpBody::Empty,
            ResponseMode::Whole,
        ),
    )
    .await;
    let ProviderEvent::Failed { fault, .. } = &evs[0].1 else {
        panic!("{evs:?}")
    };
    assert_eq!(fault.kind, FaultKind::Request, "{fault}");
}

/// A 2xx answer of a type the request does not accept is a fault of its own kind, and nothing
/// of its body reaches the agent as data; accepted types (and requests that accept anything)
/// stream as before.
#[tokio::test]
async fn wrong_content_type_fails_the_pipe() {
    use hark_engine::agents::cascade::wire::{accept_audio, accept_text};
    let seen: Shared = Arc::default();
    let addr = server(seen).await;
    let client = Client::default();
    for (path, mode, accept) in [
        ("html", ResponseMode::Sse, accept_text()),
        ("html", ResponseMode::Whole, accept_text()),
        ("html", ResponseMode::Chunks, accept_audio()),
        ("json-not-sse", ResponseMode::Chunks, accept_audio()),
    ] {
        let mut r = req(
            format!("http://{addr}/{path}"),
            "POST",
            HttpBody::Empty,
            mode,
        );
        r.accept = accept.clone();
        let evs = collect(&client, r).await;
        assert_eq!(evs.len(), 1, "{path}: {evs:?}");
        let ProviderEvent::Failed { fault, .. } = &evs[0].1 else {
            panic!("{path}: {evs:?}")
        };
        assert_eq!(fault.kind, FaultKind::ContentType, "{fault}");
        assert_eq!(fault.http_status(), None, "the status itself was fine");
        let error = &fault.detail;
        assert!(error.contains(&accept[0]), "{error}");
        if path == "html" {
            assert!(error.contains("text/html"), "{error}");
            assert!(error.contains("502 Bad Gateway"), "{error}");
        }
    }
    // Accepted: JSON for a text request, octet-stream for audio, anything when unset.
    let mut r = req(
        format!("http://{addr}/json-not-sse"),
        "POST",
        HttpBody::Empty,
        ResponseMode::Sse,
    );
    r.accept = accept_text();
    assert_eq!(
        texts(&collect(&client, r).await),
        vec![r#"{"text":"hello"}"#]
    );
    let mut r = req(
        format!("http://{addr}/chunks"),
        "GET",
        HttpBody::Empty,
        ResponseMode::Chunks,
    );
    r.accept = accept_audio();
    let evs = collect(&client, r).await;
    assert!(matches!(
        evs.last().unwrap().1,
        ProviderEvent::Closed { .. }
    ));
    let r = req(
        format!("http://{addr}/html"),
        "POST",
        HttpBody::Empty,
        ResponseMode::Whole,
    );
    assert_eq!(
        texts(&collect(&client, r).await),
        vec!["<html>502 Bad Gateway</html>"]
    );
}

#[tokio::test]
async fn close_drops_the_connection() {
    let seen: Shared = Arc::default();
    let addr = server(seen.clone()).await;
    let mut c = Connectors::new(Client::default());
    let peer = PeerId(1);
    c.execute(ProviderCommand::Open {
        peer,
        spec: OpenSpec::Http(req(
            format!("http://{addr}/endless"),
            "GET",
            HttpBody::Empty,
            ResponseMode::Chunks,
        )),
    });
    // Opened, then audio flowing.
    let mut got = 0;
    while got < 3 {
        if let ProviderEvent::Message { .. } = c.next().await {
            got += 1;
        }
    }
    assert_eq!(c.open_pipes(), 1);
    assert!(!seen.lock().unwrap().dropped);
    c.execute(ProviderCommand::Close { peer });
    let t0 = Instant::now();
    while !seen.lock().unwrap().dropped {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the server still streams after Close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.open_pipes(), 0);
}
