//! The call's public vocabulary: what goes in ([`Input`]), what comes out ([`Output`],
//! [`Event`]), why a call closes ([`CloseReason`]), what counts as bad input ([`Malformed`]),
//! caller-turn identity ([`TurnId`]) and the counters ([`CallStats`]).

use std::time::{Duration, Instant};

use crate::agent::{CallInfo, ProviderCommand, ProviderEvent};
use crate::playout::{Interrupted, PlayoutStats, UtteranceId};

/// An input to the call. Every input carries the time it happened (arrival at the driver).
#[derive(Debug)]
pub enum Input<'a> {
    /// A text frame from Twilio's WebSocket.
    Twilio {
        /// Arrival time.
        at: Instant,
        /// The frame's text.
        text: &'a str,
    },
    /// A binary frame from Twilio (Twilio sends only text; counted as malformed).
    TwilioBinary {
        /// Arrival time.
        at: Instant,
        /// Its length in bytes.
        len: usize,
    },
    /// Twilio's socket closed (with or without `stop`).
    TwilioClosed {
        /// When.
        at: Instant,
    },
    /// A provider pipe reported something.
    Provider {
        /// Arrival time.
        at: Instant,
        /// What happened.
        event: ProviderEvent,
    },
    /// The deadline from the last [`Output::Timeout`] has come.
    Timeout(Instant),
    /// The outcome of the transfer the call asked for with [`Output::Transfer`]. Ignored
    /// unless a transfer is in flight.
    Transfer {
        /// When it came.
        at: Instant,
        /// Redirected, or why not.
        outcome: TransferOutcome,
    },
    /// The answer to [`Output::TurnCheck`] `id`: the end-of-turn model's probability (0–1)
    /// that the caller's turn is complete, or `None` when it could not run (its pool was busy,
    /// or it failed to load): then the silence rule decides. Answers to older checks (the
    /// caller spoke again since), and answers while the call holds for a transfer, are ignored.
    TurnCheck {
        /// When it came.
        at: Instant,
        /// The check's id.
        id: u64,
        /// P(complete), or `None`.
        probability: Option<f32>,
    },
    /// Who or what answered the call, as Twilio's answering machine detection found it
    /// (asynchronous AMD, told to the gateway by a callback while the call runs). Emitted as
    /// [`Event::AnsweredBy`] and handed to the agent
    /// ([`Agent::on_answered_by`](crate::Agent::on_answered_by)); ignored before `start`,
    /// after the stream stopped, and while the call holds for a transfer. After
    /// [`AnsweredBy::MachineEnd`] the caller's side no longer barges in on the agent (the
    /// machine is recording: its beep or noise must not cut the message).
    AnsweredBy {
        /// When it came.
        at: Instant,
        /// The verdict.
        answered_by: AnsweredBy,
    },
}

/// Twilio's answering machine detection verdict (`AnsweredBy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnsweredBy {
    /// `human`: a person; the conversation goes on.
    Human,
    /// `machine_start`: a machine's greeting began (with `MachineDetection=Enable`, or before
    /// its end is known).
    MachineStart,
    /// `machine_end_*` (`MachineDetection=DetectMessageEnd`): the machine's greeting is over,
    /// after a beep, silence or otherwise: the moment to leave a message.
    MachineEnd(MachineEnd),
    /// `fax`.
    Fax,
    /// `unknown`, or a value hark does not know.
    Unknown,
}

/// How a machine's greeting ended ([`AnsweredBy::MachineEnd`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineEnd {
    /// `machine_end_beep`.
    Beep,
    /// `machine_end_silence`.
    Silence,
    /// `machine_end_other`.
    Other,
}

