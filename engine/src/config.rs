//! Per-call settings: VAD, turn-taking, barge-in and playout. All durations are in ms.
//!
//! Defaults follow `DESIGN.md` ("Turn-taking defaults") and what peer systems use
//! (`shared/reference/anchors.md`): end of turn after 600 ms of silence, ≤ 200 ms of agent
//! audio queued at Twilio. Speech start and barge-in need 40 ms of caller voice (at first the
//! anchors' 60 and 80 ms; barge-in 60 from 2026-12-03, both 40 from 2026-12-04, measured on
//! `hark bench turns`: see [`TurnConfig::min_interruption_ms`]).

use hark_codecs::SampleRate;

/// How eagerly webrtc-vad calls a frame speech (its "mode"; 0 = least aggressive, 3 = most).
/// Higher modes reject more noise and miss more soft speech.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadAggressiveness {
    /// Mode 0, "quality".
    Quality,
    /// Mode 1, "low bitrate".
    LowBitrate,
    /// Mode 2, "aggressive".
    Aggressive,
    /// Mode 3, "very aggressive".
    VeryAggressive,
}

impl VadAggressiveness {
    /// From the 0–3 mode number used by WebRTC; `None` outside that range.
    pub fn from_level(level: u8) -> Option<Self> {
        Some(match level {
            0 => Self::Quality,
            1 => Self::LowBitrate,
            2 => Self::Aggressive,
            3 => Self::VeryAggressive,
            _ => return None,
        })
    }
}

/// Which voice activity detector a call runs ([`crate::vad::VoiceDetector`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadKind {
    /// webrtc-vad behind the adaptive level gate (`noise_margin_db`): about 1 µs per frame,
    /// good on clean lines, deaf to soft speech in stationary noise and fooled by background
    /// voices (`hark bench turns`).
    Webrtc,
    /// Silero VAD (v6, silero-vad 6.2.3; its 8 kHz network, a pure-Rust forward pass) on every
    /// 32 ms window: the reference.
    Silero,
    /// A level stage decides silence and steady noise far below speech; Silero runs only when
    /// that stage is unsure; a foreground gate tracks the caller's level so background voices
    /// well below it do not hold a turn open ([`crate::vad::HybridVad`]).
    Hybrid,
}

impl VadKind {
    /// From its name: `webrtc`, `silero`, `hybrid`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "webrtc" => Self::Webrtc,
            "silero" => Self::Silero,
            "hybrid" => Self::Hybrid,
            _ => return None,
        })
    }

    /// Its name, as [`VadKind::from_name`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Webrtc => "webrtc",
            Self::Silero => "silero",
            Self::Hybrid => "hybrid",
        }
    }
}

/// Voice activity detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadConfig {
    /// Which detector (default [`VadKind::Hybrid`]: on `hark bench turns` as good as webrtc-vad
    /// on clean lines at its cost, and near or above Silero in noise). `silero` and `hybrid` run
    /// at 8 kHz whatever `rate` says.
    pub kind: VadKind,
    /// Silero speech probability, in %, above which a window is speech (default 50); it stays
    /// speech down to 15 points less (Silero's own `VADIterator` hysteresis).
    pub speech_threshold_pct: u8,
    /// Aggressiveness (default [`VadAggressiveness::Aggressive`], mode 2).
    pub aggressiveness: VadAggressiveness,
    /// Rate the VAD runs at: 8 kHz (the wire rate, default, no resampling delay) or 16 kHz
    /// (after the streaming resampler; adds its 5 ms delay).
    pub rate: SampleRate,
    /// Energy gate: a frame counts as voiced only if its level is at least this many dB above
    /// the noise floor (default 10). webrtc-vad alone calls steady background noise around
    /// -40 dBFS (crowd, room, TV) speech; the gate stops that noise from holding a turn open
    /// or interrupting the agent. 0 disables the adaptive gate.
    pub noise_margin_db: u8,
    /// The noise floor is the quietest 20 ms frame level within this window (default 1500).
    pub noise_window_ms: u32,
    /// Frames quieter than this never count as voiced (default -55 dBFS; a quiet phone line
    /// sits near -65 dBFS).
    pub min_level_dbfs: i16,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            kind: VadKind::Hybrid,
            speech_threshold_pct: 50,
            aggressiveness: VadAggressiveness::Aggressive,
            rate: SampleRate::HZ_8000,
            noise_margin_db: 10,
            noise_window_ms: 1500,
            min_level_dbfs: -55,
        }
    }
}

