//! Several nodes on one database: each run's heartbeat (`nodes`), finding the runs that
//! stopped beating, and the outbound call pacing every node shares (`call_pacing`).
//!
//! Clocks: heartbeats are Unix ms from each node's clock (keep nodes' clocks in step with NTP;
//! the lost-after time is seconds, skew is milliseconds). The pacing slot uses the database
//! server's clock on PostgreSQL, so nodes' skew cannot bunch calls; on SQLite there is one node.

use sqlx::Row;

use super::{Backend, OpenCalls, Store};

/// The pacing row of outbound call creation (`call_pacing.name`).
const OUTBOUND: &str = "outbound";

/// A run of a node that stopped heart-beating, claimed by this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostNode {
    /// Its `HARK_NODE_ID`.
    pub node_id: String,
    /// The run.
    pub instance_id: String,
    /// Its latest heartbeat, Unix ms.
    pub seen_at_ms: i64,
}

/// What [`Store::reserve_call_slot`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Create the call after waiting this long, µs (0: now).
    After(u64),
    /// `capacity` creations are already waiting; the next free slot is this far away, µs.
    Full(u64),
}

impl Store {
    /// Records this run as alive (at start): its row in `nodes`, `seen_at` = `now_ms`.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn node_started(&self, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO nodes (instance_id, node_id, started_at, seen_at, state)
             VALUES ($1, $2, $3, $3, 'alive')
             ON CONFLICT (instance_id) DO UPDATE SET seen_at = excluded.seen_at, state = 'alive'",
        )
        .bind(&self.node.instance_id)
        .bind(&self.node.node_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// This run's heartbeat. `false` when another node has already declared it lost (it was
    /// cut off for longer than the lost-after time; its open calls were closed as crashed).
    ///
    /// # Errors
    /// The driver's error.
    pub async fn node_heartbeat(&self, now_ms: i64) -> Result<bool, sqlx::Error> {
        let n =
            sqlx::query("UPDATE nodes SET seen_at = $1 WHERE instance_id = $2 AND state = 'alive'")
                .bind(now_ms)
                .bind(&self.node.instance_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(n > 0)
    }

    /// Records this run as stopped (graceful shutdown), so no node looks for it.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn node_stopped(&self, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE nodes SET state = 'stopped', seen_at = $1, ended_at = $1
             WHERE instance_id = $2",
        )
        .bind(now_ms)
        .bind(&self.node.instance_id)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Claims the runs of other nodes (or earlier runs of this one) whose latest heartbeat is
    /// older than `lost_before_ms`, and for each: closes its open calls as `ended` (their end
    /// is their last known activity, as [`Store::close_open_calls`] with
    /// [`OpenCalls::Crashed`]), and moves its node's pending call events to this node when no
    /// run of that node is alive, so they are still delivered, once. Each lost run is claimed
    /// by exactly one node (the `alive` → `lost` update is the claim).
    ///
    /// Returns the runs claimed with the Call SIDs closed.
    ///
    /// # Errors
    /// The driver's error (that run's claim is rolled back; the next sweep tries again).
    pub async fn claim_lost_nodes(
        &self,
        lost_before_ms: i64,
        ended: &str,
        now_ms: i64,
    ) -> Result<Vec<(LostNode, Vec<String>)>, sqlx::Error> {
        let candidates = sqlx::query(
            "SELECT instance_id, node_id, seen_at FROM nodes
             WHERE state = 'alive' AND seen_at < $1 AND instance_id <> $2
             ORDER BY seen_at",
        )
        .bind(lost_before_ms)
        .bind(&self.node.instance_id)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for row in candidates {
            let lost = LostNode {
                instance_id: row.try_get("instance_id")?,
                node_id: row.try_get("node_id")?,
                seen_at_ms: row.try_get("seen_at")?,
            };
            let closed = self
                .write(async |c| {
                    let won = sqlx::query(
                        "UPDATE nodes SET state = 'lost', ended_at = $1, ended_by = $2
                         WHERE instance_id = $3 AND state = 'alive' AND seen_at < $4",
                    )
                    .bind(now_ms)
                    .bind(&self.node.instance_id)
                    .bind(&lost.instance_id)
                    .bind(lost_before_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected();
                    if won == 0 {
                        // Another node claimed it, or it beat again meanwhile.
                        return Ok(None);
                    }
                    let run = super::Node {
                        node_id: lost.node_id.clone(),
                        instance_id: lost.instance_id.clone(),
                    };
                    let closed = self
                        .close_open_calls_in(c, OpenCalls::Instance(&run), ended, now_ms)
                        .await?;
                    sqlx::query(
                        "UPDATE event_outbox SET node_id = $1
                         WHERE node_id = $2 AND state = 'pending' AND node_id <> $1
                           AND NOT EXISTS (SELECT 1 FROM nodes n
                                           WHERE n.node_id = $2 AND n.state = 'alive')",
                    )
                    .bind(&self.node.node_id)
                    .bind(&lost.node_id)
                    .execute(&mut *c)
                    .await?;
                    Ok(Some(closed))
                })
                .await?;
            if let Some(closed) = closed {
                claimed.push((lost, closed));
            }
        }
        Ok(claimed)
    }

    /// Deletes the rows of runs that ended (stopped, or claimed as lost) before
    /// `ended_before_ms`, Unix ms: a node adds a row per start, so without this `nodes` grows
    /// with every restart. A run that comes back after being pruned inserts its row again
    /// ([`Store::node_started`]). Returns the rows deleted.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn prune_nodes(&self, ended_before_ms: i64) -> Result<u64, sqlx::Error> {
        sqlx::query("DELETE FROM nodes WHERE state <> 'alive' AND ended_at < $1")
            .bind(ended_before_ms)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
    }

    /// Reserves the next outbound call creation slot, shared by every node on this database:
    /// one creation per `period_us`, with at most `capacity` reservations waiting (a
    /// reservation waits when its slot is in the future). The reservation is taken under a row
    /// lock, so two nodes never get the same slot.
    ///
    /// # Errors
    /// The driver's error.
    pub async fn reserve_call_slot(
        &self,
        period_us: u64,
        capacity: usize,
    ) -> Result<Slot, sqlx::Error> {
        let period = i64::try_from(period_us).unwrap_or(i64::MAX / 4);
        let window = period.saturating_mul(i64::try_from(capacity).unwrap_or(i64::MAX));
        // SQLite: this node's clock (one node per file), Unix µs, read once.
        let local_now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.write(async |c| {
            sqlx::query(
                "INSERT INTO call_pacing (name, next_slot_us) VALUES ($1, 0)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(OUTBOUND)
            .execute(&mut *c)
            .await?;
            let row = match self.backend {
                Backend::Postgres => {
                    sqlx::query(
                        "SELECT next_slot_us,
                                (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT AS now_us
                         FROM call_pacing WHERE name = $1 FOR UPDATE",
                    )
                    .bind(OUTBOUND)
                    .fetch_one(&mut *c)
                    .await?
                }
                Backend::Sqlite => {
                    sqlx::query(
                        "SELECT next_slot_us, $2 AS now_us FROM call_pacing WHERE name = $1",
                    )
                    .bind(OUTBOUND)
                    .bind(local_now_us)
                    .fetch_one(&mut *c)
                    .await?
                }
            };
            let next: i64 = row.try_get("next_slot_us")?;
            let now: i64 = row.try_get("now_us")?;
            let slot = next.max(now);
            let wait = slot - now;
            if wait >= window.max(1) {
                return Ok(Slot::Full(u64::try_from(wait).unwrap_or(0)));
            }
            sqlx::query("UPDATE call_pacing SET next_slot_us = $1 WHERE name = $2")
                .bind(slot.saturating_add(period))
                .bind(OUTBOUND)
                .execute(&mut *c)
                .await?;
            Ok(Slot::After(u64::try_from(wait).unwrap_or(0)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Node, test_stores};
    use super::*;

    fn node(id: &str, run: &str) -> Node {
        Node {
            node_id: id.into(),
            instance_id: run.into(),
        }
    }

    #[tokio::test]
    async fn slots_are_spaced_across_nodes_and_the_queue_is_bounded() {
        // A 10 s period, so the time the reservations themselves take (milliseconds, more on a
        // busy machine) cannot blur which slot each gets.
        const PERIOD: u64 = 10_000_000;
        for store in test_stores().await {
            let a = store.clone().with_node(node("a", "a-1"));
            let b = store.clone().with_node(node("b", "b-1"));
            // 10 reservations at once from two nodes, room for 20 waiting.
            let mut tasks = Vec::new();
            for i in 0..10 {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                tasks.push(tokio::spawn(async move {
                    s.reserve_call_slot(PERIOD, 20).await.expect("slot")
                }));
            }
            let mut waits = Vec::new();
            for t in tasks {
                match t.await.expect("task") {
                    Slot::After(us) => waits.push(us),
                    Slot::Full(_) => panic!("the queue has room"),
                }
            }
            waits.sort_unstable();
            assert_eq!(waits[0], 0, "the first goes now: {waits:?}");
            for w in waits.windows(2) {
                // Each later reservation waits one period more (less the time between them).
                let gap = w[1] - w[0];
                assert!((PERIOD * 9 / 10..=PERIOD).contains(&gap), "{waits:?}");
            }
            // Ten are taken (one going now, nine waiting): with room for 11 waiting, two more
            // fit, then it is full until the next slot frees.
            let small = |s: Store| async move { s.reserve_call_slot(PERIOD, 11).await.unwrap() };
            assert!(matches!(small(a.clone()).await, Slot::After(_)));
            assert!(matches!(small(b.clone()).await, Slot::After(_)));
            match small(a.clone()).await {
                Slot::Full(us) => assert!(us > 11 * PERIOD - PERIOD / 10, "next slot in {us} µs"),
                other => panic!("expected a full queue, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_silent_node_is_claimed_once_and_its_calls_closed() {
        for store in test_stores().await {
            let dead = store.clone().with_node(node("a", "a-1")).with_events();
            let live = store.clone().with_node(node("b", "b-1")).with_events();
            dead.node_started(1_000).await.unwrap();
            live.node_started(1_000).await.unwrap();
            dead.write(async |c| dead.stream_started_in(c, "CA1", "MZ1", &[], 1_500).await)
                .await
                .unwrap();
            live.write(async |c| live.stream_started_in(c, "CA2", "MZ2", &[], 1_600).await)
                .await
                .unwrap();
            assert!(live.node_heartbeat(20_000).await.unwrap());
            // At 21 s, with a lost-after time of 15 s: a-1 (seen at 1 s) is lost, b-1 is not.
            let claimed = live
                .claim_lost_nodes(6_000, "crashed", 21_000)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1, "{claimed:?}");
            assert_eq!(claimed[0].0.instance_id, "a-1");
            assert_eq!(claimed[0].1, ["CA1"]);
            // Once: another sweep, or another node, finds nothing.
            assert!(
                live.claim_lost_nodes(6_000, "crashed", 22_000)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let other = store.clone().with_node(node("c", "c-1"));
            assert!(
                other
                    .claim_lost_nodes(6_000, "crashed", 22_000)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // The lost node learns it at its next heartbeat.
            assert!(!dead.node_heartbeat(23_000).await.unwrap());
            let call = live.call("CA1").await.unwrap().expect("CA1");
            assert_eq!(call.summary["ended"], "crashed");
            assert!(
                live.call("CA2")
                    .await
                    .unwrap()
                    .expect("CA2")
                    .summary
                    .is_null()
            );
            // CA1's events are b's to deliver now, call.ended included.
            let events = live.outbox_events(Some("CA1")).await.unwrap();
            assert_eq!(events.len(), 2, "{events:?}");
            assert_eq!(events[1].event_type, "call.ended");
            assert_eq!(
                live.outbox_pending().await.unwrap(),
                3,
                "CA1's two and CA2's start"
            );
            // A stopped node is never claimed.
            live.node_stopped(24_000).await.unwrap();
            assert!(
                other
                    .claim_lost_nodes(30_000, "crashed", 40_000)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }

    #[tokio::test]
    async fn ended_runs_are_pruned_after_the_retention_and_alive_ones_never() {
        for store in test_stores().await {
            let stopped = store.clone().with_node(node("a", "a-1"));
            let lost = store.clone().with_node(node("b", "b-1"));
            let alive = store.clone().with_node(node("c", "c-1"));
            for s in [&stopped, &lost, &alive] {
                s.node_started(1_000).await.unwrap();
            }
            stopped.node_stopped(2_000).await.unwrap();
            // b-1 goes silent and c-1 claims it at 30 s.
            assert!(alive.node_heartbeat(29_000).await.unwrap());
            let claimed = alive.claim_lost_nodes(10_000, "crashed", 30_000).await;
            assert_eq!(claimed.unwrap().len(), 1);
            let rows = |s: Store| async move {
                let mut ids: Vec<String> = sqlx::query("SELECT instance_id FROM nodes")
                    .fetch_all(&s.pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<String, _>("instance_id"))
                    .collect();
                ids.sort();
                ids
            };
            // Before either ended nothing goes; then the stopped run (ended at 2 s); then the
            // lost one (ended at 30 s). The alive run stays however old its start.
            assert_eq!(alive.prune_nodes(2_000).await.unwrap(), 0);
            assert_eq!(alive.prune_nodes(2_001).await.unwrap(), 1);
            assert_eq!(rows(alive.clone()).await, ["b-1", "c-1"]);
            assert_eq!(alive.prune_nodes(i64::MAX).await.unwrap(), 1);
            assert_eq!(rows(alive.clone()).await, ["c-1"]);
            // A pruned run that beats again is told it was lost, and starting inserts its row.
            assert!(!lost.node_heartbeat(40_000).await.unwrap());
            lost.node_started(40_000).await.unwrap();
            assert_eq!(rows(alive.clone()).await, ["b-1", "c-1"]);
        }
    }
}
