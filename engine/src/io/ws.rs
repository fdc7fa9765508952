//! WebSocket provider pipes ([`crate::agent::WsRequest`]): ElevenLabs, OpenAI Realtime.
//!
//! SCAFFOLD: the speech-to-speech work replaces this with the tokio-tungstenite implementation
//! (rustls on ring).

use tokio::sync::mpsc;

use crate::agent::{PeerId, ProviderEvent, ProviderMessage, WsRequest};

/// Runs one WebSocket until it closes or the pipe is closed, reporting through `tx`.
pub async fn run(
    peer: PeerId,
    _req: WsRequest,
    _outgoing: mpsc::UnboundedReceiver<ProviderMessage>,
    tx: mpsc::UnboundedSender<ProviderEvent>,
) {
    let _ = tx.send(ProviderEvent::Failed {
        peer,
        error: "WebSocket connector not built yet".into(),
        status: None,
        retry_after_ms: None,
        close_code: None,
    });
}
