//! The call record's turns, built from a live call's events whatever order the agent reports
//! its transcripts in.
//!
//! A turn is opened by hark's endpointing ([`hark_engine::Event::UserTurnEnded`]) and closed
//! when the next one opens or the stream ends, so that reports arriving after the answer played
//! (the cascade reports an utterance's words once its last mark is echoed) still find it.
//!
//! Transcripts do not always come after the turn they belong to:
//! - the cascade's speech-to-text answers after hark's endpointing: the words go to the open
//!   turn;
//! - speech-to-speech providers endpoint on their own, often before hark's `stop_ms` of silence
//!   has passed: ElevenLabs' `user_transcript` and `agent_response` can arrive while hark still
//!   counts the caller's turn as open. Reports that arrive while the caller is in a turn hark has
//!   not ended yet are held and given to that turn when it ends;
//! - OpenAI Realtime's input transcription is asynchronous and can arrive after the answer has
//!   started: with no caller turn open, it goes to the latest turn if that has no words yet.
//!
//! An interrupted answer's transcript (cut to what the caller heard) always replaces the
//! latest turn's agent text: it is reported at the barge-in, about the answer being cut.

use super::recorder::TurnRecord;

/// Builds [`TurnRecord`]s. Sans-IO: feed it events, store what it returns.
#[derive(Debug, Default)]
pub struct TurnLog {
    /// The latest caller turn, still collecting its answer's outcome and transcripts.
    open: Option<TurnRecord>,
    /// Byte offset in the open turn's `agent_text` where words reported before their audio
    /// played begin (speech-to-speech providers report the whole answer up front); a cut
    /// transcript replaces them.
    unconfirmed_from: Option<usize>,
    /// The previous event was an utterance played to its end: an agent transcript right after
    /// it is about that utterance (the cascade reports each utterance once played).
    after_played: bool,
    /// Caller words reported before hark ended their turn.
    early_user: Option<String>,
    /// Agent words reported before hark ended the caller turn they answer.
    early_agent: Option<String>,
}

/// Appends `text` to `slot` with a space; returns the offset it starts at.
fn append(slot: &mut Option<String>, text: &str) -> usize {
    let text = text.trim();
    match slot {
        Some(s) if !s.is_empty() => {
            let at = s.len();
            if !text.is_empty() {
                s.push(' ');
                s.push_str(text);
            }
            at
        }
        _ => {
            *slot = (!text.is_empty()).then(|| text.to_owned());
            0
        }
    }
}

impl TurnLog {
    /// hark's endpointing ended a caller turn (media time, ms). Returns the previous turn,
    /// finished, for the store.
    pub fn user_turn_ended(&mut self, start_ms: u64, end_ms: u64) -> Option<TurnRecord> {
        self.after_played = false;
        let done = self.open.take();
        let agent_text = self.early_agent.take();
        self.unconfirmed_from = agent_text.as_ref().map(|_| 0);
        self.open = Some(TurnRecord {
            user_start_ms: start_ms,
            user_end_ms: end_ms,
            text: self.early_user.take(),
            agent_text,
            ..TurnRecord::default()
        });
        done
    }

    /// The first agent audio of the answer was sent, `latency_ms` after the caller's last
    /// voiced frame. Only the first answer audio of a turn counts.
    pub fn agent_audio_started(&mut self, latency_ms: u64) {
        self.after_played = false;
        if let Some(t) = self.open.as_mut()
            && t.latency_ms.is_none()
        {
            t.latency_ms = Some(latency_ms);
        }
    }

    /// An utterance of the answer played to its end: `heard_ms` of it were heard. Words
    /// reported for it before it played are now confirmed.
    pub fn utterance_played(&mut self, heard_ms: u64) {
        if let Some(t) = self.open.as_mut() {
            t.heard_ms = Some(t.heard_ms.unwrap_or(0) + heard_ms);
            self.unconfirmed_from = None;
            self.after_played = true;
        }
    }

