//! The call observer: turns a call's events into logs, metrics and the call record (and,
//! through the record, the call events for the operator's backend: `call.started` with the
//! stream's start, `turn.ended` per finished turn, `call.ended` with the summary).

use std::time::Duration;

use hark_engine::{Call, Event};
use tracing::{info, warn};

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
