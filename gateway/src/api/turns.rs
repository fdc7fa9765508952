//! The call record's turns: a fold over a live call's events.
//!
//! The engine names the caller turn of every event and agent report ([`TurnId`], see its
//! docs for the rules: transcripts and answers a speech-to-speech provider sends before hark's
//! endpointing ended the turn, late input transcription, a short "yes" hark drops but the
//! provider answered). This module only adds up what each turn's events say: its times, the
//! answer's latencies, what of it was heard, and the words.
//!
//! One rule about words is the record's own. Speech-to-speech providers report an answer's
//! whole text up front; if the caller cuts the answer, the words not heard must go. The words
//! reported before their audio played are *unconfirmed*; hark's heard words at a barge-in (from
//! mark echoes) and then the agent's own cut transcript replace them. The cascade reports each
//! utterance once it has played: those words are confirmed.
//!
//! Turns are numbered by their [`TurnId`] ([`TurnRow::index`]) and handed to the store as soon
//! as hark ends them, then again whenever their record changes ([`TurnLog::take_update`]), so
//! a turn is on disk within the writer's commit lag of its end, not only when the next turn
//! begins. The greeting is not a turn: its words as heard are kept apart
//! ([`TurnLog::greeting`]) for the stream's summary, the first line of `call.ended`'s transcript.

use std::collections::BTreeMap;

use hark_engine::agent::{AgentReport, Role, Stage};
use hark_engine::{Event, TurnId};

use super::store::TurnRow;

/// Builds [`TurnRow`]s. Sans-IO: feed it events ([`TurnLog::apply`]), store what it returns.
#[derive(Debug, Default)]
pub struct TurnLog {
    /// Turns not yet finished: the latest ended one, and a turn still open in hark that
    /// something was reported about.
    rows: BTreeMap<TurnId, TurnRow>,
    /// The latest turn hark ended.
    ended: Option<TurnId>,
    /// The turn the caller's open speech belongs to, and the media time it started.
    speech: Option<(TurnId, u64)>,
    /// The answer playing began before hark ended its turn.
    early_answer: bool,
    /// Byte offset in the playing answer's `agent_text` where words reported before their
    /// audio played begin (speech-to-speech providers report the whole answer up front); a
    /// cut transcript replaces them.
    unconfirmed_from: Option<usize>,
    /// The previous event was an utterance played to its end: an agent transcript right after
    /// it is about that utterance (the cascade reports each utterance once played).
    after_played: bool,
    /// The latest ended turn as [`TurnLog::take_update`] last handed it out.
    synced: Option<TurnRow>,
    /// The greeting (agent speech before any caller turn), kept like a turn's answer: words
    /// as heard, cut by a barge-in ([`TurnLog::greeting`]).
    greeting: TurnRow,
    /// Media time the greeting's first audio was queued, ms (its `greeting` stage latency).
    greeting_at_ms: Option<u64>,
}

