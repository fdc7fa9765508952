//! HTTP provider pipes ([`crate::agent::HttpRequest`]): STT, LLM and TTS calls.
//!
//! SCAFFOLD: the cascade-agent work replaces this with the reqwest implementation (rustls on
//! ring; SSE and chunked bodies streamed as messages; `Retry-After` reported).

use tokio::sync::mpsc;

use crate::agent::{HttpRequest, PeerId, ProviderEvent};

/// The shared HTTP client.
#[derive(Debug, Clone, Default)]
pub struct Client {}

/// Runs one request to completion, reporting through `tx`.
pub async fn run(
    _client: Client,
    peer: PeerId,
    _req: HttpRequest,
    tx: mpsc::UnboundedSender<ProviderEvent>,
) {
    let _ = tx.send(ProviderEvent::Failed {
        peer,
        error: "HTTP connector not built yet".into(),
        status: None,
        retry_after_ms: None,
        close_code: None,
    });
}
