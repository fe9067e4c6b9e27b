"""Events and the room DAG: persisting a batch of new events (with edges,
forward extremities, state groups, current state, memberships, transaction
ids and redactions) in one transaction, and reading events back.

State groups: the state after each event is a *state group*. A state event
starts a new group whose id is that event's stream position, holding one
delta entry on top of its ``prev_group``; after ``SNAPSHOT_EVERY`` deltas a
full snapshot is written instead, so a lookup walks a bounded chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import asyncpg
import orjson

from ..protocol.events import Event, StateKey
from ..protocol.room_versions import RoomVersion
from .database import Database

SNAPSHOT_EVERY = 64
_MAX_POS = 2**63 - 1


class StaleRoomState(Exception):
    """The room's forward extremities changed under us (another writer)."""


class DuplicateTransaction(Exception):
    """The (user, device, txn id) was used by a concurrent request."""


@dataclass
class NewStateGroup:
    id: int
    prev_group: int | None
    chain_length: int
    entries: dict[StateKey, str]  # the delta, or the full state for a snapshot


@dataclass
class PersistItem:
    event: Event
    stream_pos: int
    pdu_json: str
    client_json: str
    state_group: int  # state after the event
    new_state_group: NewStateGroup | None = None
    txn: tuple[str, str, str, str] | None = None  # user, device, txn id, endpoint
    relation: tuple[str, str, str | None] | None = None  # relates_to, rel_type, thread_id
    redaction: tuple[str, str, str] | None = None  # target id, redacted pdu, redacted client


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


_ROW_COLUMNS = "event_id, room_id, stream_pos, type, state_key, sender, client, sender_device, txn_id, membership"


def _row(r: asyncpg.Record) -> EventRow:
    return EventRow(
        r["event_id"], r["room_id"], r["stream_pos"], r["type"], r["state_key"], r["sender"], r["client"],
        r["sender_device"], r["txn_id"], r["membership"],
    )


async def persist_events(
    conn: asyncpg.Connection,
    room_id: str,
    items: Sequence[PersistItem],
    *,
    expected_extremities: Iterable[str],
    new_extremities: Iterable[str],
) -> None:
    """Write ``items`` (in order) inside the caller's transaction.

    The compare-and-set of the forward extremities, the events, their DAG
    edges and the transaction ids go in one statement (one round trip on
    the send path): every insert is gated on the compare-and-set, so a
    stale head writes nothing."""
    evs = [it.event for it in items]
    edges = [(e.event_id, p) for e in evs for p in e.prev_event_ids]
    auth_edges = [(e.event_id, a) for e in evs for a in e.auth_event_ids]
    txns = [(it.txn, it.event) for it in items if it.txn is not None]
    try:
        moved = await conn.fetchval(
            """WITH moved AS (
                   UPDATE rooms SET forward_extremities = $3::TEXT[]
                   WHERE room_id = $1 AND forward_extremities = $2::TEXT[] RETURNING 1),
               ev AS (
                   INSERT INTO events (event_id, room_id, stream_pos, depth, type, state_key, sender,
                                       origin_server_ts, membership, pdu, client, state_group, relates_to,
                                       rel_type, thread_id, sender_device, txn_id)
                   SELECT u.event_id, $1, u.stream_pos, u.depth, u.type, u.state_key, u.sender,
                          u.origin_server_ts, u.membership, u.pdu, u.client, u.state_group, u.relates_to,
                          u.rel_type, u.thread_id, u.sender_device, u.txn_id
                   FROM unnest($4::TEXT[], $5::BIGINT[], $6::BIGINT[], $7::TEXT[], $8::TEXT[],
                               $9::TEXT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[], $13::TEXT[],
                               $14::BIGINT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::TEXT[], $19::TEXT[])
                        AS u(event_id, stream_pos, depth, type, state_key, sender, origin_server_ts, membership,
                             pdu, client, state_group, relates_to, rel_type, thread_id, sender_device, txn_id)
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
                   WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1)
               SELECT count(*) FROM moved""",
            room_id, list(expected_extremities), list(new_extremities),
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
        )
    except asyncpg.UniqueViolationError as e:
        where = f"{getattr(e, 'constraint_name', '')} {getattr(e, 'table_name', '')} {e}"
        if "event_txn_ids" in where:
            # the same request again (a client retry): the whole batch
            # rolls back and the caller answers with the first event
            raise DuplicateTransaction(txns[0][0][2] if txns else "") from None
        raise
    if not moved:
        raise StaleRoomState(room_id)

    groups = [it.new_state_group for it in items if it.new_state_group is not None]
    if groups:
        await _insert_state_groups(conn, room_id, groups)
    state_items = [it for it in items if it.event.state_key is not None]
    if state_items:
        # Later items win for the same key: apply in order, keep the last.
        latest: dict[StateKey, Event] = {}
        for it in state_items:
            latest[it.event.state_tuple] = it.event
        await conn.execute(
            """INSERT INTO current_state (room_id, type, state_key, event_id, membership)
               SELECT $1, * FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
               ON CONFLICT (room_id, type, state_key)
               DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership""",
            room_id,
            [k[0] for k in latest], [k[1] for k in latest], [e.event_id for e in latest.values()],
            [e.membership if e.type == "m.room.member" else None for e in latest.values()],
        )
    members = [it for it in items if it.event.type == "m.room.member" and it.event.membership]
    if members:
        await conn.execute(
            """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
               SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[])""",
            [it.event.event_id for it in members], [it.event.state_key for it in members],
            [room_id] * len(members), [it.event.sender for it in members],
            [it.event.membership for it in members], [it.stream_pos for it in members],
        )
        left = [(it.event.state_key, room_id) for it in members if it.event.membership == "join"]
        if left:  # re-joining un-forgets the room
            await conn.execute(
                "DELETE FROM forgotten_rooms WHERE room_id = $1 AND user_id = ANY($2::TEXT[])",
                room_id, [u for u, _ in left],
            )
    for it in items:
        if it.redaction is not None:
            target, pdu, client = it.redaction
            await conn.execute(
                """UPDATE events SET pdu = $2, client = $3, redacted_by = $4
                   WHERE event_id = $1 AND room_id = $5""",
                target, pdu, client, it.event.event_id, room_id,
            )


