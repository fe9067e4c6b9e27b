"""The shared stream: positions for everything a client syncs, correct with
many concurrent writers on many instances (DESIGN.md section 4).

A write that publishes something at a stream position goes through
``StreamStore.write``:

1. commit a reservation row whose ``floor`` is a freshly allocated position
   (so the write's own position, allocated later, is above it), in the
   same round trip as the write's BEGIN: the server commits it before it
   reads the BEGIN;
2. in the write transaction (SERIALIZABLE, retried whole on 40001): allocate
   the position, run the caller's statements, and delete the reservation as
   the last statement. Deleting it last keeps that row's write intent (on
   CockroachDB readers of ``stream_inflight`` wait on it) as short-lived as
   the commit, which follows in the same round trip; if the row is gone
   (reclaimed), the transaction rolls back. A write that is one statement
   (a message sent alone) is that statement without BEGIN or COMMIT: it
   takes the position, deletes the reservation and commits as it ends
   (``write_many(single=True)``), so the argument below is unchanged.

``current_position`` reads, in two statements and in this order,

  M = the maximum committed position (all stream tables), then
  F = min(floor) of the reservations,

and returns min(M, F). Claim: every write at a position p <= min(M, F) has
committed, and any read that starts after ``current_position`` returned
sees it. Take such a write W with reservation R (floor f < p):

* R's commit was acknowledged before the F statement began. Each statement
  sees everything acknowledged before it began (PostgreSQL: a READ
  COMMITTED statement's snapshot; CockroachDB: no stale reads, its
  uncertainty interval covers clock offsets). So the F statement saw R,
  unless R's deletion had committed: by W's transaction (then W is
  committed and visible to every later read), or by a reclaim (then W's
  transaction finds R gone and rolls back: nothing is ever at p). If it saw
  R, F <= f < p, which contradicts p <= F.
* Otherwise W allocated p after R was acknowledged, so after the F statement
  began, so after the M statement returned. The write at M allocated M
  before it committed, so before the M statement returned. ``stream_seq``
  is a non-cached sequence, and nextval hands out increasing values in real
  time on both engines (on CockroachDB an increment of one key, outside any
  transaction), so M < p, which contradicts p <= M.

What this does not rely on: commit order, or rows becoming visible in
commit order. On CockroachDB rows become visible by transaction timestamp:
a transaction that began early can commit at a timestamp below another's
reservation while having taken a higher position. Reading M and F in one
statement (one timestamp) could then see that write's row and miss a
reservation committed just above the statement's timestamp, and advance
past an uncommitted lower position. Two statements in order, with the
maximum first, are what make the second case above hold. (``stream_seq``
must keep CACHE 1: a per-session cache would hand out positions out of real
time order.)

A reservation lives for one try of the write: a try that fails (a
serialization failure, a lost connection) releases it before backing off.
Each names its instance; when an instance dies (kill -9, power loss) its
reservations are deleted by the same instance name starting again, or by a
survivor once the dead instance's liveness lease expires (a few seconds,
services/instances.py). A write whose reservation was deleted under it (its
instance only looked dead) notices in step 2 and starts over with a new one,
so deleting a live writer's reservation costs a retry, never a missed event.

Tables that carry stream positions are listed in ``STREAM_TABLES`` with the
column that says whom a change concerns (a room id or a user id), so that
``changes_between`` can tell the notifier which syncs to wake.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import asyncpg
import orjson

from .database import Database, DatabaseError, Engine, Held
from .event_listings import ROW_COLUMNS, EventsRead
from .stream_statements import Guard, SingleStatement, all_guards, sql_literal

T = TypeVar("T")

# A backstop only: reservations are reclaimed within seconds through their
# instance's liveness lease (services/instances.py); this expiry covers rows
# that name no instance.
RESERVATION_TTL_MS = 120_000

# The database's clock in milliseconds, so that instances on machines whose
# clocks disagree still agree on what has expired.
DB_NOW_MS = "(extract(epoch FROM now()) * 1000)::BIGINT"

# A reservation as a prepared statement of its own (a one-statement write's
# first round trip): $1 the token, $2 the instance id. On PostgreSQL
# ``stream_inflight`` is UNLOGGED (migration 0041): a transaction that writes
# only it writes no WAL before its commit record, so its commit does not
# wait for a flush, as ``SET LOCAL synchronous_commit TO OFF`` did in the
# simple-query form; reservations do not survive a crash, which is what
# they should do (the writes they cover die with it).
RESERVE_SQL = (
    "INSERT INTO stream_inflight (token, floor, expires_ts, instance_id) "
    f"VALUES ($1, nextval('stream_seq'), {DB_NOW_MS} + {RESERVATION_TTL_MS}, $2)"
)


@dataclass(frozen=True)
class StreamTable:
    table: str
    key_sql: str  # expression giving the room id or user id a row concerns
    where_sql: str = "TRUE"


# Every table whose rows carry a `stream_pos`. Modules that add a stream
# table register it here (one line), so positions and wake-ups see it.
STREAM_TABLES: list[StreamTable] = [
    StreamTable("events", "room_id", "stream_pos IS NOT NULL"),
    StreamTable("room_memberships", "user_id"),
]


class GuardFailed(Exception):
    """A write's guard (``write_many(guard=...)``) found its precondition
    false at the start of the write transaction: nothing was written."""


def register_stream_table(table: StreamTable) -> None:
    if all(t.table != table.table or t.key_sql != table.key_sql for t in STREAM_TABLES):
        STREAM_TABLES.append(table)


class StreamStore:
    def __init__(self, db: Database, *, instance_id: str | None = None, max_concurrent_writes: int = 8) -> None:
        self.db = db
        self.instance_id = instance_id
        # Bounding concurrent write transactions per instance keeps the
        # number of simultaneous SERIALIZABLE writers (and so the odds of a
        # dependency cycle on PostgreSQL, which tracks index pages) low;
        # with two cores more would only queue inside the database anyway.
        self._gate = asyncio.Semaphore(max_concurrent_writes)
        # Reservations whose release failed (the database went away): the
        # instance's heartbeat releases them once it can (release_orphans).
        self.orphans: set[str] = set()
        # The highest position of a write of this store whose commit was
        # acknowledged: a committed maximum known without asking.
        self.local_committed = 0
        # The highest committed maximum a ``committed_max()`` returned (other
        # instances' writes included); see ``known_committed``.
        self.seen_committed = 0
        # reservations made ahead of their writes (reserve_ahead), and those
        # given up unused (for tests and metrics); discards in progress
        self.aheads = 0
        self.aheads_dropped = 0
        self._discards: set[asyncio.Task[None]] = set()

    async def write(
        self, fn: Callable[[asyncpg.Connection, int], Awaitable[T]], *, name: str = "stream_write"
    ) -> tuple[T, int]:
        """Run ``fn(conn, position)`` in one transaction at a new position;
        returns (fn's result, position)."""

        async def one(conn: asyncpg.Connection, positions: list[int]) -> T:
            return await fn(conn, positions[0])

        result, positions = await self.write_many(one, 1, name=name)
        return result, positions[0]

    async def write_many(
        self,
        fn: Callable[[asyncpg.Connection, list[int]], Awaitable[T]],
        count: int,
        *,
        name: str = "stream_write",
        guard: Guard | None = None,
        allocate: bool = True,
        single: bool = False,
        ahead: "Ahead | None" = None,
    ) -> tuple[T, list[int]]:
        """Like ``write`` with ``count`` increasing positions.

        ``allocate=False``: no statement of its own allocates them; ``fn``
        gets an empty list and appends the ``count`` positions in increasing
        order, taken with ``nextval('stream_seq')`` by a statement of the
        write transaction (any statement runs after the reservation's
        commit, which is all the positions need), e.g. inside its insert:
        one round trip fewer.

        ``guard``: a ``Guard``, run first in the write transaction, in the
        round trip that opens it (with ``single``: by the statement); its
        failure raises GuardFailed.

        ``single`` (with ``allocate=False``): ``fn`` runs exactly one
        statement, which takes the positions, and gets a ``SingleStatement``
        in place of the connection: the statement deletes the reservation
        itself and runs the guard (``SingleStatement.ctes`` and ``checks``)
        and commits as it ends, with no BEGIN or COMMIT of ours, so the
        write is two round trips (the reservation, the statement) instead
        of three.

        ``ahead`` (with ``single``): the reservation made for this write by
        ``reserve_ahead`` while it was being built; the first try uses it
        (and so waits only for what is left of its round trip), the write
        owns it from this call on.

        Shielded from the caller's cancellation (a client that hangs up
        makes aiohttp cancel its handler): a write runs to its end, so no
        reservation is left half-made and no connection is abandoned in
        the middle of a statement; the client's retry with the same
        transaction id finds what it stored."""
        if ahead is not None and not (single and ahead.owned_by_write()):
            raise RuntimeError("a reservation made ahead is for one lone one-statement write")
        task = asyncio.ensure_future(self._write_many(fn, count, name, guard, allocate, single, ahead))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)  # its outcome is no one's now
            raise

    async def write_group(
        self,
        writes: Sequence[tuple[Callable[[asyncpg.Connection, list[int]], Awaitable[Any]], int]],
        guards: Sequence[Guard] = (),
        *,
        harmless: tuple[type[Exception], ...] = (),
        tail: Callable[[asyncpg.Connection, list[int]], Awaitable[list[tuple[Any, list[int]] | Exception]]]
        | None = None,
    ) -> list[tuple[Any, list[int]] | Exception]:
        """Several writes in one transaction, each ``(fn, count)`` with the
        contract of ``write_many(allocate=False)``, run in order: one
        reservation (its floor below every position they take), one BEGIN,
        one COMMIT. ``guards`` (as one: ``all_guards``) run first, as
        ``write_many``'s guard. One try, no retry: any failure rolls the
        whole group back and is raised (GroupCommit then runs each write
        alone), except a ``harmless`` exception: one its write raises
        having written nothing and left the transaction usable (a stale
        room head: the insert wrote nothing), which becomes that write's
        outcome while the others go on. Returns each write's (result,
        positions) or exception. ``tail``: more writes after ``writes``, in
        the same transaction, that take their positions there and append
        them to the list it gets in increasing order; its outcomes follow
        those of ``writes`` (group_commit.py's shared insert).

        With no ``writes``, ``tail`` is the whole write and runs exactly
        one statement (group_commit.py's shared insert of k messages): it
        gets a ``SingleStatement`` as ``write_many(single=True)`` does, and
        the group is two round trips (the reservation, the statement)
        instead of three. That statement commits as it ends, so a failure
        ``tail`` reports after it ran cannot roll the group back: ``tail``
        returns it as that write's outcome instead of raising it."""

        async def fn(conn: asyncpg.Connection, positions: list[int]) -> list[tuple[Any, list[int]] | Exception]:
            out: list[tuple[Any, list[int]] | Exception] = []
            for write, count in writes:
                own: list[int] = []
                try:
                    result = await write(conn, own)
                except harmless as e:
                    out.append(e)
                    continue
                if len(own) != count:
                    raise RuntimeError(f"a grouped write took {own} for {count} positions")
                positions.extend(own)
                out.append((result, own))
            if tail is not None:
                out.extend(await tail(conn, positions))
            return out

        async with self._gate:
            results, _ = await self._attempt(
                fn, None, all_guards(guards), allocate=False, single=not writes and tail is not None
            )
        return results

    async def _write_many(
        self, fn: Callable[[asyncpg.Connection, list[int]], Awaitable[T]], count: int, name: str,
        guard: Guard | None, allocate: bool = True, single: bool = False, ahead: "Ahead | None" = None,
    ) -> tuple[T, list[int]]:
        first = ahead  # the first try's reservation, made ahead

        async def attempt() -> tuple[T, list[int]]:
            nonlocal first
            made, first = first, None
            return await self._attempt(fn, count, guard, allocate, single, made)

        assert not (single and allocate)
        if ahead is None:
            async with self._gate:
                return await self.db.retrying(attempt, name=name)
        try:  # (a reservation made ahead came with its permit of the gate)
            return await self.db.retrying(attempt, name=name)
        finally:
            self._gate.release()
            if first is not None:  # never tried
                self._discard(first)

    async def _attempt(
        self, fn: Callable[[asyncpg.Connection, list[int]], Awaitable[T]], count: int | None,
        guard: Guard | None = None, allocate: bool = True, single: bool = False, ahead: "Ahead | None" = None,
    ) -> tuple[T, list[int]]:
        """One try: a fresh reservation, then the write transaction. The
        reservation never outlives the try, so a write that backs off after
        a serialization failure, or fails because the database went away,
        does not hold readers back meanwhile.

        Round trips: the reservation's own transaction and the write's
        BEGIN go in one (``_prelude``); the reservation's deletion and the
        COMMIT in another (``_finale``). A ``single`` write (one statement,
        ``write_many(single=True)``) has no BEGIN or COMMIT: the
        reservation (and the guard) in one round trip, then the statement,
        which allocates the positions, deletes the reservation (failing
        with a division by zero if it is gone) and commits as it ends. The
        argument of the module docstring holds for both: the reservation
        commits before the positions are taken, and its deletion commits
        with the write."""
        while True:
            token = secrets.token_hex(12) if ahead is None else ahead.token
            held, ahead = (None if ahead is None else ahead.task), None
            reserved = False
            wrote = False  # the write's statements ran: a division by zero now is the reservation's check
            committed = False
            try:

                async def txn(conn: asyncpg.Connection) -> tuple[T, list[int]]:
                    nonlocal reserved, wrote
                    reserved = True  # the prelude committed the reservation
                    positions: list[int] = []
                    if single:
                        one = SingleStatement(conn, token, guard)
                        try:
                            result = await fn(one, positions)
                        finally:
                            wrote = one.used
                        if not wrote:  # (the statement deletes the reservation: released below instead)
                            raise RuntimeError("a one-statement stream write ran no statement")
                    else:
                        if allocate:
                            assert count is not None
                            positions = await allocate_positions(conn, count)
                        result = await fn(conn, positions)
                    if (count is not None and len(positions) != count) or positions != sorted(positions):
                        raise RuntimeError(f"the write took {positions} for {count} positions")
                    wrote = True
                    return result, positions

                if single:  # (the guard is in the statement)
                    result = await self.db.attempt_single(RESERVE_SQL, (token, self.instance_id), txn, held=held)
                else:
                    tail = "" if guard is None else f"; {guard.literal_sql()}"
                    result = await self.db.attempt_bracketed(self._prelude(token) + tail, txn, self._finale(token))
                committed = True
                self.local_committed = max(self.local_committed, result[1][-1] if result[1] else 0)
                return result
            except asyncpg.DivisionByZeroError:
                if guard is not None and not reserved:
                    # the guard, which runs after the reservation's commit
                    reserved = True  # so that ``finally`` releases it now
                    raise GuardFailed() from None
                if not wrote:
                    raise
                if single and guard is not None and await self._held(token):
                    # the statement failed on its guard, not on the reservation
                    raise GuardFailed() from None
                # the finale (or the single statement) found our reservation
                # gone (reclaimed: our instance looked dead), so a reader may
                # have passed our floor: rolled back; start over with a new
                # reservation
                reserved = False
                continue
            except BaseException:
                if not reserved:
                    # the prelude may or may not have committed it: the
                    # heartbeat releases it (a no-op if it never existed)
                    self.orphans.add(token)
                raise
            finally:
                # (a single statement that wrote nothing, e.g. on a stale
                # room head, still deleted the reservation: releasing again
                # deletes nothing)
                if reserved and not committed:
                    await self._release(token)

    async def reserve_ahead(self, *, slot: Callable[[], None] | None = None) -> "Ahead | None":
        """Start the reservation of a lone one-statement write
        (``write_many(single=True)``) now, before the write is built: its
        round trip runs in the database while this process builds the
        write, instead of before the write's statement. The caller hands
        it to ``write_many(ahead=...)``, or gives it up (``Ahead.drop``:
        the reservation is deleted in the background). ``slot``: called
        once when the reservation is given up unused (the caller's
        accounting, GroupCommit.ahead). As any reservation it holds
        readers below its floor until the write commits or gives it up, so
        it is made only once nothing else stands between it and the write
        (the room's lock held).

        It takes its permit of the write gate now, or is not made (None)
        when the gate is full: a reservation made ahead holds a pool
        connection, which must never wait for the gate, or the writes
        inside the gate could wait for a connection for ever. (Never
        pauses: the permit is free when taken.)"""
        if self._gate.locked():
            return None
        await self._gate.acquire()
        token = secrets.token_hex(12)
        task = asyncio.ensure_future(self.db.run_first(RESERVE_SQL, (token, self.instance_id)))
        self.aheads += 1
        return Ahead(self, token, task, slot)

    def _discard(self, ahead: "Ahead") -> None:
        """An unused reservation made ahead: let its connection go and
        delete it, in the background (the request that made it may be
        cancelled)."""

        async def discard() -> None:
            try:
                held = await ahead.task
            except BaseException:
                # the prelude may or may not have committed: the heartbeat
                # releases it (a no-op if it never existed)
                self.orphans.add(ahead.token)
                return
            await held.release()
            await self._release(ahead.token)

        self.aheads_dropped += 1
        task = asyncio.ensure_future(discard())
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)

    def _reservation(self, token: str) -> str:
        """The reservation, committed in a transaction of its own (a
        simple-query string)."""
        assert all(c in "0123456789abcdef" for c in token)
        instance = "NULL" if self.instance_id is None else sql_literal(self.instance_id)
        insert = (
            "INSERT INTO stream_inflight (token, floor, expires_ts, instance_id) "
            f"VALUES ('{token}', nextval('stream_seq'), {DB_NOW_MS} + {RESERVATION_TTL_MS}, {instance})"
        )
        if self.db.engine is Engine.POSTGRES:
            return f"BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit TO OFF; {insert}; COMMIT"
        return insert  # an implicit transaction of its own

    def _prelude(self, token: str) -> str:
        """The reservation, committed in a transaction of its own, then the
        BEGIN of the write (one simple-query round trip). On PostgreSQL the
        reservation needs to be visible before our write starts (it is, on
        commit), not durable: after a crash neither it nor our write exists,
        and our write's own commit flushes the log that holds it. (Its
        statements are planned once: the pool's sessions on PostgreSQL use
        generic plans, SERIALIZABLE_SESSION_SETTINGS.)"""
        reserve = self._reservation(token)
        return f"{reserve}; BEGIN ISOLATION LEVEL SERIALIZABLE"

    @staticmethod
    def _finale(token: str) -> str:
        """Delete the reservation as the write's last statement (so its write
        intent, which CockroachDB readers of ``stream_inflight`` wait on, is
        held only until the commit), failing with division by zero when it
        is gone, then COMMIT: one round trip."""
        return (
            f"WITH d AS (DELETE FROM stream_inflight WHERE token = '{token}' RETURNING 1) "
            "SELECT 1 / count(*) FROM d; COMMIT"
        )

    async def _held(self, token: str) -> bool:
        return bool(await self.db.fetchval("SELECT count(*) FROM stream_inflight WHERE token = $1", token))

    async def _release(self, token: str) -> None:
        try:
            await self.db.execute("DELETE FROM stream_inflight WHERE token = $1", token)
        except (DatabaseError, asyncpg.PostgresError, OSError):
            self.orphans.add(token)

    async def release_orphans(self) -> int:
        """Release reservations left by writes that failed while the
        database was unreachable; returns how many were released."""
        if not self.orphans:
            return 0
        tokens = list(self.orphans)
        await self.db.execute("DELETE FROM stream_inflight WHERE token = ANY($1::TEXT[])", tokens)
        self.orphans.difference_update(tokens)
        return len(tokens)

    @property
    def known_committed(self) -> int:
        """A committed maximum known without asking: this store's own
        acknowledged writes and the last maximum read. Any committed maximum
        read earlier serves the argument of the module docstring as well
        as one read now (case two needs only that its statement returned
        before the floor statement began)."""
        return max(self.local_committed, self.seen_committed)

    async def current_position(self, *, read_max: bool = True) -> int:
        """The position below which every write has committed: the committed
        maximum, then the reservations' floor, in that order (see the module
        docstring for why two statements, and why this order).

        Without ``read_max`` the committed maximum is ``known_committed``
        instead of a statement: the argument holds for any position whose
        write's commit was acknowledged, or that a committed maximum read
        found, before the floor statement began (case two needs only that).
        It may lag writes of other instances (a later call with ``read_max``
        finds them), never run ahead of an uncommitted one."""
        committed = self.known_committed
        if read_max:
            committed = max(committed, await self.committed_max())
        floor = await self.reservation_floor()
        return committed if floor is None else min(committed, floor)

    async def committed_max(self) -> int:
        """The highest position any stream table holds (0 when none)."""
        maxes = " UNION ALL ".join(
            f"SELECT max(stream_pos) AS m FROM {t.table}" for t in {t.table: t for t in STREAM_TABLES}.values()
        )
        found = int(await self.db.fetchval(f"SELECT COALESCE(max(m), 0) FROM ({maxes}) AS x"))
        self.seen_committed = max(self.seen_committed, found)
        return found

    async def reservation_floor(self) -> int | None:
        """The lowest floor of the open reservations (None when none)."""
        value = await self.db.fetchval("SELECT min(floor) FROM stream_inflight")
        return None if value is None else int(value)

    async def position_changes_and_events(
        self, after: int, committed: int, events: int = 0
    ) -> tuple[int, dict[str, set[str]], EventsRead | None]:
        """``current_position`` with ``committed`` as the committed maximum
        (this store's ``known_committed``, or a ``committed_max()`` that
        returned before this call), and ``changes_by_table(after, it)``, in
        one statement: its snapshot serves both, as every write at or below
        the position it finds is visible in the snapshot that found it
        (such a write's reservation is absent from that snapshot, so either
        its deletion, which commits with the write, is in it, or the write
        took its position after the snapshot, above ``committed``). One
        round trip instead of two when a position move wakes someone.

        With ``events`` > 0, also the timeline events in (after, position]
        with what the woken syncs' reads of their rooms would also ask
        (``EventsRead``), when there are at most ``events`` of them (else
        None): a woken sync whose range this is builds its room without a
        statement. Same snapshot, so as complete as the changes are."""
        extra, ev_cte = "", ""
        if events > 0:
            ev_cte = (
                f""", ev AS MATERIALIZED (
                    SELECT {ROW_COLUMNS} FROM events
                    WHERE stream_pos > (SELECT after FROM b) AND stream_pos <= (SELECT upto FROM b)
                    LIMIT {int(events) + 1})"""
            )
            extra = (
                f""" UNION ALL SELECT '~ev' AS t, json_build_array({ROW_COLUMNS})::TEXT AS k FROM ev
                    UNION ALL SELECT '~hv' AS t, json_build_array(h.room_id, h.client)::TEXT AS k
                    FROM (SELECT DISTINCT room_id FROM ev) r, LATERAL (
                        SELECT x.room_id, x.client FROM events x WHERE x.room_id = r.room_id
                          AND x.type = 'm.room.history_visibility' AND x.state_key = '') h"""
            )
        rows = await self.db.fetch(
            f"""WITH b AS MATERIALIZED (SELECT $1::BIGINT AS after,
                                           least($2::BIGINT, coalesce(min(floor), $2::BIGINT)) AS upto
                                    FROM stream_inflight){ev_cte}
                SELECT NULL AS t, b.upto::TEXT AS k FROM b
                UNION ALL ({_changes_sql("b.after", "b.upto", ", b")}){extra}""",
            after, committed,
        )
        upto = committed
        out: dict[str, set[str]] = {}
        ev: list[list[Any]] = []
        hv: list[list[Any]] = []
        for r in rows:
            t = r["t"]
            if t is None:
                upto = int(r["k"])
            elif t == "~ev":
                ev.append(orjson.loads(r["k"]))
            elif t == "~hv":
                hv.append(orjson.loads(r["k"]))
            elif r["k"] is not None:
                out.setdefault(t, set()).add(r["k"])
        read = EventsRead(ev, hv) if 0 < events and len(ev) <= events else None
        return upto, out, read

    async def changes_between(self, after: int, upto: int) -> set[str]:
        """Room ids and user ids with anything at a position in (after, upto]."""
        by_table = await self.changes_by_table(after, upto)
        return set().union(*by_table.values()) if by_table else set()

    async def changes_by_table(self, after: int, upto: int) -> dict[str, set[str]]:
        """The keys (room ids, user ids) with anything in (after, upto], per
        stream table."""
        if upto <= after:
            return {}
        out: dict[str, set[str]] = {}
        for r in await self.db.fetch(_changes_sql("$1", "$2"), after, upto):
            if r["k"] is not None:
                out.setdefault(r["t"], set()).add(r["k"])
        return out



