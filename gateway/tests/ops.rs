//! Operations against `hark serve` in process on real sockets: `/readyz` (ready, draining on
//! shutdown while still accepting, a database that no longer answers), the `/metrics` bearer
//! token, and the series a scrape shows from the start (build info, process CPU and memory,
//! HTTP requests by route and status, labelled counters at 0).

use std::time::{Duration, Instant};

mod in_process;

use hark_gateway::config::Config;
use in_process::{Server, memory_api};

async fn start(f: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        workers: 1,
        ..Config::default()
    };
    f(&mut config);
    Server::start(config, Some(memory_api().await)).await
}

/// `GET path` on a fresh connection: (status, body), or the connection error.
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut req = client.get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// The value of the series `line_start` (name and labels, exactly as rendered) in `text`.
fn series(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_drains_first_on_shutdown_and_metrics_want_the_token() {
    let server = start(|c| {
        c.ops.drain = Duration::from_secs(2);
        c.ops.metrics_token = Some("scrape-t0ken".into());
    })
    .await;
    let addr = server.addr;
    assert_eq!(
        get(addr, "/readyz", None).await.unwrap(),
        (200, "ready".into())
    );
    assert_eq!(
        get(addr, "/healthz", None).await.unwrap(),
        (200, "ok".into())
    );

    assert_eq!(get(addr, "/no-such-route", None).await.unwrap().0, 404);
    // /metrics: the token, then what a first scrape shows.
    let (status, body) = get(addr, "/metrics", None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(get(addr, "/metrics", Some("wrong")).await.unwrap().0, 401);
    let (status, text) = get(addr, "/metrics", Some("scrape-t0ken")).await.unwrap();
    assert_eq!(status, 200);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        series(&text, &format!("hark_build_info{{version=\"{version}\"}}")),
        Some(1.0),
        "{text}"
    );
    // (Metrics are per process: the other test here counts its requests too.)
    let count = |route: &str, status: u16| {
        let key = format!("hark_http_requests_total{{route=\"{route}\",status=\"{status}\"}}");
        series(&text, &key).unwrap_or(0.0)
    };
    assert!(count("/readyz", 200) >= 1.0, "{text}");
    assert!(count("/metrics", 401) >= 2.0, "{text}");
    assert_eq!(
        count("/no-such-route", 404),
        0.0,
        "routes are templates, not paths"
    );
    assert!(count("unmatched", 404) >= 1.0, "{text}");
    for zero in [
        "hark_transfers_total{outcome=\"failed\"}",
        "hark_malformed_messages_total{kind=\"bad_parameter\"}",
        "hark_signature_failures_total{route=\"media-stream\"}",
        "hark_calls_total",
    ] {
        assert_eq!(series(&text, zero), Some(0.0), "{zero} at 0 from the start");
    }
    let rss = series(&text, "process_resident_memory_bytes").expect("RSS");
    assert!(rss > 1e6, "{rss}");
    assert!(series(&text, "process_cpu_seconds_total").expect("CPU") > 0.0);
    assert!(series(&text, "process_open_fds").expect("fds") >= 3.0);

    // SIGTERM: /readyz fails at once while connections are still accepted and served...
    let stopped_at = Instant::now();
    let task = server.begin_stop();
    let mut drained = None;
    while stopped_at.elapsed() < Duration::from_millis(1_500) {
        if let Ok((503, body)) = get(addr, "/readyz", None).await {
            assert_eq!(body, "draining");
            drained = Some(stopped_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = drained.expect("/readyz answered 503 while draining");
    assert!(drained < Duration::from_millis(500), "{drained:?}");
    assert_eq!(
        get(addr, "/healthz", None).await.unwrap(),
        (200, "ok".into())
    );
    // ...until the drain (2 s) is over: then the listener is gone and the server stops.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stopped after the drain")
        .unwrap()
        .unwrap();
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "stopped before the drain was over: {took:?}"
    );
    assert!(
        get(addr, "/healthz", None).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_database_does_not_answer() {
    let server = start(|_| {}).await;
    assert_eq!(get(server.addr, "/readyz", None).await.unwrap().0, 200);
    // Without a token /metrics is open.
    assert_eq!(get(server.addr, "/metrics", None).await.unwrap().0, 200);
    server.api().store().close().await;
    let (status, body) = get(server.addr, "/readyz", None).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("database: "), "{body}");
    // Liveness is not readiness.
    assert_eq!(get(server.addr, "/healthz", None).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_address_are_gone_from_the_public_one() {
    let server = start(|c| {
        c.ops.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.ops.metrics_token = Some("scrape-t0ken".into());
    })
    .await;
    // The listener is bound as serving starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    let private = loop {
        if let Some(a) = server.state.metrics_addr() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics listener never bound"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(private.port(), server.addr.port());
    let (status, _) = get(server.addr, "/metrics", Some("scrape-t0ken"))
        .await
        .unwrap();
    assert_eq!(status, 404, "not on the public address");
    assert_eq!(get(server.addr, "/readyz", None).await.unwrap().0, 200);
    assert_eq!(get(private, "/metrics", None).await.unwrap().0, 401);
    let (status, text) = get(private, "/metrics", Some("scrape-t0ken"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("\nhark_build_info{"), "{text}");
    assert_eq!(
        get(private, "/readyz", None).await.unwrap(),
        (200, "ready".into())
    );
    assert_eq!(
        get(private, "/healthz", None).await.unwrap(),
        (200, "ok".into())
    );
    server.stop().await;
}
