-- What this database was set up as (issue 11): the server name is in every
-- user id and room alias, and the signing key id in every signature, so a
-- start with another one is refused rather than locking everyone out.
CREATE TABLE IF NOT EXISTS server_identity (
    id INT PRIMARY KEY,
    server_name TEXT NOT NULL,
    signing_key_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
