-- Stream positions: the global max and range scans of changes.
CREATE INDEX IF NOT EXISTS device_list_changes_by_stream ON device_list_changes (stream_pos);
CREATE INDEX IF NOT EXISTS to_device_messages_by_stream ON to_device_messages (stream_pos);
