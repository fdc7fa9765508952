//! The OpenAI-compatible double (`hark_gateway::doubles::openai`) checked against OpenAI's own
//! spec (`fixtures/specs/openai/openapi.yaml`), driven by hark's own request builders
//! (`hark_engine::agents::cascade::wire`) through hark's HTTP connector — so neither the
//! double's answers nor hark's requests can drift from the real API:
//!
//! - requests: `CreateTranscriptionRequest` (multipart fields), `CreateChatCompletionRequest`
//!   (with the history shapes hark sends: tool calls, tool results, a cut-off answer),
//!   `CreateSpeechRequest`;
//! - answers: `CreateTranscriptionResponseStreamEvent`, `CreateTranscriptionResponseJson`,
//!   `CreateChatCompletionStreamResponse` (every chunk, incl. tool-call fragments and usage),
//!   `ErrorResponse` (401, 429, 5xx, `insufficient_quota`, an error inside a 200 stream);
//! - and that hark's parsers understand all of it.

#[path = "elevenlabs_realtime_specs.rs"]
mod specs;

use std::time::{Duration, Instant};

use hark_engine::agent::{
    FaultKind, HttpRequest, PeerId, ProviderEvent, ProviderFault, ProviderMessage,
};
use hark_engine::agents::cascade::wire::{
    self, ChatMessage, SttEvent, ToolCall, ToolCallAssembler,
};
use hark_engine::agents::cascade::{CascadeConfig, Endpoint as Ep};
use hark_engine::io::http::{self, Client};
use hark_gateway::doubles::openai::{
    self, Endpoint, Exchange, Fault, FaultRule, Latency, Reply, Rule, Script,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn check(schema: &str, v: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    specs::validate(
        specs::openai(),
        &json!({"$ref": format!("#/components/schemas/{schema}")}),
        v,
        "$",
        &mut errs,
    );
    errs
}

fn assert_valid(schema: &str, v: &Value) {
    let errs = check(schema, v);
    assert!(errs.is_empty(), "{schema}: {errs:?}\n{v:#}");
}

/// Multipart fields as the JSON the schema describes (`file` is binary, `stream` a boolean,
/// `temperature` a number).
fn multipart_as_schema(fields: &Value) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in fields.as_object().unwrap() {
        let v = match k.as_str() {
            "file" => json!("<binary>"),
            "stream" => json!(v.as_str() == Some("true")),
            "temperature" => json!(v.as_str().unwrap().parse::<f64>().unwrap()),
            _ => v.clone(),
        };
        m.insert(k.clone(), v);
    }
    Value::Object(m)
}

fn config(base: &str) -> CascadeConfig {
    let ep = |m: &str| Ep::new(base, Some("sk-test".into()), m);
    let mut c = CascadeConfig::default();
    c.stt.endpoint = ep("gpt-4o-mini-transcribe");
    c.stt.language = Some("en".into());
    c.stt.prompt = Some("Order numbers look like AB-1234.".into());
    c.llm.endpoint = ep("gpt-4o-mini");
    c.llm.temperature = Some(0.7);
    c.tts.endpoint = ep("gpt-4o-mini-tts");
    c.tts.instructions = Some("Speak warmly.".into());
    c
}

async fn send(req: HttpRequest) -> Vec<ProviderEvent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(http::run(Client::default(), PeerId(1), req, tx));
    let mut out = Vec::new();
    while let Some(e) = rx.recv().await {
        let end = matches!(
            e,
            ProviderEvent::Closed { .. } | ProviderEvent::Failed { .. }
        );
        out.push(e);
        if end {
            break;
        }
    }
    out
}