/// The greeting as the caller heard it, for the call's transcript.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GreetingHeard {
    /// The words heard (all of them, unless `interrupted`).
    pub text: String,
    /// Media time the greeting's audio began, ms from the stream's start (its `greeting`
    /// stage latency; 0 when the agent reported none).
    pub at_ms: u64,
    /// The caller cut the greeting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
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
    /// An empty log.
    pub fn new() -> Self {
        TurnLog::default()
    }

    /// Folds one event in. Returns the turns it finished (the previous turn, once the next
    /// one ends), for the store.
    pub fn apply(&mut self, event: &Event) -> Option<TurnRow> {
        match event {
            Event::UserSpeechStarted { turn, media_ms, .. } => {
                self.speech = Some((*turn, *media_ms));
                None
            }
            Event::UserTurnEnded {
                turn,
                start_ms,
                end_ms,
                ..
            } => self.user_turn_ended(*turn, *start_ms, *end_ms),
            Event::UserSpeechDiscarded {
                turn,
                kept,
                start_ms,
                end_ms,
            } => {
                self.speech = None;
                if *kept {
                    self.user_turn_ended(*turn, *start_ms, *end_ms)
                } else {
                    None
                }
            }
            Event::AgentAudioStarted {
                turn,
                since_user_end: Some(d),
                before_turn_end,
                ..
            } => {
                self.agent_audio_started(*turn, d.as_millis() as u64, *before_turn_end);
                None
            }
            Event::AgentAudioHeard {
                turn,
                since_user_end: Some(d),
                ..
            } => {
                let t = self.row(*turn);
                t.heard_latency_ms
                    .get_or_insert(stored(d.as_millis() as u64));
                None
            }
            Event::UtterancePlayed { turn, heard_ms, .. } => {
                self.utterance_played(*turn, *heard_ms);
                None
            }
            Event::BargeIn(b) => {
                let heard = b.interrupted.heard_text.as_deref();
                self.barge_in(b.turn, b.interrupted.heard_ms, heard);
                None
            }
            Event::Agent { turn, report } => {
                self.report(*turn, report);
                None
            }
            _ => None,
        }
    }

    /// The row of `turn`, made on first use (`None` for no turn: the greeting's, kept apart
    /// and never stored as a turn).
    fn row(&mut self, turn: Option<TurnId>) -> &mut TurnRow {
        match turn {
            Some(t) => self.rows.entry(t).or_default(),
            None => &mut self.greeting,
        }
    }

    /// The greeting's words as the caller heard them, once the agent reported any.
    pub fn greeting(&self) -> Option<GreetingHeard> {
        let text = self
            .greeting
            .agent_text
            .as_ref()
            .filter(|s| !s.is_empty())?;
        Some(GreetingHeard {
            text: text.clone(),
            at_ms: self.greeting_at_ms.unwrap_or(0),
            interrupted: self.greeting.interrupted,
        })
    }

    /// `turn` has been ended by hark.
    fn is_ended(&self, turn: TurnId) -> bool {
        self.ended.is_some_and(|e| turn <= e)
    }

    /// hark's endpointing ended `turn` (media time, ms). Returns the previous turn, finished.
    fn user_turn_ended(&mut self, turn: TurnId, start_ms: u64, end_ms: u64) -> Option<TurnRow> {
        self.after_played = false;
        self.speech = None;
        let done = self.ended.and_then(|e| self.rows.remove(&e));
        let t = self.rows.entry(turn).or_default();
        t.user_start_ms = stored(start_ms);
        t.user_end_ms = stored(end_ms);
        t.index = Some(turn.0);
        if !std::mem::take(&mut self.early_answer) {
            // Held agent words (reported before any audio of this answer) are unconfirmed.
            self.unconfirmed_from = t.agent_text.as_ref().map(|_| 0);
        }
        self.ended = Some(turn);
        done
    }

    /// The latest ended turn as it stands now, if it changed since the last call (or was
    /// never handed out): for the store, so a turn is recorded as soon as it ends and updated
    /// as its answer plays, and a crash loses at most what changed since. Carries its
    /// [`TurnRow::index`]: storing it again replaces the earlier row.
    pub fn take_update(&mut self) -> Option<TurnRow> {
        let open = self.rows.get(&self.ended?)?;
        if self.synced.as_ref() == Some(open) {
            return None;
        }
        self.synced = Some(open.clone());
        Some(open.clone())
    }

    /// The first agent audio of an answer to `turn` was sent, `latency_ms` after the caller's
    /// last voiced frame; `before_turn_end`: before hark ended that turn. The first per turn
    /// counts.
    fn agent_audio_started(
        &mut self,
        turn: Option<TurnId>,
        latency_ms: u64,
        before_turn_end: bool,
    ) {
        self.after_played = false;
        if before_turn_end && !self.early_answer {
            self.early_answer = true;
            let held = turn.and_then(|t| self.rows.get(&t));
            self.unconfirmed_from = held.and_then(|t| t.agent_text.as_ref()).map(|_| 0);
        }
        let t = self.row(turn);
        t.latency_ms.get_or_insert(stored(latency_ms));
    }

    /// An utterance of `turn`'s answer played to its end: `heard_ms` of it were heard. Words
    /// reported for it before it played are now confirmed.
    fn utterance_played(&mut self, turn: Option<TurnId>, heard_ms: u64) {
        let t = self.row(turn);
        t.heard_ms = Some(t.heard_ms.unwrap_or(0).saturating_add(stored(heard_ms)));
        self.unconfirmed_from = None;
        self.after_played = true;
    }

    /// The caller barged in on `turn`'s answer: `heard_ms` of the cut utterance were heard
    /// (mark echoes), and `heard_text` its words up to there, when hark knows them. An answer
    /// that began before hark ended the turn was a false start: the turn goes on, and the
    /// provider's next answer is the one timed.
    fn barge_in(&mut self, turn: Option<TurnId>, heard_ms: u64, heard_text: Option<&str>) {
        self.after_played = false;
        let false_start = turn.is_some_and(|t| !self.is_ended(t));
        {
            let t = self.row(turn);
            t.interrupted = true;
            t.heard_ms = Some(t.heard_ms.unwrap_or(0).saturating_add(stored(heard_ms)));
            if false_start {
                t.latency_ms = None;
                t.heard_latency_ms = None;
            }
        }
        if let Some(h) = heard_text {
            self.cut(turn, h);
        }
    }

    /// What the caller heard of a cut answer replaces the words reported for it up front.
    /// Stays replaceable: the agent's own cut transcript may follow hark's.
    fn cut(&mut self, turn: Option<TurnId>, heard: &str) {
        let from = self.unconfirmed_from;
        let t = self.row(turn);
        if let (Some(from), Some(s)) = (from, t.agent_text.as_mut()) {
            s.truncate(from);
            let kept = s.trim_end().len();
            s.truncate(kept);
        }
        let at = append(&mut t.agent_text, heard);
        self.unconfirmed_from = Some(at);
    }

    /// An agent report about `turn`: stage latencies (the first of each stage per turn
    /// counts) and transcripts.
    fn report(&mut self, turn: Option<TurnId>, report: &AgentReport) {
        match report {
            AgentReport::Latency {
                stage: Stage::Greeting,
                ms,
            } => {
                self.greeting_at_ms.get_or_insert(*ms);
            }
            AgentReport::Latency { stage, ms } => {
                let t = self.row(turn);
                set_stage(t, *stage, *ms);
            }
            AgentReport::Transcript {
                role: Role::User,
                text,
                ..
            } => {
                self.after_played = false;
                append(&mut self.row(turn).text, text);
            }
            AgentReport::Transcript {
                role: Role::Agent,
                text,
                interrupted,
            } => self.agent_transcript(turn, text, *interrupted),
            AgentReport::ProviderFault { .. } | AgentReport::ToolCall { .. } => {}
        }
    }

    /// The agent's words for `turn`. `interrupted`: the answer was cut and `text` is what the
    /// caller heard of it (replaces the words reported for it up front); otherwise words of
    /// the answer (appended).
    fn agent_transcript(&mut self, turn: Option<TurnId>, text: &str, interrupted: bool) {
        let confirmed = std::mem::take(&mut self.after_played);
        if interrupted {
            self.cut(turn, text);
            return;
        }
        // Words held for a turn hark has not ended, whose answer has not begun.
        let held = turn.is_some_and(|t| !self.is_ended(t)) && !self.early_answer;
        let unconfirmed = self.unconfirmed_from;
        // A greeting (no caller turn yet) is not a turn: it goes to the greeting's row.
        let t = self.row(turn);
        let at = append(&mut t.agent_text, text);
        if !confirmed && !held {
            self.unconfirmed_from = unconfirmed.or(Some(at));
        }
    }

    /// The stream ended at media time `end_ms`: the last turn, and the exchange of a turn
    /// hark had not ended yet if something was reported about it (its end is the stream's),
    /// in order.
    pub fn finish(&mut self, end_ms: u64) -> Vec<TurnRow> {
        let mut done: Vec<TurnRow> = self
            .ended
            .and_then(|e| self.rows.remove(&e))
            .into_iter()
            .collect();
        let speech = self.speech.take();
        for (turn, mut t) in std::mem::take(&mut self.rows) {
            if t == TurnRow::default() {
                continue;
            }
            let start = match speech {
                Some((s, ms)) if s == turn => ms,
                _ => end_ms,
            };
            t.user_start_ms = stored(start);
            t.user_end_ms = stored(end_ms.max(start));
            t.index = Some(turn.0);
            done.push(t);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use hark_engine::playout::Interrupted;
    use hark_engine::{BargeIn, UtteranceId};

    use super::*;

    // Events as the engine stamps them; each test names the turns the engine would give
    // (`hark_engine`'s turn book decides them, with its own tests).

    fn t(n: u32) -> Option<TurnId> {
        Some(TurnId(n))
    }

    fn ended(log: &mut TurnLog, turn: u32, start_ms: u64, end_ms: u64) -> Option<TurnRow> {
        log.apply(&Event::UserTurnEnded {
            turn: TurnId(turn),
            start_ms,
            end_ms,
            speech_end_at: Instant::now(),
            at: Instant::now(),
            forced: false,
        })
    }

    fn discarded(log: &mut TurnLog, turn: u32, kept: bool, start_ms: u64, end_ms: u64) {
        let done = log.apply(&Event::UserSpeechDiscarded {
            turn: TurnId(turn),
            kept,
            start_ms,
            end_ms,
        });
        assert!(done.is_none());
    }

    fn speech(log: &mut TurnLog, turn: u32, media_ms: u64) {
        log.apply(&Event::UserSpeechStarted {
            turn: TurnId(turn),
            media_ms,
            at: Instant::now(),
        });
    }

    fn started(log: &mut TurnLog, turn: Option<TurnId>, latency_ms: u64, before_turn_end: bool) {
        log.apply(&Event::AgentAudioStarted {
            id: UtteranceId(1),
            turn,
            at: Instant::now(),
            since_user_end: Some(Duration::from_millis(latency_ms)),
            before_turn_end,
        });
    }

    fn heard(log: &mut TurnLog, turn: Option<TurnId>, latency_ms: u64, before_turn_end: bool) {
        log.apply(&Event::AgentAudioHeard {
            id: UtteranceId(1),
            turn,
            at: Instant::now(),
            since_user_end: Some(Duration::from_millis(latency_ms)),
            before_turn_end,
        });
    }

    fn played(log: &mut TurnLog, turn: Option<TurnId>, heard_ms: u64) {
        log.apply(&Event::UtterancePlayed {
            id: UtteranceId(1),
            turn,
            heard_ms,
        });
    }

    fn barge(log: &mut TurnLog, turn: Option<TurnId>, heard_ms: u64, text: Option<&str>) {
        log.apply(&Event::BargeIn(BargeIn {
            at: Instant::now(),
            speech_start_ms: 0,
            decided_ms: 0,
            turn,
            interrupted: Interrupted {
                id: UtteranceId(1),
                heard_ms,
                sent_ms: heard_ms,
                produced_ms: heard_ms,
                heard_text: text.map(str::to_owned),
                dropped: Vec::new(),
            },
        }));
    }

    fn report(log: &mut TurnLog, turn: Option<TurnId>, report: AgentReport) {
        log.apply(&Event::Agent { turn, report });
    }

    fn user(log: &mut TurnLog, turn: Option<TurnId>, text: &str) {
        let text = text.into();
        let r = AgentReport::Transcript {
            role: Role::User,
            text,
            interrupted: false,
        };
        report(log, turn, r);
    }

    fn agent(log: &mut TurnLog, turn: Option<TurnId>, text: &str, interrupted: bool) {
        let text = text.into();
        let r = AgentReport::Transcript {
            role: Role::Agent,
            text,
            interrupted,
        };
        report(log, turn, r);
    }

    fn stage(log: &mut TurnLog, turn: Option<TurnId>, stage: Stage, ms: u64) {
        report(log, turn, AgentReport::Latency { stage, ms });
    }

    #[test]
    fn the_greeting_is_kept_apart_as_heard() {
        // Cascade: reported once played, confirmed.
        let mut log = TurnLog::new();
        assert_eq!(log.greeting(), None);
        stage(&mut log, None, Stage::Greeting, 180);
        played(&mut log, None, 2400);
        agent(&mut log, None, "Hello, this is Acme.", false);
        ended(&mut log, 0, 3000, 4000);
        agent(&mut log, t(0), "Sure.", false);
        let g = log.greeting().expect("greeting");
        assert_eq!(
            (g.text.as_str(), g.at_ms, g.interrupted),
            ("Hello, this is Acme.", 180, false)
        );
        assert_eq!(
            log.take_update().and_then(|t| t.agent_text).as_deref(),
            Some("Sure.")
        );
        let rows = log.finish(6000);
        assert_eq!(rows.len(), 1, "the greeting is not a turn: {rows:?}");

        // Speech-to-speech: the whole greeting up front, then cut: the heard words replace it,
        // and the provider's own cut transcript replaces those.
        let mut log = TurnLog::new();
        agent(
            &mut log,
            None,
            "Hello, this is Acme calling about your bill.",
            false,
        );
        barge(&mut log, None, 700, Some("Hello, this is"));
        let g = log.greeting().expect("greeting");
        assert_eq!((g.text.as_str(), g.interrupted), ("Hello, this is", true));
        agent(&mut log, None, "Hello, this is Acme", true);
        assert_eq!(log.greeting().unwrap().text, "Hello, this is Acme");
        assert!(log.finish(2000).is_empty());
        let json = serde_json::to_value(log.greeting()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"text": "Hello, this is Acme", "at_ms": 0, "interrupted": true})
        );
    }

    #[test]
    fn turns_are_numbered_and_handed_out_when_they_change() {
        let mut log = TurnLog::new();
        assert_eq!(log.take_update(), None, "no turn yet");
        ended(&mut log, 0, 1000, 2000);
        let r = log.take_update().expect("the ended turn, at once");
        assert_eq!(
            (r.index, r.user_end_ms, r.latency_ms),
            (Some(0), 2000, None)
        );
        assert_eq!(log.take_update(), None, "unchanged");
        started(&mut log, t(0), 500, false);
        let r = log.take_update().expect("the answer started");
        assert_eq!((r.index, r.latency_ms), (Some(0), Some(500)));
        played(&mut log, t(0), 900);
        assert_eq!(log.take_update().and_then(|t| t.heard_ms), Some(900));
        let done = ended(&mut log, 1, 4000, 5000).expect("the first turn");
        assert_eq!(done.index, Some(0));
        assert_eq!(log.take_update().and_then(|t| t.index), Some(1));
        let last = log.finish(9000);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].index, Some(1));
    }

    #[test]
    fn cascade_order_words_after_the_turn_ended() {
        let mut log = TurnLog::new();
        assert!(ended(&mut log, 0, 1000, 5100).is_none());
        user(&mut log, t(0), "Hi, I'm calling about my order.");
        started(&mut log, t(0), 1400, false);
        played(&mut log, t(0), 1800);
        agent(&mut log, t(0), "Let me check.", false);
        played(&mut log, t(0), 2200);
        agent(&mut log, t(0), "It left on Monday.", false);
        let r = ended(&mut log, 1, 9000, 10_000).expect("the first turn");
        assert_eq!(r.text.as_deref(), Some("Hi, I'm calling about my order."));
        assert_eq!(
            r.agent_text.as_deref(),
            Some("Let me check. It left on Monday.")
        );
        assert_eq!(
            (r.latency_ms, r.heard_ms, r.interrupted),
            (Some(1400), Some(4000), false)
        );
        let last = log.finish(60_000).pop().expect("the second turn");
        assert_eq!((last.user_start_ms, last.text), (9000, None));
        assert!(log.finish(60_000).is_empty());
    }

    #[test]
    fn speech_to_speech_words_before_hark_ended_the_turn() {
        let mut log = TurnLog::new();
        // Greeting: not a turn.
        agent(&mut log, None, "Hello! How can I help?", false);
        // ElevenLabs endpoints first: its transcript and answer text arrive while hark still
        // waits out stop_ms.
        user(&mut log, t(0), "Where is my parcel?");
        agent(&mut log, t(0), "Let me look.", false);
        stage(&mut log, t(0), Stage::FirstAudio, 50);
        started(&mut log, t(0), 350, true);
        heard(&mut log, t(0), 360, true);
        assert!(ended(&mut log, 0, 1000, 2500).is_none());
        played(&mut log, t(0), 900);
        // The next turn: same again; the first turn keeps its own words.
        user(&mut log, t(1), "Thanks.");
        agent(&mut log, t(1), "You're welcome.", false);
        let r = ended(&mut log, 1, 5000, 5600).unwrap();
        assert_eq!(r.text.as_deref(), Some("Where is my parcel?"));
        assert_eq!(r.agent_text.as_deref(), Some("Let me look."));
        assert_eq!(
            (
                r.latency_ms,
                r.heard_latency_ms,
                r.first_audio_ms,
                r.heard_ms
            ),
            (Some(350), Some(360), Some(50), Some(900))
        );
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!(r.text.as_deref(), Some("Thanks."));
        assert_eq!(r.agent_text.as_deref(), Some("You're welcome."));
    }

    #[test]
    fn stage_latencies_and_heard_latency_land_in_their_turn() {
        let mut log = TurnLog::new();
        stage(&mut log, None, Stage::Greeting, 400);
        ended(&mut log, 0, 1000, 2500);
        stage(&mut log, t(0), Stage::Stt, 150);
        stage(&mut log, t(0), Stage::LlmFirstToken, 300);
        stage(&mut log, t(0), Stage::TtsFirstByte, 150);
        stage(&mut log, t(0), Stage::TtsFirstByte, 170); // a later sentence
        started(&mut log, t(0), 640, false);
        heard(&mut log, t(0), 700, false);
        heard(&mut log, t(0), 5000, false); // a later utterance
        // A speech-to-speech provider's first audio for the next turn, before hark ended it.
        stage(&mut log, t(1), Stage::FirstAudio, 350);
        let r = ended(&mut log, 1, 4000, 5000).unwrap();
        assert_eq!(
            (r.stt_ms, r.llm_ttft_ms, r.tts_ttfb_ms, r.first_audio_ms),
            (Some(150), Some(300), Some(150), None)
        );
        assert_eq!((r.latency_ms, r.heard_latency_ms), (Some(640), Some(700)));
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!((r.first_audio_ms, r.stt_ms), (Some(350), None));
    }

    #[test]
    fn a_discarded_turn_the_provider_answered_is_a_turn() {
        let mut log = TurnLog::new();
        // Noise hark drops as too short, nobody answered: no turn.
        discarded(&mut log, 0, false, 500, 560);
        assert!(log.finish(60_000).is_empty());
        // A short "yes" hark drops but the provider answered.
        user(&mut log, t(0), "Yes.");
        started(&mut log, t(0), 400, true);
        discarded(&mut log, 0, true, 1000, 1150);
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!((r.text.as_deref(), r.latency_ms), (Some("Yes."), Some(400)));
    }

    #[test]
    fn cascade_words_while_the_caller_speaks_again_stay_with_their_turn() {
        // hark's endpointing is the only one: a transcript is about the turn it ended, even if
        // the caller has started talking again meanwhile.
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2500);
        user(&mut log, t(0), "First.");
        ended(&mut log, 1, 3000, 3400);
        user(&mut log, t(1), "Second.");
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!(r.text.as_deref(), Some("Second."));
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2500);
        user(&mut log, t(0), "First.");
        let first = ended(&mut log, 1, 3000, 3400).unwrap();
        assert_eq!(first.text.as_deref(), Some("First."));
    }

    #[test]
    fn an_early_answer_cut_by_the_caller_stays_with_its_turn() {
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2000);
        started(&mut log, t(0), 500, false);
        agent(&mut log, t(0), "Hello there.", false);
        played(&mut log, t(0), 800);
        // The caller pauses 300 ms; the provider answers early; the caller goes on talking.
        agent(&mut log, t(1), "Sure, I", false);
        started(&mut log, t(1), 300, true);
        barge(&mut log, t(1), 200, Some("Sure"));
        // The provider's own cut transcript follows the barge-in (Realtime, ElevenLabs).
        agent(&mut log, t(1), "Sure,", true);
        // The provider's real answer, after hark ended the turn.
        let done = ended(&mut log, 1, 4000, 6000).unwrap();
        assert_eq!(
            (done.interrupted, done.heard_ms, done.agent_text.as_deref()),
            (false, Some(800), Some("Hello there."))
        );
        started(&mut log, t(1), 450, false);
        agent(&mut log, t(1), "Right, your order.", false);
        played(&mut log, t(1), 1500);
        let r = log.finish(60_000).pop().unwrap();
        assert!(r.interrupted);
        assert_eq!(r.heard_ms, Some(1700));
        assert_eq!(
            r.latency_ms,
            Some(450),
            "the false start is not the turn's latency"
        );
        assert_eq!(r.agent_text.as_deref(), Some("Sure, Right, your order."));
    }

    #[test]
    fn an_exchange_before_the_stream_ended_is_kept() {
        // The provider answered; the caller hung up before hark's endpointing ended the turn.
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2000);
        speech(&mut log, 1, 5000);
        user(&mut log, t(1), "Bye.");
        agent(&mut log, t(1), "Goodbye!", false);
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
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2500);
        started(&mut log, t(0), 600, false);
        agent(&mut log, t(0), "Sure, one moment.", false);
        user(&mut log, t(0), "Can you check my order?");
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!(r.text.as_deref(), Some("Can you check my order?"));
        assert_eq!(r.agent_text.as_deref(), Some("Sure, one moment."));
    }

    #[test]
    fn a_barge_in_keeps_what_was_heard() {
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2500);
        user(&mut log, t(0), "Tell me everything.");
        started(&mut log, t(0), 600, false);
        // Words reported as the answer started (Realtime, ElevenLabs) are the whole answer...
        agent(
            &mut log,
            t(0),
            "Well, first there is this, then that.",
            false,
        );
        // ...until the caller cuts it: hark's heard words, then the agent's cut transcript.
        barge(&mut log, t(0), 1200, Some("Well, first"));
        assert_eq!(
            log.rows[&TurnId(0)].agent_text.as_deref(),
            Some("Well, first")
        );
        agent(&mut log, t(0), "Well, first there", true);
        let r = ended(&mut log, 1, 4000, 5000).unwrap();
        assert!(r.interrupted);
        assert_eq!(r.heard_ms, Some(1200));
        assert_eq!(r.agent_text.as_deref(), Some("Well, first there"));
        assert_eq!(r.text.as_deref(), Some("Tell me everything."));
    }

    #[test]
    fn a_cut_cascade_answer_keeps_the_utterances_that_played() {
        // The cascade reports each utterance once played, and the cut one's heard words.
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2500);
        started(&mut log, t(0), 900, false);
        played(&mut log, t(0), 1500);
        agent(&mut log, t(0), "I'm sorry to hear that.", false);
        barge(&mut log, t(0), 700, Some("Let me check"));
        agent(&mut log, t(0), "Let me check the", true);
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!(
            r.agent_text.as_deref(),
            Some("I'm sorry to hear that. Let me check the")
        );
        assert_eq!((r.heard_ms, r.interrupted), (Some(2200), true));
    }

    #[test]
    fn an_answer_cut_before_any_words_were_reported_records_the_heard_words() {
        let mut log = TurnLog::new();
        ended(&mut log, 0, 1000, 2500);
        barge(&mut log, t(0), 300, Some("Well"));
        let r = log.finish(60_000).pop().unwrap();
        assert_eq!(r.agent_text.as_deref(), Some("Well"));
    }
}
