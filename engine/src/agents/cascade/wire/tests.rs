//! Unit tests of the OpenAI wire formats: the strict readings, and each tolerance with the
//! JSON of the server that needs it (see the parent module doc).

use super::*;

/// The strict type refuses `json` (so the tolerance is needed), and [`parse_chat`] reads it.
fn tolerated(json: &str) -> ChatChunk {
    assert!(
        serde_json::from_str::<CreateChatCompletionStreamResponse>(json).is_err(),
        "the strict type takes {json}"
    );
    parse_chat(json).unwrap_or_else(|e| panic!("{e:?}: {json}"))
}

fn calls_of(chunks: &[&str]) -> Vec<ToolCall> {
    let mut a = ToolCallAssembler::default();
    for c in chunks {
        for t in &parse_chat(c).unwrap().tool_calls {
            a.push(t);
        }
    }
    a.finish()
}

#[test]
fn stt_messages() {
    assert_eq!(
        parse_stt(r#"{"type":"transcript.text.delta","delta":" see"}"#),
        SttEvent::Delta(" see".into())
    );
    assert_eq!(
        parse_stt(r#"{"type":"transcript.text.done","text":"I see","usage":{"type":"tokens"}}"#),
        SttEvent::Done("I see".into())
    );
    assert_eq!(
        parse_stt(r#"{"text":"whole"}"#),
        SttEvent::Done("whole".into())
    );
    assert_eq!(parse_stt("[DONE]"), SttEvent::Ignore);
    assert!(matches!(parse_stt("bare text"), SttEvent::NotJson(_)));
    assert!(matches!(
        parse_stt("<html>502 Bad Gateway</html>"),
        SttEvent::NotJson(e) if e.contains("502 Bad Gateway")
    ));
    assert!(matches!(
        parse_stt(r#"{"error":{"message":"boom","type":"server_error","code":null}}"#),
        SttEvent::Error(e) if e.contains("boom")
    ));
}

#[test]
fn stt_spec_answers_are_read_strictly() {
    let done = r#"{"type":"transcript.text.done","text":"I see","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":45,"total_tokens":59}}"#;
    assert!(serde_json::from_str::<CreateTranscriptionResponseStreamEvent>(done).is_ok());
    assert_eq!(parse_stt(done), SttEvent::Done("I see".into()));
    let whole = r#"{"text":"Imagine","usage":{"type":"duration","seconds":9}}"#;
    assert!(serde_json::from_str::<CreateTranscriptionResponseJson>(whole).is_ok());
    assert_eq!(parse_stt(whole), SttEvent::Done("Imagine".into()));
    let segment = r#"{"type":"transcript.text.segment","id":"seg_1","start":0.0,"end":1.5,"text":"Hi","speaker":"A"}"#;
    assert_eq!(parse_stt(segment), SttEvent::Ignore);
}

/// Answers without `usage` (Groq, whisper.cpp's server, Speaches) or with a partial one
/// (the spec's own example), which the types refuse.
#[test]
fn stt_answers_without_usage() {
    for (json, want) in [
        (
            r#"{"text":" Hello.","x_groq":{"id":"req_01jxyz"}}"#,
            " Hello.",
        ),
        (r#"{"text":"Hello."}"#, "Hello."),
        (
            r#"{"type":"transcript.text.done","text":"I see","usage":{"type":"tokens"}}"#,
            "I see",
        ),
        (r#"{"type":"transcript.text.done","text":"I see"}"#, "I see"),
    ] {
        assert!(
            serde_json::from_str::<CreateTranscriptionResponseStreamEvent>(json).is_err()
                && serde_json::from_str::<CreateTranscriptionResponseJson>(json).is_err(),
            "a strict type takes {json}"
        );
        assert_eq!(parse_stt(json), SttEvent::Done(want.into()), "{json}");
    }
}

#[test]
fn chat_chunks_and_tool_fragments() {
    let c = parse_chat(r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}"#).unwrap();
    assert_eq!(c.content.as_deref(), Some("Hel"));
    assert!(c.usage.is_none());
    let calls = calls_of(&[
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"transfer_call","arguments":""}}]},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"number\":"}}]},"finish_reason":null}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"+1415\"}"}}]},"finish_reason":null}]}"#,
    ]);
    let f =
        parse_chat(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#).unwrap();
    assert_eq!(f.finish_reason, Some(Finish::Spec(FinishReason::ToolCalls)));
    assert_eq!(
        f.finish_reason.as_ref().map(Finish::as_str),
        Some("tool_calls")
    );
    assert_eq!(
        calls,
        vec![ToolCall {
            id: "call_abc".into(),
            name: "transfer_call".into(),
            arguments: r#"{"number":"+1415"}"#.into()
        }]
    );
    let u = parse_chat(
        r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
    )
    .unwrap();
    assert!(u.usage.is_some());
    assert!(parse_chat("[DONE]").unwrap().done);
    assert!(
        parse_chat(
            r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#
        )
        .is_err()
    );
    assert!(parse_chat("garbage").is_err());
}

