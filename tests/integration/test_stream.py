"""Stream positions with writers that commit out of order, against the real
database: a reader never advances past a position whose write has not
committed (storage/stream.py's docstring gives the argument)."""

from __future__ import annotations

import asyncio
import random
from typing import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson
import pytest

from coffeechat_home.services.notifier import EVENTS_READ
from coffeechat_home.storage.database import Database, Engine
from coffeechat_home.storage.stream import GuardFailed, StreamStore
from coffeechat_home.storage.stream_statements import Guard, SingleStatement

from .stream_helpers import insert_at, insert_row, one_statement, stream_database

@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with stream_database(database_url) as database:
        yield database


async def _visible(db: Database, upto: int) -> set[int]:
    rows = await db.fetch("SELECT stream_pos FROM room_memberships WHERE stream_pos <= $1", upto)
    return {r["stream_pos"] for r in rows}


async def test_lower_position_committing_last_holds_readers_back(db: Database) -> None:
    a = StreamStore(db, instance_id="a")
    b = StreamStore(db, instance_id="b")
    inside = asyncio.Event()
    release = asyncio.Event()
    a_pos: list[int] = []

    async def slow(conn: asyncpg.Connection, pos: int) -> None:
        a_pos.append(pos)
        await insert_at(conn, pos)
        inside.set()
        await release.wait()

    async def fast(conn: asyncpg.Connection, pos: int) -> None:
        await insert_at(conn, pos)

    start = await a.current_position()
    writer_a = asyncio.create_task(a.write(slow))
    await inside.wait()
    _, pos_b = await b.write(fast)
    assert pos_b > a_pos[0]  # B took a higher position and committed first
    assert await b.committed_max() == pos_b
    for _ in range(20):
        seen = await b.current_position()
        assert start <= seen < a_pos[0], (seen, a_pos)
        assert await _visible(db, seen) == set()  # nothing of A or B yet
    release.set()
    _, pos_a = await writer_a
    assert pos_a == a_pos[-1]
    seen = await b.current_position()
    assert seen >= pos_b
    assert await _visible(db, seen) == {pos_a, pos_b}
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0


async def test_reservation_is_deleted_last_and_a_reclaimed_one_restarts_the_write(db: Database) -> None:
    store = StreamStore(db, instance_id="w")
    inside = asyncio.Event()
    release = asyncio.Event()
    tries: list[int] = []

    async def fn(conn: asyncpg.Connection, pos: int) -> None:
        tries.append(pos)
        await insert_at(conn, pos)
        if len(tries) == 1:
            inside.set()
            await release.wait()

    writer = asyncio.create_task(store.write(fn))
    await inside.wait()
    token = await db.fetchval("SELECT token FROM stream_inflight WHERE instance_id = 'w'")
    assert token is not None
    # the write has run its statements but not yet touched its reservation:
    # the row is not locked (a reader on CockroachDB would not wait on it)
    async with db.single.acquire() as other:
        assert await other.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM stream_inflight WHERE token = $1 FOR UPDATE NOWAIT) x", token
        ) == 1
    # reclaim it (as a survivor does when our instance looks dead)
    await db.execute("DELETE FROM stream_inflight WHERE token = $1", token)
    release.set()
    _, pos = await writer
    # the first try rolled back; the write started over at a new position
    assert len(tries) == 2 and pos == tries[1] > tries[0]
    assert await _visible(db, pos) == {pos}
    assert await store.current_position() == pos


async def test_one_statement_write_commits_alone_and_a_reclaimed_reservation_restarts_it(db: Database) -> None:
    store = StreamStore(db, instance_id="w")
    inside = asyncio.Event()
    release = asyncio.Event()
    tries: list[int] = []

    async def fn(conn: asyncpg.Connection, positions: list[int]) -> str:
        assert isinstance(conn, SingleStatement)
        tries.append(len(tries))
        if len(tries) == 1:
            inside.set()
            await release.wait()
        positions.append(await one_statement(conn, f"$single{len(tries)}"))
        return "done"

    writer = asyncio.create_task(store.write_many(fn, 1, allocate=False, single=True))
    await inside.wait()
    # the reservation is committed (readers are held below it) and no
    # transaction of the write is open meanwhile
    token = await db.fetchval("SELECT token FROM stream_inflight WHERE instance_id = 'w'")
    assert token is not None
    assert await store.current_position() < await db.fetchval("SELECT last_value FROM stream_seq")
    async with db.single.acquire() as other:
        idle = await other.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in%'"
        )
    assert idle == 0
    await db.execute("DELETE FROM stream_inflight WHERE token = $1", token)  # reclaimed
    release.set()
    result, positions = await writer
    assert result == "done" and len(tries) == 2
    # the first statement failed on the missing reservation and wrote nothing
    rows = await db.fetch("SELECT event_id, stream_pos FROM room_memberships ORDER BY stream_pos")
    assert [(r["event_id"], r["stream_pos"]) for r in rows] == [("$single2", positions[0])]
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    assert await store.current_position() == positions[0]


