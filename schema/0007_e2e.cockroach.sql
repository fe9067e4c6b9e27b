-- Stream positions: the global max and range scans of changes; hash-sharded
-- so that sequential positions do not all land on one range.
CREATE INDEX IF NOT EXISTS device_list_changes_by_stream ON device_list_changes (stream_pos) USING HASH;
CREATE INDEX IF NOT EXISTS to_device_messages_by_stream ON to_device_messages (stream_pos) USING HASH;
