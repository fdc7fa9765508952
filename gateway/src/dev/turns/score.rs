//! Scoring a run of a scene against its annotation.
//!
//! Times are media ms (caller audio since the stream started). A turn "ends" when the call
//! emits [`Event::UserTurnEnded`] (handed to the agent; a discarded blip is not an end); the
//! time it ends is the media time at which the call emitted it (the decision), not the end of
//! voice it reports.
//!
//! - **Frame F1**: 20 ms frames, a frame is speech when at least 10 ms of it lies in the
//!   annotation's `speech`; the VAD's own per-frame verdicts against that.
//! - **Missed onset**: no speech start decided from 100 ms before an utterance's first speech
//!   to 500 ms after it. **Never heard**: no turn at all overlaps the utterance.
//! - **End-of-turn latency**: the first turn end decided at or after the utterance's last
//!   speech, of a turn that began before it: decision − last speech. None before the next
//!   utterance began counts as infinitely late.
//! - **Cut-off**: a turn end decided strictly inside an utterance (`turns`), or from an inner
//!   pause's start to the utterance's end (`pauses`): the agent got half a sentence.
//! - **Agent scene**: a sound interrupts when a barge-in's speech start lies from 200 ms before
//!   it to 300 ms after it, or the barge-in was decided from its start to 600 ms after its end.
//!   "Interrupts" means the agent's answer was cut ([`Event::BargeIn`]); a `clear` that only
//!   held the answer, which then played on ([`Event::PlaybackPaused`], then
//!   [`Event::PlaybackResumed`]), is counted apart as "held". A barge-in near no sound is a
//!   **false barge-in**, counted per minute of agent speech over quiet caller audio (more than
//!   1 s from any sound). Only sounds that begin while the agent is audible count: audible
//!   at the annotated start, or [`EARLY_MS`] before it (a fast detector can `clear` the agent
//!   a few ms before the annotated start, on breath or a soft onset: the sound still met a
//!   speaking agent). **Clear delay**: the first `clear` (hold or barge-in) decision − the
//!   sound's annotated start (0 if it came before).

use serde::Serialize;

use hark_engine::Event;

use super::corpus::{EventKind, Scene};
use super::drive::Stamped;

/// Frame-level agreement of VAD verdicts with the annotation.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Frames {
    /// Speech frames called speech.
    pub tp: u64,
    /// Non-speech frames called speech.
    pub fp: u64,
    /// Speech frames called non-speech.
    pub fn_: u64,
}

impl Frames {
    /// Adds `voiced` (one verdict per 20 ms frame) against `speech` intervals.
    pub fn add(&mut self, voiced: &[bool], speech: &[[u64; 2]]) {
        for (i, &v) in voiced.iter().enumerate() {
            let (a, b) = (20 * i as u64, 20 * i as u64 + 20);
            let overlap: u64 = speech
                .iter()
                .map(|s| b.min(s[1]).saturating_sub(a.max(s[0])))
                .sum();
            match (overlap >= 10, v) {
                (true, true) => self.tp += 1,
                (false, true) => self.fp += 1,
                (true, false) => self.fn_ += 1,
                (false, false) => {}
            }
        }
    }

    /// F1 = 2·TP / (2·TP + FP + FN); 0 when there is nothing.
    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
}

/// The caller-turn scores of the `turns` scene.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Turns {
    /// Utterances in the scene.
    pub utterances: usize,
    /// See the module docs.
    pub missed_onsets: usize,
    /// See the module docs.
    pub never_heard: usize,
    /// End-of-turn latencies, ms, one per utterance; `None` = never.
    pub eot_ms: Vec<Option<u64>>,
    /// Utterances cut in the middle.
    pub cut_offs: usize,
}

/// Cut-offs of the `pauses` scene, per inner pause length.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pauses {
    /// `(pause_ms, sentences cut, sentences)`, by pause length.
    pub by_pause: Vec<(u64, usize, usize)>,
}

