"""A room's event DAG as the admins' DAG viewer reads it: a bounded window
of events by depth (around an event, or a depth range) with their
prev_events edges, the room's forward extremities, and the state at an
event. Read-only; reads the events, event_edges, rooms and state tables
directly (the persister owns the writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import orjson

from .database import Database
from .room_state import StateStore

StateKey = tuple[str, str]

# Per-event flags the viewer shows when the events table has the column
# (the persister adds soft-failure later): column -> flag name.
OPTIONAL_FLAG_COLUMNS = {"soft_failed": "soft_failed"}

_NODE_COLUMNS = "event_id, type, state_key, sender, depth, stream_pos, origin_server_ts, outlier, rejected_reason"


@dataclass(frozen=True, slots=True)
class DagNode:
    event_id: str
    type: str
    state_key: str | None
    sender: str
    depth: int
    stream_pos: int | None
    origin_server_ts: int
    outlier: bool
    rejected_reason: str | None
    # optional flags present in this schema (e.g. soft_failed)
    flags: dict[str, bool]


@dataclass(frozen=True, slots=True)
class DagRoom:
    room_id: str
    room_version: str
    forward_extremities: list[str]
    min_depth: int
    max_depth: int
    total_events: int


@dataclass(frozen=True, slots=True)
class DagWindow:
    nodes: list[DagNode]
    # (event_id, prev_event_id) for every node of the window
    edges: list[tuple[str, str]]
    # more events exist below / above the window's depth range
    more_below: bool
    more_above: bool


@dataclass(frozen=True, slots=True)
class StateEntry:
    type: str
    state_key: str
    event_id: str
    sender: str
    content: Any


class RoomDagStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._state = StateStore(db)
        self._flag_columns: list[str] | None = None

    async def flag_columns(self) -> list[str]:
        """The optional flag columns this database's events table has."""
        if self._flag_columns is None:
            rows = await self.db.fetch(
                """SELECT column_name FROM information_schema.columns
                   WHERE table_name = 'events' AND column_name = ANY($1::TEXT[])""",
                list(OPTIONAL_FLAG_COLUMNS),
            )
            self._flag_columns = sorted({r["column_name"] for r in rows})
        return self._flag_columns

    async def room(self, room_id: str) -> DagRoom | None:
        row = await self.db.fetchrow(
            """SELECT r.room_version, r.forward_extremities,
                      (SELECT min(depth) FROM events WHERE room_id = r.room_id) AS min_depth,
                      (SELECT max(depth) FROM events WHERE room_id = r.room_id) AS max_depth,
                      (SELECT count(*) FROM events WHERE room_id = r.room_id) AS total
               FROM rooms r WHERE r.room_id = $1""",
            room_id,
        )
        if row is None:
            return None
        return DagRoom(
            room_id, row["room_version"], list(row["forward_extremities"] or []),
            int(row["min_depth"] or 0), int(row["max_depth"] or 0), int(row["total"]),
        )

    async def event_depth(self, room_id: str, event_id: str) -> int | None:
        depth = await self.db.fetchval(
            "SELECT depth FROM events WHERE event_id = $1 AND room_id = $2", event_id, room_id
        )
        return None if depth is None else int(depth)

    async def window_between(self, room_id: str, from_depth: int, to_depth: int, limit: int) -> DagWindow:
        """Events with from_depth <= depth <= to_depth, lowest depths first,
        at most ``limit`` (whole depth levels are not guaranteed at the cut)."""
        rows = await self._select(
            "depth >= $2 AND depth <= $3 ORDER BY depth, stream_pos, event_id LIMIT $4",
            room_id, from_depth, to_depth, limit + 1,
        )
        more_above = len(rows) > limit or await self._exists(room_id, "depth > $2", to_depth)
        rows = rows[:limit]
        more_below = await self._exists(room_id, "depth < $2", from_depth)
        return await self._window(rows, more_below=more_below, more_above=more_above)

    async def window_upto(self, room_id: str, to_depth: int, limit: int) -> DagWindow:
        """The ``limit`` events of highest depth at or below ``to_depth``."""
        rows = await self._select(
            "depth <= $2 ORDER BY depth DESC, stream_pos DESC, event_id DESC LIMIT $3", room_id, to_depth, limit + 1
        )
        more_below = len(rows) > limit
        rows = rows[:limit]
        rows.reverse()
        more_above = await self._exists(room_id, "depth > $2", to_depth)
        return await self._window(rows, more_below=more_below, more_above=more_above)

    async def window_around(self, room_id: str, depth: int, limit: int) -> DagWindow:
        """About half the window at or below ``depth``, the rest above."""
        below_limit = max(1, (limit + 1) // 2)
        below = await self._select(
            "depth <= $2 ORDER BY depth DESC, stream_pos DESC, event_id DESC LIMIT $3", room_id, depth, below_limit + 1
        )
        above = await self._select(
            "depth > $2 ORDER BY depth, stream_pos, event_id LIMIT $3", room_id, depth, limit - below_limit + 1
        )
        more_below = len(below) > below_limit
        below = below[:below_limit]
        below.reverse()
        more_above = len(above) > limit - below_limit
        above = above[: limit - below_limit]
        return await self._window(below + above, more_below=more_below, more_above=more_above)

    async def _select(self, where: str, *args: Any) -> list[Any]:
        extra = "".join(f", {c}" for c in await self.flag_columns())
        return await self.db.fetch(
            f"SELECT {_NODE_COLUMNS}{extra} FROM events WHERE room_id = $1 AND {where}", *args
        )

    async def _exists(self, room_id: str, where: str, depth: int) -> bool:
        found = await self.db.fetchval(
            f"SELECT event_id FROM events WHERE room_id = $1 AND {where} LIMIT 1", room_id, depth
        )
        return found is not None

    async def _window(self, rows: list[Any], *, more_below: bool, more_above: bool) -> DagWindow:
        flags = await self.flag_columns()
        nodes = [
            DagNode(
                r["event_id"], r["type"], r["state_key"], r["sender"], int(r["depth"]),
                None if r["stream_pos"] is None else int(r["stream_pos"]), int(r["origin_server_ts"]),
                bool(r["outlier"]), r["rejected_reason"],
                {OPTIONAL_FLAG_COLUMNS[c]: bool(r[c]) for c in flags},
            )
            for r in rows
        ]
        edges = await self.prev_events([n.event_id for n in nodes])
        return DagWindow(nodes, edges, more_below, more_above)

    async def prev_events(self, event_ids: Iterable[str]) -> list[tuple[str, str]]:
        ids = list(event_ids)
        if not ids:
            return []
        rows = await self.db.fetch(
            """SELECT event_id, prev_event_id FROM event_edges WHERE event_id = ANY($1::TEXT[])
               ORDER BY event_id, prev_event_id""",
            ids,
        )
        return [(r["event_id"], r["prev_event_id"]) for r in rows]

    async def state_groups_of(self, room_id: str, event_ids: Iterable[str]) -> dict[str, int | None]:
        """The state group (state after the event) of each known event of
        the room; events not stored are absent, outliers map to None."""
        rows = await self.db.fetch(
            "SELECT event_id, state_group FROM events WHERE event_id = ANY($1::TEXT[]) AND room_id = $2",
            list(set(event_ids)), room_id,
        )
        return {r["event_id"]: r["state_group"] for r in rows}

    async def state_ids(self, groups: Iterable[int]) -> dict[int, dict[StateKey, str]]:
        """The full state of each group (snapshot plus its deltas)."""
        return await self._state.state_ids_for_groups(groups)

    async def state_entries(self, state: dict[StateKey, str]) -> list[StateEntry]:
        """The state events of a state map, with sender and content, sorted
        by (type, state_key)."""
        ids = list(set(state.values()))
        rows = await self.db.fetch("SELECT event_id, sender, client FROM events WHERE event_id = ANY($1::TEXT[])", ids)
        found = {r["event_id"]: r for r in rows}
        out = []
        for (etype, skey), event_id in sorted(state.items()):
            r = found.get(event_id)
            content = orjson.loads(r["client"]).get("content") if r is not None else None
            out.append(StateEntry(etype, skey, event_id, r["sender"] if r is not None else "", content))
        return out
