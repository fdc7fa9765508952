//! What the speech-to-speech agents ([`super::elevenlabs`], [`super::realtime`]) share: the
//! timing of each answer's first audio ([`AnswerTiming`]).
//!
//! Both providers take turns themselves and stream the answer's audio back without saying
//! which caller turn it answers. So the agent notes when a turn ended — the provider's own
//! endpointing event when it sends one (ElevenLabs' final `user_transcript`, Realtime's
//! `input_audio_buffer.speech_stopped`), else hark's endpointing — and, when the first audio
//! of a new answer arrives, reports the time since then as [`Stage::FirstAudio`]. Audio that
//! comes before any turn has ended, while the agent has not spoken yet, is the greeting:
//! [`Stage::Greeting`] from stream start.
//!
//! They also share what an answering machine verdict means ([`on_machine`]): the cascade's
//! policy (`cascade/voicemail.rs`), carried out by each provider its own way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::agent::{AgentReport, Stage};
use crate::agents::cascade::{FAX_REASON, MACHINE_REASON};
use crate::call::AnsweredBy;

/// The hang-up comes at most this long after the voicemail message was asked for, even if the
/// provider never finishes it.
pub(crate) const VOICEMAIL_MAX: Duration = Duration::from_secs(60);

/// What a speech-to-speech agent does on answering machine detection's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnMachine {
    /// `human`, `machine_start`, `unknown`: the conversation goes on.
    Nothing,
    /// A fax, or a machine with no message configured: stop and hang up with this reason.
    HangUp(&'static str),
    /// A machine's greeting is over: stop, say this message (templated already), then hang up
    /// with reason `voicemail`.
    Leave(String),
}

/// The policy for verdict `by`, with the configured message `template` (`{{name}}`s filled
/// from the call's `params`; empty after filling counts as none).
pub(crate) fn on_machine(
    by: AnsweredBy,
    template: Option<&str>,
    params: &[(String, String)],
) -> OnMachine {
    match by {
        AnsweredBy::Human | AnsweredBy::MachineStart | AnsweredBy::Unknown => OnMachine::Nothing,
        AnsweredBy::Fax => OnMachine::HangUp(FAX_REASON),
        AnsweredBy::MachineEnd(_) => template
            .map(|t| crate::agents::context::fill(t, &BTreeMap::new(), params))
            .filter(|t| !t.trim().is_empty())
            .map_or(OnMachine::HangUp(MACHINE_REASON), OnMachine::Leave),
    }
}

/// Times the first audio of each answer of a speech-to-speech agent (see the module docs).
/// Times are the `now` of the agent's callbacks; latencies are whole ms, rounded down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AnswerTiming {
    /// Stream start ([`crate::agent::Agent::on_start`]).
    started_at: Option<Instant>,
    /// The provider's end of the caller's turn not yet answered.
    provider_turn_end: Option<Instant>,
    /// hark's end of the caller's turn not yet answered.
    hark_turn_end: Option<Instant>,
    /// Some audio has arrived already: no greeting any more.
    spoke: bool,
}

impl AnswerTiming {
    /// The stream started at `now`: a greeting is timed from here.
    pub(crate) fn start(&mut self, now: Instant) {
        self.started_at = Some(now);
    }

    /// The provider says the caller's turn ended at `now` (the latest such event counts).
    pub(crate) fn provider_turn_end(&mut self, now: Instant) {
        self.provider_turn_end = Some(now);
    }

    /// hark's endpointing ended the caller's turn at `now`; used only when the provider sends
    /// no turn end of its own before the answer.
    pub(crate) fn hark_turn_end(&mut self, now: Instant) {
        self.hark_turn_end = Some(now);
    }

