-- Rooms joined over federation with a partial state (send_join with
-- omit_members, MSC3706): the join was persisted on the state the resident
-- server sent without most membership events, and a resync worker
-- (services/federation/partial_state.py) fetches the full state at the join
-- event and completes it. `stream_pos` is NULL while the room is partial;
-- the resync's commit sets it (a stream position: /sync shows the room as
-- newly joined from there). `servers` are the resident's servers_in_room,
-- tried for the resync and sent our events while the member list is partial.
CREATE TABLE IF NOT EXISTS partial_state_rooms (
    room_id TEXT PRIMARY KEY,
    join_event_id TEXT NOT NULL,
    servers TEXT[] NOT NULL,
    started_ts BIGINT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    retry_until_ts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    stream_pos BIGINT
);
CREATE INDEX IF NOT EXISTS partial_state_rooms_by_pos ON partial_state_rooms (stream_pos);
