//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and
//! metrics-exporter-prometheus's recorder.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `hark_calls_active` | gauge | calls with an open media stream |
//! | `hark_calls_total` | counter | media streams accepted |
//! | `hark_inbound_frames_total` | counter | 20 ms caller frames processed |
//! | `hark_outbound_frames_total` | counter | `media` messages sent to Twilio |
//! | `hark_malformed_messages_total{kind}` | counter | bad inbound messages, by kind (skipped, call goes on) |
//! | `hark_barge_ins_total` | counter | barge-ins confirmed (the agent's answer cut) |
//! | `hark_playback_holds_total{outcome}` | counter | `clear`s that only held the answer (`call.resume_after_ms`): `resumed` (a blip or nothing), `backchannel` |
//! | `hark_turns_total` | counter | caller turns handed to the agent |
//! | `hark_turn_latency_seconds` | histogram | caller's last voiced frame → first agent `media` sent (engine-side voice-to-voice, endpointing included) |
//! | `hark_voice_to_voice_seconds` | histogram | caller's last voiced frame → the caller began hearing the answer (first mark echo minus the audio it covers) |
//! | `hark_transfers_total{outcome}` | counter | agent transfers carried out through Twilio's REST API: `ok`, `failed`, `not_configured` |
//! | `hark_barge_in_delay_seconds` | histogram | first voiced frame → `clear`, media time |
//! | `hark_engine_message_seconds` | histogram | engine time per inbound message (sampled 1 in 50) |
//! | `hark_ws_errors_total{kind}` | counter | WebSocket failures (upgrade, read, send timeout, idle) |
//! | `hark_signature_failures_total{route}` | counter | requests refused for a bad `X-Twilio-Signature` |
//! | `hark_stage_latency_seconds{stage}` | histogram | agent stages per turn: `stt`, `llm_ttft`, `tts_ttfb`, `greeting` |
//! | `hark_provider_faults_total{provider,kind}` | counter | provider faults (retried or answered with a fallback) |
//! | `hark_tool_calls_total{name}` | counter | tool calls made by the model |
//! | `hark_recordings_total{result}` | counter | call recordings written (`saved`) or not (`failed`) |
//! | `hark_recordings_deleted_total` | counter | recordings deleted by the retention sweep |
//! | `hark_console_media_streams_total` | counter | browser-phone calls admitted by a console ticket |
//! | `hark_console_refused_total{reason}` | counter | console sign-ins refused: a used or unknown `link`, a wrong API `key` |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
];
const SHORT_BUCKETS: &[f64] = &[
    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.001, 0.01, 0.02,
    0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3,
];

/// Installs the process-wide recorder once and returns its handle (`None` if another recorder
/// was installed first, e.g. by an embedding application; metrics then go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("hark_turn_latency_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hark_voice_to_voice_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hark_barge_in_delay_seconds".into()),
                        SHORT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hark_engine_message_seconds".into()),
                        SHORT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hark_stage_latency_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("hark_calls_active", "calls with an open media stream");
    describe_counter!("hark_calls_total", "media streams accepted");
    describe_counter!("hark_inbound_frames_total", "20 ms caller frames processed");
    describe_counter!(
        "hark_outbound_frames_total",
        "media messages sent to Twilio"
    );
    describe_counter!(
        "hark_malformed_messages_total",
        "bad inbound messages, skipped"
    );
    describe_counter!(
        "hark_barge_ins_total",
        "barge-ins confirmed (the agent's answer cut)"
    );
    describe_counter!(
        "hark_playback_holds_total",
        "clears that only held the answer, which then played on, by outcome"
    );
    describe_counter!("hark_turns_total", "caller turns handed to the agent");
    describe_histogram!(
        "hark_turn_latency_seconds",
        metrics::Unit::Seconds,
        "caller's last voiced frame to first agent media sent"
    );
    describe_histogram!(
        "hark_voice_to_voice_seconds",
        metrics::Unit::Seconds,
        "caller's last voiced frame to the caller beginning to hear the answer (mark echoes)"
    );
    describe_counter!(
        "hark_transfers_total",
        "agent transfers through Twilio's REST API, by outcome"
    );
    describe_histogram!(
        "hark_barge_in_delay_seconds",
        metrics::Unit::Seconds,
        "first voiced frame to clear, media time"
    );
    describe_histogram!(
        "hark_engine_message_seconds",
        metrics::Unit::Seconds,
        "engine time per inbound message, sampled"
    );
    describe_counter!("hark_ws_errors_total", "WebSocket failures");
    describe_counter!(
        "hark_signature_failures_total",
        "requests refused for a bad X-Twilio-Signature"
    );
    describe_histogram!(
        "hark_stage_latency_seconds",
        metrics::Unit::Seconds,
        "agent stage latency per turn: stt, llm_ttft, tts_ttfb, greeting"
    );
    describe_counter!(
        "hark_provider_faults_total",
        "provider faults by provider and kind"
    );
    describe_counter!("hark_tool_calls_total", "tool calls made by the model");
    // Register the unlabelled series so they show (as 0) before the first call.
    metrics::gauge!("hark_calls_active").increment(0.0);
    for c in [
        "hark_calls_total",
        "hark_inbound_frames_total",
        "hark_outbound_frames_total",
        "hark_barge_ins_total",
        "hark_turns_total",
    ] {
        metrics::counter!(c).increment(0);
    }
}

/// Renders the Prometheus text exposition format.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::from("# metrics are recorded by another recorder in this process\n"),
    }
}
