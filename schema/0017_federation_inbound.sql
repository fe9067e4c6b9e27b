-- Inbound federation transactions (issue 9): the answer to each
-- `PUT /_matrix/federation/v1/send/{txnId}` we processed, per origin, so a
-- repeated transaction gets the same answer from any instance and its PDUs
-- and EDUs are not processed twice.
CREATE TABLE IF NOT EXISTS federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Invites to our users from other servers (PUT /_matrix/federation/v2/invite):
-- the stripped room state the inviting server sent along
-- (`invite_room_state`), shown in the invitee's /sync `invite` section; the
-- invite itself is an outlier in `events` with a `room_memberships` row.
CREATE TABLE IF NOT EXISTS remote_invite_state (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    state_json TEXT NOT NULL
);
