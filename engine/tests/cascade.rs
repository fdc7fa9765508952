//! The cascade agent (STT → LLM → TTS) in virtual time: the multi-turn real-speech session is
//! replayed into a `Call` with a `CascadeAgent`, its output played on the virtual phone, and its
//! provider requests answered by a scripted OpenAI-compatible fake that speaks the wire formats
//! (SSE transcription events, chat completion chunks with tool-call fragments, usage and
//! `[DONE]`, chunked 24 kHz PCM) at exact latencies, with injected faults. No sockets: timings
//! are exact, so the latency reports must equal the fake's latencies.

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::{Pending, Provider, TestCall, arrival_times, load, ms, segments};
use hark_engine::agent::{
    AgentReport, FaultKind, HttpBody, HttpRequest, OpenSpec, PeerId, ProviderCommand,
    ProviderEvent, ProviderFault, ProviderMessage, Role, Stage,
};
use hark_engine::agents::cascade::{CascadeAgent, CascadeConfig, Endpoint};
use hark_engine::agents::context::ContextConfig;
use hark_engine::agents::http_tools::{HttpTool, HttpTools, ToolSchema};
use hark_engine::call::CloseReason;
use hark_engine::operator::Secret;
use hark_engine::{CallConfig, Event};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Stt,
    Llm,
    Tts,
    /// The operator's backend (an HTTP tool).
    Tool,
}

/// The operator's double: per tool request body, its delay (ms) and answer.
type Operator = dyn FnMut(&Value) -> (u64, ToolReply);

/// How the operator's double answers a tool call.
#[derive(Debug, Clone)]
enum ToolReply {
    /// 200 with this JSON.
    Json(Value),
    /// This status with a JSON error body.
    Status(u16),
    /// No answer: the tool's timeout must fire.
    Hang,
    /// 200 with a body that is not JSON.
    NotJson,
}

/// An injected fault, for one request.
#[derive(Debug, Clone)]
enum Fault {
    /// Non-2xx after 50 ms.
    Status(u16, Option<u64>),
    /// No answer at all: the agent's own timeout must fire.
    Hang,
    /// 200, then `{"error":…}` inside the stream.
    StreamError,
    /// 200, the start of the answer, then the connection breaks.
    Dropped,
    /// TTS: 200, 100 ms of audio, then the connection breaks.
    DroppedAfterAudio,
    /// The connection is refused.
    Connect,
    /// 200 and an empty body.
    Empty,
    /// 200, the first `n` messages of the normal answer (SSE events, audio chunks), then
    /// nothing: the connection stays open.
    StallAfter(usize),
    /// 200 with `Content-Type: text/html` (a proxy's error page), as the connector reports it
    /// when the request does not accept HTML.
    Html,
    /// 200 with an HTML body and no `Content-Type` (the connector passes it on).
    HtmlUnlabelled,
}

const HTML: &str = "<html>502 Bad Gateway</html>";

#[derive(Debug, Clone, Default)]
struct Reply {
    text: String,
    tools: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy)]
struct Latencies {
    stt: u64,
    ttft: u64,
    token: u64,
    ttfb: u64,
    /// Audio per character of TTS input, ms.
    ms_per_char: u64,
}

const LAT: Latencies = Latencies {
    stt: 150,
    ttft: 300,
    token: 30,
    ttfb: 150,
    ms_per_char: 60,
};

struct Req {
    at: Instant,
    peer: PeerId,
    kind: Kind,
    /// JSON body (LLM, TTS) or the multipart fields as JSON (STT, without the file).
    body: Value,
}

/// The scripted OpenAI-compatible fake.
struct Fake {
    lat: Latencies,
    /// Per LLM request (by index), a TTFT overriding `lat.ttft`.
    ttft_by_request: HashMap<usize, u64>,
    stt_texts: VecDeque<String>,
    replies: Box<dyn FnMut(&str) -> Reply>,
    faults: HashMap<Kind, VecDeque<Option<Fault>>>,
    /// Every TTS request fails with this status.
    tts_down: Option<u16>,
    /// From this TTS request on (counted as `faults` counts them), every one gets the fault.
    tts_always: Option<(usize, Fault)>,
    /// TTS of this text (the filler phrase) never takes a fault from `faults`, so their
    /// indexes keep counting the greeting, the fallback and the answer's sentences.
    filler_text: String,
    /// The fault for rendering the filler phrase.
    filler_fault: Option<Fault>,
    tts_index: usize,
    requests: Vec<Req>,
    closes: Vec<(Instant, PeerId)>,
    /// The operator's backend: per tool request body, its delay (ms) and answer.
    operator: Box<Operator>,
    /// Whether each tool request was signed.
    tool_signed: Vec<bool>,
}

fn chunk(content: Option<&str>, tools: Option<Value>, finish: Option<&str>) -> String {
    let mut delta = json!({});
    if let Some(c) = content {
        delta["content"] = json!(c);
    }
    if let Some(t) = tools {
        delta["tool_calls"] = t;
    }
    json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
           "model": "gpt-4o-mini", "system_fingerprint": "fp_1", "usage": null,
           "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    .to_string()
}

/// Splits text into word tokens, each keeping its leading space (as models stream).
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        out.push(if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        });
    }
    out
}

fn pcm_bytes(chars: usize, ms_per_char: u64) -> Vec<u8> {
    let n = 24 * (chars as u64 * ms_per_char + 100) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / 24_000.0;
            let env = (t * 5.0 * std::f64::consts::PI).sin().abs();
            ((t * 220.0 * 2.0 * std::f64::consts::PI).sin() * 8000.0 * env) as i16
        })
        .flat_map(|x: i16| x.to_le_bytes())
        .collect()
}

impl Fake {
    fn new(stt_texts: Vec<String>, replies: impl FnMut(&str) -> Reply + 'static) -> Self {
        Fake {
            lat: LAT,
            ttft_by_request: HashMap::new(),
            stt_texts: stt_texts.into(),
            replies: Box::new(replies),
            faults: HashMap::new(),
            tts_down: None,
            tts_always: None,
            filler_text: CascadeConfig::default().filler_text.unwrap_or_default(),
            tts_index: 0,
            filler_fault: None,
            requests: Vec::new(),
            closes: Vec::new(),
            operator: Box::new(|b| panic!("unexpected tool call {b}")),
            tool_signed: Vec::new(),
        }
    }

    fn operator(mut self, f: impl FnMut(&Value) -> (u64, ToolReply) + 'static) -> Self {
        self.operator = Box::new(f);
        self
    }

    fn fault(mut self, kind: Kind, faults: Vec<Option<Fault>>) -> Self {
        self.faults.insert(kind, faults.into());
        self
    }

    fn requests(&self, kind: Kind) -> Vec<&Req> {
        self.requests.iter().filter(|r| r.kind == kind).collect()
    }

