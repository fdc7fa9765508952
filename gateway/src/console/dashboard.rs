//! The calls dashboard, rendered on the server from the call records (every value escaped):
//! `GET /dashboard` (calls, newest first, with status and outcome) and
//! `GET /dashboard/calls/{sid}` (one call: summary, status timeline, a media-time picture of
//! the turns, each turn's caller words and the agent's words as heard, the latency breakdown
//! per turn as an SVG chart, barge-ins, and the call's audio when its record links one).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::html::{esc, page, utc};
use super::require_session;
use crate::server::AppState;

/// Calls listed at most.
const LIST_LIMIT: u32 = 100;

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_page(status: StatusCode, message: &str) -> Response {
    html(
        status,
        page(
            "hark — error",
            &[],
            &format!("<main><p class=\"error\">{}</p></main>", esc(message)),
        ),
    )
}

fn sid_ok(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The record of `sid` as `GET /calls/{sid}` returns it, `None` when there is none.
///
/// # Errors
/// A page (400 bad SID, 503 no records, 500 store error) to send instead.
pub(super) async fn load(st: &AppState, sid: &str) -> Result<Option<Value>, Response> {
    if !sid_ok(sid) {
        return Err(error_page(StatusCode::BAD_REQUEST, "not a Call SID"));
    }
    let Some(api) = st.api() else {
        return Err(error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server keeps no call records",
        ));
    };
    match api.store().call(sid).await {
        Ok(Some(d)) => Ok(Some(serde_json::to_value(d).unwrap_or(Value::Null))),
        Ok(None) => Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot read a call record");
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the call records",
            ))
        }
    }
}

/// A JSON value as text for a table cell: strings as they are, numbers, `—` for null.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".to_owned(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

fn ms(v: &Value) -> String {
    v.as_i64().map_or("—".to_owned(), |n| format!("{n} ms"))
}

/// How a call ended, from its stream summary (`ended`), else its answering-machine verdict.
fn outcome(d: &Value) -> String {
    let ended = d["summary"]["ended"].as_str();
    let answered = d["answered_by"].as_str();
    match (ended, answered) {
        (Some(e), Some(a)) => format!("{e} ({a})"),
        (Some(e), None) => e.to_owned(),
        (None, Some(a)) => a.to_owned(),
        (None, None) => String::new(),
    }
}

/// `GET /dashboard`.
pub(super) async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = require_session(&st, &headers) {
        return r;
    }
    let Some(api) = st.api() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server keeps no call records",
        );
    };
    let calls = match api.store().list_calls(None, LIST_LIMIT).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot list calls");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the call records",
            );
        }
    };
    let mut rows = String::new();
    for c in &calls {
        // The summary (outcome, turns, barge-ins) lives with the detail.
        let d = match api.store().call(&c.call_sid).await {
            Ok(Some(d)) => serde_json::to_value(d).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let _ = write!(
            rows,
            "<tr><td>{created}</td><td><a href=\"/dashboard/calls/{sid}\">{sid}</a></td>\
             <td>{dir}</td><td>{from} → {to}</td><td>{agent}</td><td class=\"status\">{status}</td>\
             <td class=\"outcome\">{outcome}</td><td class=\"num\">{turns}</td>\
             <td class=\"num\">{barge}</td><td class=\"num\">{dur}</td></tr>",
            created = esc(&utc(c.created_at_ms)),
            sid = esc(&c.call_sid),
            dir = esc(c.direction.as_deref().unwrap_or("")),
            from = esc(c.from.as_deref().unwrap_or("?")),
            to = esc(c.to.as_deref().unwrap_or("?")),
            agent = esc(c.agent.as_deref().unwrap_or("")),
            status = esc(c.status.as_deref().unwrap_or("")),
            outcome = esc(&outcome(&d)),
            turns = d["turns"].as_array().map_or(0, Vec::len),
            barge = cell(&d["summary"]["barge_ins"]),
            dur = c
                .duration_s
                .map(|s| format!("{s} s"))
                .or_else(|| d["summary"]["duration_ms"]
                    .as_u64()
                    .map(|m| format!("{:.1} s", m as f64 / 1000.0)))
                .unwrap_or_default(),
        );
    }
    let body = if calls.is_empty() {
        "<main><h1>Calls</h1><p class=\"empty\">No calls yet. Place one from the \
         <a href=\"/phone\">phone</a>.</p></main>"
            .to_owned()
    } else {
        format!(
            "<main><h1>Calls</h1><p>{n} most recent, newest first.</p>\
             <table class=\"calls\"><thead><tr><th>created (UTC)</th><th>call</th>\
             <th>direction</th><th>from → to</th><th>agent</th><th>status</th><th>outcome</th>\
             <th>turns</th><th>barge-ins</th><th>duration</th></tr></thead>\
             <tbody>{rows}</tbody></table></main>",
            n = calls.len()
        )
    };
    html(StatusCode::OK, page("hark — calls", &[], &body))
}

