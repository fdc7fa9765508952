//! A payment-reminder line, end to end, on one machine:
//!
//! ```text
//! cargo run -p hark-gateway --example payment_reminder
//! ```
//!
//! A scheduler places a call to a payer with `POST /calls` and `payerId`; hark asks the
//! operator's backend for the call's context (prompt, greeting, `{{name}}`), the model looks up
//! the balance and records the payer's promise through the backend's tools, and the backend
//! gets `call.started`, `turn.ended` and `call.ended`. Nothing leaves 127.0.0.1: the parts a
//! real deployment gets elsewhere are stand-ins, each in its own module:
//!
//! | module | stands in for |
//! |---|---|
//! | `operator` | your backend: context, tools, events, with its own signature check |
//! | `llm` | OpenAI (STT, chat, TTS): hark's OpenAI-compatible double, scripted |
//! | `twilio` | Twilio's REST API and the callee's phone: hark's simulator on the Media Stream |
//! | `run` | the scheduler (`POST /calls`) and hark itself, from a `hark.toml` text |
//!
//! Exits 0 once the backend has `call.ended`; 1 with the reason if anything did not happen
//! within 60 s. `gateway/tests/payment_reminder.rs` runs the same [`run::run`] and checks it.

mod llm;
mod operator;
mod run;
mod twilio;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let summary = match run::run().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("payment_reminder: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\ncall {}", summary.call_sid);
    println!("  stream <Parameter>s: {:?}", summary.stream_parameters);
    println!("  the model was told: {}", summary.system_prompt);
    // Every speech request, including the fallback and filler lines hark prepares ahead.
    println!("  speech synthesized:");
    for line in &summary.spoken {
        println!("    {line}");
    }
    let ended = summary
        .events()
        .into_iter()
        .find(|e| e["type"] == "call.ended")
        .cloned()
        .unwrap_or_default();
    println!("  call.ended transcript:");
    for line in ended["data"]["transcript"].as_array().into_iter().flatten() {
        println!(
            "    {:>6}: {}",
            line["role"].as_str().unwrap_or("?"),
            line["text"].as_str().unwrap_or("")
        );
    }
    println!(
        "  ended: {}; {} requests to the backend, all signed: {}; the callee heard {} ms of the agent",
        ended["data"]["ended"].as_str().unwrap_or("?"),
        summary.operator.len(),
        summary.operator.iter().all(|r| r.signed),
        summary.caller.heard_audio_ms
    );
    ExitCode::SUCCESS
}
