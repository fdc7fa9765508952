//! Several hark nodes on one database (PostgreSQL; with SQLite the same code runs for the
//! one node): this node's heartbeat, the sweep that takes over lost nodes, and the routing of
//! callbacks to live calls on other nodes.
//!
//! - **Heartbeat.** Each run has a row in `nodes`; every [`heartbeat_every`] it updates its
//!   `seen_at`. At a graceful stop it marks itself `stopped`.
//! - **Lost nodes.** After each heartbeat, the node claims runs whose heartbeat is older than
//!   `HARK_NODE_LOST_AFTER_S` (a process killed, a box gone): it closes their open calls as
//!   `ended: crashed` (so `GET /calls` on any node, and the operator's `call.ended` event, say
//!   so) and takes over their node's pending call events ([`Store::claim_lost_nodes`]). One node
//!   claims each lost run. Rows of runs that ended over [`ENDED_RUNS_KEPT_MS`] ago are deleted
//!   on the same beat ([`Store::prune_nodes`]).
//! - **Callbacks for live calls elsewhere.** Twilio sends a callback to whichever node the load
//!   balancer picks. A callback for a live call that is not on the receiving node (today:
//!   the asynchronous answering machine verdict, [`super::amd`]) is published with Postgres
//!   `NOTIFY` on [`CHANNEL`]; every node `LISTEN`s and hands it to the call if it is live
//!   there. Notifications are not stored: a node that is reconnecting misses them (Postgres
//!   delivers a `NOTIFY` only to sessions listening when it commits).

use std::sync::Arc;
use std::time::Duration;

use hark_engine::{AnsweredBy, CallNotice};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::amd::LiveCalls;
use super::store::{Backend, Store};
use super::{ENDED_CRASHED, now_ms};

/// The Postgres channel callbacks for live calls travel on.
pub const CHANNEL: &str = "hark_call_notices";

/// How often a node beats for a lost-after time of `lost_after`: a fifth of it, between
/// 200 ms and 5 s.
pub fn heartbeat_every(lost_after: Duration) -> Duration {
    (lost_after / 5).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// A notice for a live call, as published on [`CHANNEL`] (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNotice {
    /// The call's `CallSid`.
    pub call_sid: String,
    /// Twilio's `AnsweredBy` value (e.g. `machine_end_beep`).
    pub answered_by: String,
    /// The run that received the callback (its own notices are ignored).
    pub from: String,
}

/// The background tasks of this node's part in the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    store: Store,
}

impl Cluster {
    /// Records this run as alive and starts the heartbeat and lost-node sweep; on PostgreSQL
    /// (`database_url`) also the listener that routes [`RemoteNotice`]s to `live` calls.
    ///
    /// # Errors
    /// The driver's error when the node cannot be recorded.
    pub(crate) async fn start(
        store: Store,
        live: Arc<LiveCalls>,
        lost_after: Duration,
        database_url: &str,
    ) -> Result<Cluster, sqlx::Error> {
        store.node_started(now_ms()).await?;
        let (stop, stopped) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(beat(
            store.clone(),
            lost_after,
            stopped.clone(),
        ))];
        if store.backend() == Backend::Postgres {
            tasks.push(tokio::spawn(listen(
                database_url.to_owned(),
                store.node().instance_id.clone(),
                live,
                stopped,
            )));
        }
        Ok(Cluster {
            stop,
            tasks: std::sync::Mutex::new(tasks),
            store,
        })
    }

    /// Stops the tasks and records this run as stopped. Calling it again does nothing more.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        if tasks.is_empty() {
            return;
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.store.node_stopped(now_ms()).await {
            warn!(error = %e, "cannot record this node as stopped; others will find it lost");
        }
    }

    /// Publishes `notice` for the live call `call_sid` to the other nodes. `false` on SQLite
    /// (one node: nobody else to tell) or when the database refused.
    pub(crate) async fn publish(store: &Store, call_sid: &str, answered_by: &str) -> bool {
        if store.backend() != Backend::Postgres {
            return false;
        }
        let payload = RemoteNotice {
            call_sid: call_sid.to_owned(),
            answered_by: answered_by.to_owned(),
            from: store.node().instance_id.clone(),
        };
        let Ok(json) = serde_json::to_string(&payload) else {
            return false;
        };
        match sqlx::query("SELECT pg_notify($1, $2)::TEXT")
            .bind(CHANNEL)
            .bind(json)
            .execute(store.pool())
            .await
        {
            Ok(_) => true,
            Err(e) => {
                warn!(call_sid, error = %e, "cannot publish a callback to the other nodes");
                false
            }
        }
    }
}

