-- Per-room timelines read newest-first.
CREATE INDEX IF NOT EXISTS events_by_room_stream ON events (room_id, stream_pos);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_pos);
-- Room rows are updated on every send (forward extremities): leave room on
-- each page so the new row version stays on it (a HOT update writes no
-- index entry, so sends to different rooms do not meet in the index).
ALTER TABLE rooms SET (fillfactor = 50);