def _changes_sql(after: str, upto: str, join: str = "") -> str:
    """The keys (t, k) of every stream table's rows with ``after`` <
    stream_pos <= ``upto`` (SQL expressions), each table ``join``ed with
    what the statement adds.

    The notifier's read (``position_changes_and_events``) takes both bounds from
    its materialized CTE ``b``, which the planner cannot see into: its plan
    is the same for every value, so after five executions PostgreSQL keeps
    a generic one. With a bound as a parameter in the WHERE clauses it
    planned each call anew for ever once the tables held some thousands of
    rows (a custom plan costed below the generic one): 0.25 ms a call
    against 0.12 once generic (1,500-6,000 events), on every wake-up.
    ``changes_by_table``'s bounds are parameters: PostgreSQL settled on a
    generic plan of it as it is, in 20,000 events where the notifier's
    read with a parameter did not."""
    return " UNION ".join(
        f"SELECT '{t.table}' AS t, {t.key_sql} AS k FROM {t.table}{join} "
        f"WHERE stream_pos > {after} AND stream_pos <= {upto} AND ({t.where_sql})"
        for t in STREAM_TABLES
    )


async def allocate_positions(conn: asyncpg.Connection, count: int) -> list[int]:
    """``count`` new stream positions, increasing, for a write transaction
    of ``StreamStore.write_many`` (after its reservation's commit)."""
    allocated = await conn.fetchval(
        "SELECT array_agg(nextval('stream_seq')) FROM generate_series(1, $1::INT)", count
    )
    return sorted(allocated)


