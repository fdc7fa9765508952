//! `POST /v1/audio/speech`: `response_format: "pcm"` only; speech-like 24 kHz s16le mono audio
//! for the input text ([`speech_pcm`]), in [`Latency::chunk_ms`](super::Latency::chunk_ms)
//! chunks paced at [`Latency::audio_speed`](super::Latency::audio_speed) × real time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::plan::{Plan, bad_request, check_auth, fault_plan, ms, record, respond, take_fault};
use super::{Endpoint, Fault, State, lock};

/// Speech-like PCM (24 kHz s16le mono) for `text`: each syllable (vowel group) of each word a
/// voiced tone (fundamental 120–200 Hz with two harmonics, 10 ms attack, decay), 40 ms between
/// syllables, 90 ms between words, 250 ms after `.`/`!`/`?`. Scaled so its length is about
/// `ms_per_char` per character.
pub fn speech_pcm(text: &str, ms_per_char: u64) -> Vec<i16> {
    const RATE: f64 = 24_000.0;
    let chars = text.chars().count().max(1) as f64;
    let target_s = chars * ms_per_char as f64 / 1000.0;
    // Plan segments: (voiced, seconds) before scaling.
    let mut plan: Vec<(bool, f64)> = Vec::new();
    for word in text.split_whitespace() {
        let lower = word.to_lowercase();
        let mut syllables = 0;
        let mut in_vowel = false;
        for c in lower.chars() {
            let v = "aeiouy".contains(c);
            if v && !in_vowel {
                syllables += 1;
            }
            in_vowel = v;
        }
        let syllables = syllables.max(1);
        for s in 0..syllables {
            if s > 0 {
                plan.push((false, 0.04));
            }
            plan.push((true, 0.16));
        }
        let pause = if word.ends_with(['.', '!', '?']) {
            0.25
        } else {
            0.09
        };
        plan.push((false, pause));
    }
    if plan.is_empty() {
        plan.push((true, 0.2));
    }
    let total: f64 = plan.iter().map(|p| p.1).sum();
    let scale = if total > 0.0 { target_s / total } else { 1.0 };
    let mut out = Vec::with_capacity((target_s * RATE) as usize + 1);
    let mut k = 0usize;
    for (voiced, secs) in plan {
        let n = (secs * scale * RATE) as usize;
        if !voiced {
            out.extend(std::iter::repeat_n(0i16, n));
            continue;
        }
        k += 1;
        let f0 = 120.0 + 80.0 * ((k * 7 % 11) as f64 / 10.0);
        for i in 0..n {
            let t = i as f64 / RATE;
            let attack = (t / 0.010).min(1.0);
            let release = ((n - i) as f64 / (RATE * 0.015)).min(1.0);
            let decay = (-t * 3.0).exp();
            let w = 2.0 * std::f64::consts::PI * f0 * t;
            let v = w.sin() + 0.5 * (2.0 * w).sin() + 0.25 * (3.0 * w).sin();
            out.push((v / 1.75 * 9000.0 * attack * release * decay) as i16);
        }
    }
    out
}

pub(super) async fn speech(state: Arc<Mutex<State>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (plan, resp, fault) = {
        let mut st = lock(&state);
        let lat = st.script.latency;
        let input = request.get("input").and_then(Value::as_str);
        if let Some((p, r)) = check_auth(&st, &headers) {
            (p, r, None)
        } else if !request.is_object()
            || request.get("model").and_then(Value::as_str).is_none()
            || input.is_none()
            || request.get("voice").is_none()
        {
            let (p, r) = bad_request("'model', 'input' and 'voice' are required");
            (p, r, None)
        } else if request.get("response_format").and_then(Value::as_str) != Some("pcm") {
            let (p, r) = bad_request("this double only answers response_format: pcm");
            (p, r, None)
        } else {
            let fault = take_fault(&mut st, Endpoint::Speech);
            if let Some((p, r)) = fault.as_ref().and_then(|f| fault_plan(f, ms(lat.ttfb_ms))) {
                (p, r, fault)
            } else {
                let pcm = speech_pcm(input.unwrap_or(""), st.script.ms_per_char);
                let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
                let chunk = (48 * lat.chunk_ms.max(1)) as usize;
                let gap = if lat.audio_speed > 0.0 {
                    Duration::from_secs_f64(lat.chunk_ms as f64 / 1000.0 / lat.audio_speed)
                } else {
                    Duration::ZERO
                };
                let mut pieces: Vec<(Duration, Vec<u8>)> = bytes
                    .chunks(chunk)
                    .enumerate()
                    .map(|(i, c)| (if i == 0 { Duration::ZERO } else { gap }, c.to_vec()))
                    .collect();
                let drop_at_end = matches!(fault, Some(Fault::Drop | Fault::StreamError));
                if drop_at_end {
                    pieces.truncate(1);
                }
                (
                    Plan {
                        status: 200,
                        content_type: "audio/pcm",
                        headers: Vec::new(),
                        pieces,
                        drop_at_end,
                        head_delay: ms(lat.ttfb_ms),
                    },
                    Vec::new(),
                    fault,
                )
            }
        }
    };
    let plan = record(&state, at, Endpoint::Speech, request, plan, resp, fault);
    respond(plan).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_length_follows_the_text() {
        let short = speech_pcm("Hi.", 70);
        let long = speech_pcm("This is a much longer sentence than the first one.", 70);
        assert!((short.len() as f64 / 24.0 - 210.0).abs() < 20.0);
        assert!((long.len() as f64 / 24.0 - 50.0 * 70.0).abs() < 50.0);
        let db = hark_codecs::pcm::rms_dbfs(&long);
        assert!((-30.0..-10.0).contains(&db), "{db} dBFS");
    }
}