impl AnsweredBy {
    /// Twilio's `AnsweredBy` value; anything else is [`AnsweredBy::Unknown`].
    pub fn from_twilio(value: &str) -> AnsweredBy {
        match value {
            "human" => AnsweredBy::Human,
            "machine_start" => AnsweredBy::MachineStart,
            "machine_end_beep" => AnsweredBy::MachineEnd(MachineEnd::Beep),
            "machine_end_silence" => AnsweredBy::MachineEnd(MachineEnd::Silence),
            "machine_end_other" => AnsweredBy::MachineEnd(MachineEnd::Other),
            "fax" => AnsweredBy::Fax,
            _ => AnsweredBy::Unknown,
        }
    }

    /// Twilio's spelling (`human`, `machine_end_beep`, …), for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::MachineStart => "machine_start",
            AnsweredBy::MachineEnd(MachineEnd::Beep) => "machine_end_beep",
            AnsweredBy::MachineEnd(MachineEnd::Silence) => "machine_end_silence",
            AnsweredBy::MachineEnd(MachineEnd::Other) => "machine_end_other",
            AnsweredBy::Fax => "fax",
            AnsweredBy::Unknown => "unknown",
        }
    }
}

/// A fact about a live call from outside its media stream, for the driver to feed in
/// ([`crate::io::CallControl::next_notice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallNotice {
    /// Twilio's answering machine detection verdict: becomes [`Input::AnsweredBy`].
    AnsweredBy(AnsweredBy),
}

/// What became of a transfer ([`Output::Transfer`]), fed back as [`Input::Transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// Twilio took the new TwiML: it ends the stream from its side. The call closes with
    /// [`CloseReason::Transfer`].
    Redirected,
    /// The call could not be redirected (Twilio's REST API refused or did not answer, no
    /// credentials): the call goes on and the agent is told
    /// ([`Agent::on_transfer_failed`](crate::Agent::on_transfer_failed)). After
    /// [`crate::Call::MAX_FAILED_TRANSFERS`] failures the call hangs up instead.
    Failed {
        /// Why, for the agent and the logs.
        reason: String,
    },
}

/// Why the call asks the driver to close Twilio's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Twilio sent `stop`.
    Stopped,
    /// The agent hung up (reason given); queued audio has played.
    Hangup(String),
    /// The call was handed to this number or SIP URI: the transfer asked for with
    /// [`Output::Transfer`] came back [`TransferOutcome::Redirected`] (Twilio ends the stream
    /// from its side; the socket can close).
    Transfer(String),
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Output<'a> {
    /// Send this JSON text frame to Twilio.
    Transmit(&'a str),
    /// Carry out a provider command.
    Provider(ProviderCommand),
    /// Report an event (logs, metrics, the call record).
    Event(Event),
    /// Close Twilio's socket: for `<Connect><Stream>` that makes Twilio continue with the TwiML
    /// after `</Connect>`.
    Close(CloseReason),
    /// Redirect the live call to `to` (E.164 number or SIP URI): the agent asked for a
    /// transfer and the audio queued before it has played. The driver carries it out (Twilio
    /// REST `POST …/Calls/{CallSid}.json` with `Twiml=<Dial>…`) while the socket stays open —
    /// closing it first would make Twilio run the TwiML after `</Connect>`, a hang-up, before
    /// the transfer lands — and feeds the result back as [`Input::Transfer`]. Meanwhile the
    /// call holds: inbound audio only advances media time (no turns), and the agent hears
    /// nothing (provider events wait for the outcome).
    Transfer {
        /// Where to.
        to: String,
    },
    /// Ask the end-of-turn model whether the caller's turn is complete
    /// ([`crate::config::EndOfTurn::SmartTurn`]): run it off the call's thread and feed the
    /// answer back as [`Input::TurnCheck`] with the same id (or `None` at once when it cannot
    /// run). Never answering is safe: the turn then ends after `model_stop_ms` of silence.
    TurnCheck(TurnCheck),
    /// Nothing more to do now; call [`crate::Call::handle_input`] with [`Input::Timeout`] at this time
    /// (`None`: only new input can wake the call).
    Timeout(Option<Instant>),
}

