"""Account data: per-user JSON objects by type, global or per room.

One row per (user, room, type) holding the latest content and the stream
position of its last change; room_id is '' for global account data. Room
tags (``m.tag``), the read marker (``m.fully_read``) and the ``m.push_rules``
mirror are account data too, so /sync delivers them like any other type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import asyncpg
import orjson

from .database import Database
from .stream import StreamStore, StreamTable, register_stream_table

GLOBAL = ""  # the room_id of global account data

register_stream_table(StreamTable("account_data", "user_id"))


@dataclass(frozen=True, slots=True)
class AccountDataChange:
    room_id: str  # '' for global
    type: str
    content: dict[str, Any]
    stream_pos: int


async def upsert_account_data(
    conn: asyncpg.Connection, user_id: str, room_id: str, data_type: str, content: dict[str, Any], pos: int
) -> None:
    """Write one account data entry inside a caller's stream write."""
    await conn.execute(
        """INSERT INTO account_data (user_id, room_id, type, content, stream_pos)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (user_id, room_id, type)
           DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos""",
        user_id, room_id, data_type, orjson.dumps(content).decode(), pos,
    )


class AccountDataStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def get(self, user_id: str, room_id: str, data_type: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
            user_id, room_id, data_type,
        )
        return orjson.loads(raw) if raw is not None else None

    async def put(self, user_id: str, room_id: str, data_type: str, content: dict[str, Any]) -> int:
        """Set the content; returns the change's stream position."""

        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await upsert_account_data(conn, user_id, room_id, data_type, content, pos)

        _, pos = await self.stream.write(write, name="put_account_data")
        return pos

    async def update(
        self,
        user_id: str,
        room_id: str,
        data_type: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> int | None:
        """Read-modify-write in one transaction. ``change`` gets the current
        content (None if absent) and returns the new content, or None to
        leave it as it is. It must be pure: the transaction may be retried.
        Returns the stream position, or None when nothing changed."""

        async def write(conn: asyncpg.Connection, pos: int) -> bool:
            raw = await conn.fetchval(
                "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
                user_id, room_id, data_type,
            )
            new = change(orjson.loads(raw) if raw is not None else None)
            if new is None:
                return False
            await upsert_account_data(conn, user_id, room_id, data_type, new, pos)
            return True

        changed, pos = await self.stream.write(write, name="update_account_data")
        return pos if changed else None

    async def changes(self, user_id: str, since: int | None, upto: int) -> list[AccountDataChange]:
        """Entries changed in (since, upto]; every entry up to ``upto`` when
        ``since`` is None."""
        rows = await self.db.fetch(
            """SELECT room_id, type, content, stream_pos FROM account_data
               WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3
               ORDER BY stream_pos""",
            user_id, since if since is not None else -1, upto,
        )
        return [AccountDataChange(r["room_id"], r["type"], orjson.loads(r["content"]), r["stream_pos"]) for r in rows]
