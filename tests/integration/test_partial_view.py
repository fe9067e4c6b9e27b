"""/sync's in-memory view of the rooms joined with a partial state
(services/federation/partial_view.py), against the real database, with the
writes made by another instance: a join recorded partial, its resync, a
correction of its state, a later partial join of a room left before, and writes that concern neither
(answered without a statement)."""

from __future__ import annotations

import asyncpg

from coffeechat_home.services.federation.partial_view import PartialRoomsView
from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.partial_state import PartialStateStore, record_partial_room
from coffeechat_home.storage.stream import StreamStore


async def _member(conn: asyncpg.Connection, room_id: str, membership: str, pos: int) -> None:
    await conn.execute(
        """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
           VALUES ($1, '@bob:test', $2, '@bob:test', $3, $4)""",
        f"$m{pos}", room_id, membership, pos,
    )


async def test_partial_rooms_view_follows_joins_and_resyncs_of_another_instance(db: Database) -> None:
    here = StreamStore(db, instance_id="here")
    other = StreamStore(db, instance_id="other")  # the instance that joins and resyncs
    notifier = Notifier(here)
    view = PartialRoomsView(PartialStateStore(db), notifier)

    async def join_partially(room_id: str) -> int:
        async def fn(conn: asyncpg.Connection, pos: int) -> None:
            await _member(conn, room_id, "join", pos)
            await record_partial_room(conn, room_id, f"$join{pos}", ["remote.test"], 0)
        return (await other.write(fn))[1]

    async def resync(room_id: str) -> int:
        async def fn(conn: asyncpg.Connection, pos: int) -> None:
            await conn.execute("UPDATE partial_state_rooms SET stream_pos = $2 WHERE room_id = $1", room_id, pos)
        return (await other.write(fn))[1]

    async def unrelated() -> int:  # a write of neither kind (typing in some room)
        async def fn(conn: asyncpg.Connection, pos: int) -> None:
            await conn.execute(
                """INSERT INTO typing (room_id, user_id, typing, expires_ts, stream_pos)
                   VALUES ('!busy:test', '@carol:test', TRUE, 0, $1)
                   ON CONFLICT (room_id, user_id) DO UPDATE SET stream_pos = excluded.stream_pos""", pos)
        return (await other.write(fn))[1]

    rooms = ["!a:test", "!b:test", "!busy:test"]
    start = await here.current_position()
    assert await view.sync_view(rooms, start) == {}
    assert view.reads == 1  # the first read: the whole table

    joined = await join_partially("!a:test")
    assert await view.sync_view(rooms, joined) == {"!a:test": (None, None)}
    assert view.reads == 2
    done = await resync("!a:test")
    assert await view.sync_view(rooms, done) == {"!a:test": (done, None)}
    assert view.reads == 3

    # woken syncs of everyday writes: the same answer, no statement
    for _ in range(3):
        pos = await unrelated()
        assert await view.sync_view(rooms, pos) == {"!a:test": (done, None)}
        assert await view.sync_view(rooms[1:], pos) == {}
    assert view.reads == 3
    # a sync at a position the view has passed: from memory too
    assert await view.sync_view(rooms, joined) == {"!a:test": (done, None)}
    assert view.reads == 3

    # a correction of its state after the resync (rewrite_state)
    async def correct(conn: asyncpg.Connection, pos: int) -> None:
        await conn.execute(
            """INSERT INTO room_state_resets (room_id, stream_pos) VALUES ('!a:test', $1)
               ON CONFLICT (room_id) DO UPDATE SET stream_pos = excluded.stream_pos""", pos)
    reset = (await other.write(correct))[1]
    assert await view.sync_view(rooms, reset) == {"!a:test": (done, reset)}
    assert view.reads == 4

    # the server left !a and a user joins it again: partial once more
    async def leave(conn: asyncpg.Connection, pos: int) -> None:
        await _member(conn, "!a:test", "leave", pos)
    await other.write(leave)
    again = await join_partially("!a:test")
    b_joined = await join_partially("!b:test")
    assert await view.sync_view(rooms, max(again, b_joined)) == {"!a:test": (None, reset), "!b:test": (None, None)}
    b_done = await resync("!b:test")
    assert await view.sync_view(rooms, b_done) == {"!a:test": (None, reset), "!b:test": (b_done, None)}
    # what the tables say, read fresh
    assert await view.sync_view(rooms, b_done) == await PartialStateStore(db).sync_view(rooms)
