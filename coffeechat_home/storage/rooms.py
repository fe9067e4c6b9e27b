"""Rooms and their current state, read side: memberships, state lookups,
the room table. (Writes of events live in storage/event_writes.py, of state in storage/room_state.py.)"""

from __future__ import annotations

from typing import Any, Sequence

import orjson

from .database import Database
from .room_state import SUMMARY_HEROES


class RoomStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def room_version(self, room_id: str) -> str | None:
        version: str | None = await self.db.fetchval("SELECT room_version FROM rooms WHERE room_id = $1", room_id)
        return version

    async def is_blocked(self, room_id: str) -> bool:
        """An admin blocked the room: nobody local may join or be invited."""
        return bool(await self.db.fetchval("SELECT 1 FROM blocked_rooms WHERE room_id = $1", room_id))

    async def membership(self, room_id: str, user_id: str) -> str | None:
        """The user's current membership in the room, or None."""
        membership: str | None = await self.db.fetchval(
            """SELECT membership FROM current_state
               WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2""",
            room_id, user_id,
        )
        return membership

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

    async def rooms_of_users(self, user_ids: set[str]) -> set[str]:
        """The rooms any of the users is joined to."""
        rows = await self.db.fetch(
            """SELECT DISTINCT room_id FROM current_state
               WHERE type = 'm.room.member' AND state_key = ANY($1::TEXT[]) AND membership = 'join'""",
            list(user_ids),
        )
        return {r["room_id"] for r in rows}

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

    # -- aliases -----------------------------------------------------------------
    async def alias_room(self, alias: str) -> str | None:
        room_id: str | None = await self.db.fetchval("SELECT room_id FROM room_aliases WHERE alias = $1", alias)
        return room_id

    async def alias_creator(self, alias: str) -> str | None:
        creator: str | None = await self.db.fetchval("SELECT creator FROM room_aliases WHERE alias = $1", alias)
        return creator

    async def create_alias(self, alias: str, room_id: str, creator: str, now_ms: int) -> bool:
        inserted = await self.db.fetchval(
            """INSERT INTO room_aliases (alias, room_id, creator, created_ts) VALUES ($1, $2, $3, $4)
               ON CONFLICT (alias) DO NOTHING RETURNING 1""",
            alias, room_id, creator, now_ms,
        )
        return bool(inserted)

    async def delete_alias(self, alias: str) -> bool:
        status = await self.db.execute("DELETE FROM room_aliases WHERE alias = $1", alias)
        return status.endswith(" 1")

    async def aliases_for_room(self, room_id: str) -> list[str]:
        # sorted here, not by ORDER BY: text order differs between engines
        # (byte-wise on CockroachDB, the collation's on PostgreSQL)
        rows = await self.db.fetch("SELECT alias FROM room_aliases WHERE room_id = $1", room_id)
        return sorted(r["alias"] for r in rows)

    # -- directory -----------------------------------------------------------------
    async def set_public(self, room_id: str, public: bool) -> bool:
        status = await self.db.execute("UPDATE rooms SET is_public = $2 WHERE room_id = $1", room_id, public)
        return status.endswith(" 1")

    async def is_public(self, room_id: str) -> bool | None:
        public: bool | None = await self.db.fetchval("SELECT is_public FROM rooms WHERE room_id = $1", room_id)
        return public

    async def public_room_ids(self) -> list[str]:
        rows = await self.db.fetch("SELECT room_id FROM rooms WHERE is_public")
        return sorted(r["room_id"] for r in rows)  # code point order on both engines

    # -- forgetting --------------------------------------------------------------
    async def public_room_state(self, types: Sequence[str]) -> list[Any]:
        """Rows (room_id, type, client) of the given state (state key '')
        of the published rooms."""
        rows: list[Any] = await self.db.fetch(
            """SELECT c.room_id, c.type, e.client FROM rooms r
               JOIN current_state c ON c.room_id = r.room_id AND c.state_key = '' AND c.type = ANY($1::TEXT[])
               JOIN events e ON e.event_id = c.event_id
               WHERE r.is_public""",
            list(types),
        )
        return rows

    async def public_room_member_counts(self) -> list[Any]:
        """Rows (room_id, n): joined members of each published room."""
        rows: list[Any] = await self.db.fetch(
            """SELECT r.room_id, count(c.state_key) AS n FROM rooms r
               LEFT JOIN current_state c ON c.room_id = r.room_id AND c.type = 'm.room.member'
                    AND c.membership = 'join'
               WHERE r.is_public GROUP BY r.room_id"""
        )
        return rows

    async def forget(self, user_id: str, room_id: str) -> None:
        await self.db.execute(
            "INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            user_id, room_id,
        )

    async def forgotten(self, user_id: str) -> set[str]:
        rows = await self.db.fetch("SELECT room_id FROM forgotten_rooms WHERE user_id = $1", user_id)
        return {r["room_id"] for r in rows}

    async def current_state_ids(self, room_id: str) -> dict[tuple[str, str], str]:
        rows = await self.db.fetch(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id
        )
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def membership_events(self, user_id: str, after: int | None, upto: int) -> list[tuple[str, str, str, int]]:
        """(room id, membership, event id, position) of a user's membership
        changes in (after, upto], oldest first."""
        rows = await self.db.fetch(
            """SELECT room_id, membership, event_id, stream_pos FROM room_memberships
               WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos""",
            user_id, after if after is not None else -1, upto,
        )
        return [(r["room_id"], r["membership"], r["event_id"], r["stream_pos"]) for r in rows]

    async def joined_and_invited(self, room_ids: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
        """room id -> (joined user ids, invited user ids), each sorted."""
        rows = await self.db.fetch(
            """SELECT room_id, state_key, membership FROM current_state
               WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.member' AND membership IN ('join', 'invite')""",
            list(room_ids),
        )
        out: dict[str, tuple[list[str], list[str]]] = {}
        for r in rows:
            joined, invited = out.setdefault(r["room_id"], ([], []))
            (joined if r["membership"] == "join" else invited).append(r["state_key"])
        for joined, invited in out.values():
            joined.sort()
            invited.sort()
        return out

    # -- room summaries (/sync) ---------------------------------------------------
    async def member_summaries(
        self, room_ids: Sequence[str], first: int
    ) -> dict[str, tuple[int, int, list[str], list[str]]]:
        """room id -> (joined count, invited count, the first ``first``
        joined and invited user ids in order): one row per room from
        ``room_summaries`` (kept by the persister); rooms without one (or
        without heroes yet) are counted from current_state."""
        ids = list(room_ids)
        rows = await self.db.fetch(
            """SELECT room_id, joined_members, invited_members, heroes_joined, heroes_invited
               FROM room_summaries WHERE room_id = ANY($1::TEXT[])""",
            ids,
        )
        out: dict[str, tuple[int, int, list[str], list[str]]] = {}
        for r in rows:
            if r["heroes_joined"] is not None and r["heroes_invited"] is not None and first <= SUMMARY_HEROES:
                out[r["room_id"]] = (
                    int(r["joined_members"]), int(r["invited_members"]),
                    list(r["heroes_joined"])[:first], list(r["heroes_invited"])[:first],
                )
        missing = [r for r in ids if r not in out]
        if missing:
            out.update(await self._count_member_summaries(missing, first))
        return out

    async def _count_member_summaries(
        self, ids: list[str], first: int
    ) -> dict[str, tuple[int, int, list[str], list[str]]]:
        counts = await self.db.fetch(
            """SELECT room_id, membership, count(*) AS n FROM current_state
               WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.member' AND membership IN ('join', 'invite')
               GROUP BY room_id, membership""",
            ids,
        )
        firsts = await self.db.fetch(
            f"""SELECT r.room_id, m.membership, x.state_key
               FROM unnest($1::TEXT[]) AS r(room_id)
               CROSS JOIN (VALUES ('join'), ('invite')) AS m(membership)
               CROSS JOIN LATERAL (
                 SELECT c.state_key FROM current_state c
                 WHERE c.room_id = r.room_id AND c.type = 'm.room.member' AND c.membership = m.membership
                 ORDER BY {self.db.text_order("c.state_key")} LIMIT $2
               ) x""",
            ids, first,
        )
        n = {(r["room_id"], r["membership"]): int(r["n"]) for r in counts}
        listed: dict[tuple[str, str], list[str]] = {}
        for r in firsts:
            listed.setdefault((r["room_id"], r["membership"]), []).append(r["state_key"])
        return {
            room_id: (
                n.get((room_id, "join"), 0), n.get((room_id, "invite"), 0),
                sorted(listed.get((room_id, "join"), [])), sorted(listed.get((room_id, "invite"), [])),
            )
            for room_id in ids
        }

    async def membership_changes(self, user_id: str, room_ids: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
        """room id -> the user's memberships there as (position, membership), oldest first."""
        rows = await self.db.fetch(
            """SELECT room_id, membership, stream_pos FROM room_memberships
               WHERE user_id = $1 AND room_id = ANY($2::TEXT[]) ORDER BY room_id, stream_pos""",
            user_id, list(room_ids),
        )
        out: dict[str, list[tuple[int, str]]] = {r: [] for r in room_ids}
        for r in rows:
            out[r["room_id"]].append((r["stream_pos"], r["membership"]))
        return out

    async def latest_memberships(self, user_id: str, upto: int) -> dict[str, tuple[str, str, int]]:
        """room id -> (membership, event id, position) as of a position."""
        rows = await self.db.fetch(
            """SELECT DISTINCT ON (room_id) room_id, membership, event_id, stream_pos FROM room_memberships
               WHERE user_id = $1 AND stream_pos <= $2 ORDER BY room_id, stream_pos DESC""",
            user_id, upto,
        )
        return {r["room_id"]: (r["membership"], r["event_id"], r["stream_pos"]) for r in rows}

    # -- who shares a room with whom, at a stream position ------------------------
    async def users_sharing_a_room_at(self, user_id: str, pos: int) -> set[str]:
        """Every user joined, as of ``pos``, to a room the given user was
        joined to then (incl. the user itself)."""
        rows = await self.db.fetch(
            """WITH mine AS (
                   SELECT DISTINCT ON (room_id) room_id, membership FROM room_memberships
                   WHERE user_id = $1 AND stream_pos <= $2 ORDER BY room_id, stream_pos DESC),
               latest AS (
                   SELECT DISTINCT ON (m.room_id, m.user_id) m.user_id, m.membership FROM room_memberships m
                   WHERE m.room_id IN (SELECT room_id FROM mine WHERE membership = 'join') AND m.stream_pos <= $2
                   ORDER BY m.room_id, m.user_id, m.stream_pos DESC)
               SELECT DISTINCT user_id FROM latest WHERE membership = 'join'""",
            user_id, pos,
        )
        return {r["user_id"] for r in rows} | {user_id}

    async def memberships_changed_near(self, user_id: str, after: int, upto: int) -> bool:
        """Whether any membership changed in (after, upto] in a room the
        user has been in (so who shares a room with them may have changed)."""
        found = await self.db.fetchval(
            """SELECT 1 FROM room_memberships
               WHERE stream_pos > $2 AND stream_pos <= $3 AND room_id IN (
                   SELECT room_id FROM room_memberships WHERE user_id = $1 AND stream_pos <= $3)
               LIMIT 1""",
            user_id, after, upto,
        )
        return bool(found)

    async def servers_sharing_a_room(self, user_id: str) -> set[str]:
        """The servers of everyone joined to a room the user is joined to
        (incl. the user's own server)."""
        rows = await self.db.fetch(
            """SELECT DISTINCT substr(o.state_key, strpos(o.state_key, ':') + 1) AS server
               FROM current_state me JOIN current_state o
                 ON o.room_id = me.room_id AND o.type = 'm.room.member' AND o.membership = 'join'
               WHERE me.type = 'm.room.member' AND me.state_key = $1 AND me.membership = 'join'""",
            user_id,
        )
        return {r["server"] for r in rows}
