-- Media repository (issue 10). File bodies live on disk under the media
-- folder, named by their SHA-256; these tables hold what every instance
-- needs to serve them. One row per mxc:// URI: local uploads (server_name
-- is this server's name) and, once federation exists, cached remote media.
-- A row with sha256 NULL is a created URI still waiting for its upload
-- (POST /_matrix/media/v1/create), until unused_expires_ts.
CREATE TABLE IF NOT EXISTS media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    user_id TEXT,
    content_type TEXT NOT NULL DEFAULT 'application/octet-stream',
    upload_name TEXT,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    uploaded_ts BIGINT,
    unused_expires_ts BIGINT,
    quarantined_by TEXT,
    quarantined_ts BIGINT,
    PRIMARY KEY (server_name, media_id)
);

-- A user's media (admin listing, quota sums, pending uploads).
CREATE INDEX IF NOT EXISTS media_by_user ON media (user_id, created_ts);

-- Bodies shared by several rows are deleted when the last one goes.
CREATE INDEX IF NOT EXISTS media_by_sha256 ON media (sha256);

-- Thumbnails, generated once per size and method and stored like bodies.
CREATE TABLE IF NOT EXISTS media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INT NOT NULL,
    height INT NOT NULL,
    method TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method)
);

CREATE INDEX IF NOT EXISTS media_thumbnails_by_sha256 ON media_thumbnails (sha256);
