//! The call observer: turns a call's events into logs, metrics and the call record (and,
//! through the record, the call events for the operator's backend: `call.started` with the
//! stream's start, `turn.ended` per finished turn, `call.ended` with the summary).

use std::time::Duration;

use hark_engine::{Call, Event};
use tracing::{debug, info, warn};

/// Turns call events into logs, metrics and call records.
#[derive(Default)]
pub(super) struct CallObserver {
    pub(super) messages: u64,
    pub(super) frames_reported: u64,
    pub(super) out_reported: u64,
    pub(super) recorder: Option<crate::api::recorder::CallRecorder>,
    pub(super) call_sid: Option<String>,
    /// The call record's turns, from the events.
    pub(super) turns: crate::api::turns::TurnLog,
    /// The connection's count: a call once `start` arrived.
    pub(super) slot: Option<crate::conns::Slot>,
    /// Transfers that failed (the call went on after each), for the record.
    pub(super) failed_transfers: Vec<String>,
    /// The `turn` spans of turns not yet over.
    pub(super) turn_spans: TurnSpans,
}

impl CallObserver {
    /// Records a turn: `ended`, a turn that is over (its `turn.ended` event goes with it);
    /// otherwise news of a turn still going on.
    pub(super) fn record_turn(&self, turn: Option<crate::api::TurnRow>, ended: bool) {
        if let (Some(t), Some(rec), Some(sid)) = (turn, &self.recorder, &self.call_sid) {
            if ended {
                rec.turn_ended(sid, t);
            } else {
                rec.turn(sid, t);
            }
        }
    }

    /// The latest turn, if it changed since it was last recorded: stored at once, so a crash
    /// loses at most the store's commit lag (`api::turns::TurnLog::take_update`).
    pub(super) fn record_open_turn(&mut self) {
        let update = self.turns.take_update();
        self.record_turn(update, false);
    }

    /// The stream ended at media time `end_ms`: the last turns go to the record, as over.
    pub(super) fn finish_turns(&mut self, end_ms: u64) {
        for t in self.turns.finish(end_ms) {
            self.record_turn(Some(t), true);
        }
    }

    pub(super) fn flush(&mut self, call: &Call) {
        let s = call.stats();
        metrics::counter!("hark_inbound_frames_total").increment(s.frames - self.frames_reported);
        self.frames_reported = s.frames;
        metrics::counter!("hark_outbound_frames_total")
            .increment(s.playout.frames_sent - self.out_reported);
        self.out_reported = s.playout.frames_sent;
    }
}

