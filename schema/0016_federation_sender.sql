-- Outbound federation (services/federation/sender.py): one row per
-- destination server. `stream_pos`: every event at or below it that the
-- destination should get has been acknowledged by it. The backoff is stored
-- so that every instance agrees on it.
CREATE TABLE IF NOT EXISTS federation_destinations (
    destination TEXT PRIMARY KEY,
    stream_pos BIGINT NOT NULL,
    retry_count INT NOT NULL DEFAULT 0,
    retry_until_ts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);

-- Events sent by remote users that we forward to the other servers in the
-- room as the resident server (joins through send_join, leaves through
-- send_leave).
CREATE TABLE IF NOT EXISTS federation_relay (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- How far the sender has looked for destinations to create (one row): after
-- a crash it looks again from there, so no destination is missed.
CREATE TABLE IF NOT EXISTS federation_sender_scan (
    id INT PRIMARY KEY,
    stream_pos BIGINT NOT NULL
);
