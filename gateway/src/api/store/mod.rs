//! Call records in SQLite or PostgreSQL through sqlx: calls, their status timeline, caller
//! turns with latency telemetry, recordings, Conversations webhook events, the call events'
//! outbox, and what several nodes on one database share (heartbeats, outbound pacing).
//!
//! One set of queries serves both back-ends, over sqlx's `Any` driver: `$1` parameters (SQLite
//! reads them too), `ON CONFLICT` upserts, `IS DISTINCT FROM`, `CASE` instead of SQLite's
//! two-argument `MAX`, integers as `BIGINT` and flags as 0/1; the few dialect-specific
//! statements branch on [`Backend`]. The schema, the same in both dialects, is in
//! `gateway/migrations/sqlite/` and `gateway/migrations/postgres/`, embedded in the binary
//! (`sqlx::migrate!`) and applied when the store opens. A SQLite file runs in WAL mode
//! (readers don't block the writer), `synchronous = NORMAL`, with a 5 s busy timeout. Times
//! are Unix milliseconds.
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
//! | `nodes.rs` | several nodes on one database: heartbeats, claiming lost runs, the shared outbound call pacing |
//! | `outbox.rs` | the call events' outbox: writing events beside their records, and the delivery worker's reads and marks |

mod nodes;
mod outbox;
mod reads;
mod rows;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool};

use super::ApiError;
use crate::config::ConfigError;

pub use nodes::{LostNode, Slot};
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
    pool: AnyPool,
    backend: Backend,
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
pub enum OpenCalls<'a> {
    /// This node's, from earlier runs of the process (it crashed or was killed).
    Crashed,
    /// This run's (calls cut at shutdown whose own close never arrived).
    ThisRun,
    /// Those of another run, of this node or another (a lost node, see
    /// [`Store::claim_lost_nodes`]); their end is their last known activity.
    Instance(&'a Node),
}

/// Which database a [`Store`] is on (`HARK_DATABASE_URL`'s scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One process's file (or memory): the default.
    Sqlite,
    /// A PostgreSQL server, which several hark nodes can share.
    Postgres,
}

/// The most connections a Postgres-backed store opens (each node).
pub const POSTGRES_POOL_MAX: u32 = 16;

/// A pool on a PostgreSQL server at `url`.
async fn open_postgres(url: &str) -> Result<AnyPool, ApiError> {
    AnyPoolOptions::new()
        .max_connections(POSTGRES_POOL_MAX)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| ApiError::Database {
            url: redact(url),
            source,
        })
}

/// A pool on the SQLite database at `url` (`sqlite:…`, or a bare path), created if missing.
async fn open_sqlite(url: &str) -> Result<AnyPool, ApiError> {
    let lower = url.to_ascii_lowercase();
    let mut full = if lower.starts_with("sqlite:") {
        url.to_owned()
    } else {
        format!("sqlite://{url}")
    };
    let memory = lower.contains(":memory:") || lower.contains("mode=memory");
    if !lower.contains("mode=") && !memory {
        // Create the file if missing (sqlx's `mode=rwc`).
        full.push(if full.contains('?') { '&' } else { '?' });
        full.push_str("mode=rwc");
    }
    let db_err = |source| ApiError::Database {
        url: full.clone(),
        source,
    };
    let pool_opts = if memory {
        // Each in-memory connection is its own database: keep exactly one, forever.
        AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
    };
    pool_opts
        .after_connect(move |conn, _| {
            Box::pin(async move {
                let pragmas = if memory {
                    "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;"
                } else {
                    "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
                     PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                };
                conn.execute(pragmas).await.map(drop)
            })
        })
        .connect(&full)
        .await
        .map_err(db_err)
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Opens (creating if missing) the database at `url` and applies the embedded migrations
    /// of its dialect (`gateway/migrations/sqlite/` or `gateway/migrations/postgres/`).
    ///
    /// `url`: `sqlite://path`, `sqlite:path`, a bare file path, or `sqlite::memory:` (one
    /// connection, kept open: for tests); or `postgres://user:password@host:port/database`
    /// (also `postgresql://`; a Unix socket as `?host=/path/to/dir`), whose database must exist.
    /// SQLite files run in WAL mode with `synchronous = NORMAL` and a 5 s busy timeout; a
    /// Postgres pool holds up to [`POSTGRES_POOL_MAX`] connections.
    ///
    /// # Errors
    /// [`ApiError::Setting`] for another scheme, [`ApiError::Database`] when the database
    /// cannot be opened or reached, [`ApiError::Migrate`].
    pub async fn open(url: &str) -> Result<Store, ApiError> {
        sqlx::any::install_default_drivers();
        let lower = url.to_ascii_lowercase();
        let backend = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Backend::Postgres
        } else if lower.contains("://") && !lower.starts_with("sqlite:") {
            return Err(ApiError::Setting(ConfigError::new(
                super::settings::ENV_DATABASE_URL,
                format!(
                    "hark stores calls in SQLite (sqlite://path) or PostgreSQL (postgres://…); got a {:?} URL",
                    url.split("://").next().unwrap_or_default()
                ),
            )));
        } else {
            Backend::Sqlite
        };
        let pool = match backend {
            Backend::Postgres => open_postgres(url).await?,
            Backend::Sqlite => open_sqlite(url).await?,
        };
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
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
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The database the records are in.
    pub fn backend(&self) -> Backend {
        self.backend
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
        f: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let out = f(&mut tx).await?;
        tx.commit().await?;
        self.committed();
        Ok(out)
    }
}

impl Store {
    /// Holds the call `call_sid` for the rest of the transaction `conn`: on PostgreSQL a
    /// transaction-scoped advisory lock on the Call SID's hash, so writes of one call from
    /// several nodes take turns; on SQLite nothing (the database has one writer at a time).
    ///
    /// # Errors
    /// The driver's error.
    pub(crate) async fn lock_call_in(
        &self,
        conn: &mut AnyConnection,
        call_sid: &str,
    ) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))::TEXT")
                .bind(call_sid)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// The tests' PostgreSQL (`gateway/tests/pg/mod.rs`, shared with the integration tests).
#[cfg(test)]
#[path = "../../../tests/pg/mod.rs"]
pub(crate) mod pg;

/// A store on each back-end for the unit tests: SQLite in memory, then a fresh database on
/// a real PostgreSQL (none when `HARK_SKIP_POSTGRES_TESTS=1` and no PostgreSQL is found).
#[cfg(test)]
pub(crate) async fn test_stores() -> Vec<Store> {
    let mut stores = vec![Store::open("sqlite::memory:").await.expect("SQLite store")];
    if let Some(url) = pg::fresh_database().await {
        stores.push(Store::open(&url).await.expect("PostgreSQL store"));
    }
    stores
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_other_databases() {
        let err = Store::open("mysql://localhost/hark").await.unwrap_err();
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
