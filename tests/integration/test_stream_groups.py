"""Group writes and their guards (storage/stream.py ``write_group`` and
``Guard``, issue #7), against the real database.

A group whose only write is one statement (group_commit.py's shared insert
of several messages) runs as a lone message does: the reservation commits
in one round trip, then the statement takes the positions, deletes the
reservation, checks every write's guard and commits, with no transaction of
ours open in between. The guards of a group are one check over all their
keys, written as a parameter, so the statement's text does not depend on
whose writes are in the group. And group commit (storage/group_commit.py)
opens a second transaction only beside a lone write, never beside a batch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from coffeechat_home.storage.database import Database
from coffeechat_home.storage.group_commit import GroupCommit
from coffeechat_home.storage.stream import GuardFailed, StreamStore
from coffeechat_home.storage.stream_statements import Guard, SingleStatement, all_guards

from .stream_helpers import insert_row, one_statement

# a guard as the token guard is (storage/accounts.py), on rows a test writes
ROWS_LIVE = "SELECT 1 / (count(*) = cardinality({keys}))::INT FROM room_memberships WHERE event_id = ANY({keys})"


def _live(*event_ids: str) -> Guard:
    return Guard(ROWS_LIVE, "TEXT", event_ids)


async def _idle_in_transaction(db: Database) -> int:
    async with db.single.acquire() as other:
        return int(await other.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        ))


async def test_a_group_of_one_statement_is_that_statement_with_every_guard(db: Database) -> None:
    store = StreamStore(db, instance_id="w")
    await insert_row(db, "$alice", 1)
    await insert_row(db, "$bob", 2)
    seen: list[Any] = []

    async def tail(conn: asyncpg.Connection, positions: list[int]) -> list[tuple[Any, list[int]] | Exception]:
        assert isinstance(conn, SingleStatement)
        # the reservation is committed and no transaction of ours is open
        seen.append((await db.fetchval("SELECT count(*) FROM stream_inflight"), await _idle_in_transaction(db)))
        pos = await one_statement(conn, f"$group{len(seen)}")
        positions.append(pos)
        return [("written", [pos])]

    guards = [_live("$alice"), _live("$bob"), _live("$alice")]
    [(result, positions)] = await store.write_group([], guards, tail=tail)  # type: ignore[misc]
    assert (result, seen) == ("written", [(1, 0)])
    assert await db.fetchval("SELECT stream_pos FROM room_memberships WHERE event_id = '$group1'") == positions[0]
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await store.current_position() == positions[0]

    # bob's row goes (as a logout would) after the reservation, before the
    # statement: the statement sees it, writes nothing, and the group fails
    # as a whole on its guard
    inside, release = asyncio.Event(), asyncio.Event()

    async def slow_tail(conn: asyncpg.Connection, positions: list[int]) -> list[tuple[Any, list[int]] | Exception]:
        inside.set()
        await release.wait()
        return await tail(conn, positions)

    writer = asyncio.create_task(store.write_group([], guards, tail=slow_tail))
    await inside.wait()
    await db.execute("DELETE FROM room_memberships WHERE event_id = '$bob'")
    release.set()
    with pytest.raises(GuardFailed):
        await writer
    assert await db.fetchval("SELECT count(*) FROM room_memberships WHERE event_id = '$group2'") == 0
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    # alice's guard alone still holds
    [(result, _)] = await store.write_group([], [_live("$alice")], tail=tail)  # type: ignore[misc]
    assert result == "written"


async def test_a_group_with_writes_of_its_own_checks_its_guards_in_its_transaction(db: Database) -> None:
    """The other form of group (writes of several statements: BEGIN ...
    COMMIT) runs the same combined guard as a simple query, its keys
    written into it: a key with a quote in it is a key, not SQL."""
    store = StreamStore(db, instance_id="w")
    await insert_row(db, "$it's", 1)
    await insert_row(db, "$plain", 2)

    async def write(conn: asyncpg.Connection, positions: list[int]) -> str:
        pos = await conn.fetchval("SELECT nextval('stream_seq')")
        await insert_row(conn, f"$w{pos}", pos)
        positions.append(pos)
        return "ok"

    [(result, _)] = await store.write_group([(write, 1)], [_live("$it's"), _live("$plain")])  # type: ignore[misc]
    assert result == "ok"
    with pytest.raises(GuardFailed):
        await store.write_group([(write, 1)], [_live("$it's"), _live("$gone")])
    with pytest.raises(GuardFailed):  # (the quote is not an injection that makes the check true)
        await store.write_group([(write, 1)], [_live("$it's' OR TRUE OR '")])
    assert await db.fetchval("SELECT count(*) FROM room_memberships WHERE event_id LIKE '$w%'") == 1
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0


def test_guards_combine_into_one_check_whose_text_does_not_depend_on_the_keys() -> None:
    one = all_guards([_live("$a"), _live("$b"), _live("$a")])
    other = all_guards([_live("$c")])
    assert one is not None and other is not None
    assert one.keys == ("$a", "$b")
    assert one.sql(7) == other.sql(7) and "$7::TEXT[]" in one.sql(7)
    assert all_guards([]) is None
    with pytest.raises(ValueError):  # different checks do not combine
        all_guards([_live("$a"), Guard("SELECT 1 / cardinality({keys})", "TEXT", ("$a",))])
    with pytest.raises(ValueError):
        Guard("SELECT 1", "TEXT", ())


async def _until(check: Any, what: str) -> None:
    for _ in range(1000):  # bounded: 10 s
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(what)


async def test_a_second_transaction_opens_beside_a_lone_write_never_beside_a_batch(db: Database) -> None:
    """Two clients' messages go at once, each alone; once writes come faster
    than that they queue for one shared transaction at a time (a second
    batch beside the first would halve both, and cost a commit each)."""
    store = StreamStore(db, instance_id="w")
    group = GroupCommit(store, transactions=2)
    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []

    def write(name: str) -> "asyncio.Task[Any]":
        gates[name] = asyncio.Event()

        async def fn(conn: asyncpg.Connection, positions: list[int]) -> str:
            started.append(name)
            await gates[name].wait()
            pos = await conn.fetchval("SELECT nextval('stream_seq')")
            await insert_row(conn, f"${name}", pos)
            positions.append(pos)
            return name

        return asyncio.create_task(group.write(fn, 1))

    a, b = write("a"), write("b")
    await _until(lambda: started == ["a", "b"], f"two lone writes at once: {started}")
    c, d = write("c"), write("d")
    await _until(lambda: len(group._queue) == 2, "both transactions busy: c and d queue")
    gates["a"].set()
    await a
    # c and d go as one batch (its writes run in turn: c first)
    await _until(lambda: started[2:] == ["c"] and not group._queue, f"c and d go as one batch: {started}")
    gates["b"].set()
    await b
    e = write("e")  # one transaction free, but a batch in flight: e waits for it
    await _until(lambda: len(group._queue) == 1, "e queues")
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == ["a", "b", "c"] and not e.done()
    gates["c"].set()
    gates["d"].set()
    gates["e"].set()
    assert [r for r, _ in await asyncio.gather(c, d, e)] == ["c", "d", "e"]
    assert (group.batches, group.batched_writes) == (1, 2)
    assert group._in_flight == 0 and not group._queue
    assert await db.fetchval("SELECT count(*) FROM room_memberships") == 5
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
