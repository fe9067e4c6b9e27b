"""Events and the room DAG: the events themselves (stored once, as the PDU
and the client-format JSON), their prev and auth edges, the room's forward
extremities, transaction ids and relations; reading events back and
listing them (timelines by stream position, history in DAG order).

State (state groups, current state, memberships) lives in room_state.py.
Inserts go through ``insert_events``, called by the persister only
(services/persister.py): the one door into a room.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import asyncpg
import orjson

from ..protocol.events import Event, StateKey
from ..protocol.room_versions import RoomVersion
from .database import Database
from .room_state import StateStore
from .stream import SingleStatement

_MAX_POS = 2**63 - 1


class StaleRoomState(Exception):
    """The room's forward extremities changed under us (another writer)."""


class DuplicateTransaction(Exception):
    """The (user, device, txn id) was used by a concurrent request."""


@dataclass(frozen=True)
class RowInsert:
    """One more row for ``insert_events`` to write, in its statement (so
    it commits exactly when the events do, without a round trip of its
    own): ``table`` and ``columns`` (name, SQL type) are the code's
    constants, ``values`` go as bind parameters; ``conflict`` is the
    insert's ON CONFLICT clause (a constant too)."""

    table: str
    columns: tuple[tuple[str, str], ...]
    values: tuple[Any, ...]
    conflict: str = ""


@dataclass
class StoredEvent:
    """One row of ``events`` as the persister writes it."""

    event: Event
    stream_pos: int | None  # None: outliers, rejected and soft-failed events
    pdu_json: str
    client_json: str
    state_group: int | None  # state after the event (None for outliers)
    current_state_group: int | None  # the room's resolved state after it
    outlier: bool = False
    rejected_reason: str | None = None
    soft_failed: bool = False
    txn: tuple[str, str, str, str] | None = None  # user, device, txn id, endpoint
    relation: tuple[str, str, str | None] | None = None  # relates_to, rel_type, thread_id


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

@dataclass
class EventRow:
    event_id: str
    room_id: str
    stream_pos: int | None
    type: str
    state_key: str | None
    sender: str
    client: str
    sender_device: str | None = None
    txn_id: str | None = None
    membership: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    depth: int | None = None  # read by history listings only
    # ``client`` as an orjson.Fragment, made once for every response that
    # carries the row (history.serve_event: a fan-out's members share rows)
    fragment: Any = field(default=None, repr=False, compare=False)


_ROW_COLUMNS = "event_id, room_id, stream_pos, type, state_key, sender, client, sender_device, txn_id, membership"


# a point in a room's history: (depth, stream position), depth None for a
# stream token
HistoryKey = tuple[int | None, int]


def _row(r: asyncpg.Record) -> EventRow:
    return EventRow(
        r["event_id"], r["room_id"], r["stream_pos"], r["type"], r["state_key"], r["sender"], r["client"],
        r["sender_device"], r["txn_id"], r["membership"], depth=r.get("depth"),
    )


