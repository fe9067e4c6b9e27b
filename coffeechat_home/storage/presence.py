"""Presence: one row per user who ever set a presence state.

Changes of state or status message take a stream position (keyed by the
user whose presence changed); activity bumps without a change only touch
``last_active_ts``, so a syncing client does not write a position per sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .database import Database
from .stream import StreamStore, StreamTable, register_stream_table

register_stream_table(StreamTable("presence", "user_id"))


@dataclass(frozen=True, slots=True)
class PresenceState:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int


def _row(r: asyncpg.Record) -> PresenceState:
    return PresenceState(r["user_id"], r["state"], r["status_msg"], r["last_active_ts"])


class PresenceStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def get(self, user_id: str) -> PresenceState | None:
        r = await self.db.fetchrow(
            "SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = $1", user_id
        )
        return _row(r) if r else None

    async def set(self, user_id: str, state: str, status_msg: str | None, now_ms: int) -> int:
        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await conn.execute(
                """INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_pos)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
                       last_active_ts = excluded.last_active_ts, stream_pos = excluded.stream_pos""",
                user_id, state, status_msg, now_ms, pos,
            )

        _, pos = await self.stream.write(write, name="set_presence")
        return pos

    async def touch(self, user_id: str, now_ms: int) -> None:
        await self.db.execute("UPDATE presence SET last_active_ts = $2 WHERE user_id = $1", user_id, now_ms)

    async def changes_seen_by(self, user_id: str, since: int | None, upto: int) -> list[PresenceState]:
        """Presence of the user and of everyone sharing a room with them,
        changed in (since, upto] (all such states when ``since`` is None)."""
        rows = await self.db.fetch(
            """SELECT p.user_id, p.state, p.status_msg, p.last_active_ts FROM presence p
               WHERE p.stream_pos > $2 AND p.stream_pos <= $3 AND (p.user_id = $1 OR p.user_id IN (
                   SELECT o.state_key FROM current_state me JOIN current_state o
                     ON o.room_id = me.room_id AND o.type = 'm.room.member' AND o.membership = 'join'
                   WHERE me.type = 'm.room.member' AND me.state_key = $1 AND me.membership = 'join'))
               ORDER BY p.stream_pos""",
            user_id, since if since is not None else -1, upto,
        )
        return [_row(r) for r in rows]
