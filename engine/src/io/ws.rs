//! WebSocket provider pipes ([`crate::agent::WsRequest`]): ElevenLabs Conversational AI, OpenAI
//! Realtime. One tokio task per pipe, tokio-tungstenite 0.30 underneath.
//!
//! - **Connect**: `ws://` in the clear (local doubles), `wss://` over rustls with the **ring**
//!   provider and the system's root certificates (`shared/reference/crates.md`: one provider
//!   for the whole process; the config is built with ring explicitly, so no process-wide
//!   default is needed). The [`WsRequest::headers`] go on the upgrade request (e.g.
//!   `Authorization: Bearer …`). Nagle is off. The handshake (TCP + TLS + upgrade) must finish
//!   within [`CONNECT_TIMEOUT`].
//! - **Read buffer**: [`READ_BUFFER_BYTES`] instead of tungstenite's 128 KiB, which it zero-fills
//!   before every socket read (10–11 µs per small message vs 3.2 µs measured, crates.md).
//! - **Events**: handshake done → [`ProviderEvent::Opened`] with the HTTP status (101); every
//!   text or binary frame → [`ProviderEvent::Message`]; a close frame with code 1000 (or none)
//!   → [`ProviderEvent::Closed`]; any other close code → [`ProviderEvent::Failed`] with
//!   [`FaultKind::Close`] and the reason as detail (ElevenLabs: 1002 operational, 1008
//!   contract/auth, 1011 internal). Before the handshake is done: refused with an HTTP status
//!   → [`FaultKind::Status`] with the body's start; not done within [`CONNECT_TIMEOUT`] →
//!   [`FaultKind::Timeout`]; a bad URL or header → [`FaultKind::Request`]; any other failure
//!   (refused, DNS, TLS, no root certificates, a bad upgrade answer) → [`FaultKind::Connect`].
//!   After it: a reset, a protocol error, a failed send or an end without a close frame →
//!   [`FaultKind::Dropped`]. `Failed` and `Closed` are terminal.
//! - **Pings**: tungstenite queues the pong when it reads a ping and flushes it on the next read
//!   or write; the loop always reads, so pings are answered without the agent.
//! - **Send**: [`ProviderMessage::Text`] → a text frame, [`ProviderMessage::Binary`] → a binary
//!   frame; messages queued together are written with one flush.
//! - **Close**: the driver closes a pipe by aborting its task ([`super::Connectors`]), which
//!   drops the connection: abort = close, and the provider stops generating. If the
//!   connectors go away instead (the outgoing channel ends), the task sends a normal close
//!   frame (1000) and ends without an event.
//! - **Metrics**: as for HTTP requests ([`super::http`]), by [`WsRequest::stage`]:
//!   [`super::http::REQUESTS_TOTAL`] counts each socket once when it ends — `ok` when it opened
//!   and later closed normally (1000 or no code), else the fault's
//!   [`super::http::outcome`] (`status`, `close`, `timeout`, `connect`, `request` before the
//!   handshake; `close`, `dropped` after it; [`WS_OUTCOMES`]), or `cancelled` when hark
//!   closed it (the task aborted, or the connectors gone); [`super::http::RESPONSE_SECONDS`]
//!   times the start → the handshake done.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async_tls_with_config,
};

use super::http::{OUTCOME_CANCELLED, OUTCOME_OK, RequestMetric, outcome};
use crate::agent::{FaultKind, PeerId, ProviderEvent, ProviderFault, ProviderMessage, WsRequest};

/// Every `outcome` a WebSocket can end with ([`super::http::REQUESTS_TOTAL`]).
pub const WS_OUTCOMES: [&str; 8] = [
    OUTCOME_OK,
    "status",
    "close",
    "timeout",
    "connect",
    "dropped",
    "request",
    OUTCOME_CANCELLED,
];