/// OpenAI's own chunks (the spec's examples, with the fields it adds) take the strict path.
#[test]
fn spec_chunks_are_read_strictly() {
    let first = r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","service_tier":"default","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"r4N7vQ2m"}"#;
    let usage = r#"{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#;
    for json in [first, usage] {
        assert!(serde_json::from_str::<CreateChatCompletionStreamResponse>(json).is_ok());
    }
    assert_eq!(parse_chat(first).unwrap(), ChatChunk::default());
    assert_eq!(
        parse_chat(usage).unwrap().usage.map(|u| u.total_tokens),
        Some(21)
    );
}

/// No `id` (OpenVINO Model Server), no `id`/`created` (Gemini), only `id` and `choices`
/// (TensorRT-Edge-LLM's server), no envelope at all (OpenCode Zen's cost event).
#[test]
fn chunks_without_the_envelope() {
    for json in [
        r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null,"index":0,"logprobs":null}],"created":1754380000,"model":"ovms","object":"chat.completion.chunk"}"#,
        r#"{"choices":[{"delta":{"content":"Hi","role":"assistant"},"index":0}],"model":"gemini-2.5-flash","object":"chat.completion.chunk"}"#,
        r#"{"id": "chatcmpl-7f", "choices": [{"delta": {"content": "Hi"}, "index": 0}]}"#,
    ] {
        assert_eq!(tolerated(json).content.as_deref(), Some("Hi"), "{json}");
    }
    assert_eq!(
        tolerated(r#"{"choices":[],"cost":"0"}"#),
        ChatChunk::default()
    );
}

/// Values outside the enums of fields hark never reads: Groq's `service_tier`, a Gemini
/// proxy's empty tool-call `type`.
#[test]
fn unread_fields_outside_their_enums() {
    let groq = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1761988004,"model":"moonshotai/kimi-k2-instruct-0905","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}],"x_groq":{"id":"req_zapj1rejb9pdn"},"service_tier":"on_demand"}"#;
    assert_eq!(tolerated(groq).content.as_deref(), Some("Hi"));
    let proxy = r#"{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gemini","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"","function":{"name":"end_call","arguments":"{}"}}]},"finish_reason":null}]}"#;
    assert_eq!(tolerated(proxy).tool_calls.len(), 1);
    assert_eq!(calls_of(&[proxy])[0].name, "end_call");
}

/// Gemini's tool-call fragments have no `index`: each takes its position in the array.
#[test]
fn tool_calls_without_index() {
    let one = r#"{"choices":[{"delta":{"role":"assistant","tool_calls":[{"extra_content":{"google":{"thought_signature":"c2ln"}},"function":{"arguments":"{\"number\":\"+14155550100\"}","name":"transfer_call"},"id":"call_297140","type":"function"}]},"index":0}],"model":"gemini-2.5-flash","object":"chat.completion.chunk"}"#;
    tolerated(one);
    assert_eq!(
        calls_of(&[one]),
        vec![ToolCall {
            id: "call_297140".into(),
            name: "transfer_call".into(),
            arguments: r#"{"number":"+14155550100"}"#.into()
        }]
    );
    let two = r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{}","name":"end_call"},"id":"a","type":"function"},{"function":{"arguments":"{}","name":"transfer_call"},"id":"b","type":"function"}]},"index":0}],"model":"gemini-2.5-flash","object":"chat.completion.chunk"}"#;
    let names: Vec<String> = calls_of(&[two]).into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["end_call", "transfer_call"]);
}

