-- The admins' room DAG viewer (issue 12) reads a room's events by depth, a
-- window at a time (around an event, or a depth range), never the whole DAG.
CREATE INDEX IF NOT EXISTS events_by_room_depth ON events (room_id, depth);
