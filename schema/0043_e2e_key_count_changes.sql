-- One row per change of a user's one-time or fallback keys (an upload, a
-- claim, a removed device), at a stream position: a /sync reuses the key
-- counts it sent last while no row of the user's is in (since, upto]
-- (services/e2e/keys.py), instead of counting the keys on every sync.
CREATE TABLE IF NOT EXISTS e2e_key_count_changes (
    user_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_pos)
);
