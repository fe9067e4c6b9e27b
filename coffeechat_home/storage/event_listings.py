"""Listings of events in client format (``EventRow``): rows by id, a
room's timeline by stream position, its history in DAG order, relations
and threads, and the history-visibility reads that filter what a reader
may see. ``EventStore`` (events.py) has these methods through
``EventListings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import asyncpg
import orjson

from .database import Database

_MAX_POS = 2**63 - 1


@dataclass(slots=True)
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
    depth: int | None = None  # read by history listings only
    # ``client`` as an orjson.Fragment, made once for every response that
    # carries the row (history_tokens.serve_event: a fan-out's members share rows)
    fragment: Any = field(default=None, repr=False, compare=False)


ROW_COLUMNS = "event_id, room_id, stream_pos, type, state_key, sender, client, sender_device, txn_id, membership"


# a point in a room's history: (depth, stream position), depth None for a
# stream token
HistoryKey = tuple[int | None, int]


def _restricting(client: str) -> bool:
    """Whether an m.room.history_visibility event (its client JSON)
    restricts history to members: ``joined`` or ``invited``."""
    return orjson.loads(client).get("content", {}).get("history_visibility") in ("joined", "invited")


@dataclass(frozen=True)
class EventsRead:
    """Every timeline event of a range of positions (``rows``: the columns of
    ``ROW_COLUMNS`` in that order, by position), and the
    ``m.room.history_visibility`` events of their rooms (``visibility``:
    [room id, client JSON]) (``StreamStore.position_changes_and_events``)."""

    rows: list[list[Any]]
    visibility: list[list[Any]]


def timeline_from_read(read: EventsRead, room_id: str, limit: int) -> tuple[list[EventRow], bool]:
    """What ``timeline_and_restriction(room_id, after, upto, limit)``
    without filters returns, from ``read`` (``StreamStore.
    position_changes_and_events``), which holds every event of (after, upto]."""
    mine = sorted((r for r in read.rows if r[1] == room_id), key=lambda r: r[2], reverse=True)[:limit]
    rows = [EventRow(*r) for r in mine]
    return rows, any(_restricting(client) for room, client in read.visibility if room == room_id)


def _row(r: asyncpg.Record) -> EventRow:
    return EventRow(
        r["event_id"], r["room_id"], r["stream_pos"], r["type"], r["state_key"], r["sender"], r["client"],
        r["sender_device"], r["txn_id"], r["membership"], depth=r.get("depth"),
    )


class EventListings:
    """``EventStore``'s reads of ``EventRow``s (a mixin: ``db`` is the
    store's Database or connection)."""

    db: Database | Any

    async def get_rows(self, event_ids: Iterable[str]) -> dict[str, EventRow]:
        ids = list(set(event_ids))
        if not ids:
            return {}
        rows = await self.db.fetch(f"SELECT {ROW_COLUMNS} FROM events WHERE event_id = ANY($1::TEXT[])", ids)
        return {r["event_id"]: _row(r) for r in rows}

    async def get_row(self, event_id: str) -> EventRow | None:
        return (await self.get_rows([event_id])).get(event_id)

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
        q = _timeline_query(room_id, after, upto, types, not_types, senders, not_senders)
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
                    SELECT {ROW_COLUMNS} FROM events
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
        return {r["room_id"] for r in rows if _restricting(r["client"])}

    async def timeline_and_restriction(
        self,
        room_id: str,
        *,
        after: int | None,
        upto: int | None,
        limit: int,
        types: Sequence[str] | None = None,
        not_types: Sequence[str] | None = None,
        senders: Sequence[str] | None = None,
        not_senders: Sequence[str] | None = None,
    ) -> tuple[list[EventRow], bool]:
        """``timeline(..., backwards=True)`` and whether the room has (or
        had) a ``joined`` or ``invited`` history visibility
        (``rooms_with_restricted_history``), in one statement: a woken
        /sync asks both about its room, one after the other, and this saves
        it a round trip. Read by the statement that read the rows, the
        answer holds for them (HistoryService.restricts_history)."""
        q = _timeline_query(room_id, after, upto, types, not_types, senders, not_senders)
        rows = await self.db.fetch(
            f"""(SELECT {ROW_COLUMNS}, FALSE AS hv FROM events WHERE {' AND '.join(q.conds)}
                 ORDER BY stream_pos DESC LIMIT {q.arg(limit)})
                UNION ALL
                (SELECT {ROW_COLUMNS}, TRUE AS hv FROM events
                 WHERE room_id = $1 AND type = 'm.room.history_visibility' AND state_key = '')""",
            *q.args,
        )
        timeline = [_row(r) for r in rows if not r["hv"]]
        timeline.sort(key=lambda e: e.stream_pos or 0, reverse=True)
        return timeline, any(_restricting(r["client"]) for r in rows if r["hv"])

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
            f"SELECT {ROW_COLUMNS}, depth FROM events WHERE {' AND '.join(q.conds)} "
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
            f"SELECT {ROW_COLUMNS} FROM events WHERE {' AND '.join(q.conds)} "
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


def _timeline_query(
    room_id: str, after: int | None, upto: int | None, types: Sequence[str] | None,
    not_types: Sequence[str] | None, senders: Sequence[str] | None, not_senders: Sequence[str] | None,
) -> _Query:
    """The conditions of a room's timeline in (after, upto], filtered."""
    q = _Query("room_id", room_id)
    q.range(after, upto)
    q.conds.extend(_type_sender_filters(q.arg, types, not_types, senders, not_senders))
    return q


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
