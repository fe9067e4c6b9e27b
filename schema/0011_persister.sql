-- One door into a room (services/persister.py): events from anywhere.
--
-- Soft-failed events (accepted by their auth events and the state before
-- them, refused by the room's current state) are stored in the DAG but are
-- never shown to clients nor become forward extremities. Like rejected
-- events and outliers they have no stream position.
ALTER TABLE events ADD COLUMN IF NOT EXISTS soft_failed BOOLEAN NOT NULL DEFAULT false;
-- The room's resolved current state right after this event was persisted.
-- It differs from `state_group` (the state after the event in its branch of
-- the DAG) when the room has several forward extremities; what clients are
-- told the room's state was at a stream position is this one. NULL on rows
-- written before it existed: read COALESCE(current_state_group, state_group).
ALTER TABLE events ADD COLUMN IF NOT EXISTS current_state_group BIGINT;
-- State groups get ids of their own (they used to take the stream position
-- of the event starting them, which events without a position, and the
-- resolved state of a forked room, do not have). Non-cached, so ids are
-- unique across instances; they need not be ordered.
CREATE SEQUENCE IF NOT EXISTS state_group_id_seq;
-- Start above the ids taken from stream positions. Run once (a crash before
-- this version is recorded runs it again, while nothing allocates yet).
SELECT setval('state_group_id_seq', COALESCE((SELECT max(id) FROM state_groups), 0) + 1, false);
-- History in DAG order (/messages, backfill): topological order (depth),
-- then stream position.
CREATE INDEX IF NOT EXISTS events_by_room_depth ON events (room_id, depth, stream_pos);