/// `finish_reason` outside the spec's enum: a server's own value is kept, SGLang's `""` on
/// every content chunk is none.
#[test]
fn finish_reasons_outside_the_enum() {
    for (json, want) in [
        (
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"abort","stop_reason":null}]}"#,
            "abort",
        ),
        (
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"deepseek-chat","choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"insufficient_system_resource"}]}"#,
            "insufficient_system_resource",
        ),
    ] {
        let f = tolerated(json).finish_reason;
        assert_eq!(f, Some(Finish::Other(want.into())));
        assert_eq!(f.as_ref().map(Finish::as_str), Some(want));
    }
    let sglang = r#"{"id":"b2946a2aa5574af6aadf0c0889e8dcef","object":"chat.completion.chunk","created":1740634121,"model":"deepseek-r1:70b","choices":[{"index":0,"delta":{"role":null,"content":"*****","tool_calls":null},"logprobs":null,"finish_reason":"","matched_stop":null}],"usage":null}"#;
    let c = tolerated(sglang);
    assert_eq!(c.content.as_deref(), Some("*****"));
    assert_eq!(c.finish_reason, None);
}

/// LiteLLM's `usage: {}` on every chunk is no usage.
#[test]
fn usage_without_counts() {
    let litellm = r#"{"id": "chatcmpl-ae1505bf", "choices": [{"finish_reason": null, "index": 0, "delta": {"content": "aped", "role": null}}], "created": 1706042011, "model": "berri-benchmarking-Llama-2-70b-chat-hf-4", "object": "chat.completion.chunk", "system_fingerprint": null, "usage": {}}"#;
    let c = tolerated(litellm);
    assert_eq!(c.content.as_deref(), Some("aped"));
    assert!(c.usage.is_none());
}

/// What no tolerance covers is a fault, with its kind: not JSON, an error object (also
/// vLLM's numeric `code` and Ollama's bare string), or JSON that is no chunk.
#[test]
fn chat_faults() {
    assert!(
        matches!(parse_chat("<html>502</html>"), Err(ChatFault::NotJson(e)) if e.starts_with("not JSON"))
    );
    let vllm = r#"{"error":{"message":"max_tokens is too large","type":"BadRequestError","param":null,"code":400}}"#;
    assert!(
        matches!(parse_chat(vllm), Err(ChatFault::Stream(e)) if e.contains("too large") && e.contains("\"400\""))
    );
    let ollama = r#"{"error":"model \"llama3\" not found, try pulling it first"}"#;
    assert!(matches!(parse_chat(ollama), Err(ChatFault::Stream(e)) if e.contains("not found")));
    let openai = r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":"server_error"}}"#;
    assert_eq!(
        parse_chat(openai),
        Err(ChatFault::Stream(
            r#"overloaded (type "server_error", code "server_error")"#.into()
        ))
    );
    for json in [
        r#"{"status":"ok"}"#,
        r#"{"choices":"none"}"#,
        r#"{"choices":[{"index":0,"delta":{"content":5}}]}"#,
    ] {
        assert!(
            matches!(parse_chat(json), Err(ChatFault::Shape(_))),
            "{json}"
        );
    }
}

#[test]
fn history_shapes() {
    let m = ChatMessage::Assistant {
        content: String::new(),
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "end_call".into(),
            arguments: "{}".into(),
        }],
        interrupted: false,
    };
    let j = m.to_json();
    assert!(j["content"].is_null());
    assert_eq!(j["tool_calls"][0]["function"]["name"], "end_call");
    let cut = ChatMessage::Assistant {
        content: "Your order".into(),
        tool_calls: vec![],
        interrupted: true,
    };
    assert_eq!(
        cut.to_json()["content"],
        format!("Your order {INTERRUPTED_MARK}")
    );
}

