//! The agent's open provider pipes: what each is for ([`Pipe`]) and its stage deadline — the
//! **first** deadline from the request, then the **stall** deadline from the last data.

use std::collections::BTreeMap;
use std::time::Instant;

use super::fallback::PhraseKind;
use super::{PROVIDER_LLM, PROVIDER_STT, PROVIDER_TTS, ms};
use crate::agent::{
    Action, FaultKind, HttpRequest, OpenSpec, PeerId, ProviderCommand, ProviderFault,
};
use crate::playout::UtteranceId;

/// What a provider pipe is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pipe {
    /// Transcribing caller audio `seg` of turn `turn`.
    Stt { turn: u64, seg: u64 },
    /// Transcribing a short caller turn over the agent, to tell a backchannel by its words.
    Words,
    /// A chat round of turn `turn`.
    Llm { turn: u64 },
    /// Synthesising sentence `sid` of utterance `utt`.
    Tts { utt: UtteranceId, sid: u64 },
    /// Rendering a phrase kept for later.
    Phrase(PhraseKind),
    /// The per-call context request.
    Context,
}

impl Pipe {
    /// The `provider` label of its faults.
    pub fn provider(self) -> &'static str {
        match self {
            Pipe::Stt { .. } | Pipe::Words => PROVIDER_STT,
            Pipe::Llm { .. } => PROVIDER_LLM,
            Pipe::Tts { .. } | Pipe::Phrase(_) => PROVIDER_TTS,
            Pipe::Context => crate::agents::context::PROVIDER_CONTEXT,
        }
    }
}

/// A stage's deadlines and what it waits for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wait {
    /// From the request to the first data, ms.
    pub first_ms: u64,
    /// From the last data received to the next, ms.
    pub stall_ms: u64,
    /// What the first deadline waits for, for the fault detail.
    pub waiting_for: &'static str,
}

#[derive(Debug)]
struct PipeState {
    role: Pipe,
    wait: Wait,
    /// The first deadline, then (once data arrived) the stall deadline.
    deadline: Instant,
    /// The first data arrived: `deadline` is the stall deadline.
    started: bool,
}

/// The open pipes, by peer.
#[derive(Debug)]
pub(super) struct Pipes {
    open: BTreeMap<PeerId, PipeState>,
    next_peer: u64,
}

impl Pipes {
    pub fn new() -> Self {
        Pipes {
            open: BTreeMap::new(),
            next_peer: 1,
        }
    }

    /// Pipes open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// What `peer` is for, while it is open.
    pub fn role(&self, peer: PeerId) -> Option<Pipe> {
        self.open.get(&peer).map(|p| p.role)
    }

    /// Opens a pipe for `role` carrying `req`; its first deadline runs from `now`.
    pub fn open(
        &mut self,
        now: Instant,
        role: Pipe,
        wait: Wait,
        req: HttpRequest,
        out: &mut Vec<Action>,
    ) -> PeerId {
        let peer = PeerId(self.next_peer);
        self.next_peer += 1;
        self.open.insert(
            peer,
            PipeState {
                role,
                wait,
                deadline: now + ms(wait.first_ms),
                started: false,
            },
        );
        out.push(Action::Provider(ProviderCommand::Open {
            peer,
            spec: OpenSpec::Http(req),
        }));
        peer
    }

    /// Closes `peer` if it is open.
    pub fn close(&mut self, peer: Option<PeerId>, out: &mut Vec<Action>) {
        if let Some(p) = peer
            && self.open.remove(&p).is_some()
        {
            out.push(Action::Provider(ProviderCommand::Close { peer: p }));
        }
    }

    /// Closes every pipe.
    pub fn close_all(&mut self, out: &mut Vec<Action>) {
        let peers: Vec<PeerId> = self.open.keys().copied().collect();
        for p in peers {
            self.close(Some(p), out);
        }
    }

    /// `peer` ended by itself (or failed): forget it.
    pub fn ended(&mut self, peer: PeerId) {
        self.open.remove(&peer);
    }

    /// Data arrived on `peer`: its deadline becomes the stage's stall deadline from now.
    pub fn progress(&mut self, now: Instant, peer: PeerId) {
        if let Some(p) = self.open.get_mut(&peer) {
            p.deadline = now + ms(p.wait.stall_ms);
            p.wait.waiting_for = "more data";
            p.started = true;
        }
    }

    /// The soonest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open.values().map(|p| p.deadline).min()
    }

    /// The pipes whose deadline has passed, each with its fault: `timeout` when nothing came
    /// within the first deadline, `stall` when a stream stopped sending. They stay open: the
    /// caller closes each before handling its fault.
    pub fn expired(&self, now: Instant) -> Vec<(PeerId, Pipe, ProviderFault)> {
        self.open
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, p)| {
                let waiting = p.wait.waiting_for;
                let f = if p.started {
                    let stall = p.wait.stall_ms;
                    let detail = format!("the stream stalled: no {waiting} for {stall} ms");
                    ProviderFault::new(FaultKind::Stall, detail)
                } else {
                    ProviderFault::new(FaultKind::Timeout, format!("no {waiting} in time"))
                };
                (*id, p.role, f)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::cascade::{CascadeConfig, wire};

    #[test]
    fn first_deadline_then_stall_deadline() {
        let t0 = Instant::now();
        let mut pipes = Pipes::new();
        let mut out = Vec::new();
        let wait = Wait {
            first_ms: 1_500,
            stall_ms: 1_000,
            waiting_for: "audio",
        };
        let req = wire::speech_request(&CascadeConfig::default(), "Hello.");
        let role = Pipe::Phrase(PhraseKind::Fallback);
        let peer = pipes.open(t0, role, wait, req, &mut out);
        assert!(matches!(
            out[..],
            [Action::Provider(ProviderCommand::Open { peer: p, .. })] if p == peer
        ));
        assert_eq!(pipes.poll_timeout(), Some(t0 + ms(1_500)));
        let expired = pipes.expired(t0 + ms(1_500));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].2.label(), "timeout");
        assert_eq!(expired[0].2.detail, "no audio in time");

        pipes.progress(t0 + ms(200), peer);
        assert_eq!(pipes.poll_timeout(), Some(t0 + ms(1_200)));
        assert!(pipes.expired(t0 + ms(1_199)).is_empty());
        let expired = pipes.expired(t0 + ms(1_200));
        assert_eq!(expired[0].2.label(), "stall");
        assert_eq!(
            expired[0].2.detail,
            "the stream stalled: no more data for 1000 ms"
        );

        pipes.close(Some(peer), &mut out);
        pipes.close(Some(peer), &mut out);
        assert_eq!(out.len(), 2, "closed once");
        assert_eq!((pipes.len(), pipes.poll_timeout()), (0, None));
    }
}
