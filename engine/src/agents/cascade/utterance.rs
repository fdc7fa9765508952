//! The agent's utterances: the sentences of one thing it says, synthesised up to
//! [`super::TtsConfig::parallel`] at a time and handed to the playout strictly in order, each
//! audio chunk with its share of the text; a sentence that breaks after some of its audio
//! played asks only for the rest of its words.

use std::collections::VecDeque;
use std::time::Instant;

use hark_codecs::SampleRate;

use super::audio::{self, Pcm16Stream};
use super::pipes::Pipe;
use super::retry::Attempt;
use super::text::{self, SentenceSplitter};
use super::{CascadeAgent, ms, since_ms, wire};
use crate::agent::{Action, AgentReport, FaultKind, PeerId, ProviderFault, Stage};
use crate::playout::{AgentAudio, UtteranceId};

/// Who an utterance belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Greeting,
    /// Something the agent says on its own, outside a turn (a failed transfer).
    Notice,
    /// The filler phrase while an answer is late: heard, reported, never in the history.
    Filler,
    /// The answer to turn `id`.
    Reply(u64),
}

/// One sentence of an utterance: its TTS request and the audio received for it.
#[derive(Debug)]
pub(super) struct Sentence {
    pub sid: u64,
    pub text: String,
    /// Chat round of the reply it belongs to (index into the turn's rounds).
    pub round: usize,
    pub attempt: Attempt,
    /// When it was first asked for.
    pub sent_at: Option<Instant>,
    pcm: Pcm16Stream,
    rate: SampleRate,
    /// Audio received and not yet handed to the playout.
    buffered: Vec<i16>,
    /// Audio received so far, µs.
    pub received_us: u64,
    pub got_bytes: bool,
    /// Characters of `text` handed out with audio so far.
    pub given: usize,
    /// All audio received (or pre-rendered).
    pub done: bool,
    /// Index of its entry in the utterance's `spoken`, once it has played anything.
    pub spoken_ix: Option<usize>,
    /// Cut short (a fault or an interruption): not used to learn the speaking rate.
    truncated: bool,
}

impl Sentence {
    /// A sentence to synthesise.
    fn new(sid: u64, text: String, round: usize, attempt: Attempt) -> Self {
        Sentence {
            sid,
            text,
            round,
            attempt,
            sent_at: None,
            pcm: Pcm16Stream::default(),
            rate: audio::TTS_RATE,
            buffered: Vec::new(),
            received_us: 0,
            got_bytes: false,
            given: 0,
            done: false,
            spoken_ix: None,
            truncated: false,
        }
    }

    /// A sentence whose audio is already there.
    fn prerendered(
        sid: u64,
        text: String,
        round: usize,
        rate: SampleRate,
        samples: Vec<i16>,
        now: Instant,
    ) -> Self {
        let us = rate.duration_of(samples.len()).as_micros() as u64;
        Sentence {
            rate,
            buffered: samples,
            received_us: us,
            got_bytes: true,
            done: true,
            ..Sentence::new(sid, text, round, Attempt::new(now))
        }
    }

    /// Forgets the audio received: it is asked for again.
    pub fn clear_audio(&mut self) {
        self.pcm = Pcm16Stream::default();
        self.buffered.clear();
        self.received_us = 0;
        self.got_bytes = false;
    }

    /// Takes TTS bytes (s16le, carrying an odd byte over).
    fn push(&mut self, bytes: &[u8]) {
        let before = self.buffered.len();
        self.pcm.push(bytes, &mut self.buffered);
        let added = self.buffered.len() - before;
        self.received_us += self.rate.duration_of(added).as_micros() as u64;
    }
}

/// Text that went to the playout with its audio length, for mapping heard ms to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spoken {
    pub text: String,
    pub us: u64,
    pub round: usize,
}

/// Something the agent says, as one playout utterance: its sentences in order and what of
/// them went to the playout.
#[derive(Debug)]
pub(super) struct Utterance {
    pub utt: UtteranceId,
    pub owner: Owner,
    /// Not yet all handed to the playout, in order.
    pub sentences: VecDeque<Sentence>,
    pub spoken: Vec<Spoken>,
    /// No more sentences will be added.
    pub closed: bool,
    /// `Finish` sent (or the utterance was cancelled).
    pub finished: bool,
    /// Some of its audio went to the playout.
    pub started: bool,
    ttfb_reported: bool,
}

impl Utterance {
    fn new(utt: UtteranceId, owner: Owner) -> Self {
        Utterance {
            utt,
            owner,
            sentences: VecDeque::new(),
            spoken: Vec::new(),
            closed: false,
            finished: false,
            started: false,
            ttfb_reported: false,
        }
    }

