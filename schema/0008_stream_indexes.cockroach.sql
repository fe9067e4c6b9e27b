-- room_memberships is a stream table: the notifier's max(stream_pos) and
-- changes_between's range scan read it several times a second. Its
-- positions are sequential, so the index is hash-sharded like the other
-- global stream-position indexes.
CREATE INDEX IF NOT EXISTS room_memberships_by_stream ON room_memberships (stream_pos) USING HASH;
-- Per-room timelines: room_id already spreads writes over ranges, and a
-- hash-sharded (room_id, stream_pos) index makes every timeline read scan
-- all of its buckets. A plain index first, then the old one goes.
CREATE INDEX IF NOT EXISTS events_by_room_stream_plain ON events (room_id, stream_pos);
DROP INDEX IF EXISTS events@events_by_room_stream;
