-- Conversation features around rooms: account data (incl. tags and the
-- m.push_rules mirror), receipts, typing, presence, profiles, filters and
-- push rules. Rows a client syncs carry a `stream_pos` from stream_seq;
-- their stream indexes are in the dialect files (hash-sharded on CockroachDB).

-- Account data; room_id is '' for global account data.
CREATE TABLE IF NOT EXISTS account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,          -- JSON object, served as-is
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);

-- The latest receipt per (room, type, user, thread); thread_id '' is unthreaded.
CREATE TABLE IF NOT EXISTS receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);

-- Who is typing where. A row stays after the user stops (typing = false) so
-- that the change has a stream position; the expiry sweep turns rows whose
-- expires_ts passed into typing = false at a new position.
CREATE TABLE IF NOT EXISTS typing (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    typing BOOLEAN NOT NULL,
    expires_ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS typing_by_expiry ON typing (typing, expires_ts);

CREATE TABLE IF NOT EXISTS presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,            -- online, unavailable, offline
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL
);

-- Profiles are created lazily: a user without a row has displayname =
-- localpart and no other field. `fields` holds every other field (m.tz and
-- custom keys) as a JSON object.
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT PRIMARY KEY,
    displayname TEXT,
    avatar_url TEXT,
    fields TEXT NOT NULL DEFAULT '{}'
);

-- Filters are immutable; filter_id is derived from the filter's content, so
-- uploading the same filter twice gives the same id.
CREATE TABLE IF NOT EXISTS user_filters (
    user_id TEXT NOT NULL,
    filter_id TEXT NOT NULL,
    filter TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- User-defined push rules; `position` orders rules of one kind (0 = most
-- important). room and sender rules keep their implied conditions.
CREATE TABLE IF NOT EXISTS push_rules (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    position INT NOT NULL,
    conditions TEXT,                -- JSON array, or NULL
    pattern TEXT,
    actions TEXT NOT NULL,          -- JSON array
    enabled BOOLEAN NOT NULL DEFAULT true,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- A user's changes to server-default rules (NULL: unchanged).
CREATE TABLE IF NOT EXISTS push_rule_defaults (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled BOOLEAN,
    actions TEXT,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- Per-key stream reads for /sync (global max indexes are in the dialect files).
CREATE INDEX IF NOT EXISTS account_data_by_user_stream ON account_data (user_id, stream_pos);
CREATE INDEX IF NOT EXISTS receipts_by_room_stream ON receipts (room_id, stream_pos);
CREATE INDEX IF NOT EXISTS typing_by_room_stream ON typing (room_id, stream_pos);