/// Turn-taking (endpointing) and barge-in thresholds, all in ms of media time.
/// The VAD decides per 20 ms frame, so thresholds are effectively rounded up to 20 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnConfig {
    /// Window in which voiced frames are counted to declare speech start (default 100).
    pub start_window_ms: u32,
    /// Voiced ms needed within `start_window_ms` to declare speech start (default 40, i.e. two
    /// voiced 20 ms frames; 60 until 2026-12-04). A barge-in needs it as well as
    /// `min_interruption_ms`.
    pub start_voiced_ms: u32,
    /// Silence after the last voiced frame that ends the caller's turn (default 600).
    pub stop_ms: u32,
    /// Utterances shorter than this (first to last voiced frame) are discarded as noise
    /// rather than handed to the agent as a turn (default 200).
    pub min_utterance_ms: u32,
    /// Caller voice needed while the agent speaks before it counts as a barge-in (default 40,
    /// the same as the speech start's `start_voiced_ms`, below which nothing is speech anyway).
    /// Shorter sounds (a one-frame click) do not stop the agent. With the defaults `clear` is
    /// emitted 40 ms of media after the first voiced frame began on a clean line. `hark bench
    /// turns` (README "Turn-taking benchmark"): 80 → 60 made `clear` p90 20–40 ms sooner in
    /// noise at 10 dB with the same false barge-ins; 60 → 40 (with `start_voiced_ms`) another
    /// 20 ms at p50 and p90 (10 dB p90 118–137 ms), at the price of more false barge-ins in
    /// pink noise at 5 dB.
    pub min_interruption_ms: u32,
    /// A barge-in first only holds the agent's audio (Twilio `clear`, the unheard rest kept):
    /// once the caller's voice spans `min_utterance_ms` (or `backchannel_max_ms` when set) it
    /// is confirmed (the agent is told, its answer dropped); if the speech is dropped as a
    /// blip (a cough, a click), ends as a backchannel, or this long passes without
    /// confirmation (noise), the agent plays on from where the caller stopped hearing it
    /// (default 1500; 0: every barge-in is confirmed at once, as before). LiveKit Agents'
    /// `false_interruption_timeout` is the same idea (2 s).
    pub resume_after_ms: u32,
    /// Caller voice (first to last voiced frame) shorter than this over the agent is a
    /// backchannel ("uh-huh", "okay"): the agent plays on and the speech is not a turn
    /// (default 0: off). Duration alone cannot tell "uh-huh" from "No!": the benchmark's
    /// backchannels last 310–670 ms, and its bench sessions hold real 370 ms barge-ins; 700
    /// stops backchannels interrupting and one-word interruptions too (`hark bench turns`).
    pub backchannel_max_ms: u32,
    /// With an agent that can tell a backchannel by its words ([`crate::Agent::checks_backchannels`]:
    /// the cascade, through its STT), a caller turn over a held barge-in shorter than this
    /// (first to last voiced frame) is checked by its words instead of its duration: the
    /// agent's audio stays held until the agent's verdict, so "uh-huh" lets it play on and a
    /// short "No!" still interrupts. Caller voice that lasts this long confirms the barge-in at
    /// once (default 1000: the benchmark's backchannels last 310–670 ms; 0: off, the duration
    /// rule above decides).
    pub backchannel_check_ms: u32,
    /// A turn longer than this is ended by force (default 30 000), which bounds the memory a
    /// call holds for one utterance (8 kHz: 16 KB per second).
    pub max_utterance_ms: u32,
    /// Audio kept from before the detected speech start and prepended to the utterance, so
    /// the first syllable is not lost (default 200).
    pub pre_roll_ms: u32,
    /// What ends a caller turn (default [`EndOfTurn::Silence`]: `stop_ms` of silence).
    pub end_of_turn: EndOfTurn,
    /// With [`EndOfTurn::SmartTurn`]: silence after the last voiced frame before the model is
    /// asked whether the turn is complete (default 200; pipecat asks after its VAD's 200 ms).
    pub model_probe_ms: u32,
    /// With [`EndOfTurn::SmartTurn`]: the model's probability of "complete", in percent, at
    /// or above which the turn ends as soon as the answer comes (default 95: at the model's
    /// own 50 it calls two thirds of the benchmark's mid-sentence pauses complete).
    pub model_threshold_pct: u8,
    /// With [`EndOfTurn::SmartTurn`]: the silence that ends a turn the model called unfinished,
    /// or whose answer has not come yet (default 1000). When the model cannot answer (its pool
    /// is busy or it failed to load), `stop_ms` applies as without it.
    pub model_stop_ms: u32,
}

