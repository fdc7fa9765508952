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
//! Stage latencies follow the same rule; the greeting is not a turn.
//!
//! Turns are numbered from 0 ([`TurnRow::index`]) and handed to the store as soon as hark
//! ends them, then again whenever their record changes ([`TurnLog::take_update`]), so a turn
//! is on disk within the writer's commit lag of its end, not only when the next turn begins.
//!
//! An interrupted answer's transcript (cut to what the caller heard) always replaces the
//! latest turn's agent text: it is reported at the barge-in, about the answer being cut.

use hark_engine::agent::Stage;

use super::store::TurnRow;

/// Builds [`TurnRow`]s. Sans-IO: feed it events, store what it returns.
#[derive(Debug, Default)]
pub struct TurnLog {
    /// The agent's provider ends turns itself ([`hark_engine::Call::provider_ends_turns`]):
    /// its reports can come before hark ends the turn they belong to. Otherwise hark's
    /// endpointing is the only one, and every report is about the latest turn it ended.
    provider_ends_turns: bool,
    /// The latest caller turn, still collecting its answer's outcome and transcripts.
    open: Option<TurnRow>,
    /// What was reported about the caller turn hark has not ended yet: words, answer start,
    /// stage latencies. It becomes that turn's record when the turn ends.
    early: TurnRow,
    /// The answer playing began before hark ended its turn: its outcome goes to `early`.
    early_answer: bool,
    /// Byte offset in the playing answer's `agent_text` (in `early` or `open`) where words
    /// reported before their audio played begin (speech-to-speech providers report the whole
    /// answer up front); a cut transcript replaces them.
    unconfirmed_from: Option<usize>,
    /// The previous event was an utterance played to its end: an agent transcript right after
    /// it is about that utterance (the cascade reports each utterance once played).
    after_played: bool,
    /// Media time the caller's current speech started (hark's VAD), while hark has not ended
    /// that turn.
    speech_start_ms: Option<u64>,
    /// The index the next turn gets ([`TurnRow::index`]).
    next_index: u32,
    /// The open turn as [`TurnLog::take_update`] last handed it out.
    synced: Option<TurnRow>,
}

