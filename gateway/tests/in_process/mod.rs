//! `hark serve` in process on a port-0 listener on 127.0.0.1, for the end-to-end tests.
#![allow(dead_code)] // each test binary uses a part

use std::net::SocketAddr;
use std::sync::Arc;

use hark_gateway::api::ApiState;
use hark_gateway::config::Config;
use hark_gateway::server::{self, AppState, STREAM_PATH};

/// A running server.
pub struct Server {
    /// Its Media Streams endpoint, `ws://127.0.0.1:<port>/media-stream`.
    pub url: String,
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Its state (config, live calls).
    pub state: Arc<AppState>,
    api: Option<Arc<ApiState>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Serves `config` (its `addr` replaced by 127.0.0.1:0), with the gateway API on `api`
    /// when given. Without `TWILIO_AUTH_TOKEN` in `config` the server opts in to unsigned
    /// media streams (`HARK_DEV_INSECURE=no-signatures`), so the simulator's unsigned calls are
    /// accepted; a test of the signature policy uses [`Server::start_as_configured`].
    pub async fn start(mut config: Config, api: Option<Arc<ApiState>>) -> Server {
        if config.twilio_auth_token.is_none() {
            config.dev_insecure.no_signatures = true;
        }
        Self::start_as_configured(config, api).await
    }

    /// Like [`Server::start`], with `config`'s signature policy untouched.
    pub async fn start_as_configured(mut config: Config, api: Option<Arc<ApiState>>) -> Server {
        config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = tokio::net::TcpListener::bind(config.addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = match &api {
            Some(api) => AppState::with_api(config, api.clone()),
            None => AppState::new(config),
        }
        .unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Server {
            url: format!("ws://{addr}{STREAM_PATH}"),
            addr,
            state,
            api,
            stop,
            task,
        }
    }

    /// The gateway API it was started with.
    pub fn api(&self) -> &Arc<ApiState> {
        self.api
            .as_ref()
            .expect("the server was started with the gateway API")
    }

    /// The stored record of `call_sid`, once the server's call tasks have ended (within
    /// `wait`) and every queued record is written.
    pub async fn record(
        &self,
        call_sid: &str,
        wait: std::time::Duration,
    ) -> hark_gateway::api::store::CallDetail {
        assert_eq!(self.state.wait_idle(wait).await, 0, "calls still running");
        assert!(self.api().flush().await, "records could not be written");
        self.api()
            .store()
            .call(call_sid)
            .await
            .unwrap()
            .expect("call recorded")
    }

    /// Starts its shutdown (as SIGTERM does) and returns its task, without waiting.
    pub fn begin_stop(self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let _ = self.stop.send(());
        self.task
    }

    /// Shuts it down and waits until it has (live calls finish first).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The gateway API on an in-memory database, nothing else configured.
pub async fn memory_api() -> Arc<ApiState> {
    ApiState::from_lookup(|k| (k == "HARK_DATABASE_URL").then(|| "sqlite::memory:".to_string()))
        .await
        .expect("api state")
}

/// `fixtures/<rel>` in this repository.
pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(rel)
}

/// The caller turns of `fixtures/sessions/<name>.json`: the annotated segments split at pauses
/// longer than the server's `stop_ms` (600), where the engine ends a turn.
pub fn speech(name: &str) -> hark_gateway::simulator::UserSpeech {
    use serde_json::{Value, json};
    let text = std::fs::read_to_string(fixture(&format!("sessions/{name}.json"))).unwrap();
    let mut ann: Value = serde_json::from_str(&text).unwrap();
    let mut turns = vec![];
    for seg in ann["segments"].as_array().unwrap() {
        let mut start = seg["start_ms"].as_u64().unwrap();
        for p in seg["pauses_ms"].as_array().into_iter().flatten() {
            let (ps, pe) = (p[0].as_u64().unwrap(), p[1].as_u64().unwrap());
            if pe - ps > 600 {
                turns.push(json!({"start_ms": start, "end_ms": ps}));
                start = pe;
            }
        }
        turns.push(json!({"start_ms": start, "end_ms": seg["end_ms"]}));
    }
    ann["segments"] = Value::Array(turns);
    hark_gateway::simulator::UserSpeech::from_annotation_json(&ann.to_string()).unwrap()
}
