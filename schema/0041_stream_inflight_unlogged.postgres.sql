-- No WAL for reservation rows: a reservation's own transaction then commits
-- without waiting for a WAL flush, and its insert and delete cost less.
-- After a crash PostgreSQL empties the table, as the reservations of writes
-- that died with it should be. Idempotent.
ALTER TABLE stream_inflight SET UNLOGGED;
