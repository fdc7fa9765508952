//! `hark demo`: hark's main job on one machine with no keys and no network. It starts
//! `hark serve` in-process on a free loopback port with the echo agent, runs the call simulator
//! against it with a bundled multi-turn real-speech session (four caller turns, one of which
//! talks over the agent: a barge-in), prints the per-turn table and writes what the caller heard.
//!
//! The server gets a fresh random `TWILIO_AUTH_TOKEN` and the simulator signs its upgrade with
//! it, as Twilio would: the demo runs the same signature check as `hark serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::server::{self, AppState};
use crate::simulator::{self, CallSetup, Report, SimError, UserSpeech};

/// The bundled caller audio: `fixtures/audio/multi-turn-8k.ulaw` (μ-law 8 kHz, 27.64 s;
/// provenance in `fixtures/README.md`).
pub const AUDIO: &[u8] = include_bytes!("../../../fixtures/audio/multi-turn-8k.ulaw");
/// Its annotation (caller speech segments), `fixtures/sessions/multi-turn.json`.
pub const ANNOTATION: &str = include_str!("../../../fixtures/sessions/multi-turn.json");

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The in-process server could not start.
    #[error("cannot start the server: {0}")]
    Server(#[from] std::io::Error),
    /// The simulated call failed.
    #[error("simulated call failed: {0}")]
    Call(#[from] SimError),
}

/// Runs the demo at `speed` (1 = real time) and writes the caller's side to `out` (8 kHz μ-law
/// WAV) when given. Returns the simulator's report.
///
/// # Errors
/// [`DemoError`] if the server cannot start or the call fails.
pub async fn run(speed: f64, out: Option<&Path>) -> Result<Report, DemoError> {
    let token = simulator::random_token();
    let config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 1,
        twilio_auth_token: Some(token.clone()),
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, state, async {
        let _ = stop_rx.await;
    }));

    let mut setup = CallSetup::new(
        format!("ws://{addr}{}", server::STREAM_PATH),
        Arc::from(AUDIO),
    );
    setup.speed = speed;
    setup.auth_token = Some(token);
    setup.tail_ms = 500;
    setup.keep_heard = out.is_some();
    setup.speech = Some(UserSpeech::from_annotation_json(ANNOTATION)?);
    setup.start.custom_parameters = vec![("source".into(), "hark demo".into())];
    let report = simulator::run_call(setup).await;

    let _ = stop_tx.send(());
    let _ = server.await;
    let report = report?;
    if let (Some(path), Some(heard)) = (out, &report.heard) {
        hark_codecs::wav::write_mulaw(path, heard).map_err(|e| {
            DemoError::Server(std::io::Error::other(format!(
                "writing {}: {e}",
                path.display()
            )))
        })?;
    }
    Ok(report)
}
