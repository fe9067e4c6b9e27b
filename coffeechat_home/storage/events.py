"""Events and the room DAG, read side: the room's row (version, forward
extremities), what is stored of events (``StoredEventInfo``, PDUs), auth
chains, successors and transaction ids; ``EventStore`` also lists events
in client format (timelines, history in DAG order: event_listings.py)
and reads state through the StateStore.

Writes (``insert_events`` and the persister's other writes) are in
event_writes.py; state (state groups, current state, memberships) lives in
room_state.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import asyncpg
import orjson

from ..protocol.events import Event, StateKey
from ..protocol.room_versions import RoomVersion
from .database import Database
from .event_listings import EventListings
from .room_state import StateStore


@dataclass
class StoredEventInfo:
    """What the persister needs to know of an event already stored."""

    event_id: str
    room_id: str
    depth: int
    stream_pos: int | None
    state_group: int | None
    outlier: bool
    rejected: bool
    soft_failed: bool


class EventStore(EventListings):
    """Reads of events and the DAG (listings of events in client format
    from ``EventListings``). ``db`` is a Database, or a connection inside a
    transaction (both have fetch/fetchrow/fetchval)."""

    def __init__(self, db: Database | Any) -> None:
        self.db = db
        self.state = StateStore(db)

    async def create_room_row(
        self, conn: asyncpg.Connection, room_id: str, room_version: str, creator: str, ts: int, is_public: bool
    ) -> bool:
        """Inside a persist transaction; False when the room id exists."""
        inserted = await conn.fetchval(
            """INSERT INTO rooms (room_id, room_version, creator, created_ts, is_public)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room_id) DO NOTHING RETURNING 1""",
            room_id, room_version, creator, ts, is_public,
        )
        return bool(inserted)

    async def room_version(self, room_id: str, *, for_update: bool = False) -> str | None:
        """``for_update`` (inside a transaction): lock the room's row, so
        writers of the room on other instances wait for us."""
        lock = " FOR UPDATE" if for_update else ""
        version: str | None = await self.db.fetchval(
            f"SELECT room_version FROM rooms WHERE room_id = $1{lock}", room_id
        )
        return version

    async def room_version_and_extremities(self, room_id: str) -> tuple[str, list[str]] | None:
        row = await self.db.fetchrow(
            "SELECT room_version, forward_extremities FROM rooms WHERE room_id = $1", room_id
        )
        return None if row is None else (str(row["room_version"]), list(row["forward_extremities"] or []))

    async def room_for_receipt(self, room_id: str) -> RoomRow | None:
        """(room version, forward extremities, whether its state is partial:
        joined with members omitted and not resynced yet, schema/0031)."""
        row = await self.db.fetchrow(
            f"SELECT {room_row_columns('rooms')} FROM rooms WHERE room_id = $1", room_id)
        return room_row(row)

    async def is_partial_state(self, room_id: str) -> bool:
        return bool(await self.db.fetchval(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = $1 AND stream_pos IS NULL", room_id))

    async def forward_extremities(self, room_id: str) -> list[str]:
        value = await self.db.fetchval("SELECT forward_extremities FROM rooms WHERE room_id = $1", room_id)
        return list(value or [])

    async def stored_info(self, event_ids: Iterable[str]) -> dict[str, StoredEventInfo]:
        ids = list(set(event_ids))
        if not ids:
            return {}
        rows = await self.db.fetch(
            """SELECT event_id, room_id, depth, stream_pos, state_group, outlier,
                      rejected_reason IS NOT NULL AS rejected, soft_failed
               FROM events WHERE event_id = ANY($1::TEXT[])""",
            ids,
        )
        return {
            r["event_id"]: StoredEventInfo(
                r["event_id"], r["room_id"], r["depth"], r["stream_pos"], r["state_group"], r["outlier"],
                r["rejected"], r["soft_failed"],
            )
            for r in rows
        }

    async def min_dag_depth(self, room_id: str) -> int | None:
        """The lowest depth of the room's DAG here (events that are not
        outliers, rejected or soft-failed; backfilled ones included)."""
        value = await self.db.fetchval(
            """SELECT min(depth) FROM events
               WHERE room_id = $1 AND NOT outlier AND rejected_reason IS NULL AND NOT soft_failed""",
            room_id,
        )
        return None if value is None else int(value)

    async def with_successors(self, event_ids: Iterable[str]) -> set[str]:
        """Those of ``event_ids`` that are a prev_event of a stored event
        that is part of the room's DAG (not an outlier, rejected or
        soft-failed): they can no longer be forward extremities."""
        ids = list(set(event_ids))
        if not ids:
            return set()
        rows = await self.db.fetch(
            """SELECT DISTINCT g.prev_event_id FROM event_edges g JOIN events e ON e.event_id = g.event_id
               WHERE g.prev_event_id = ANY($1::TEXT[])
                 AND NOT e.outlier AND e.rejected_reason IS NULL AND NOT e.soft_failed""",
            ids,
        )
        return {r["prev_event_id"] for r in rows}

    async def auth_chain_events(
        self, event_ids: Iterable[str], room_version: RoomVersion, *, include_given: bool = True
    ) -> tuple[dict[str, Event], set[str]]:
        """The events and their whole auth chains (through stored auth
        edges), and which of them were rejected. ``include_given=False``:
        the auth chains only (a given event is in it only when another
        given event's chain reaches it)."""
        ids = list(set(event_ids))
        if not ids:
            return {}, set()
        start = "SELECT unnest($1::TEXT[])" if include_given else \
            "SELECT auth_event_id FROM event_auth_edges WHERE event_id = ANY($1::TEXT[])"
        rows = await self.db.fetch(
            f"""WITH RECURSIVE chain (event_id) AS (
                   {start}
                   UNION
                   SELECT a.auth_event_id FROM event_auth_edges a JOIN chain c ON a.event_id = c.event_id
               )
               SELECT e.event_id, e.pdu, e.rejected_reason IS NOT NULL AS rejected
               FROM events e JOIN chain c ON e.event_id = c.event_id""",
            ids,
        )
        events = {r["event_id"]: Event(orjson.loads(r["pdu"]), r["event_id"], room_version) for r in rows}
        return events, {r["event_id"] for r in rows if r["rejected"]}

    async def batch_lookup(
        self, info_ids: Iterable[str], event_ids: Iterable[str], successor_ids: Iterable[str],
        room_version: RoomVersion,
    ) -> BatchLookup:
        """In one round trip: ``stored_info`` of ``info_ids`` and
        ``event_ids``, ``events_by_id(event_ids)`` (events, rejected ones),
        ``with_successors(successor_ids)``."""
        rows = await self.db.fetch(BATCH_LOOKUP_SQL, *batch_lookup_args(info_ids, event_ids, successor_ids))
        return parse_batch_lookup(rows, room_version)

    async def events_by_id(
        self, event_ids: Iterable[str], room_version: RoomVersion
    ) -> tuple[dict[str, Event], set[str]]:
        """The stored events among ``event_ids`` (not their auth chains),
        and which of them were rejected."""
        ids = list(set(event_ids))
        if not ids:
            return {}, set()
        rows = await self.db.fetch(
            """SELECT event_id, pdu, rejected_reason IS NOT NULL AS rejected
               FROM events WHERE event_id = ANY($1::TEXT[])""",
            ids,
        )
        events = {r["event_id"]: Event(orjson.loads(r["pdu"]), r["event_id"], room_version) for r in rows}
        return events, {r["event_id"] for r in rows if r["rejected"]}

    # -- state, kept here for the callers that read it through EventStore --
    async def state_ids_for_group(self, group: int) -> dict[StateKey, str]:
        return await self.state.state_ids_for_group(group)

    async def state_ids_for_groups(
        self, groups: Iterable[int], *, members: Mapping[int, Iterable[str]] | None = None
    ) -> dict[int, dict[StateKey, str]]:
        return await self.state.state_ids_for_groups(groups, members=members)

    async def server_view_for_groups(self, groups: Iterable[int], server_name: str) -> dict[int, dict[StateKey, str]]:
        return await self.state.server_view_for_groups(groups, server_name)

    async def event_state_group(self, event_id: str) -> int | None:
        return await self.state.event_state_group(event_id)

    async def state_group_at(self, room_id: str, upto_pos: int) -> int | None:
        return await self.state.state_group_at(room_id, upto_pos)

    async def state_groups_at(self, points: Sequence[tuple[str, int]]) -> dict[str, int]:
        return await self.state.state_groups_at(points)

    async def get_pdus(self, event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(set(event_ids))
        if not ids:
            return {}
        rows = await self.db.fetch("SELECT event_id, pdu FROM events WHERE event_id = ANY($1::TEXT[])", ids)
        return {r["event_id"]: orjson.loads(r["pdu"]) for r in rows}

    async def event_for_txn(self, user_id: str, device_id: str, txn_id: str, endpoint: str) -> str | None:
        event_id: str | None = await self.db.fetchval(
            """SELECT event_id FROM event_txn_ids
               WHERE user_id = $1 AND device_id = $2 AND txn_id = $3 AND endpoint = $4""",
            user_id, device_id, txn_id, endpoint,
        )
        return event_id


# (room version, forward extremities, whether its state is partial)
RoomRow = tuple[str, list[str], bool]


def room_row_columns(rooms: str) -> str:
    """The columns of a ``RoomRow``, read from the ``rooms`` row named
    ``rooms`` in the statement (a constant of the caller's)."""
    return f"""{rooms}.room_version, {rooms}.forward_extremities,
               EXISTS (SELECT 1 FROM partial_state_rooms p
                       WHERE p.room_id = {rooms}.room_id AND p.stream_pos IS NULL) AS partial"""


def room_row(row: Any) -> RoomRow | None:
    """A ``RoomRow`` from ``room_row_columns`` (None: no such room)."""
    if row is None or row["room_version"] is None:
        return None
    return str(row["room_version"]), list(row["forward_extremities"] or []), bool(row["partial"])

# (stored infos, events, rejected ones among them, ids with a successor)
BatchLookup = tuple[dict[str, StoredEventInfo], dict[str, Event], set[str], set[str]]

# ``EventStore.batch_lookup``'s statement ($1 info ids, $2 event ids, $3
# successor ids: ``batch_lookup_args``), for a caller that reads it along
# with other rows (storage/federation_inbound.py)
BATCH_LOOKUP_SQL = """SELECT FALSE AS successor, event_id, room_id, depth, stream_pos, state_group, outlier,
                      rejected_reason IS NOT NULL AS rejected, soft_failed,
                      CASE WHEN event_id = ANY($2::TEXT[]) THEN pdu END AS pdu
               FROM events WHERE event_id = ANY($1::TEXT[]) OR event_id = ANY($2::TEXT[])
               UNION ALL
               SELECT DISTINCT TRUE, g.prev_event_id, NULL::TEXT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT,
                      NULL::BOOLEAN, NULL::BOOLEAN, NULL::BOOLEAN, NULL::TEXT
               FROM event_edges g JOIN events e ON e.event_id = g.event_id
               WHERE g.prev_event_id = ANY($3::TEXT[])
                 AND NOT e.outlier AND e.rejected_reason IS NULL AND NOT e.soft_failed"""


def batch_lookup_args(
    info_ids: Iterable[str], event_ids: Iterable[str], successor_ids: Iterable[str]
) -> tuple[list[str], list[str], list[str]]:
    return list(set(info_ids)), list(set(event_ids)), list(set(successor_ids))


def parse_batch_lookup(rows: Iterable[Any], room_version: RoomVersion) -> BatchLookup:
    """``BATCH_LOOKUP_SQL``'s rows (rows whose ``successor`` is NULL are
    skipped: a caller's own)."""
    infos: dict[str, StoredEventInfo] = {}
    events: dict[str, Event] = {}
    rejected: set[str] = set()
    successors: set[str] = set()
    for r in rows:
        eid = r["event_id"]
        if r["successor"] is None:
            continue
        if r["successor"]:
            successors.add(eid)
            continue
        infos[eid] = StoredEventInfo(eid, r["room_id"], r["depth"], r["stream_pos"], r["state_group"],
                                     r["outlier"], r["rejected"], r["soft_failed"])
        if r["pdu"] is not None:
            events[eid] = Event(orjson.loads(r["pdu"]), eid, room_version)
            if r["rejected"]:
                rejected.add(eid)
    return infos, events, rejected, successors