    /// The events answering request `req` on `peer`, with their times.
    fn respond(
        &mut self,
        now: Instant,
        peer: PeerId,
        req: HttpRequest,
    ) -> Vec<(Instant, ProviderEvent)> {
        let kind = if req.url.ends_with("/v1/audio/transcriptions") {
            Kind::Stt
        } else if req.url.ends_with("/v1/chat/completions") {
            Kind::Llm
        } else if req.url.ends_with("/v1/audio/speech") {
            Kind::Tts
        } else if req.url.starts_with("http://operator.test/") {
            Kind::Tool
        } else {
            panic!("unexpected URL {}", req.url)
        };
        assert_eq!(req.method, "POST");
        let body = match &req.body {
            HttpBody::Json(v) => v.clone(),
            HttpBody::Multipart(parts) => {
                let mut m = serde_json::Map::new();
                for p in parts {
                    if p.name == "file" {
                        assert_eq!(p.filename.as_deref(), Some("audio.wav"));
                        assert_eq!(&p.data[..4], b"RIFF");
                        // 16 kHz mono 16-bit.
                        assert_eq!(
                            u32::from_le_bytes([p.data[24], p.data[25], p.data[26], p.data[27]]),
                            16_000
                        );
                        m.insert("file_bytes".into(), json!(p.data.len()));
                    } else {
                        m.insert(p.name.clone(), json!(String::from_utf8_lossy(&p.data)));
                    }
                }
                Value::Object(m)
            }
            other => panic!("unexpected body {other:?}"),
        };
        let llm_index = self.requests(Kind::Llm).len();
        self.requests.push(Req {
            at: now,
            peer,
            kind,
            body: body.clone(),
        });
        let mut ev: Vec<(u64, ProviderEvent)> = Vec::new();
        let msg = |t: &str| ProviderEvent::Message {
            peer,
            message: ProviderMessage::Text(t.to_string()),
        };
        let opened = ProviderEvent::Opened {
            peer,
            status: Some(200),
        };
        // What the connector is told to accept.
        let accept: Vec<&str> = req.accept.iter().map(String::as_str).collect();
        match kind {
            Kind::Tts => assert_eq!(accept, ["audio/*", "application/octet-stream"]),
            Kind::Tool => {
                assert_eq!(accept, ["application/json", "application/*+json"]);
                self.tool_signed.push(req.sign.is_some());
                let (delay, reply) = (self.operator)(&body);
                let mut ev = vec![(delay, opened)];
                let status = |code: u16| ProviderFault::status(code, r#"{"error":"boom"}"#, None);
                match reply {
                    ToolReply::Json(v) => ev.push((delay, msg(&v.to_string()))),
                    ToolReply::Status(code) => {
                        ev = vec![(
                            delay,
                            ProviderEvent::Failed {
                                peer,
                                fault: status(code),
                            },
                        )]
                    }
                    ToolReply::Hang => ev.clear(),
                    ToolReply::NotJson => ev.push((delay, msg("<html>ok</html>"))),
                }
                if ev.len() == 2 {
                    ev.push((delay, ProviderEvent::Closed { peer }));
                }
                return ev.into_iter().map(|(d, e)| (now + ms(d), e)).collect();
            }
            _ => assert_eq!(accept, ["text/event-stream", "application/json"]),
        }
        let is_filler = kind == Kind::Tts && body["input"] == self.filler_text.as_str();
        let fault = if kind == Kind::Tts && self.tts_down.is_some() {
            Some(Fault::Status(self.tts_down.unwrap_or(503), None))
        } else if is_filler {
            self.filler_fault.clone()
        } else {
            let ix = if kind == Kind::Tts {
                self.tts_index += 1;
                self.tts_index - 1
            } else {
                usize::MAX
            };
            let queued = self
                .faults
                .get_mut(&kind)
                .and_then(VecDeque::pop_front)
                .flatten();
            match &self.tts_always {
                Some((from, f)) if kind == Kind::Tts && ix >= *from => Some(f.clone()),
                _ => queued,
            }
        };
        let stall_after = match &fault {
            Some(Fault::StallAfter(n)) => Some(*n),
            _ => None,
        };
        let fault = fault.filter(|_| stall_after.is_none());
        if let Some(f) = fault {
            let failed = |fault: ProviderFault| ProviderEvent::Failed { peer, fault };
            let fail = |k: FaultKind, detail: &str| failed(ProviderFault::new(k, detail));
            match f {
                Fault::Status(code, ra) => ev.push((
                    50,
                    failed(ProviderFault::status(
                        code,
                        r#"{"error":{"message":"injected","type":"x","param":null,"code":null}}"#,
                        ra,
                    )),
                )),
                Fault::Hang => {}
                Fault::StreamError => {
                    ev.push((100, opened));
                    let e = r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#;
                    ev.push((100, msg(e)));
                    ev.push((101, ProviderEvent::Closed { peer }));
                }
                Fault::Dropped => {
                    ev.push((100, opened));
                    if kind == Kind::Llm {
                        ev.push((100, msg(&chunk(Some(""), None, None))));
                    }
                    ev.push((120, fail(FaultKind::Dropped, "connection reset by peer")));
                }
                Fault::DroppedAfterAudio => {
                    let t = self.lat.ttfb;
                    ev.push((t, opened));
                    ev.push((
                        t,
                        ProviderEvent::Message {
                            peer,
                            message: ProviderMessage::Binary(pcm_bytes(1, 0)[..4800].to_vec()),
                        },
                    ));
                    ev.push((t + 30, fail(FaultKind::Dropped, "connection reset by peer")));
                }
                Fault::Connect => ev.push((1, fail(FaultKind::Connect, "connection refused"))),
                Fault::Empty => {
                    ev.push((50, opened));
                    ev.push((50, ProviderEvent::Closed { peer }));
                }
                Fault::Html => {
                    // The connector's check (`io::http`): HTML is not accepted.
                    assert!(!req.accept.iter().any(|a| a == "text/html" || a == "text/*"));
                    ev.push((
                        50,
                        fail(
                            FaultKind::ContentType,
                            &format!(
                                "200 answered with \"text/html; charset=utf-8\", expected {}: {HTML}",
                                req.accept.join(" or ")
                            ),
                        ),
                    ));
                }
                Fault::HtmlUnlabelled => {
                    ev.push((50, opened));
                    ev.push((50, msg(HTML)));
                    ev.push((50, ProviderEvent::Closed { peer }));
                }
                Fault::StallAfter(_) => unreachable!("answered normally, then cut below"),
            }
        } else {
            match kind {
                Kind::Stt => {
                    let text = self.stt_texts.pop_front().unwrap_or_default();
                    if stall_after.is_some() {
                        // Never finished: the retry transcribes the same words.
                        self.stt_texts.push_front(text.clone());
                    }
                    let t = self.lat.stt;
                    if body["stream"] == "true" {
                        ev.push((t / 2, opened));
                        for w in tokens(&text) {
                            ev.push((
                                t / 2,
                                msg(&json!({"type": "transcript.text.delta", "delta": w})
                                    .to_string()),
                            ));
                        }
                        ev.push((t, msg(&json!({"type": "transcript.text.done", "text": text,
                            "usage": {"type": "tokens", "input_tokens": 14, "output_tokens": 5, "total_tokens": 19}}).to_string())));
                    } else {
                        ev.push((t, opened));
                        ev.push((t, msg(&json!({"text": text}).to_string())));
                    }
                    ev.push((t, ProviderEvent::Closed { peer }));
                }
                Kind::Llm => {
                    let user = body["messages"]
                        .as_array()
                        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
                        .and_then(|m| m["content"].as_str())
                        .unwrap_or("")
                        .to_string();
                    let reply = (self.replies)(&user);
                    let reply = if body["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .is_some_and(|m| m["role"] == "tool")
                    {
                        // After a tool result: the script's follow-up (see `tools`).
                        (self.replies)(&format!(
                            "TOOL:{}",
                            body["messages"]
                                .as_array()
                                .and_then(|m| m.last())
                                .map(|m| m["content"].to_string())
                                .unwrap_or_default()
                        ))
                    } else {
                        reply
                    };
                    let mut t = *self
                        .ttft_by_request
                        .get(&llm_index)
                        .unwrap_or(&self.lat.ttft);
                    ev.push((t, opened));
                    ev.push((t, msg(&json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}], "usage": null}).to_string())));
                    if !reply.text.is_empty() {
                        for w in tokens(&reply.text) {
                            ev.push((t, msg(&chunk(Some(&w), None, None))));
                            t += self.lat.token;
                        }
                    }
                    for (i, (name, args)) in reply.tools.iter().enumerate() {
                        let first = json!([{"index": i, "id": format!("call_{i}x"), "type": "function", "function": {"name": name, "arguments": ""}}]);
                        ev.push((t, msg(&chunk(None, Some(first), None))));
                        let mid = args.len() / 2;
                        for piece in [&args[..mid], &args[mid..]] {
                            t += self.lat.token;
                            ev.push((
                                t,
                                msg(&chunk(
                                    None,
                                    Some(json!([{"index": i, "function": {"arguments": piece}}])),
                                    None,
                                )),
                            ));
                        }
                    }
                    let finish = if reply.tools.is_empty() {
                        "stop"
                    } else {
                        "tool_calls"
                    };
                    ev.push((t, msg(&chunk(None, None, Some(finish)))));
                    ev.push((t, msg(&json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
                        "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}}).to_string())));
                    ev.push((t, msg("[DONE]")));
                    ev.push((t, ProviderEvent::Closed { peer }));
                }
                Kind::Tool => unreachable!("answered above"),
                Kind::Tts => {
                    assert_eq!(body["response_format"], "pcm");
                    let input = body["input"].as_str().unwrap_or("").to_string();
                    let bytes = pcm_bytes(input.chars().count(), self.lat.ms_per_char);
                    let mut t = self.lat.ttfb;
                    ev.push((t, opened));
                    // 100 ms of audio every 25 ms (4x real time), split at odd offsets.
                    for c in bytes.chunks(4801) {
                        ev.push((
                            t,
                            ProviderEvent::Message {
                                peer,
                                message: ProviderMessage::Binary(c.to_vec()),
                            },
                        ));
                        t += 25;
                    }
                    ev.push((t, ProviderEvent::Closed { peer }));
                }
            }
        }
        if let Some(n) = stall_after {
            // The first `n` messages, then nothing more (not even the end of the body).
            let mut seen = 0;
            ev.retain(|(_, e)| match e {
                ProviderEvent::Opened { .. } => true,
                ProviderEvent::Message { .. } => {
                    seen += 1;
                    seen <= n
                }
                _ => false,
            });
        }
        ev.into_iter().map(|(d, e)| (now + ms(d), e)).collect()
    }
}

impl Provider for Fake {
    fn command(&mut self, now: Instant, cmd: &ProviderCommand, out: &mut Pending) {
        match cmd {
            ProviderCommand::Open { peer, spec } => {
                let OpenSpec::Http(req) = spec else {
                    panic!("cascade opens only HTTP pipes")
                };
                out.extend(self.respond(now, *peer, req.clone()));
            }
            ProviderCommand::Close { peer } => {
                self.closes.push((now, *peer));
                out.cancel(*peer);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

type Run = TestCall<Fake>;

impl TestCall<Fake> {
    fn transcripts(&self, role: Role) -> Vec<(String, bool)> {
        self.reports()
            .into_iter()
            .filter_map(|r| match r {
                AgentReport::Transcript {
                    role: r,
                    text,
                    interrupted,
                } if r == role => Some((text, interrupted)),
                _ => None,
            })
            .collect()
    }
    fn turn_ends(&self) -> Vec<Instant> {
        self.pick(|t, e| matches!(e, Event::UserTurnEnded { .. }).then_some(t))
    }
    fn audio_starts(&self) -> Vec<(Instant, Option<Duration>)> {
        self.pick(|_, e| match e {
            Event::AgentAudioStarted {
                at, since_user_end, ..
            } => Some((*at, *since_user_end)),
            _ => None,
        })
    }
    /// Every caller turn is answered with audio within `within` of its end (never dead air).
    fn assert_no_dead_air(&self, within: Duration) {
        for end in self.turn_ends() {
            let answered = self
                .audio_starts()
                .iter()
                .any(|(t, _)| *t >= end && *t <= end + within);
            assert!(
                answered,
                "no agent audio within {within:?} of the turn that ended at {} ms",
                self.at(end)
            );
        }
    }
}

fn config() -> CascadeConfig {
    let ep = |m: &str| Endpoint::new("http://openai.test", Some("sk-test".into()), m);
    let mut c = CascadeConfig::default();
    c.stt.endpoint = ep("gpt-4o-mini-transcribe");
    c.llm.endpoint = ep("gpt-4o-mini");
    c.tts.endpoint = ep("gpt-4o-mini-tts");
    c.greeting = Some("Hello!".into());
    c.stt.timeout_ms = 1_000;
    c.llm.first_token_timeout_ms = 1_000;
    c.tts.first_byte_timeout_ms = 1_000;
    c.stt.stall_ms = 2_000;
    c.llm.stall_ms = 2_000;
    c.tts.stall_ms = 2_000;
    c
}

/// Replays the multi-turn session (cut at `until_ms` of media, if given) into a call with the
/// cascade agent.
fn run(cfg: CascadeConfig, fake: Fake, until_ms: Option<u64>) -> Run {
    run_with(cfg, fake, until_ms, &[])
}

/// As [`run`], with extra `customParameters` in the `start` message.
fn run_with(cfg: CascadeConfig, fake: Fake, until_ms: Option<u64>, params: &[(&str, &str)]) -> Run {
    run_call(CallConfig::default(), cfg, fake, until_ms, params)
}

/// As [`run_with`], with the call's own configuration.
fn run_call(
    call: CallConfig,
    cfg: CascadeConfig,
    fake: Fake,
    until_ms: Option<u64>,
    params: &[(&str, &str)],
) -> Run {
    let s = load("multi-turn");
    let agent = CascadeAgent::new(cfg).unwrap();
    let mut r = TestCall::with_provider(call, Box::new(agent), &s.stream_sid, Instant::now(), fake);
    let mut lines = s.lines.clone();
    for l in lines.iter_mut() {
        let mut v: Value = serde_json::from_str(l).unwrap();
        if v["event"] == "start" {
            for (k, val) in params {
                v["start"]["customParameters"][*k] = json!(val);
            }
            *l = v.to_string();
        }
    }
    let mut timed: Vec<(Instant, String)> =
        arrival_times(&lines, r.t0).into_iter().zip(lines).collect();
    if let Some(u) = until_ms {
        timed.retain(|(t, _)| *t <= r.t0 + ms(u));
    }
    r.replay(&timed);
    assert!(
        r.phone.stats().errors.is_empty(),
        "{:?}",
        r.phone.stats().errors
    );
    assert_eq!(r.call.stats().malformed_total(), 0, "{:?}", r.call.stats());
    r
}

fn segment_texts() -> Vec<String> {
    let s = load("multi-turn");
    s.ann["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["text"].as_str().unwrap().to_string())
        .collect()
}

const REPLY_A: &str = "I'm sorry to hear that. Let me check the status of your order right away. \
It looks like it left our warehouse on Monday and is now with the local courier.";
const REPLY_B: &str = "Could you give me your order number, please?";
const REPLY_C: &str = "Thank you. I will look into it.";
const REPLY_D: &str = "You're welcome, goodbye!";

fn script(user: &str) -> Reply {
    let r = |t: &str| Reply {
        text: t.into(),
        tools: vec![],
    };
    if user.starts_with("Hi, I'm calling") {
        r(REPLY_A)
    } else if user.starts_with("And so") {
        r(REPLY_B)
    } else if user.starts_with("ask what") {
        r(REPLY_C)
    } else if user.starts_with("Okay") {
        Reply {
            text: REPLY_D.into(),
            tools: vec![("end_call", r#"{"reason":"the caller said goodbye"}"#.into())],
        }
    } else {
        r("I see.")
    }
}

fn messages(req: &Req) -> Vec<Value> {
    req.body["messages"].as_array().cloned().unwrap_or_default()
}

#[test]
fn multi_turn_streams_sentences_cuts_history_on_barge_in_and_ends_the_call() {
    let fake = Fake::new(segment_texts(), script);
    // Barge-ins confirmed at once (no hold): in-flight work is cancelled with the `clear`.
    // The hold is tested in `barge_in_hold.rs`.
    let mut call = CallConfig::default();
    call.turn.resume_after_ms = 0;
    let r = run_call(call, config(), fake, None, &[]);
    let segs = segments(&load("multi-turn"));

    // Greeting: its first audio reaches the playout one TTS first-byte after the start.
    assert_eq!(r.latencies(Stage::Greeting), vec![LAT.ttfb]);
    // Every stage latency equals the fake's, exactly (virtual time).
    let stt = r.latencies(Stage::Stt);
    assert_eq!(stt.len(), 4, "{stt:?}");
    assert!(stt.iter().all(|&x| x == LAT.stt), "{stt:?}");
    assert!(
        r.latencies(Stage::LlmFirstToken)
            .iter()
            .all(|&x| x == LAT.ttft)
    );
    assert!(
        r.latencies(Stage::TtsFirstByte)
            .iter()
            .all(|&x| x == LAT.ttfb)
    );
    assert_eq!(r.latencies(Stage::LlmFirstToken).len(), 4);
    assert_eq!(r.latencies(Stage::TtsFirstByte).len(), 4);

    // The caller's words, as transcribed.
    let user: Vec<String> = r.transcripts(Role::User).into_iter().map(|t| t.0).collect();
    assert_eq!(user, segment_texts());

    // Turn A: the first sentence plays before the LLM has finished streaming.
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 4);
    let a_llm_done = llm[0].at + ms(LAT.ttft + LAT.token * tokens(REPLY_A).len() as u64);
    let starts = r.audio_starts();
    let a_audio = starts
        .iter()
        .find(|(t, s)| *t > llm[0].at && s.is_some())
        .expect("turn A answered")
        .0;
    assert!(
        a_audio < a_llm_done,
        "first audio at {} ms, LLM done at {} ms",
        r.at(a_audio),
        r.at(a_llm_done)
    );
    // Voice-to-voice in the engine: endpointing (600 ms) + STT + TTFT + first sentence + TTFB.
    let v2v: Vec<u64> = starts
        .iter()
        .filter_map(|(_, s)| s.map(|d| d.as_millis() as u64))
        .collect();
    eprintln!("engine voice-to-voice per turn (ms): {v2v:?}");
    let first_sentence_tokens = tokens("I'm sorry to hear that.").len() as u64;
    // The first sentence is complete with its last token ("that."): n tokens after the first.
    let want_a = 600 + LAT.stt + LAT.ttft + LAT.token * (first_sentence_tokens - 1) + LAT.ttfb;
    assert!(
        v2v[0].abs_diff(want_a) <= 40,
        "turn A voice-to-voice {} ms, expected about {want_a}",
        v2v[0]
    );

    // TTS requests go out in sentence order.
    let tts: Vec<String> = r
        .provider
        .requests(Kind::Tts)
        .iter()
        .map(|q| q.body["input"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tts[0], "Hello!");
    assert!(tts.contains(&"I'm sorry to hear that.".to_string()));
    let c0 = tts.iter().position(|t| t == "Thank you.").unwrap();
    assert_eq!(tts[c0 + 1], "I will look into it.");

    // Turn B barges in on answer A: the in-flight LLM and TTS requests are closed.
    assert_eq!(r.clears().len(), 1, "one barge-in");
    let bi = r
        .events
        .iter()
        .find_map(|(_, e)| match e {
            Event::BargeIn(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    assert!(bi.speech_start_ms.abs_diff(segs[1].0) <= 80);
    let closed_at_barge: Vec<PeerId> = r
        .provider
        .closes
        .iter()
        .filter(|(t, _)| *t == r.clears()[0])
        .map(|(_, p)| *p)
        .collect();
    assert!(closed_at_barge.contains(&llm[0].peer), "LLM A cancelled");
    assert!(
        r.provider
            .requests(Kind::Tts)
            .iter()
            .any(|q| closed_at_barge.contains(&q.peer)),
        "TTS of answer A cancelled"
    );

    // The history sent with turn B keeps only what the caller heard of answer A.
    let m = messages(llm[1]);
    let roles: Vec<&str> = m.iter().map(|x| x["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "assistant", "user", "assistant", "user"]);
    assert_eq!(m[1]["content"], "Hello!");
    assert_eq!(m[2]["content"], segment_texts()[0]);
    let cut = m[3]["content"].as_str().unwrap();
    eprintln!(
        "heard of answer A: {cut:?} (playout estimate {:?})",
        bi.interrupted.heard_text
    );
    let heard = cut
        .strip_suffix("[interrupted by the caller]")
        .expect("marked as interrupted")
        .trim();
    assert!(REPLY_A.starts_with(heard), "{heard:?}");
    assert!(
        heard.len() < "I'm sorry to hear that. Let me".len(),
        "{heard:?}"
    );
    assert!(!cut.contains("Monday"));
    let agent_heard = r.transcripts(Role::Agent);
    assert!(
        agent_heard.contains(&(heard.to_string(), true)),
        "{agent_heard:?}"
    );

    // Turn C's request carries the whole of answer B, not interrupted.
    let m = messages(llm[2]);
    assert_eq!(m[5]["content"], REPLY_B);
    assert_eq!(m[6]["content"], segment_texts()[2]);

    // Turn D: the model says goodbye and calls end_call; the call hangs up after the audio.
    assert!(r.timed_reports().iter().any(|(_, x)| matches!(x,
        AgentReport::ToolCall { name, arguments } if name == "end_call" && arguments.contains("goodbye"))));
    match &r.closed() {
        Some(CloseReason::Hangup(reason)) => assert!(reason.contains("end_call"), "{reason}"),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    let heard_bursts = r.phone.bursts().len();
    assert_eq!(
        heard_bursts,
        5,
        "greeting + 4 answers: {:?}",
        r.phone.bursts()
    );
    let last = r.phone.bursts().last().unwrap();
    assert!(!last.interrupted && last.audio_ms >= (REPLY_D.len() as u64 * LAT.ms_per_char));
    assert!(r.faults().is_empty(), "{:?}", r.faults());
    r.assert_no_dead_air(ms(1_500));
}

#[test]
fn a_turn_while_thinking_restarts_with_both_texts() {
    // Answer A is slow to start (3.5 s to the first token): the caller speaks again before it.
    let mut fake = Fake::new(segment_texts(), script);
    fake.ttft_by_request.insert(0, 3_500);
    let mut cfg = config();
    cfg.llm.first_token_timeout_ms = 5_000;
    let r = run(cfg, fake, Some(12_000));
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 2, "one cancelled request, one answer");
    let ends = r.turn_ends();
    assert_eq!(ends.len(), 2);
    // The first request was cancelled when the second turn ended.
    assert!(
        r.provider
            .closes
            .iter()
            .any(|(t, p)| *p == llm[0].peer && *t == ends[1])
    );
    let m = messages(llm[1]);
    let user: Vec<&Value> = m.iter().filter(|x| x["role"] == "user").collect();
    assert_eq!(user.len(), 1, "{m:?}");
    let texts = segment_texts();
    assert_eq!(user[0]["content"], format!("{} {}", texts[0], texts[1]));
    // No barge-in (nothing played), one answer.
    assert!(r.clears().is_empty());
    let answers: Vec<_> = r
        .audio_starts()
        .into_iter()
        .filter(|(_, s)| s.is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].0 > ends[1]);
}

#[test]
fn transfer_with_a_bad_number_gets_an_error_result_and_a_second_round() {
    let fake = Fake::new(segment_texts(), |user: &str| {
        if user.starts_with("Hi, I'm calling") {
            Reply {
                text: String::new(),
                tools: vec![("transfer_call", r#"{"number":"12345"}"#.into())],
            }
        } else if user.starts_with("TOOL:") {
            Reply {
                text: "Connecting you now.".into(),
                tools: vec![("transfer_call", r#"{"number":"+14155550100"}"#.into())],
            }
        } else {
            script(user)
        }
    });
    let r = run(config(), fake, Some(6_600));
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 2);
    let m = messages(llm[1]);
    let n = m.len();
    // …, user, assistant with tool_calls (no text), tool result.
    assert_eq!(m[n - 3]["role"], "user");
    let a = &m[n - 2];
    assert_eq!(a["role"], "assistant");
    assert!(a["content"].is_null());
    let call = &a["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "transfer_call");
    assert_eq!(call["function"]["arguments"], r#"{"number":"12345"}"#);
    let t = &m[n - 1];
    assert_eq!(t["role"], "tool");
    assert_eq!(t["tool_call_id"], call["id"]);
    assert!(t["content"].as_str().unwrap().starts_with("error"));
    // Tools were offered.
    let names: Vec<&str> = llm[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["end_call", "transfer_call"]);
    // The second round said its sentence, then asked for the transfer.
    let transfer_at = r
        .events
        .iter()
        .find_map(|(t, e)| match e {
            Event::TransferRequested { to } if to == "+14155550100" => Some(*t),
            _ => None,
        })
        .expect("transfer requested");
    let answered = r
        .audio_starts()
        .into_iter()
        .find(|(_, s)| s.is_some())
        .unwrap()
        .0;
    assert!(transfer_at >= answered);
    let tts: Vec<&str> = r
        .provider
        .requests(Kind::Tts)
        .iter()
        .map(|q| q.body["input"].as_str().unwrap())
        .collect();
    assert!(tts.contains(&"Connecting you now."));
    assert_eq!(
        r.timed_reports()
            .iter()
            .filter(|(_, x)| matches!(x, AgentReport::ToolCall { .. }))
            .count(),
        2
    );
}

#[test]
fn end_call_without_words_says_the_configured_goodbye() {
    let fake = Fake::new(segment_texts(), |user: &str| {
        if user.starts_with("Hi, I'm calling") {
            Reply {
                text: String::new(),
                tools: vec![("end_call", "{}".into())],
            }
        } else {
            script(user)
        }
    });
    let r = run(config(), fake, Some(6_600));
    let tts: Vec<&str> = r
        .provider
        .requests(Kind::Tts)
        .iter()
        .map(|q| q.body["input"].as_str().unwrap())
        .collect();
    assert!(tts.contains(&"Goodbye!"), "{tts:?}");
    assert!(matches!(r.closed(), Some(CloseReason::Hangup(_))));
    assert!(
        r.transcripts(Role::Agent)
            .contains(&("Goodbye!".to_string(), false))
    );
}

/// One fault scenario on the first caller turn: what is reported, how many requests of the
/// faulty kind go out, and whether the answer or the fallback phrase is heard.
struct Case {
    name: &'static str,
    kind: Kind,
    faults: Vec<Option<Fault>>,
    tts_down: Option<u16>,
    want_faults: Vec<(&'static str, &'static str)>,
    want_requests: usize,
    fallback: bool,
    /// Heard by the caller (when not the fallback).
    heard: &'static str,
}

fn case(
    name: &'static str,
    kind: Kind,
    faults: Vec<Option<Fault>>,
    want_faults: Vec<(&'static str, &'static str)>,
    want_requests: usize,
    fallback: bool,
) -> Case {
    Case {
        name,
        kind,
        faults,
        tts_down: None,
        want_faults,
        want_requests,
        fallback,
        heard: "I'm sorry to hear that.",
    }
}

#[test]
fn every_fault_ends_in_a_retry_or_the_fallback_never_dead_air() {
    use Fault::*;
    use Kind::*;
    let s = |f: Fault| Some(f);
    let cases = vec![
        case(
            "llm 500 once",
            Llm,
            vec![s(Status(500, None))],
            vec![("llm", "http_5xx")],
            2,
            false,
        ),
        case(
            "llm 429 with retry-after",
            Llm,
            vec![s(Status(429, Some(300)))],
            vec![("llm", "http_429")],
            2,
            false,
        ),
        case(
            "llm 429 past the budget",
            Llm,
            vec![s(Status(429, Some(10_000)))],
            vec![("llm", "http_429")],
            1,
            true,
        ),
        case(
            "llm 401",
            Llm,
            vec![s(Status(401, None))],
            vec![("llm", "http_401")],
            1,
            true,
        ),
        case(
            "llm hangs",
            Llm,
            vec![s(Hang)],
            vec![("llm", "timeout")],
            2,
            false,
        ),
        case(
            "llm error inside 200",
            Llm,
            vec![s(StreamError)],
            vec![("llm", "stream_error")],
            2,
            false,
        ),
        case(
            "llm connection drops",
            Llm,
            vec![s(Dropped)],
            vec![("llm", "dropped")],
            2,
            false,
        ),
        case(
            "llm refused",
            Llm,
            vec![s(Connect)],
            vec![("llm", "connect")],
            2,
            false,
        ),
        case(
            "llm empty 200",
            Llm,
            vec![s(Empty)],
            vec![("llm", "dropped")],
            2,
            false,
        ),
        case(
            "llm 503 until the retries run out",
            Llm,
            vec![
                s(Status(503, None)),
                s(Status(503, None)),
                s(Status(503, None)),
            ],
            vec![
                ("llm", "http_5xx"),
                ("llm", "http_5xx"),
                ("llm", "http_5xx"),
            ],
            3,
            true,
        ),
        case(
            "stt 500 once",
            Stt,
            vec![s(Status(500, None))],
            vec![("stt", "http_5xx")],
            2,
            false,
        ),
        case(
            "stt hangs",
            Stt,
            vec![s(Hang)],
            vec![("stt", "timeout")],
            2,
            false,
        ),
        case(
            "stt error inside 200",
            Stt,
            vec![s(StreamError)],
            vec![("stt", "stream_error")],
            2,
            false,
        ),
        case(
            "stt 401",
            Stt,
            vec![s(Status(401, None))],
            vec![("stt", "http_401")],
            1,
            true,
        ),
        case(
            "tts 503 once on the answer",
            Tts,
            vec![None, None, s(Status(503, None))],
            vec![("tts", "http_5xx")],
            0,
            false,
        ),
        case(
            "tts drops on the answer",
            Tts,
            vec![None, None, s(Dropped)],
            vec![("tts", "dropped")],
            0,
            false,
        ),
        case(
            "tts hangs on the answer",
            Tts,
            vec![None, None, s(Hang)],
            vec![("tts", "timeout")],
            0,
            false,
        ),
        Case {
            heard: "Let me check the status of your order right away.",
            ..case(
                "tts drops after audio played: cut, not repeated",
                Tts,
                vec![None, None, s(DroppedAfterAudio)],
                vec![("tts", "dropped")],
                0,
                false,
            )
        },
    ];
    for c in cases {
        let fake = Fake::new(segment_texts(), script).fault(c.kind, c.faults.clone());
        let mut fake = fake;
        fake.tts_down = c.tts_down;
        let r = run(config(), fake, Some(6_600));
        let got: Vec<(String, String)> = r.faults();
        let want: Vec<(String, String)> = c
            .want_faults
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want, "{}: faults", c.name);
        if c.want_requests > 0 {
            assert_eq!(
                r.provider.requests(c.kind).len(),
                c.want_requests,
                "{}: requests",
                c.name
            );
        }
        let agent: Vec<(String, bool)> = r.transcripts(Role::Agent);
        let fallback_heard = agent
            .iter()
            .any(|(t, _)| t == &CascadeConfig::default().fallback_text);
        assert_eq!(
            fallback_heard, c.fallback,
            "{}: fallback heard {agent:?}",
            c.name
        );
        if !c.fallback {
            assert!(
                agent.iter().any(|(t, _)| t.contains(c.heard)),
                "{}: the answer was heard: {agent:?}",
                c.name
            );
        }
        if matches!(c.faults.last(), Some(Some(Fault::DroppedAfterAudio))) {
            let n = r
                .provider
                .requests(Kind::Tts)
                .iter()
                .filter(|q| q.body["input"] == "I'm sorry to hear that.")
                .count();
            assert_eq!(
                n, 1,
                "a sentence the caller started hearing is not synthesised again"
            );
        }
        r.assert_no_dead_air(ms(5_000));
        eprintln!(
            "{:<36} faults {:?} → {}",
            c.name,
            got,
            if c.fallback { "fallback" } else { "answered" }
        );
    }
}

#[test]
fn a_429_waits_for_its_retry_after() {
    let fake = Fake::new(segment_texts(), script)
        .fault(Kind::Llm, vec![Some(Fault::Status(429, Some(300)))]);
    let r = run(config(), fake, Some(6_600));
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 2);
    // Failed 50 ms after the request, retried 300 ms after that.
    assert_eq!(llm[1].at - llm[0].at, ms(50 + 300));
    // Backoff without Retry-After: 150 ms.
    let fake =
        Fake::new(segment_texts(), script).fault(Kind::Llm, vec![Some(Fault::Status(502, None))]);
    let r = run(config(), fake, Some(6_600));
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm[1].at - llm[0].at, ms(50 + 150));
}

#[test]
fn tts_down_from_the_start_plays_a_chime_not_silence() {
    let mut fake = Fake::new(segment_texts(), script);
    fake.tts_down = Some(401);
    let r = run(config(), fake, Some(6_600));
    // The greeting, the fallback rendering and the answer each failed once (401: no retry).
    let f = r.faults();
    assert!(
        f.iter().all(|(p, k)| p == "tts" && k == "http_401"),
        "{f:?}"
    );
    assert_eq!(f.len(), 3, "{f:?}");
    // Still, the caller heard something at the start and after the turn: the chime.
    let bursts = r.phone.bursts();
    assert_eq!(bursts.len(), 2, "{bursts:?}");
    assert!(bursts[0].start_ms < 200);
    assert!(
        bursts.iter().all(|b| (500..700).contains(&b.audio_ms)),
        "{bursts:?}"
    );
    r.assert_no_dead_air(ms(1_000));
}

#[test]
fn barge_in_on_the_greeting_keeps_only_its_heard_part() {
    let mut cfg = config();
    cfg.greeting = Some(
        "Hello and welcome to the order line. I can help you track a parcel or change a delivery."
            .into(),
    );
    let fake = Fake::new(segment_texts(), script);
    let r = run(cfg, fake, Some(6_600));
    assert_eq!(
        r.clears().len(),
        1,
        "the caller talks over the long greeting"
    );
    let llm = r.provider.requests(Kind::Llm);
    let m = messages(llm[0]);
    assert_eq!(m[1]["role"], "assistant");
    let c = m[1]["content"].as_str().unwrap();
    assert!(c.starts_with("Hello and"), "{c}");
    assert!(c.ends_with("[interrupted by the caller]"), "{c}");
    assert!(!c.contains("parcel"), "{c}");
    // The agent's transcript says the same.
    let heard = c.trim_end_matches("[interrupted by the caller]").trim();
    assert!(
        r.transcripts(Role::Agent)
            .contains(&(heard.to_string(), true))
    );
}

#[test]
fn system_prompt_and_greeting_from_twiml_parameters() {
    let fake = Fake::new(segment_texts(), script);
    let mut cfg = config();
    cfg.system_prompt = "You are Ada from Acme.".into();
    let r = run(cfg.clone(), fake, Some(6_600));
    let m = messages(r.provider.requests(Kind::Llm)[0]);
    assert_eq!(m[0]["role"], "system");
    assert_eq!(m[0]["content"], "You are Ada from Acme.");
    let stt = &r.provider.requests(Kind::Stt)[0].body;
    assert_eq!(stt["model"], "gpt-4o-mini-transcribe");
    assert_eq!(stt["stream"], "true");
    // 4.1 s of speech plus pre-roll, as a 16 kHz 16-bit WAV.
    assert!(stt["file_bytes"].as_u64().unwrap() > 44 + 32_000 * 4);

    // `<Parameter name="systemPrompt">` and `<Parameter name="greeting">` override them.
    let fake = Fake::new(segment_texts(), script);
    let r = run_with(
        cfg,
        fake,
        Some(6_600),
        &[
            ("systemPrompt", "You are Bob."),
            ("greeting", "Hi, Bob here."),
        ],
    );
    let m = messages(r.provider.requests(Kind::Llm)[0]);
    assert_eq!(m[0]["content"], "You are Bob.");
    assert_eq!(m[1]["content"], "Hi, Bob here.");
    assert_eq!(
        r.provider.requests(Kind::Tts)[0].body["input"],
        "Hi, Bob here."
    );
}

/// What the caller hears first after the faulty turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    /// The answer itself (no filler).
    Answer,
    /// The filler phrase, then the answer or the fallback.
    Filler,
    /// The fallback phrase.
    Fallback,
}

/// One row of the fault matrix.
struct Row {
    name: &'static str,
    kind: Kind,
    /// Per request of `kind` (for TTS: 0 the greeting, 1 the fallback phrase, 2 the answer's
    /// first sentence; the filler phrase is not counted).
    faults: Vec<Option<Fault>>,
    /// Every TTS request from this index on gets this fault.
    tts_always: Option<(usize, Fault)>,
    first: First,
    /// In the end the caller heard the answer (else the fallback phrase).
    answered: bool,
    /// The faults reported, in order (with `tts_always`: the first one, and all of its kind).
    want: Vec<(&'static str, &'static str)>,
}

fn row(
    name: &'static str,
    kind: Kind,
    faults: Vec<Fault>,
    first: First,
    answered: bool,
    want: Vec<(&'static str, &'static str)>,
) -> Row {
    let mut q: Vec<Option<Fault>> = Vec::new();
    if kind == Kind::Tts {
        q.extend([None, None]);
    }
    q.extend(faults.into_iter().map(Some));
    Row {
        name,
        kind,
        faults: q,
        tts_always: None,
        first,
        answered,
        want,
    }
}

/// The shipped deadlines and filler, with the fake's endpoints.
fn fault_config() -> CascadeConfig {
    let ep = |m: &str| Endpoint::new("http://openai.test", Some("sk-test".into()), m);
    let mut c = CascadeConfig::default();
    c.stt.endpoint = ep("gpt-4o-mini-transcribe");
    c.llm.endpoint = ep("gpt-4o-mini");
    c.tts.endpoint = ep("gpt-4o-mini-tts");
    c.greeting = Some("Hello!".into());
    c
}

/// Issue 12 §7: under every fault of every stage — a hang before the first byte, a stall after
/// one event, a drop mid-stream, a 200 of the wrong content type, a 429 with `Retry-After`, a
/// 5xx — the caller hears the answer, the filler or the fallback within 2.0 s of hark's
/// end-of-turn decision (queued by the engine and heard at the virtual phone), and after a
/// filler the answer or the fallback follows within the retry budget plus one first-byte
/// deadline. A TTS stream that breaks mid-sentence is asked again for the rest of the sentence
/// only; an answer of the wrong content type is a fault, never the caller's words.
#[test]
fn fault_matrix_something_is_heard_within_two_seconds() {
    use First::*;
    use Kind::*;
    let cfg = fault_config();
    let budget = ms(2_000);
    let then = ms(cfg.retry.budget_ms + cfg.stt.timeout_ms.max(cfg.llm.first_token_timeout_ms));
    let filler = cfg.filler_text.clone().unwrap();
    let fallback = cfg.fallback_text.clone();
    let html = |k| (k, "content_type");
    let mut rows = vec![
        // ---- STT
        row(
            "stt hangs",
            Stt,
            vec![Fault::Hang],
            Filler,
            true,
            vec![("stt", "timeout")],
        ),
        row(
            "stt stalls after one event",
            Stt,
            vec![Fault::StallAfter(1)],
            Filler,
            true,
            vec![("stt", "stall")],
        ),
        row(
            "stt drops mid-stream",
            Stt,
            vec![Fault::Dropped],
            Answer,
            true,
            vec![("stt", "dropped")],
        ),
        row(
            "stt 200 text/html",
            Stt,
            vec![Fault::Html],
            Answer,
            true,
            vec![html("stt")],
        ),
        row(
            "stt 200 html, no content type",
            Stt,
            vec![Fault::HtmlUnlabelled],
            Answer,
            true,
            vec![html("stt")],
        ),
        row(
            "stt 500",
            Stt,
            vec![Fault::Status(500, None)],
            Answer,
            true,
            vec![("stt", "http_5xx")],
        ),
        row(
            "stt 429 retry-after 1 s",
            Stt,
            vec![Fault::Status(429, Some(1_000))],
            Filler,
            true,
            vec![("stt", "http_429")],
        ),
        row(
            "stt hangs every time",
            Stt,
            vec![Fault::Hang, Fault::Hang, Fault::Hang],
            Filler,
            false,
            vec![("stt", "timeout"); 3],
        ),
        // ---- LLM
        row(
            "llm hangs",
            Llm,
            vec![Fault::Hang],
            Filler,
            true,
            vec![("llm", "timeout")],
        ),
        row(
            "llm stalls after the role chunk",
            Llm,
            vec![Fault::StallAfter(1)],
            Filler,
            true,
            vec![("llm", "timeout")],
        ),
        row(
            "llm stalls after the first token",
            Llm,
            vec![Fault::StallAfter(2)],
            Filler,
            true,
            vec![("llm", "stall")],
        ),
        row(
            "llm drops mid-stream",
            Llm,
            vec![Fault::Dropped],
            Answer,
            true,
            vec![("llm", "dropped")],
        ),
        row(
            "llm 200 text/html",
            Llm,
            vec![Fault::Html],
            Answer,
            true,
            vec![html("llm")],
        ),
        row(
            "llm 200 html, no content type",
            Llm,
            vec![Fault::HtmlUnlabelled],
            Answer,
            true,
            vec![html("llm")],
        ),
        row(
            "llm 503",
            Llm,
            vec![Fault::Status(503, None)],
            Answer,
            true,
            vec![("llm", "http_5xx")],
        ),
        row(
            "llm 429 retry-after 1 s",
            Llm,
            vec![Fault::Status(429, Some(1_000))],
            Filler,
            true,
            vec![("llm", "http_429")],
        ),
        row(
            "llm 429 retry-after past the budget",
            Llm,
            vec![Fault::Status(429, Some(5_000))],
            Fallback,
            false,
            vec![("llm", "http_429")],
        ),
        row(
            "llm hangs every time",
            Llm,
            vec![Fault::Hang, Fault::Hang, Fault::Hang],
            Filler,
            false,
            vec![("llm", "timeout"); 2],
        ),
        // ---- TTS (the answer's first sentence)
        row(
            "tts hangs",
            Tts,
            vec![Fault::Hang],
            Filler,
            true,
            vec![("tts", "timeout")],
        ),
        row(
            "tts stalls after 100 ms of audio",
            Tts,
            vec![Fault::StallAfter(1)],
            Answer,
            true,
            vec![("tts", "stall")],
        ),
        row(
            "tts drops after 100 ms of audio",
            Tts,
            vec![Fault::DroppedAfterAudio],
            Answer,
            true,
            vec![("tts", "dropped")],
        ),
        row(
            "tts 200 text/html",
            Tts,
            vec![Fault::Html],
            Answer,
            true,
            vec![html("tts")],
        ),
        row(
            "tts 503",
            Tts,
            vec![Fault::Status(503, None)],
            Answer,
            true,
            vec![("tts", "http_5xx")],
        ),
        row(
            "tts 429 retry-after 1 s",
            Tts,
            vec![Fault::Status(429, Some(1_000))],
            Filler,
            true,
            vec![("tts", "http_429")],
        ),
    ];
    rows.push(Row {
        tts_always: Some((2, Fault::DroppedAfterAudio)),
        ..row(
            "tts drops after 100 ms every time",
            Tts,
            vec![],
            Answer,
            false,
            vec![("tts", "dropped")],
        )
    });
    rows.push(Row {
        tts_always: Some((2, Fault::Hang)),
        ..row(
            "tts hangs every time",
            Tts,
            vec![],
            Filler,
            false,
            vec![("tts", "timeout")],
        )
    });

    let mut table = Vec::new();
    for c in rows {
        let mut fake = Fake::new(segment_texts(), script).fault(c.kind, c.faults.clone());
        fake.tts_always = c.tts_always.clone();
        // A hosted transcription of a 4 s utterance takes about this long; the healthy answer
        // is then queued 870 ms after the turn, well before the filler's time.
        fake.lat.stt = 300;
        let r = run(cfg.clone(), fake, Some(6_600));
        let name = c.name;
        // The faults, reported as they happened.
        let got = r.faults();
        if c.tts_always.is_some() {
            assert!(got.len() >= 2, "{name}: {got:?}");
            let (p, k) = c.want[0];
            assert!(got.iter().all(|(a, b)| a == p && b == k), "{name}: {got:?}");
        } else {
            let want: Vec<(String, String)> = c
                .want
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(got, want, "{name}: faults");
        }
        // Within 2.0 s of the end of the turn: queued by the engine and heard at the phone.
        let ends = r.turn_ends();
        assert_eq!(ends.len(), 1, "{name}");
        let end = ends[0];
        let starts: Vec<Instant> = r
            .audio_starts()
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| *t >= end)
            .collect();
        let sent = starts.first().map(|t| *t - end);
        assert!(
            sent.is_some_and(|d| d <= budget),
            "{name}: first audio sent after {sent:?}"
        );
        let end_ms = r.at(end);
        let heard = r
            .phone
            .bursts()
            .iter()
            .find(|b| b.start_ms >= end_ms)
            .map(|b| b.start_ms - end_ms);
        assert!(
            heard.is_some_and(|h| h <= 2_000),
            "{name}: first audio heard {heard:?} ms after the turn"
        );
        // What it was, in the order heard.
        let said: Vec<String> = r
            .timed_reports()
            .into_iter()
            .filter(|(t, _)| *t >= end)
            .filter_map(|(_, x)| match x {
                AgentReport::Transcript {
                    role: Role::Agent,
                    text,
                    ..
                } => Some(text),
                _ => None,
            })
            .collect();
        assert!(!said.is_empty(), "{name}: nothing reported as heard");
        match c.first {
            Filler => assert_eq!(said[0], filler, "{name}: {said:?}"),
            Fallback => assert_eq!(said[0], fallback, "{name}: {said:?}"),
            Answer => {
                assert!(said[0].starts_with("I'm"), "{name}: {said:?}");
                assert!(
                    !said.contains(&filler),
                    "{name}: no filler needed: {said:?}"
                );
            }
        }
        let fell_back = said.iter().any(|t| t.contains(&fallback));
        assert_eq!(fell_back, !c.answered, "{name}: {said:?}");
        if c.answered {
            assert!(
                said.iter().any(|t| t.contains("sorry to hear that.")),
                "{name}: the answer was heard: {said:?}"
            );
        }
        // After a filler, the answer or the fallback follows within the budget.
        if c.first == Filler {
            let next = starts.get(1).map(|t| *t - end);
            assert!(
                next.is_some_and(|d| d <= then),
                "{name}: after the filler, the next audio at {next:?}"
            );
        }
        // Content of the wrong type is never taken as the caller's words.
        assert!(
            r.provider
                .requests(Kind::Llm)
                .iter()
                .all(|q| !q.body.to_string().contains("Bad Gateway")),
            "{name}: HTML went to the model"
        );
        // A sentence broken after some audio is asked again for its rest only.
        if matches!(
            c.faults.get(2),
            Some(Some(Fault::DroppedAfterAudio | Fault::StallAfter(_)))
        ) {
            let inputs: Vec<String> = r
                .provider
                .requests(Kind::Tts)
                .iter()
                .map(|q| q.body["input"].as_str().unwrap_or("").to_string())
                .collect();
            assert_eq!(
                inputs
                    .iter()
                    .filter(|t| *t == "I'm sorry to hear that.")
                    .count(),
                1,
                "{name}: {inputs:?}"
            );
            assert!(
                inputs.contains(&"sorry to hear that.".to_string()),
                "{name}: {inputs:?}"
            );
        }
        table.push(format!(
            "{name:<36} first audio sent +{:>4} ms, heard +{:>4} ms: {:<8} then {:<8} faults {:?}",
            sent.unwrap_or_default().as_millis(),
            heard.unwrap_or_default(),
            format!("{:?}", c.first),
            if c.answered { "answer" } else { "fallback" },
            got.iter()
                .map(|(p, k)| format!("{p}/{k}"))
                .collect::<Vec<_>>()
        ));
    }
    eprintln!("{}", table.join("\n"));
}

/// The filler is rendered once, after the fallback phrase; if that fails, the chime stands in
/// for it. And a due filler waits while the caller is talking again: their new turn restarts
/// its clock, so it never plays over them (no barge-in, one answer to both utterances).
#[test]
fn the_filler_is_the_chime_when_unrendered_and_waits_for_a_talking_caller() {
    let cfg = fault_config();
    let mut fake = Fake::new(segment_texts(), script).fault(Kind::Llm, vec![Some(Fault::Hang)]);
    fake.filler_fault = Some(Fault::Status(401, None));
    let r = run(cfg.clone(), fake, Some(6_600));
    let tts: Vec<&Value> = r
        .provider
        .requests(Kind::Tts)
        .iter()
        .map(|q| &q.body["input"])
        .collect();
    assert_eq!(
        tts[..3],
        [
            &json!("Hello!"),
            &json!(cfg.fallback_text),
            &json!("One moment.")
        ]
    );
    // After the fallback phrase was rendered, not with it.
    assert!(r.provider.requests(Kind::Tts)[2].at > r.provider.requests(Kind::Tts)[1].at);
    assert_eq!(
        r.faults(),
        vec![
            ("tts".to_string(), "http_401".to_string()),
            ("llm".to_string(), "timeout".to_string())
        ]
    );
    // The chime (no text) at the filler's time, then the answer (the LLM retried after its
    // first-token deadline).
    let end = r.turn_ends()[0];
    let starts: Vec<Instant> = r
        .audio_starts()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t >= end)
        .collect();
    assert_eq!(starts[0] - end, ms(cfg.filler_after_ms));
    assert!(starts[1] - end >= ms(300 + cfg.llm.first_token_timeout_ms + 300));
    let said = r.transcripts(Role::Agent);
    assert!(!said.iter().any(|(t, _)| t == "One moment."), "{said:?}");
    assert!(
        said.iter().any(|(t, _)| t.starts_with("I'm sorry")),
        "{said:?}"
    );

    // The caller speaks again 1.1 s after their turn (before the filler's 1.8 s) for 1.8 s,
    // while the first answer is slow (3.5 s to its first token).
    let mut fake = Fake::new(segment_texts(), script);
    fake.ttft_by_request.insert(0, 3_500);
    let mut cfg = fault_config();
    cfg.llm.first_token_timeout_ms = 5_000;
    let r = run(cfg, fake, Some(12_000));
    assert!(r.clears().is_empty(), "nothing played over the caller");
    let ends = r.turn_ends();
    assert_eq!(ends.len(), 2);
    let said: Vec<(String, bool)> = r.transcripts(Role::Agent);
    assert!(!said.iter().any(|(t, _)| t == "One moment."), "{said:?}");
    let answers: Vec<_> = r
        .audio_starts()
        .into_iter()
        .filter(|(t, _)| *t > ends[0])
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].0 > ends[1]);
}

// ------------------------------------------------------------ the operator's tools (HTTP)

const BALANCE_TOOL: &str = "lookup_balance";
/// The start of the session's first and third caller turns.
const FIRST: &str = "Hi, I'm calling";
const THIRD: &str = "ask what";

/// The config with the operator's `lookup_balance {payerId}` tool (2 s timeout).
fn tools_config(filler: Option<&str>, end_call_after: bool) -> CascadeConfig {
    let mut c = config();
    let tool = HttpTool {
        name: BALANCE_TOOL.into(),
        description: "The payer's open balance.".into(),
        parameters: ToolSchema::new(json!({
            "type": "object",
            "properties": {"payerId": {"type": "string", "minLength": 1}},
            "required": ["payerId"],
            "additionalProperties": false
        }))
        .unwrap(),
        url: "http://operator.test/tools/balance".into(),
        timeout_ms: 2_000,
        filler: filler.map(str::to_string),
        end_call_after,
    };
    c.tools.http = HttpTools {
        tools: vec![tool].into(),
        secret: Some(Secret::new("0123456789abcdef0123")),
    };
    c
}

/// The caller turn starting with `trigger` gets a call for the balance with `args` (after
/// saying `said`); a tool result gets an answer quoting it; other turns follow [`script`].
fn balance_script(
    trigger: &'static str,
    said: &'static str,
    args: &'static str,
) -> impl FnMut(&str) -> Reply {
    move |user: &str| {
        if user.starts_with(trigger) {
            Reply {
                text: said.into(),
                tools: vec![(BALANCE_TOOL, args.into())],
            }
        } else if let Some(result) = user.strip_prefix("TOOL:") {
            Reply {
                text: format!("The tool said {result}."),
                tools: vec![],
            }
        } else {
            script(user)
        }
    }
}

/// The tool message of LLM request `req` (the last message).
fn tool_message(req: &Req) -> Value {
    let m = messages(req);
    let last = m.last().cloned().unwrap_or_default();
    assert_eq!(last["role"], "tool", "{m:?}");
    last
}

#[test]
fn an_operator_tool_result_reaches_the_model_and_the_caller_hears_the_answer() {
    let fake = Fake::new(
        segment_texts(),
        balance_script(FIRST, "", r#"{"payerId":"p-42"}"#),
    )
    .operator(|body| {
        assert_eq!(body["tool"], BALANCE_TOOL);
        assert_eq!(body["arguments"], json!({"payerId": "p-42"}));
        assert_eq!(body["parameters"]["payerId"], "p-42");
        assert_eq!(body["call_sid"], "CA17c90326b8da5245358e1dfabfd8d82d");
        assert!(body["call_id"].as_str().unwrap().starts_with("call_"));
        (
            300,
            ToolReply::Json(json!({"balance": "120 dollars", "due": "May 3"})),
        )
    });
    let r = run_with(
        tools_config(None, false),
        fake,
        Some(6_600),
        &[("payerId", "p-42")],
    );
    assert_eq!(r.provider.tool_signed, [true], "one signed tool request");
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 2, "the round after the tool result");
    // Offered beside hark's own tools.
    let names: Vec<&str> = llm[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["end_call", "transfer_call", BALANCE_TOOL]);
    assert_eq!(
        llm[0].body["tools"][2]["function"]["parameters"]["required"],
        json!(["payerId"])
    );
    let tool_req = &r.provider.requests(Kind::Tool)[0];
    let t = tool_message(llm[1]);
    assert_eq!(t["content"], r#"{"balance":"120 dollars","due":"May 3"}"#);
    // The second round starts when the tool answers.
    assert_eq!(llm[1].at, tool_req.at + ms(300));
    let tts: Vec<String> = r
        .provider
        .requests(Kind::Tts)
        .iter()
        .map(|q| q.body["input"].as_str().unwrap().to_string())
        .collect();
    assert!(
        tts.iter().any(|s| s.contains("120 dollars")),
        "the caller hears the answer that uses the result: {tts:?}"
    );
    r.assert_no_dead_air(ms(2_000));
}

#[test]
fn tool_faults_are_errors_the_model_sees_never_a_stuck_call() {
    // (answer, what the model is told) per fault; schema-invalid arguments make no request.
    let cases: [(&str, Option<ToolReply>, &str); 4] = [
        (
            r#"{"payerId":"p-42"}"#,
            Some(ToolReply::Hang),
            "error: the tool did not answer (timeout)",
        ),
        (
            r#"{"payerId":"p-42"}"#,
            Some(ToolReply::Status(500)),
            "error: the tool failed (HTTP 500)",
        ),
        (
            r#"{"payerId":"p-42"}"#,
            Some(ToolReply::NotJson),
            "error: the tool answered something that is not JSON",
        ),
        (
            r#"{"payerId":42}"#,
            None,
            "error: invalid arguments: /payerId",
        ),
    ];
    for (args, reply, told) in cases {
        let expect_request = reply.is_some();
        // Asked in the third turn: the caller is quiet for 4 s after it.
        let fake =
            Fake::new(segment_texts(), balance_script(THIRD, "", args)).operator(move |_| {
                (
                    100,
                    reply.clone().expect("no request for invalid arguments"),
                )
            });
        let r = run_with(
            tools_config(None, false),
            fake,
            Some(20_000),
            &[("payerId", "p-42")],
        );
        assert_eq!(
            r.provider.requests(Kind::Tool).len(),
            usize::from(expect_request)
        );
        let llm = r.provider.requests(Kind::Llm);
        assert_eq!(llm.len(), 4, "{told}: the model gets another round");
        let t = tool_message(llm[3]);
        let content = t["content"].as_str().unwrap();
        assert!(content.starts_with(told), "{told:?} vs {content:?}");
        if expect_request {
            // Reported as a fault of the tool (a metric in the gateway).
            assert!(r.reports().iter().any(|x| matches!(x,
                AgentReport::ProviderFault { provider, .. } if provider == "tool")));
        }
        // The timeout is the tool's own: 2 s after the request, not the LLM's.
        if told.contains("timeout") {
            let tool_at = r.provider.requests(Kind::Tool)[0].at;
            assert_eq!(llm[3].at, tool_at + ms(2_000));
        }
        r.assert_no_dead_air(ms(3_500));
    }
}

#[test]
fn a_slow_tool_says_its_filler_and_end_call_after_ends_the_call() {
    // Asked in the third turn: the caller is quiet for 4 s after it.
    let fake = Fake::new(
        segment_texts(),
        balance_script(THIRD, "", r#"{"payerId":"p-42"}"#),
    )
    .operator(|_| (1_800, ToolReply::Json(json!({"ok": true}))));
    let r = run_with(
        tools_config(Some("One moment while I check."), true),
        fake,
        None,
        &[("payerId", "p-42")],
    );
    let tool_at = r.provider.requests(Kind::Tool)[0].at;
    let filler = r
        .provider
        .requests(Kind::Tts)
        .into_iter()
        .find(|q| q.body["input"] == "One moment while I check.")
        .expect("the tool's filler was said");
    assert_eq!(filler.at, tool_at + ms(1_000));
    // The answer after the result is the last: the call ends after it.
    match r.closed() {
        Some(CloseReason::Hangup(why)) => assert_eq!(why, format!("tool {BALANCE_TOOL}")),
        other => panic!("expected a hang-up, got {other:?}"),
    }
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 4, "no turn after the closing answer");
}

#[test]
fn a_barge_in_during_a_tool_call_keeps_its_result() {
    // The model says a sentence and calls a slow tool; the caller talks over the sentence
    // (segment 2 is a barge-in) while the tool runs.
    let fake = Fake::new(
        segment_texts(),
        balance_script(
            FIRST,
            "Let me look that up for you.",
            r#"{"payerId":"p-42"}"#,
        ),
    )
    .operator(|_| (4_000, ToolReply::Json(json!({"balance": "120 dollars"}))));
    let mut cfg = tools_config(None, false);
    cfg.tools.http.tools = {
        let mut t = cfg.tools.http.tools[0].clone();
        t.timeout_ms = 6_000;
        vec![t].into()
    };
    let r = run_with(cfg, fake, Some(13_000), &[("payerId", "p-42")]);
    assert!(!r.clears().is_empty(), "the caller barged in");
    let tool_req = &r.provider.requests(Kind::Tool)[0];
    let answered_at = tool_req.at + ms(4_000);
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(
        llm.len(),
        2,
        "{:?}",
        llm.iter().map(|q| q.at).collect::<Vec<_>>()
    );
    // The next chat waits for the result, then carries it where the call was made.
    assert!(llm[1].at >= answered_at);
    let m = messages(llm[1]);
    let call_ix = m
        .iter()
        .position(|x| x["tool_calls"][0]["function"]["name"] == BALANCE_TOOL)
        .expect("the tool call is in the history");
    assert_eq!(m[call_ix + 1]["role"], "tool");
    assert_eq!(m[call_ix + 1]["content"], r#"{"balance":"120 dollars"}"#);
    assert_eq!(
        m.last().unwrap()["role"],
        "user",
        "the caller's new words come last"
    );
    // What the caller heard of the sentence, cut at the barge-in.
    assert_eq!(m[call_ix]["role"], "assistant");
}

// ------------------------------------------------------------ per-call context

fn context_config(timeout_ms: u64) -> CascadeConfig {
    let mut c = config();
    c.greeting = Some("Hello {{payerId}}!".into());
    c.context = Some(ContextConfig {
        url: "http://operator.test/context".into(),
        timeout_ms,
        secret: Secret::new("0123456789abcdef0123"),
    });
    c
}

/// The greeting's TTS request and when the caller started hearing it (since the call's t0).
fn greeting_timing(r: &Run) -> (Value, u64, u64) {
    // Not the fallback and filler phrases, rendered ahead at the start.
    let cfg = CascadeConfig::default();
    let kept = [cfg.fallback_text, cfg.filler_text.unwrap_or_default()];
    let tts = r.provider.requests(Kind::Tts);
    let first = tts
        .iter()
        .find(|q| !kept.iter().any(|k| q.body["input"] == k.as_str()))
        .expect("a TTS request");
    let audio = r.audio_starts().first().expect("audio").0;
    (first.body.clone(), r.at(first.at), r.at(audio))
}

#[test]
fn the_backend_context_sets_prompt_greeting_and_voice() {
    let fake = Fake::new(segment_texts(), script).operator(|body| {
        assert!(body.get("tool").is_none(), "a context request");
        assert_eq!(body["parameters"]["payerId"], "p-42");
        (
            300,
            ToolReply::Json(json!({
                "system_prompt": "You collect payments for {{company}}. Payer {{ payerId }}.",
                "greeting": "Hi {{name}}, this is {{company}}.",
                "variables": {"company": "Acme", "name": "Ada"},
                "voice": "verse"
            })),
        )
    });
    let r = run_with(
        context_config(1_500),
        fake,
        Some(6_600),
        &[("payerId", "p-42")],
    );
    let (greeting, asked_at, _) = greeting_timing(&r);
    assert_eq!(greeting["input"], "Hi Ada, this is Acme.");
    assert_eq!(greeting["voice"], "verse");
    let context_at = r.at(r.provider.requests(Kind::Tool)[0].at);
    assert_eq!(
        asked_at,
        context_at + 300,
        "the greeting starts when the context answers"
    );
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(
        messages(llm[0])[0]["content"],
        "You collect payments for Acme. Payer p-42."
    );
}

#[test]
fn a_slow_or_failing_backend_gives_the_defaults_and_the_greeting_still_starts_within_two_seconds() {
    for (delay, reply) in [(60_000, ToolReply::Hang), (200, ToolReply::Status(503))] {
        let fake = Fake::new(segment_texts(), script).operator(move |_| (delay, reply.clone()));
        let r = run_with(
            context_config(1_500),
            fake,
            Some(6_600),
            &[("payerId", "p-42")],
        );
        let (greeting, asked_at, heard_at) = greeting_timing(&r);
        assert_eq!(
            greeting["input"], "Hello p-42!",
            "the default, filled from parameters"
        );
        let start = r.at(r.provider.requests(Kind::Tool)[0].at);
        let expect = if delay > 1_500 { 1_500 } else { delay };
        assert_eq!(asked_at, start + expect);
        assert!(heard_at < start + 2_000, "greeting heard at {heard_at} ms");
        assert!(r.reports().iter().any(|x| matches!(x,
            AgentReport::ProviderFault { provider, .. } if provider == "context")));
    }
}

/// A call with the cascade agent and `fake` behind it, saying a long greeting; the caller says
/// one short word over it (400 ms of speech at 1.5 s, line noise around it, 9 s in all).
fn short_word_over_the_greeting(fake: Fake) -> Run {
    let multi = std::fs::read(common::fixture("audio/multi-turn-8k.ulaw")).unwrap();
    let noise = &multi[..8 * 1000];
    let mut audio: Vec<u8> = noise.iter().cycle().take(8 * 1500).copied().collect();
    audio.extend_from_slice(&multi[8 * 1000..8 * 1400]);
    audio.extend(noise.iter().cycle().take(8 * 7100));
    let mut cfg = config();
    cfg.greeting = Some(
        "Hello and welcome to the order line. I can help you track a parcel or change a delivery."
            .into(),
    );
    let t0 = Instant::now();
    let lines = common::session(t0, &[], &audio);
    let agent = CascadeAgent::new(cfg).unwrap();
    let mut r = TestCall::with_provider(
        CallConfig::default(),
        Box::new(agent),
        common::STREAM_SID,
        t0,
        fake,
    );
    r.replay(&lines);
    assert!(r.phone.stats().errors.is_empty());
    r
}

#[test]
fn a_backchannel_is_told_by_its_words_and_the_greeting_plays_on() {
    let fake = Fake::new(vec!["Uh-huh.".into()], |u| panic!("no answer for {u:?}"));
    let r = short_word_over_the_greeting(fake);
    assert_eq!(r.clears().len(), 1, "held at once");
    assert_eq!(r.provider.requests(Kind::Stt).len(), 1, "transcribed once");
    assert!(
        r.provider.requests(Kind::Llm).is_empty(),
        "nothing to answer"
    );
    assert!(r.barge_ins().is_empty());
    let resumed = r.pick(|_, e| match e {
        Event::PlaybackResumed { backchannel, .. } => Some(*backchannel),
        _ => None,
    });
    assert_eq!(resumed, [true]);
    // The greeting was heard whole, and "uh-huh" is in no transcript.
    let agent = r.transcripts(Role::Agent);
    assert_eq!(agent.len(), 1, "{agent:?}");
    assert!(
        agent[0].0.ends_with("change a delivery.") && !agent[0].1,
        "{agent:?}"
    );
    assert!(r.transcripts(Role::User).is_empty());
}

#[test]
fn a_short_no_over_the_greeting_interrupts_with_one_transcription() {
    let fake = Fake::new(vec!["No.".into()], |u| {
        assert_eq!(u, "No.");
        Reply {
            text: "Sorry, go ahead.".into(),
            tools: vec![],
        }
    });
    let r = short_word_over_the_greeting(fake);
    assert_eq!(r.clears().len(), 1);
    assert_eq!(
        r.provider.requests(Kind::Stt).len(),
        1,
        "its words were kept"
    );
    let bis = r.barge_ins();
    assert_eq!(bis.len(), 1);
    assert!(
        bis[0].delay_ms() <= 100,
        "cleared at once: {}",
        bis[0].delay_ms()
    );
    let llm = r.provider.requests(Kind::Llm);
    assert_eq!(llm.len(), 1);
    let m = messages(llm[0]);
    let greeting = m[1]["content"].as_str().unwrap();
    assert!(
        greeting.ends_with("[interrupted by the caller]"),
        "{greeting}"
    );
    assert_eq!(m.last().unwrap()["content"], "No.");
    assert_eq!(r.transcripts(Role::User), [("No.".to_string(), false)]);
    // The answer came: the check's transcription stood in for the turn's.
    assert_eq!(r.latencies(Stage::Stt), [LAT.stt]);
    assert!(
        r.transcripts(Role::Agent)
            .contains(&("Sorry, go ahead.".to_string(), false))
    );
}