async def test_one_statement_write_runs_no_second_statement_and_leaves_no_reservation(db: Database) -> None:
    store = StreamStore(db, instance_id="w")

    async def two(conn: asyncpg.Connection, positions: list[int]) -> None:
        positions.append(await one_statement(conn, "$first"))  # type: ignore[arg-type]
        await conn.fetchrow("SELECT 1 FROM stream_inflight")  # would commit on its own: refused

    async def read_first(conn: asyncpg.Connection, positions: list[int]) -> None:
        await conn.fetchval("SELECT 1")

    with pytest.raises(RuntimeError):
        await store.write_many(read_first, 1, allocate=False, single=True)
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    with pytest.raises(RuntimeError):
        await store.write_many(two, 1, allocate=False, single=True)
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0


async def test_one_statement_write_checks_its_guard_in_the_statement(db: Database) -> None:
    """The guard (e.g. "the token still exists") is read by the write's own
    statement: a revocation committed after the reservation but before the
    statement stops the write, and nothing of it is stored."""
    store = StreamStore(db, instance_id="w")
    await insert_row(db, "$allowed", 1)
    guard = Guard("SELECT 1 / (count(*) = cardinality({keys}))::INT FROM room_memberships WHERE event_id = ANY({keys})",
                  "TEXT", ("$allowed",))
    inside = asyncio.Event()
    release = asyncio.Event()

    async def fn(conn: asyncpg.Connection, positions: list[int]) -> None:
        inside.set()
        await release.wait()
        positions.append(await one_statement(conn, "$guarded"))  # type: ignore[arg-type]

    writer = asyncio.create_task(store.write_many(fn, 1, allocate=False, single=True, guard=guard))
    await inside.wait()
    await db.execute("DELETE FROM room_memberships WHERE event_id = '$allowed'")  # revoked meanwhile
    release.set()
    with pytest.raises(GuardFailed):
        await writer
    assert await db.fetchval("SELECT count(*) FROM room_memberships WHERE event_id = '$guarded'") == 0
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
    # with the guard true, the same write goes through
    await insert_row(db, "$allowed", 2)
    release.clear()
    inside.clear()
    writer = asyncio.create_task(store.write_many(fn, 1, allocate=False, single=True, guard=guard))
    await inside.wait()
    release.set()
    _, positions = await writer
    assert await db.fetchval("SELECT stream_pos FROM room_memberships WHERE event_id = '$guarded'") == positions[0]


async def test_readers_never_pass_an_uncommitted_write(db: Database) -> None:
    """Many writers whose transactions last random times, so they commit
    out of order; every position a reader reports has all its writes
    visible at that moment."""
    stores = [StreamStore(db, instance_id=f"i{n}") for n in range(3)]
    rng = random.Random(1234)
    delays = [rng.random() * 0.02 for _ in range(60)]
    done = asyncio.Event()
    committed: set[int] = set()
    reports: list[tuple[int, set[int]]] = []

    async def writer(n: int) -> None:
        async def fn(conn: asyncpg.Connection, pos: int) -> None:
            await insert_at(conn, pos)
            await asyncio.sleep(delays[n])

        _, pos = await stores[n % 3].write(fn)
        committed.add(pos)

    async def reader() -> None:
        while not done.is_set():
            # every other read without the committed-maximum statement
            # (known_committed: the last maximum read and its own writes)
            seen = await stores[0].current_position(read_max=len(reports) % 2 == 0)
            reports.append((seen, await _visible(db, seen)))
            await asyncio.sleep(0)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(n) for n in range(60)))
    done.set()
    await reading
    final = await _visible(db, 1 << 62)
    assert final == committed and len(final) == 60
    assert len(reports) > 5
    for seen, visible in reports:
        assert visible == {p for p in final if p <= seen}, seen
    assert await stores[0].current_position() >= max(final)


