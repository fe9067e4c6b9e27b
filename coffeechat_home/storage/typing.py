"""Typing notifications, shared by every instance through the database.

A row per (room, user) that ever typed there. Starting or stopping typing
changes the room's typing set and takes a stream position; extending the
timeout of a user who is already typing does not. Expired rows are turned
off at a new position by ``expire`` (run periodically by the service), so
syncing clients see the user stop typing.
"""

from __future__ import annotations

from typing import Iterable

import asyncpg

from .database import Database
from .stream import StreamStore, StreamTable, register_stream_table

register_stream_table(StreamTable("typing", "room_id"))

EXPIRE_BATCH = 500


class TypingStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def start(self, room_id: str, user_id: str, expires_ts: int, now_ms: int) -> int | None:
        """Mark the user typing until ``expires_ts``. Returns the stream
        position, or None when the user was already typing (timeout extended)."""
        extended = await self.db.fetchval(
            """UPDATE typing SET expires_ts = GREATEST(expires_ts, $3)
               WHERE room_id = $1 AND user_id = $2 AND typing AND expires_ts > $4 RETURNING 1""",
            room_id, user_id, expires_ts, now_ms,
        )
        if extended:
            return None

        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await conn.execute(
                """INSERT INTO typing (room_id, user_id, typing, expires_ts, stream_pos)
                   VALUES ($1, $2, true, $3, $4)
                   ON CONFLICT (room_id, user_id)
                   DO UPDATE SET typing = true, expires_ts = excluded.expires_ts, stream_pos = excluded.stream_pos""",
                room_id, user_id, expires_ts, pos,
            )

        _, pos = await self.stream.write(write, name="start_typing")
        return pos

    async def stop(self, room_id: str, user_id: str) -> int | None:
        """Mark the user not typing; None when they were not typing."""
        typing = await self.db.fetchval(
            "SELECT typing FROM typing WHERE room_id = $1 AND user_id = $2", room_id, user_id
        )
        if not typing:
            return None

        async def write(conn: asyncpg.Connection, pos: int) -> bool:
            done = await conn.fetchval(
                """UPDATE typing SET typing = false, stream_pos = $3
                   WHERE room_id = $1 AND user_id = $2 AND typing RETURNING 1""",
                room_id, user_id, pos,
            )
            return bool(done)

        changed, pos = await self.stream.write(write, name="stop_typing")
        return pos if changed else None

    async def expire(self, now_ms: int) -> list[tuple[str, str]]:
        """Turn off up to EXPIRE_BATCH expired typing rows at one new stream
        position; returns their (room id, user id). Cheap when nothing
        expired (one read)."""
        due = await self.db.fetchval(
            "SELECT 1 FROM typing WHERE typing AND expires_ts <= $1 LIMIT 1", now_ms
        )
        if not due:
            return []

        async def write(conn: asyncpg.Connection, pos: int) -> list[tuple[str, str]]:
            rows = await conn.fetch(
                """UPDATE typing SET typing = false, stream_pos = $2
                   WHERE (room_id, user_id) IN (
                       SELECT room_id, user_id FROM typing
                       WHERE typing AND expires_ts <= $1 LIMIT $3)
                   RETURNING room_id, user_id""",
                now_ms, pos, EXPIRE_BATCH,
            )
            return [(r["room_id"], r["user_id"]) for r in rows]

        expired, _ = await self.stream.write(write, name="expire_typing")
        return expired

    async def typing_users(
        self, room_ids: Iterable[str], since: int | None, upto: int, now_ms: int
    ) -> dict[str, list[str]]:
        """Rooms whose typing set changed in (since, upto], with who types
        there now; when ``since`` is None, the rooms where anyone types."""
        rooms = list(room_ids)
        if since is not None:
            changed = await self.db.fetch(
                """SELECT DISTINCT room_id FROM typing
                   WHERE room_id = ANY($1::TEXT[]) AND stream_pos > $2 AND stream_pos <= $3""",
                rooms, since, upto,
            )
            rooms = [r["room_id"] for r in changed]
            if not rooms:
                return {}
        rows = await self.db.fetch(
            """SELECT room_id, user_id FROM typing
               WHERE room_id = ANY($1::TEXT[]) AND typing AND expires_ts > $2""",
            rooms, now_ms,
        )
        out: dict[str, list[str]] = {room_id: [] for room_id in rooms} if since is not None else {}
        # sorted here, not by ORDER BY, so both engines give one order
        for r in sorted(rows, key=lambda r: (r["room_id"], r["user_id"])):
            out.setdefault(r["room_id"], []).append(r["user_id"])
        return out
