-- Per-room timelines read newest-first; hash-sharded so that sequential
-- stream positions do not all land on one range.
CREATE INDEX IF NOT EXISTS events_by_room_stream ON events (room_id, stream_pos) USING HASH;
CREATE UNIQUE INDEX IF NOT EXISTS events_by_stream ON events (stream_pos) USING HASH;
