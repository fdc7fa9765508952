//! Twilio callbacks and call records: signature checks (403, the development switch, the public
//! URL behind a proxy), idempotent storage of retries, the recorder a live call uses, `GET
//! /calls` and `GET /calls/{sid}`, and records surviving a restart on a SQLite file.

mod twilio_double;

use axum::http::StatusCode;
use hark_gateway::api::{ApiState, StreamSummary, TurnRow};
use hark_gateway::signature;
use serde_json::json;
use twilio_double::harness::*;

const CALL: &str = "CA0123456789abcdef0123456789abcdef";

fn status_form(seq: &'static str, status: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("AccountSid", ACCOUNT),
        ("CallSid", CALL),
        ("CallStatus", status),
        ("SequenceNumber", seq),
        ("CallbackSource", "call-progress-events"),
        ("Direction", "outbound-api"),
        ("From", PHONE),
        ("To", "+14155550100"),
        ("Timestamp", "Tue, 31 Aug 2010 20:36:28 +0000"),
    ]
}

#[tokio::test]
async fn unsigned_or_badly_signed_callbacks_are_refused() {
    let st = state(base_env()).await;
    let form = status_form("0", "initiated");
    for uri in [
        "/api/twilio/status",
        "/api/twilio/recording",
        "/api/twilio/stream-status",
        "/api/webhooks/message-added",
    ] {
        let a = send(&st, form_request(uri, &form, None)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri} without a signature");
        let a = send(
            &st,
            form_request(uri, &form, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{uri} with a wrong signature"
        );
    }
    // Signed for another URL (the internal Host, not HARK_PUBLIC_URL): refused.
    let sig = signature::compute(AUTH_TOKEN, "https://internal:3000/api/twilio/status", &form);
    let a = send(&st, form_request("/api/twilio/status", &form, Some(&sig))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // A tampered parameter: refused.
    let mut tampered = form.clone();
    tampered[2] = ("CallStatus", "completed");
    let sig = signature::compute(AUTH_TOKEN, &format!("{PUBLIC}/api/twilio/status"), &form);
    let a = send(
        &st,
        form_request("/api/twilio/status", &tampered, Some(&sig)),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Correctly signed: accepted.
    let a = send(&st, signed_form("/api/twilio/status", &form)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn signature_url_variants_and_host_fallback() {
    // With HARK_PUBLIC_URL carrying a port, Twilio's port-stripped form is accepted too.
    let st = state(env_with(&[(
        "HARK_PUBLIC_URL",
        "https://hark.example.com:8443",
    )]))
    .await;
    let form = status_form("0", "initiated");
    let sig = signature::compute(
        AUTH_TOKEN,
        "https://hark.example.com/api/twilio/status",
        &form,
    );
    let a = send(&st, form_request("/api/twilio/status", &form, Some(&sig))).await;
    assert_eq!(a.status, StatusCode::OK);
    // Without HARK_PUBLIC_URL: https://<Host>.
    let st = state(env_with(&[("HARK_PUBLIC_URL", "")])).await;
    let sig = signature::compute(
        AUTH_TOKEN,
        "https://internal:3000/api/twilio/status?x=1",
        &form,
    );
    let a = send(
        &st,
        form_request("/api/twilio/status?x=1", &form, Some(&sig)),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn no_auth_token_refuses_unless_development_switch() {
    let st = state(env_with(&[("TWILIO_AUTH_TOKEN", "")])).await;
    let form = status_form("0", "initiated");
    let a = send(&st, signed_form("/api/twilio/status", &form)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["missing"], json!(["TWILIO_AUTH_TOKEN"]));
    let st = state(env_with(&[
        ("TWILIO_AUTH_TOKEN", ""),
        ("HARK_DEV_INSECURE", "no-signatures"),
    ]))
    .await;
    let a = send(&st, form_request("/api/twilio/status", &form, None)).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn status_callbacks_are_stored_once_and_ordered_by_sequence() {
    let st = state(base_env()).await;
    // Out of order and retried: answered (SequenceNumber 2) arrives before ringing (1).
    for (seq, status) in [
        ("0", "initiated"),
        ("2", "in-progress"),
        ("2", "in-progress"),
        ("1", "ringing"),
        ("0", "initiated"),
    ] {
        let mut form = status_form(seq, status);
        if status == "in-progress" {
            form.push(("AnsweredBy", "machine_end_beep"));
        }
        let a = send(&st, signed_form("/api/twilio/status", &form)).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, json!(""), "empty 200");
    }
    assert!(st.flush().await);
    let call = st.store().call(CALL).await.expect("read").expect("stored");
    let seqs: Vec<_> = call
        .timeline
        .iter()
        .map(|e| (e.sequence_number, e.status.as_str()))
        .collect();
    assert_eq!(
        seqs,
        [
            (Some(0), "initiated"),
            (Some(2), "in-progress"),
            (Some(1), "ringing")
        ]
    );
    assert_eq!(
        call.call.status.as_deref(),
        Some("in-progress"),
        "late ringing does not win"
    );
    assert_eq!(call.call.answered_by.as_deref(), Some("machine_end_beep"));
    assert_eq!(st.writer_stats().duplicates, 2);

    // The final status ends the call.
    let mut form = status_form("3", "completed");
    form.push(("CallDuration", "42"));
    send(&st, signed_form("/api/twilio/status", &form)).await;
    assert!(st.flush().await);
    let call = st.store().call(CALL).await.expect("read").expect("stored");
    assert_eq!(call.call.status.as_deref(), Some("completed"));
    assert_eq!(call.call.duration_s, Some(42));
    assert!(call.call.ended_at_ms.is_some());
}

#[tokio::test]
async fn recording_and_stream_callbacks_are_idempotent() {
    let st = state(base_env()).await;
    let rec = |status: &'static str| {
        vec![
            ("AccountSid", ACCOUNT),
            ("CallSid", CALL),
            ("RecordingSid", "RE0123456789abcdef0123456789abcdef"),
            (
                "RecordingUrl",
                "https://api.twilio.com/2010-04-01/Accounts/AC/Recordings/RE0123",
            ),
            ("RecordingStatus", status),
            ("RecordingDuration", "12"),
            ("RecordingChannels", "2"),
            ("RecordingSource", "OutboundAPI"),
        ]
    };
    for status in ["in-progress", "completed", "completed", "in-progress"] {
        let a = send(&st, signed_form("/api/twilio/recording", &rec(status))).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let stream = |event: &'static str| {
        vec![
            ("AccountSid", ACCOUNT),
            ("CallSid", CALL),
            ("StreamSid", "MZ0123456789abcdef0123456789abcdef"),
            ("StreamName", "agent"),
            ("StreamEvent", event),
            ("Timestamp", "2024-01-01T00:00:00Z"),
        ]
    };
    for event in ["stream-started", "stream-started", "stream-stopped"] {
        let a = send(
            &st,
            signed_form("/api/twilio/stream-status", &stream(event)),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    assert!(st.flush().await);
    let call = st.store().call(CALL).await.expect("read").expect("stored");
    assert_eq!(call.recordings.len(), 1);
    assert_eq!(
        call.recordings[0].status.as_deref(),
        Some("completed"),
        "a late in-progress does not win"
    );
    assert_eq!(call.recordings[0].channels, Some(2));
    let events: Vec<_> = call
        .timeline
        .iter()
        .map(|e| (e.source.as_str(), e.status.as_str()))
        .collect();
    assert_eq!(
        events,
        [("stream", "stream-started"), ("stream", "stream-stopped")]
    );
    assert_eq!(
        call.call.stream_sid.as_deref(),
        Some("MZ0123456789abcdef0123456789abcdef")
    );
}

#[tokio::test]
async fn missing_callback_fields_are_400() {
    let st = state(base_env()).await;
    let a = send(&st, signed_form("/api/twilio/status", &[("CallSid", CALL)])).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["field"], "CallStatus");
    let a = send(
        &st,
        signed_form(
            "/api/twilio/status",
            &[
                ("CallSid", CALL),
                ("CallStatus", "ringing"),
                ("SequenceNumber", "x"),
            ],
        ),
    )
    .await;
    assert_eq!(a.body["field"], "SequenceNumber");
}

async fn record_a_call(st: &ApiState) {
    let rec = st.recorder();
    rec.stream_started(
        CALL,
        "MZ0123456789abcdef0123456789abcdef",
        &[
            ("From".into(), "+14155550100".into()),
            ("To".into(), PHONE.into()),
            ("agent".into(), "support".into()),
        ],
    );
    for (i, latency) in [(0i64, 620i64), (1, 480), (2, 900)] {
        rec.turn(
            CALL,
            TurnRow {
                index: Some(i as u32),
                user_start_ms: 1000 + i * 5000,
                user_end_ms: 2500 + i * 5000,
                latency_ms: Some(latency),
                interrupted: i == 2,
                heard_ms: Some(1200),
                text: Some(format!("turn {i}")),
                agent_text: Some(format!("answer {i}")),
                heard_latency_ms: Some(latency + 20),
                stt_ms: Some(150),
                llm_ttft_ms: Some(300),
                tts_ttfb_ms: Some(150),
                first_audio_ms: None,
            },
        );
    }
    rec.stream_stopped(
        CALL,
        StreamSummary {
            duration_ms: 16_000,
            inbound_ms: 15_900,
            sent_ms: 7_000,
            turns: 3,
            barge_ins: 1,
            malformed: 0,
            ended: "stop".into(),
            ..StreamSummary::default()
        },
    );
}

#[tokio::test]
async fn recorder_and_call_detail() {
    let st = state(base_env()).await;
    record_a_call(&st).await;
    assert!(st.flush().await);
    let a = send(&st, get(&format!("/calls/{CALL}"), Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let b = &a.body;
    assert_eq!(b["call_sid"], CALL);
    assert_eq!(b["from"], "+14155550100");
    assert_eq!(b["agent"], "support");
    assert_eq!(b["stream_sid"], "MZ0123456789abcdef0123456789abcdef");
    assert_eq!(b["turns"].as_array().map(Vec::len), Some(3));
    assert_eq!(b["turns"][0]["text"], "turn 0");
    assert_eq!(b["turns"][0]["agent_text"], "answer 0");
    assert_eq!(b["turns"][0]["heard_latency_ms"], 640);
    assert_eq!(b["turns"][0]["stt_ms"], 150);
    assert_eq!(b["turns"][0]["first_audio_ms"], serde_json::Value::Null);
    assert_eq!(b["turns"][2]["interrupted"], true);
    assert_eq!(
        b["latency"],
        json!({"turns": 3, "mean_ms": 666, "p50_ms": 620, "p95_ms": 900, "max_ms": 900})
    );
    assert_eq!(b["summary"]["barge_ins"], 1);
    assert_eq!(b["stream_parameters"]["agent"], "support");

    assert_eq!(
        send(&st, get(&format!("/calls/{CALL}"), None)).await.status,
        StatusCode::UNAUTHORIZED
    );
    let a = send(
        &st,
        get("/calls/CA00000000000000000000000000000000", Some(HARK_KEY)),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_calls_by_status() {
    let st = state(base_env()).await;
    for (i, status) in ["completed", "in-progress", "completed"].iter().enumerate() {
        let sid = format!("CA{i:032}");
        let form = vec![
            ("CallSid", sid.as_str()),
            ("CallStatus", status),
            ("SequenceNumber", "0"),
        ];
        send(&st, signed_form("/api/twilio/status", &form)).await;
    }
    assert!(st.flush().await);
    let a = send(&st, get("/calls", Some(HARK_KEY))).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["calls"].as_array().map(Vec::len), Some(3));
    let a = send(&st, get("/calls?status=completed&limit=10", Some(HARK_KEY))).await;
    let calls = a.body["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| c["status"] == "completed"));
    let a = send(&st, get("/calls?limit=1", Some(HARK_KEY))).await;
    assert_eq!(a.body["calls"].as_array().map(Vec::len), Some(1));
    for bad in [
        "/calls?limit=0",
        "/calls?limit=501",
        "/calls?limit=x",
        "/calls?status=DROP%20TABLE",
    ] {
        let a = send(&st, get(bad, Some(HARK_KEY))).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn records_survive_a_restart() {
    let db = TempDb::new("restart");
    let env = env_with(&[("HARK_DATABASE_URL", &db.url())]);
    {
        let st = state(env.clone()).await;
        record_a_call(&st).await;
        let a = send(
            &st,
            signed_form("/api/twilio/status", &status_form("0", "initiated")),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(st.flush().await);
        st.store().close().await;
    }
    assert!(db.path.exists(), "the SQLite file was created");
    let st = state(env).await;
    let call = st
        .store()
        .call(CALL)
        .await
        .expect("read")
        .expect("still there");
    assert_eq!(call.turns.len(), 3);
    // hark's stream-started and stream-stopped, Twilio's status callback.
    let timeline: Vec<_> = call
        .timeline
        .iter()
        .map(|e| (e.source.as_str(), e.status.as_str()))
        .collect();
    assert_eq!(
        timeline,
        [
            ("media", "stream-started"),
            ("media", "stream-stopped"),
            ("status", "initiated")
        ]
    );
    // The retry of a callback stored before the restart is still a duplicate.
    send(
        &st,
        signed_form("/api/twilio/status", &status_form("0", "initiated")),
    )
    .await;
    assert!(st.flush().await);
    assert_eq!(st.writer_stats().duplicates, 1);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(st.store().pool())
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
}
