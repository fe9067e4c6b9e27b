"""To-device messages: a per-device inbox on the shared stream.

A send stores one row per recipient device at one stream position (with a
``seq`` to keep their order) and the sender's transaction id, in one
transaction: a repeated transaction id stores nothing. A device's messages
stay until it syncs with a ``since`` at or past their position, so a sync
response lost on the way is delivered again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import asyncpg
import orjson

from .database import Database
from .edu_outbox import OutboundEdu, enqueue_edus
from .stream import StreamStore, StreamTable, register_stream_table

register_stream_table(StreamTable("to_device_messages", "user_id"))

ALL_DEVICES = "*"


@dataclass(frozen=True, slots=True)
class ToDeviceMessage:
    stream_pos: int
    sender: str
    type: str
    content: str  # JSON object text


class ToDeviceStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def send(
        self,
        sender: tuple[str, str],
        txn_id: str,
        event_type: str,
        messages: list[tuple[str, str, dict[str, Any]]],
        now_ms: int,
        edus: Sequence[OutboundEdu] = (),
    ) -> bool:
        """Queue (user id, device id or '*', content) messages from the
        (user, device) ``sender``, and ``edus`` (the messages to other
        servers' users) in the federation outbox, in one transaction; False
        when the transaction id was seen (nothing queued)."""

        async def write(conn: asyncpg.Connection, pos: int) -> bool:
            fresh = await conn.fetchval(
                """INSERT INTO to_device_txns (user_id, device_id, txn_id, created_ts) VALUES ($1, $2, $3, $4)
                   ON CONFLICT DO NOTHING RETURNING 1""",
                sender[0], sender[1], txn_id, now_ms,
            )
            if not fresh:
                return False
            rows = await _expand(conn, messages)
            seq = itertools.count()
            await conn.executemany(
                """INSERT INTO to_device_messages (user_id, device_id, stream_pos, seq, sender, type, content)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                [(u, d, pos, next(seq), sender[0], event_type, c) for u, d, c in rows],
            )
            await enqueue_edus(conn, edus, now_ms)
            return True

        sent, _ = await self.stream.write(write, name="send_to_device")
        return sent

    async def batch_end(self, user_id: str, device_id: str, after: int, upto: int, limit: int) -> int:
        """The position up to which the device's messages in (after, upto]
        fit ``limit`` (rounded up to a whole position); ``upto`` when they
        all fit."""
        pos = await self.db.fetchval(
            """SELECT stream_pos FROM to_device_messages
               WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 AND stream_pos <= $4
               ORDER BY stream_pos, seq OFFSET $5 LIMIT 1""",
            user_id, device_id, after, upto, limit - 1,
        )
        return upto if pos is None else min(int(pos), upto)

    async def pending(self, user_id: str, device_id: str, after: int, upto: int) -> list[ToDeviceMessage]:
        rows = await self.db.fetch(
            """SELECT stream_pos, sender, type, content FROM to_device_messages
               WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 AND stream_pos <= $4
               ORDER BY stream_pos, seq""",
            user_id, device_id, after, upto,
        )
        return [ToDeviceMessage(r["stream_pos"], r["sender"], r["type"], r["content"]) for r in rows]

    async def acknowledge_many(self, acks: list[tuple[str, str, int]]) -> None:
        """``acknowledge`` for several devices in one statement."""
        await self.db.execute(
            """DELETE FROM to_device_messages AS m
               USING unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS a(user_id, device_id, upto)
               WHERE m.user_id = a.user_id AND m.device_id = a.device_id AND m.stream_pos <= a.upto""",
            [a[0] for a in acks], [a[1] for a in acks], [a[2] for a in acks],
        )

    async def acknowledge(self, user_id: str, device_id: str, upto: int) -> None:
        """The device has seen everything up to ``upto``: delete it."""
        await self.db.execute(
            "DELETE FROM to_device_messages WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3",
            user_id, device_id, upto,
        )


async def _expand(
    conn: asyncpg.Connection, messages: list[tuple[str, str, dict[str, Any]]]
) -> list[tuple[str, str, str]]:
    """'*' becomes every device the user has now; unknown devices are dropped."""
    users = sorted({u for u, _, _ in messages})
    rows = await conn.fetch(
        "SELECT user_id, device_id FROM devices WHERE user_id = ANY($1::TEXT[]) ORDER BY user_id, device_id", users
    )
    devices: dict[str, list[str]] = {}
    for r in rows:
        devices.setdefault(r["user_id"], []).append(r["device_id"])
    out: list[tuple[str, str, str]] = []
    for user_id, device_id, content in messages:
        text = orjson.dumps(content).decode()
        have = devices.get(user_id, [])
        targets = have if device_id == ALL_DEVICES else [device_id] if device_id in have else []
        out.extend((user_id, d, text) for d in targets)
    return out