/// A question for the end-of-turn model ([`Output::TurnCheck`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCheck {
    /// Echoed back in [`Input::TurnCheck`].
    pub id: u64,
    /// The caller's audio: 16-bit PCM at 8 kHz, from 500 ms before the turn's speech start to
    /// the check, at most the last 8 s (64 000 samples).
    pub audio: Vec<i16>,
}

/// Kinds of bad or unexpected input, each counted in [`CallStats::malformed`]. None of them ends
/// the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Not JSON, or JSON of the wrong shape.
    Json,
    /// A known event lacking a required field.
    MissingField,
    /// `media.payload` is not valid base64.
    BadBase64,
    /// `media.payload` decodes to nothing.
    EmptyPayload,
    /// A text frame over `max_message_bytes`.
    TooLarge,
    /// A binary frame.
    Binary,
    /// `media` (or `mark`/`dtmf`) before `start`.
    BeforeStart,
    /// A second `start`.
    SecondStart,
    /// A message after `stop`.
    AfterStop,
    /// `mediaFormat` other than μ-law 8 kHz mono.
    UnsupportedFormat,
    /// A `mark` echo hark never sent.
    UnknownMark,
    /// `streamSid` differs from the one in `start`.
    WrongStream,
    /// A `hark_*` custom parameter of `start` that is unknown or out of range (ignored; see
    /// [`crate::config::CallConfig::with_parameters`]).
    BadParameter,
}

impl Malformed {
    /// All kinds, in a fixed order (for metrics).
    pub const ALL: [Malformed; 13] = [
        Malformed::Json,
        Malformed::MissingField,
        Malformed::BadBase64,
        Malformed::EmptyPayload,
        Malformed::TooLarge,
        Malformed::Binary,
        Malformed::BeforeStart,
        Malformed::SecondStart,
        Malformed::AfterStop,
        Malformed::UnsupportedFormat,
        Malformed::UnknownMark,
        Malformed::WrongStream,
        Malformed::BadParameter,
    ];

    /// A stable snake_case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Json => "json",
            Malformed::MissingField => "missing_field",
            Malformed::BadBase64 => "bad_base64",
            Malformed::EmptyPayload => "empty_payload",
            Malformed::TooLarge => "too_large",
            Malformed::Binary => "binary",
            Malformed::BeforeStart => "before_start",
            Malformed::SecondStart => "second_start",
            Malformed::AfterStop => "after_stop",
            Malformed::UnsupportedFormat => "unsupported_format",
            Malformed::UnknownMark => "unknown_mark",
            Malformed::WrongStream => "wrong_stream",
            Malformed::BadParameter => "bad_parameter",
        }
    }
}

/// A caller turn's identity. The engine gives it when the caller starts speaking
/// ([`Event::UserSpeechStarted`]) and stamps it on every event and agent report that belongs to
/// the turn: its end, the answer's audio (also an answer a speech-to-speech provider starts
/// before hark's endpointing has ended the turn), what of the answer was heard, barge-ins on
/// it, transcripts and stage latencies. A call record is then a plain fold over events.
///
/// Turns are numbered from 0 in the order they end. Speech dropped as too short that nothing
/// was said about ([`Event::UserSpeechDiscarded`] with `kept: false`) gives its number to the
/// next speech, so the numbers of a call's turns have no gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TurnId(pub u32);

impl std::fmt::Display for TurnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "turn-{}", self.0)
    }
}

/// A barge-in: the caller spoke over the agent and playback was cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BargeIn {
    /// When the `clear` was emitted.
    pub at: Instant,
    /// Media time of the caller's first voiced frame.
    pub speech_start_ms: u64,
    /// Media time when the barge-in was decided (end of the deciding frame).
    pub decided_ms: u64,
    /// The caller turn whose answer was cut (`None`: the greeting, before any turn).
    pub turn: Option<TurnId>,
    /// What was interrupted and what of it was heard.
    pub interrupted: Interrupted,
}

