-- room_memberships is a stream table: the notifier's max(stream_pos) and
-- changes_between's range scan read it several times a second.
CREATE INDEX IF NOT EXISTS room_memberships_by_stream ON room_memberships (stream_pos);
