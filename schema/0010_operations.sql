-- What this database was set up as (issue 11): the server name is in every
-- user id and room alias, and the signing key id in every signature, so a
-- start with another one is refused rather than locking everyone out.
CREATE TABLE IF NOT EXISTS server_identity (
    id INT PRIMARY KEY,
    server_name TEXT NOT NULL,
    signing_key_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- Registration tokens made through the admin API (Synapse's shape): a
-- token may allow a number of uses and expire; `completed` counts uses.
CREATE TABLE IF NOT EXISTS registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed INT,
    completed INT NOT NULL DEFAULT 0,
    expiry_time BIGINT,
    created_ts BIGINT NOT NULL
);

-- Rooms an admin blocked: nobody local may join or be invited.
CREATE TABLE IF NOT EXISTS blocked_rooms (
    room_id TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- Long admin operations (room deletion, history purge) as jobs whose state
-- lives here, so that any instance can report them and a job whose
-- instance died is taken up again (every step is idempotent).
CREATE TABLE IF NOT EXISTS admin_jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    params JSONB NOT NULL,
    status TEXT NOT NULL,
    result JSONB NOT NULL DEFAULT '{}',
    error TEXT,
    instance_id TEXT,
    lease_expires_ts BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS admin_jobs_by_room ON admin_jobs (room_id);
CREATE INDEX IF NOT EXISTS admin_jobs_by_status ON admin_jobs (status);
