-- Per-room timelines read newest-first.
CREATE INDEX IF NOT EXISTS events_by_room_stream ON events (room_id, stream_pos);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_pos);