async def insert_events(
    conn: asyncpg.Connection,
    room_id: str,
    items: Sequence[StoredEvent],
    *,
    expected_extremities: Sequence[str] | None,
    new_extremities: Sequence[str] | None,
    allocate: int = 0,
    also: RowInsert | None = None,
) -> list[int]:
    """Write ``items`` inside the caller's transaction, with their DAG edges
    and transaction ids, and set the room's forward extremities to
    ``new_extremities`` (None: unchanged).

    With ``expected_extremities`` the update is a compare-and-set and every
    insert is gated on it, all in one statement (one round trip on the send
    path): a stale head writes nothing and raises StaleRoomState.

    ``allocate``: the same statement takes this many stream positions
    (``StreamStore.write_many(allocate=False)``); the items' ``stream_pos``
    are then 1-based indexes into them, in increasing order, which are
    replaced by the positions. Returns the positions taken (sorted).

    ``also``: a row of the caller's written by the same statement (none
    when the compare-and-set fails).

    On a ``SingleStatement`` (a one-statement stream write) the statement
    also deletes the write's reservation, and fails if it is gone."""
    evs = [it.event for it in items]
    edges = [(e.event_id, p) for e in evs for p in e.prev_event_ids]
    auth_edges = [(e.event_id, a) for e in evs for a in e.auth_event_ids]
    txns = [(it.txn, it.event) for it in items if it.txn is not None]
    # ($2 and $3 are NULL when unused: every variant names them, for their types)
    if new_extremities is None:
        moved_sql = "SELECT 1 WHERE $2::TEXT[] IS NULL AND $3::TEXT[] IS NULL"
    elif expected_extremities is None:
        moved_sql = """UPDATE rooms SET forward_extremities = $3::TEXT[]
                       WHERE room_id = $1 AND $2::TEXT[] IS NULL RETURNING 1"""
    else:
        moved_sql = """UPDATE rooms SET forward_extremities = $3::TEXT[]
                       WHERE room_id = $1 AND forward_extremities = $2::TEXT[] RETURNING 1"""
    # $34: how many positions to take here (0: the items carry them).
    # CockroachDB (v20.2+) takes this form as is: `AS MATERIALIZED` (its
    # PR 47341), an ordered aggregate, and a subscript on a scalar subquery
    # (its grammar: c_expr = d_expr array_subscripts, d_expr includes
    # select_with_parens); no dialect switch is needed here.
    alloc_sql = """alloc AS MATERIALIZED (
                   SELECT array_agg(p ORDER BY p) AS a
                   FROM (SELECT nextval('stream_seq') AS p FROM generate_series(1, $34::INT)) AS s),"""
    pos_sql = "(SELECT a FROM alloc)[u.stream_pos::INT]" if allocate else "u.stream_pos"
    also_sql = ""
    if also is not None:  # its values from $35 on
        also_sql = f""",
               also AS (
                   INSERT INTO {also.table} ({", ".join(c for c, _ in also.columns)})
                   SELECT {", ".join(f"${35 + i}::{t}" for i, (_, t) in enumerate(also.columns))}
                   WHERE EXISTS (SELECT 1 FROM moved) {also.conflict} RETURNING 1)"""
    release_args: tuple[str, ...] = ()
    release_check = ""
    if isinstance(conn, SingleStatement):
        param = 35 + (0 if also is None else len(also.values))
        also_sql += f""",
               {conn.ctes(param)}"""
        release_check = f", {conn.checks()}"
        release_args = (conn.token,)
    try:
        row = await conn.fetchrow(
            f"""WITH {alloc_sql if allocate else ""} moved AS ({moved_sql}),
               ev AS (
                   INSERT INTO events (event_id, room_id, stream_pos, depth, type, state_key, sender,
                                       origin_server_ts, membership, pdu, client, state_group, relates_to,
                                       rel_type, thread_id, sender_device, txn_id, current_state_group,
                                       outlier, rejected_reason, soft_failed)
                   SELECT u.event_id, $1, {pos_sql}, u.depth, u.type, u.state_key, u.sender,
                          u.origin_server_ts, u.membership, u.pdu, u.client, u.state_group, u.relates_to,
                          u.rel_type, u.thread_id, u.sender_device, u.txn_id, u.csg, u.outlier, u.rejected,
                          u.soft_failed
                   FROM unnest($4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::TEXT[],
                               $9::TEXT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[],
                               $14::BIGINT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::TEXT[], $19::TEXT[],
                               $30::BIGINT[], $31::BOOLEAN[], $32::TEXT[], $33::BOOLEAN[])
                        AS u(event_id, stream_pos, depth, type, state_key, sender, origin_server_ts, membership,
                             pdu, client, state_group, relates_to, rel_type, thread_id, sender_device, txn_id,
                             csg, outlier, rejected, soft_failed)
                   WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1),
               prev AS (
                   INSERT INTO event_edges (event_id, prev_event_id)
                   SELECT * FROM unnest($20::TEXT[], $21::TEXT[]) WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1),
               auth AS (
                   INSERT INTO event_auth_edges (event_id, auth_event_id)
                   SELECT * FROM unnest($22::TEXT[], $23::TEXT[]) WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1),
               txn AS (
                   INSERT INTO event_txn_ids (user_id, device_id, txn_id, endpoint, event_id, created_ts)
                   SELECT * FROM unnest($24::TEXT[], $25::TEXT[], $26::TEXT[], $27::TEXT[], $28::TEXT[],
                                        $29::BIGINT[])
                   WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1){also_sql}
               SELECT (SELECT count(*) FROM moved) AS moved,
                      {"(SELECT a FROM alloc)" if allocate else "$34::INT"} AS taken{release_check}""",
            room_id,
            None if expected_extremities is None else list(expected_extremities),
            None if new_extremities is None else list(new_extremities),
            [e.event_id for e in evs],
            [it.stream_pos for it in items],
            [e.depth for e in evs],
            [e.type for e in evs],
            [e.state_key for e in evs],
            [e.sender for e in evs],
            [e.origin_server_ts for e in evs],
            [e.membership if e.type == "m.room.member" else None for e in evs],
            [it.pdu_json for it in items],
            [it.client_json for it in items],
            [it.state_group for it in items],
            [it.relation[0] if it.relation else None for it in items],
            [it.relation[1] if it.relation else None for it in items],
            [it.relation[2] if it.relation else None for it in items],
            [it.txn[1] if it.txn else None for it in items],
            [it.txn[2] if it.txn else None for it in items],
            [a for a, _ in edges], [b for _, b in edges],
            [a for a, _ in auth_edges], [b for _, b in auth_edges],
            [t[0] for t, _ in txns], [t[1] for t, _ in txns], [t[2] for t, _ in txns], [t[3] for t, _ in txns],
            [e.event_id for _, e in txns], [e.origin_server_ts for _, e in txns],
            [it.current_state_group for it in items],
            [it.outlier for it in items],
            [it.rejected_reason for it in items],
            [it.soft_failed for it in items],
            allocate,
            *(() if also is None else also.values),
            *release_args,
        )
    except asyncpg.UniqueViolationError as e:
        where = f"{getattr(e, 'constraint_name', '')} {getattr(e, 'table_name', '')} {e}"
        if "event_txn_ids" in where:
            # the same request again (a client retry): the whole batch
            # rolls back and the caller answers with the first event
            raise DuplicateTransaction(txns[0][0][2] if txns else "") from None
        raise
    assert row is not None
    if not row["moved"]:
        raise StaleRoomState(room_id)
    if not allocate:
        return []
    taken = sorted(row["taken"])
    for it in items:
        if it.stream_pos is not None:
            it.stream_pos = taken[it.stream_pos - 1]
    return taken