impl hark_engine::io::Observer for CallObserver {
    fn event(&mut self, call: &Call, event: &Event) {
        // The record: a fold over the events, which name their caller turn.
        let done = self.turns.apply(event);
        self.record_turn(done, true);
        self.turn_spans.event(event);
        match event {
            Event::Started(info) => {
                let span = tracing::Span::current();
                span.record("call_sid", info.call_sid.as_str());
                span.record("stream_sid", info.stream_sid.as_str());
                self.call_sid = Some(info.call_sid.clone());
                if let Some(slot) = &mut self.slot {
                    slot.set(crate::conns::ConnState::Call);
                }
                if let Some(rec) = &self.recorder {
                    rec.stream_started(&info.call_sid, &info.stream_sid, &info.parameters);
                }
                info!(params = ?info.parameters, "stream started");
            }
            Event::UserTurnEnded {
                turn,
                start_ms,
                end_ms,
                ..
            } => {
                metrics::counter!("hark_turns_total").increment(1);
                info!(%turn, start_ms, end_ms, "caller turn");
            }
            Event::AgentAudioStarted {
                id,
                turn,
                since_user_end: Some(d),
                ..
            } => {
                metrics::histogram!("hark_turn_latency_seconds").record(d.as_secs_f64());
                let turn = turn.map(|t| t.to_string());
                info!(utterance = %id, turn, latency_ms = d.as_millis() as u64, "agent speaking");
            }
            Event::BargeIn(b) => {
                metrics::counter!("hark_barge_ins_total").increment(1);
                metrics::histogram!("hark_barge_in_delay_seconds")
                    .record(b.delay_ms() as f64 / 1000.0);
                info!(
                    utterance = %b.interrupted.id,
                    delay_ms = b.delay_ms(),
                    heard_ms = b.interrupted.heard_ms,
                    heard_text = b.interrupted.heard_text.as_deref().unwrap_or(""),
                    "barge-in"
                );
            }
            Event::PlaybackResumed {
                held, backchannel, ..
            } => resumed(*held, *backchannel),
            Event::TurnModelAnswered {
                turn,
                probability_pct,
                complete,
                waited,
            } => model_answered(*turn, *probability_pct, *complete, *waited),
            Event::Malformed { kind, detail } => {
                metrics::counter!("hark_malformed_messages_total", "kind" => kind.as_str())
                    .increment(1);
                warn!(kind = kind.as_str(), detail, "malformed message skipped");
            }
            Event::AgentAudioHeard {
                since_user_end: Some(d),
                ..
            } => {
                metrics::histogram!("hark_voice_to_voice_seconds").record(d.as_secs_f64());
            }
            Event::Dtmf { digit, .. } => info!(digit, "dtmf"),
            Event::Agent { turn, report } => {
                use hark_engine::agent::AgentReport;
                let turn = turn.map(|t| t.to_string());
                match report {
                    AgentReport::Latency { stage, ms } => {
                        metrics::histogram!("hark_stage_latency_seconds", "stage" => stage.as_str())
                            .record(*ms as f64 / 1000.0);
                        info!(stage = stage.as_str(), turn, ms, "stage latency");
                    }
                    AgentReport::ProviderFault {
                        provider,
                        kind,
                        detail,
                    } => {
                        metrics::counter!("hark_provider_faults_total",
                            "provider" => provider.clone(), "kind" => kind.clone())
                        .increment(1);
                        warn!(provider, kind, turn, detail, "provider fault");
                    }
                    AgentReport::Transcript {
                        role,
                        text,
                        interrupted,
                    } => {
                        info!(role = ?role, turn, interrupted, text, "transcript");
                    }
                    AgentReport::ToolCall { name, arguments } => {
                        metrics::counter!("hark_tool_calls_total", "name" => name.clone())
                            .increment(1);
                        info!(name, turn, arguments, "tool call");
                    }
                }
            }
            Event::TransferRequested { to } => info!(to, "transfer requested"),
            Event::TransferFailed { to, reason } => {
                warn!(to, reason, "transfer failed: the call goes on");
                self.failed_transfers
                    .push(format!("transfer to {to} failed: {reason}"));
            }
            Event::Stopped { .. } => {
                self.flush(call);
                info!("stream stopped");
            }
            _ => {}
        }
        // The latest turn goes to the record as soon as it ends and whenever it changes.
        self.record_open_turn();
    }

    fn processed(&mut self, took: Duration) {
        self.messages += 1;
        if self.messages % 50 == 1 {
            metrics::histogram!("hark_engine_message_seconds").record(took.as_secs_f64());
        }
    }
}

/// The `turn` spans of a call (children of its `call` span; exported as traces with the
/// feature `otlp`, see [`crate::telemetry`]). A turn's span opens when the caller starts
/// speaking and closes when its answer has played, when the caller barged in on it, when its
/// speech was dropped as too short, when a later turn ends, or with the call. Fields:
/// `turn` (its number), `start_ms`/`end_ms` (media time of the caller's speech),
/// `latency_ms` (caller's last voiced frame → the answer's first audio sent),
/// `voice_to_voice_ms` (→ the caller began hearing it), `interrupted` (barged in on),
/// `discarded` (too short to be a turn).
#[derive(Default)]
pub(super) struct TurnSpans {
    open: Vec<(u32, tracing::Span)>,
}

impl TurnSpans {
    fn open(&mut self, turn: u32, start_ms: u64) -> &tracing::Span {
        if let Some(i) = self.open.iter().position(|(t, _)| *t == turn) {
            return &self.open[i].1;
        }
        let span = tracing::info_span!(
            "turn",
            turn,
            start_ms,
            end_ms = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
            voice_to_voice_ms = tracing::field::Empty,
            interrupted = false,
            discarded = tracing::field::Empty,
        );
        self.open.push((turn, span));
        &self.open[self.open.len() - 1].1
    }

    fn get(&self, turn: Option<hark_engine::TurnId>) -> Option<&tracing::Span> {
        let turn = turn?.0;
        self.open.iter().find(|(t, _)| *t == turn).map(|(_, s)| s)
    }