    /// The caller barged in on the answer: `heard_ms` of the cut utterance were heard
    /// (mark echoes), and `heard_text` its words up to there, when hark knows them.
    pub fn barge_in(&mut self, heard_ms: u64, heard_text: Option<&str>) {
        self.after_played = false;
        if let Some(t) = self.open.as_mut() {
            t.interrupted = true;
            t.heard_ms = Some(t.heard_ms.unwrap_or(0) + heard_ms);
        }
        if let Some(h) = heard_text {
            self.cut(h);
        }
    }

    /// What the caller heard of a cut answer replaces the words reported for it up front.
    /// Stays replaceable: the agent's own cut transcript may follow hark's.
    fn cut(&mut self, heard: &str) {
        let Some(t) = self.open.as_mut() else {
            return;
        };
        if let (Some(from), Some(s)) = (self.unconfirmed_from, t.agent_text.as_mut()) {
            s.truncate(from);
            let kept = s.trim_end().len();
            s.truncate(kept);
        }
        self.unconfirmed_from = Some(append(&mut t.agent_text, heard));
    }

    /// The caller's words. `turn_open` is whether hark is inside a caller turn it has not
    /// ended yet ([`hark_engine::Call::user_turn_open_since_ms`]).
    pub fn user_transcript(&mut self, text: &str, turn_open: bool) {
        self.after_played = false;
        match self.open.as_mut() {
            Some(t) if !turn_open && t.text.is_none() => {
                append(&mut t.text, text);
            }
            _ => {
                append(&mut self.early_user, text);
            }
        }
    }

    /// The agent's words. `interrupted`: the answer was cut and `text` is what the caller
    /// heard of it (replaces the words reported for it up front); otherwise words of the
    /// answer (appended). `turn_open` as for [`TurnLog::user_transcript`];
    /// `agent_speaking`: answer audio is still unplayed (words reported while it plays belong
    /// to the latest turn).
    pub fn agent_transcript(
        &mut self,
        text: &str,
        interrupted: bool,
        turn_open: bool,
        agent_speaking: bool,
    ) {
        let confirmed = std::mem::take(&mut self.after_played);
        if interrupted {
            self.cut(text);
            return;
        }
        match self.open.as_mut() {
            Some(t) if !turn_open || agent_speaking || confirmed => {
                let at = append(&mut t.agent_text, text);
                if !confirmed {
                    self.unconfirmed_from = self.unconfirmed_from.or(Some(at));
                }
            }
            // A greeting (no caller turn yet) is not a turn; it is logged, not recorded.
            None if !turn_open => {}
            _ => {
                append(&mut self.early_agent, text);
            }
        }
    }

