//! `tools`: what a round trip to the operator's tool costs hark, at 100 concurrent calls.
//!
//! Each simulated call runs the agents' own tool runner ([`ToolRuns`]: JSON Schema check,
//! signed request) through the driver's HTTP connectors ([`Connectors`], reqwest on a pooled
//! client) to an operator double on 127.0.0.1 that answers at once, and back to the runner's
//! [`ToolEnd`]. The round trip measured is therefore hark's added latency **plus** the
//! loopback TCP hop and the double's own HTTP stack: an upper bound of hark's share. The
//! double's handler time is measured too and subtracted in the last column.
//!
//! `cargo bench -p hark-benches --bench tools` (options: `--calls N`, `--rounds N`). Prints
//! p50/p90/p99/max over every round of every call. Calls start together and pause 0–20 ms
//! between rounds, so up to `--calls` tool requests are in flight at once. Each call's first
//! round opens its pooled connection and is not counted (a serving process keeps the pool
//! warm across calls).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use hark_engine::agent::{Action, PeerId, ProviderCommand};
use hark_engine::agents::http_tools::{
    CallFacts, HttpTool, HttpTools, ToolEnd, ToolRuns, ToolSchema,
};
use hark_engine::io::http::{Client, ClientConfig};
use hark_engine::io::{Connectors, Providers};
use hark_engine::operator::Secret;
use serde_json::json;

/// Handler times of the double, µs.
type Handled = Arc<Mutex<Vec<u64>>>;

async fn operator(handled: Handled) -> String {
    let app = axum::Router::new().route(
        "/tools/balance",
        axum::routing::post(move |body: Bytes| {
            let handled = handled.clone();
            async move {
                let t = Instant::now();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let answer = json!({"payerId": v["arguments"]["payerId"], "balance": "120.00"});
                let resp = axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(answer.to_string()))
                    .unwrap_or_default();
                handled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.elapsed().as_micros() as u64);
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/tools/balance", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

fn tools(url: String) -> HttpTools {
    let tool = HttpTool {
        name: "lookup_balance".into(),
        description: "The payer's open balance.".into(),
        parameters: ToolSchema::new(json!({
            "type": "object",
            "properties": {"payerId": {"type": "string", "minLength": 1}},
            "required": ["payerId"],
            "additionalProperties": false
        }))
        .unwrap(),
        url,
        timeout_ms: 5_000,
        filler: None,
        end_call_after: false,
    };
    HttpTools {
        tools: vec![tool].into(),
        secret: Some(Secret::new("bench-secret-0123456789")),
    }
}

/// One call: `rounds` tool round trips; returns each one's time, µs.
async fn call(i: usize, rounds: usize, tools: HttpTools, client: Client) -> Vec<u64> {
    let facts = CallFacts {
        call_sid: format!("CA{i:032x}"),
        stream_sid: format!("MZ{i:032x}"),
        parameters: vec![("payerId".into(), format!("p-{i}"))],
    };
    let mut providers = Connectors::new(client);
    let mut runs = ToolRuns::new(PeerId(1));
    let mut times = Vec::with_capacity(rounds);
    let args = format!(r#"{{"payerId":"p-{i}"}}"#);
    // Round 0 opens the pooled connection (a serving process keeps them warm): not counted.
    for r in 0..=rounds {
        let pause = ((i * 7 + r * 13) % 21) as u64;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let t = Instant::now();
        let mut out = Vec::new();
        let id = format!("call_{r}");
        if runs
            .start(t, &tools, &facts, ("lookup_balance", &id, &args), &mut out)
            .is_err()
        {
            panic!("the arguments were refused");
        }
        for a in out.drain(..) {
            if let Action::Provider(cmd @ ProviderCommand::Open { .. }) = a {
                providers.execute(cmd);
            }
        }
        let end: ToolEnd = loop {
            let ev = providers.next().await;
            if let Some(end) = runs.on_event(ev, &mut out) {
                break end;
            }
        };
        if r > 0 {
            times.push(t.elapsed().as_micros() as u64);
        }
        assert!(end.result.is_ok(), "{:?}", end.result);
    }
    times
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let ix = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[ix.min(sorted.len() - 1)]
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: one quick run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let calls = arg("--calls", if quick { 4 } else { 100 });
    let rounds = arg("--rounds", if quick { 2 } else { 30 });
    // The operator double on a runtime of its own thread (the far side of the wire).
    let handled: Handled = Arc::default();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let h = handled.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let _ = url_tx.send(operator(h).await);
            std::future::pending::<()>().await;
        });
    });
    let url = url_rx.recv().unwrap();
    // hark's side as `hark serve` runs calls (`gateway/src/pool.rs`, `server/media.rs`): one
    // single-threaded runtime per core (two here), each with its own HTTP client.
    let tools = tools(url);
    let workers = 2;
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let tools = tools.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let client = Client::new(ClientConfig::default()).unwrap();
                rt.block_on(async move {
                    let tasks: Vec<_> = (w..calls)
                        .step_by(workers)
                        .map(|i| tokio::spawn(call(i, rounds, tools.clone(), client.clone())))
                        .collect();
                    let mut all = Vec::new();
                    for t in tasks {
                        all.extend(t.await.unwrap());
                    }
                    all
                })
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = started.elapsed();
    all.sort_unstable();
    let mut handler = handled.lock().unwrap_or_else(|e| e.into_inner()).clone();
    handler.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "tools/round_trip: {calls} concurrent calls × {rounds} rounds = {} tool calls in {:.1} s",
        all.len(),
        wall.as_secs_f64()
    );
    println!("              p50       p90       p99       max   (ms)");
    println!(
        "round trip  {:>7.3}   {:>7.3}   {:>7.3}   {:>7.3}",
        ms(pct(&all, 0.5)),
        ms(pct(&all, 0.9)),
        ms(pct(&all, 0.99)),
        ms(pct(&all, 1.0))
    );
    println!(
        "double      {:>7.3}   {:>7.3}   {:>7.3}   {:>7.3}   (the operator's handler)",
        ms(pct(&handler, 0.5)),
        ms(pct(&handler, 0.9)),
        ms(pct(&handler, 0.99)),
        ms(pct(&handler, 1.0))
    );
}