async def delete_outliers(conn: asyncpg.Connection, event_ids: Sequence[str]) -> None:
    """Forget the outlier rows of events that are persisted again as part
    of the room's DAG (the persister writes them anew)."""
    await conn.execute(
        """WITH gone AS (DELETE FROM events WHERE event_id = ANY($1::TEXT[]) AND outlier RETURNING event_id),
                p AS (DELETE FROM event_edges WHERE event_id IN (SELECT event_id FROM gone) RETURNING 1)
           DELETE FROM event_auth_edges WHERE event_id IN (SELECT event_id FROM gone)""",
        list(event_ids),
    )


async def apply_redactions(conn: asyncpg.Connection, room_id: str, redactions: Sequence[tuple[str, str, str, str]]) -> None:
    """(target id, redacted PDU, redacted client JSON, redaction event id)."""
    for target, pdu, client, by in redactions:
        await conn.execute(
            """UPDATE events SET pdu = $2, client = $3, redacted_by = $4
               WHERE event_id = $1 AND room_id = $5""",
            target, pdu, client, by, room_id,
        )


class EventStore:
    """Reads of events and the DAG. ``db`` is a Database, or a connection
    inside a transaction (both have fetch/fetchrow/fetchval)."""

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

    async def get_rows(self, event_ids: Iterable[str]) -> dict[str, EventRow]:
        ids = list(set(event_ids))
        if not ids:
            return {}
        rows = await self.db.fetch(f"SELECT {_ROW_COLUMNS} FROM events WHERE event_id = ANY($1::TEXT[])", ids)
        return {r["event_id"]: _row(r) for r in rows}

    async def get_row(self, event_id: str) -> EventRow | None:
        return (await self.get_rows([event_id])).get(event_id)

    async def event_for_txn(self, user_id: str, device_id: str, txn_id: str, endpoint: str) -> str | None:
        event_id: str | None = await self.db.fetchval(
            """SELECT event_id FROM event_txn_ids
               WHERE user_id = $1 AND device_id = $2 AND txn_id = $3 AND endpoint = $4""",
            user_id, device_id, txn_id, endpoint,
        )
        return event_id

    async def timeline(
        self,
        room_id: str,
        *,
        after: int | None,
        upto: int | None,
        limit: int,
        backwards: bool,
        types: Sequence[str] | None = None,
        not_types: Sequence[str] | None = None,
        senders: Sequence[str] | None = None,
        not_senders: Sequence[str] | None = None,
    ) -> list[EventRow]:
        """Events of a room with after < stream_pos <= upto, newest first when
        ``backwards`` (else oldest first), at most ``limit``."""
        q = _Query("room_id", room_id)
        q.range(after, upto)
        q.conds.extend(_type_sender_filters(q.arg, types, not_types, senders, not_senders))
        return await self._select(q, limit, backwards)

    async def timelines(
        self,
        ranges: Sequence[tuple[str, int | None, int | None]],
        *,
        limit: int,
        types: Sequence[str] | None = None,
        not_types: Sequence[str] | None = None,
        senders: Sequence[str] | None = None,
        not_senders: Sequence[str] | None = None,
    ) -> dict[str, list[EventRow]]:
        """``timeline(..., backwards=True)`` for many rooms in one query:
        room id -> its newest events with after < stream_pos <= upto."""
        if not ranges:
            return {}
        args: list[Any] = [
            [r for r, _, _ in ranges],
            [0 if lo is None else lo for _, lo, _ in ranges],
            [_MAX_POS if hi is None else hi for _, _, hi in ranges],
        ]

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        conds = _type_sender_filters(arg, types, not_types, senders, not_senders)
        extra = "".join(f" AND {c}" for c in conds)
        rows = await self.db.fetch(
            f"""SELECT e.* FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS r(rid, lo, hi)
                CROSS JOIN LATERAL (
                    SELECT {_ROW_COLUMNS} FROM events
                    WHERE room_id = r.rid AND stream_pos IS NOT NULL AND stream_pos > r.lo
                      AND stream_pos <= r.hi{extra}
                    ORDER BY stream_pos DESC LIMIT {arg(limit)}) AS e""",
            *args,
        )
        out: dict[str, list[EventRow]] = {r: [] for r, _, _ in ranges}
        for row in rows:
            out[row["room_id"]].append(_row(row))
        for found in out.values():
            found.sort(key=lambda e: e.stream_pos or 0, reverse=True)
        return out

    async def history_visibility_changes(self, room_ids: Sequence[str]) -> dict[str, list[tuple[int, Any]]]:
        """room id -> its m.room.history_visibility events as (position,
        content's history_visibility), oldest first."""
        rows = await self.db.fetch(
            """SELECT room_id, stream_pos, client FROM events
               WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.history_visibility' AND state_key = ''
                 AND stream_pos IS NOT NULL
               ORDER BY room_id, stream_pos""",
            list(room_ids),
        )
        out: dict[str, list[tuple[int, Any]]] = {r: [] for r in room_ids}
        for r in rows:
            content = orjson.loads(r["client"]).get("content", {})
            out[r["room_id"]].append((r["stream_pos"], content.get("history_visibility")))
        return out

    async def history_visibility_events(self, room_ids: Sequence[str]) -> dict[str, list[tuple[int | None, Any]]]:
        """room id -> all its m.room.history_visibility events as (position,
        content's history_visibility), outliers (position None) included:
        what ``history_visibility_changes`` and
        ``rooms_with_restricted_history`` read, in one statement. Those
        with a position come oldest first."""
        rows = await self.db.fetch(
            """SELECT room_id, stream_pos, client FROM events
               WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.history_visibility' AND state_key = ''
               ORDER BY room_id, stream_pos""",
            list(set(room_ids)),
        )
        out: dict[str, list[tuple[int | None, Any]]] = {r: [] for r in room_ids}
        for r in rows:
            content = orjson.loads(r["client"]).get("content", {})
            out[r["room_id"]].append((r["stream_pos"], content.get("history_visibility")))
        return out

    async def rooms_with_restricted_history(self, room_ids: Sequence[str]) -> set[str]:
        """The rooms that have (or had) a ``joined`` or ``invited``
        m.room.history_visibility, outliers included (a room joined over
        federation has its state as outliers)."""
        if not room_ids:
            return set()
        rows = await self.db.fetch(
            """SELECT room_id, client FROM events
               WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.history_visibility' AND state_key = ''""",
            list(set(room_ids)),
        )
        return {r["room_id"] for r in rows
                if orjson.loads(r["client"]).get("content", {}).get("history_visibility") in ("joined", "invited")}

    async def user_view_at_events(
        self, event_ids: Sequence[str], user_id: str
    ) -> dict[str, tuple[Any, str | None]]:
        """event id -> (the content's history_visibility, the user's
        membership) in the state after the event (its state group); events
        without a state group are left out."""
        if not event_ids:
            return {}
        rows = await self.db.fetch(
            """WITH RECURSIVE ev AS (
                   SELECT event_id, state_group FROM events
                   WHERE event_id = ANY($1::TEXT[]) AND state_group IS NOT NULL
               ), chain AS (
                   SELECT id AS root, id, prev_group, 0 AS n FROM state_groups
                   WHERE id IN (SELECT state_group FROM ev)
                   UNION ALL
                   SELECT c.root, s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group
               ), view AS (
                   SELECT DISTINCT ON (c.root, e.type) c.root, e.type, x.membership, x.client
                   FROM state_group_entries e JOIN chain c ON e.state_group = c.id
                   JOIN events x ON x.event_id = e.event_id
                   WHERE (e.type = 'm.room.history_visibility' AND e.state_key = '')
                      OR (e.type = 'm.room.member' AND e.state_key = $2)
                   ORDER BY c.root, e.type, c.n
               )
               SELECT ev.event_id, v.type, v.membership, v.client FROM ev LEFT JOIN view v ON v.root = ev.state_group""",
            list(set(event_ids)), user_id,
        )
        out: dict[str, tuple[Any, str | None]] = {}
        for r in rows:
            hv, membership = out.get(r["event_id"], (None, None))
            if r["type"] == "m.room.member":
                membership = r["membership"]
            elif r["type"] is not None:
                hv = orjson.loads(r["client"]).get("content", {}).get("history_visibility")
            out[r["event_id"]] = (hv, membership)
        return out

    async def history(
        self,
        room_id: str,
        *,
        from_key: HistoryKey | None,
        to_key: HistoryKey | None,
        backwards: bool,
        limit: int,
        visible: Sequence[tuple[int | None, int | None]] | None = None,
        types: Sequence[str] | None = None,
        not_types: Sequence[str] | None = None,
        senders: Sequence[str] | None = None,
        not_senders: Sequence[str] | None = None,
    ) -> list[EventRow]:
        """A page of the room's history in DAG order: topological order
        (depth), then stream position; newest first when ``backwards``.

        Keys are (depth, stream position), or (None, stream position) for a
        stream token (e.g. /sync's prev_batch). Backwards: events before
        ``from_key`` (a stream key: at or before the position) and after
        ``to_key``; forwards: after ``from_key``, up to ``to_key``.
        ``visible``: stream ranges (lower, upper] the reader may see."""
        q = _Query("room_id", room_id)
        older, newer = ("<", ">") if backwards else (">", "<")
        if from_key is not None:
            depth, pos = from_key
            if depth is None:
                q.conds.append(f"stream_pos {'<=' if backwards else '>'} {q.arg(pos)}")
            else:
                q.conds.append(f"(depth, stream_pos) {older} ({q.arg(depth)}, {q.arg(pos)})")
        if to_key is not None:
            depth, pos = to_key
            if depth is None:
                q.conds.append(f"stream_pos {'>' if backwards else '<='} {q.arg(pos)}")
            else:
                q.conds.append(f"(depth, stream_pos) {newer}{'' if backwards else '='} ({q.arg(depth)}, {q.arg(pos)})")
        if visible is not None:
            parts = []
            for lo, hi in visible:
                bounds = [f"stream_pos > {q.arg(lo)}"] if lo is not None else []
                if hi is not None:
                    bounds.append(f"stream_pos <= {q.arg(hi)}")
                parts.append("(" + (" AND ".join(bounds) or "TRUE") + ")")
            q.conds.append("(" + (" OR ".join(parts) or "FALSE") + ")")
        q.conds.extend(_type_sender_filters(q.arg, types, not_types, senders, not_senders))
        order = "DESC" if backwards else "ASC"
        rows = await self.db.fetch(
            f"SELECT {_ROW_COLUMNS}, depth FROM events WHERE {' AND '.join(q.conds)} "
            f"ORDER BY depth {order}, stream_pos {order} LIMIT {q.arg(limit)}",
            *q.args,
        )
        return [_row(r) for r in rows]

    async def relations(
        self, event_id: str, rel_type: str | None, event_type: str | None, *, before: int | None,
        after: int | None, limit: int, backwards: bool,
    ) -> list[EventRow]:
        """Events relating to ``event_id`` in after < stream_pos <= before."""
        q = _Query("relates_to", event_id)
        if rel_type is not None:
            q.conds.append(f"rel_type = {q.arg(rel_type)}")
        if event_type is not None:
            q.conds.append(f"type = {q.arg(event_type)}")
        q.range(after, before)
        return await self._select(q, limit, backwards)

    async def thread_roots(self, room_id: str, user_id: str, *, before: int | None, limit: int) -> list[Any]:
        """Thread roots of a room with their latest reply at or before
        ``before``, most recent first: rows of (root, latest_pos, n, mine)."""
        rows: list[Any] = await self.db.fetch(
            """SELECT relates_to AS root, max(stream_pos) AS latest_pos, count(*) AS n,
                      bool_or(sender = $2) AS mine
               FROM events WHERE room_id = $1 AND rel_type = 'm.thread' AND stream_pos IS NOT NULL
               GROUP BY relates_to
               HAVING ($3::BIGINT IS NULL OR max(stream_pos) <= $3)
               ORDER BY latest_pos DESC LIMIT $4""",
            room_id, user_id, before, limit,
        )
        return rows

    async def thread_replies(
        self, room_id: str, roots: Sequence[str], *, before: int | None, limit: int
    ) -> list[EventRow]:
        """The m.thread replies to ``roots`` with positions at or before
        ``before``, newest first, at most ``limit``."""
        q = _Query("room_id", room_id)
        q.conds.append(f"relates_to = ANY({q.arg(list(roots))}::TEXT[])")
        q.conds.append("rel_type = 'm.thread'")
        q.range(None, before)
        return await self._select(q, limit, True)

    async def event_ids_at(self, positions: Iterable[int]) -> dict[int, str]:
        """Stream position -> the event at it."""
        rows = await self.db.fetch(
            "SELECT event_id, stream_pos FROM events WHERE stream_pos = ANY($1::BIGINT[])", list(positions)
        )
        return {r["stream_pos"]: r["event_id"] for r in rows}

    async def _select(self, q: "_Query", limit: int, backwards: bool) -> list[EventRow]:
        order = "DESC" if backwards else "ASC"
        rows = await self.db.fetch(
            f"SELECT {_ROW_COLUMNS} FROM events WHERE {' AND '.join(q.conds)} "
            f"ORDER BY stream_pos {order} LIMIT {q.arg(limit)}",
            *q.args,
        )
        return [_row(r) for r in rows]


