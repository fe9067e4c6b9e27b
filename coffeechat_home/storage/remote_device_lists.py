"""Device lists of users on other servers: the update ids seen (ordering
of ``m.device_list_update`` EDUs by ``prev_id``), the device-list change
that tells our users to refresh a remote user's keys, and the cache of
their keys (the last /user/keys/query answer), dropped in the same
transaction as any change is recorded."""

from __future__ import annotations

from typing import Any, Iterable

import asyncpg
import orjson

from .database import Database
from .e2e_keys import add_device_list_change
from .stream import StreamStore

KEEP_IDS = 50  # newest update ids kept per remote user
_SERVER_OF_MEMBER = "substr(m.user_id, strpos(m.user_id, ':') + 1)"  # functions on schema/FUNCTIONS.md


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
            await _drop_cached(conn, user_id)

        _, pos = await self.stream.write(write, name="remote_device_list")
        return pos

    async def mark_changed(self, user_id: str) -> int:
        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await add_device_list_change(conn, user_id, pos)
            await _drop_cached(conn, user_id)

        _, pos = await self.stream.write(write, name="remote_device_list")
        return pos

    # -- the key cache -------------------------------------------------------
    async def tracked(self, user_ids: Iterable[str], server_name: str) -> set[str]:
        """The users (of other servers) joined to a room where a user of
        ``server_name`` is joined: their device-list updates reach us."""
        rows = await self.db.fetch(
            """SELECT DISTINCT r.state_key FROM current_state r JOIN current_state l
                   ON l.room_id = r.room_id AND l.type = 'm.room.member' AND l.membership = 'join'
               WHERE r.type = 'm.room.member' AND r.membership = 'join' AND r.state_key = ANY($1::TEXT[])
                 AND substr(l.state_key, strpos(l.state_key, ':') + 1) = $2""",
            list(user_ids), server_name,
        )
        return {r[0] for r in rows}

    async def cached(self, user_ids: Iterable[str], server_name: str) -> dict[str, dict[str, Any]]:
        """Cached keys still current: no membership of the user, or of a
        user of ``server_name``, changed since the fetch in a room the user
        is in (we may have stopped sharing a room with them meanwhile, and
        then their server told us nothing)."""
        rows = await self.db.fetch(
            f"""SELECT c.user_id, c.keys::TEXT FROM e2e_remote_device_cache c
                WHERE c.user_id = ANY($1::TEXT[]) AND NOT EXISTS (
                    SELECT 1 FROM room_memberships m
                    WHERE m.stream_pos > c.fetched_pos
                      AND m.room_id IN (SELECT s.room_id FROM current_state s
                                        WHERE s.type = 'm.room.member' AND s.state_key = c.user_id
                                          AND s.membership = 'join')
                      AND (m.user_id = c.user_id OR {_SERVER_OF_MEMBER} = $2))""",
            list(user_ids), server_name,
        )
        return {r[0]: orjson.loads(r[1]) for r in rows}

    async def put_cached(self, keys: dict[str, dict[str, Any]], before: int, now_ms: int) -> None:
        """Cache users' keys fetched after stream position ``before``,
        except for users with a change recorded since (the answer may
        predate it)."""
        if not keys:
            return
        users = sorted(keys)

        async def txn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """INSERT INTO e2e_remote_device_cache (user_id, keys, fetched_pos, fetched_ts)
                   SELECT k.user_id, k.keys::JSONB, $3, $4 FROM unnest($1::TEXT[], $2::TEXT[]) AS k(user_id, keys)
                   WHERE NOT EXISTS (SELECT 1 FROM device_list_changes c
                                     WHERE c.user_id = k.user_id AND c.stream_pos > $3)
                   ON CONFLICT (user_id) DO UPDATE SET keys = excluded.keys, fetched_pos = excluded.fetched_pos,
                                                       fetched_ts = excluded.fetched_ts""",
                users, [orjson.dumps(keys[u]).decode() for u in users], before, now_ms,
            )

        await self.db.transaction(txn, name="remote_device_cache")

    async def drop_cached(self, user_ids: Iterable[str]) -> None:
        await self.db.execute("DELETE FROM e2e_remote_device_cache WHERE user_id = ANY($1::TEXT[])",
                              list(user_ids))


async def _drop_cached(conn: asyncpg.Connection, user_id: str) -> None:
    await conn.execute("DELETE FROM e2e_remote_device_cache WHERE user_id = $1", user_id)
