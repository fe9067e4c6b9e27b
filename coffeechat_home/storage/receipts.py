"""Read receipts: the latest receipt per (room, type, user, thread).

A change wakes the room's syncs, except private receipts, which concern
only their owner (so they are keyed by user id in the stream)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import asyncpg

from .database import Database
from .edu_outbox import OutboundEdu, enqueue_edus
from .stream import StreamStore, StreamTable, register_stream_table

PRIVATE = "m.read.private"
UNTHREADED = ""  # thread_id of unthreaded receipts

register_stream_table(
    StreamTable("receipts", f"CASE WHEN receipt_type = '{PRIVATE}' THEN user_id ELSE room_id END")
)


@dataclass(frozen=True, slots=True)
class EventPlace:
    """Where an event sits: its room, stream position and thread."""

    room_id: str
    stream_pos: int | None
    thread_id: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str  # '' when unthreaded
    event_id: str
    ts: int


class ReceiptStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def event_place(self, event_id: str) -> EventPlace | None:
        row = await self.db.fetchrow(
            "SELECT room_id, stream_pos, thread_id FROM events WHERE event_id = $1 AND NOT outlier", event_id
        )
        return EventPlace(row["room_id"], row["stream_pos"], row["thread_id"]) if row else None

    async def put(self, receipt: Receipt, outbound: Sequence[OutboundEdu] = ()) -> int | None:
        """Store a receipt unless the user's current receipt of that type and
        thread points at a later event; if stored, queue ``outbound`` (its
        EDUs for other servers) in the same transaction. Returns the stream
        position, or None when it was ignored."""

        async def write(conn: asyncpg.Connection, pos: int) -> bool:
            row = await conn.fetchrow(
                """SELECT (SELECT stream_pos FROM events WHERE event_id = r.event_id) AS old_pos,
                          (SELECT stream_pos FROM events WHERE event_id = $5) AS new_pos
                   FROM receipts r
                   WHERE r.room_id = $1 AND r.receipt_type = $2 AND r.user_id = $3 AND r.thread_id = $4""",
                receipt.room_id, receipt.receipt_type, receipt.user_id, receipt.thread_id, receipt.event_id,
            )
            if row is not None and row["old_pos"] is not None and row["new_pos"] is not None:
                if row["old_pos"] >= row["new_pos"]:
                    return False
            await conn.execute(
                """INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (room_id, receipt_type, user_id, thread_id)
                   DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_pos = excluded.stream_pos""",
                receipt.room_id, receipt.receipt_type, receipt.user_id, receipt.thread_id,
                receipt.event_id, receipt.ts, pos,
            )
            await enqueue_edus(conn, outbound, receipt.ts)
            return True

        stored, pos = await self.stream.write(write, name="put_receipt")
        return pos if stored else None

    async def changes(
        self, room_ids: Iterable[str], since: int | None, upto: int, user_id: str
    ) -> list[Receipt]:
        """Receipts in the rooms changed in (since, upto] (all up to ``upto``
        when ``since`` is None); private receipts only the user's own."""
        rows = await self.db.fetch(
            """SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
               WHERE room_id = ANY($1::TEXT[]) AND stream_pos > $2 AND stream_pos <= $3
                 AND (receipt_type <> $4 OR user_id = $5)
               ORDER BY stream_pos""",
            list(room_ids), since if since is not None else -1, upto, PRIVATE, user_id,
        )
        return [
            Receipt(r["room_id"], r["receipt_type"], r["user_id"], r["thread_id"], r["event_id"], r["ts"])
            for r in rows
        ]
