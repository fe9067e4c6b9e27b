-- Accounts, devices, access tokens and user-interactive auth sessions.
-- Timestamps are milliseconds since the epoch (BIGINT), as Matrix uses.

CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    is_admin BOOLEAN NOT NULL DEFAULT false,
    deactivated BOOLEAN NOT NULL DEFAULT false,
    created_ts BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ip TEXT,
    last_seen_ts BIGINT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Only a SHA-256 of each token is stored.
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS access_tokens_by_device ON access_tokens (user_id, device_id);

-- User-interactive auth: stages completed per session, shared by all instances.
CREATE TABLE IF NOT EXISTS uia_sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT,
    completed JSONB NOT NULL DEFAULT '[]',
    created_ts BIGINT NOT NULL
);
