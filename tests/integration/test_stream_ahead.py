"""Reservations made ahead (storage/stream.py ``reserve_ahead``, issue #7):
a lone message's reservation is committed while the message is built; its
write uses that reservation and no other, one given up (the message
refused, the request cancelled) holds nobody back, and made ahead they
never hold the connections that the writes inside the write gate need."""

from __future__ import annotations

import asyncio
import secrets
from typing import AsyncIterator

import asyncpg
import pytest

from coffeechat_home.storage.database import Database
from coffeechat_home.storage.group_commit import GroupCommit
from coffeechat_home.storage.stream import Ahead, StreamStore
from coffeechat_home.storage.stream_statements import SingleStatement

from .stream_helpers import WRITES_DEADLINE_S, insert_at, one_statement, stream_database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with stream_database(database_url) as database:
        yield database


async def _settled(store: StreamStore, db: Database) -> None:
    """Until the store's background discards are done (bounded)."""
    for _ in range(500):
        if not store._discards:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a reservation made ahead was never discarded")


async def test_a_reservation_made_ahead_is_the_one_its_write_deletes(db: Database) -> None:
    """``reserve_ahead`` commits the reservation while the write is still
    being built; the write then runs its one statement on that
    reservation (no second one), and once taken the reservation cannot be
    dropped any more."""
    store = StreamStore(db, instance_id="w")
    ahead = await store.reserve_ahead()
    assert ahead is not None
    await ahead.task  # committed: readers are held below it before the write exists
    assert await db.fetchval("SELECT token FROM stream_inflight") == ahead.token
    assert await store.current_position() < await db.fetchval("SELECT last_value FROM stream_seq")
    seen: list[object] = []

    async def fn(conn: SingleStatement, positions: list[int]) -> str:
        seen.append(await db.fetchval("SELECT array_agg(token) FROM stream_inflight"))
        positions.append(await one_statement(conn, "$ahead"))
        return "done"

    result, positions = await store.write_many(
        fn, 1, allocate=False, single=True, ahead=ahead  # type: ignore[arg-type]
    )
    assert result == "done" and seen == [[ahead.token]]  # its reservation, and no other
    ahead.drop()  # taken by the write: nothing to give up
    assert (store.aheads, store.aheads_dropped) == (1, 0)
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await store.current_position() == positions[0]
    with pytest.raises(RuntimeError):  # one write per reservation
        await store.write_many(fn, 1, allocate=False, single=True, ahead=ahead)  # type: ignore[arg-type]


async def test_a_reservation_made_ahead_and_given_up_holds_no_one_back(db: Database) -> None:
    """Dropped unused (the write was refused, or its request cancelled), in
    flight or already committed, a reservation made ahead is deleted and
    its connection goes back to the pool; one reclaimed before its write
    ran (its instance looked dead) makes the write start over on a new
    one, stored once."""
    store = StreamStore(db, instance_id="w")
    freed: list[int] = []
    for wait in (False, True):
        ahead = await store.reserve_ahead(slot=lambda: freed.append(1))
        assert ahead is not None
        if wait:
            await ahead.task
        ahead.drop()
        ahead.drop()  # once only
        await _settled(store, db)
    assert (store.aheads, store.aheads_dropped, len(freed)) == (2, 2, 2)
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert db.pool.get_idle_size() == db.pool.get_size()  # every connection back
    _, pos = await store.write(lambda conn, pos: insert_at(conn, pos))
    assert await store.current_position() == pos  # nothing left below it

    ahead = await store.reserve_ahead()
    assert ahead is not None
    await ahead.task
    await db.execute("DELETE FROM stream_inflight WHERE token = $1", ahead.token)  # reclaimed
    tries: list[int] = []

    async def fn(conn: SingleStatement, positions: list[int]) -> None:
        tries.append(1)
        positions.append(await one_statement(conn, f"$retry{len(tries)}"))

    _, positions = await store.write_many(fn, 1, allocate=False, single=True, ahead=ahead)  # type: ignore[arg-type]
    assert len(tries) == 2
    rows = await db.fetch("SELECT event_id FROM room_memberships WHERE event_id LIKE '$retry%'")
    assert [r["event_id"] for r in rows] == ["$retry2"]
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await store.current_position() == positions[0]