/// What ends a caller turn ([`TurnConfig::end_of_turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndOfTurn {
    /// `stop_ms` of silence after the last voiced frame.
    #[default]
    Silence,
    /// Smart Turn v3.2 (pipecat's local end-of-turn model, BSD-2; [`crate::smart_turn`]) is
    /// asked after `model_probe_ms` of silence: "complete" ends the turn at once, "unfinished"
    /// waits up to `model_stop_ms` of silence. The call asks through
    /// [`crate::Output::TurnCheck`]; the driver answers off the call workers.
    SmartTurn,
}

impl EndOfTurn {
    /// By name: `silence` or `smart-turn` (any case, trimmed).
    pub fn from_name(name: &str) -> Option<EndOfTurn> {
        match name.trim().to_ascii_lowercase().as_str() {
            "silence" => Some(EndOfTurn::Silence),
            "smart-turn" | "smart_turn" | "smartturn" => Some(EndOfTurn::SmartTurn),
            _ => None,
        }
    }

    /// The name [`EndOfTurn::from_name`] reads.
    pub fn name(self) -> &'static str {
        match self {
            EndOfTurn::Silence => "silence",
            EndOfTurn::SmartTurn => "smart-turn",
        }
    }
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            start_window_ms: 100,
            start_voiced_ms: 40,
            stop_ms: 600,
            min_utterance_ms: 200,
            min_interruption_ms: 40,
            resume_after_ms: 1_500,
            backchannel_max_ms: 0,
            backchannel_check_ms: 1_000,
            max_utterance_ms: 30_000,
            pre_roll_ms: 200,
            end_of_turn: EndOfTurn::Silence,
            model_probe_ms: 200,
            model_threshold_pct: 95,
            model_stop_ms: 1_000,
        }
    }
}

/// Outbound playout pacing and marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Most agent audio queued at Twilio ahead of real time (default 200). A `clear` drops at
    /// most this much; more lead only hides network jitter.
    pub lead_ms: u32,
    /// Audio per outbound `media` message (default 20, as Twilio sends inbound).
    pub frame_ms: u32,
    /// Top-up size (default 60): once audio is playing, hark waits until the audio queued at
    /// Twilio has fallen `refill_ms` below `lead_ms` (or `refill_ms - frame_ms` when the call
    /// wakes anyway, e.g. for an inbound frame) and then tops it up to `lead_ms` in one write,
    /// so a playing call costs one socket write per `refill_ms` instead of one wake-up and
    /// one write per frame. Clamped to `frame_ms..=lead_ms`; `frame_ms` sends frame by frame.
    pub refill_ms: u32,
    /// A `mark` is sent after at least this much audio (default 100) and at the end of every
    /// utterance. "Heard" is known to this granularity.
    pub mark_every_ms: u32,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            lead_ms: 200,
            frame_ms: 20,
            refill_ms: 60,
            mark_every_ms: 100,
        }
    }
}

/// Everything a [`crate::Call`] needs to know up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallConfig {
    /// VAD settings.
    pub vad: VadConfig,
    /// Turn-taking and barge-in.
    pub turn: TurnConfig,
    /// Playout.
    pub playout: PlayoutConfig,
    /// Rate of the PCM handed to the agent (utterances and streamed frames): 8 or 16 kHz.
    pub agent_rate: SampleRate,
    /// Inbound text frames longer than this (bytes) are counted and skipped (default 65 536;
    /// a 20 ms `media` message is about 300 bytes).
    pub max_message_bytes: usize,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            vad: VadConfig::default(),
            turn: TurnConfig::default(),
            playout: PlayoutConfig::default(),
            agent_rate: SampleRate::HZ_8000,
            max_message_bytes: 64 * 1024,
        }
    }
}