/// The agent-scene scores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentScene {
    /// Minutes of agent speech over quiet caller audio.
    pub quiet_min: f64,
    /// Barge-ins near no sound.
    pub false_barge_ins: usize,
    /// `(kind, interrupted, eligible)` per kind of sound: the agent's answer was cut.
    pub by_kind: Vec<(EventKind, usize, usize)>,
    /// `(kind, held)`: the agent's audio was cleared at least for a while (held and resumed,
    /// or cut).
    pub held_by_kind: Vec<(EventKind, usize)>,
    /// Clear delays of real barge-ins, ms; `None`: it did not interrupt.
    pub clear_ms: Vec<Option<u64>>,
}

struct TurnSpan {
    started: u64,
    first_voiced: u64,
    ended: Option<u64>,
}

/// The turns the call opened, with the media time each was decided to start and to end
/// (`None`: still open at the end, or discarded as a blip).
fn spans(events: &[Stamped]) -> Vec<TurnSpan> {
    let mut out: Vec<TurnSpan> = Vec::new();
    for s in events {
        match &s.event {
            Event::UserSpeechStarted { media_ms, .. } => out.push(TurnSpan {
                started: s.media_ms,
                first_voiced: *media_ms,
                ended: None,
            }),
            Event::UserTurnEnded { .. } | Event::UserSpeechDiscarded { .. } => {
                if let Some(last) = out.last_mut().filter(|t| t.ended.is_none()) {
                    last.ended = Some(s.media_ms);
                }
            }
            _ => {}
        }
    }
    out
}

/// Media times at which turns were handed to the agent, with the first voiced ms of each.
fn turn_ends(events: &[Stamped]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|s| match &s.event {
            Event::UserTurnEnded { start_ms, .. } => Some((s.media_ms, *start_ms)),
            _ => None,
        })
        .collect()
}

/// Scores the `turns` scene.
pub fn turns(scene: &Scene, events: &[Stamped]) -> Turns {
    let spans = spans(events);
    let ends = turn_ends(events);
    let mut t = Turns {
        utterances: scene.utterances.len(),
        ..Turns::default()
    };
    for (i, u) in scene.utterances.iter().enumerate() {
        let next = scene
            .utterances
            .get(i + 1)
            .map_or(scene.ms + 3_000, |n| n.start_ms);
        let onset = spans
            .iter()
            .any(|s| s.started + 100 >= u.start_ms && s.started <= u.start_ms + 500);
        if !onset {
            t.missed_onsets += 1;
        }
        let heard = spans
            .iter()
            .any(|s| s.first_voiced <= u.end_ms && s.ended.is_none_or(|e| e > u.start_ms));
        if !heard {
            t.never_heard += 1;
        }
        let eot = ends
            .iter()
            .find(|(at, first)| *at >= u.end_ms && *first <= u.end_ms && *at < next)
            .map(|(at, _)| at - u.end_ms);
        t.eot_ms.push(eot);
        if ends
            .iter()
            .any(|(at, _)| *at > u.start_ms && *at < u.end_ms)
        {
            t.cut_offs += 1;
        }
    }
    t
}

/// Scores the `pauses` scene.
pub fn pauses(scene: &Scene, events: &[Stamped]) -> Pauses {
    let ends = turn_ends(events);
    let mut by: Vec<(u64, usize, usize)> = Vec::new();
    for u in &scene.utterances {
        let (Some(p), Some(len)) = (u.pause, u.pause_ms) else {
            continue;
        };
        let cut = ends.iter().any(|(at, _)| *at >= p[0] && *at < u.end_ms);
        match by.iter_mut().find(|b| b.0 == len) {
            Some(b) => {
                b.1 += cut as usize;
                b.2 += 1;
            }
            None => by.push((len, cut as usize, 1)),
        }
    }
    by.sort_by_key(|b| b.0);
    Pauses { by_pause: by }
}