/// How long the `nodes` row of a run that stopped or was found lost is kept, ms (7 days): long
/// enough to see in the database which runs ended and how, short enough that restarts do not
/// grow the table without bound.
pub const ENDED_RUNS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// The heartbeat, the lost-node sweep and pruning ended runs, until `stopped`.
async fn beat(store: Store, lost_after: Duration, mut stopped: watch::Receiver<bool>) {
    let every = heartbeat_every(lost_after);
    let lost_after_ms = i64::try_from(lost_after.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
        }
        let now = now_ms();
        match store.node_heartbeat(now).await {
            Ok(true) => {}
            Ok(false) => {
                error!(
                    instance = %store.node().instance_id,
                    "another node declared this one lost (no heartbeat for longer than \
                     HARK_NODE_LOST_AFTER_S): its open calls were closed as crashed; beating again"
                );
                metrics::counter!("hark_node_declared_lost_total").increment(1);
                let _ = store.node_started(now).await;
            }
            Err(e) => {
                warn!(error = %e, "node heartbeat failed");
                continue;
            }
        }
        match store
            .claim_lost_nodes(now - lost_after_ms, ENDED_CRASHED, now)
            .await
        {
            Ok(claimed) => {
                for (lost, calls) in claimed {
                    metrics::counter!("hark_calls_recovered_total").increment(calls.len() as u64);
                    warn!(
                        node = %lost.node_id,
                        instance = %lost.instance_id,
                        silent_ms = now - lost.seen_at_ms,
                        calls = calls.len(),
                        call_sids = ?calls,
                        "a node stopped beating: its open calls are closed as crashed"
                    );
                }
            }
            Err(e) => warn!(error = %e, "lost-node sweep failed"),
        }
        match store.prune_nodes(now - ENDED_RUNS_KEPT_MS).await {
            Ok(0) => {}
            Ok(n) => debug!(
                rows = n,
                "pruned the rows of runs that ended over 7 days ago"
            ),
            Err(e) => warn!(error = %e, "cannot prune ended runs from nodes"),
        }
    }
}

/// Routes [`RemoteNotice`]s on [`CHANNEL`] to this node's live calls, until `stopped`.
async fn listen(url: String, me: String, live: Arc<LiveCalls>, mut stopped: watch::Receiver<bool>) {
    let mut listener = loop {
        match connect(&url).await {
            Ok(l) => break l,
            Err(e) => {
                warn!(error = %e, "cannot LISTEN for callbacks of other nodes; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    };
    info!(
        channel = CHANNEL,
        "listening for callbacks of live calls from other nodes"
    );
    loop {
        let n = tokio::select! {
            n = listener.recv() => n,
            _ = stopped.changed() => return,
        };
        match n {
            Ok(n) => match serde_json::from_str::<RemoteNotice>(n.payload()) {
                Ok(r) if r.from == me => {}
                Ok(r) => {
                    let notice = CallNotice::AnsweredBy(AnsweredBy::from_twilio(&r.answered_by));
                    if live.notify(&r.call_sid, notice) {
                        info!(
                            call_sid = r.call_sid,
                            answered_by = r.answered_by,
                            "callback from another node reached the live call"
                        );
                        metrics::counter!("hark_remote_notices_total", "result" => "routed")
                            .increment(1);
                    }
                }
                Err(e) => warn!(error = %e, "malformed notice on the callbacks channel"),
            },
            // PgListener reconnects by itself on the next recv; a database that stays down is
            // retried (and logged) once a second.
            Err(e) => {
                warn!(error = %e, "callbacks channel: connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => return,
                }
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut l = PgListener::connect(url).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_a_fifth_of_the_lost_time_within_bounds() {
        assert_eq!(
            heartbeat_every(Duration::from_secs(15)),
            Duration::from_secs(3)
        );
        assert_eq!(
            heartbeat_every(Duration::from_secs(2)),
            Duration::from_millis(400)
        );
        assert_eq!(
            heartbeat_every(Duration::from_secs(3600)),
            Duration::from_secs(5)
        );
    }
}
