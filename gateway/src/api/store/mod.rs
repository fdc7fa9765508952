//! Call records in SQLite through sqlx (so Postgres can follow): calls, their status timeline,
//! caller turns with latency telemetry, recordings, and Conversations webhook events.
//!
//! The schema is in `gateway/migrations/` and embedded in the binary (`sqlx::migrate!`); it is
//! applied when the store opens. The database runs in WAL mode (readers don't block the writer),
//! `synchronous = NORMAL`, with a 5 s busy timeout. Times are Unix milliseconds.
//!
//! Writes are idempotent, because Twilio retries callbacks: a call progress event is stored once
//! per `CallSid` + `SequenceNumber` (twilio.com/docs/voice/api/call-resource: progress events
//! carry a `SequenceNumber` from 0, and may arrive out of order), a stream event once per
//! `StreamSid` + `StreamEvent`, a recording once per `RecordingSid` (later statuses update it), a
//! Conversations webhook once per idempotency key. A call's status only moves forward in
//! `SequenceNumber` order, so a late `ringing` never overwrites `completed`.
//!
//! Every write runs inside a transaction it is given (`Store::…_in(conn, …)`): [`Store::write`]
//! gives it one of its own, and the record writer ([`super::recorder`]) commits a batch of
//! records in one. A turn with an index is one row
//! per call and index (stored when the caller's turn ends, updated as its answer plays). A call
//! whose stream this process ran carries its [`Node`]; [`Store::close_open_calls`] closes what
//! a crashed run of the node left open, or what this run leaves open at shutdown. hark's own
//! stream events are timeline entries of source `media`.
//!
//! With call events on ([`Store::with_events`], when `HARK_EVENTS_URL` is set), the writes of a
//! stream's start, a finished turn and a stream's end also put the event for the operator's
//! backend in the outbox (`event_outbox`), in the same transaction: an event exists exactly
//! when its record does. [`crate::operator::delivery`] sends them.
//!
//! ## Layout
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | [`Store`]: opening the database (schema, pool, WAL), [`Store::write`], the [`Node`] |
//! | `rows.rs` | the records written and read |
//! | `writes.rs` | the idempotent writes, and closing the streams a node left open |
//! | `reads.rs` | the reads: one call with its timeline, turns and recordings; call lists; Conversations webhooks |
//! | `outbox.rs` | the call events' outbox: writing events beside their records, and the delivery worker's reads and marks |

mod outbox;
mod reads;
mod rows;
mod writes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::ApiError;
use crate::config::ConfigError;

pub use outbox::{EventState, OutboxRow};
pub use rows::{
    CallDetail, CallSummaryRow, Latency, NewCall, RecordingEvent, RecordingRow, StatusEvent,
    StoredConversationEvent, StreamEvent, TimelineEntry, TurnRow,
};

/// Call statuses after which nothing changes (twilio.com/docs/voice/api/call-resource,
/// "Call Status values").
pub const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// Whether `status` is a final call status.
pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// The call records database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    node: Arc<Node>,
    /// Call events on: the outbox's wake-up for the delivery worker.
    outbox: Option<Arc<outbox::Signal>>,
}

/// The hark process that runs calls' media streams, stored with each call whose stream it ran,
/// so that at start a node closes only the calls *it* left open ([`Store::close_open_calls`]).
///
/// `node_id` is `HARK_NODE_ID`, default the host name: give every hark process that shares one
/// database its own (two processes on one host need distinct `HARK_NODE_ID`s, or the second to
/// start would close the first one's live calls as crashed). `instance_id` tells this run of
/// the process from earlier ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `HARK_NODE_ID`, or the host name.
    pub node_id: String,
    /// This run: `"<pid>-<start Unix ms>"`.
    pub instance_id: String,
}

impl Node {
    /// This process on node `node_id`.
    pub fn this_process(node_id: impl Into<String>) -> Node {
        Node {
            node_id: node_id.into(),
            instance_id: format!("{}-{}", std::process::id(), super::now_ms()),
        }
    }

    /// The host name: Linux `/proc/sys/kernel/hostname`, else `/etc/hostname`, else the
    /// `HOSTNAME` variable, else `"hark"`.
    pub fn hostname() -> String {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .chain(std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .find(|h| !h.is_empty())
            .unwrap_or_else(|| "hark".to_owned())
    }
}

/// Whose open media streams [`Store::close_open_calls`] closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCalls {
    /// This node's, from earlier runs of the process (it crashed or was killed).
    Crashed,
    /// This run's (calls cut at shutdown whose own close never arrived).
    ThisRun,
}

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the embedded migrations.
    ///
    /// `url`: `sqlite://path`, `sqlite:path`, a bare file path, or `sqlite::memory:` (one
    /// connection, kept open: for tests). Postgres and others are not built in.
    ///
    /// # Errors
    /// [`ApiError::Setting`] for an unsupported URL, [`ApiError::Database`],
    /// [`ApiError::Migrate`].
    pub async fn open(url: &str) -> Result<Store, ApiError> {
        let lower = url.to_ascii_lowercase();
        if lower.contains("://") && !lower.starts_with("sqlite:") {
            return Err(ApiError::Setting(ConfigError::new(
                super::settings::ENV_DATABASE_URL,
                format!(
                    "only SQLite (sqlite://path) is built in; got a {:?} URL",
                    url.split("://").next().unwrap_or_default()
                ),
            )));
        }
        let full = if lower.starts_with("sqlite:") {
            url.to_owned()
        } else {
            format!("sqlite://{url}")
        };
        let db_err = |source| ApiError::Database {
            url: full.clone(),
            source,
        };
        let memory = lower.contains(":memory:") || lower.contains("mode=memory");
        let mut opts = SqliteConnectOptions::from_str(&full)
            .map_err(db_err)?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if !memory {
            opts = opts
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
        }
        let pool_opts = if memory {
            // Each in-memory connection is its own database: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
        };
        let pool = pool_opts.connect_with(opts).await.map_err(db_err)?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store {
            pool,
            node: Arc::new(Node::this_process(Node::hostname())),
            outbox: None,
        })
    }

    /// The same database, recording calls' streams as run by `node`.
    pub fn with_node(mut self, node: Node) -> Store {
        self.node = Arc::new(node);
        self
    }

    /// The node calls' streams are recorded as run by.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The connection pool, for queries this module does not offer.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection (later operations fail).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `f` in a transaction of its own on a pooled connection and commits it: the one way
    /// a single write runs outside the record writer's batches, e.g.
    /// `store.write(async |c| store.status_event_in(c, &e, now_ms).await)`.
    ///
    /// # Errors
    /// The driver's error, or `f`'s: then nothing `f` wrote is kept (the transaction is rolled
    /// back when dropped).
    pub async fn write<T>(
        &self,
        f: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let out = f(&mut tx).await?;
        tx.commit().await?;
        self.committed();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_other_databases() {
        let err = Store::open("postgres://localhost/hark").await.unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::Setting(crate::config::ConfigError {
                    var: "HARK_DATABASE_URL",
                    ..
                })
            ),
            "{err}"
        );
    }
}
