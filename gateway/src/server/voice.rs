//! `POST /voice` (and `/api/twilio/voice`): Twilio's voice webhook. Checks the signature and
//! answers TwiML that connects the call to the Media Stream (`<Connect><Stream>` with one
//! `<Parameter>` per per-call value), or `<Dial>` for a Voice SDK browser client.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::{AppState, STREAM_PATH, bad_request, host};
use crate::config::Config;
use crate::signature;
use crate::twiml::{self, Connect, Stream};

/// The URL Twilio requested (for signatures): public base URL + path + query.
fn request_url(cfg: &Config, headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let base = cfg.base_url(host(headers))?;
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    Some(format!("{base}{pq}"))
}

/// `POST /voice`: Twilio's voice webhook.
pub(super) async fn voice(
    State(st): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Response {
    // A form POST, or a JSON body Twilio signed with `bodySHA256` in the query.
    let body: &[u8] = if method == Method::POST { &body } else { &[] };
    let form: Vec<(String, String)> = if let Some(api) = &st.api {
        match api.verify_twilio("voice", &headers, &uri, body) {
            Ok(params) => params,
            Err(e) => {
                warn!(error = %e, "voice webhook refused");
                return e.into_response();
            }
        }
    } else {
        match crate::api::webhook_params(&headers, &uri, body) {
            Ok(f) => f,
            Err(e) => return e.into_response(),
        }
    };
    if st.api.is_none()
        && let Some(v) = &st.validator
    {
        let Some(url) = request_url(&st.config, &headers, &uri) else {
            return bad_request("no Host header and HARK_PUBLIC_URL is unset");
        };
        let sig = headers.get(signature::HEADER).and_then(|h| h.to_str().ok());
        let res = v.validate_webhook(&url, &form, body, sig);
        if let Err(e) = res {
            metrics::counter!("hark_signature_failures_total", "route" => "voice").increment(1);
            warn!(error = %e, "voice webhook refused");
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN);
            return (status, format!("X-Twilio-Signature check failed: {e}")).into_response();
        }
    }
    // HARK_AGENT=elevenlabs-direct: Twilio connects to ElevenLabs itself.
    if st.config.agent == crate::config::AgentKind::ElevenLabsDirect
        && let crate::agents::AgentSettings::ElevenLabs(s) = &st.config.agent_settings
    {
        return crate::agents::elevenlabs::direct_voice(s, &form, &st.config.after_connect).await;
    }
    let param = |name: &str| -> Option<&str> {
        form.iter()
            .chain(query.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let xml = |s: String| ([(header::CONTENT_TYPE, twiml::CONTENT_TYPE)], s).into_response();

    // A Voice SDK (browser) client dialling a phone number: bridge it with <Dial>.
    let from = param("From").unwrap_or_default();
    if from.starts_with("client:")
        && let Some(to) = param("To").filter(|t| crate::api::calls::is_e164(t))
    {
        let Some(caller_id) = &st.config.twilio_phone_number else {
            warn!("browser call to {to}: TWILIO_PHONE_NUMBER is unset");
            return xml(twiml::say_hangup_lossy(
                "This line is not configured for outgoing calls. Goodbye.",
            ));
        };
        return match twiml::dial_number(to, caller_id) {
            Ok(s) => xml(s),
            Err(e) => bad_request(format!("cannot dial {to}: {e}")),
        };
    }

    let Some(base) = st.config.base_url(host(&headers)) else {
        return bad_request(
            "no Host header and HARK_PUBLIC_URL is unset: cannot build the stream URL",
        );
    };
    let base_for_callbacks = base.clone();
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base
    };
    let mut stream = Stream::new(format!("{ws_base}{STREAM_PATH}"));
    if st.api.is_some() {
        stream = stream.status_callback(
            format!("{base_for_callbacks}/api/twilio/stream-status"),
            None,
        );
    }
    // `Direction` (inbound, outbound-api, …) for the operator's per-call context.
    for name in ["CallSid", "From", "To", "Direction"]
        .into_iter()
        .chain(st.config.stream_params.iter().map(String::as_str))
    {
        if let Some(v) = param(name) {
            stream = stream.parameter(name, v);
        }
    }
    match twiml::agent_connect(&Connect::new(stream), &st.config.after_connect) {
        Ok(s) => xml(s),
        Err(e) => bad_request(format!("cannot build TwiML: {e}")),
    }
}