/// `GET /dashboard/calls/{sid}`.
pub(super) async fn show(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Response {
    if let Some(r) = require_session(&st, &headers) {
        return r;
    }
    let d = match load(&st, &sid).await {
        Ok(Some(d)) => d,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no call {sid}")),
        Err(r) => return r,
    };
    let stop_ms = d["stream_parameters"]["hark_stop_ms"]
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(i64::from(st.config.call.turn.stop_ms));
    let turns = d["turns"].as_array().cloned().unwrap_or_default();
    let mut body = format!(
        "<main><h1>Call <code>{sid}</code></h1>{summary}{audio}\
         <h2>Turns on the media clock</h2>{picture}\
         <h2>Latency per turn</h2>{chart}<h2>Turns</h2>{table}",
        sid = esc(&sid),
        summary = summary(&d),
        audio = audio(&d),
        picture = media_picture(&turns),
        chart = latency_chart(&turns, stop_ms),
        table = turn_table(&turns),
    );
    body.push_str(&timeline(&d));
    body.push_str("</main>");
    html(
        StatusCode::OK,
        page(&format!("hark — call {sid}"), &[], &body),
    )
}

fn summary(d: &Value) -> String {
    let s = &d["summary"];
    let params = d["stream_parameters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("<code>{}={}</code>", esc(k), cell(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "<dl class=\"summary\"><dt>status</dt><dd class=\"status\">{status}</dd>\
         <dt>outcome</dt><dd class=\"outcome\">{outcome}</dd>\
         <dt>created</dt><dd>{created}</dd><dt>from → to</dt><dd>{from} → {to}</dd>\
         <dt>agent</dt><dd>{agent}</dd><dt>stream</dt><dd>{stream}</dd>\
         <dt>duration</dt><dd>{dur}</dd><dt>turns</dt><dd class=\"turns\">{turns}</dd>\
         <dt>barge-ins</dt><dd class=\"barge-ins\">{barge}</dd>\
         <dt>latency p50 / p95</dt><dd>{p50} / {p95}</dd>\
         <dt>parameters</dt><dd>{params}</dd></dl>",
        status = cell(&d["status"]),
        outcome = esc(&outcome(d)),
        created = d["created_at_ms"].as_i64().map(utc).unwrap_or_default(),
        from = cell(&d["from"]),
        to = cell(&d["to"]),
        agent = cell(&d["agent"]),
        stream = cell(&d["stream_sid"]),
        dur = ms(&s["duration_ms"]),
        turns = d["turns"].as_array().map_or(0, Vec::len),
        barge = cell(&s["barge_ins"]),
        p50 = ms(&d["latency"]["p50_ms"]),
        p95 = ms(&d["latency"]["p95_ms"]),
    )
}

/// The call's audio: an `<audio>` element when hark recorded the call (the record's `audio`,
/// with the WAV's `file`), played from `/console/calls/{sid}/recording.wav`; else nothing.
fn audio(d: &Value) -> String {
    let a = &d["audio"];
    let Some(sid) = d["call_sid"].as_str().filter(|s| sid_ok(s)) else {
        return String::new();
    };
    if !a["file"].is_string() {
        return String::new();
    }
    let dur = a["duration_ms"]
        .as_u64()
        .map(|m| format!(" ({:.1} s)", m as f64 / 1000.0))
        .unwrap_or_default();
    format!(
        "<h2>Audio</h2><audio class=\"recording\" controls preload=\"metadata\" \
         src=\"/console/calls/{sid}/recording.wav\"></audio>\
         <p class=\"hint\">Recorded by hark{dur}: the caller left, the agent as played right. \
         Personal data.</p>",
        sid = esc(sid),
        dur = esc(&dur),
    )
}

/// `GET /console/calls/{sid}/recording.wav`: the call's audio recorded by hark (WAV), read
/// from the record's `audio.file`; 404 when there is none or the file is gone.
pub(super) async fn recording(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(sid): Path<String>,
) -> Response {
    if let Some(r) = require_session(&st, &headers) {
        return r;
    }
    let d = match load(&st, &sid).await {
        Ok(Some(d)) => d,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, "no such call"),
        Err(r) => return r,
    };
    let Some(file) = d["audio"]["file"].as_str() else {
        return error_page(StatusCode::NOT_FOUND, "hark did not record this call");
    };
    // Streamed in chunks (a recording is 115 MB per hour), as `GET /calls/{sid}/recording.wav`.
    match crate::recording::file_response(std::path::Path::new(file)).await {
        Some(resp) => resp,
        None => error_page(
            StatusCode::NOT_FOUND,
            "the recording is gone (deleted, or retention)",
        ),
    }
}