/// How long before a sound's annotated start a speech start decided for it may lie, ms: the
/// annotation marks the first clearly audible sound, a VAD may hear breath or a soft onset.
pub const EARLY_MS: u64 = 200;

/// Whether the agent was speaking, per 20 ms of media: from an utterance's first audio to its
/// barge-in or its end.
fn speaking(events: &[Stamped], ms: u64) -> Vec<bool> {
    let n = (ms / 20) as usize + 1;
    let mut out = vec![false; n];
    let mut from: Option<u64> = None;
    let mark = |a: u64, b: u64, out: &mut Vec<bool>| {
        for slot in out
            .iter_mut()
            .take(((b / 20) as usize).min(n))
            .skip((a / 20) as usize)
        {
            *slot = true;
        }
    };
    for s in events {
        match &s.event {
            Event::AgentAudioStarted { .. } | Event::PlaybackResumed { .. } => {
                from.get_or_insert(s.media_ms);
            }
            Event::BargeIn(_) | Event::PlaybackPaused { .. } | Event::UtterancePlayed { .. } => {
                if let Some(a) = from.take() {
                    mark(a, s.media_ms, &mut out);
                }
            }
            _ => {}
        }
    }
    if let Some(a) = from {
        mark(a, ms, &mut out);
    }
    out
}

/// Scores the `agent` scene.
pub fn agent(scene: &Scene, events: &[Stamped]) -> AgentScene {
    let talking = speaking(events, scene.ms);
    let at = |ms: u64| talking.get((ms / 20) as usize).copied().unwrap_or(false);
    // Confirmed barge-ins (the agent's answer cut) and every `clear` (holds included).
    let barge_ins: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|s| match &s.event {
            Event::BargeIn(b) => Some((b.speech_start_ms, b.decided_ms)),
            _ => None,
        })
        .collect();
    let clears: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|s| match &s.event {
            Event::BargeIn(b) => Some((b.speech_start_ms, b.decided_ms)),
            Event::PlaybackPaused {
                speech_start_ms,
                decided_ms,
                ..
            } => Some((*speech_start_ms, *decided_ms)),
            _ => None,
        })
        .collect();
    // Audible when the sound began: at its start, or just before it if the sound itself was
    // heard first (then the `clear` it caused ended the agent's audio before the start).
    let met = |e: &super::corpus::SceneEvent| {
        at(e.start_ms)
            || (at(e.start_ms.saturating_sub(EARLY_MS))
                && clears
                    .iter()
                    .any(|&(_, d)| d + EARLY_MS >= e.start_ms && d <= e.start_ms))
    };
    let near = |e: &super::corpus::SceneEvent, (start, decided): (u64, u64)| {
        (start + EARLY_MS >= e.start_ms && start <= e.end_ms + 300)
            || (decided >= e.start_ms && decided <= e.end_ms + 600)
    };
    let mut out = AgentScene::default();
    for kind in [
        EventKind::Backchannel,
        EventKind::Cough,
        EventKind::Click,
        EventKind::BargeIn,
    ] {
        let mut hit = 0;
        let mut held = 0;
        let mut eligible = 0;
        for e in scene.events.iter().filter(|e| e.kind == kind && met(e)) {
            eligible += 1;
            hit += barge_ins.iter().any(|b| near(e, *b)) as usize;
            held += clears.iter().any(|b| near(e, *b)) as usize;
            if kind == EventKind::BargeIn {
                let first = clears.iter().copied().find(|b| near(e, *b));
                out.clear_ms
                    .push(first.map(|(_, d)| d.saturating_sub(e.start_ms)));
            }
        }
        out.by_kind.push((kind, hit, eligible));
        out.held_by_kind.push((kind, held));
    }
    out.false_barge_ins = barge_ins
        .iter()
        .filter(|b| !scene.events.iter().any(|e| near(e, **b)))
        .count();
    let quiet = (0..talking.len())
        .filter(|&i| {
            let ms = 20 * i as u64;
            talking[i]
                && !scene
                    .events
                    .iter()
                    .any(|e| ms + 1_000 >= e.start_ms && ms <= e.end_ms + 1_000)
        })
        .count();
    out.quiet_min = quiet as f64 * 20.0 / 60_000.0;
    out
}