class _Query:
    """WHERE conditions with numbered parameters, for event listings."""

    def __init__(self, column: str, value: str) -> None:
        self.args: list[Any] = [value]
        self.conds = [f"{column} = $1", "stream_pos IS NOT NULL"]

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def range(self, after: int | None, upto: int | None) -> None:
        if after is not None:
            self.conds.append(f"stream_pos > {self.arg(after)}")
        if upto is not None:
            self.conds.append(f"stream_pos <= {self.arg(upto)}")


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with ``prefix``: its
    ``\\``, ``%`` and ``_`` escaped with the backslash, LIKE's default escape
    character on both engines (``starts_with()`` is PostgreSQL-only)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _type_sender_filters(arg: Any, types: Any, not_types: Any, senders: Any, not_senders: Any) -> list[str]:
    conds: list[str] = []
    if types is not None:
        exact = [t for t in types if not t.endswith("*")]
        prefixes = [t[:-1] for t in types if t.endswith("*")]
        parts = []
        if exact:
            parts.append(f"type = ANY({arg(exact)}::TEXT[])")
        for p in prefixes:
            parts.append(f"type LIKE {arg(like_prefix(p))}")
        conds.append("(" + (" OR ".join(parts) or "FALSE") + ")")
    if not_types:
        exact = [t for t in not_types if not t.endswith("*")]
        prefixes = [t[:-1] for t in not_types if t.endswith("*")]
        if exact:
            conds.append(f"NOT (type = ANY({arg(exact)}::TEXT[]))")
        for p in prefixes:
            conds.append(f"NOT (type LIKE {arg(like_prefix(p))})")
    if senders is not None:
        conds.append(f"sender = ANY({arg(list(senders))}::TEXT[])")
    if not_senders:
        conds.append(f"NOT (sender = ANY({arg(list(not_senders))}::TEXT[]))")
    return conds


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
