-- Stream positions: the global max and range scans of changes; hash-sharded
-- so that sequential positions do not all land on one range.
CREATE INDEX IF NOT EXISTS e2e_key_count_changes_by_stream ON e2e_key_count_changes (stream_pos) USING HASH;
