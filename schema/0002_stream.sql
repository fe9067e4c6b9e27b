-- One stream position space shared by every stream a client syncs (room
-- events, receipts, typing, account data, presence ...), so a sync token is
-- one number. Positions come from a sequence; gaps are normal.
--
-- Several writers (instances, connections) commit out of order. A writer
-- first commits a reservation row whose `floor` is a position allocated
-- before its own; its write transaction then takes its real position and
-- deletes the reservation. Readers only advance to
--   min(max committed position, min(floor) of open reservations)
-- below which every write has committed (see storage/stream.py).

CREATE SEQUENCE IF NOT EXISTS stream_seq;

CREATE TABLE IF NOT EXISTS stream_inflight (
    token TEXT PRIMARY KEY,
    floor BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL
);