/// The custom parameters (TwiML `<Parameter name="…" value="…"/>` inside `<Stream>`, seen in
/// the `start` message's `customParameters`) that set a call's own turn-taking, over the
/// server's configuration: the `HARK_*` variable of the same name, lower case.
pub const CALL_PARAMETERS: [&str; 12] = [
    "hark_vad",
    "hark_vad_threshold_pct",
    "hark_stop_ms",
    "hark_min_utterance_ms",
    "hark_start_voiced_ms",
    "hark_min_interruption_ms",
    "hark_resume_after_ms",
    "hark_backchannel_max_ms",
    "hark_backchannel_check_ms",
    "hark_end_of_turn",
    "hark_turn_model_threshold_pct",
    "hark_turn_model_stop_ms",
];

/// Custom parameters that the gateway reads itself rather than the engine (accepted by
/// [`CallConfig::with_parameters`], which checks their values): `hark_record` records the
/// call's audio (`1`) or not (`0`), over the server's `HARK_RECORD`.
pub const GATEWAY_PARAMETERS: [&str; 1] = ["hark_record"];

/// A switch parameter's value: `1`, `true`, `yes`, `on` → `true`; `0`, `false`, `no`, `off` →
/// `false` (any case, trimmed); anything else `None`.
pub fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl CallConfig {
    /// This configuration with the call's own `hark_*` custom parameters ([`CALL_PARAMETERS`])
    /// applied. A parameter that is not one of them, or not a valid value, is left out and
    /// named in the second result ("name: why"); if the result as a whole fails
    /// [`CallConfig::validate`], none applies and that is named too. Parameters without the
    /// `hark_` prefix are the operator's own and are not looked at.
    pub fn with_parameters(&self, params: &[(String, String)]) -> (CallConfig, Vec<String>) {
        let mut cfg = *self;
        let mut errors = Vec::new();
        for (name, value) in params.iter().filter(|(n, _)| n.starts_with("hark_")) {
            let v = value.trim();
            let num = || {
                v.parse::<u32>()
                    .map_err(|_| format!("{name}: {v:?} is not a number"))
            };
            let pct = || {
                num().and_then(|n| {
                    u8::try_from(n).map_err(|_| format!("{name}: {n} is out of range"))
                })
            };
            let result = match name.as_str() {
                "hark_vad" => VadKind::from_name(v)
                    .map(|k| cfg.vad.kind = k)
                    .ok_or_else(|| format!("{name}: {v:?} is not webrtc, silero or hybrid")),
                "hark_vad_threshold_pct" => pct().map(|n| cfg.vad.speech_threshold_pct = n),
                "hark_stop_ms" => num().map(|n| cfg.turn.stop_ms = n),
                "hark_min_utterance_ms" => num().map(|n| cfg.turn.min_utterance_ms = n),
                "hark_start_voiced_ms" => num().map(|n| cfg.turn.start_voiced_ms = n),
                "hark_min_interruption_ms" => num().map(|n| cfg.turn.min_interruption_ms = n),
                "hark_resume_after_ms" => num().map(|n| cfg.turn.resume_after_ms = n),
                "hark_backchannel_max_ms" => num().map(|n| cfg.turn.backchannel_max_ms = n),
                "hark_backchannel_check_ms" => num().map(|n| cfg.turn.backchannel_check_ms = n),
                "hark_end_of_turn" => EndOfTurn::from_name(v)
                    .map(|k| cfg.turn.end_of_turn = k)
                    .ok_or_else(|| format!("{name}: {v:?} is not silence or smart-turn")),
                "hark_turn_model_threshold_pct" => pct().map(|n| cfg.turn.model_threshold_pct = n),
                "hark_turn_model_stop_ms" => num().map(|n| cfg.turn.model_stop_ms = n),
                // Read by the gateway, not the engine: checked here so it is not "unknown".
                "hark_record" => parse_switch(v)
                    .map(drop)
                    .ok_or_else(|| format!("{name}: {v:?} is not 1 or 0")),
                _ => Err(format!("{name}: not a hark call parameter")),
            };
            if let Err(e) = result {
                errors.push(e);
            }
        }
        if let Err(e) = cfg.validate() {
            errors.push(format!("call parameters ignored: {e}"));
            return (*self, errors);
        }
        (cfg, errors)
    }

    /// Checks the settings against what the engine can do.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the bad setting.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |what: &str| Err(crate::Error::Config(what.to_string()));
        if ![8_000, 16_000].contains(&self.vad.rate.hz()) {
            return bad("vad.rate must be 8000 or 16000 Hz");
        }
        if ![8_000, 16_000].contains(&self.agent_rate.hz()) {
            return bad("agent_rate must be 8000 or 16000 Hz");
        }
        if !(20..=95).contains(&self.vad.speech_threshold_pct) {
            return bad("vad.speech_threshold_pct must be within 20..=95");
        }
        if self.vad.noise_window_ms < 100 || self.vad.noise_window_ms > 60_000 {
            return bad("vad.noise_window_ms must be within 100..=60000");
        }
        let t = &self.turn;
        if t.start_window_ms < 20 || t.start_voiced_ms == 0 || t.start_voiced_ms > t.start_window_ms
        {
            return bad(
                "turn: need 20 <= start_window_ms and 0 < start_voiced_ms <= start_window_ms",
            );
        }
        if t.stop_ms < 20 || t.max_utterance_ms < 1000 {
            return bad("turn: stop_ms must be >= 20 and max_utterance_ms >= 1000");
        }
        if t.end_of_turn == EndOfTurn::SmartTurn
            && !(t.model_probe_ms >= 20
                && t.model_probe_ms < t.model_stop_ms
                && (1..=99).contains(&t.model_threshold_pct))
        {
            return bad(
                "turn: with smart-turn need 20 <= model_probe_ms < model_stop_ms and \
                 model_threshold_pct within 1..=99",
            );
        }
        let p = &self.playout;
        if p.frame_ms == 0 || p.frame_ms > 1000 || p.lead_ms < p.frame_ms {
            return bad("playout: need 0 < frame_ms <= 1000 and lead_ms >= frame_ms");
        }
        if p.mark_every_ms == 0 {
            return bad("playout.mark_every_ms must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn call_parameters_override_and_bad_ones_are_named() {
        let base = CallConfig::default();
        let (cfg, errors) = base.with_parameters(&params(&[
            ("hark_vad", "silero"),
            ("hark_stop_ms", " 800 "),
            ("hark_backchannel_max_ms", "700"),
            ("payerId", "p-1"),
        ]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.vad.kind, VadKind::Silero);
        assert_eq!((cfg.turn.stop_ms, cfg.turn.backchannel_max_ms), (800, 700));
        let (cfg, errors) = base.with_parameters(&params(&[
            ("hark_vad", "rnnoise"),
            ("hark_lead_ms", "100"),
            ("hark_stop_ms", "-1"),
            ("hark_min_interruption_ms", "60"),
        ]));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(cfg.turn.min_interruption_ms, 60);
        assert_eq!(cfg.vad.kind, base.vad.kind);
        // A combination the engine refuses applies nothing.
        let (cfg, errors) = base.with_parameters(&params(&[
            ("hark_stop_ms", "5"),
            ("hark_min_interruption_ms", "60"),
        ]));
        assert_eq!(cfg, base);
        assert!(errors[0].contains("ignored"), "{errors:?}");
        // Speech start: at most the 100 ms window.
        let (cfg, errors) = base.with_parameters(&params(&[("hark_start_voiced_ms", "40")]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.turn.start_voiced_ms, 40);
        let (cfg, errors) = base.with_parameters(&params(&[("hark_start_voiced_ms", "120")]));
        assert_eq!(cfg, base);
        assert!(errors[0].contains("start_voiced_ms"), "{errors:?}");
        for p in CALL_PARAMETERS {
            let (_, errors) = base.with_parameters(&params(&[(p, "nope")]));
            assert_eq!(errors.len(), 1, "{p}");
        }
    }

    #[test]
    fn gateway_parameters_are_checked_but_change_nothing() {
        let base = CallConfig::default();
        for v in ["1", " on ", "0", "False"] {
            let (cfg, errors) = base.with_parameters(&params(&[("hark_record", v)]));
            assert!(errors.is_empty(), "{v}: {errors:?}");
            assert_eq!(cfg, base);
        }
        let (_, errors) = base.with_parameters(&params(&[("hark_record", "maybe")]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(parse_switch("YES"), Some(true));
        assert_eq!(parse_switch("2"), None);
        assert_eq!(GATEWAY_PARAMETERS, ["hark_record"]);
    }
}
