//! Twilio's asynchronous answering machine detection (`POST /api/twilio/amd`) and the live
//! calls it is routed to.
//!
//! An outbound call placed with `machine_detection` (see [`super::calls`]) asks Twilio for
//! `AsyncAmd=true` with `AsyncAmdStatusCallback` = this route: the call connects at once and,
//! while it runs, Twilio POSTs the verdict — a form signed with `X-Twilio-Signature`, with
//! `CallSid`, `AccountSid`, `AnsweredBy` (`human`, `machine_start`, `machine_end_beep`,
//! `machine_end_silence`, `machine_end_other`, `fax`, `unknown`) and
//! `MachineDetectionDuration` (ms). The signature policy is the other callbacks' (403 on a bad
//! or missing signature). The verdict is recorded like a call progress callback (status
//! `in-progress` — detection only runs on an answered call — with its `AnsweredBy`, so the
//! call's record gets `answered_by`) and sent to the live call with that `CallSid` on this
//! node ([`LiveCalls`]), whose agent acts on it (every built-in agent leaves its
//! voicemail message on `machine_end_*`). On PostgreSQL, a verdict for a call not live on this
//! node is published to the other nodes ([`super::cluster`]), and the node running the call
//! hands it over. A call that is over gets nothing; the answer is 200 either way (Twilio
//! retries other answers). Counted in `hark_amd_total{answered_by, routed}` (`routed`: `true`
//! when a live call here got it, `published` when it went to the other nodes, else `false`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hark_engine::{AnsweredBy, CallNotice};
use tokio::sync::mpsc;

use super::recorder::Op;
use super::store::StatusEvent;
use super::{ApiError, ApiState, now_ms};

/// The live calls of this node by `CallSid`, each with the channel its driver reads notices
/// from ([`hark_engine::io::WithNotices`]).
#[derive(Debug, Default)]
pub struct LiveCalls {
    calls: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<CallNotice>)>>,
    next: AtomicU64,
}

/// A call's place in [`LiveCalls`]; dropping it takes the call out (unless a later stream of
/// the same call took its place).
#[derive(Debug)]
pub struct LiveCall {
    calls: Arc<LiveCalls>,
    call_sid: String,
    id: u64,
}

impl Drop for LiveCall {
    fn drop(&mut self) {
        let mut calls = self.calls.lock();
        if calls
            .get(&self.call_sid)
            .is_some_and(|(id, _)| *id == self.id)
        {
            calls.remove(&self.call_sid);
        }
    }
}

impl LiveCalls {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::UnboundedSender<CallNotice>)>> {
        // A panic elsewhere while holding it leaves a usable map.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the live call `call_sid`, whose notices go to `tx`, until the returned
    /// handle is dropped. A second stream of the same call replaces the first.
    pub fn register(
        self: &Arc<Self>,
        call_sid: &str,
        tx: mpsc::UnboundedSender<CallNotice>,
    ) -> LiveCall {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(call_sid.to_owned(), (id, tx));
        LiveCall {
            calls: self.clone(),
            call_sid: call_sid.to_owned(),
            id,
        }
    }

    /// Sends `notice` to the live call `call_sid`; `false` when it is not live on this node.
    pub fn notify(&self, call_sid: &str, notice: CallNotice) -> bool {
        self.lock()
            .get(call_sid)
            .is_some_and(|(_, tx)| tx.send(notice).is_ok())
    }

    /// Live calls registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no call is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn first<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `POST /api/twilio/amd`: see the module docs.
///
/// # Errors
/// 403/503 by the signature policy; 400 without `CallSid` or `AnsweredBy`; 503 when the
/// record queue is full.
pub(crate) async fn amd(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form = st.verify_twilio("amd", &headers, &uri, &body)?;
    let call_sid = first(&form, "CallSid")
        .ok_or_else(|| ApiError::field("CallSid", "required"))?
        .to_owned();
    let answered = first(&form, "AnsweredBy")
        .ok_or_else(|| ApiError::field("AnsweredBy", "required"))?
        .to_owned();
    let verdict = AnsweredBy::from_twilio(&answered);
    let routed = if st
        .live_calls()
        .notify(&call_sid, CallNotice::AnsweredBy(verdict))
    {
        "true"
    } else if super::cluster::Cluster::publish(st.store(), &call_sid, &answered).await {
        "published"
    } else {
        "false"
    };
    tracing::info!(
        call_sid,
        answered_by = answered,
        duration_ms = first(&form, "MachineDetectionDuration").unwrap_or(""),
        routed,
        "answering machine detection"
    );
    metrics::counter!("hark_amd_total",
        "answered_by" => verdict.as_str(), "routed" => routed)
    .increment(1);
    let event = StatusEvent {
        call_sid,
        status: "in-progress".into(),
        sequence_number: None,
        answered_by: Some(answered),
        timestamp: None,
        call_duration_s: None,
        direction: None,
        from: None,
        to: None,
        params: form,
    };
    st.writer.enqueue(Op::Status(event, now_ms())).await?;
    metrics::counter!("hark_webhooks_total", "kind" => "amd").increment(1);
    Ok(StatusCode::OK.into_response())
}
