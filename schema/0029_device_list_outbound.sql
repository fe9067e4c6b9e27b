-- Device-list and signing-key changes of our users still to announce to
-- other servers (services/e2e/federation.py). Written in the transaction of
-- the change (storage/e2e_keys.py, when federating), so a crash right after
-- the commit loses nothing; turned into m.device_list_update /
-- m.signing_key_update EDUs of the outbox by the post-commit step, or by the
-- federation sender's periodic sweep, in the transaction that deletes the
-- row (whoever deletes it queues the EDUs, once). `kind`: "changed",
-- "deleted" or "cross_signing"; `device_ids` the devices concerned.
CREATE TABLE IF NOT EXISTS device_list_outbound (
    user_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    kind TEXT NOT NULL,
    device_ids TEXT[] NOT NULL,
    PRIMARY KEY (user_id, stream_pos, kind)
);