/// The messages' JSON is what hark sent before it used async-openai's types.
#[test]
fn message_wire_form() {
    let call = ToolCall {
        id: "c1".into(),
        name: "end_call".into(),
        arguments: "{}".into(),
    };
    let cases = [
        (
            ChatMessage::System("Be brief.".into()),
            json!({"role": "system", "content": "Be brief."}),
        ),
        (
            ChatMessage::User("hi".into()),
            json!({"role": "user", "content": "hi"}),
        ),
        (
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![call.clone()],
                interrupted: false,
            },
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "end_call", "arguments": "{}"}}]}),
        ),
        (
            ChatMessage::Assistant {
                content: "Bye.".into(),
                tool_calls: vec![call],
                interrupted: false,
            },
            json!({"role": "assistant", "content": "Bye.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "end_call", "arguments": "{}"}}]}),
        ),
        (
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![],
                interrupted: true,
            },
            json!({"role": "assistant", "content": INTERRUPTED_MARK}),
        ),
        (
            ChatMessage::Tool {
                call_id: "c1".into(),
                content: "ok".into(),
            },
            json!({"role": "tool", "tool_call_id": "c1", "content": "ok"}),
        ),
    ];
    for (m, want) in cases {
        assert_eq!(m.to_json(), want);
    }
}

#[test]
fn requests() {
    let cfg = CascadeConfig::default();
    let r = speech_request(&cfg, "Hi.");
    assert_eq!(r.url, "https://api.openai.com/v1/audio/speech");
    assert_eq!(r.response, ResponseMode::Chunks);
    let HttpBody::Json(b) = &r.body else {
        panic!("json body")
    };
    assert_eq!(b["response_format"], "pcm");
    let r = chat_request(&cfg, &[ChatMessage::User("hi".into())]);
    let HttpBody::Json(b) = &r.body else {
        panic!("json body")
    };
    assert_eq!(b["stream"], true);
    assert_eq!(b["tools"].as_array().map(Vec::len), Some(2));
    assert_eq!(r.accept, accept_text());
    let r = transcription_request(&cfg, vec![1, 2]);
    assert_eq!(r.response, ResponseMode::Sse);
    assert_eq!(r.accept, accept_text());
    assert_eq!(speech_request(&cfg, "x").accept, accept_audio());
    let HttpBody::Multipart(p) = &r.body else {
        panic!("multipart")
    };
    assert!(p.iter().any(|p| p.name == "stream" && p.data == b"true"));
}

/// The request bodies are what hark sent before it used async-openai's types, key for key.
#[test]
fn request_wire_form() {
    let mut cfg = CascadeConfig::default();
    cfg.llm.temperature = Some(0.5);
    cfg.llm.max_tokens = Some(200);
    cfg.tts.instructions = Some("Warm.".into());
    cfg.tts.speed = Some(1.25);
    let HttpBody::Json(b) = chat_request(&cfg, &[ChatMessage::User("hi".into())]).body else {
        panic!("json body")
    };
    let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "max_tokens",
            "messages",
            "model",
            "stream",
            "stream_options",
            "temperature",
            "tools"
        ]
    );
    assert_eq!(b["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        (b["temperature"].as_f64(), b["max_tokens"].as_u64()),
        (Some(0.5), Some(200))
    );
    assert_eq!(
        b["tools"][1]["function"]["parameters"]["required"],
        json!(["number"])
    );
    assert_eq!(b["tools"][0]["type"], "function");
    assert!(b["tools"][0]["function"].get("strict").is_none());
    let HttpBody::Json(b) = speech_request(&cfg, "Hi.").body else {
        panic!("json body")
    };
    assert_eq!(
        b,
        json!({"model": cfg.tts.endpoint.model, "input": "Hi.", "voice": cfg.tts.voice,
               "response_format": "pcm", "instructions": "Warm.", "speed": 1.25})
    );
    cfg.tts.instructions = Some(String::new());
    cfg.tts.speed = None;
    let HttpBody::Json(b) = speech_request(&cfg, "Hi.").body else {
        panic!("json body")
    };
    assert_eq!(b.as_object().map(|o| o.len()), Some(4));
}