fn texts(evs: &[ProviderEvent]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            ProviderEvent::Message {
                message: ProviderMessage::Text(t),
                ..
            } => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn fast() -> Latency {
    Latency {
        stt_ms: 20,
        ttft_ms: 20,
        token_ms: 2,
        ttfb_ms: 20,
        audio_speed: 0.0,
        chunk_ms: 40,
    }
}

fn wav() -> Vec<u8> {
    let pcm: Vec<i16> = (0..8000).map(|i| ((i % 40) * 300) as i16).collect();
    hark_engine::agents::cascade::audio::wav_16k(&pcm, hark_codecs::SampleRate::HZ_8000).unwrap()
}

#[tokio::test]
async fn transcriptions_streamed_and_whole_match_the_spec() {
    let d = openai::start(Script {
        latency: fast(),
        transcripts: vec!["I see skies of blue.".into()],
        ..Script::default()
    })
    .await;
    let mut cfg = config(&d.base_url());
    let evs = send(wire::transcription_request(&cfg, wav())).await;
    let msgs = texts(&evs);
    let parsed: Vec<SttEvent> = msgs.iter().map(|m| wire::parse_stt(m)).collect();
    assert_eq!(
        parsed.last(),
        Some(&SttEvent::Done("I see skies of blue.".into()))
    );
    assert!(matches!(parsed[0], SttEvent::Delta(_)));
    assert!(matches!(evs.last(), Some(ProviderEvent::Closed { .. })));

    cfg.stt.stream = false;
    let evs = send(wire::transcription_request(&cfg, wav())).await;
    assert_eq!(
        texts(&evs)
            .iter()
            .map(|m| wire::parse_stt(m))
            .collect::<Vec<_>>(),
        vec![SttEvent::Done("I see skies of blue.".into())]
    );

    let ex = d.exchanges_with(Endpoint::Transcriptions);
    assert_eq!(ex.len(), 2);
    for e in &ex {
        assert_eq!(e.status, 200);
        assert_eq!(e.request["file"]["filename"], "audio.wav");
        assert_eq!(e.request["file"]["content_type"], "audio/wav");
        assert_valid(
            "CreateTranscriptionRequest",
            &multipart_as_schema(&e.request),
        );
    }
    for ev in &ex[0].response {
        assert_valid("CreateTranscriptionResponseStreamEvent", ev);
    }
    assert_valid("CreateTranscriptionResponseJson", &ex[1].response[0]);
    d.stop().await;

    // Servers that end the stream with `[DONE]` (vLLM, omlx) work too.
    let d = openai::start(Script {
        latency: fast(),
        transcripts: vec!["Hello there.".into()],
        stt_done_marker: true,
        ..Script::default()
    })
    .await;
    let cfg = config(&d.base_url());
    let evs = send(wire::transcription_request(&cfg, wav())).await;
    let msgs = texts(&evs);
    assert_eq!(msgs.last().map(String::as_str), Some("[DONE]"));
    assert!(
        msgs.iter()
            .any(|m| wire::parse_stt(m) == SttEvent::Done("Hello there.".into()))
    );
    d.stop().await;
}

#[tokio::test]
async fn chat_stream_with_tool_fragments_and_usage_matches_the_spec() {
    let d = openai::start(Script {
        latency: fast(),
        rules: vec![Rule::new(
            "agent",
            Reply::text("Sure, let me connect you.")
                .with_tool("transfer_call", r#"{"number":"+14155550100"}"#),
        )],
        ..Script::default()
    })
    .await;
    let cfg = config(&d.base_url());
    // The history shapes hark sends.
    let history = vec![
        ChatMessage::System("You are a phone assistant.".into()),
        ChatMessage::Assistant {
            content: "Hello! How can I".into(),
            tool_calls: vec![],
            interrupted: true,
        },
        ChatMessage::User("What's my balance?".into()),
        ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "end_call".into(),
                arguments: "{}".into(),
            }],
            interrupted: false,
        },
        ChatMessage::Tool {
            call_id: "call_1".into(),
            content: "error: not now".into(),
        },
        ChatMessage::User("Can I talk to an agent?".into()),
    ];
    let evs = send(wire::chat_request(&cfg, &history)).await;
    let msgs = texts(&evs);
    assert_eq!(msgs.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut tools = ToolCallAssembler::default();
    let mut finish = None;
    let mut usage = false;
    for m in &msgs {
        let c = wire::parse_chat(m).unwrap();
        text.push_str(c.content.as_deref().unwrap_or(""));
        for t in &c.tool_calls {
            tools.push(t);
        }
        finish = c.finish_reason.or(finish);
        usage |= c.usage.is_some();
    }
    assert_eq!(text, "Sure, let me connect you.");
    assert_eq!(
        finish.as_ref().map(wire::Finish::as_str),
        Some("tool_calls")
    );
    assert!(usage, "include_usage gives a usage chunk");
    let calls = tools.finish();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "transfer_call");
    assert_eq!(calls[0].arguments, r#"{"number":"+14155550100"}"#);

    let ex = d.exchanges_with(Endpoint::ChatCompletions);
    assert_valid("CreateChatCompletionRequest", &ex[0].request);
    assert!(ex[0].response.len() >= 8);
    for (i, c) in ex[0].response.iter().enumerate() {
        let errs = check("CreateChatCompletionStreamResponse", c);
        assert!(errs.is_empty(), "chunk {i}: {errs:?}\n{c}");
    }
    // The check is not vacuous: a drifted chunk or request is caught.
    let mut drift = ex[0].response.last().unwrap().clone();
    drift["object"] = json!("chat.completion");
    assert!(!check("CreateChatCompletionStreamResponse", &drift).is_empty());
    let mut drift = ex[0].request.clone();
    drift["messages"][0]["role"] = json!("narrator");
    assert!(!check("CreateChatCompletionRequest", &drift).is_empty());
    assert!(
        !check(
            "CreateSpeechRequest",
            &json!({"model": "tts-1", "input": "x", "voice": "alloy", "response_format": "ulaw"})
        )
        .is_empty()
    );
    // Same id and created on every chunk.
    let ids: Vec<&Value> = ex[0].response.iter().map(|c| &c["id"]).collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    d.stop().await;
}