    /// Closes the spans of turns for which `which` is true.
    fn close(&mut self, which: impl Fn(u32) -> bool) {
        self.open.retain(|(t, _)| !which(*t));
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::UserSpeechStarted { turn, media_ms, .. } => {
                self.open(turn.0, *media_ms);
            }
            Event::UserTurnEnded {
                turn,
                start_ms,
                end_ms,
                ..
            } => {
                self.open(turn.0, *start_ms).record("end_ms", end_ms);
                // Earlier turns still open got no answer before this one: over.
                self.close(|t| t < turn.0);
            }
            Event::UserSpeechDiscarded { turn, kept, .. } => {
                if let Some(s) = self.get(Some(*turn)) {
                    s.record("discarded", !kept);
                }
                self.close(|t| t == turn.0);
            }
            Event::AgentAudioStarted {
                turn,
                since_user_end: Some(d),
                ..
            } => {
                if let Some(s) = self.get(*turn) {
                    s.record("latency_ms", d.as_millis() as u64);
                }
            }
            Event::AgentAudioHeard {
                turn,
                since_user_end: Some(d),
                ..
            } => {
                if let Some(s) = self.get(*turn) {
                    s.record("voice_to_voice_ms", d.as_millis() as u64);
                }
            }
            Event::UtterancePlayed { turn: Some(t), .. } => self.close(|o| o == t.0),
            Event::BargeIn(b) => {
                if let Some(s) = self.get(b.turn) {
                    s.record("interrupted", true);
                }
                if let Some(t) = b.turn {
                    self.close(|o| o == t.0);
                }
            }
            Event::Stopped { .. } => self.close(|_| true),
            _ => {}
        }
    }
}

/// The end-of-turn model answered about `turn`: counted by outcome, logged at debug.
fn model_answered(
    turn: hark_engine::TurnId,
    probability_pct: Option<u8>,
    complete: Option<bool>,
    waited: std::time::Duration,
) {
    let outcome = match complete {
        Some(true) => "complete",
        Some(false) => "unfinished",
        None => "no_answer",
    };
    metrics::counter!("hark_turn_model_checks_total", "outcome" => outcome).increment(1);
    debug!(
        turn = %turn,
        probability_pct,
        outcome,
        waited_ms = waited.as_millis() as u64,
        "end-of-turn model answered"
    );
}