/// Engine ms (`u64`) as the store keeps them (`i64`), saturating.
fn stored(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn set_stage(t: &mut TurnRow, stage: Stage, ms: u64) {
    let slot = match stage {
        Stage::Stt => &mut t.stt_ms,
        Stage::LlmFirstToken => &mut t.llm_ttft_ms,
        Stage::TtsFirstByte => &mut t.tts_ttfb_ms,
        Stage::FirstAudio => &mut t.first_audio_ms,
        Stage::Greeting => return,
    };
    slot.get_or_insert(stored(ms));
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
    /// A log for a call whose agent's provider ends turns itself (`true`: reports may come
    /// before hark ends their turn) or not.
    pub fn new(provider_ends_turns: bool) -> Self {
        TurnLog {
            provider_ends_turns,
            ..TurnLog::default()
        }
    }

    /// hark's endpointing ended a caller turn (media time, ms). Returns the previous turn,
    /// finished, for the store.
    pub fn user_turn_ended(&mut self, start_ms: u64, end_ms: u64) -> Option<TurnRow> {
        self.after_played = false;
        self.speech_start_ms = None;
        let done = self.open.take();
        let mut t = std::mem::take(&mut self.early);
        t.user_start_ms = stored(start_ms);
        t.user_end_ms = stored(end_ms);
        t.index = Some(self.next_index);
        self.next_index += 1;
        if !std::mem::take(&mut self.early_answer) {
            // Held agent words (reported before any audio of this answer) are unconfirmed.
            self.unconfirmed_from = t.agent_text.as_ref().map(|_| 0);
        }
        self.open = Some(t);
        done
    }

    /// The latest ended turn as it stands now, if it changed since the last call (or was
    /// never handed out): for the store, so a turn is recorded as soon as it ends and updated
    /// as its answer plays, and a crash loses at most what changed since. Carries its
    /// [`TurnRow::index`]: storing it again replaces the earlier row.
    pub fn take_update(&mut self) -> Option<TurnRow> {
        let open = self.open.as_ref()?;
        if self.synced.as_ref() == Some(open) {
            return None;
        }
        self.synced = Some(open.clone());
        Some(open.clone())
    }

    /// hark's VAD dropped the open caller turn as too short. If the agent already answered
    /// it (a speech-to-speech provider heard a turn there), it is recorded as one; otherwise
    /// nothing changes. Returns a finished turn for the store, as [`TurnLog::user_turn_ended`].
    pub fn speech_discarded(&mut self, start_ms: u64, end_ms: u64) -> Option<TurnRow> {
        self.speech_start_ms = None;
        if self.early == TurnRow::default() {
            return None;
        }
        self.user_turn_ended(start_ms, end_ms)
    }

    /// Where reports about a caller's turn go: the open caller turn hark has not ended yet
    /// (`turn_open`, only when the provider ends turns itself), or the latest ended one.
    fn target(&mut self, turn_open: bool) -> Option<&mut TurnRow> {
        if turn_open && self.provider_ends_turns {
            Some(&mut self.early)
        } else {
            self.open.as_mut()
        }
    }

    /// The turn whose answer is playing.
    fn answer(&mut self) -> Option<&mut TurnRow> {
        if self.early_answer {
            Some(&mut self.early)
        } else {
            self.open.as_mut()
        }
    }

    /// The first agent audio of the answer was sent, `latency_ms` after the caller's last
    /// voiced frame; `before_turn_end`: before hark ended that turn
    /// ([`hark_engine::Event::AgentAudioStarted`]). The first per turn counts.
    pub fn agent_audio_started(&mut self, latency_ms: u64, before_turn_end: bool) {
        self.after_played = false;
        if before_turn_end && !self.early_answer {
            self.early_answer = true;
            self.unconfirmed_from = self.early.agent_text.as_ref().map(|_| 0);
        }
        if let Some(t) = self.target(before_turn_end) {
            t.latency_ms.get_or_insert(stored(latency_ms));
        }
    }

    /// The caller began hearing the answer, `latency_ms` after their last voiced frame
    /// ([`hark_engine::Event::AgentAudioHeard`]). The first per turn counts.
    pub fn agent_audio_heard(&mut self, latency_ms: u64, before_turn_end: bool) {
        if let Some(t) = self.target(before_turn_end) {
            t.heard_latency_ms.get_or_insert(stored(latency_ms));
        }
    }

    /// A stage latency the agent reported, ms; the first of each stage per turn counts.
    /// `turn_open` as for [`TurnLog::user_transcript`]: a speech-to-speech provider's
    /// first-audio time can come before hark ended the turn. The greeting is not a turn.
    pub fn stage_latency(&mut self, stage: Stage, ms: u64, turn_open: bool) {
        if let Some(t) = self.target(turn_open) {
            set_stage(t, stage, ms);
        }
    }

    /// An utterance of the answer played to its end: `heard_ms` of it were heard. Words
    /// reported for it before it played are now confirmed.
    pub fn utterance_played(&mut self, heard_ms: u64) {
        if let Some(t) = self.answer() {
            t.heard_ms = Some(t.heard_ms.unwrap_or(0).saturating_add(stored(heard_ms)));
            self.unconfirmed_from = None;
            self.after_played = true;
        }
    }

    /// The caller barged in on the answer: `heard_ms` of the cut utterance were heard
    /// (mark echoes), and `heard_text` its words up to there, when hark knows them. An answer
    /// that began before hark ended the turn was a false start: the turn goes on, and the
    /// provider's next answer is the one timed.
    pub fn barge_in(&mut self, heard_ms: u64, heard_text: Option<&str>) {
        self.after_played = false;
        let early = self.early_answer;
        if let Some(t) = self.answer() {
            t.interrupted = true;
            t.heard_ms = Some(t.heard_ms.unwrap_or(0).saturating_add(stored(heard_ms)));
            if early {
                t.latency_ms = None;
                t.heard_latency_ms = None;
            }
        }
        // `early_answer` stays set: the agent's own cut transcript is about this answer too.
        if let Some(h) = heard_text {
            self.cut(h);
        }
    }

    /// What the caller heard of a cut answer replaces the words reported for it up front.
    /// Stays replaceable: the agent's own cut transcript may follow hark's.
    fn cut(&mut self, heard: &str) {
        let from = self.unconfirmed_from;
        let Some(t) = self.answer() else {
            return;
        };
        if let (Some(from), Some(s)) = (from, t.agent_text.as_mut()) {
            s.truncate(from);
            let kept = s.trim_end().len();
            s.truncate(kept);
        }
        let at = append(&mut t.agent_text, heard);
        self.unconfirmed_from = Some(at);
    }

    /// The caller's words. `turn_open` is whether hark is inside a caller turn it has not
    /// ended yet ([`hark_engine::Call::user_turn_open_since_ms`]).
    pub fn user_transcript(&mut self, text: &str, turn_open: bool) {
        self.after_played = false;
        match self.target(turn_open) {
            Some(t) => {
                append(&mut t.text, text);
            }
            None => {
                append(&mut self.early.text, text);
            }
        }
    }

    /// The agent's words. `interrupted`: the answer was cut and `text` is what the caller
    /// heard of it (replaces the words reported for it up front); otherwise words of the
    /// answer (appended). `turn_open` as for [`TurnLog::user_transcript`];
    /// `agent_speaking`: answer audio is still unplayed (words reported while it plays belong
    /// to the answer playing).
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
        // Words for an answer not yet playing, to a turn hark has not ended: held for it.
        if turn_open && self.provider_ends_turns && !agent_speaking {
            append(&mut self.early.agent_text, text);
            return;
        }
        let unconfirmed = self.unconfirmed_from;
        let Some(t) = self.answer() else {
            // A greeting (no caller turn yet) is not a turn; it is logged, not recorded.
            return;
        };
        let at = append(&mut t.agent_text, text);
        if !confirmed {
            self.unconfirmed_from = unconfirmed.or(Some(at));
        }
    }

    /// The caller started speaking (hark's VAD), at `media_ms`.
    pub fn speech_started(&mut self, media_ms: u64) {
        self.speech_start_ms = Some(media_ms);
    }

    /// The stream ended at media time `end_ms`: the last turn, and the exchange of a turn
    /// hark had not ended yet if the provider reported one (its end is the stream's), in
    /// order.
    pub fn finish(&mut self, end_ms: u64) -> Vec<TurnRow> {
        let mut done: Vec<TurnRow> = self.open.take().into_iter().collect();
        if self.early != TurnRow::default() {
            let start = self.speech_start_ms.take().unwrap_or(end_ms);
            done.extend(self.user_turn_ended(start, end_ms.max(start)));
            done.extend(self.open.take());
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_numbered_and_handed_out_when_they_change() {
        let mut log = TurnLog::new(false);
        assert_eq!(log.take_update(), None, "no turn yet");
        log.user_turn_ended(1000, 2000);
        let t = log.take_update().expect("the ended turn, at once");
        assert_eq!(
            (t.index, t.user_end_ms, t.latency_ms),
            (Some(0), 2000, None)
        );
        assert_eq!(log.take_update(), None, "unchanged");
        log.agent_audio_started(500, false);
        let t = log.take_update().expect("the answer started");
        assert_eq!((t.index, t.latency_ms), (Some(0), Some(500)));
        log.utterance_played(900);
        assert_eq!(log.take_update().and_then(|t| t.heard_ms), Some(900));
        let done = log.user_turn_ended(4000, 5000).expect("the first turn");
        assert_eq!(done.index, Some(0));
        assert_eq!(log.take_update().and_then(|t| t.index), Some(1));
        let last = log.finish(9000);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].index, Some(1));
    }

    #[test]
    fn cascade_order_words_after_the_turn_ended() {
        let mut log = TurnLog::new(false);
        assert!(log.user_turn_ended(1000, 5100).is_none());
        log.user_transcript("Hi, I'm calling about my order.", false);
        log.agent_audio_started(1400, false);
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
        let last = log.finish(60_000).pop().expect("the second turn");
        assert_eq!((last.user_start_ms, last.text), (9000, None));
        assert!(log.finish(60_000).is_empty());
    }

    #[test]
    fn speech_to_speech_words_before_hark_ended_the_turn() {
        let mut log = TurnLog::new(true);
        // Greeting: not a turn.
        log.agent_transcript("Hello! How can I help?", false, false, true);
        // ElevenLabs endpoints first: its transcript and answer text arrive while hark still
        // waits out stop_ms.
        log.user_transcript("Where is my parcel?", true);
        log.agent_transcript("Let me look.", false, true, false);
        log.stage_latency(Stage::FirstAudio, 50, true);
        log.agent_audio_started(350, true);
        log.agent_audio_heard(360, true);
        assert!(log.user_turn_ended(1000, 2500).is_none());
        log.utterance_played(900);
        // The next turn: same again; the first turn keeps its own words.
        log.user_transcript("Thanks.", true);
        log.agent_transcript("You're welcome.", false, true, false);
        let t = log.user_turn_ended(5000, 5600).unwrap();
        assert_eq!(t.text.as_deref(), Some("Where is my parcel?"));
        assert_eq!(t.agent_text.as_deref(), Some("Let me look."));
        assert_eq!(
            (
                t.latency_ms,
                t.heard_latency_ms,
                t.first_audio_ms,
                t.heard_ms
            ),
            (Some(350), Some(360), Some(50), Some(900))
        );
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!(t.text.as_deref(), Some("Thanks."));
        assert_eq!(t.agent_text.as_deref(), Some("You're welcome."));
    }

    #[test]
    fn stage_latencies_and_heard_latency_land_in_their_turn() {
        let mut log = TurnLog::new(true);
        log.stage_latency(Stage::Greeting, 400, false);
        log.user_turn_ended(1000, 2500);
        log.stage_latency(Stage::Stt, 150, false);
        log.stage_latency(Stage::LlmFirstToken, 300, false);
        log.stage_latency(Stage::TtsFirstByte, 150, false);
        log.stage_latency(Stage::TtsFirstByte, 170, false); // a later sentence
        log.agent_audio_started(640, false);
        log.agent_audio_heard(700, false);
        log.agent_audio_heard(5000, false); // a later utterance
        // A speech-to-speech provider's first audio for the next turn, before hark ended it.
        log.stage_latency(Stage::FirstAudio, 350, true);
        let t = log.user_turn_ended(4000, 5000).unwrap();
        assert_eq!(
            (t.stt_ms, t.llm_ttft_ms, t.tts_ttfb_ms, t.first_audio_ms),
            (Some(150), Some(300), Some(150), None)
        );
        assert_eq!((t.latency_ms, t.heard_latency_ms), (Some(640), Some(700)));
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!((t.first_audio_ms, t.stt_ms), (Some(350), None));
    }

    #[test]
    fn a_discarded_turn_the_provider_answered_is_a_turn() {
        let mut log = TurnLog::new(true);
        // Noise hark drops as too short, nobody answered: no turn.
        assert!(log.speech_discarded(500, 560).is_none());
        assert!(log.finish(60_000).is_empty());
        // A short "yes" hark drops but the provider answered.
        log.user_transcript("Yes.", true);
        log.agent_audio_started(400, true);
        assert!(log.speech_discarded(1000, 1150).is_none());
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!((t.text.as_deref(), t.latency_ms), (Some("Yes."), Some(400)));
    }

    #[test]
    fn cascade_words_while_the_caller_speaks_again_stay_with_their_turn() {
        // hark's endpointing is the only one: a transcript is about the turn it ended, even if
        // the caller has started talking again meanwhile.
        let mut log = TurnLog::new(false);
        log.user_turn_ended(1000, 2500);
        log.user_transcript("First.", true);
        log.user_turn_ended(3000, 3400);
        log.user_transcript("Second.", false);
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!(t.text.as_deref(), Some("Second."));
        let mut log = TurnLog::new(false);
        log.user_turn_ended(1000, 2500);
        log.user_transcript("First.", true);
        let first = log.user_turn_ended(3000, 3400).unwrap();
        assert_eq!(first.text.as_deref(), Some("First."));
    }

    #[test]
    fn an_early_answer_cut_by_the_caller_stays_with_its_turn() {
        let mut log = TurnLog::new(true);
        log.user_turn_ended(1000, 2000);
        log.agent_audio_started(500, false);
        log.agent_transcript("Hello there.", false, false, true);
        log.utterance_played(800);
        // The caller pauses 300 ms; the provider answers early; the caller goes on talking.
        log.agent_transcript("Sure, I", false, true, false);
        log.agent_audio_started(300, true);
        log.barge_in(200, Some("Sure"));
        // The provider's own cut transcript follows the barge-in (Realtime, ElevenLabs).
        log.agent_transcript("Sure,", true, true, false);
        // The provider's real answer, after hark ended the turn.
        let done = log.user_turn_ended(4000, 6000).unwrap();
        assert_eq!(
            (done.interrupted, done.heard_ms, done.agent_text.as_deref()),
            (false, Some(800), Some("Hello there."))
        );
        log.agent_audio_started(450, false);
        log.agent_transcript("Right, your order.", false, false, true);
        log.utterance_played(1500);
        let t = log.finish(60_000).pop().unwrap();
        assert!(t.interrupted);
        assert_eq!(t.heard_ms, Some(1700));
        assert_eq!(
            t.latency_ms,
            Some(450),
            "the false start is not the turn's latency"
        );
        assert_eq!(t.agent_text.as_deref(), Some("Sure, Right, your order."));
    }

    #[test]
    fn an_exchange_before_the_stream_ended_is_kept() {
        // The provider answered; the caller hung up before hark's endpointing ended the turn.
        let mut log = TurnLog::new(true);
        log.user_turn_ended(1000, 2000);
        log.speech_started(5000);
        log.user_transcript("Bye.", true);
        log.agent_transcript("Goodbye!", false, true, false);
        let done = log.finish(5600);
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].user_start_ms, 1000);
        let last = &done[1];
        assert_eq!((last.user_start_ms, last.user_end_ms), (5000, 5600));
        assert_eq!(
            (last.text.as_deref(), last.agent_text.as_deref()),
            (Some("Bye."), Some("Goodbye!"))
        );
    }

    #[test]
    fn late_transcription_goes_to_the_latest_turn() {
        // OpenAI Realtime: the input transcription completes after the answer started.
        let mut log = TurnLog::new(true);
        log.user_turn_ended(1000, 2500);
        log.agent_audio_started(600, false);
        log.agent_transcript("Sure, one moment.", false, false, true);
        log.user_transcript("Can you check my order?", false);
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!(t.text.as_deref(), Some("Can you check my order?"));
        assert_eq!(t.agent_text.as_deref(), Some("Sure, one moment."));
    }

    #[test]
    fn a_barge_in_keeps_what_was_heard() {
        let mut log = TurnLog::new(true);
        log.user_turn_ended(1000, 2500);
        log.user_transcript("Tell me everything.", false);
        log.agent_audio_started(600, false);
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
        let mut log = TurnLog::new(false);
        log.user_turn_ended(1000, 2500);
        log.agent_audio_started(900, false);
        log.utterance_played(1500);
        log.agent_transcript("I'm sorry to hear that.", false, false, true);
        log.barge_in(700, Some("Let me check"));
        log.agent_transcript("Let me check the", true, true, false);
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!(
            t.agent_text.as_deref(),
            Some("I'm sorry to hear that. Let me check the")
        );
        assert_eq!((t.heard_ms, t.interrupted), (Some(2200), true));
    }

    #[test]
    fn an_answer_cut_before_any_words_were_reported_records_the_heard_words() {
        let mut log = TurnLog::new(false);
        log.user_turn_ended(1000, 2500);
        log.barge_in(300, Some("Well"));
        let t = log.finish(60_000).pop().unwrap();
        assert_eq!(t.agent_text.as_deref(), Some("Well"));
    }
}