#[tokio::test]
async fn speech_streams_pcm_matching_the_text() {
    let d = openai::start(Script {
        latency: Latency {
            audio_speed: 8.0,
            ..fast()
        },
        ..Script::default()
    })
    .await;
    let cfg = config(&d.base_url());
    let text = "Your parcel arrives tomorrow before noon.";
    let t0 = Instant::now();
    let evs = send(wire::speech_request(&cfg, text)).await;
    let mut bytes = 0;
    let mut n = 0;
    for e in &evs {
        if let ProviderEvent::Message {
            message: ProviderMessage::Binary(b),
            ..
        } = e
        {
            bytes += b.len();
            n += 1;
        }
    }
    let elapsed = t0.elapsed();
    let ex = d.exchanges_with(Endpoint::Speech);
    assert_valid("CreateSpeechRequest", &ex[0].request);
    assert_eq!(bytes, ex[0].audio_bytes);
    assert_eq!(bytes % 2, 0, "whole s16le samples");
    // ≈ 70 ms per character at 24 kHz, 2 bytes per sample.
    let audio_ms = bytes as u64 / 48;
    assert!(
        audio_ms.abs_diff(text.len() as u64 * 70) < 100,
        "{audio_ms} ms"
    );
    assert!(n > 10, "streamed in chunks");
    // Paced at 8× real time.
    assert!(
        elapsed >= Duration::from_millis(audio_ms / 8 - 50),
        "{elapsed:?}"
    );
    d.stop().await;
}