/// Read buffer per connection, bytes (tungstenite's default is 128 KiB).
pub const READ_BUFFER_BYTES: usize = 4096;
/// Longest wait for TCP connect + TLS + WebSocket upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the close handshake when the task closes the socket itself.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Characters of a refused handshake's response body kept in the error.
const BODY_PREFIX_CHARS: usize = 300;

fn failed(peer: PeerId, kind: FaultKind, detail: impl Into<String>) -> ProviderEvent {
    ProviderEvent::Failed {
        peer,
        fault: ProviderFault::new(kind, detail),
    }
}

/// The rustls client config for `wss://`: ring, safe default protocol versions, the system's
/// root certificates. Built once per process.
///
/// # Errors
/// A [`FaultKind::Connect`] fault when no root certificate could be loaded or rustls refuses
/// the provider (no `wss://` connection can be made).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, ProviderFault> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, ProviderFault>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ProviderFault::new(
                    FaultKind::Connect,
                    format!("no root certificates found for wss:// ({:?})", found.errors),
                ));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ProviderFault::new(FaultKind::Connect, format!("rustls: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// The upgrade request for `req`.
///
/// # Errors
/// A [`FaultKind::Request`] fault for a bad URL, header name or header value.
fn request(req: &WsRequest) -> Result<tungstenite::handshake::client::Request, ProviderFault> {
    let bad = |detail: String| ProviderFault::new(FaultKind::Request, detail);
    let mut request = req
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| bad(format!("bad WebSocket URL: {e}")))?;
    for (k, v) in &req.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| bad(format!("bad header name {k:?}: {e}")))?;
        let value =
            HeaderValue::from_str(v).map_err(|e| bad(format!("bad value for header {k}: {e}")))?;
        request.headers_mut().insert(name, value);
    }
    Ok(request)
}

fn to_frame(m: ProviderMessage) -> Message {
    match m {
        ProviderMessage::Text(s) => Message::Text(s.into()),
        ProviderMessage::Binary(b) => Message::Binary(b.into()),
    }
}

/// A client WebSocket over TCP, in the clear or over rustls.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the WebSocket (TCP, TLS for `wss://`, the upgrade with `req`'s headers) within
/// [`CONNECT_TIMEOUT`]; returns it with the upgrade's HTTP status (101).
///
/// # Errors
/// The fault (see the module docs): [`FaultKind::Request`], [`FaultKind::Timeout`],
/// [`FaultKind::Status`] with the start of the refusal's body, else [`FaultKind::Connect`].
async fn connect(req: &WsRequest) -> Result<(Socket, u16), ProviderFault> {
    let request = request(req)?;
    let tls = request
        .uri()
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("wss"));
    let connector = if tls {
        Connector::Rustls(tls_config()?)
    } else {
        Connector::Plain
    };
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let connect = connect_async_tls_with_config(request, Some(config), true, Some(connector));
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => Err(ProviderFault::new(
            FaultKind::Timeout,
            format!("WebSocket connect timed out after {CONNECT_TIMEOUT:?}"),
        )),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body: String = resp
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(BODY_PREFIX_CHARS)
                        .collect()
                })
                .unwrap_or_default();
            Err(ProviderFault::status(resp.status().as_u16(), body, None))
        }
        Ok(Err(e)) => {
            let kind = match e {
                tungstenite::Error::Url(_) | tungstenite::Error::HttpFormat(_) => {
                    FaultKind::Request
                }
                _ => FaultKind::Connect,
            };
            Err(ProviderFault::new(kind, format!("WebSocket connect: {e}")))
        }
        Ok(Ok((ws, response))) => Ok((ws, response.status().as_u16())),
    }
}