async def test_reservations_made_ahead_never_hold_the_connections_the_gated_writes_need(db: Database) -> None:
    """A reservation made ahead holds a pool connection until its write.
    Were such writes to wait at the write gate (``max_concurrent_writes``)
    with their connections while the writes inside the gate wait for a
    connection, every stream write would hang and the reservations would
    hold every reader back for good (found by a review: messages to as many
    rooms as the pool has connections, with group commit off, and other
    writes at once). Reservations ahead take their permit of the gate when
    they are made, or are not made."""
    store = StreamStore(db, instance_id="w", max_concurrent_writes=8)
    group = GroupCommit(store, enabled=False)  # (on, at most its transactions reserve ahead)
    size = db.pool.get_max_size()
    aheads: list[Ahead] = []
    for _ in range(size):  # messages to as many rooms, each under its room's lock
        made = await group.ahead()
        if made is None:
            break
        aheads.append(made)
    assert 0 < len(aheads) < size
    await asyncio.gather(*(a.task for a in aheads))
    others = [asyncio.ensure_future(store.write(lambda conn, pos: insert_at(conn, pos))) for _ in range(8)]
    for _ in range(20):
        await asyncio.sleep(0)  # the other writes reach the gate

    async def fn(conn: SingleStatement, positions: list[int]) -> None:
        positions.append(await one_statement(conn, f"$msg{len(positions)}{secrets.token_hex(4)}"))

    messages = [
        asyncio.ensure_future(group.write(fn, 1, single=True, ahead=a)) for a in aheads  # type: ignore[arg-type]
    ]
    done, pending = await asyncio.wait(others + messages, timeout=WRITES_DEADLINE_S)
    if pending:  # unwind before failing
        for a in aheads:
            if a.task.done() and not a.task.exception():
                await a.task.result().release()
        await asyncio.wait(pending, timeout=WRITES_DEADLINE_S)
    assert not pending, f"{len(pending)} writes stuck"
    assert all(t.exception() is None for t in done)
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await db.fetchval("SELECT count(*) FROM room_memberships") == len(aheads) + 8


async def test_a_reservation_made_ahead_and_given_up_hands_its_transaction_to_the_queue(db: Database) -> None:
    """With group commit on, a reservation made ahead holds one of its
    transactions: writes that come meanwhile queue, and go (as a batch) as
    soon as it is given up; a write that took one goes alone and then
    frees its transaction the same way."""
    store = StreamStore(db, instance_id="w")
    group = GroupCommit(store, transactions=1)
    ahead = await group.ahead()
    assert ahead is not None and await group.ahead() is None  # its one transaction is taken

    async def one(conn: SingleStatement, positions: list[int]) -> None:
        positions.append(await one_statement(conn, f"$queued{secrets.token_hex(4)}"))

    async def plain(conn: asyncpg.Connection, positions: list[int]) -> None:
        pos = int(await conn.fetchval("SELECT nextval('stream_seq')"))
        await insert_at(conn, pos)
        positions.append(pos)

    queued = [asyncio.ensure_future(group.write(plain, 1)) for _ in range(2)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(group._queue) == 2
    assert not any(t.done() for t in queued)
    ahead.drop()
    done, pending = await asyncio.wait(queued, timeout=WRITES_DEADLINE_S)
    assert not pending
    assert [t.exception() for t in done] == [None, None]
    assert (group.batches, group._in_flight) == (1, 0)
    await _settled(store, db)
    ahead = await group.ahead()
    assert ahead is not None
    queued = [asyncio.ensure_future(group.write(plain, 1))]
    await group.write(one, 1, single=True, ahead=ahead)  # type: ignore[arg-type]
    done, pending = await asyncio.wait(queued, timeout=WRITES_DEADLINE_S)
    assert not pending
    assert group._in_flight == 0
    assert await db.fetchval("SELECT count(*) FROM room_memberships") == 4
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
