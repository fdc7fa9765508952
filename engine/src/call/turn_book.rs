//! [`TurnBook`]: which caller turn an event or agent report belongs to ([`TurnId`]).
//!
//! The call asks it at each event; nothing outside the engine guesses turns. The rules, in the
//! order a turn lives:
//! - the caller's speech opens turn `next` ([`TurnBook::current`]); hark's endpointing ends it
//!   ([`TurnBook::end`]) and the next speech gets `next + 1`;
//! - when hark's endpointing is the only one (the cascade: the agent's provider does not end
//!   turns), every report is about the latest turn hark ended;
//! - a speech-to-speech provider (ElevenLabs, OpenAI Realtime with server VAD) ends turns
//!   itself, often before hark's `stop_ms` of silence has passed: what it reports while the
//!   caller's speech is still open in hark — transcripts, stage latencies, an answer that
//!   begins — is about that open turn, and is *held* for it;
//! - a caller transcript before any turn has ended is held for the next turn;
//! - the answer playing belongs to the turn it began for ([`TurnBook::answer_event`]): the open turn
//!   if it began before hark ended it, else the latest ended turn;
//! - speech dropped as too short is a turn only if something was held for it
//!   ([`TurnBook::discard`]); otherwise its number goes to the next speech.

use super::TurnId;
use crate::agent::{AgentReport, Role, Stage};

/// Caller-turn identity for one call. See the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct TurnBook {
    /// The agent's provider ends turns itself ([`crate::Call::provider_ends_turns`]).
    provider_ends_turns: bool,
    /// The number of the caller turn open now, or of the next one.
    next: u32,
    /// Something was stamped with `next` already (held for it).
    held: bool,
    /// The latest turn hark's endpointing ended.
    last_ended: Option<TurnId>,
    /// The answer playing began before hark ended turn `next`.
    early_answer: bool,
}

/// What the call knows when an agent report arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReportContext {
    /// The caller's speech is open in hark (its endpointing has not ended it yet).
    pub turn_open: bool,
    /// Agent audio is still unplayed.
    pub agent_speaking: bool,
}

impl TurnBook {
    /// A book for a call whose agent's provider ends turns itself, or not.
    pub fn new(provider_ends_turns: bool) -> Self {
        TurnBook {
            provider_ends_turns,
            ..TurnBook::default()
        }
    }

    /// The turn the caller's speech opens now (or the next speech will open).
    pub fn current(&self) -> TurnId {
        TurnId(self.next)
    }

    /// hark's endpointing ended the open turn.
    pub fn end(&mut self) -> TurnId {
        let id = TurnId(self.next);
        self.last_ended = Some(id);
        self.next += 1;
        self.held = false;
        self.early_answer = false;
        id
    }

    /// The open speech was dropped as too short: `(turn, kept)`, where `kept` says it counts as
    /// a turn (something was held for it) and is now ended.
    pub fn discard(&mut self) -> (TurnId, bool) {
        if self.held {
            (self.end(), true)
        } else {
            (TurnId(self.next), false)
        }
    }

    /// The open (or next) turn, now holding something.
    fn hold(&mut self) -> TurnId {
        self.held = true;
        TurnId(self.next)
    }

    /// Where something about "the caller's turn" goes: the open turn while the caller's speech
    /// is open and the provider ends turns itself (`turn_open`), else the latest ended turn.
    fn target(&mut self, turn_open: bool) -> Option<TurnId> {
        if turn_open && self.provider_ends_turns {
            Some(self.hold())
        } else {
            self.last_ended
        }
    }

    /// The first audio of an utterance was sent; `before_turn_end`: it answers the turn still
    /// open in hark ([`super::Event::AgentAudioStarted::before_turn_end`]).
    pub fn audio_started(&mut self, before_turn_end: bool) -> Option<TurnId> {
        if before_turn_end {
            self.early_answer = true;
        }
        self.target(before_turn_end)
    }

    /// The caller began hearing an utterance ([`super::Event::AgentAudioHeard`]).
    pub fn audio_heard(&mut self, before_turn_end: bool) -> Option<TurnId> {
        self.target(before_turn_end)
    }

