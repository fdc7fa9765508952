//! Transfers: the agent asked to hand the call to a number or SIP URI and its words played;
//! the engine's driver asks [`Transfers`] (its [`CallControl`]) to redirect the call with a
//! Twilio REST call update, and feeds the outcome back into the call's loop.

use std::sync::Arc;
use std::time::Duration;

use hark_engine::TransferOutcome;
use hark_engine::io::{CallControl, TransferFuture};
use tracing::{info, warn};

use crate::api::ApiState;
use crate::twiml;

/// The gateway's call control for one call: transfers through Twilio's REST API (the gateway
/// API's credentials; without the API every transfer fails and the call goes on).
#[derive(Debug, Clone)]
pub(super) struct Transfers {
    pub(super) api: Option<Arc<ApiState>>,
}

impl CallControl for Transfers {
    fn transfer(&mut self, call_sid: Option<&str>, to: &str) -> TransferFuture {
        let (api, sid, to) = (self.api.clone(), call_sid.map(str::to_owned), to.to_owned());
        Box::pin(async move { transfer(api.as_deref(), sid.as_deref(), &to).await })
    }
}

/// Hands the call to `to` after the agent asked for a transfer and its words played: a call
/// update `POST …/Calls/{CallSid}.json` with `Twiml=<Response><Dial><Number|Sip>…` (Twilio REST
/// API, `UpdateCallRequest`; new TwiML ends the `<Connect><Stream>` from Twilio's side). A
/// refusal that surely was not applied (429, 503, or no connection) is tried once more after
/// 500 ms; a timeout or another 5xx is not (Twilio may have applied the update).
/// Counted in `hark_transfers_total{outcome}` (`ok`, `failed`, `not_configured`).
///
/// A failure says why the call could not be redirected (no credentials or CallSid, Twilio's
/// refusal), for the agent and the call record.
async fn transfer(api: Option<&ApiState>, call_sid: Option<&str>, to: &str) -> TransferOutcome {
    let outcome = |o: &'static str| metrics::counter!("hark_transfers_total", "outcome" => o);
    let failed = |reason: String| TransferOutcome::Failed { reason };
    // It goes into the request path.
    let call_sid = call_sid.filter(|sid| crate::api::twilio_rest::is_sid(sid, "CA"));
    let target = match (call_sid, api.map(|a| a.twilio())) {
        (Some(sid), Some(Ok(rest))) => Ok((sid, rest)),
        (None, _) => Err("the stream gave no valid CallSid".to_string()),
        (_, None) => Err("the gateway API is off".to_string()),
        (_, Some(Err(e))) => Err(e.to_string()),
    };
    let (sid, rest) = match target {
        Ok(t) => t,
        Err(why) => {
            outcome("not_configured").increment(1);
            warn!(to, reason = why, "transfer not possible");
            return failed(why);
        }
    };
    let twiml = match twiml::transfer(to) {
        Ok(x) => x,
        Err(e) => {
            outcome("failed").increment(1);
            warn!(to, error = %e, "transfer target cannot go into TwiML");
            return failed(e.to_string());
        }
    };
    let form = [("Twiml".to_string(), twiml)];
    let mut tries = 0;
    loop {
        tries += 1;
        match rest.update_call(sid, &form).await {
            Ok(call) => {
                outcome("ok").increment(1);
                info!(
                    to,
                    status = call.status.as_deref().unwrap_or(""),
                    "call transferred"
                );
                return TransferOutcome::Redirected;
            }
            Err(e) => {
                // Only when Twilio surely did not apply it (rate limited, unavailable, never
                // reached): a second `<Dial>` would restart a transfer already ringing, and a
                // 500/502/504 may come after the update was applied.
                let retry = match &e {
                    crate::api::ApiError::Twilio(t) => t.status == 429 || t.status == 503,
                    e => crate::api::twilio_rest::is_connect_failure(e),
                };
                if retry && tries < 2 {
                    warn!(to, error = %e, "transfer failed: trying once more");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                outcome("failed").increment(1);
                warn!(to, error = %e, "transfer failed: the call goes on");
                return failed(e.to_string());
            }
        }
    }
}