    /// The first audio of a new answer arrived at `now`: the latency to report, if any —
    /// [`Stage::FirstAudio`] from the pending turn end (the provider's, else hark's), else
    /// [`Stage::Greeting`] from stream start if nothing was said yet. Either way the pending
    /// turn ends are spent, so later answers are not timed from them again.
    pub(crate) fn first_audio(&mut self, now: Instant) -> Option<AgentReport> {
        let provider = self.provider_turn_end.take();
        let hark = self.hark_turn_end.take();
        let spoke = std::mem::replace(&mut self.spoke, true);
        let (stage, since) = match (provider.or(hark), self.started_at) {
            (Some(t), _) => (Stage::FirstAudio, t),
            (None, Some(t)) if !spoke => (Stage::Greeting, t),
            _ => return None,
        };
        Some(AgentReport::Latency {
            stage,
            ms: now.saturating_duration_since(since).as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::MachineEnd;

    #[test]
    fn machine_verdicts_follow_the_cascade_policy() {
        let params = [("name".to_string(), "Ada".to_string())];
        let msg = Some("Hi {{ name }}, please call us back.");
        let end = AnsweredBy::MachineEnd(MachineEnd::Beep);
        assert_eq!(
            on_machine(end, msg, &params),
            OnMachine::Leave("Hi Ada, please call us back.".into())
        );
        assert_eq!(on_machine(end, None, &params), OnMachine::HangUp("machine"));
        assert_eq!(
            on_machine(end, Some("{{missing}} "), &params),
            OnMachine::HangUp("machine")
        );
        assert_eq!(
            on_machine(AnsweredBy::Fax, msg, &params),
            OnMachine::HangUp("fax")
        );
        for by in [
            AnsweredBy::Human,
            AnsweredBy::MachineStart,
            AnsweredBy::Unknown,
        ] {
            assert_eq!(on_machine(by, msg, &params), OnMachine::Nothing);
        }
    }

    fn latency(stage: Stage, ms: u64) -> Option<AgentReport> {
        Some(AgentReport::Latency { stage, ms })
    }

    #[test]
    fn the_first_audio_before_any_turn_is_the_greeting() {
        let t0 = Instant::now();
        let ms = |d| t0 + Duration::from_millis(d);
        let mut t = AnswerTiming::default();
        t.start(t0);
        assert_eq!(t.first_audio(ms(600)), latency(Stage::Greeting, 600));
        // A second utterance of the same (unprompted) talk is not a greeting again.
        assert_eq!(t.first_audio(ms(900)), None);
    }

    #[test]
    fn an_answer_is_timed_from_the_provider_turn_end_before_hark_s() {
        let t0 = Instant::now();
        let ms = |d| t0 + Duration::from_millis(d);
        let mut t = AnswerTiming::default();
        t.start(t0);
        // hark ends the turn after the provider did: the provider's end still counts.
        t.provider_turn_end(ms(1_000));
        t.hark_turn_end(ms(1_200));
        assert_eq!(t.first_audio(ms(1_250)), latency(Stage::FirstAudio, 250));
        // Both were spent: the next audio without a new turn end is not timed.
        assert_eq!(t.first_audio(ms(2_000)), None);
        // Only hark's end: it times the answer.
        t.hark_turn_end(ms(3_000));
        assert_eq!(t.first_audio(ms(3_400)), latency(Stage::FirstAudio, 400));
        // The latest provider event counts; audio before the turn end is 0 ms, not a panic.
        t.provider_turn_end(ms(4_000));
        t.provider_turn_end(ms(4_500));
        assert_eq!(t.first_audio(ms(4_400)), latency(Stage::FirstAudio, 0));
    }

    #[test]
    fn no_greeting_once_the_caller_was_answered_or_without_a_start() {
        let t0 = Instant::now();
        let ms = |d| t0 + Duration::from_millis(d);
        let mut t = AnswerTiming::default();
        assert_eq!(
            t.first_audio(ms(100)),
            None,
            "no stream start: nothing to time"
        );
        let mut t = AnswerTiming::default();
        t.start(t0);
        t.hark_turn_end(ms(500));
        assert_eq!(t.first_audio(ms(800)), latency(Stage::FirstAudio, 300));
        assert_eq!(t.first_audio(ms(5_000)), None);
    }
}