fn num(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// One turn's latency split into stages, ms: (class, label, width).
fn stages(t: &Value, stop_ms: i64) -> Vec<(&'static str, &'static str, i64)> {
    let Some(total) = num(&t["latency_ms"]) else {
        return Vec::new();
    };
    let mut out = vec![("endpointing", "endpointing", stop_ms.min(total))];
    for (key, class, label) in [
        ("stt_ms", "stt", "STT"),
        ("llm_ttft_ms", "llm", "LLM first token"),
        ("tts_ttfb_ms", "tts", "TTS first byte"),
        ("first_audio_ms", "s2s", "provider first audio"),
    ] {
        if let Some(v) = num(&t[key]).filter(|v| *v > 0) {
            out.push((class, label, v));
        }
    }
    let used: i64 = out.iter().map(|s| s.2).sum();
    out.push(("engine", "engine and the rest", (total - used).max(0)));
    out
}

/// The latency chart: one stacked bar per turn (endpointing, STT, LLM first token, TTS first
/// byte, provider first audio, the rest), with a tick where the caller began hearing it.
fn latency_chart(turns: &[Value], stop_ms: i64) -> String {
    if turns.is_empty() {
        return "<p class=\"empty\">No turns.</p>".to_owned();
    }
    let scale_ms = turns
        .iter()
        .flat_map(|t| [num(&t["latency_ms"]), num(&t["heard_latency_ms"])])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1000) as f64;
    let (label_w, bar_w, row_h) = (70.0, 560.0, 24.0);
    let height = row_h * turns.len() as f64 + 24.0;
    let x = |ms: f64| label_w + bar_w * ms / scale_ms;
    let mut svg = format!(
        "<svg class=\"chart latency\" viewBox=\"0 0 {w} {height}\" width=\"{w}\" \
         height=\"{height}\" role=\"img\" aria-label=\"latency per turn\">",
        w = label_w + bar_w + 60.0
    );
    for (i, t) in turns.iter().enumerate() {
        let y = row_h * i as f64 + 4.0;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{ty}\" class=\"label\">turn {n}</text>",
            ty = y + 13.0,
            n = i + 1
        );
        let mut at = 0.0;
        for (class, label, w) in stages(t, stop_ms) {
            let _ = write!(
                svg,
                "<rect class=\"seg {class}\" x=\"{x0:.1}\" y=\"{y}\" width=\"{wd:.1}\" \
                 height=\"16\"><title>{label}: {w} ms</title></rect>",
                x0 = x(at),
                wd = (x(at + w as f64) - x(at)).max(0.0),
            );
            at += w as f64;
        }
        if let Some(total) = num(&t["latency_ms"]) {
            let _ = write!(
                svg,
                "<text x=\"{tx:.1}\" y=\"{ty}\" class=\"value\">{total} ms</text>",
                tx = x(total as f64) + 4.0,
                ty = y + 13.0
            );
        }
        if let Some(h) = num(&t["heard_latency_ms"]) {
            let _ = write!(
                svg,
                "<line class=\"heard\" x1=\"{hx:.1}\" x2=\"{hx:.1}\" y1=\"{y0}\" y2=\"{y1}\">\
                 <title>heard after {h} ms</title></line>",
                hx = x(h as f64),
                y0 = y - 2.0,
                y1 = y + 18.0
            );
        }
    }
    svg.push_str("</svg>");
    let legend = [
        ("endpointing", "endpointing"),
        ("stt", "STT"),
        ("llm", "LLM first token"),
        ("tts", "TTS first byte"),
        ("s2s", "provider first audio"),
        ("engine", "engine and the rest"),
        ("heard", "caller began hearing"),
    ]
    .iter()
    .map(|(c, l)| format!("<span class=\"key {c}\">{l}</span>"))
    .collect::<String>();
    format!("{svg}<p class=\"legend\">{legend}</p>")
}

