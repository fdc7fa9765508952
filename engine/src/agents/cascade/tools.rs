//! The tools the model may call: `end_call` and `transfer_call(number)`.

use super::turn::After;
use super::{ToolCall, ToolsConfig};

/// Whether `n` is a number `transfer_call` may dial (E.164 or a `sip:` URI).
pub use crate::dial::is_transfer_target as valid_transfer_target;

/// Runs tool call `c`: its result for the model, and what happens after the answer when it
/// succeeded (`None`: an error the model gets one more round to correct).
pub(super) fn run(tools: &ToolsConfig, c: &ToolCall) -> (String, Option<After>) {
    let arg = |name: &str| {
        serde_json::from_str::<serde_json::Value>(&c.arguments)
            .ok()
            .and_then(|v| v.get(name).and_then(|r| r.as_str()).map(str::to_string))
    };
    match c.name.as_str() {
        "end_call" if tools.end_call => {
            let reason = arg("reason").unwrap_or_else(|| "end_call".into());
            let after = After::Hangup(format!("end_call: {reason}"));
            (
                "ok: the call ends after your goodbye".to_string(),
                Some(after),
            )
        }
        "transfer_call" if tools.transfer_call => {
            match arg("number").map(|n| n.trim().to_string()) {
                Some(n)
                    if valid_transfer_target(&n)
                        && (tools.transfer_allow.is_empty()
                            || tools.transfer_allow.iter().any(|a| a == &n)) =>
                {
                    let result = format!("ok: transferring the call to {n}");
                    (result, Some(After::Transfer(n)))
                }
                Some(n) if valid_transfer_target(&n) => (
                    format!("error: {n} is not a number this line may transfer to"),
                    None,
                ),
                _ => (
                    format!(
                        "error: arguments must be {{\"number\": \"+<E.164 digits>\"}}, got {}",
                        c.arguments
                    ),
                    None,
                ),
            }
        }
        other => (format!("error: there is no tool named {other:?}"), None),
    }
}
