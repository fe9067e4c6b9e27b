-- Rooms, the event DAG, state and memberships.

CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    -- published in the public room directory
    is_public BOOLEAN NOT NULL DEFAULT false,
    -- The DAG's forward extremities (events with no successor yet). Kept in
    -- the room's row so a write checks and moves them with one single-row
    -- update: no scan of a shared index, so writes to different rooms do
    -- not conflict under SERIALIZABLE (PostgreSQL's SSI locks index pages).
    forward_extremities TEXT[] NOT NULL DEFAULT '{}'
);

-- Every event, stored once. `pdu` is the event as servers exchange it
-- (canonical JSON; replaced by its redacted form once redacted); `client` is
-- the client-format JSON served as-is (without per-request unsigned keys).
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    stream_pos BIGINT,              -- NULL for outliers
    depth BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    membership TEXT,
    pdu TEXT NOT NULL,
    client TEXT NOT NULL,
    outlier BOOLEAN NOT NULL DEFAULT false,
    rejected_reason TEXT,
    redacted_by TEXT,
    state_group BIGINT,             -- state after this event
    relates_to TEXT,                -- m.relates_to.event_id
    rel_type TEXT,
    thread_id TEXT,                 -- thread root for m.thread relations
    sender_device TEXT,             -- local sends: the device, for unsigned.transaction_id
    txn_id TEXT
);

CREATE INDEX IF NOT EXISTS events_by_relation ON events (relates_to, rel_type);

CREATE TABLE IF NOT EXISTS event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX IF NOT EXISTS event_edges_by_prev ON event_edges (prev_event_id);

CREATE TABLE IF NOT EXISTS event_auth_edges (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);

-- State as snapshots plus deltas: a group holds its own entries and points
-- to prev_group; `chain_length` bounds how far a lookup walks (a group with
-- no prev_group is a full snapshot).
CREATE SEQUENCE IF NOT EXISTS state_group_seq;

CREATE TABLE IF NOT EXISTS state_groups (
    id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_length INT NOT NULL
);

CREATE TABLE IF NOT EXISTS state_group_entries (
    state_group BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
);

-- The room's current (resolved) state.
CREATE TABLE IF NOT EXISTS current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX IF NOT EXISTS current_state_by_member ON current_state (type, state_key, membership);

-- Membership history of users, for /sync's join/invite/leave sections.
CREATE TABLE IF NOT EXISTS room_memberships (
    event_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    membership TEXT NOT NULL,
    stream_pos BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS room_memberships_by_user ON room_memberships (user_id, stream_pos);

-- Idempotent requests: one event per (user, device, endpoint, transaction
-- id); the spec scopes transaction ids per endpoint ("send", "redact").
CREATE TABLE IF NOT EXISTS event_txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, endpoint, txn_id)
);

-- Rooms a user has forgotten (hidden from /sync's leave section).
CREATE TABLE IF NOT EXISTS forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);

CREATE TABLE IF NOT EXISTS room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS room_aliases_by_room ON room_aliases (room_id);