    /// When a sentence's retry is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sentences
            .iter()
            .filter_map(|s| s.attempt.poll_timeout())
            .min()
    }

    /// The pipes of its sentences.
    pub fn peers(&self) -> Vec<Option<PeerId>> {
        self.sentences.iter().map(|s| s.attempt.peer).collect()
    }

    /// Hands the audio received to the playout in sentence order (the greeting's first audio
    /// reports [`Stage::Greeting`] from `start_at`), learning the speaking rate (µs per
    /// character) from each whole sentence.
    fn play_in_order(
        &mut self,
        now: Instant,
        start_at: Option<Instant>,
        us_per_char: &mut u64,
        out: &mut Vec<Action>,
    ) {
        while let Some(head) = self.sentences.front_mut() {
            let chars = head.text.chars().count();
            let more_text = head.done && head.given < chars;
            if !head.buffered.is_empty() || more_text {
                let samples = std::mem::take(&mut head.buffered);
                let us = head.rate.duration_of(samples.len()).as_micros() as u64;
                let new_given = if head.done {
                    chars
                } else {
                    let est = chars as u64 * *us_per_char;
                    text::text_share(&head.text, head.given, head.received_us, est)
                };
                let piece = text::char_slice(&head.text, head.given, new_given);
                head.given = new_given;
                let ix = *head.spoken_ix.get_or_insert_with(|| {
                    self.spoken.push(Spoken {
                        text: head.text.clone(),
                        us: 0,
                        round: head.round,
                    });
                    self.spoken.len() - 1
                });
                self.spoken[ix].us += us;
                let piece = piece.trim();
                out.push(Action::Play {
                    id: self.utt,
                    audio: AgentAudio::Pcm {
                        rate: head.rate,
                        samples,
                    },
                    text: (!piece.is_empty()).then(|| piece.to_string()),
                });
                if !self.started {
                    self.started = true;
                    if self.owner == Owner::Greeting
                        && let Some(t0) = start_at
                    {
                        out.push(Action::Report(AgentReport::Latency {
                            stage: Stage::Greeting,
                            ms: since_ms(now, t0),
                        }));
                    }
                }
            }
            if !head.done {
                break;
            }
            if head.received_us > 0 && chars > 0 && !head.truncated && head.sent_at.is_some() {
                let per = head.received_us / chars as u64;
                *us_per_char = (*us_per_char * 7 + per * 3) / 10;
            }
            self.sentences.pop_front();
        }
    }

    /// The sentences to ask TTS for now, in order, up to `parallel` in flight. A retry that is
    /// due waits only for a free slot now, not for a timer.
    fn due_for_tts(&mut self, now: Instant, parallel: usize) -> Vec<(u64, String)> {
        for s in self.sentences.iter_mut() {
            if s.attempt.is_due(now) {
                s.attempt.retry_at = None;
            }
        }
        let mut in_flight = self
            .sentences
            .iter()
            .filter(|s| s.attempt.peer.is_some() && !s.done)
            .count();
        let mut to_open = Vec::new();
        for s in &self.sentences {
            if in_flight >= parallel {
                break;
            }
            if s.attempt.peer.is_none() && !s.done && s.attempt.retry_at.is_none() {
                to_open.push((s.sid, s.text.clone()));
                in_flight += 1;
            }
        }
        to_open
    }

    /// Ends sentence `ix` after `cut` characters of its text (at least what was handed out
    /// with audio): no more audio is awaited; the text up to `cut` goes with the audio
    /// received (also in what counts as spoken).
    fn cut_sentence(&mut self, ix: usize, cut: usize) {
        let Some(s) = self.sentences.get_mut(ix) else {
            return;
        };
        s.done = true;
        s.truncated = true;
        s.attempt.stop();
        let kept = text::char_slice(&s.text, 0, cut.max(s.given));
        if let Some(k) = s.spoken_ix
            && let Some(entry) = self.spoken.get_mut(k)
        {
            entry.text = kept.trim().to_string();
        }
        s.text = kept;
    }

    /// Ends sentence `ix` where its audio ends: the text not handed out with audio is dropped.
    fn truncate_sentence(&mut self, ix: usize) {
        let Some(s) = self.sentences.get(ix) else {
            return;
        };
        if s.done && s.truncated {
            // Already cut where its audio ended ([`Utterance::cut_sentence`]).
            return;
        }
        let given = s.given;
        self.cut_sentence(ix, given);
        if let Some(s) = self.sentences.get_mut(ix) {
            s.given = s.text.chars().count();
        }
    }

    /// Stops generating: closes nothing itself (returns the pipes to close), keeps only the
    /// sentences that have started playing, cut where their audio ends.
    pub fn stop_generating(&mut self) -> Vec<Option<PeerId>> {
        let mut peers = Vec::new();
        let mut keep = VecDeque::new();
        for mut s in std::mem::take(&mut self.sentences) {
            peers.push(s.attempt.peer.take());
            if s.spoken_ix.is_some() {
                keep.push_back(s);
            }
        }
        self.sentences = keep;
        for ix in 0..self.sentences.len() {
            self.truncate_sentence(ix);
        }
        self.closed = true;
        peers
    }
}

