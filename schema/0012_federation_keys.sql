-- Federation signing keys (issue 9).

-- Other servers' verify keys, fetched from the server itself or from a
-- notary, shared by every instance. `valid_until_ts` is the validity the
-- response promised (for keys in `verify_keys`); keys from
-- `old_verify_keys` carry `expired_ts` instead (and valid_until_ts = it).
-- `response_json` is the server's signed key response as received, kept
-- so that we can answer notary queries for it.
CREATE TABLE IF NOT EXISTS remote_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    response_json TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- This server's own earlier keys (after `coffeechat-home rotate-signing-key`),
-- published as old_verify_keys with the time they stopped being used.
CREATE TABLE IF NOT EXISTS old_signing_keys (
    key_id TEXT PRIMARY KEY,
    verify_key TEXT NOT NULL,
    expired_ts BIGINT NOT NULL
);
