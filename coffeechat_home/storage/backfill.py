"""Backfill: where a room's known history has holes, at its bottom or in
the middle (events whose prev_events we never got: backward
extremities), the stream positions of backfilled events (negative,
migration 0022), and the history visibility in force at the oldest event
we have."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from .database import Database
from .room_state import StateStore


async def allocate_backfill_positions(conn: asyncpg.Connection, count: int) -> list[int]:
    """``count`` stream positions below every position handed out so far,
    ascending: the last one (for the newest event of the batch) is the
    highest, and all are below those of earlier backfilled batches."""
    values = await conn.fetchval(
        "SELECT array_agg(nextval('backfill_stream_seq')) FROM generate_series(1, $1::INT)", count
    )
    return [-v for v in sorted(values, reverse=True)]


class BackfillStore:
    def __init__(self, db: Database | Any) -> None:
        self.db = db
        self.state = StateStore(db)

    async def room_creator(self, room_id: str) -> str | None:
        creator: str | None = await self.db.fetchval("SELECT creator FROM rooms WHERE room_id = $1", room_id)
        return creator

    async def missing_prevs(
        self, room_id: str, max_depth: int | None, limit: int, *, min_depth: int | None = None
    ) -> list[str]:
        """The room's backward extremities in a depth range: prev_events we
        do not have (or have only as outliers) of the timeline events with
        ``min_depth <= depth <= max_depth`` (None: unbounded), those of the
        deepest events first: where backfill should start. A hole in the
        middle of the history (a gap closed with the state at it, a rejoin)
        has one at the event above it; the bottom of the history at the
        oldest event. Bounded by the range: a /messages page reads the
        events of its own depths (events_by_room_depth)."""
        rows = await self.db.fetch(
            """SELECT ed.prev_event_id, max(e.depth) AS d FROM events e
               JOIN event_edges ed ON ed.event_id = e.event_id
               WHERE e.room_id = $1 AND e.stream_pos IS NOT NULL AND ($2::BIGINT IS NULL OR e.depth <= $2)
                 AND ($4::BIGINT IS NULL OR e.depth >= $4)
                 AND NOT EXISTS (SELECT 1 FROM events p WHERE p.event_id = ed.prev_event_id AND NOT p.outlier)
               GROUP BY ed.prev_event_id
               ORDER BY d DESC, ed.prev_event_id LIMIT $3""",
            room_id, max_depth, limit, min_depth,
        )
        return [r["prev_event_id"] for r in rows]

    async def earliest_visibility(self, room_id: str) -> tuple[int, Any] | None:
        """For a room with backfilled history (a timeline event below stream
        position 0): (the position just below its oldest timeline event,
        the history_visibility in the state after that event); the part of
        the room before it is unknown here, so the value then in force is
        the one to judge the oldest events by. None for other rooms."""
        row = await self.db.fetchrow(
            """SELECT stream_pos, state_group FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL
               ORDER BY stream_pos LIMIT 1""",
            room_id,
        )
        if row is None or row["stream_pos"] >= 0 or row["state_group"] is None:
            return None
        state = await self.state.state_ids_for_group(row["state_group"])
        vis_id = state.get(("m.room.history_visibility", ""))
        if vis_id is None:
            return None
        client = await self.db.fetchval("SELECT client FROM events WHERE event_id = $1", vis_id)
        if client is None:
            return None
        return row["stream_pos"] - 1, orjson.loads(client).get("content", {}).get("history_visibility")