impl CascadeAgent {
    pub(super) fn new_utterance(&mut self, owner: Owner) -> UtteranceId {
        let utt = UtteranceId(self.next_utt);
        self.next_utt += 1;
        self.utterances.push(Utterance::new(utt, owner));
        utt
    }

    /// Speaks `text` (split into sentences for TTS) as an utterance of its own; returns its id.
    pub(super) fn say(
        &mut self,
        now: Instant,
        owner: Owner,
        text: &str,
        out: &mut Vec<Action>,
    ) -> UtteranceId {
        let utt = self.new_utterance(owner);
        let mut split = SentenceSplitter::new();
        let mut sentences = Vec::new();
        split.push(text, &mut sentences);
        sentences.extend(split.finish());
        for s in sentences {
            self.add_sentence(now, utt, s, 0);
        }
        if let Some(i) = self.utt_ix(utt) {
            self.utterances[i].closed = true;
        }
        self.pump_utterance(now, utt, out);
        utt
    }

    pub(super) fn utt_ix(&self, utt: UtteranceId) -> Option<usize> {
        self.utterances.iter().position(|s| s.utt == utt)
    }

    pub(super) fn sentence(&self, utt: UtteranceId, sid: u64) -> Option<&Sentence> {
        let i = self.utt_ix(utt)?;
        self.utterances[i].sentences.iter().find(|s| s.sid == sid)
    }

    pub(super) fn sentence_mut(&mut self, utt: UtteranceId, sid: u64) -> Option<&mut Sentence> {
        let i = self.utt_ix(utt)?;
        self.utterances[i]
            .sentences
            .iter_mut()
            .find(|s| s.sid == sid)
    }

    /// Adds a sentence to synthesise; its retries may start until the budget from now.
    pub(super) fn add_sentence(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        text: String,
        round: usize,
    ) {
        let sid = self.id();
        let attempt = Attempt::new(now + ms(self.cfg.retry.budget_ms));
        if let Some(i) = self.utt_ix(utt) {
            let s = Sentence::new(sid, text, round, attempt);
            self.utterances[i].sentences.push_back(s);
        }
    }

    /// Adds a sentence whose audio (`samples` at `rate`) is already there.
    pub(super) fn add_prerendered(
        &mut self,
        utt: UtteranceId,
        text: String,
        round: usize,
        rate: SampleRate,
        samples: Vec<i16>,
        now: Instant,
    ) {
        let sid = self.id();
        if let Some(i) = self.utt_ix(utt) {
            let s = Sentence::prerendered(sid, text, round, rate, samples, now);
            self.utterances[i].sentences.push_back(s);
        }
    }

    /// Plays what can be played in order, opens TTS requests up to the parallel limit, and
    /// finishes the utterance when everything is queued.
    pub(super) fn pump_utterance(&mut self, now: Instant, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        if self.utterances[i].finished {
            return;
        }
        let start_at = self.start_at;
        self.utterances[i].play_in_order(now, start_at, &mut self.us_per_char, out);
        let parallel = self.cfg.tts.parallel;
        for (sid, text) in self.utterances[i].due_for_tts(now, parallel) {
            let req = wire::speech_request(&self.cfg, &text);
            let peer = self.open(now, Pipe::Tts { utt, sid }, req, out);
            let sp = &mut self.utterances[i];
            if let Some(s) = sp.sentences.iter_mut().find(|s| s.sid == sid) {
                s.attempt.sent(peer);
                s.sent_at.get_or_insert(now);
            }
        }
        let sp = &mut self.utterances[i];
        if sp.closed && sp.sentences.is_empty() && !sp.finished {
            sp.finished = true;
            out.push(Action::Finish(utt));
            self.utterance_finished(utt, out);
        }
    }

    /// All audio of `utt` is queued: commit its owner to the history, run after-actions.
    fn utterance_finished(&mut self, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        let sp = self.utterances.remove(i);
        match sp.owner {
            Owner::Greeting | Owner::Notice => self.commit_greeting(sp),
            Owner::Filler => self.commit_outside_history(sp),
            Owner::Reply(tid) => {
                if let Some(turn) = self.turn.take_if(|t| t.id == tid) {
                    let after = turn.after.clone();
                    self.commit_turn(turn, sp);
                    if let Some(a) = after {
                        out.push(a.action());
                    }
                }
            }
        }
    }

