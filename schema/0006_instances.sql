-- Liveness of running instances (DESIGN.md section 4). Each process that
-- serves this homeserver holds one row, renewed every second with an
-- expiry a few seconds ahead on the database's clock. Whatever an instance
-- holds to coordinate (stream reservations, named leases) names its
-- instance_id, so a survivor reclaims it once the row has expired, and the
-- same instance name starting again reclaims it at once.
CREATE TABLE IF NOT EXISTS instance_leases (
    instance_id TEXT PRIMARY KEY,
    instance_name TEXT NOT NULL,
    started_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS instance_leases_by_name ON instance_leases (instance_name);

-- The instance whose write a reservation belongs to.
ALTER TABLE stream_inflight ADD COLUMN IF NOT EXISTS instance_id TEXT;

-- Named, expiring ownership of a piece of work by one live instance (a
-- federation destination's outbound queue, ...). A lease whose holder's
-- instance row expired may be taken over at once.
CREATE TABLE IF NOT EXISTS work_leases (
    name TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
