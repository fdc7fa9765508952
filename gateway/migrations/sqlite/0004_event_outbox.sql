-- Call events for the operator's backend (HARK_EVENTS_URL): a persisted outbox.
--
-- Each event is written in the same transaction as the record it describes (stream start,
-- a finished turn, stream stop), so an event exists exactly when its record does. The
-- delivery worker of the node that wrote it POSTs it (signed) until the backend answers 2xx,
-- in `seq` order per call, retrying with exponential backoff for up to an hour; delivered and
-- given-up rows stay for inspection.
CREATE TABLE event_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,   -- the idempotency key: "<call_sid>:<seq>"
    dedupe_key      TEXT NOT NULL UNIQUE,   -- what the event is about, so it is written once
    call_sid        TEXT NOT NULL,
    seq             INTEGER NOT NULL,       -- per call, from 0: the delivery order
    event_type      TEXT NOT NULL,          -- call.started | turn.ended | call.ended
    body            TEXT NOT NULL,          -- the exact JSON POSTed
    node_id         TEXT NOT NULL,          -- the node whose worker delivers it
    state           TEXT NOT NULL,          -- pending | delivered | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_attempt_at INTEGER,
    delivered_at    INTEGER,
    last_error      TEXT,                   -- the latest failed attempt, e.g. "HTTP 503", "connect: …"
    UNIQUE (call_sid, seq)
);
-- The worker's question: the first pending event of each call, soonest due first.
CREATE INDEX event_outbox_pending ON event_outbox (node_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX event_outbox_pending_by_call ON event_outbox (call_sid, seq) WHERE state = 'pending';
