"""The write side of events and the room DAG: ``insert_events`` writes
events (stored once, as the PDU and the client-format JSON) with their prev
and auth edges, transaction ids and relations, and moves the room's
forward extremities, in one statement; ``delete_outliers`` and
``apply_redactions`` are the persister's other writes to ``events``.

Called by the persister only (services/persister.py): the one door into a
room. Reads are in events.py (the DAG) and event_listings.py (timelines,
history).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Sequence

import asyncpg

from ..protocol.events import Event
from .stream_statements import one_statement_parts


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
    if isinstance(conn, DeferredInsert):
        if also is not None or not allocate or expected_extremities is None or new_extremities is None:
            raise RuntimeError("not a write a shared insert can take")
        shared = await conn.insert(room_id, items, list(expected_extremities), list(new_extremities))
        _place(items, shared)
        return shared
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
    # on a SingleStatement: the reservation's deletion and the guard
    first_param = 35 + (0 if also is None else len(also.values))
    release_ctes, release_check, release_args = one_statement_parts(conn, first_param)
    also_sql += release_ctes
    try:
        row = await conn.fetchrow(
            f"""WITH {alloc_sql if allocate else ""} moved AS ({moved_sql}),
               ev AS (
                   INSERT INTO events ({_EVENTS_COLUMNS})
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
            *_event_columns(items),
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
    _place(items, taken)
    return taken


# The columns both inserts write, in the order they bind them: event_id,
# room_id and stream_pos, then ``_event_columns``' arrays, then the flags.
_EVENTS_COLUMNS = (
    "event_id, room_id, stream_pos, depth, type, state_key, sender, origin_server_ts, membership, pdu, client, "
    "state_group, relates_to, rel_type, thread_id, sender_device, txn_id, current_state_group, outlier, "
    "rejected_reason, soft_failed"
)


def _event_columns(items: Sequence[StoredEvent]) -> list[list[Any]]:
    """The ``events`` columns of an insert from ``depth`` to ``txn_id``, one
    array each, in the order both inserts bind them."""
    evs = [it.event for it in items]
    return [
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
    ]


def _place(items: Sequence[StoredEvent], taken: list[int]) -> None:
    """Replace the items' 1-based indexes by the positions taken."""
    for it in items:
        if it.stream_pos is not None:
            it.stream_pos = taken[it.stream_pos - 1]


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


# -- several rooms' sends in one statement ------------------------------------------------
@dataclass
class _Insert:
    room_id: str
    items: Sequence[StoredEvent]  # stream_pos: 1-based indexes into the positions its events take
    expected: list[str]
    new: list[str]
    fut: "asyncio.Future[list[int]]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class InsertBatch:
    """The one-statement writes of a group-commit transaction
    (storage/group_commit.py), each to a room of its own, as one statement
    instead of one each: a batch of k sends is then two round trips (the
    reservation, then this statement, which also deletes the reservation,
    runs the guards and commits as it ends) instead of k + 2.

    Each write runs as it would alone, on a ``DeferredInsert`` of its own
    (its ``insert_events`` registers there and waits); once every write has
    registered or ended (``all_in``), ``run`` writes them all: one position
    allocation, one compare-and-set per room (a room whose extremities moved
    gets StaleRoomState, as alone; the others are written), the events,
    edges and transaction ids. Any other statement raises before reaching
    the database, as on a ``SingleStatement``."""

    def __init__(self, conn: asyncpg.Connection, writes: int) -> None:
        self._conn = conn
        self._left = writes  # writes neither registered nor ended
        self._inserts: list[_Insert] = []
        self.all_in = asyncio.Event()
        if writes == 0:
            self.all_in.set()

    def connection(self) -> "DeferredInsert":
        return DeferredInsert(self)

    def ended(self, registered: bool) -> None:
        """A write is done (``registered``: after its insert registered)."""
        if not registered:
            self._count_in()

    def _count_in(self) -> None:
        self._left -= 1
        if self._left <= 0:
            self.all_in.set()

    async def _register(self, ins: _Insert) -> list[int]:
        self._inserts.append(ins)
        self._count_in()
        return await ins.fut

    async def run(self) -> None:
        """Write every registered insert; each gets its positions, or
        StaleRoomState, or the statement's error."""
        inserts, self._inserts = self._inserts, []
        if not inserts:
            return
        try:
            moved, taken = await _insert_many(self._conn, inserts)
        except BaseException as e:
            for ins in inserts:
                if not ins.fut.done():
                    ins.fut.set_exception(e if isinstance(e, Exception) else RuntimeError("cancelled"))
            raise
        at = 0
        for ins in inserts:
            mine, at = taken[at:at + len(ins.items)], at + len(ins.items)
            if ins.fut.done():
                continue
            if ins.room_id in moved:
                ins.fut.set_result(mine)
            else:
                ins.fut.set_exception(StaleRoomState(ins.room_id))


class DeferredInsert:
    """A write's connection in an ``InsertBatch``: ``insert_events`` only."""

    def __init__(self, batch: InsertBatch) -> None:
        self._batch = batch
        self.registered = False

    async def insert(self, room_id: str, items: Sequence[StoredEvent], expected: list[str], new: list[str]) -> list[int]:
        if self.registered:
            raise RuntimeError("a shared insert's write ran a second insert")
        if any(it.stream_pos is None or it.outlier or it.rejected_reason is not None or it.soft_failed
               for it in items):
            raise RuntimeError("a shared insert takes timeline events only")
        self.registered = True
        return await self._batch._register(_Insert(room_id, items, expected, new))

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a write in a shared insert called {name}")


async def _insert_many(conn: asyncpg.Connection, inserts: Sequence[_Insert]) -> tuple[set[str], list[int]]:
    """``insert_events`` for several rooms (one write each), one statement:
    (the rooms whose compare-and-set held, the positions taken in order)."""
    exp_w: list[int] = []
    exp_ids: list[str] = []
    new_w: list[int] = []
    new_ids: list[str] = []
    ev_w: list[int] = []
    ev_i: list[int] = []
    stored: list[StoredEvent] = []
    edges: list[tuple[int, str, str]] = []
    auth: list[tuple[int, str, str]] = []
    txns: list[tuple[int, tuple[str, str, str, str], Event]] = []
    offset = 0
    for w, ins in enumerate(inserts, 1):
        exp_w += [w] * len(ins.expected)
        exp_ids += ins.expected
        new_w += [w] * len(ins.new)
        new_ids += ins.new
        for it in ins.items:
            assert it.stream_pos is not None
            e = it.event
            ev_w.append(w)
            ev_i.append(offset + it.stream_pos)
            stored.append(it)
            edges += [(w, e.event_id, p) for p in e.prev_event_ids]
            auth += [(w, e.event_id, a) for a in e.auth_event_ids]
            if it.txn is not None:
                txns.append((w, it.txn, e))
        offset += len(ins.items)
    evs = [it.event for it in stored]
    # the whole group in one statement (StreamStore.write_group with no
    # writes but this one): it also deletes the reservation and runs the
    # guards, from $38 on
    release_ctes, release_checks, release_args = one_statement_parts(conn, 38)
    row = await conn.fetchrow(
        f"""WITH alloc AS MATERIALIZED (
               SELECT array_agg(p ORDER BY p) AS a
               FROM (SELECT nextval('stream_seq') AS p FROM generate_series(1, $1::INT)) AS s),
           w AS (SELECT x.room_id, x.n FROM unnest($2::TEXT[]) WITH ORDINALITY AS x(room_id, n)),
           exp AS (SELECT x.w, array_agg(x.e ORDER BY x.o) AS a
                   FROM unnest($3::BIGINT[], $4::TEXT[]) WITH ORDINALITY AS x(w, e, o) GROUP BY x.w),
           nxt AS (SELECT x.w, array_agg(x.e ORDER BY x.o) AS a
                   FROM unnest($5::BIGINT[], $6::TEXT[]) WITH ORDINALITY AS x(w, e, o) GROUP BY x.w),
           moved AS (
               UPDATE rooms SET forward_extremities = nxt.a
               FROM w, exp, nxt
               WHERE rooms.room_id = w.room_id AND exp.w = w.n AND nxt.w = w.n
                 AND rooms.forward_extremities = exp.a
               RETURNING rooms.room_id),
           ev AS (
               INSERT INTO events ({_EVENTS_COLUMNS})
               SELECT u.event_id, w.room_id, (SELECT a FROM alloc)[u.i::INT], u.depth, u.type, u.state_key,
                      u.sender, u.origin_server_ts, u.membership, u.pdu, u.client, u.state_group,
                      u.relates_to, u.rel_type, u.thread_id, u.sender_device, u.txn_id, u.csg, FALSE, NULL,
                      FALSE
               FROM unnest($7::BIGINT[], $8::TEXT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[],
                           $13::TEXT[], $14::BIGINT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::BIGINT[],
                           $19::TEXT[], $20::TEXT[], $21::TEXT[], $22::TEXT[], $23::TEXT[], $24::BIGINT[])
                    AS u(w, event_id, i, depth, type, state_key, sender, origin_server_ts, membership, pdu,
                         client, state_group, relates_to, rel_type, thread_id, sender_device, txn_id, csg)
               JOIN w ON w.n = u.w
               WHERE w.room_id IN (SELECT room_id FROM moved) RETURNING 1),
           prev AS (
               INSERT INTO event_edges (event_id, prev_event_id)
               SELECT x.e, x.p FROM unnest($25::BIGINT[], $26::TEXT[], $27::TEXT[]) AS x(w, e, p)
               JOIN w ON w.n = x.w
               WHERE w.room_id IN (SELECT room_id FROM moved) RETURNING 1),
           auth AS (
               INSERT INTO event_auth_edges (event_id, auth_event_id)
               SELECT x.e, x.a FROM unnest($28::BIGINT[], $29::TEXT[], $30::TEXT[]) AS x(w, e, a)
               JOIN w ON w.n = x.w
               WHERE w.room_id IN (SELECT room_id FROM moved) RETURNING 1),
           txn AS (
               INSERT INTO event_txn_ids (user_id, device_id, txn_id, endpoint, event_id, created_ts)
               SELECT x.u, x.d, x.t, x.ep, x.e, x.ts
               FROM unnest($31::BIGINT[], $32::TEXT[], $33::TEXT[], $34::TEXT[], $35::TEXT[], $36::TEXT[],
                           $37::BIGINT[]) AS x(w, u, d, t, ep, e, ts)
               JOIN w ON w.n = x.w
               WHERE w.room_id IN (SELECT room_id FROM moved) RETURNING 1){release_ctes}
           SELECT ARRAY(SELECT room_id FROM moved) AS moved, (SELECT a FROM alloc) AS taken{release_checks}""",
        offset,
        [ins.room_id for ins in inserts],
        exp_w, exp_ids, new_w, new_ids,
        ev_w,
        [e.event_id for e in evs],
        ev_i,
        *_event_columns(stored),
        [it.current_state_group for it in stored],
        [w for w, _, _ in edges], [a for _, a, _ in edges], [b for _, _, b in edges],
        [w for w, _, _ in auth], [a for _, a, _ in auth], [b for _, _, b in auth],
        [w for w, _, _ in txns], [t[0] for _, t, _ in txns], [t[1] for _, t, _ in txns],
        [t[2] for _, t, _ in txns], [t[3] for _, t, _ in txns], [e.event_id for _, _, e in txns],
        [e.origin_server_ts for _, _, e in txns],
        *release_args,
    )
    assert row is not None
    return set(row["moved"] or ()), list(row["taken"] or ())
