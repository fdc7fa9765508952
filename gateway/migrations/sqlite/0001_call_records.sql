-- hark call records (SQLite; kept to portable SQL so Postgres can follow).
-- Times are Unix milliseconds (INTEGER). JSON columns hold TEXT.

-- One row per call: outbound ones from POST /calls, inbound ones from their first record.
CREATE TABLE calls (
    call_sid     TEXT PRIMARY KEY,
    direction    TEXT,              -- Twilio's Direction: outbound-api, inbound, ...
    from_number  TEXT,
    to_number    TEXT,
    agent        TEXT,
    parameters   TEXT,              -- JSON object given to POST /calls
    status       TEXT,              -- latest CallStatus applied
    status_seq   INTEGER,           -- SequenceNumber of that status (out-of-order guard)
    answered_by  TEXT,              -- AMD result
    stream_sid   TEXT,
    stream_params TEXT,             -- JSON object: the stream's customParameters
    duration_s   INTEGER,           -- CallDuration of the final status
    summary      TEXT,              -- JSON: StreamSummary at stream stop
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    stream_started_at INTEGER,
    stream_stopped_at INTEGER,
    ended_at     INTEGER            -- when a final status arrived
);
CREATE INDEX calls_by_status ON calls (status, created_at);
CREATE INDEX calls_by_created ON calls (created_at);

-- Status timeline: call progress callbacks and stream status callbacks, each stored once.
CREATE TABLE call_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid     TEXT NOT NULL,
    source       TEXT NOT NULL,     -- 'status' | 'stream'
    dedupe_key   TEXT NOT NULL UNIQUE,
    sequence_number INTEGER,
    status       TEXT NOT NULL,     -- CallStatus, or StreamEvent for source = 'stream'
    answered_by  TEXT,
    twilio_timestamp TEXT,          -- Twilio's Timestamp, as sent
    received_at  INTEGER NOT NULL,
    params       TEXT NOT NULL      -- JSON object of every form parameter
);
CREATE INDEX call_events_by_call ON call_events (call_sid, id);

-- Caller turns with latency telemetry from the engine.
CREATE TABLE turns (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    call_sid      TEXT NOT NULL,
    user_start_ms INTEGER NOT NULL, -- media time, ms from stream start
    user_end_ms   INTEGER NOT NULL,
    latency_ms    INTEGER,          -- caller's last voiced frame -> first agent audio sent
    interrupted   INTEGER NOT NULL, -- 0/1: the caller barged in on the answer
    heard_ms      INTEGER,          -- agent audio the caller heard (mark echoes)
    text          TEXT,             -- transcript, when the agent has one
    recorded_at   INTEGER NOT NULL
);
CREATE INDEX turns_by_call ON turns (call_sid, user_start_ms);

-- Recordings, one row per RecordingSid (later callbacks update it).
CREATE TABLE recordings (
    recording_sid TEXT PRIMARY KEY,
    call_sid      TEXT NOT NULL,
    status        TEXT,
    url           TEXT,
    duration_s    INTEGER,
    channels      INTEGER,
    source        TEXT,
    track         TEXT,
    start_time    TEXT,
    updated_at    INTEGER NOT NULL,
    params        TEXT NOT NULL
);
CREATE INDEX recordings_by_call ON recordings (call_sid);

-- Conversations webhooks, each stored once.
CREATE TABLE conversation_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key       TEXT NOT NULL UNIQUE,
    route            TEXT NOT NULL,
    event_type       TEXT,
    conversation_sid TEXT,
    message_sid      TEXT,
    participant_sid  TEXT,
    author           TEXT,
    body             TEXT,
    source           TEXT,
    received_at      INTEGER NOT NULL,
    params           TEXT NOT NULL
);
CREATE INDEX conversation_events_by_conversation ON conversation_events (conversation_sid, id);