class Ahead:
    """A lone write's reservation, made while the write is built
    (``StreamStore.reserve_ahead``). Owned by whoever holds it until
    ``write_many(ahead=...)`` takes it (``owned_by_write``) or it is
    dropped; exactly one of the two happens, and ``drop`` after it is a
    no-op, so ``finally: ahead.drop()`` is always safe."""

    __slots__ = ("stream", "token", "task", "_slot", "taken")

    def __init__(self, stream: StreamStore, token: str, task: "asyncio.Future[Held]",
                 slot: Callable[[], None] | None) -> None:
        self.stream = stream
        self.token = token
        self.task = task
        self._slot = slot
        self.taken = False

    @property
    def slot_held(self) -> bool:
        """Whether it came with a slot of its maker's (``reserve_ahead(slot=...)``),
        which the write frees when it ends."""
        return self._slot is not None

    def owned_by_write(self) -> bool:
        """The write takes it (synchronously, so a cancellation after this
        cannot also drop it); False if it was taken or dropped before."""
        if self.taken:
            return False
        self.taken = True
        return True

    def drop(self) -> None:
        """Give it up unused (no-op once taken): the caller's ``slot`` is
        called and the reservation deleted in the background."""
        if self.taken:
            return
        self.taken = True
        if self._slot is not None:
            self._slot()
        self.stream._gate.release()
        self.stream._discard(self)


def _retrieve(task: "asyncio.Future[Any]") -> None:
    """Take a finished task's exception so asyncio does not report it as
    never retrieved (the caller that wanted it was cancelled)."""
    if not task.cancelled():
        task.exception()
