"""Server-side key backup: versions (algorithm and auth_data per user) and
the encrypted session keys stored in each.

Only the newest version that is not deleted accepts keys. A deleted
version keeps its row, so its number is never handed out again; its keys
are deleted with it. ``etag`` grows whenever a version's keys change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import asyncpg
import orjson

from .database import Database


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: dict[str, Any]
    etag: int
    count: int


@dataclass(frozen=True, slots=True)
class RoomKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]


class WrongVersion(Exception):
    """Keys were sent to a version that is not the current one."""

    def __init__(self, current: int | None) -> None:
        super().__init__(current)
        self.current = current


# Decides whether an incoming key replaces the stored one (stored, new).
Better = Callable[[RoomKey, RoomKey], bool]


class KeyBackupStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_version(self, user_id: str, algorithm: str, auth_data: dict[str, Any]) -> int:
        async def txn(conn: asyncpg.Connection) -> int:
            last = await conn.fetchval(
                "SELECT max(version) FROM e2e_room_keys_versions WHERE user_id = $1", user_id
            )
            version = int(last or 0) + 1
            await conn.execute(
                """INSERT INTO e2e_room_keys_versions (user_id, version, algorithm, auth_data)
                   VALUES ($1, $2, $3, $4)""",
                user_id, version, algorithm, orjson.dumps(auth_data).decode(),
            )
            return version

        return await self.db.transaction(txn, name="backup_create")

    async def current_version(self, user_id: str) -> int | None:
        value = await self.db.fetchval(
            "SELECT max(version) FROM e2e_room_keys_versions WHERE user_id = $1 AND NOT deleted", user_id
        )
        return int(value) if value is not None else None

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """A version (the current one when None), unless deleted."""
        row = await self.db.fetchrow(
            """SELECT v.version, v.algorithm, v.auth_data, v.etag,
                      (SELECT count(*) FROM e2e_room_keys k WHERE k.user_id = v.user_id AND k.version = v.version)
                      AS n
               FROM e2e_room_keys_versions v
               WHERE v.user_id = $1 AND NOT v.deleted AND ($2::BIGINT IS NULL OR v.version = $2)
               ORDER BY v.version DESC LIMIT 1""",
            user_id, version,
        )
        if row is None:
            return None
        return BackupVersion(row["version"], row["algorithm"], orjson.loads(row["auth_data"]), row["etag"], row["n"])

    async def update_version(self, user_id: str, version: int, auth_data: dict[str, Any]) -> bool:
        status = await self.db.execute(
            """UPDATE e2e_room_keys_versions SET auth_data = $3
               WHERE user_id = $1 AND version = $2 AND NOT deleted""",
            user_id, version, orjson.dumps(auth_data).decode(),
        )
        return status.endswith(" 1")

    async def delete_version(self, user_id: str, version: int) -> bool:
        async def txn(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                """UPDATE e2e_room_keys_versions SET deleted = true
                   WHERE user_id = $1 AND version = $2 AND NOT deleted""",
                user_id, version,
            )
            await conn.execute("DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2", user_id, version)
            return bool(status.endswith(" 1"))

        return await self.db.transaction(txn, name="backup_delete")

    async def put_keys(self, user_id: str, version: int, keys: list[RoomKey], better: Better) -> tuple[int, int]:
        """Store keys in the current version, keeping a stored key when
        ``better(stored, new)`` says the new one is not better.
        Returns (etag, count). Raises WrongVersion."""

        async def txn(conn: asyncpg.Connection) -> tuple[int, int]:
            current = await conn.fetchval(
                "SELECT max(version) FROM e2e_room_keys_versions WHERE user_id = $1 AND NOT deleted", user_id
            )
            if current is None or int(current) != version:
                raise WrongVersion(int(current) if current is not None else None)
            changed = 0
            for key in keys:
                changed += await _put_key(conn, user_id, version, key, better)
            etag = await conn.fetchval(
                """UPDATE e2e_room_keys_versions SET etag = etag + $3
                   WHERE user_id = $1 AND version = $2 RETURNING etag""",
                user_id, version, 1 if changed else 0,
            )
            count = await conn.fetchval(
                "SELECT count(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2", user_id, version
            )
            return int(etag), int(count)

        return await self.db.transaction(txn, name="backup_put_keys")

    async def get_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> list[RoomKey]:
        rows = await self.db.fetch(
            """SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
               FROM e2e_room_keys WHERE user_id = $1 AND version = $2
               AND ($3::TEXT IS NULL OR room_id = $3) AND ($4::TEXT IS NULL OR session_id = $4)
               ORDER BY room_id, session_id""",
            user_id, version, room_id, session_id,
        )
        return [_room_key(r) for r in rows]

    async def delete_keys(
        self, user_id: str, version: int, room_id: str | None = None, session_id: str | None = None
    ) -> tuple[int, int]:
        """Delete keys of a version (any version that exists, as Synapse
        does); returns (etag, count)."""

        async def txn(conn: asyncpg.Connection) -> tuple[int, int]:
            status = await conn.execute(
                """DELETE FROM e2e_room_keys WHERE user_id = $1 AND version = $2
                   AND ($3::TEXT IS NULL OR room_id = $3) AND ($4::TEXT IS NULL OR session_id = $4)""",
                user_id, version, room_id, session_id,
            )
            deleted = int(status.split()[-1])
            etag = await conn.fetchval(
                """UPDATE e2e_room_keys_versions SET etag = etag + $3
                   WHERE user_id = $1 AND version = $2 RETURNING etag""",
                user_id, version, 1 if deleted else 0,
            )
            count = await conn.fetchval(
                "SELECT count(*) FROM e2e_room_keys WHERE user_id = $1 AND version = $2", user_id, version
            )
            return int(etag or 0), int(count)

        return await self.db.transaction(txn, name="backup_delete_keys")


def _room_key(r: asyncpg.Record) -> RoomKey:
    return RoomKey(
        r["room_id"], r["session_id"], r["first_message_index"], r["forwarded_count"], r["is_verified"],
        orjson.loads(r["session_data"]),
    )


async def _put_key(conn: asyncpg.Connection, user_id: str, version: int, key: RoomKey, better: Better) -> int:
    row = await conn.fetchrow(
        """SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
           FROM e2e_room_keys WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4""",
        user_id, version, key.room_id, key.session_id,
    )
    if row is not None and not better(_room_key(row), key):
        return 0
    await conn.execute(
        """INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index,
                                      forwarded_count, is_verified, session_data)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
               first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
               is_verified = excluded.is_verified, session_data = excluded.session_data""",
        user_id, version, key.room_id, key.session_id, key.first_message_index, key.forwarded_count,
        key.is_verified, orjson.dumps(key.session_data).decode(),
    )
    return 1
