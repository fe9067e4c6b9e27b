"""Shared by the stream tests (test_stream.py, test_stream_groups.py): a
one-statement stream write and stream rows (``room_memberships`` is one of
STREAM_TABLES) written directly."""

from __future__ import annotations

from coffeechat_home.storage.database import Database
from coffeechat_home.storage.stream import SingleStatement


async def insert_row(db: Database, event_id: str, pos: int) -> None:
    await db.execute(
        """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
           VALUES ($1, '@u:test', '!r:test', '@u:test', 'join', $2)""",
        event_id, pos,
    )


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
