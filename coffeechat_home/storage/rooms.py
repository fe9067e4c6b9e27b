"""Rooms and their current state, read side: memberships, state lookups,
the room table. (Writes of events and state live in storage/events.py.)"""

from __future__ import annotations

from typing import Any

import orjson

from .database import Database


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def room_version(self, room_id: str) -> str | None:
        return await self.db.fetchval("SELECT room_version FROM rooms WHERE room_id = $1", room_id)

    async def membership(self, room_id: str, user_id: str) -> str | None:
        """The user's current membership in the room, or None."""
        return await self.db.fetchval(
            """SELECT membership FROM current_state
               WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2""",
            room_id, user_id,
        )

    async def is_joined(self, room_id: str, user_id: str) -> bool:
        return await self.membership(room_id, user_id) == "join"

    async def rooms_for_user(self, user_id: str, membership: str = "join") -> list[str]:
        rows = await self.db.fetch(
            """SELECT room_id FROM current_state
               WHERE type = 'm.room.member' AND state_key = $1 AND membership = $2""",
            user_id, membership,
        )
        return [r["room_id"] for r in rows]

    async def joined_members(self, room_id: str) -> list[str]:
        rows = await self.db.fetch(
            """SELECT state_key FROM current_state
               WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'""",
            room_id,
        )
        return [r["state_key"] for r in rows]

    async def users_sharing_a_room(self, user_id: str) -> set[str]:
        """Every user joined to a room the given user is joined to (incl. itself)."""
        rows = await self.db.fetch(
            """SELECT DISTINCT o.state_key AS user_id
               FROM current_state me JOIN current_state o
                 ON o.room_id = me.room_id AND o.type = 'm.room.member' AND o.membership = 'join'
               WHERE me.type = 'm.room.member' AND me.state_key = $1 AND me.membership = 'join'""",
            user_id,
        )
        return {r["user_id"] for r in rows} | {user_id}

    async def current_state_event(self, room_id: str, event_type: str, state_key: str) -> dict[str, Any] | None:
        """The client-format JSON of one current state event."""
        raw = await self.db.fetchval(
            """SELECT e.client FROM current_state c JOIN events e ON e.event_id = c.event_id
               WHERE c.room_id = $1 AND c.type = $2 AND c.state_key = $3""",
            room_id, event_type, state_key,
        )
        return orjson.loads(raw) if raw is not None else None
