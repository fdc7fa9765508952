-- Several hark nodes on one database (the same tables in migrations/postgres/).

-- Every run of a hark process ("instance"), its heartbeat and how it ended. A node that stops
-- heart-beating for longer than the lost-after time is `lost`: another node closes its open
-- calls as `ended: crashed` and delivers its pending call events.
CREATE TABLE nodes (
    instance_id  TEXT PRIMARY KEY,          -- "<pid>-<start Unix ms>"
    node_id      TEXT NOT NULL,             -- HARK_NODE_ID (default: the host name)
    started_at   BIGINT NOT NULL,          -- Unix ms
    seen_at      BIGINT NOT NULL,          -- the latest heartbeat, Unix ms
    state        TEXT NOT NULL,             -- alive | stopped | lost
    ended_at     BIGINT,                   -- when it stopped, or was found lost
    ended_by     TEXT                       -- the instance that found it lost
);
CREATE INDEX nodes_alive ON nodes (state, seen_at);

-- Outbound call pacing shared by every node: the next free creation slot (Twilio's CPS is
-- per account, not per node). One row per pace ('outbound'); reserved under a row lock.
CREATE TABLE call_pacing (
    name         TEXT PRIMARY KEY,
    next_slot_us BIGINT NOT NULL           -- Unix µs, the database server's clock
);
