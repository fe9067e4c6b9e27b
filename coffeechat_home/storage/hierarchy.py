"""SQL of space hierarchies (services/hierarchy.py): the summary state and
child events of rooms we are in, who of a user or server is in which room,
and the stored pages of a client's walk."""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from ..protocol.hierarchy import HIERARCHY_STATE, SPACE_CHILD, LocalRoom, child_event
from .database import Database
from .stream import DB_NOW_MS

PAGE_TTL_MS = 5 * 60 * 1000


def _server(col: str) -> str:
    return f"substr({col}, strpos({col}, ':') + 1)"


class HierarchyStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name

    async def local_rooms(self, room_ids: Sequence[str]) -> dict[str, LocalRoom]:
        """The rooms among ``room_ids`` where one of our users is joined
        (so their state is current), with their summary state (and server
        ACL) and children:
        two round trips for any number of rooms."""
        ids = sorted(set(room_ids))
        if not ids:
            return {}
        rows = await self.db.fetch(
            f"""SELECT r.room_id, r.room_version,
                       coalesce(s.joined_members,
                                (SELECT count(*) FROM current_state m WHERE m.room_id = r.room_id
                                   AND m.type = 'm.room.member' AND m.membership = 'join')) AS joined
                FROM rooms r LEFT JOIN room_summaries s ON s.room_id = r.room_id
                WHERE r.room_id = ANY($1::TEXT[])
                  AND EXISTS (SELECT 1 FROM current_state m WHERE m.room_id = r.room_id
                                AND m.type = 'm.room.member' AND m.membership = 'join'
                                AND {_server('m.state_key')} = $2)""",
            ids, self.server_name,
        )
        rooms = {r[0]: LocalRoom(r[0], r[1], int(r[2])) for r in rows}
        if not rooms:
            return rooms
        state = await self.db.fetch(
            """SELECT c.room_id, c.type, c.state_key, e.client FROM current_state c
               JOIN events e ON e.event_id = c.event_id
               WHERE c.room_id = ANY($1::TEXT[])
                 AND ((c.type = ANY($2::TEXT[]) AND c.state_key = '') OR c.type = $3)""",
            sorted(rooms), list(HIERARCHY_STATE), SPACE_CHILD,
        )
        for room_id, event_type, state_key, raw in state:
            ev = orjson.loads(raw)
            room = rooms[room_id]
            if event_type == SPACE_CHILD:
                child = child_event(state_key, ev.get("content"), ev.get("sender"), ev.get("origin_server_ts"))
                if child is not None:
                    room.children.append(child)
            elif isinstance(ev.get("content"), dict):
                room.state[event_type] = ev["content"]
        return rooms

    async def memberships(self, user_id: str, room_ids: Sequence[str]) -> dict[str, str]:
        """The user's current membership in each of the rooms (rooms where
        it has none are left out)."""
        rows = await self.db.fetch(
            """SELECT room_id, membership FROM current_state
               WHERE type = 'm.room.member' AND state_key = $1 AND room_id = ANY($2::TEXT[])""",
            user_id, sorted(set(room_ids)),
        )
        return {r[0]: r[1] for r in rows if r[1]}

    async def latest_membership(self, user_id: str, room_id: str) -> str | None:
        """The user's latest membership in a room we may not be in (an
        invite from another server is recorded here, not in current_state)."""
        membership: str | None = await self.db.fetchval(
            """SELECT membership FROM room_memberships WHERE user_id = $1 AND room_id = $2
               ORDER BY stream_pos DESC LIMIT 1""",
            user_id, room_id,
        )
        return membership

    async def server_rooms(self, server: str, room_ids: Sequence[str]) -> dict[str, set[str]]:
        """For each of the rooms, the memberships (``join``, ``invite``) a
        user of ``server`` has in it."""
        rows = await self.db.fetch(
            f"""SELECT DISTINCT room_id, membership FROM current_state
                WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.member'
                  AND membership IN ('join', 'invite') AND {_server('state_key')} = $2""",
            sorted(set(room_ids)), server,
        )
        out: dict[str, set[str]] = {}
        for r in rows:
            out.setdefault(r[0], set()).add(r[1])
        return out

    # -- pages of a client's walk ------------------------------------------------------
    async def save_page(self, token: str, user_id: str, room_id: str, suggested_only: bool, max_depth: int,
                        walk: dict[str, Any]) -> None:
        await self.db.execute(f"DELETE FROM hierarchy_pages WHERE created_ts < {DB_NOW_MS} - $1", PAGE_TTL_MS)
        await self.db.execute(
            f"""INSERT INTO hierarchy_pages (token, user_id, room_id, suggested_only, max_depth, walk, created_ts)
                VALUES ($1, $2, $3, $4, $5, $6, {DB_NOW_MS})""",
            token, user_id, room_id, suggested_only, max_depth, orjson.dumps(walk).decode(),
        )

    async def load_page(self, token: str) -> tuple[str, str, bool, int, dict[str, Any]] | None:
        """(user_id, room_id, suggested_only, max_depth, walk) of a stored
        page that has not expired."""
        r = await self.db.fetchrow(
            f"""SELECT user_id, room_id, suggested_only, max_depth, walk FROM hierarchy_pages
                WHERE token = $1 AND created_ts >= {DB_NOW_MS} - $2""",
            token, PAGE_TTL_MS,
        )
        if r is None:
            return None
        return r[0], r[1], bool(r[2]), int(r[3]), orjson.loads(r[4])