fn failed(evs: &[ProviderEvent]) -> ProviderFault {
    match evs.last() {
        Some(ProviderEvent::Failed { fault, .. }) => fault.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn faults_look_like_openai() {
    let d = openai::start(Script {
        latency: fast(),
        ..Script::default()
    })
    .await;
    let cfg = config(&d.base_url());
    let chat = || wire::chat_request(&cfg, &[ChatMessage::User("hi".into())]);
    let cases: Vec<(Fault, u16, Option<u64>, &str)> = vec![
        (Fault::status(401), 401, None, "invalid_api_key"),
        (
            Fault::Status {
                status: 429,
                retry_after_s: Some(2),
                retry_after_ms: None,
            },
            429,
            Some(2000),
            "rate_limit_exceeded",
        ),
        (
            Fault::Status {
                status: 429,
                retry_after_s: Some(1),
                retry_after_ms: Some(150.5),
            },
            429,
            Some(151),
            "rate_limit_exceeded",
        ),
        (Fault::InsufficientQuota, 429, None, "insufficient_quota"),
        (Fault::status(503), 503, None, "server_error"),
    ];
    for (fault, status, retry, code) in cases {
        d.inject(FaultRule::next(Endpoint::ChatCompletions, 1, fault.clone()));
        let evs = send(chat()).await;
        let f = failed(&evs);
        let e = &f.detail;
        assert_eq!(f.http_status(), Some(status), "{fault:?}");
        assert_eq!(f.retry_after_ms, retry, "{fault:?}");
        assert!(e.contains(code), "{fault:?}: {e}");
        assert_eq!(
            f.retryable(),
            code != "invalid_api_key" && code != "insufficient_quota",
            "{fault:?}"
        );
    }
    // An error object inside a 200 stream: hark's parser reports it.
    d.inject(FaultRule::next(
        Endpoint::ChatCompletions,
        1,
        Fault::StreamError,
    ));
    let evs = send(chat()).await;
    assert!(matches!(evs.last(), Some(ProviderEvent::Closed { .. })));
    let errs: Vec<String> = texts(&evs)
        .iter()
        .filter_map(|m| wire::parse_chat(m).err().map(wire::ChatFault::into_detail))
        .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("server_error"));
    // A dropped connection, for each endpoint.
    for (ep, req) in [
        (Endpoint::ChatCompletions, chat()),
        (Endpoint::Speech, wire::speech_request(&cfg, "Hello there.")),
        (
            Endpoint::Transcriptions,
            wire::transcription_request(&cfg, wav()),
        ),
    ] {
        d.inject(FaultRule::next(ep, 1, Fault::Drop));
        let evs = send(req).await;
        let f = failed(&evs);
        assert_eq!(f.http_status(), None, "{ep:?}");
        assert_eq!(f.kind, FaultKind::Dropped, "{ep:?}: {f}");
    }
    // No answer: the request's own timeout.
    d.inject(FaultRule::next(Endpoint::Speech, 1, Fault::Hang));
    let mut r = wire::speech_request(&cfg, "Hello.");
    r.timeout_ms = Some(300);
    let f = failed(&send(r).await);
    assert_eq!(f.kind, FaultKind::Timeout, "{f}");

    // Every error body is an ErrorResponse; every stream error object an Error.
    let ex: Vec<Exchange> = d.exchanges();
    let mut n = 0;
    for e in ex.iter().filter(|e| e.status >= 400) {
        assert_valid("ErrorResponse", &e.response[0]);
        n += 1;
    }
    assert_eq!(n, 5);
    let in_stream = ex
        .iter()
        .find(|e| e.fault == Some(Fault::StreamError))
        .unwrap();
    assert_valid("ErrorResponse", in_stream.response.last().unwrap());

    // Bad requests are refused the way OpenAI does.
    let mut bad = wire::speech_request(&cfg, "x");
    if let hark_engine::agent::HttpBody::Json(b) = &mut bad.body {
        b["response_format"] = json!("mp3");
    }
    let f = failed(&send(bad).await);
    assert_eq!(f.http_status(), Some(400));
    d.stop().await;

    // A double that checks keys answers 401 to a wrong one.
    let d = openai::start(Script {
        latency: fast(),
        api_key: Some("sk-right".into()),
        ..Script::default()
    })
    .await;
    let cfg = config(&d.base_url());
    let f = failed(&send(wire::speech_request(&cfg, "Hello.")).await);
    assert_eq!(f.http_status(), Some(401));
    assert!(f.detail.contains("invalid_api_key"));
    d.stop().await;
}