/// Caller speech and agent audio on the call's media clock, barge-ins marked.
fn media_picture(turns: &[Value]) -> String {
    let end = turns
        .iter()
        .filter_map(|t| {
            let e = num(&t["user_end_ms"])?;
            Some(e + num(&t["latency_ms"]).unwrap_or(0) + num(&t["heard_ms"]).unwrap_or(0))
        })
        .max()
        .unwrap_or(0)
        .max(1000) as f64;
    let (w, lw) = (620.0, 60.0);
    let x = |ms: i64| lw + w * ms as f64 / end;
    let mut svg = format!(
        "<svg class=\"chart media\" viewBox=\"0 0 {tw} 56\" width=\"{tw}\" height=\"56\" \
         role=\"img\" aria-label=\"turns on the media clock\">\
         <text x=\"0\" y=\"16\" class=\"label\">caller</text>\
         <text x=\"0\" y=\"40\" class=\"label\">agent</text>",
        tw = lw + w + 10.0
    );
    for (i, t) in turns.iter().enumerate() {
        let (Some(s), Some(e)) = (num(&t["user_start_ms"]), num(&t["user_end_ms"])) else {
            continue;
        };
        let _ = write!(
            svg,
            "<rect class=\"caller\" x=\"{a:.1}\" y=\"4\" width=\"{b:.1}\" height=\"16\">\
             <title>turn {n}: caller {s}–{e} ms</title></rect>",
            a = x(s),
            b = (x(e) - x(s)).max(1.0),
            n = i + 1
        );
        if let (Some(l), Some(h)) = (num(&t["latency_ms"]), num(&t["heard_ms"])) {
            let class = if t["interrupted"].as_bool() == Some(true) {
                "agent interrupted"
            } else {
                "agent"
            };
            let _ = write!(
                svg,
                "<rect class=\"{class}\" x=\"{a:.1}\" y=\"28\" width=\"{b:.1}\" height=\"16\">\
                 <title>turn {n}: agent heard for {h} ms</title></rect>",
                a = x(e + l),
                b = (x(e + l + h) - x(e + l)).max(1.0),
                n = i + 1
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

fn turn_table(turns: &[Value]) -> String {
    if turns.is_empty() {
        return String::new();
    }
    let mut rows = String::new();
    for (i, t) in turns.iter().enumerate() {
        let interrupted = t["interrupted"].as_bool() == Some(true);
        let _ = write!(
            rows,
            "<tr class=\"{cls}\"><td class=\"num\">{n}</td><td>{s}–{e} ms</td>\
             <td class=\"words caller\">{text}</td><td class=\"words agent\">{agent}</td>\
             <td class=\"num\">{lat}</td><td class=\"num\">{heard_lat}</td>\
             <td class=\"num\">{heard}</td><td>{bi}</td></tr>",
            cls = if interrupted { "barge-in" } else { "" },
            n = i + 1,
            s = cell(&t["user_start_ms"]),
            e = cell(&t["user_end_ms"]),
            text = cell(&t["text"]),
            agent = cell(&t["agent_text"]),
            lat = ms(&t["latency_ms"]),
            heard_lat = ms(&t["heard_latency_ms"]),
            heard = ms(&t["heard_ms"]),
            bi = if interrupted { "barge-in" } else { "" },
        );
    }
    format!(
        "<table class=\"turns\"><thead><tr><th>#</th><th>caller speech</th>\
         <th>caller words</th><th>agent words as heard</th><th>latency</th>\
         <th>heard after</th><th>agent heard</th><th></th></tr></thead><tbody>{rows}</tbody>\
         </table>"
    )
}

fn timeline(d: &Value) -> String {
    let Some(events) = d["timeline"].as_array().filter(|e| !e.is_empty()) else {
        return String::new();
    };
    let rows: String = events
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{at}</td><td>{src}</td><td>{st}</td><td>{detail}</td></tr>",
                at = e["received_at_ms"].as_i64().map(utc).unwrap_or_default(),
                src = cell(&e["source"]),
                st = cell(&e["status"]),
                detail = cell(&e["detail"]),
            )
        })
        .collect();
    format!(
        "<h2>Timeline</h2><table class=\"timeline\"><thead><tr><th>received (UTC)</th>\
         <th>source</th><th>status</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stages_add_up_to_the_latency() {
        let t = json!({"latency_ms": 1500, "stt_ms": 200, "llm_ttft_ms": 300, "tts_ttfb_ms": 150});
        let s = stages(&t, 600);
        assert_eq!(s.iter().map(|x| x.2).sum::<i64>(), 1500);
        assert_eq!(s.last().map(|x| x.2), Some(250));
        assert!(stages(&json!({}), 600).is_empty());
        // Echo: nothing but endpointing and the engine.
        let s = stages(&json!({"latency_ms": 601}), 600);
        assert_eq!(
            s,
            vec![
                ("endpointing", "endpointing", 600),
                ("engine", "engine and the rest", 1)
            ]
        );
    }

    #[test]
    fn words_are_escaped() {
        let t = vec![json!({"user_start_ms": 1, "user_end_ms": 2, "text": "<script>x</script>"})];
        let h = turn_table(&t);
        assert!(h.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!h.contains("<script>"));
    }

    #[test]
    fn audio_only_when_recorded() {
        assert_eq!(audio(&json!({"call_sid": "CA1"})), "");
        assert_eq!(audio(&json!({"call_sid": "CA1", "audio": null})), "");
        let a = audio(
            &json!({"call_sid": "CA1", "audio": {"file": "/x/CA1.wav", "duration_ms": 1500}}),
        );
        assert!(
            a.contains("src=\"/console/calls/CA1/recording.wav\""),
            "{a}"
        );
        assert!(a.contains("1.5 s"), "{a}");
        assert_eq!(
            audio(&json!({"call_sid": "<x>", "audio": {"file": "f"}})),
            ""
        );
    }
}
