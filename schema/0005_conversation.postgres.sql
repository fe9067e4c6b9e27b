-- Stream positions: the global max and range scans of changes.
CREATE INDEX IF NOT EXISTS account_data_by_stream ON account_data (stream_pos);
CREATE INDEX IF NOT EXISTS receipts_by_stream ON receipts (stream_pos);
CREATE INDEX IF NOT EXISTS typing_by_stream ON typing (stream_pos);
CREATE INDEX IF NOT EXISTS presence_by_stream ON presence (stream_pos);
