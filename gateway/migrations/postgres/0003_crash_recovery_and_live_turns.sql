-- Records that survive a crash, and stream-only calls.

-- Which hark process ran the call's media stream: HARK_NODE_ID (default: the host name) and
-- that process's run ("<pid>-<start Unix ms>"). At start, hark closes the calls its node left
-- open (stream started, never stopped) as `ended: crashed`; other nodes' calls are left alone.
ALTER TABLE calls ADD COLUMN node_id TEXT;
ALTER TABLE calls ADD COLUMN instance_id TEXT;
CREATE INDEX calls_open_by_node ON calls (node_id, stream_stopped_at);

-- A turn's position in its call, from 0. A turn is stored when the caller's turn ends and
-- updated as its answer plays (latency, what was heard, transcripts): one row per
-- (call_sid, turn_index). NULL for turns stored without one (older rows, direct inserts).
ALTER TABLE turns ADD COLUMN turn_index BIGINT;
CREATE UNIQUE INDEX turns_by_call_index ON turns (call_sid, turn_index);

-- hark's own stream events in the timeline (source 'media'): why a stream stopped
-- (the summary's `ended`: `stop`, `shutdown`, `crashed`, …).
ALTER TABLE call_events ADD COLUMN detail TEXT;
