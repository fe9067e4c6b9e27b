"""Shared by the stream tests (test_stream*.py): their pool, a
one-statement stream write and stream rows (``room_memberships`` is one of
STREAM_TABLES) written directly."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import asyncpg

from coffeechat_home.storage.database import Database
from coffeechat_home.storage.stream_statements import SingleStatement

WRITES_DEADLINE_S = 15.0  # a bound on waiting for writes that should all finish, not a performance claim


@contextlib.asynccontextmanager
async def stream_database(database_url: str) -> AsyncIterator[Database]:
    """The stream tests' pool: more connections than the write gate lets
    writers in (8), as the gate's deadlock test needs."""
    database = await Database.connect(database_url, min_size=1, max_size=12)
    try:
        yield database
    finally:
        await database.close()


async def insert_row(db: Database | asyncpg.Connection, event_id: str, pos: int) -> None:
    """A stream row at ``pos``, through the pool or in a transaction's connection."""
    await db.execute(
        """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
           VALUES ($1, '@u:test', '!r:test', '@u:test', 'join', $2)""",
        event_id, pos,
    )


async def insert_at(conn: Database | asyncpg.Connection, pos: int) -> None:
    """A stream row named after its position."""
    await insert_row(conn, f"$e{pos}", pos)


async def one_statement(conn: SingleStatement, event_id: str) -> int:
    """A one-statement stream write: takes its position, inserts a stream
    row and deletes the reservation, failing if it is gone."""
    row = await conn.fetchrow(
        f"""WITH {conn.ctes(2)},
                ins AS (INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
                        SELECT $1, '@u:test', '!r:test', '@u:test', 'join', p
                        FROM (SELECT nextval('stream_seq') AS p) AS s RETURNING stream_pos)
           SELECT (SELECT stream_pos FROM ins) AS pos, {conn.checks()}""",
        event_id, *conn.args(),
    )
    assert row is not None
    return int(row["pos"])