    /// Stops an utterance's generation (closing its TTS pipes) and commits it with what was
    /// spoken. The playout has already dropped the utterance, or will drop it.
    pub(super) fn cancel_utterance(&mut self, utt: UtteranceId, out: &mut Vec<Action>) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        for p in self.utterances[i].peers() {
            self.pipes.close(p, out);
        }
        let mut sp = self.utterances.remove(i);
        sp.finished = true;
        sp.sentences.clear();
        match sp.owner {
            Owner::Greeting | Owner::Notice => self.commit_greeting(sp),
            Owner::Filler => self.commit_outside_history(sp),
            Owner::Reply(tid) => {
                if let Some(turn) = self.turn.take_if(|t| t.id == tid) {
                    self.close_turn_pipes(&turn, out);
                    self.commit_turn(turn, sp);
                } else {
                    self.commit_outside_history(sp);
                }
            }
        }
    }

    /// TTS audio of sentence `sid` of `utt` arrived.
    pub(super) fn on_tts_bytes(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        bytes: &[u8],
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        let sp = &mut self.utterances[i];
        let reply = matches!(sp.owner, Owner::Reply(_));
        let Some(s) = sp.sentences.iter_mut().find(|s| s.sid == sid) else {
            return;
        };
        if !s.got_bytes && !bytes.is_empty() {
            s.got_bytes = true;
            if !sp.ttfb_reported && reply {
                sp.ttfb_reported = true;
                if let Some(t) = s.sent_at {
                    out.push(Action::Report(AgentReport::Latency {
                        stage: Stage::TtsFirstByte,
                        ms: since_ms(now, t),
                    }));
                }
            }
        }
        s.push(bytes);
        self.pump_utterance(now, utt, out);
    }

    /// The TTS response of sentence `sid` of `utt` ended.
    pub(super) fn on_tts_closed(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.sentence_mut(utt, sid) else {
            return;
        };
        s.attempt.peer = None;
        if !s.got_bytes {
            let f = ProviderFault::new(FaultKind::EmptyAudio, "the speech response had no audio");
            self.fault(now, Pipe::Tts { utt, sid }, f, out);
            return;
        }
        s.done = true;
        self.pump_utterance(now, utt, out);
    }

    /// A sentence whose audio has started playing broke off (dropped, stalled): its audio so
    /// far stays, cut after the word it reached, and the rest of its text becomes a sentence of
    /// its own, synthesised again (after the retry delay) — or, when no retry is allowed, the
    /// answer ends with the fallback phrase.
    pub(super) fn resume_sentence(
        &mut self,
        now: Instant,
        utt: UtteranceId,
        sid: u64,
        f: &ProviderFault,
        out: &mut Vec<Action>,
    ) {
        let Some(i) = self.utt_ix(utt) else {
            return;
        };
        let Some(ix) = self.utterances[i]
            .sentences
            .iter()
            .position(|s| s.sid == sid)
        else {
            return;
        };
        let s = &self.utterances[i].sentences[ix];
        let est_us = s.text.chars().count() as u64 * self.us_per_char;
        let cut = text::resume_at(&s.text, s.given, s.received_us, est_us);
        let rest = text::char_slice(&s.text, cut, usize::MAX)
            .trim()
            .to_string();
        // The rest carries on the sentence's retries and budget.
        let mut next = s.attempt.clone();
        let delay = next.fault(now, &self.cfg.retry, f);
        let round = s.round;
        self.utterances[i].cut_sentence(ix, cut);
        if rest.is_empty() {
            // Only the sentence's last word was missing its end: nothing more to say.
            self.pump_utterance(now, utt, out);
            return;
        }
        if delay.is_none() {
            self.give_up_utterance(now, utt, sid, out);
            return;
        }
        let rest = Sentence::new(self.id(), rest, round, next);
        if let Some(i) = self.utt_ix(utt) {
            self.utterances[i].sentences.insert(ix + 1, rest);
        }
        self.pump_utterance(now, utt, out);
    }

    /// Asks TTS again for the sentences whose retry is due.
    pub(super) fn retry_sentences(&mut self, now: Instant, out: &mut Vec<Action>) {
        let due: Vec<UtteranceId> = self
            .utterances
            .iter()
            .filter(|sp| sp.sentences.iter().any(|s| s.attempt.is_due(now)))
            .map(|sp| sp.utt)
            .collect();
        for u in due {
            self.pump_utterance(now, u, out);
        }
    }

    /// When a sentence's retry is due.
    pub(super) fn utterances_poll_timeout(&self) -> Option<Instant> {
        self.utterances
            .iter()
            .filter_map(Utterance::poll_timeout)
            .min()
    }
}
