//! Call workers: one thread per core, each a single-threaded tokio runtime with a `LocalSet`.
//!
//! A call's engine state holds webrtc-vad's C state, which is not `Send`, so a call stays on
//! one thread for its whole life; that also keeps its data hot in one core's cache and avoids
//! work-stealing hops on the audio path. The HTTP side (routing, the WebSocket upgrade) runs on
//! the main multi-threaded runtime and hands each accepted call to the least-loaded worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

struct Worker {
    tx: mpsc::UnboundedSender<Job>,
    load: Arc<AtomicUsize>,
}

/// The pool of call workers.
pub struct CallPool {
    workers: Vec<Worker>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for CallPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallPool")
            .field("workers", &self.workers.len())
            .field("load", &self.loads())
            .finish()
    }
}

impl CallPool {
    /// Starts `n` worker threads (at least one).
    ///
    /// # Errors
    /// An I/O error if a thread or its runtime cannot be created.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let mut workers = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let load = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = std::thread::Builder::new()
                .name(format!("hark-call-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        while let Some(job) = rx.recv().await {
                            tokio::task::spawn_local(job());
                        }
                    });
                    // Channel closed: let calls still running finish.
                    rt.block_on(local);
                })?;
            workers.push(Worker { tx, load });
            threads.push(handle);
        }
        Ok(CallPool { workers, threads })
    }

    /// Current number of calls on each worker.
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs the future made by `make` on the least-loaded worker. `make` runs on that worker's
    /// thread, so the future need not be `Send`.
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let Some(w) = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let load = w.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _guard = LoadGuard(load);
                make().await;
            })
        });
        if let Err(e) = w.tx.send(job) {
            // The worker is gone (shutting down): the call is dropped, its socket closes.
            drop(e);
        }
    }

    /// Stops taking calls and waits for the calls still running to finish.
    pub fn join(mut self) {
        self.workers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_non_send_futures_and_balances() {
        let pool = CallPool::new(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..4 {
            let tx = tx.clone();
            pool.spawn(move || async move {
                // Rc is not Send: this only works on a LocalSet.
                let rc = std::rc::Rc::new(i);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tx.send(*rc).unwrap();
            });
        }
        let mut got: Vec<i32> = (0..4).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
        pool.join();
    }
}
