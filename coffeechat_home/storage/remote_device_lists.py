"""Device-list update ids seen for users on other servers (ordering of
``m.device_list_update`` EDUs by ``prev_id``), and the device-list change
that tells our users to refresh a remote user's keys."""

from __future__ import annotations

from typing import Iterable

import asyncpg

from .database import Database
from .e2e_keys import add_device_list_change
from .stream import StreamStore

KEEP_IDS = 50  # newest update ids kept per remote user


class RemoteDeviceListStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def seen_ids(self, user_id: str) -> set[int]:
        rows = await self.db.fetch("SELECT stream_id FROM e2e_remote_device_list_ids WHERE user_id = $1", user_id)
        return {int(r["stream_id"]) for r in rows}

    async def record(self, user_id: str, stream_ids: Iterable[int], *, replace: bool = False) -> int:
        """Remember update ids (all earlier ones forgotten when ``replace``:
        after a resync) and record a device-list change for the user, in
        one stream write; returns its position."""
        ids = sorted(set(stream_ids))

        async def write(conn: asyncpg.Connection, pos: int) -> None:
            if replace:
                await conn.execute("DELETE FROM e2e_remote_device_list_ids WHERE user_id = $1", user_id)
            await conn.executemany(
                """INSERT INTO e2e_remote_device_list_ids (user_id, stream_id) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING""",
                [(user_id, i) for i in ids],
            )
            await conn.execute(
                """DELETE FROM e2e_remote_device_list_ids WHERE user_id = $1 AND stream_id < (
                       SELECT min(stream_id) FROM (
                           SELECT stream_id FROM e2e_remote_device_list_ids WHERE user_id = $1
                           ORDER BY stream_id DESC LIMIT $2) AS newest)""",
                user_id, KEEP_IDS,
            )
            await add_device_list_change(conn, user_id, pos)

        _, pos = await self.stream.write(write, name="remote_device_list")
        return pos

    async def mark_changed(self, user_id: str) -> int:
        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await add_device_list_change(conn, user_id, pos)

        _, pos = await self.stream.write(write, name="remote_device_list")
        return pos
