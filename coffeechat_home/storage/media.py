"""Media metadata: one row per mxc:// URI and one per generated thumbnail.

File bodies are not here: they live on disk by SHA-256 (services/media).
A row whose ``sha256`` is NULL is a URI created by ``/media/v1/create``
and not uploaded yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .database import Database


@dataclass(frozen=True, slots=True)
class MediaRecord:
    server_name: str
    media_id: str
    user_id: str | None
    content_type: str
    upload_name: str | None
    size_bytes: int
    sha256: str | None  # None: created, not uploaded yet
    created_ts: int
    unused_expires_ts: int | None
    quarantined: bool

    @property
    def uploaded(self) -> bool:
        return self.sha256 is not None


@dataclass(frozen=True, slots=True)
class ThumbnailRecord:
    width: int
    height: int
    method: str
    content_type: str
    size_bytes: int
    sha256: str


class QuotaExceeded(Exception):
    pass


class TooManyPending(Exception):
    pass


class UploadConflict(Exception):
    """PUT to a created URI: ``reason`` is 'missing', 'expired', 'owner' or 'uploaded'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_COLUMNS = """server_name, media_id, user_id, content_type, upload_name, size_bytes, sha256,
              created_ts, unused_expires_ts, quarantined_by IS NOT NULL AS quarantined"""


def _record(r: asyncpg.Record) -> MediaRecord:
    return MediaRecord(
        r["server_name"], r["media_id"], r["user_id"], r["content_type"], r["upload_name"],
        r["size_bytes"], r["sha256"], r["created_ts"], r["unused_expires_ts"], r["quarantined"],
    )


async def _check_quota(conn: asyncpg.Connection, user_id: str, size: int, quota: int) -> None:
    if quota <= 0:
        return
    used = await conn.fetchval(
        "SELECT COALESCE(SUM(size_bytes), 0) FROM media WHERE user_id = $1 AND sha256 IS NOT NULL", user_id
    )
    if int(used) + size > quota:
        raise QuotaExceeded()


class MediaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, server_name: str, media_id: str) -> MediaRecord | None:
        r = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM media WHERE server_name = $1 AND media_id = $2", server_name, media_id
        )
        return _record(r) if r is not None else None

    async def used_bytes(self, user_id: str) -> int:
        used = await self.db.fetchval(
            "SELECT COALESCE(SUM(size_bytes), 0) FROM media WHERE user_id = $1 AND sha256 IS NOT NULL", user_id
        )
        return int(used)

    async def insert_upload(
        self, server_name: str, media_id: str, user_id: str, content_type: str, upload_name: str | None,
        size: int, sha256: str, now_ms: int, quota: int,
    ) -> None:
        """Record a finished upload, within the user's quota (QuotaExceeded)."""

        async def txn(conn: asyncpg.Connection) -> None:
            await _check_quota(conn, user_id, size, quota)
            await conn.execute(
                """INSERT INTO media (server_name, media_id, user_id, content_type, upload_name,
                                      size_bytes, sha256, created_ts, uploaded_ts)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)""",
                server_name, media_id, user_id, content_type, upload_name, size, sha256, now_ms,
            )

        await self.db.transaction(txn, name="media_upload")

    async def insert_remote(
        self, server_name: str, media_id: str, content_type: str, upload_name: str | None,
        size: int, sha256: str, now_ms: int,
    ) -> MediaRecord:
        """Record a fetched copy of another server's media; when another
        instance recorded it first, that row wins and is returned."""
        await self.db.execute(
            """INSERT INTO media (server_name, media_id, user_id, content_type, upload_name,
                                  size_bytes, sha256, created_ts, uploaded_ts)
               VALUES ($1, $2, NULL, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING""",
            server_name, media_id, content_type, upload_name, size, sha256, now_ms,
        )
        stored = await self.get(server_name, media_id)
        if stored is None:  # purged at once (a purge "before" a future time)
            return MediaRecord(server_name, media_id, None, content_type, upload_name, size, sha256, now_ms,
                               None, False)
        return stored

    async def create_pending(
        self, server_name: str, media_id: str, user_id: str, now_ms: int, expires_ts: int, max_pending: int
    ) -> None:
        """Reserve a URI for a later upload (TooManyPending past the limit)."""

        async def txn(conn: asyncpg.Connection) -> None:
            pending = await conn.fetchval(
                """SELECT count(*) FROM media WHERE user_id = $1 AND sha256 IS NULL
                   AND unused_expires_ts > $2""",
                user_id, now_ms,
            )
            if pending >= max_pending:
                raise TooManyPending()
            await conn.execute(
                """INSERT INTO media (server_name, media_id, user_id, created_ts, unused_expires_ts)
                   VALUES ($1, $2, $3, $4, $5)""",
                server_name, media_id, user_id, now_ms, expires_ts,
            )

        await self.db.transaction(txn, name="media_create")

    async def complete_pending(
        self, server_name: str, media_id: str, user_id: str, content_type: str, upload_name: str | None,
        size: int, sha256: str, now_ms: int, quota: int,
    ) -> None:
        """Fill a created URI (UploadConflict, QuotaExceeded)."""

        async def txn(conn: asyncpg.Connection) -> None:
            r = await conn.fetchrow(
                "SELECT user_id, sha256, unused_expires_ts FROM media WHERE server_name = $1 AND media_id = $2",
                server_name, media_id,
            )
            if r is None:
                raise UploadConflict("missing")
            if r["user_id"] != user_id:
                raise UploadConflict("owner")
            if r["sha256"] is not None:
                raise UploadConflict("uploaded")
            if r["unused_expires_ts"] is not None and r["unused_expires_ts"] <= now_ms:
                raise UploadConflict("expired")
            await _check_quota(conn, user_id, size, quota)
            await conn.execute(
                """UPDATE media SET content_type = $3, upload_name = $4, size_bytes = $5, sha256 = $6,
                          uploaded_ts = $7, unused_expires_ts = NULL
                   WHERE server_name = $1 AND media_id = $2""",
                server_name, media_id, content_type, upload_name, size, sha256, now_ms,
            )

        await self.db.transaction(txn, name="media_complete")

    async def pending_owner(self, server_name: str, media_id: str, now_ms: int) -> str | None:
        """The user who may upload to a created, unexpired, empty URI."""
        owner: str | None = await self.db.fetchval(
            """SELECT user_id FROM media WHERE server_name = $1 AND media_id = $2
               AND sha256 IS NULL AND unused_expires_ts > $3""",
            server_name, media_id, now_ms,
        )
        return owner

    async def get_thumbnail(
        self, server_name: str, media_id: str, width: int, height: int, method: str
    ) -> ThumbnailRecord | None:
        r = await self.db.fetchrow(
            """SELECT width, height, method, content_type, size_bytes, sha256 FROM media_thumbnails
               WHERE server_name = $1 AND media_id = $2 AND width = $3 AND height = $4 AND method = $5""",
            server_name, media_id, width, height, method,
        )
        return ThumbnailRecord(*r) if r is not None else None

    async def insert_thumbnail(
        self, server_name: str, media_id: str, thumb: ThumbnailRecord, now_ms: int
    ) -> ThumbnailRecord:
        """Record a thumbnail; if another instance stored one first, that one wins and is returned."""
        await self.db.execute(
            """INSERT INTO media_thumbnails (server_name, media_id, width, height, method, content_type,
                                             size_bytes, sha256, created_ts)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
            server_name, media_id, thumb.width, thumb.height, thumb.method, thumb.content_type,
            thumb.size_bytes, thumb.sha256, now_ms,
        )
        stored = await self.get_thumbnail(server_name, media_id, thumb.width, thumb.height, thumb.method)
        return stored if stored is not None else thumb

    async def hash_in_use(self, sha256: str) -> bool:
        """Whether any media row or thumbnail still names this body."""
        return bool(
            await self.db.fetchval(
                """SELECT EXISTS (SELECT 1 FROM media WHERE sha256 = $1)
                       OR EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = $1)""",
                sha256,
            )
        )

    # -- admin ------------------------------------------------------------

    async def list_by_user(self, user_id: str) -> list[MediaRecord]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM media WHERE user_id = $1 ORDER BY created_ts, media_id", user_id
        )
        return [_record(r) for r in rows]

    async def set_quarantined(self, server_name: str, media_id: str, by: str | None, now_ms: int) -> bool:
        """Quarantine (by = admin) or release (by = None); False if no such media."""
        status = await self.db.execute(
            """UPDATE media SET quarantined_by = $3, quarantined_ts = CASE WHEN $3::TEXT IS NULL THEN NULL ELSE $4::BIGINT END
               WHERE server_name = $1 AND media_id = $2""",
            server_name, media_id, by, now_ms,
        )
        return status != "UPDATE 0"

    async def delete(self, server_name: str, media_id: str) -> list[str] | None:
        """Delete a media row and its thumbnails; returns the body hashes
        they named (to delete from disk if unused), or None if no such media."""

        async def txn(conn: asyncpg.Connection) -> list[str] | None:
            main = await conn.fetchrow(
                "DELETE FROM media WHERE server_name = $1 AND media_id = $2 RETURNING sha256",
                server_name, media_id,
            )
            if main is None:
                return None
            thumbs = await conn.fetch(
                "DELETE FROM media_thumbnails WHERE server_name = $1 AND media_id = $2 RETURNING sha256",
                server_name, media_id,
            )
            hashes = [r["sha256"] for r in thumbs]
            if main["sha256"] is not None:
                hashes.append(main["sha256"])
            return hashes

        return await self.db.transaction(txn, name="media_delete")

    async def remote_before(self, local_server: str, before_ts: int) -> list[tuple[str, str]]:
        """(server_name, media_id) of cached remote media created before a time."""
        rows = await self.db.fetch(
            "SELECT server_name, media_id FROM media WHERE server_name <> $1 AND created_ts < $2",
            local_server, before_ts,
        )
        return [(r["server_name"], r["media_id"]) for r in rows]

    async def delete_expired_pending(self, now_ms: int) -> int:
        status = await self.db.execute(
            "DELETE FROM media WHERE sha256 IS NULL AND unused_expires_ts <= $1", now_ms
        )
        return int(status.split()[-1])