impl BargeIn {
    /// Media ms from the start of the first voiced frame to the decision (the `clear`).
    pub fn delay_ms(&self) -> u64 {
        self.decided_ms - self.speech_start_ms
    }
}

/// Events for logs, metrics, the call record and tests. Times are `Instant`s of the inputs that
/// caused them; `*_ms` are media times (ms of inbound audio since the stream started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `connected` arrived.
    Connected,
    /// `start` arrived.
    Started(CallInfo),
    /// The caller started speaking.
    UserSpeechStarted {
        /// The turn this speech opens.
        turn: TurnId,
        /// Media time of the first voiced frame.
        media_ms: u64,
        /// Arrival of the frame that confirmed it.
        at: Instant,
    },
    /// The caller's turn ended (endpointing), and was handed to the agent.
    UserTurnEnded {
        /// The turn.
        turn: TurnId,
        /// Media time of the first voiced frame.
        start_ms: u64,
        /// Media time at the end of the last voiced frame.
        end_ms: u64,
        /// Arrival of the last voiced frame.
        speech_end_at: Instant,
        /// When endpointing decided (`stop_ms` later).
        at: Instant,
        /// `max_utterance_ms` forced the end.
        forced: bool,
    },
    /// The end-of-turn model answered ([`Input::TurnCheck`]) about the open turn.
    TurnModelAnswered {
        /// The turn asked about.
        turn: TurnId,
        /// Its P(complete) in percent; `None`: it could not run.
        probability_pct: Option<u8>,
        /// Complete (at or over `model_threshold_pct`), unfinished, or no answer (`None`).
        complete: Option<bool>,
        /// From the check going out to the answer.
        waited: Duration,
    },
    /// Voice too short to be a turn (cough, click), dropped: the agent is not given it.
    UserSpeechDiscarded {
        /// The turn the speech had opened.
        turn: TurnId,
        /// Something was already reported about this turn (a speech-to-speech provider heard a
        /// turn there and answered or transcribed it): it counts as a turn of the call, ended
        /// here. Otherwise the next speech reuses its number.
        kept: bool,
        /// Media time of the first voiced frame.
        start_ms: u64,
        /// Media time at the end of the last voiced frame.
        end_ms: u64,
    },
    /// The first `media` of an agent utterance was sent.
    AgentAudioStarted {
        /// The utterance.
        id: UtteranceId,
        /// The caller turn it answers (`None`: the greeting, before any turn).
        turn: Option<TurnId>,
        /// When.
        at: Instant,
        /// Time since the caller's last voiced frame arrived, when this answers a turn: the
        /// engine-side voice-to-voice latency (endpointing wait included).
        since_user_end: Option<Duration>,
        /// The answer began while hark's endpointing still held the caller's turn open (a
        /// provider that ends turns itself did so first, after at least
        /// [`crate::Call::EARLY_ANSWER_SILENCE`] of silence): its [`Event::UserTurnEnded`] follows.
        before_turn_end: bool,
    },
    /// The first mark of an agent utterance was echoed: the caller heard it begin.
    AgentAudioHeard {
        /// The utterance.
        id: UtteranceId,
        /// The caller turn it answers (`None`: the greeting, before any turn).
        turn: Option<TurnId>,
        /// When the echo arrived.
        at: Instant,
        /// When this utterance answers a turn: caller's last voiced frame → the caller began
        /// hearing the answer (the echo's arrival minus the audio the mark covers, as Twilio
        /// echoes a mark once playback reaches it). Voice-to-voice latency at the phone, as
        /// far as hark can see it; the echo's trip back to hark makes it a slight over-estimate.
        since_user_end: Option<Duration>,
        /// As for [`Event::AgentAudioStarted`]: the answer's turn had not been ended by hark
        /// when the answer began.
        before_turn_end: bool,
    },
    /// An agent utterance played to the end.
    UtterancePlayed {
        /// The utterance.
        id: UtteranceId,
        /// The caller turn whose answer is playing (`None`: the greeting).
        turn: Option<TurnId>,
        /// Audio heard, ms.
        heard_ms: u64,
    },
    /// The caller barged in: the agent's answer was cut and the agent told. With
    /// [`crate::config::TurnConfig::resume_after_ms`] this comes when a hold is confirmed,
    /// its `decided_ms` the hold's (when the `clear` went out).
    BargeIn(BargeIn),
    /// The caller's voice over the agent held its audio (Twilio `clear` sent, the unheard
    /// rest kept): a barge-in unless it turns out to be a backchannel or nothing
    /// ([`Event::PlaybackResumed`]).
    PlaybackPaused {
        /// Media time of the caller's first voiced frame.
        speech_start_ms: u64,
        /// Media time of the decision (end of the deciding frame).
        decided_ms: u64,
        /// When the `clear` was queued.
        at: Instant,
    },
    /// A held answer plays on from where the caller stopped hearing it.
    PlaybackResumed {
        /// When.
        at: Instant,
        /// How long it was held.
        held: Duration,
        /// The caller's speech was a backchannel (else a blip or nothing within the time).
        backchannel: bool,
    },
    /// The caller pressed a key.
    Dtmf {
        /// The digit.
        digit: String,
        /// When.
        at: Instant,
    },
    /// Bad input, counted and skipped.
    Malformed {
        /// What kind.
        kind: Malformed,
        /// Details for the log.
        detail: String,
    },
    /// Something the agent reported: transcripts, stage latencies, provider faults, tools.
    Agent {
        /// The caller turn the report is about (`None`: none yet, e.g. the greeting's latency,
        /// or a report about no turn such as a provider fault before the first one).
        turn: Option<TurnId>,
        /// The report.
        report: crate::agent::AgentReport,
    },
    /// The agent asked to transfer the call. [`Output::Transfer`] follows once the audio queued
    /// before the request has played.
    TransferRequested {
        /// Destination.
        to: String,
    },
    /// A transfer could not be carried out ([`TransferOutcome::Failed`]); the call goes on.
    TransferFailed {
        /// Where it was to go.
        to: String,
        /// Why it failed.
        reason: String,
    },
    /// Answering machine detection's verdict reached the call ([`Input::AnsweredBy`]).
    AnsweredBy {
        /// The verdict.
        answered_by: AnsweredBy,
        /// When it came.
        at: Instant,
    },
    /// `stop` arrived or the socket closed.
    Stopped {
        /// When.
        at: Instant,
    },
}