/// Runs one WebSocket until it closes or the pipe is closed, reporting through `tx`. See the
/// module docs for the events.
pub async fn run(
    peer: PeerId,
    req: WsRequest,
    mut outgoing: mpsc::UnboundedReceiver<ProviderMessage>,
    tx: mpsc::UnboundedSender<ProviderEvent>,
) {
    let mut metric = RequestMetric::start(req.stage);
    let mut ws = match connect(&req).await {
        Ok((ws, status)) => {
            metric.responded();
            let _ = tx.send(ProviderEvent::Opened {
                peer,
                status: Some(status),
            });
            ws
        }
        Err(fault) => {
            metric.end(outcome(fault.kind));
            let _ = tx.send(ProviderEvent::Failed { peer, fault });
            return;
        }
    };
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let _ = tx.send(ProviderEvent::Message {
                        peer,
                        message: ProviderMessage::Text(t.as_str().to_owned()),
                    });
                }
                Some(Ok(Message::Binary(b))) => {
                    let _ = tx.send(ProviderEvent::Message {
                        peer,
                        message: ProviderMessage::Binary(b.to_vec()),
                    });
                }
                // Pings are answered by tungstenite on the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    // Complete the close handshake (tungstenite queued the reply).
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                    let ev = match frame {
                        Some(f) if f.code != CloseCode::Normal && f.code != CloseCode::Status => {
                            let code = u16::from(f.code);
                            metric.end(outcome(FaultKind::Close(code)));
                            failed(peer, FaultKind::Close(code), f.reason.as_str())
                        }
                        _ => {
                            metric.end(OUTCOME_OK);
                            ProviderEvent::Closed { peer }
                        }
                    };
                    let _ = tx.send(ev);
                    return;
                }
                Some(Err(e)) => {
                    metric.end(outcome(FaultKind::Dropped));
                    let _ = tx.send(failed(peer, FaultKind::Dropped, format!("WebSocket: {e}")));
                    return;
                }
                None => {
                    let e = "WebSocket ended without a close frame";
                    metric.end(outcome(FaultKind::Dropped));
                    let _ = tx.send(failed(peer, FaultKind::Dropped, e));
                    return;
                }
            },
            out = outgoing.recv() => match out {
                Some(m) => {
                    let mut r = ws.feed(to_frame(m)).await;
                    while r.is_ok() {
                        match outgoing.try_recv() {
                            Ok(m) => r = ws.feed(to_frame(m)).await,
                            Err(_) => break,
                        }
                    }
                    if r.is_ok() {
                        r = ws.flush().await;
                    }
                    if let Err(e) = r {
                        let e = format!("WebSocket send: {e}");
                        metric.end(outcome(FaultKind::Dropped));
                        let _ = tx.send(failed(peer, FaultKind::Dropped, e));
                        return;
                    }
                }
                None => {
                    // The connectors are gone: close politely and stop (`cancelled`: hark
                    // ended it, as with an abort).
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
// tungstenite's handshake callback returns its large `ErrorResponse` by value.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    type Server = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    /// A one-connection server on 127.0.0.1:0; `f` runs with the accepted socket and the
    /// upgrade request's headers.
    async fn serve<F, Fut>(f: F) -> (String, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(Server, Vec<(String, String)>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let mut headers = Vec::new();
            let ws = tokio_tungstenite::accept_hdr_async(s, |req: &Request, resp: Response| {
                for (k, v) in req.headers() {
                    headers.push((k.to_string(), v.to_str().unwrap_or("").to_string()));
                }
                Ok::<_, ErrorResponse>(resp)
            })
            .await
            .expect("upgrade");
            f(ws, headers).await;
        });
        (format!("ws://{addr}/v1/realtime?model=m"), task)
    }

    struct Pipe {
        out: mpsc::UnboundedSender<ProviderMessage>,
        events: mpsc::UnboundedReceiver<ProviderEvent>,
        task: tokio::task::JoinHandle<()>,
    }

    fn open(url: &str, headers: &[(&str, &str)]) -> Pipe {
        let (otx, orx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let req = WsRequest {
            stage: crate::agent::STAGE_REALTIME,
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let task = tokio::spawn(run(PeerId(7), req, orx, tx));
        Pipe {
            out: otx,
            events: rx,
            task,
        }
    }

    async fn next(p: &mut Pipe) -> ProviderEvent {
        tokio::time::timeout(Duration::from_secs(5), p.events.recv())
            .await
            .expect("event in time")
            .expect("event")
    }

    #[tokio::test]
    async fn text_and_binary_both_ways_with_headers_and_normal_close() {
        let (url, server) = serve(|mut ws, headers| async move {
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| k == "authorization" && v == "Bearer sk-test"),
                "{headers:?}"
            );
            let m = ws.next().await.expect("frame").expect("ok");
            assert_eq!(m, Message::Text("hello".into()));
            let m = ws.next().await.expect("frame").expect("ok");
            assert_eq!(m, Message::Binary(vec![1u8, 2, 3].into()));
            ws.send(Message::Text("{\"type\":\"x\"}".into()))
                .await
                .expect("send");
            ws.send(Message::Binary(vec![9u8; 4].into()))
                .await
                .expect("send");
            ws.close(None).await.expect("close");
        })
        .await;
        let mut p = open(&url, &[("Authorization", "Bearer sk-test")]);
        assert_eq!(
            next(&mut p).await,
            ProviderEvent::Opened {
                peer: PeerId(7),
                status: Some(101)
            }
        );
        p.out
            .send(ProviderMessage::Text("hello".into()))
            .expect("send");
        p.out
            .send(ProviderMessage::Binary(vec![1, 2, 3]))
            .expect("send");
        assert_eq!(
            next(&mut p).await,
            ProviderEvent::Message {
                peer: PeerId(7),
                message: ProviderMessage::Text("{\"type\":\"x\"}".into())
            }
        );
        assert_eq!(
            next(&mut p).await,
            ProviderEvent::Message {
                peer: PeerId(7),
                message: ProviderMessage::Binary(vec![9; 4])
            }
        );
        assert_eq!(
            next(&mut p).await,
            ProviderEvent::Closed { peer: PeerId(7) }
        );
        server.await.expect("server");
        p.task.await.expect("task");
    }

    #[tokio::test]
    async fn error_close_codes_fail_with_the_code() {
        for code in [1002u16, 1008, 1011] {
            let (url, server) = serve(move |mut ws, _| async move {
                ws.close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: "policy".into(),
                }))
                .await
                .expect("close");
                // Read the client's close reply.
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            let mut p = open(&url, &[]);
            assert!(matches!(next(&mut p).await, ProviderEvent::Opened { .. }));
            match next(&mut p).await {
                ProviderEvent::Failed { fault, .. } => {
                    assert_eq!(fault.close_code(), Some(code));
                    assert_eq!(fault.kind, FaultKind::Close(code));
                    assert!(fault.detail.contains("policy"), "{fault}");
                }
                other => panic!("expected Failed, got {other:?}"),
            }
            server.await.expect("server");
        }
    }

    #[tokio::test]
    async fn pings_are_answered_without_the_agent() {
        let (url, server) = serve(|mut ws, _| async move {
            ws.send(Message::Ping(vec![4u8, 2].into()))
                .await
                .expect("ping");
            loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(p))) => {
                        assert_eq!(&p[..], &[4, 2]);
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("no pong: {other:?}"),
                }
            }
            ws.close(None).await.expect("close");
        })
        .await;
        let mut p = open(&url, &[]);
        assert!(matches!(next(&mut p).await, ProviderEvent::Opened { .. }));
        assert_eq!(
            next(&mut p).await,
            ProviderEvent::Closed { peer: PeerId(7) }
        );
        server.await.expect("server");
    }

    #[tokio::test]
    async fn refused_upgrade_reports_the_status() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let _ = tokio_tungstenite::accept_hdr_async(s, |_: &Request, _: Response| {
                let mut r = ErrorResponse::new(Some("invalid api key".into()));
                *r.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
                Err(r)
            })
            .await;
        });
        let mut p = open(&format!("ws://{addr}/"), &[]);
        match next(&mut p).await {
            ProviderEvent::Failed { fault, .. } => {
                assert_eq!(fault.http_status(), Some(401));
                assert!(fault.detail.contains("invalid api key"), "{fault}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        server.await.expect("server");
    }

    #[tokio::test]
    async fn reset_without_close_and_unreachable_fail() {
        let (url, server) = serve(|ws, _| async move {
            drop(ws);
        })
        .await;
        let mut p = open(&url, &[]);
        assert!(matches!(next(&mut p).await, ProviderEvent::Opened { .. }));
        // Neither a close code nor a status: the connection broke.
        assert!(matches!(
            next(&mut p).await,
            ProviderEvent::Failed { fault, .. } if fault.kind == FaultKind::Dropped
        ));
        server.await.expect("server");

        // Nothing listens on a port we just released.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let mut p = open(&format!("ws://{addr}/"), &[]);
        assert!(matches!(
            next(&mut p).await,
            ProviderEvent::Failed { fault, .. } if fault.kind == FaultKind::Connect
        ));
        let mut p = open("not a url", &[]);
        assert!(matches!(
            next(&mut p).await,
            ProviderEvent::Failed { fault, .. } if fault.kind == FaultKind::Request
        ));
    }

    #[test]
    fn each_socket_is_counted_once_by_stage_and_outcome() {
        use crate::io::http::test_recorder::with_log;
        use crate::io::http::{REQUESTS_TOTAL, RESPONSE_SECONDS};
        let ((), log) = with_log(|| async {
            // Opened, then closed normally.
            let (url, server) = serve(|mut ws, _| async move {
                ws.close(None).await.expect("close");
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            let mut p = open(&url, &[]);
            assert!(matches!(next(&mut p).await, ProviderEvent::Opened { .. }));
            assert!(matches!(next(&mut p).await, ProviderEvent::Closed { .. }));
            server.await.expect("server");
            // Opened, then dropped without a close frame.
            let (url, server) = serve(|ws, _| async move { drop(ws) }).await;
            let mut p = open(&url, &[]);
            assert!(matches!(next(&mut p).await, ProviderEvent::Opened { .. }));
            assert!(matches!(next(&mut p).await, ProviderEvent::Failed { .. }));
            server.await.expect("server");
            // Opened, then closed by hark (the driver aborts the task).
            let (url, server) =
                serve(|mut ws, _| async move { while let Some(Ok(_)) = ws.next().await {} }).await;
            let mut p = open(&url, &[]);
            assert!(matches!(next(&mut p).await, ProviderEvent::Opened { .. }));
            p.task.abort();
            assert!(p.task.await.expect_err("aborted").is_cancelled());
            server.await.expect("server");
            // Never opened.
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            drop(l);
            let mut p = open(&format!("ws://{addr}/"), &[]);
            assert!(matches!(next(&mut p).await, ProviderEvent::Failed { .. }));
            p.task.await.expect("task");
        });
        let count = |outcome| {
            log.sum(
                REQUESTS_TOTAL,
                &[("stage", "realtime"), ("outcome", outcome)],
            )
        };
        for outcome in ["ok", "dropped", "cancelled", "connect"] {
            assert_eq!(count(outcome), 1.0, "{outcome}: {log:?}");
            assert!(WS_OUTCOMES.contains(&outcome));
        }
        assert_eq!(log.sum(REQUESTS_TOTAL, &[]), 4.0, "{log:?}");
        let opened = log.values(RESPONSE_SECONDS, &[("stage", "realtime")]);
        assert_eq!(opened.len(), 3, "{opened:?}");
    }

    #[test]
    fn tls_config_uses_ring_and_system_roots() {
        // The machine may lack a CA bundle; either way the call must not panic (no process
        // provider is installed in this test).
        match tls_config() {
            Ok(c) => assert!(!c.alpn_protocols.iter().any(|p| p.is_empty())),
            Err(e) => {
                assert_eq!(e.kind, FaultKind::Connect);
                assert!(e.detail.contains("root certificates"), "{e}");
            }
        }
    }
}
