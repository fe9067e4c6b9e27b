"""Migrations and the transaction helper against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from coffeechat_home.storage.database import Database, Engine, TooManyRetries
from coffeechat_home.storage.migrations import (
    applied_versions,
    load_migrations,
    run_migrations,
)

from ..pg import PostgresForTests


@pytest.fixture
async def empty_db(pg: PostgresForTests, pg_template: str):  # type: ignore[no-untyped-def]
    name = "cch_empty_storage"
    url = await pg.create_database(name)
    db = await Database.connect(url, min_size=1, max_size=10)
    yield db
    await db.close()
    await pg.drop_database(name)


async def test_engine_detected(empty_db: Database) -> None:
    assert empty_db.engine is Engine.POSTGRES


async def test_transactions_are_serializable(empty_db: Database) -> None:
    level = await empty_db.transaction(lambda c: c.fetchval("SHOW transaction_isolation"))
    assert level == "serializable"
    # lone statements run READ COMMITTED on PostgreSQL (see Database)
    assert await empty_db.fetchval("SHOW transaction_isolation") == "read committed"


async def test_new_connections_know_the_array_types_without_introspecting(empty_db: Database) -> None:
    """A statement passing or reading bigint[], integer[] or boolean[] on a
    connection new to the pool does not make asyncpg run its type
    introspection query (15-40 ms of the database's CPU, on a request's
    path): the types are registered when the connection is made. The
    introspection statement, when it runs, stays prepared on its session."""
    for pool in (empty_db.single, empty_db.pool):
        conns = [await pool.acquire() for _ in range(3)]  # new connections beyond min_size
        try:
            for conn in conns:
                row = await conn.fetchrow(
                    "SELECT $1::BIGINT[] AS b, $2::INT[] AS i, $3::BOOLEAN[] AS t, ARRAY[2, 3]::BIGINT[] AS r",
                    [1, 2**40], [7], [True, False],
                )
                assert row is not None
                assert (row["b"], row["i"], row["t"], row["r"]) == ([1, 2**40], [7], [True, False], [2, 3])
                introspected = await conn.fetchval(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE $1", "%typeinfo_tree%"
                )
                assert introspected == 0
        finally:
            for conn in conns:
                await pool.release(conn)


async def test_units_of_work_ask_for_serializable(pg: PostgresForTests, pg_template: str) -> None:
    """A database whose default is READ COMMITTED (as a CockroachDB role or
    database may be since v24.1) still runs units of work SERIALIZABLE."""
    name = "cch_read_committed_default"
    url = await pg.create_database(name)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation = 'read committed'")
    finally:
        await conn.close()
    db = await Database.connect(url, min_size=1, max_size=2)
    try:
        async with db.single.acquire() as c:  # lone reads keep the database's default
            assert await c.fetchval("SHOW default_transaction_isolation") == "read committed"
        async with db.pool.acquire() as c:  # a one-statement write runs at the session's default
            assert await c.fetchval("SHOW default_transaction_isolation") == "serializable"
        level = await db.transaction(lambda c: c.fetchval("SHOW transaction_isolation"))
        assert level == "serializable"
        level = await db.attempt_transaction(lambda c: c.fetchval("SHOW transaction_isolation"), readonly=True)
        assert level == "serializable"
    finally:
        await db.close()
        await pg.drop_database(name)


async def test_migrations_apply_once_then_noop(empty_db: Database) -> None:
    wanted = {m.version for m in load_migrations(Engine.POSTGRES)}
    first = await run_migrations(empty_db)
    assert set(first) == wanted
    assert await applied_versions(empty_db) == wanted
    assert await run_migrations(empty_db) == []
    assert await empty_db.fetchval("SELECT count(*) FROM users") == 0


async def test_two_concurrent_starters(pg: PostgresForTests, pg_template: str) -> None:
    name = "cch_concurrent_migrations"
    url = await pg.create_database(name)
    dbs = [await Database.connect(url, min_size=1, max_size=3) for _ in range(3)]
    try:
        results = await asyncio.gather(*(run_migrations(db) for db in dbs))
        wanted = {m.version for m in load_migrations(Engine.POSTGRES)}
        # exactly one starter applied each version; all see them all
        applied = sorted(v for r in results for v in r)
        assert applied == sorted(wanted)
        for db in dbs:
            assert await applied_versions(db) == wanted
    finally:
        for db in dbs:
            await db.close()
        await pg.drop_database(name)


async def test_serialization_failure_is_retried(empty_db: Database) -> None:
    """Two read-then-write transactions on the same rows: PostgreSQL aborts
    one with 40001 under SERIALIZABLE; the helper re-runs it and both land."""
    await empty_db.execute("CREATE TABLE counter (id INT PRIMARY KEY, n INT NOT NULL)")
    await empty_db.execute("INSERT INTO counter VALUES (1, 0)")
    both_read = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def make(name: str):  # type: ignore[no-untyped-def]
        async def txn(conn: asyncpg.Connection) -> None:
            attempts[name] += 1
            n = await conn.fetchval("SELECT n FROM counter WHERE id = 1")
            if attempts[name] == 1:
                await both_read.wait()  # force the conflict on the first try
            await conn.execute("UPDATE counter SET n = $1 WHERE id = 1", n + 1)

        return txn

    before = empty_db.retry_count
    await asyncio.gather(empty_db.transaction(make("a")), empty_db.transaction(make("b")))
    assert await empty_db.fetchval("SELECT n FROM counter WHERE id = 1") == 2
    assert empty_db.retry_count > before
    assert attempts["a"] + attempts["b"] >= 3


async def test_non_retryable_error_is_not_retried(empty_db: Database) -> None:
    calls = 0

    async def txn(conn: asyncpg.Connection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("SELECT * FROM no_such_table")

    with pytest.raises(asyncpg.UndefinedTableError):
        await empty_db.transaction(txn)
    assert calls == 1


async def test_retries_are_bounded(empty_db: Database) -> None:
    calls = 0

    async def txn(conn: asyncpg.Connection) -> None:
        nonlocal calls
        calls += 1
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")

    empty_db.max_attempts = 4
    with pytest.raises(TooManyRetries):
        await empty_db.transaction(txn)
    assert calls == 4


async def test_transaction_rolls_back_on_error(empty_db: Database) -> None:
    await empty_db.execute("CREATE TABLE t (x INT)")

    async def txn(conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await empty_db.transaction(txn)
    assert await empty_db.fetchval("SELECT count(*) FROM t") == 0


async def test_stream_indexes(database_url: str) -> None:
    """room_memberships has a stream-position index (the notifier polls its
    maximum); the unused state_group_seq is gone."""
    db = await Database.connect(database_url, min_size=1, max_size=2)
    try:
        indexes = {r["indexname"] for r in await db.fetch("SELECT indexname FROM pg_indexes")}
        assert "room_memberships_by_stream" in indexes
        assert await db.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'state_group_seq'") == 0
        plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN SELECT max(stream_pos) FROM room_memberships"))
        assert "room_memberships_by_stream" in plan, plan
    finally:
        await db.close()


def test_cockroach_migrations_shard_global_stream_indexes_only() -> None:
    statements = [s for m in load_migrations(Engine.COCKROACH) for s in m.statements]
    text = "\n".join(statements)
    assert "ON room_memberships (stream_pos) USING HASH" in text
    assert "CREATE INDEX IF NOT EXISTS events_by_room_stream_plain ON events (room_id, stream_pos)" in statements
    assert statements.index("DROP INDEX IF EXISTS events@events_by_room_stream") > statements.index(
        "CREATE INDEX IF NOT EXISTS events_by_room_stream_plain ON events (room_id, stream_pos)"
    )
    # the PostgreSQL dialect files are not read for CockroachDB, and vice versa
    assert "fillfactor" not in text
    assert "USING HASH" not in "\n".join(s for m in load_migrations(Engine.POSTGRES) for s in m.statements)


async def test_lease_is_renewed_during_a_slow_migration(
    pg: PostgresForTests, pg_template: str, tmp_path: Path
) -> None:
    """A migration that outlasts the lease: the holder renews it, so a second
    runner waits instead of taking over and running the DDL again."""
    (tmp_path / "0001_runs.sql").write_text("CREATE TABLE IF NOT EXISTS runs (n INT);\n")
    # not idempotent on purpose: a second run would add a second row
    (tmp_path / "0002_slow.sql").write_text("SELECT pg_sleep(4);\nINSERT INTO runs VALUES (1);\n")
    name = "cch_slow_migration"
    url = await pg.create_database(name)
    first = await Database.connect(url, min_size=1, max_size=3)
    second = await Database.connect(url, min_size=1, max_size=3)
    try:
        holder = asyncio.create_task(run_migrations(first, tmp_path, lease_seconds=1))
        # the second runner starts once the first holds the lease
        while not await first.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(4)%' AND state = 'active'"
        ):
            await asyncio.sleep(0.05)
        waiter = asyncio.create_task(run_migrations(second, tmp_path, lease_seconds=1))
        assert await holder == [1, 2]
        assert await waiter == []
        assert await first.fetchval("SELECT count(*) FROM runs") == 1
        assert await applied_versions(second) == {1, 2}
    finally:
        await first.close()
        await second.close()
        await pg.drop_database(name)


async def test_migration_statement_retried_after_a_lost_connection(
    pg: PostgresForTests, pg_template: str, tmp_path: Path
) -> None:
    """A DDL statement whose connection is killed under it runs again."""
    (tmp_path / "0001_slow.sql").write_text(
        "CREATE TABLE IF NOT EXISTS tries (n INT);\n"
        "INSERT INTO tries VALUES (1);\n"
        "SELECT CASE WHEN (SELECT count(*) FROM tries) < 2 THEN pg_sleep(30) END;\n"
        "CREATE TABLE IF NOT EXISTS after_slow (n INT);\n"
    )
    name = "cch_ddl_retry"
    url = await pg.create_database(name)
    db = await Database.connect(url, min_size=1, max_size=3)
    try:
        running = asyncio.create_task(run_migrations(db, tmp_path))
        active = "FROM pg_stat_activity WHERE query LIKE 'SELECT CASE WHEN%' AND state = 'active'"
        while not await db.fetchval(f"SELECT count(*) {active}"):
            await asyncio.sleep(0.05)
        # it sleeps; once it runs again it will not
        await db.execute("INSERT INTO tries VALUES (2)")
        assert await db.fetchval(f"SELECT count(*) FROM (SELECT pg_terminate_backend(pid) {active}) x") == 1
        # the killed statement ran again (and the insert before it did not:
        # only the failed statement is retried), then the rest followed
        assert await running == [1]
        assert await db.fetchval("SELECT count(*) FROM tries") == 2
        assert await db.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'after_slow'") == 1
    finally:
        await db.close()
        await pg.drop_database(name)