/// A held answer played on: counted by why, logged with how long it was held.
fn resumed(held: std::time::Duration, backchannel: bool) {
    let outcome = if backchannel {
        "backchannel"
    } else {
        "resumed"
    };
    metrics::counter!("hark_playback_holds_total", "outcome" => outcome).increment(1);
    info!(
        held_ms = held.as_millis() as u64,
        outcome, "agent audio resumed"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use hark_engine::playout::Interrupted;
    use hark_engine::{BargeIn, Event, TurnId, UtteranceId};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    use super::TurnSpans;

    /// A span's fields as text.
    #[derive(Default, Clone, Debug)]
    struct Fields(Vec<(String, String)>);

    impl Fields {
        fn get(&self, k: &str) -> Option<&str> {
            self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
        }
    }

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let v = format!("{value:?}");
            match self.0.iter_mut().find(|(n, _)| n == field.name()) {
                Some(e) => e.1 = v,
                None => self.0.push((field.name().to_string(), v)),
            }
        }
    }

    /// A closed span: its name, its parent's name, its fields.
    type Span = (String, Option<String>, Fields);

    /// Closed spans in the order they closed.
    #[derive(Default, Clone)]
    struct Closed(Arc<Mutex<Vec<Span>>>);

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Closed {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: Context<'_, S>,
        ) {
            let mut f = Fields::default();
            attrs.record(&mut f);
            ctx.span(id).unwrap().extensions_mut().insert(f);
        }

        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            ctx: Context<'_, S>,
        ) {
            let span = ctx.span(id).unwrap();
            let mut ext = span.extensions_mut();
            values.record(ext.get_mut::<Fields>().unwrap());
        }

        fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
            let span = ctx.span(&id).unwrap();
            let fields = span.extensions().get::<Fields>().cloned().unwrap();
            let parent = span.parent().map(|p| p.name().to_string());
            self.0
                .lock()
                .unwrap()
                .push((span.name().to_string(), parent, fields));
        }
    }

    impl Closed {
        fn turns(&self) -> Vec<Fields> {
            let closed = self.0.lock().unwrap();
            closed
                .iter()
                .filter(|(n, _, _)| n == "turn")
                .map(|(_, parent, f)| {
                    assert_eq!(parent.as_deref(), Some("call"));
                    f.clone()
                })
                .collect()
        }
    }

    fn started(turn: u32, media_ms: u64) -> Event {
        Event::UserSpeechStarted {
            turn: TurnId(turn),
            media_ms,
            at: Instant::now(),
        }
    }

    fn ended(turn: u32, start_ms: u64, end_ms: u64) -> Event {
        Event::UserTurnEnded {
            turn: TurnId(turn),
            start_ms,
            end_ms,
            speech_end_at: Instant::now(),
            at: Instant::now(),
            forced: false,
        }
    }

    #[test]
    fn a_turn_span_lasts_from_the_callers_speech_until_its_answer_is_over() {
        let closed = Closed::default();
        let subscriber = tracing_subscriber::registry().with(closed.clone());
        tracing::subscriber::with_default(subscriber, || {
            let call = tracing::info_span!("call");
            let _in_call = call.enter();
            let mut spans = TurnSpans::default();
            // Turn 0: answered, then barged in on.
            spans.event(&started(0, 1_000));
            spans.event(&ended(0, 1_000, 2_000));
            spans.event(&Event::AgentAudioStarted {
                id: UtteranceId(1),
                turn: Some(TurnId(0)),
                at: Instant::now(),
                since_user_end: Some(Duration::from_millis(640)),
                before_turn_end: false,
            });
            // The caller speaks over the answer: turn 1 starts before the barge-in is decided.
            spans.event(&started(1, 3_000));
            assert!(closed.turns().is_empty());
            spans.event(&Event::BargeIn(BargeIn {
                at: Instant::now(),
                speech_start_ms: 3_000,
                decided_ms: 3_200,
                turn: Some(TurnId(0)),
                interrupted: Interrupted {
                    id: UtteranceId(1),
                    heard_ms: 500,
                    sent_ms: 800,
                    produced_ms: 1_000,
                    heard_text: None,
                    dropped: vec![],
                },
            }));
            let t = closed.turns();
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].get("turn"), Some("0"));
            assert_eq!(t[0].get("start_ms"), Some("1000"));
            assert_eq!(t[0].get("end_ms"), Some("2000"));
            assert_eq!(t[0].get("latency_ms"), Some("640"));
            assert_eq!(t[0].get("interrupted"), Some("true"));
            // Turn 1 was a cough: dropped, its number reused.
            spans.event(&Event::UserSpeechDiscarded {
                turn: TurnId(1),
                kept: false,
                start_ms: 3_000,
                end_ms: 3_100,
            });
            let t = closed.turns();
            assert_eq!(t.len(), 2);
            assert_eq!(t[1].get("discarded"), Some("true"));
            // Turn 1 again, not answered before turn 2 ends; turn 2 open at the call's end.
            spans.event(&started(1, 4_000));
            spans.event(&ended(1, 4_000, 5_000));
            spans.event(&started(2, 6_000));
            assert_eq!(closed.turns().len(), 2);
            spans.event(&ended(2, 6_000, 7_000));
            let t = closed.turns();
            assert_eq!(t.len(), 3);
            assert_eq!(
                (t[2].get("turn"), t[2].get("interrupted")),
                (Some("1"), Some("false"))
            );
            assert_eq!(t[2].get("latency_ms"), None);
            // Turn 2's answer plays to the end; turn 3 is still open when the call ends.
            spans.event(&Event::UtterancePlayed {
                id: UtteranceId(2),
                turn: Some(TurnId(2)),
                heard_ms: 900,
            });
            let t = closed.turns();
            assert_eq!(t.len(), 4);
            assert_eq!(t[3].get("turn"), Some("2"));
            spans.event(&started(3, 9_000));
            spans.event(&Event::Stopped { at: Instant::now() });
            let t = closed.turns();
            assert_eq!(t.len(), 5);
            assert_eq!(t[4].get("turn"), Some("3"));
        });
    }
}
