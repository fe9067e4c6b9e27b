"""Deleting a room's stored data (room deletion with purge) or the old
part of its history (purge history), in bounded batches so that each
transaction stays short; every batch is idempotent, so a job cut short by
a crash is resumed by running it again."""

from __future__ import annotations

import asyncpg

from .database import Database

BATCH = 500


class RoomPurgeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def count_events(self, room_id: str) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM events WHERE room_id = $1", room_id))

    async def delete_event_batch(self, room_id: str) -> int:
        """Delete up to BATCH events of the room with their edges and
        transaction ids; returns how many (0: none left)."""

        async def txn(conn: asyncpg.Connection) -> int:
            ids = [r["event_id"] for r in await conn.fetch(
                "SELECT event_id FROM events WHERE room_id = $1 LIMIT $2", room_id, BATCH)]
            if ids:
                await _delete_events(conn, ids)
                await conn.execute("DELETE FROM room_memberships WHERE event_id = ANY($1::TEXT[])", ids)
            return len(ids)

        return await self.db.transaction(txn, name="purge_room_events")

    async def delete_room_rest(self, room_id: str) -> None:
        """Everything else of the room, once its events are gone: every
        table with a room_id column but blocked_rooms (the block outlives
        the purge) and admin_jobs (the deletion's own status)."""

        async def txn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """DELETE FROM state_group_entries WHERE state_group IN
                   (SELECT id FROM state_groups WHERE room_id = $1)""", room_id)
            for table in ("state_groups", "current_state", "room_memberships", "room_aliases", "forgotten_rooms",
                          "receipts", "typing", "room_summaries", "partial_state_rooms", "room_state_resets",
                          "remote_invite_state", "federation_relay", "hierarchy_pages", "e2e_room_keys", "rooms"):
                await conn.execute(f"DELETE FROM {table} WHERE room_id = $1", room_id)
            await conn.execute("DELETE FROM account_data WHERE room_id = $1 AND room_id <> ''", room_id)

        await self.db.transaction(txn, name="purge_room_rest")

    async def stream_pos_of_event(self, room_id: str, event_id: str) -> int | None:
        value = await self.db.fetchval(
            "SELECT stream_pos FROM events WHERE room_id = $1 AND event_id = $2", room_id, event_id)
        return int(value) if value is not None else None

    async def stream_pos_before_ts(self, room_id: str, ts: int) -> int | None:
        """The first position at or after ``ts`` (events before it are older)."""
        value = await self.db.fetchval(
            "SELECT min(stream_pos) FROM events WHERE room_id = $1 AND origin_server_ts >= $2", room_id, ts)
        return int(value) if value is not None else None

    async def delete_history_batch(self, room_id: str, before_pos: int, local_suffix: str | None) -> int:
        """Delete up to BATCH non-state events of the room below
        ``before_pos`` (never a forward extremity); only remote senders'
        unless ``local_suffix`` is None (":server" of local users)."""

        async def txn(conn: asyncpg.Connection) -> int:
            ids = [r["event_id"] for r in await conn.fetch(
                """SELECT e.event_id FROM events e JOIN rooms r ON r.room_id = e.room_id
                   WHERE e.room_id = $1 AND e.stream_pos < $2 AND e.state_key IS NULL
                     AND NOT (e.event_id = ANY(r.forward_extremities))
                     AND ($3::TEXT IS NULL OR e.sender NOT LIKE $3)
                   LIMIT $4""",
                room_id, before_pos, None if local_suffix is None else "%" + _like_escape(local_suffix), BATCH)]
            if ids:
                await _delete_events(conn, ids)
            return len(ids)

        return await self.db.transaction(txn, name="purge_history")


def _like_escape(text: str) -> str:
    """``text`` matched literally by LIKE (backslash is the escape on both engines)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def _delete_events(conn: asyncpg.Connection, ids: list[str]) -> None:
    for table in ("event_edges", "event_auth_edges", "event_txn_ids", "events"):
        await conn.execute(f"DELETE FROM {table} WHERE event_id = ANY($1::TEXT[])", ids)