async def _insert_state_groups(conn: asyncpg.Connection, room_id: str, groups: list[NewStateGroup]) -> None:
    await conn.execute(
        """INSERT INTO state_groups (id, room_id, prev_group, chain_length)
           SELECT g, $1, p, c FROM unnest($2::BIGINT[], $3::BIGINT[], $4::INT[]) AS t(g, p, c)""",
        room_id, [g.id for g in groups], [g.prev_group for g in groups], [g.chain_length for g in groups],
    )
    rows = [(g.id, k[0], k[1], eid) for g in groups for k, eid in g.entries.items()]
    await conn.execute(
        """INSERT INTO state_group_entries (state_group, type, state_key, event_id)
           SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[])""",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
    )


class EventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

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

    async def forward_extremities(self, room_id: str) -> list[str]:
        value = await self.db.fetchval("SELECT forward_extremities FROM rooms WHERE room_id = $1", room_id)
        return list(value or [])

    async def current_state_events(self, room_id: str, room_version: RoomVersion) -> dict[StateKey, Event]:
        rows = await self.db.fetch(
            """SELECT c.type, c.state_key, e.event_id, e.pdu FROM current_state c
               JOIN events e ON e.event_id = c.event_id WHERE c.room_id = $1""",
            room_id,
        )
        return {(r["type"], r["state_key"]): Event(orjson.loads(r["pdu"]), r["event_id"], room_version) for r in rows}

    async def room_head(self, room_id: str) -> tuple[int, int] | None:
        """(max depth, state group after the newest event) of the room."""
        row = await self.db.fetchrow(
            """SELECT depth, state_group FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL
               ORDER BY stream_pos DESC LIMIT 1""",
            room_id,
        )
        if row is None:
            return None
        max_depth = await self.db.fetchval("SELECT max(depth) FROM events WHERE room_id = $1", room_id)
        return max_depth, row["state_group"]

    async def state_group_chain_length(self, group: int) -> int:
        return await self.db.fetchval("SELECT chain_length FROM state_groups WHERE id = $1", group) or 0

    async def state_ids_for_group(self, group: int) -> dict[StateKey, str]:
        rows = await self.db.fetch(
            """WITH RECURSIVE chain (id, prev_group, n) AS (
                   SELECT id, prev_group, 0 FROM state_groups WHERE id = $1
                   UNION ALL
                   SELECT s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group
               )
               SELECT DISTINCT ON (e.type, e.state_key) e.type, e.state_key, e.event_id
               FROM state_group_entries e JOIN chain c ON e.state_group = c.id
               ORDER BY e.type, e.state_key, c.n""",
            group,
        )
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

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

    async def event_state_group(self, event_id: str) -> int | None:
        group: int | None = await self.db.fetchval("SELECT state_group FROM events WHERE event_id = $1", event_id)
        return group

    async def state_group_at(self, room_id: str, upto_pos: int) -> int | None:
        """The state group after the room's last event at or before a position."""
        group: int | None = await self.db.fetchval(
            """SELECT state_group FROM events WHERE room_id = $1 AND stream_pos <= $2
               ORDER BY stream_pos DESC LIMIT 1""",
            room_id, upto_pos,
        )
        return group

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

    async def state_groups_at(self, points: Sequence[tuple[str, int]]) -> dict[str, int]:
        """``state_group_at`` for many rooms in one query."""
        if not points:
            return {}
        rows = await self.db.fetch(
            """SELECT r.rid, g.state_group FROM unnest($1::TEXT[], $2::BIGINT[]) AS r(rid, pos)
               CROSS JOIN LATERAL (
                   SELECT state_group FROM events WHERE room_id = r.rid AND stream_pos <= r.pos
                   ORDER BY stream_pos DESC LIMIT 1) AS g""",
            [r for r, _ in points], [p for _, p in points],
        )
        return {r["rid"]: r["state_group"] for r in rows if r["state_group"] is not None}

    async def state_ids_for_groups(self, groups: Iterable[int]) -> dict[int, dict[StateKey, str]]:
        """``state_ids_for_group`` for many groups in one query."""
        wanted = sorted(set(groups))
        if not wanted:
            return {}
        rows = await self.db.fetch(
            """WITH RECURSIVE chain (root, id, prev_group, n) AS (
                   SELECT id, id, prev_group, 0 FROM state_groups WHERE id = ANY($1::BIGINT[])
                   UNION ALL
                   SELECT c.root, s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group
               )
               SELECT DISTINCT ON (c.root, e.type, e.state_key) c.root, e.type, e.state_key, e.event_id
               FROM state_group_entries e JOIN chain c ON e.state_group = c.id
               ORDER BY c.root, e.type, e.state_key, c.n""",
            wanted,
        )
        out: dict[int, dict[StateKey, str]] = {g: {} for g in wanted}
        for r in rows:
            out[r["root"]][(r["type"], r["state_key"])] = r["event_id"]
        return out

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