    /// The stream ended: the last turn, finished.
    pub fn finish(&mut self) -> Option<TurnRecord> {
        self.open.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cascade_order_words_after_the_turn_ended() {
        let mut log = TurnLog::default();
        assert!(log.user_turn_ended(1000, 5100).is_none());
        log.user_transcript("Hi, I'm calling about my order.", false);
        log.agent_audio_started(1400);
        log.utterance_played(1800);
        log.agent_transcript("Let me check.", false, false, false);
        log.utterance_played(2200);
        log.agent_transcript("It left on Monday.", false, false, false);
        let t = log.user_turn_ended(9000, 10_000).expect("the first turn");
        assert_eq!(t.text.as_deref(), Some("Hi, I'm calling about my order."));
        assert_eq!(
            t.agent_text.as_deref(),
            Some("Let me check. It left on Monday.")
        );
        assert_eq!(
            (t.latency_ms, t.heard_ms, t.interrupted),
            (Some(1400), Some(4000), false)
        );
        let last = log.finish().expect("the second turn");
        assert_eq!((last.user_start_ms, last.text), (9000, None));
        assert!(log.finish().is_none());
    }

    #[test]
    fn speech_to_speech_words_before_hark_ended_the_turn() {
        let mut log = TurnLog::default();
        // Greeting: not a turn.
        log.agent_transcript("Hello! How can I help?", false, false, true);
        // ElevenLabs endpoints first: its transcript and answer text arrive while hark still
        // waits out stop_ms.
        log.user_transcript("Where is my parcel?", true);
        log.agent_transcript("Let me look.", false, true, false);
        assert!(log.user_turn_ended(1000, 2500).is_none());
        log.agent_audio_started(700);
        log.utterance_played(900);
        // The next turn: same again; the first turn keeps its own words.
        log.user_transcript("Thanks.", true);
        log.agent_transcript("You're welcome.", false, true, false);
        let t = log.user_turn_ended(5000, 5600).unwrap();
        assert_eq!(t.text.as_deref(), Some("Where is my parcel?"));
        assert_eq!(t.agent_text.as_deref(), Some("Let me look."));
        let t = log.finish().unwrap();
        assert_eq!(t.text.as_deref(), Some("Thanks."));
        assert_eq!(t.agent_text.as_deref(), Some("You're welcome."));
    }

    #[test]
    fn late_transcription_goes_to_the_latest_turn() {
        // OpenAI Realtime: the input transcription completes after the answer started.
        let mut log = TurnLog::default();
        log.user_turn_ended(1000, 2500);
        log.agent_audio_started(600);
        log.agent_transcript("Sure, one moment.", false, false, true);
        log.user_transcript("Can you check my order?", false);
        let t = log.finish().unwrap();
        assert_eq!(t.text.as_deref(), Some("Can you check my order?"));
        assert_eq!(t.agent_text.as_deref(), Some("Sure, one moment."));
    }

    #[test]
    fn a_barge_in_keeps_what_was_heard() {
        let mut log = TurnLog::default();
        log.user_turn_ended(1000, 2500);
        log.user_transcript("Tell me everything.", false);
        log.agent_audio_started(600);
        // Words reported as the answer started (Realtime, ElevenLabs) are the whole answer...
        log.agent_transcript("Well, first there is this, then that.", false, false, true);
        // ...until the caller cuts it: hark's heard words, then the agent's cut transcript.
        log.barge_in(1200, Some("Well, first"));
        assert_eq!(
            log.open.as_ref().unwrap().agent_text.as_deref(),
            Some("Well, first")
        );
        log.agent_transcript("Well, first there", true, true, false);
        let t = log.user_turn_ended(4000, 5000).unwrap();
        assert!(t.interrupted);
        assert_eq!(t.heard_ms, Some(1200));
        assert_eq!(t.agent_text.as_deref(), Some("Well, first there"));
        assert_eq!(t.text.as_deref(), Some("Tell me everything."));
    }

    #[test]
    fn a_cut_cascade_answer_keeps_the_utterances_that_played() {
        // The cascade reports each utterance once played, and the cut one's heard words.
        let mut log = TurnLog::default();
        log.user_turn_ended(1000, 2500);
        log.agent_audio_started(900);
        log.utterance_played(1500);
        log.agent_transcript("I'm sorry to hear that.", false, false, true);
        log.barge_in(700, Some("Let me check"));
        log.agent_transcript("Let me check the", true, true, false);
        let t = log.finish().unwrap();
        assert_eq!(
            t.agent_text.as_deref(),
            Some("I'm sorry to hear that. Let me check the")
        );
        assert_eq!((t.heard_ms, t.interrupted), (Some(2200), true));
    }

    #[test]
    fn an_answer_cut_before_any_words_were_reported_records_the_heard_words() {
        let mut log = TurnLog::default();
        log.user_turn_ended(1000, 2500);
        log.barge_in(300, Some("Well"));
        let t = log.finish().unwrap();
        assert_eq!(t.agent_text.as_deref(), Some("Well"));
    }
}
