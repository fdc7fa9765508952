//! The language model, speech-to-text and text-to-speech: hark's OpenAI-compatible double
//! ([`hark_gateway::doubles::openai`]) scripted for this dialogue, in place of OpenAI (or
//! any OpenAI-compatible server) that a real deployment points `[openai] base_url` at.
//!
//! A real model decides from the system prompt and the tools' descriptions; this one follows
//! a script keyed on the caller's words:
//!
//! | caller (transcript) | model |
//! |---|---|
//! | "Hi, who is this? How much do I owe?" | calls `lookup_balance {"payerId": "p-42"}` |
//! | (the tool's result) | "Thank you. That's 120 dollars, due May 3." |
//! | "I can pay it on Friday." | "I'll note your promise to pay on Friday." and calls `record_promise {"amount": 120, "date": "Friday"}` |
//! | (the tool's result) | the same after-tool line, the call's last (`end_call_after`) |
//!
//! The double has one reply for every tool result ([`Script::after_tool`]), so the line after
//! `record_promise` repeats the balance. Speech is synthetic (a tone per word, about 70 ms
//! per character).

use hark_gateway::doubles::openai::{self, Latency, OpenAiDouble, Reply, Rule, Script};

/// What the caller's two turns are transcribed as, in order.
pub const CALLER_SAYS: [&str; 2] = [
    "Hi, who is this? How much do I owe?",
    "I can pay it on Friday.",
];

/// What the model says once it has the balance.
pub const BALANCE_LINE: &str = "Thank you. That's 120 dollars, due May 3.";

/// Starts the double on 127.0.0.1 (port 0) with hosted-API latencies.
pub async fn start() -> OpenAiDouble {
    openai::start(Script {
        latency: Latency::REALISTIC,
        transcripts: CALLER_SAYS.iter().map(|s| s.to_string()).collect(),
        rules: vec![
            Rule::new(
                "how much do I owe",
                Reply::text("").with_tool("lookup_balance", r#"{"payerId":"p-42"}"#),
            ),
            Rule::new(
                "friday",
                Reply::text("I'll note your promise to pay on Friday.")
                    .with_tool("record_promise", r#"{"amount":120,"date":"Friday"}"#),
            ),
        ],
        after_tool: Reply::text(BALANCE_LINE),
        ..Script::default()
    })
    .await
}
