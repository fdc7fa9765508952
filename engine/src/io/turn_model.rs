//! The end-of-turn model's thread pool: [`Output::TurnCheck`](crate::Output::TurnCheck)s run
//! here, off the call workers (one Smart Turn inference is ~100 ms of one core, against ~20 µs
//! for a call's whole 20 ms frame), on a few OS threads behind a bounded queue. A full queue
//! answers "could not run" at once, so a call under load falls back to its silence rule rather
//! than waiting.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::smart_turn::SmartTurn;

/// Pool size and queue bound; [`configure`] sets them once per process before the first check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnModelPoolConfig {
    /// Inference threads (default 1).
    pub threads: usize,
    /// Checks waiting beyond the ones running; more are answered "could not run" (default 2
    /// per thread: a check waits at most ~2 inferences).
    pub queue: usize,
}

impl Default for TurnModelPoolConfig {
    fn default() -> Self {
        TurnModelPoolConfig {
            threads: 1,
            queue: 2,
        }
    }
}

struct Job {
    audio: Vec<i16>,
    reply: oneshot::Sender<Option<f32>>,
}

/// The process's pool (see the module docs).
pub struct TurnModelPool {
    tx: SyncSender<Job>,
}

static CONFIG: OnceLock<TurnModelPoolConfig> = OnceLock::new();
static POOL: OnceLock<TurnModelPool> = OnceLock::new();

/// Sets the pool's size before its first use. Returns `false` (and changes nothing) when it was
/// set already or the pool has started.
pub fn configure(cfg: TurnModelPoolConfig) -> bool {
    POOL.get().is_none() && CONFIG.set(cfg).is_ok()
}

/// The process's pool, started on first use with [`configure`]'s size (default 1 thread).
pub fn pool() -> &'static TurnModelPool {
    POOL.get_or_init(|| TurnModelPool::start(CONFIG.get().copied().unwrap_or_default()))
}

/// Where a check's answer comes: P(complete), or `None` when it could not run.
pub type Answer = oneshot::Receiver<Option<f32>>;

impl TurnModelPool {
    fn start(cfg: TurnModelPoolConfig) -> TurnModelPool {
        let threads = cfg.threads.max(1);
        let (tx, rx) = sync_channel::<Job>(cfg.queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("hark-turn-model-{i}"))
                .spawn(move || work(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "end-of-turn model thread not started");
            }
        }
        TurnModelPool { tx }
    }

    /// Queues a check of `audio` (16-bit PCM at 8 kHz). Never blocks: with the queue full, or
    /// no thread left, the answer is `None` at once.
    pub fn check(&self, audio: Vec<i16>) -> Answer {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Job { audio, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                tracing::debug!("end-of-turn model busy: the silence rule decides");
                let _ = job.reply.send(None);
            }
        }
        answer
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    let model = match SmartTurn::shared() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "end-of-turn model failed to load: silence rule only");
            None
        }
    };
    loop {
        // A poisoned lock only means another worker panicked; the queue is still good.
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        // The call moved on (its check is stale, or it ended): skip the work.
        if job.reply.is_closed() {
            continue;
        }
        let p = model.map(|m| {
            let began = Instant::now();
            let p = m.predict_8k(&job.audio);
            metrics::histogram!("hark_turn_model_seconds").record(began.elapsed().as_secs_f64());
            p
        });
        let _ = job.reply.send(p);
    }
}

/// The answer to the check in flight, with its id; pending forever when there is none.
/// Cancel-safe: the receiver lives in `check`.
pub(super) async fn answer(check: &mut Option<(u64, Answer)>) -> (u64, Option<f32>) {
    let Some((id, rx)) = check.as_mut() else {
        return std::future::pending().await;
    };
    let id = *id;
    let p = rx.await.unwrap_or(None);
    *check = None;
    (id, p)
}
