//! `POST /v1/audio/transcriptions`: a `multipart/form-data` request with `file` and `model`;
//! the next scripted transcript as JSON, or with `stream=true` as SSE `transcript.text.delta`
//! events (one per word) and `transcript.text.done`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::plan::{
    Plan, bad_request, check_auth, error_body, fault_plan, ms, record, respond, sse, take_fault,
    words,
};
use super::{Endpoint, Fault, State, lock};

/// Parses a `multipart/form-data` body into fields (file parts as an object).
fn parse_multipart(headers: &HeaderMap, body: &[u8]) -> Result<(Value, Vec<u8>), String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = ct
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .filter(|_| ct.to_ascii_lowercase().starts_with("multipart/form-data"))
        .ok_or_else(|| format!("Content-Type must be multipart/form-data, got {ct:?}"))?;
    let delim = format!("--{boundary}").into_bytes();
    let mut fields = serde_json::Map::new();
    let mut file = Vec::new();
    let find = |hay: &[u8], needle: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pos = find(body, &delim, 0).ok_or("no multipart boundary in the body")?;
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        pos += 2; // CRLF
        let head_end = find(body, b"\r\n\r\n", pos).ok_or("a part without headers")?;
        let head = String::from_utf8_lossy(&body[pos..head_end]).to_string();
        let data_start = head_end + 4;
        let next = find(body, &delim, data_start).ok_or("an unterminated part")?;
        let data = &body[data_start..next.saturating_sub(2)];
        let attr = |name: &str| -> Option<String> {
            let key = format!("{name}=\"");
            let i = head.find(&key)? + key.len();
            let j = head[i..].find('"')? + i;
            Some(head[i..j].to_string())
        };
        let name = attr("name").ok_or("a part without a name")?;
        if let Some(filename) = attr("filename") {
            let ctype = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .starts_with("content-type:")
                        .then(|| l[13..].trim().to_string())
                })
                .unwrap_or_default();
            fields.insert(
                name,
                json!({"filename": filename, "content_type": ctype, "bytes": data.len()}),
            );
            file = data.to_vec();
        } else {
            fields.insert(name, json!(String::from_utf8_lossy(data)));
        }
        pos = next;
    }
    Ok((Value::Object(fields), file))
}

pub(super) async fn transcriptions(
    state: Arc<Mutex<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let (plan, resp, request, fault) = {
        let mut st = lock(&state);
        let parsed = parse_multipart(&headers, &body);
        let request = parsed.as_ref().map(|p| p.0.clone()).unwrap_or(Value::Null);
        let lat = st.script.latency;
        if let Some((p, r)) = check_auth(&st, &headers) {
            (p, r, request, None)
        } else {
            match parsed {
                Err(e) => {
                    let (p, r) = bad_request(&e);
                    (p, r, request, None)
                }
                Ok((fields, file)) if fields.get("model").is_none() || file.is_empty() => {
                    let (p, r) = bad_request("'file' and 'model' are required");
                    let _ = fields;
                    (p, r, request, None)
                }
                Ok((fields, _)) => {
                    let fault = take_fault(&mut st, Endpoint::Transcriptions);
                    if let Some((p, r)) = fault
                        .as_ref()
                        .and_then(|f| fault_plan(f, ms(lat.stt_ms / 2)))
                    {
                        (p, r, request, fault)
                    } else {
                        let n = st.script.transcripts.len();
                        let text = if n == 0 {
                            "Hello.".to_string()
                        } else {
                            st.script.transcripts[st.next_transcript % n].clone()
                        };
                        // A transcription that never completes is asked again: the retry
                        // gets the same words.
                        if !matches!(fault, Some(Fault::StallAfter(_) | Fault::DropAfterBytes(_))) {
                            st.next_transcript += 1;
                        }
                        let usage = json!({"type": "tokens", "input_tokens": 14,
                            "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                            "output_tokens": 5, "total_tokens": 19});
                        let stream = fields.get("stream").and_then(Value::as_str) == Some("true");
                        let mut resp = Vec::new();
                        let plan = if stream {
                            let mut pieces = Vec::new();
                            let half = ms(lat.stt_ms / 2);
                            for w in words(&text) {
                                let e = json!({"type": "transcript.text.delta", "delta": w});
                                pieces.push((Duration::ZERO, sse(&e)));
                                resp.push(e);
                            }
                            let drop_at_end = matches!(fault, Some(Fault::Drop));
                            if matches!(fault, Some(Fault::StreamError)) {
                                let e = error_body(
                                    "The server had an error while processing your request.",
                                    "server_error",
                                    None,
                                );
                                pieces.push((half, sse(&e)));
                                resp.push(e);
                            } else if !drop_at_end {
                                let done = json!({"type": "transcript.text.done", "text": text, "usage": usage});
                                pieces.push((ms(lat.stt_ms - lat.stt_ms / 2), sse(&done)));
                                resp.push(done);
                                if st.script.stt_done_marker {
                                    pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
                                }
                            }
                            Plan {
                                status: 200,
                                content_type: "text/event-stream",
                                headers: Vec::new(),
                                pieces,
                                drop_at_end,
                                head_delay: half,
                            }
                        } else {
                            let body = json!({"text": text, "usage": usage});
                            resp.push(body.clone());
                            Plan {
                                status: 200,
                                content_type: "application/json",
                                headers: Vec::new(),
                                pieces: if matches!(fault, Some(Fault::Drop | Fault::StreamError)) {
                                    vec![(
                                        Duration::ZERO,
                                        body.to_string().as_bytes()[..5].to_vec(),
                                    )]
                                } else {
                                    vec![(Duration::ZERO, body.to_string().into_bytes())]
                                },
                                drop_at_end: matches!(
                                    fault,
                                    Some(Fault::Drop | Fault::StreamError)
                                ),
                                head_delay: ms(lat.stt_ms),
                            }
                        };
                        (plan, resp, request, fault)
                    }
                }
            }
        }
    };
    let plan = record(
        &state,
        at,
        Endpoint::Transcriptions,
        request,
        plan,
        resp,
        fault,
    );
    respond(plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=XX".parse().unwrap(),
        );
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XX--\r\n";
        let (f, file) = parse_multipart(&h, body).unwrap();
        assert_eq!(f["model"], "whisper-1");
        assert_eq!(f["file"]["filename"], "audio.wav");
        assert_eq!(f["file"]["content_type"], "audio/wav");
        assert_eq!(file, b"RIFF");
    }
}