    /// The turn an agent report is about.
    pub fn report(&mut self, report: &AgentReport, cx: ReportContext) -> Option<TurnId> {
        match report {
            AgentReport::Latency {
                stage: Stage::Greeting,
                ..
            } => None,
            AgentReport::Latency { .. } => self.target(cx.turn_open),
            AgentReport::Transcript {
                role: Role::User, ..
            } => match self.target(cx.turn_open) {
                Some(t) => Some(t),
                // Before any turn ended: held for the next one.
                None => Some(self.hold()),
            },
            AgentReport::Transcript {
                role: Role::Agent,
                interrupted: true,
                ..
            } => self.answer_held(),
            AgentReport::Transcript {
                role: Role::Agent, ..
            } => {
                // Words of an answer not yet playing, to a turn hark has not ended: held.
                if cx.turn_open && self.provider_ends_turns && !cx.agent_speaking {
                    Some(self.hold())
                } else {
                    self.answer_held()
                }
            }
            // About the turn being answered; they do not make a turn of dropped speech.
            AgentReport::ProviderFault { .. } | AgentReport::ToolCall { .. } => {
                if cx.turn_open && self.provider_ends_turns {
                    Some(TurnId(self.next))
                } else {
                    self.last_ended
                }
            }
        }
    }

    /// The turn whose answer is playing (`None`: the greeting, before any turn), marking the
    /// open turn as holding something when it is that one.
    fn answer_held(&mut self) -> Option<TurnId> {
        if self.early_answer {
            Some(self.hold())
        } else {
            self.last_ended
        }
    }

    /// The turn whose answer is playing, for an event about it (played, cut).
    pub fn answer_event(&mut self) -> Option<TurnId> {
        self.answer_held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(role: Role, interrupted: bool) -> AgentReport {
        AgentReport::Transcript {
            role,
            text: "words".into(),
            interrupted,
        }
    }

    const OPEN: ReportContext = ReportContext {
        turn_open: true,
        agent_speaking: false,
    };
    const CLOSED: ReportContext = ReportContext {
        turn_open: false,
        agent_speaking: false,
    };

    #[test]
    fn cascade_reports_go_to_the_latest_ended_turn() {
        let mut b = TurnBook::new(false);
        assert_eq!(b.report(&transcript(Role::Agent, false), CLOSED), None);
        assert_eq!(b.current(), TurnId(0));
        assert_eq!(b.end(), TurnId(0));
        // The caller speaks again while the answer to turn 0 is transcribed.
        assert_eq!(b.current(), TurnId(1));
        assert_eq!(
            b.report(&transcript(Role::User, false), OPEN),
            Some(TurnId(0))
        );
        assert_eq!(b.discard(), (TurnId(1), false), "nothing held: not a turn");
        assert_eq!(b.end(), TurnId(1), "the number is reused");
    }

    #[test]
    fn speech_to_speech_reports_before_the_end_are_held_for_the_open_turn() {
        let mut b = TurnBook::new(true);
        assert_eq!(
            b.report(&transcript(Role::User, false), OPEN),
            Some(TurnId(0))
        );
        assert_eq!(b.audio_started(true), Some(TurnId(0)));
        assert_eq!(b.answer_event(), Some(TurnId(0)));
        let fault = AgentReport::ProviderFault {
            provider: "p".into(),
            kind: "k".into(),
            detail: String::new(),
        };
        assert_eq!(b.report(&fault, OPEN), Some(TurnId(0)));
        assert_eq!(b.end(), TurnId(0));
        assert_eq!(b.answer_event(), Some(TurnId(0)));
        // A short "yes" hark drops but the provider answered: a turn.
        assert_eq!(
            b.report(&transcript(Role::User, false), OPEN),
            Some(TurnId(1))
        );
        assert_eq!(b.discard(), (TurnId(1), true));
        assert_eq!(b.current(), TurnId(2));
        // Late input transcription with no speech open: the latest turn.
        assert_eq!(
            b.report(&transcript(Role::User, false), CLOSED),
            Some(TurnId(1))
        );
    }

    #[test]
    fn a_greeting_is_no_turn_and_a_first_transcript_is_held() {
        let mut b = TurnBook::new(true);
        let greeting = AgentReport::Latency {
            stage: Stage::Greeting,
            ms: 300,
        };
        assert_eq!(b.report(&greeting, OPEN), None);
        assert_eq!(b.audio_started(false), None);
        assert_eq!(b.discard(), (TurnId(0), false));
        assert_eq!(
            b.report(&transcript(Role::User, false), CLOSED),
            Some(TurnId(0))
        );
        assert_eq!(b.discard(), (TurnId(0), true));
    }
}
