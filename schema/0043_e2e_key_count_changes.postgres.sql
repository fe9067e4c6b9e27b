-- Stream positions: the global max and range scans of changes.
CREATE INDEX IF NOT EXISTS e2e_key_count_changes_by_stream ON e2e_key_count_changes (stream_pos);
