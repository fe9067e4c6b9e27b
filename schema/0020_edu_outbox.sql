-- Outbound EDUs that must not be lost (to-device messages, device-list and
-- signing-key updates; typing, receipts and presence too), queued per
-- destination server (storage/edu_outbox.py). The federation sender sends
-- them, oldest first and up to 100 a transaction, and deletes them only once
-- the destination acknowledged the transaction. `edu_key` (optional): a newer
-- EDU with the same (destination, edu_type, edu_key) replaces a queued one
-- (and takes a new id, so the delete of an older send keeps it). `expires_ts`
-- (optional): not sent after that time (typing).
CREATE SEQUENCE IF NOT EXISTS federation_edu_outbox_id_seq;

CREATE TABLE IF NOT EXISTS federation_edu_outbox (
    destination TEXT NOT NULL,
    id BIGINT NOT NULL,
    edu_type TEXT NOT NULL,
    edu_key TEXT,
    content JSONB NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT,
    PRIMARY KEY (destination, id)
);

CREATE UNIQUE INDEX IF NOT EXISTS federation_edu_outbox_key
    ON federation_edu_outbox (destination, edu_type, edu_key);

-- Device keys of users on other servers (storage/remote_device_lists.py), as
-- the last /user/keys/query answer gave them: the checked device keys, master
-- and self-signing keys of one user, fetched after stream position
-- `fetched_pos`. Deleted when an m.device_list_update or m.signing_key_update
-- says they changed; used only while we share a room with the user and no
-- membership changed there since `fetched_pos` (otherwise an update may
-- not have reached us).
CREATE TABLE IF NOT EXISTS e2e_remote_device_cache (
    user_id TEXT PRIMARY KEY,
    keys JSONB NOT NULL,
    fetched_pos BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL
);
