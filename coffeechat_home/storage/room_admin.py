"""Rooms as server admins see them: a listing with member counts, one
room's details and members, blocking. (Read side of the rooms aggregate
plus the blocked_rooms table.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .database import Database

# state events whose content the admin API shows
SHOWN_STATE = (
    "m.room.name", "m.room.canonical_alias", "m.room.join_rules", "m.room.history_visibility",
    "m.room.encryption", "m.room.guest_access", "m.room.topic", "m.room.avatar", "m.room.create",
)


@dataclass(frozen=True, slots=True)
class RoomRow:
    room_id: str
    room_version: str
    creator: str
    is_public: bool
    joined_members: int
    state_events: int
    # type -> content of the SHOWN_STATE events present
    state: dict[str, dict[str, Any]]


_ROOMS = """SELECT r.room_id, r.room_version, r.creator, r.is_public,
       (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id
            AND c.type = 'm.room.member' AND c.membership = 'join') AS joined_members,
       (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id) AS state_events
   FROM rooms r"""

_NAME_MATCH = """($1::TEXT IS NULL OR strpos(lower(r.room_id), lower($1)) > 0 OR EXISTS (
       SELECT 1 FROM current_state c JOIN events e ON e.event_id = c.event_id
       WHERE c.room_id = r.room_id AND c.type = 'm.room.name' AND c.state_key = ''
         AND strpos(lower(e.client::JSONB -> 'content' ->> 'name'), lower($1)) > 0))"""


class RoomAdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list_rooms(self, offset: int, limit: int, search: str | None) -> tuple[list[RoomRow], int]:
        rows = await self.db.fetch(
            f"""SELECT * FROM ({_ROOMS} WHERE {_NAME_MATCH}) AS x
                ORDER BY joined_members DESC, room_id OFFSET $2 LIMIT $3""",
            search, offset, limit,
        )
        total = await self.db.fetchval(f"SELECT count(*) FROM rooms r WHERE {_NAME_MATCH}", search)
        return await self._with_state(rows), int(total)

    async def room(self, room_id: str) -> RoomRow | None:
        rows = await self.db.fetch(f"{_ROOMS} WHERE r.room_id = $1", room_id)
        found = await self._with_state(rows)
        return found[0] if found else None

    async def _with_state(self, rows: list[Any]) -> list[RoomRow]:
        ids = [r["room_id"] for r in rows]
        state: dict[str, dict[str, dict[str, Any]]] = {i: {} for i in ids}
        if ids:
            for s in await self.db.fetch(
                """SELECT c.room_id, c.type, e.client FROM current_state c JOIN events e ON e.event_id = c.event_id
                   WHERE c.room_id = ANY($1::TEXT[]) AND c.state_key = '' AND c.type = ANY($2::TEXT[])""",
                ids, list(SHOWN_STATE),
            ):
                state[s["room_id"]][s["type"]] = orjson.loads(s["client"]).get("content", {})
        return [
            RoomRow(r["room_id"], r["room_version"], r["creator"], r["is_public"], int(r["joined_members"]),
                    int(r["state_events"]), state[r["room_id"]])
            for r in rows
        ]

    async def members(self, room_id: str, memberships: tuple[str, ...] = ("join",)) -> list[str]:
        rows = await self.db.fetch(
            """SELECT state_key FROM current_state WHERE room_id = $1 AND type = 'm.room.member'
                 AND membership = ANY($2::TEXT[]) ORDER BY state_key""",
            room_id, list(memberships),
        )
        return [r["state_key"] for r in rows]

    async def block(self, room_id: str, by: str, now_ms: int) -> None:
        await self.db.execute(
            """INSERT INTO blocked_rooms (room_id, blocked_by, blocked_ts) VALUES ($1, $2, $3)
               ON CONFLICT (room_id) DO NOTHING""",
            room_id, by, now_ms,
        )

    async def remove_aliases(self, room_id: str) -> list[str]:
        """Delete the room's aliases and unpublish it; returns the aliases."""
        rows = await self.db.fetch("DELETE FROM room_aliases WHERE room_id = $1 RETURNING alias", room_id)
        await self.db.execute("UPDATE rooms SET is_public = false WHERE room_id = $1", room_id)
        return sorted(r["alias"] for r in rows)
