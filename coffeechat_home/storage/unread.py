"""What unread counts are computed from: per room, the events after the
user's read receipt (or after their latest membership event when they have
none) sent by others, and what push rules need to know about the room."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterable

import orjson

from .database import Database

READ_TYPES = ["m.read", "m.read.private"]
# Receipts that cover the main timeline: unthreaded ones and those on the
# "main" thread. Receipts on other threads do not move the room's count.
MAIN_TIMELINE_THREADS = ["", "main"]


@dataclass(frozen=True, slots=True)
class UnreadEvent:
    room_id: str
    event_id: str
    stream_pos: int
    sender: str
    client: str
    type: str
    state_key: str | None
    read: bool = False  # at or before the user's receipt (only in notification listings)


@dataclass(frozen=True, slots=True)
class RoomPushState:
    """What push rule evaluation needs about a room (current state)."""

    member_count: int
    display_name: str | None
    power_levels: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RoomEvent:
    event_id: str
    stream_pos: int
    type: str
    state_key: str | None
    sender: str
    client: str

    @property
    def is_state(self) -> bool:
        return self.state_key is not None


class UnreadStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def unread_events(
        self, user_id: str, room_ids: Iterable[str], upto: int, per_room_limit: int
    ) -> list[UnreadEvent]:
        """The newest ``per_room_limit`` events of each room in
        (read position, upto] sent by others, newest first per room."""
        rows = await self.db.fetch(
            """WITH starts AS (
                 SELECT r.room_id, GREATEST(
                   COALESCE((SELECT max(e.stream_pos) FROM receipts rc JOIN events e ON e.event_id = rc.event_id
                             WHERE rc.room_id = r.room_id AND rc.user_id = $2
                               AND rc.receipt_type = ANY($4::TEXT[]) AND rc.thread_id = ANY($5::TEXT[])), 0),
                   COALESCE((SELECT max(m.stream_pos) FROM room_memberships m
                             WHERE m.room_id = r.room_id AND m.user_id = $2 AND m.stream_pos <= $3), 0)
                 ) AS start_pos
                 FROM unnest($1::TEXT[]) AS r(room_id)
               )
               SELECT s.room_id, x.event_id, x.stream_pos, x.sender, x.client, x.type, x.state_key
               FROM starts s CROSS JOIN LATERAL (
                 SELECT e.event_id, e.stream_pos, e.sender, e.client, e.type, e.state_key FROM events e
                 WHERE e.room_id = s.room_id AND e.stream_pos > s.start_pos AND e.stream_pos <= $3
                   AND e.sender <> $2 AND e.rejected_reason IS NULL
                 ORDER BY e.stream_pos DESC LIMIT $6
               ) x""",
            list(room_ids), user_id, upto, READ_TYPES, MAIN_TIMELINE_THREADS, per_room_limit,
        )
        return [UnreadEvent(r["room_id"], r["event_id"], r["stream_pos"], r["sender"], r["client"], r["type"],
                            r["state_key"]) for r in rows]

    async def room_events_between(self, room_id: str, after: int, upto: int, limit: int) -> list[RoomEvent]:
        """The room's events (not rejected) in (after, upto], oldest first,
        at most ``limit``."""
        rows = await self.db.fetch(
            """SELECT event_id, stream_pos, type, state_key, sender, client FROM events
               WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3 AND rejected_reason IS NULL
               ORDER BY stream_pos LIMIT $4""",
            room_id, after, upto, limit,
        )
        return [RoomEvent(r["event_id"], r["stream_pos"], r["type"], r["state_key"], r["sender"], r["client"])
                for r in rows]

    async def recent_events(
        self, user_id: str, room_ids: Iterable[str], before: int | None, upto: int, limit: int
    ) -> list[UnreadEvent]:
        """The newest ``limit`` events by others in the rooms with positions
        below ``before`` (and at most ``upto``) and after the user first
        joined, newest first, each marked read when at or before the user's
        receipt in its room."""
        rows = await self.db.fetch(
            """WITH reads AS (
                 SELECT r.room_id,
                   COALESCE((SELECT max(e.stream_pos) FROM receipts rc JOIN events e ON e.event_id = rc.event_id
                             WHERE rc.room_id = r.room_id AND rc.user_id = $2
                               AND rc.receipt_type = ANY($5::TEXT[]) AND rc.thread_id = ANY($6::TEXT[])), 0)
                   AS read_pos,
                   COALESCE((SELECT min(m.stream_pos) FROM room_memberships m
                             WHERE m.room_id = r.room_id AND m.user_id = $2 AND m.membership = 'join'), $3)
                   AS joined_pos
                 FROM unnest($1::TEXT[]) AS r(room_id)
               )
               SELECT e.room_id, e.event_id, e.stream_pos, e.sender, e.client, e.type, e.state_key,
                      e.stream_pos <= r.read_pos AS read
               FROM events e JOIN reads r ON r.room_id = e.room_id
               WHERE e.stream_pos > r.joined_pos AND e.stream_pos <= $3 AND e.stream_pos < $4 AND e.sender <> $2 AND e.rejected_reason IS NULL
               ORDER BY e.stream_pos DESC LIMIT $7""",
            list(room_ids), user_id, upto, before if before is not None else upto + 1,
            READ_TYPES, MAIN_TIMELINE_THREADS, limit,
        )
        return [
            UnreadEvent(r["room_id"], r["event_id"], r["stream_pos"], r["sender"], r["client"], r["type"],
                        r["state_key"], r["read"])
            for r in rows
        ]

    async def push_state(self, user_id: str, room_ids: Iterable[str]) -> dict[str, RoomPushState]:
        ids = list(room_ids)
        # joined members from the room summaries the persister keeps
        # (schema/0024); counted only for a room without one
        # the summaries and the state events side by side (an initial sync waits for them)
        summaries, state_rows = await asyncio.gather(
            self.db.fetch("SELECT room_id, joined_members FROM room_summaries WHERE room_id = ANY($1::TEXT[])", ids),
            self.db.fetch(
                """SELECT c.room_id, c.type, e.client FROM current_state c JOIN events e ON e.event_id = c.event_id
                   WHERE c.room_id = ANY($1::TEXT[]) AND ((c.type = 'm.room.power_levels' AND c.state_key = '')
                         OR (c.type = 'm.room.member' AND c.state_key = $2))""",
                ids, user_id,
            ),
        )
        counts = {r["room_id"]: int(r["joined_members"]) for r in summaries}
        missing = [r for r in ids if r not in counts]
        if missing:
            counts.update(
                (r["room_id"], r["n"])
                for r in await self.db.fetch(
                    """SELECT room_id, count(*) AS n FROM current_state
                       WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.member' AND membership = 'join'
                       GROUP BY room_id""",
                    missing,
                )
            )
        names: dict[str, str | None] = {}
        levels: dict[str, dict[str, Any]] = {}
        for r in state_rows:
            content = orjson.loads(r["client"]).get("content") or {}
            if r["type"] == "m.room.power_levels":
                levels[r["room_id"]] = content if isinstance(content, dict) else {}
            else:
                name = content.get("displayname") if isinstance(content, dict) else None
                names[r["room_id"]] = name if isinstance(name, str) else None
        return {
            room_id: RoomPushState(counts.get(room_id, 0), names.get(room_id), levels.get(room_id, {}))
            for room_id in ids
        }
