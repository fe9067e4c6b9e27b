-- Pages of a client's /hierarchy walk (services/hierarchy.py): the
-- next_batch token names the walk's remaining queue and the rooms already
-- seen, so any instance serves the next page. Rows expire after a few
-- minutes (deleted when a new page is stored).
CREATE TABLE IF NOT EXISTS hierarchy_pages (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    suggested_only BOOLEAN NOT NULL,
    max_depth INT NOT NULL,
    walk TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS hierarchy_pages_by_age ON hierarchy_pages (created_ts);
