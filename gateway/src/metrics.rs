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
//! | `hark_turn_model_checks_total{outcome}` | counter | end-of-turn model answers (`HARK_END_OF_TURN=smart-turn`): `complete`, `unfinished` (against the call's `turn_model_threshold_pct`), `no_answer` (its queue was full or it did not load: the silence rule decided) |
//! | `hark_turn_model_seconds` | histogram | one end-of-turn model inference on its pool thread |
//! | `hark_turn_latency_seconds` | histogram | caller's last voiced frame → first agent `media` sent (engine-side voice-to-voice, endpointing included) |
//! | `hark_voice_to_voice_seconds` | histogram | caller's last voiced frame → the caller began hearing the answer (first mark echo minus the audio it covers) |
//! | `hark_transfers_total{outcome}` | counter | agent transfers carried out through Twilio's REST API: `ok`, `failed`, `not_configured` |
//! | `hark_barge_in_delay_seconds` | histogram | first voiced frame → `clear`, media time |
//! | `hark_engine_message_seconds` | histogram | engine time per inbound message (sampled 1 in 50) |
//! | `hark_ws_errors_total{kind}` | counter | WebSocket failures (upgrade, read, send timeout, idle) |
//! | `hark_signature_failures_total{route}` | counter | requests refused for a bad `X-Twilio-Signature` |
//! | `hark_stage_latency_seconds{stage}` | histogram | agent stages per turn: `stt`, `llm_ttft`, `tts_ttfb`, `greeting` |
//! | `hark_provider_faults_total{provider,kind}` | counter | provider faults (retried or answered with a fallback) |
//! | `hark_provider_requests_total{stage,outcome}` | counter | provider HTTP requests and WebSockets, counted when each ends, by `stage` (`stt`, `llm`, `tts`, `tool`, `context`, `elevenlabs_signed_url`; sockets `elevenlabs`, `realtime`) and `outcome`: `ok`, a fault (`status`, `close`, `timeout`, `connect`, `dropped`, `request`, `content_type`) or `cancelled` (closed by hark first, e.g. at barge-in) |
//! | `hark_provider_response_seconds{stage}` | histogram | provider request start → response headers (any status), or → WebSocket handshake done |
//! | `hark_tool_calls_total{name}` | counter | tool calls made by the model |
//! | `hark_http_requests_total{route,status}` | counter | HTTP requests by route template and status (`crate::ops`) |
//! | `hark_http_request_seconds{route}` | histogram | request → response head, by route template |
//! | `hark_call_duration_seconds` | histogram | media stream length, upgrade → end |
//! | `hark_build_info{version}` | gauge | 1, labelled with hark's version |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` | counter, gauges | this process, read from `/proc/self` at each scrape (Linux) |
//!
//! Labelled counters with known labels (malformed kinds, transfer and hold outcomes,
//! signature routes, recording results, console refusals, provider request stages and
//! outcomes) exist at 0 from the start, so a rate or an error ratio can be computed before the
//! first event.
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
/// Call lengths, s.
const CALL_BUCKETS: &[f64] = &[5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0];
/// Provider response times, s: operator tools and context lookups (ms) up to slow LLMs.
const PROVIDER_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
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
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hark_http_request_seconds".into()),
                        SHORT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("hark_call_duration_seconds".into()),
                        CALL_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(hark_engine::io::http::RESPONSE_SECONDS.into()),
                        PROVIDER_BUCKETS,
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
    describe_counter!(
        "hark_turn_model_checks_total",
        "end-of-turn model checks (HARK_END_OF_TURN=smart-turn), by outcome"
    );
    describe_histogram!(
        "hark_turn_model_seconds",
        metrics::Unit::Seconds,
        "one end-of-turn model inference, on its pool's thread"
    );
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
    describe_counter!(
        hark_engine::io::http::REQUESTS_TOTAL,
        "provider HTTP requests and WebSockets, counted when each ends, by stage and outcome"
    );
    describe_histogram!(
        hark_engine::io::http::RESPONSE_SECONDS,
        metrics::Unit::Seconds,
        "provider request start to response headers (any status) or WebSocket handshake done"
    );
    // Register the unlabelled series so they show (as 0) before the first call.
    metrics::gauge!("hark_calls_active").increment(0.0);
    for c in [
        "hark_calls_total",
        "hark_inbound_frames_total",
        "hark_outbound_frames_total",
        "hark_barge_ins_total",
        "hark_turns_total",
        "hark_calls_recovered_total",
        "hark_node_declared_lost_total",
    ] {
        metrics::counter!(c).increment(0);
    }
    zero_labelled();
    metrics::gauge!("hark_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The labelled counters whose labels are known in advance, at 0.
fn zero_labelled() {
    for kind in hark_engine::Malformed::ALL {
        metrics::counter!("hark_malformed_messages_total", "kind" => kind.as_str()).increment(0);
    }
    let known: [(&'static str, &'static str, &[&'static str]); 8] = [
        (
            "hark_transfers_total",
            "outcome",
            &["ok", "failed", "not_configured"],
        ),
        (
            "hark_playback_holds_total",
            "outcome",
            &["resumed", "backchannel"],
        ),
        (
            "hark_turn_model_checks_total",
            "outcome",
            &["complete", "unfinished", "no_answer"],
        ),
        (
            "hark_signature_failures_total",
            "route",
            &["voice", "media-stream"],
        ),
        ("hark_recordings_total", "result", &["saved", "failed"]),
        ("hark_console_refused_total", "reason", &["link", "key"]),
        ("hark_remote_notices_total", "result", &["routed"]),
        (
            "hark_outbound_calls_total",
            "result",
            &["created", "queue_full", "abandoned"],
        ),
    ];
    for (name, label, values) in known {
        for v in values {
            metrics::counter!(name, label => *v).increment(0);
        }
    }
    zero_provider_requests();
}

/// `hark_provider_requests_total` at 0 for every stage of hark's agents and every outcome its
/// transport (HTTP or WebSocket) can end with.
fn zero_provider_requests() {
    use hark_engine::agent::{HTTP_STAGES, WS_STAGES};
    use hark_engine::io::{http::HTTP_OUTCOMES, ws::WS_OUTCOMES};
    let pairs = HTTP_STAGES
        .iter()
        .flat_map(|s| HTTP_OUTCOMES.iter().map(move |o| (*s, *o)))
        .chain(
            WS_STAGES
                .iter()
                .flat_map(|s| WS_OUTCOMES.iter().map(move |o| (*s, *o))),
        );
    for (stage, outcome) in pairs {
        metrics::counter!(
            hark_engine::io::http::REQUESTS_TOTAL,
            "stage" => stage,
            "outcome" => outcome
        )
        .increment(0);
    }
}

/// Renders the Prometheus text exposition format.
pub fn render() -> String {
    match handle() {
        Some(h) => {
            h.run_upkeep();
            let mut text = h.render();
            if let Some((cpu, rss, fds)) = crate::ops::process_stats() {
                use std::fmt::Write as _;
                let _ = write!(
                    text,
                    "# HELP process_cpu_seconds_total user and system CPU time of hark\n\
                     # TYPE process_cpu_seconds_total counter\n\
                     process_cpu_seconds_total {cpu}\n\
                     # HELP process_resident_memory_bytes resident memory of hark\n\
                     # TYPE process_resident_memory_bytes gauge\n\
                     process_resident_memory_bytes {rss}\n\
                     # HELP process_open_fds open file descriptors of hark\n\
                     # TYPE process_open_fds gauge\n\
                     process_open_fds {fds}\n"
                );
            }
            text
        }
        None => String::from("# metrics are recorded by another recorder in this process\n"),
    }
}
