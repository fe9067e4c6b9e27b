-- End-to-end encryption: device keys, one-time and fallback keys,
-- cross-signing keys and signatures, device-list changes, to-device
-- messages and server-side key backup. The server never sees plaintext; it
-- stores what clients upload (JSON text, served as uploaded) and relays it.
-- Rows a client syncs (device-list changes, to-device messages) carry a
-- `stream_pos` from stream_seq; their stream indexes are in the dialect files.

-- A device's identity keys, as uploaded (signature checked on upload).
CREATE TABLE IF NOT EXISTS e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: each is handed out once (claimed = deleted).
CREATE TABLE IF NOT EXISTS e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- At most one fallback key per device and algorithm; `used` once claimed.
CREATE TABLE IF NOT EXISTS e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: key_type is master, self_signing or user_signing.
CREATE TABLE IF NOT EXISTS e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through /keys/signatures/upload. target_key_id is a
-- device id, or the unpadded base64 public key of a cross-signing key.
CREATE TABLE IF NOT EXISTS e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- One row per change of a user's device list (new or removed device, new
-- device keys, new cross-signing keys or signatures).
CREATE TABLE IF NOT EXISTS device_list_changes (
    user_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_pos)
);

-- To-device messages waiting for their device; deleted once the device
-- syncs with a `since` at or past their position. `seq` orders messages
-- that share one position (one send to several of a user's devices).
CREATE TABLE IF NOT EXISTS to_device_messages (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    seq INT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_pos, seq)
);

-- Transaction ids of /sendToDevice, per sending device.
CREATE TABLE IF NOT EXISTS to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Key backup versions; a deleted version keeps its row so its number is
-- never reused. `etag` changes whenever the stored keys change.
CREATE TABLE IF NOT EXISTS e2e_room_keys_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE IF NOT EXISTS e2e_room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

-- Who shared a room with whom at a position (device-list `changed`/`left`).
CREATE INDEX IF NOT EXISTS room_memberships_by_room ON room_memberships (room_id, stream_pos);