async def test_a_position_read_without_the_maximum_uses_the_last_maximum_read(db: Database) -> None:
    """Another instance's write: a read without the committed-maximum
    statement does not see it until a full read has found it, and then
    keeps it (what a notifier woken by that instance relies on when its
    own next write pokes it)."""
    a = StreamStore(db, instance_id="a")
    b = StreamStore(db, instance_id="b")

    async def fn(conn: asyncpg.Connection, pos: int) -> None:
        await insert_at(conn, pos)

    _, pos = await b.write(fn)
    assert await a.current_position(read_max=False) < pos
    assert await a.current_position() >= pos
    assert await a.current_position(read_max=False) >= pos


async def test_writes_to_different_rooms_do_not_conflict_once_tables_are_analyzed(db: Database) -> None:
    """Two stream writes overlapping in time, each moving the extremities of
    its own room, in a database whose planner knows its tables are small
    (as autovacuum makes it within minutes): both commit at the first try.
    PostgreSQL's SSI locks a whole table for a sequential scan, so with the
    planner's choice of a scan for these point lookups (the room's row,
    the reservation's row) each write would read what the other writes and
    one of them would fail to serialize."""
    rooms = [f"!r{n}:test" for n in range(20)]
    await db.execute(
        """INSERT INTO rooms (room_id, room_version, creator, created_ts)
           SELECT r, '10', '@u:test', 0 FROM unnest($1::TEXT[]) AS r""",
        rooms,
    )
    await db.execute("VACUUM ANALYZE rooms, stream_inflight")
    store = StreamStore(db, instance_id="w")
    updated = [asyncio.Event(), asyncio.Event()]

    def move(n: int) -> Callable[[asyncpg.Connection, int], Awaitable[None]]:
        async def fn(conn: asyncpg.Connection, pos: int) -> None:
            await conn.execute(
                "UPDATE rooms SET forward_extremities = $2 WHERE room_id = $1", rooms[n], [f"$e{pos}"]
            )
            updated[n].set()
            await asyncio.wait_for(updated[1 - n].wait(), 10)  # both have read and written before either commits

        return fn

    retries = db.retry_count
    (_, p0), (_, p1) = await asyncio.gather(store.write(move(0)), store.write(move(1)))
    assert db.retry_count == retries
    rows = await db.fetch("SELECT room_id, forward_extremities FROM rooms WHERE room_id = ANY($1::TEXT[])", rooms[:2])
    assert {r["room_id"]: list(r["forward_extremities"]) for r in rows} == {rooms[0]: [f"$e{p0}"], rooms[1]: [f"$e{p1}"]}
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0


async def test_a_write_may_take_its_positions_in_its_own_statement(db: Database) -> None:
    """write_many(allocate=False): the write's insert takes the positions
    (one round trip fewer on the send path); they count as the write's, and
    a write that takes the wrong number is rolled back, reservation and all."""
    store = StreamStore(db, instance_id="w")
    start = await store.current_position()

    async def fn(conn: asyncpg.Connection, positions: list[int]) -> str:
        assert positions == []
        rows = await conn.fetch(
            """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
               SELECT '$m' || n, '@u:test', '!r:test', '@u:test', 'join', nextval('stream_seq')
               FROM generate_series(1, 3) AS n RETURNING stream_pos"""
        )
        positions.extend(sorted(r["stream_pos"] for r in rows))
        return "done"

    result, positions = await store.write_many(fn, 3, allocate=False)
    assert result == "done" and len(positions) == 3 and positions == sorted(positions)
    assert positions[0] > start
    assert await _visible(db, positions[-1]) == set(positions)
    assert await store.current_position() == positions[-1] == store.local_committed

    async def short(conn: asyncpg.Connection, positions: list[int]) -> None:
        await insert_at(conn, await conn.fetchval("SELECT nextval('stream_seq')"))  # takes one, says nothing

    with pytest.raises(RuntimeError):
        await store.write_many(short, 1, allocate=False)
    assert await _visible(db, 1 << 62) == set(positions)  # rolled back
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0