/// Counters for one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Text frames received.
    pub messages: u64,
    /// `media` messages accepted (inbound track).
    pub media_messages: u64,
    /// 20 ms frames run through the VAD.
    pub frames: u64,
    /// Inbound audio, ms (from payload bytes).
    pub inbound_ms: u64,
    /// Malformed inputs by kind, in [`Malformed::ALL`] order.
    pub malformed: [u64; 13],
    /// JSON fields the parser skipped (extra fields).
    pub ignored_fields: u64,
    /// Messages with an unknown `event`.
    pub unknown_events: u64,
    /// `media` on tracks other than inbound (skipped).
    pub other_track: u64,
    /// Caller turns handed to the agent.
    pub turns: u64,
    /// Voice discarded as too short.
    pub discarded: u64,
    /// Barge-ins.
    pub barge_ins: u64,
    /// Held barge-ins undone: the agent played on (backchannels, blips, noise).
    pub resumed: u64,
    /// End-of-turn model checks asked ([`Output::TurnCheck`]).
    pub turn_checks: u64,
    /// Of those, answered with "could not run".
    pub turn_checks_unanswered: u64,
    /// Playout totals.
    pub playout: PlayoutStats,
}

impl CallStats {
    /// Total malformed inputs of all kinds.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    /// Count of one kind.
    pub fn malformed(&self, kind: Malformed) -> u64 {
        self.malformed[Malformed::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
    }
}
