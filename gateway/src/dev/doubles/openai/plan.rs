//! What the three endpoints share: a planned response ([`Plan`]: status, headers, body pieces
//! each after a delay, an optional drop), the plans of faults and of refused requests, cutting
//! an answer as a fault asks, recording the exchange, and streaming the plan out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Endpoint, Exchange, Fault, HTML_ERROR_PAGE, State, lock};

/// The fault for the next request to `endpoint`, advancing the rules.
pub(super) fn take_fault(st: &mut State, endpoint: Endpoint) -> Option<Fault> {
    let mut hit = None;
    for (rule, seen) in st.rules.iter_mut() {
        if rule.endpoint != endpoint {
            continue;
        }
        let n = *seen;
        *seen += 1;
        if hit.is_none() && n >= rule.skip && n < rule.skip.saturating_add(rule.times) {
            hit = Some(rule.fault.clone());
        }
    }
    hit
}

/// OpenAI's error body: `{"error": {"message", "type", "param": null, "code"}}`.
pub(super) fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A planned response: status, headers, body pieces each after a delay, and an optional
/// connection drop at the end.
pub(super) struct Plan {
    /// The HTTP status.
    pub(super) status: u16,
    /// The `Content-Type`.
    pub(super) content_type: &'static str,
    /// Other headers.
    pub(super) headers: Vec<(&'static str, String)>,
    /// The body pieces, each sent after its delay.
    pub(super) pieces: Vec<(Duration, Vec<u8>)>,
    /// Drop the connection after the last piece instead of ending the body.
    pub(super) drop_at_end: bool,
    /// Wait before the headers.
    pub(super) head_delay: Duration,
}

/// Streams `plan` out: waits `head_delay`, sends the headers, then each piece after its delay.
pub(super) async fn respond(plan: Plan) -> Response {
    let head_delay = plan.head_delay;
    if !head_delay.is_zero() {
        tokio::time::sleep(head_delay).await;
    }
    let Plan {
        status,
        content_type,
        headers,
        pieces,
        drop_at_end,
        ..
    } = plan;
    let stream = futures_util::stream::unfold(
        (0usize, pieces, drop_at_end),
        |(i, pieces, drop_at_end)| async move {
            if i >= pieces.len() {
                if drop_at_end && i == pieces.len() {
                    return Some((
                        Err(std::io::Error::other("connection dropped by the double")),
                        (i + 1, pieces, false),
                    ));
                }
                return None;
            }
            let (delay, bytes) = &pieces[i];
            if !delay.is_zero() {
                tokio::time::sleep(*delay).await;
            }
            let b = Bytes::from(bytes.clone());
            Some((Ok(b), (i + 1, pieces, drop_at_end)))
        },
    );
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type);
    for (k, v) in headers {
        r = r.header(k, v);
    }
    r.body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// One SSE event carrying `v`.
pub(super) fn sse(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

/// `d` ms.
pub(super) fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// The plan for a faulted request (`None`: the fault applies inside the normal stream).
pub(super) fn fault_plan(fault: &Fault, first: Duration) -> Option<(Plan, Vec<Value>)> {
    let json_plan = |status: u16, headers: Vec<(&'static str, String)>, body: Value| Plan {
        status,
        content_type: "application/json",
        headers,
        pieces: vec![(Duration::ZERO, body.to_string().into_bytes())],
        drop_at_end: false,
        head_delay: first,
    };
    match fault {
        Fault::Status {
            status,
            retry_after_s,
            retry_after_ms,
        } => {
            let body = match status {
                401 => error_body(
                    "Incorrect API key provided: sk-test. You can find your API key at https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    Some("invalid_api_key"),
                ),
                429 => error_body(
                    "Rate limit reached for requests. Please try again in 6ms.",
                    "requests",
                    Some("rate_limit_exceeded"),
                ),
                _ => error_body(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                ),
            };
            let mut h = Vec::new();
            if let Some(s) = retry_after_s {
                h.push(("retry-after", s.to_string()));
            }
            if let Some(m) = retry_after_ms {
                h.push(("retry-after-ms", m.to_string()));
            }
            Some((json_plan(*status, h, body.clone()), vec![body]))
        }
        Fault::InsufficientQuota => {
            let body = error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                Some("insufficient_quota"),
            );
            Some((json_plan(429, Vec::new(), body.clone()), vec![body]))
        }
        Fault::Hang => Some((
            Plan {
                status: 200,
                content_type: "text/plain",
                headers: Vec::new(),
                pieces: Vec::new(),
                drop_at_end: false,
                head_delay: Duration::from_secs(3600),
            },
            Vec::new(),
        )),
        Fault::Html => Some((
            Plan {
                status: 200,
                content_type: "text/html; charset=utf-8",
                headers: Vec::new(),
                pieces: vec![(Duration::ZERO, HTML_ERROR_PAGE.as_bytes().to_vec())],
                drop_at_end: false,
                head_delay: first,
            },
            Vec::new(),
        )),
        Fault::StreamError | Fault::Drop | Fault::StallAfter(_) | Fault::DropAfterBytes(_) => None,
    }
}

/// Cuts a normal answer as [`Fault::StallAfter`] or [`Fault::DropAfterBytes`] ask.
pub(super) fn cut(mut plan: Plan, fault: Option<&Fault>) -> Plan {
    match fault {
        Some(Fault::StallAfter(n)) if plan.status == 200 => {
            plan.pieces.truncate(*n);
            plan.pieces.push((Duration::from_secs(3600), Vec::new()));
            plan.drop_at_end = false;
        }
        Some(Fault::DropAfterBytes(n)) if plan.status == 200 => {
            let mut left = *n;
            let mut kept = Vec::new();
            for (d, mut b) in std::mem::take(&mut plan.pieces) {
                if left == 0 {
                    break;
                }
                b.truncate(left);
                left -= b.len();
                kept.push((d, b));
            }
            plan.pieces = kept;
            plan.drop_at_end = true;
        }
        _ => {}
    }
    plan
}

/// The 401 answer when the script wants an API key and the request has another.
pub(super) fn check_auth(st: &State, headers: &HeaderMap) -> Option<(Plan, Vec<Value>)> {
    let want = st.script.api_key.as_ref()?;
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if got == format!("Bearer {want}") {
        return None;
    }
    fault_plan(&Fault::status(401), Duration::ZERO)
}

/// A 400 with OpenAI's `invalid_request_error` body.
pub(super) fn bad_request(message: &str) -> (Plan, Vec<Value>) {
    let body = error_body(message, "invalid_request_error", None);
    (
        Plan {
            status: 400,
            content_type: "application/json",
            headers: Vec::new(),
            pieces: vec![(Duration::ZERO, body.to_string().into_bytes())],
            drop_at_end: false,
            head_delay: Duration::ZERO,
        },
        vec![body],
    )
}

/// Cuts `plan` as `fault` asks and records the exchange; returns the plan to send.
pub(super) fn record(
    state: &Arc<Mutex<State>>,
    at: Instant,
    endpoint: Endpoint,
    request: Value,
    plan: Plan,
    response: Vec<Value>,
    fault: Option<Fault>,
) -> Plan {
    let plan = cut(plan, fault.as_ref());
    let audio_bytes = if endpoint == Endpoint::Speech
        && plan.status == 200
        && plan.content_type.starts_with("audio/")
    {
        plan.pieces.iter().map(|(_, b)| b.len()).sum()
    } else {
        0
    };
    lock(state).exchanges.push(Exchange {
        at,
        endpoint,
        request,
        status: plan.status,
        response,
        audio_bytes,
        fault,
    });
    plan
}

/// The words of `text` as streamed: the first as is, the others with their leading space.
pub(super) fn words(text: &str) -> Vec<String> {
    text.split(' ')
        .enumerate()
        .filter(|(_, w)| !w.is_empty())
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{FaultRule, Script};
    use super::*;

    #[test]
    fn stall_and_drop_cut_the_answer() {
        let plan = || Plan {
            status: 200,
            content_type: "audio/pcm",
            headers: Vec::new(),
            pieces: vec![
                (Duration::ZERO, vec![1; 3000]),
                (ms(10), vec![2; 3000]),
                (ms(10), vec![3; 3000]),
            ],
            drop_at_end: false,
            head_delay: Duration::ZERO,
        };
        let p = cut(plan(), Some(&Fault::StallAfter(1)));
        assert_eq!(p.pieces.len(), 2);
        assert_eq!(p.pieces[0].1, vec![1; 3000]);
        assert!(p.pieces[1].0 >= Duration::from_secs(3600) && p.pieces[1].1.is_empty());
        assert!(!p.drop_at_end);
        let p = cut(plan(), Some(&Fault::DropAfterBytes(4800)));
        let sizes: Vec<usize> = p.pieces.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, [3000, 1800]);
        assert!(p.drop_at_end);
        let p = cut(plan(), None);
        assert_eq!(p.pieces.len(), 3);
        let (html, _) = fault_plan(&Fault::Html, ms(5)).unwrap();
        assert_eq!(
            (html.status, html.content_type),
            (200, "text/html; charset=utf-8")
        );
        assert_eq!(html.pieces[0].1, HTML_ERROR_PAGE.as_bytes());
    }

    #[test]
    fn fault_rules_skip_then_fault() {
        let mut st = State {
            script: Script::default(),
            rules: vec![(
                FaultRule {
                    endpoint: Endpoint::Speech,
                    skip: 1,
                    times: 2,
                    fault: Fault::Hang,
                },
                0,
            )],
            next_transcript: 0,
            exchanges: Vec::new(),
            seq: 0,
        };
        let got: Vec<bool> = (0..4)
            .map(|_| take_fault(&mut st, Endpoint::Speech).is_some())
            .collect();
        assert_eq!(got, [false, true, true, false]);
        assert!(take_fault(&mut st, Endpoint::ChatCompletions).is_none());
    }
}
