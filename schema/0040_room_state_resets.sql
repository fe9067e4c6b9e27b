-- Rooms whose state was corrected in place: a state event received while
-- the room's state was partial (schema/0031) that fails the auth rules on
-- the whole state before it, once the resync fetched it, is rejected and
-- taken out of the room's state groups and current state
-- (storage/partial_state.py rewrite_state). `stream_pos` is the
-- position of the last such correction: /sync shows the room whole again
-- from there (lazy-loading members or not), since the state the clients
-- built from the timeline is no longer the room's.
CREATE TABLE IF NOT EXISTS room_state_resets (
    room_id TEXT PRIMARY KEY,
    stream_pos BIGINT NOT NULL,
    events_rejected INT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS room_state_resets_by_pos ON room_state_resets (stream_pos);
