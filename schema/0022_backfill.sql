-- Backfilled history (services/federation/backfill.py): events older than
-- what a server already had of a room get stream positions below zero, so
-- they sort in the room's history (/messages orders by depth, then stream
-- position) but never show in /sync as new, nor go out to other servers.
-- Each backfilled batch takes values from this sequence and uses their
-- negation, the oldest event the most negative, so that a later (older)
-- batch sorts below an earlier one.
CREATE SEQUENCE IF NOT EXISTS backfill_stream_seq;