async def test_the_notifiers_read_holds_back_like_current_position(db: Database) -> None:
    """The notifier's one-statement read: the position (as current_position
    with a known committed maximum) and what changed up to it, never past a
    lower write that has not committed."""
    a = StreamStore(db, instance_id="a")
    b = StreamStore(db, instance_id="b")
    start = await b.current_position()
    inside, release = asyncio.Event(), asyncio.Event()
    a_pos: list[int] = []

    async def slow(conn: asyncpg.Connection, pos: int) -> None:
        a_pos.append(pos)
        await insert_at(conn, pos)
        inside.set()
        await release.wait()

    writer_a = asyncio.create_task(a.write(slow))
    await inside.wait()
    _, pos_b = await b.write(lambda conn, pos: insert_at(conn, pos))
    upto, changes, _ = await b.position_changes_and_events(start, b.local_committed)
    assert start <= upto < a_pos[0] and changes == {}
    release.set()
    _, pos_a = await writer_a
    upto, changes, _ = await b.position_changes_and_events(start, max(pos_a, pos_b))
    assert upto == max(pos_a, pos_b) and changes == {"room_memberships": {"@u:test"}}
    assert await b.position_changes_and_events(upto, upto) == (upto, {}, None)


async def test_the_notifiers_read_is_planned_once_per_connection(db: Database) -> None:
    """Every wake-up runs position_changes_and_events: PostgreSQL must settle on a
    generic plan of it after its five trial custom plans, not plan each
    call anew (it did while a bound was visible to the planner: about
    twice the statement's execution time on every wake-up)."""
    if db.engine is not Engine.POSTGRES:
        pytest.skip("plan caching is PostgreSQL's (CockroachDB caches its own plans)")
    store = StreamStore(db, instance_id="a")
    # stream tables of some size: with small ones PostgreSQL settles on a
    # generic plan however the statement is written
    await db.execute(
        """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
           SELECT '$m' || g, '@u' || g || ':test', '!r:test', '@u:test', 'join', 2 * g
           FROM generate_series(1, 20000) AS g""")
    await db.execute(
        """INSERT INTO events (event_id, room_id, stream_pos, depth, type, sender, origin_server_ts, pdu, client)
           SELECT '$e' || g, '!r' || g % 50 || ':test', 2 * g - 1, g, 'm.room.message', '@u:test', g, '{}', '{}'
           FROM generate_series(1, 20000) AS g""")
    await db.execute("ANALYZE")
    for i in range(30):  # one after another: the pool hands back the connection used last
        # (as the notifier reads it: with the range's events)
        upto, changes, read = await store.position_changes_and_events(39990 + i % 3, 40000, EVENTS_READ)
        assert upto == 40000 and len(changes["room_memberships"]) == 5 - (i % 3 == 2), changes
        assert read is not None and len(read.rows) == 5 - (i % 3 != 0), read
    rows = await db.fetch("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                          "WHERE statement LIKE '%FROM stream_inflight%' AND statement LIKE '%UNION%' "
                          "AND statement NOT LIKE '%pg_prepared_statements%'")
    assert rows and all(r["custom_plans"] <= 5 for r in rows) and any(r["generic_plans"] > 0 for r in rows), \
        [dict(r) for r in rows]
    # and that generic plan reads the range's rows through the indexes
    # (with the range's bounds hidden from it, an ordered scan of every
    # event's position was cheapest on paper: 20,000 rows per wake-up)
    statement = await db.fetchval("SELECT statement FROM pg_prepared_statements WHERE statement LIKE '%ev AS%' "
                                  "AND statement NOT LIKE '%pg_prepared_statements%' LIMIT 1")
    async with db.single.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE notifier_read(BIGINT, BIGINT) AS {statement}")
        plan = orjson.loads(await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE notifier_read(39990, 40000)"))[0]["Plan"]
        await conn.execute("DEALLOCATE notifier_read")
    assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 100, plan


async def test_the_write_pools_sessions_plan_a_batch_statement_once(database_url: str) -> None:
    """Writes pass their rows as arrays (``unnest($n)``); PostgreSQL's
    default plan choice re-plans such a statement on every execution, which
    cost a message's send more of the database's CPU than the statement's
    work (bench/bench_write_parts.py). The write pool's sessions plan each
    prepared statement once."""
    db = await Database.connect(database_url, min_size=1, max_size=1)
    try:
        if db.engine is not Engine.POSTGRES:
            pytest.skip("plan caching is PostgreSQL's (CockroachDB caches its own plans)")
        query = "SELECT count(*) FROM unnest($1::TEXT[], $2::BIGINT[]) AS u(a, b) WHERE u.b > 0"
        async with db.pool.acquire() as conn:
            for n in range(8):
                assert await conn.fetchval(query, [f"x{i}" for i in range(n)], list(range(1, n + 1))) == n
            plans = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", query
            )
        assert plans is not None
        assert (plans["generic_plans"], plans["custom_plans"]) == (8, 0)
    finally:
        await db.close()