/// The `p`-th percentile (0–100, nearest rank) of `values`, where `None` is infinitely late;
/// `None` when the percentile falls on one (or there are no values).
pub fn percentile(values: &[Option<u64>], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<u64> = values.iter().map(|x| x.unwrap_or(u64::MAX)).collect();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1]).filter(|&x| x != u64::MAX)
}

/// How many of `values` exceed `limit_ms` (`None` counts).
pub fn over(values: &[Option<u64>], limit_ms: u64) -> usize {
    values
        .iter()
        .filter(|v| v.is_none_or(|x| x > limit_ms))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_treat_none_as_infinitely_late() {
        let v = [Some(100), Some(200), None, Some(300)];
        assert_eq!(percentile(&v, 50.0), Some(200));
        assert_eq!(percentile(&v, 90.0), None);
        assert_eq!(over(&v, 150), 3);
        assert_eq!(percentile(&[], 50.0), None);
    }

    /// A sound heard a few ms before its annotated start `clear`s the agent before that
    /// start: it still met a speaking agent (and its `clear` delay is 0); one that began just
    /// after the agent's answer ended on its own did not.
    #[test]
    fn a_clear_just_before_the_annotated_start_still_met_the_agent() {
        use super::super::corpus::SceneEvent;
        let at = std::time::Instant::now();
        let sound = |start_ms, end_ms| SceneEvent {
            kind: EventKind::BargeIn,
            start_ms,
            end_ms,
            label: String::new(),
            synthetic: false,
        };
        let scene = Scene {
            file: String::new(),
            ms: 10_000,
            utterances: Vec::new(),
            // Heard (and the agent cleared) 15 ms before its annotated start.
            events: vec![sound(2_015, 3_000)],
            speech: Vec::new(),
        };
        let events = vec![
            Stamped {
                media_ms: 0,
                event: Event::AgentAudioStarted {
                    id: hark_engine::UtteranceId(1),
                    turn: None,
                    at,
                    since_user_end: None,
                    before_turn_end: false,
                },
            },
            Stamped {
                media_ms: 2_000,
                event: Event::PlaybackPaused {
                    speech_start_ms: 1_960,
                    decided_ms: 2_000,
                    at,
                },
            },
        ];
        let out = agent(&scene, &events);
        let held = out.held_by_kind.iter().find(|k| k.0 == EventKind::BargeIn);
        let eligible = out.by_kind.iter().find(|k| k.0 == EventKind::BargeIn);
        assert_eq!(eligible.map(|k| k.2), Some(1));
        assert_eq!(held.map(|k| k.1), Some(1));
        assert_eq!(out.clear_ms, vec![Some(0)]);

        // No clear near the start (the agent's answer simply ended): not eligible.
        let ended = vec![
            events[0].clone(),
            Stamped {
                media_ms: 2_000,
                event: Event::UtterancePlayed {
                    id: hark_engine::UtteranceId(1),
                    turn: None,
                    heard_ms: 2_000,
                },
            },
        ];
        let out = agent(&scene, &ended);
        let eligible = out.by_kind.iter().find(|k| k.0 == EventKind::BargeIn);
        assert_eq!(eligible.map(|k| k.2), Some(0));
    }

    #[test]
    fn frames_count_against_the_truth() {
        let mut f = Frames::default();
        // Speech 20–60 ms: frames 1 and 2; the VAD says frames 2 and 3.
        f.add(&[false, false, true, true], &[[20, 60]]);
        assert_eq!((f.tp, f.fp, f.fn_), (1, 1, 1));
        assert!((f.f1() - 0.5).abs() < 1e-9);
    }
}
