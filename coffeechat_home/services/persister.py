"""The persister: the one door through which events enter a room
(DESIGN.md section 2).

It takes events that were already checked (signatures, hashes, auth) with
their context: the state before each event, and whether it was rejected,
soft-failed, or is an outlier. Under the room's lock and in one
transaction it

* computes the forward extremities from each event's prev_events: an
  event's prev_events stop being extremities; rejected and soft-failed
  events never become extremities, nor does an event that a stored event
  already names as a prev_event; outliers do not touch extremities or
  current state;
* works out the room's current state: the state after the only extremity,
  or the resolution (``protocol.state_res.resolve_state``) of the states
  after each extremity when the DAG forks;
* allocates state groups from their own sequence (storage/room_state.py);
* gives stream positions to the events clients may see, and none to
  outliers, rejected and soft-failed events (so they never show in /sync,
  /messages or /context);
* writes events, edges, state groups, current state and memberships.

Two callers: the local sender (services/room_writer.py), which built the
events on the room head it cached and passes that head so the write is a
compare-and-set of the forward extremities (the fast path: one statement
for a message); and the federation receiver, which passes events built
elsewhere (``persist``), written in a transaction that locks the room's row.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Sequence

import asyncpg

from ..protocol.events import Event, StateKey
from ..protocol.room_versions import RoomVersion, get_room_version
from ..storage.backfill import allocate_backfill_positions
from ..storage.event_writes import (
    DeferredInsert,
    RowInsert,
    StaleRoomState,
    StoredEvent,
    apply_redactions,
    delete_outliers,
    insert_events,
)
from ..storage.events import EventStore
from ..storage.room_state import (
    CurrentStateChange,
    allocate_state_group_ids,
    apply_current_state,
    insert_membership_rows,
    insert_memberships,
    insert_state_groups,
)
from ..storage.stream import StreamStore, allocate_positions
from ..storage.stream_statements import SingleStatement
from .notifier import Notifier
from .tasks import KeyedLocks
from .persist_plan import WritePlan

@dataclass
class EventContext:
    """What the checks found out about an event.

    ``state_before``: the room state before the event (event ids), i.e. the
    resolved state after its prev_events; ignored for outliers.
    ``state_group_before``: a stored state group holding exactly that
    state, when the caller knows one (saves comparing states).
    """

    state_before: Mapping[StateKey, str] = field(default_factory=dict)
    state_group_before: int | None = None
    rejected_reason: str | None = None
    soft_failed: bool = False
    outlier: bool = False

    @property
    def in_timeline(self) -> bool:
        """Shown to clients (and so given a stream position)."""
        return not (self.outlier or self.soft_failed or self.rejected_reason is not None)


@dataclass
class NewEvent:
    """An event for the persister. ``client`` (the client-format JSON) is
    derived when None. ``redaction_checked``: the caller checked that this
    redaction may be applied (else the same-server rule decides)."""

    event: Event
    context: EventContext
    client: dict[str, Any] | None = None
    txn: tuple[str, str, str, str] | None = None  # user, device, txn id, endpoint
    redaction_checked: bool = False


@dataclass
class NewRoom:
    """Given for the first batch of a room: its row in `rooms`."""

    creator: str
    is_public: bool


@dataclass
class RoomBase:
    """The room as the caller read it: the local sender's cached head. The
    write is a compare-and-set of ``extremities``."""

    extremities: list[str]
    state: Mapping[StateKey, str]
    state_group: int  # 0 for a new room
    chain_length: int


@dataclass
class PersistResult:
    positions: list[int | None]  # per event; None: no stream position
    forward_extremities: list[str]
    current_state: dict[StateKey, str]
    state_group: int  # the room's current state group
    chain_length: int
    stored: list[bool]  # per event: False if it was stored before (nothing done)


class UnknownRoom(Exception):
    pass


class RoomIdCollision(Exception):
    pass


class _Changed(Exception):
    """An event of the batch was persisted concurrently: start over."""


@dataclass
class Persister:
    def __init__(self, stream: StreamStore, events: EventStore, notifier: Notifier) -> None:
        self.stream = stream
        self.events = events
        self.notifier = notifier
        self._locks: KeyedLocks[str] = KeyedLocks()
        self.events_persisted = 0  # events committed by this instance, for metrics
        # run after a batch commits: (room id, events with stream positions)
        self.after_persist: list[Callable[[str, list[Event]], Awaitable[None]]] = []
        # run after a batch written by ``persist`` commits (room id), e.g.
        # to drop a cached room head
        self.room_changed: list[Callable[[str], None]] = []

    # -- the room's lock -----------------------------------------------------------
    @contextlib.asynccontextmanager
    async def room_lock(self, room_id: str) -> AsyncIterator[None]:
        """Serializes this process's writes to a room (writes from other
        instances are stopped by the extremity compare-and-set or the room
        row's lock)."""
        async with self._locks.hold(room_id):
            yield

    # -- events built elsewhere ------------------------------------------------------
    async def persist(
        self,
        room_id: str,
        batch: Sequence[NewEvent],
        *,
        room_version: RoomVersion | None = None,
        new_room: NewRoom | None = None,
        backfilled: bool = False,
        also: Callable[[asyncpg.Connection], Awaitable[None]] | RowInsert | None = None,
    ) -> PersistResult:
        """Persist checked events built elsewhere (in order: an event's
        prev_events come before it). Takes the room's lock. Events stored
        before as part of the DAG are skipped; stored outliers persisted
        again without ``outlier`` join the DAG. ``new_room`` (with
        ``room_version``) creates the room's row. ``backfilled``: history
        older than what the room has; its events get stream positions below
        zero (storage/backfill.py), so /sync never shows them as new and
        the federation sender never sends them. ``also``: more writes of the
        caller in the same transaction (a partial-state join records the
        room as partial with its join); a ``RowInsert`` is written by the
        events' insert statement (no round trip of its own: the receiver's
        answer to a transaction)."""
        async with self.room_lock(room_id):
            for _ in range(5):
                known = await self.events.stored_info(b.event.event_id for b in batch)
                fresh = [b for b in batch if _is_new(b, known)]
                count = sum(1 for b in fresh if b.context.in_timeline)

                async def fn(conn: asyncpg.Connection, positions: list[int]) -> PersistResult:
                    written = await self._write(
                        conn, positions, room_id, batch, base=None, room_version=room_version, new_room=new_room,
                        also=also if isinstance(also, RowInsert) else None,
                    )
                    if also is not None and not isinstance(also, RowInsert):
                        await also(conn)
                    return written

                async def backfill_fn(conn: asyncpg.Connection, n: int = count) -> PersistResult:
                    return await fn(conn, await allocate_backfill_positions(conn, n) if n else [])

                try:
                    if backfilled:
                        result = await self.stream.db.transaction(backfill_fn, name="persist_backfill")
                    elif count:
                        result, _ = await self.stream.write_many(fn, count, name="persist_remote")
                    else:
                        result = await self.stream.db.transaction(lambda c: fn(c, []), name="persist_remote")
                except _Changed:
                    continue
                break
            else:
                raise RuntimeError("events of the batch kept being persisted concurrently")
        for cb in self.room_changed:
            cb(room_id)
        if backfilled:  # nothing new for /sync or the after_persist hooks
            self.events_persisted += sum(1 for p in result.positions if p is not None)
            return result
        await self.committed(room_id, [b.event for b, p in zip(batch, result.positions) if p is not None])
        return result

    async def persist_on_base(
        self, room_id: str, batch: Sequence[NewEvent], base: RoomBase, *, room_version: RoomVersion,
        also: RowInsert | None = None,
    ) -> PersistResult | None:
        """Checked events built elsewhere that extend the room's head
        ``base`` as a line (each accepted, the first one's prev_events
        covering ``base.extremities``, each next one's the one before, none
        a prev_event of a stored event), written as the local sender writes:
        a compare-and-set of the extremities. None when the room's
        extremities are no longer ``base.extremities`` (nothing written: use
        ``persist``). ``also``: as ``persist``'s (written only with the
        events)."""
        async with self.room_lock(room_id):
            async def fn(conn: asyncpg.Connection, positions: list[int]) -> PersistResult:
                return await self._write(conn, positions, room_id, batch, base=base, room_version=room_version,
                                         allocate=True, also=also)

            try:  # the positions are taken by the events' insert, as on the local send path
                result, _ = await self.stream.write_many(fn, len(batch), name="persist_remote_on_base",
                                                         allocate=False)
            except (StaleRoomState, asyncpg.UniqueViolationError):
                return None  # written meanwhile (by another instance)
        for cb in self.room_changed:
            cb(room_id)
        await self.committed(room_id, [b.event for b, p in zip(batch, result.positions) if p is not None])
        return result

    # -- the local sender's path -------------------------------------------------------
    async def write_on_base(
        self,
        conn: asyncpg.Connection,
        positions: list[int],
        room_id: str,
        batch: Sequence[NewEvent],
        base: RoomBase,
        *,
        room_version: RoomVersion,
        new_room: NewRoom | None = None,
        redaction_targets: tuple[dict[str, Any], dict[str, Any]] | None = None,
        allocate: bool = False,
    ) -> PersistResult:
        """Inside a ``stream.write_many`` transaction (one position per
        event, all of which must be in the timeline): persist events built
        on ``base``; raises StaleRoomState when the room's extremities are no
        longer ``base.extremities``. The caller holds ``room_lock`` and
        calls ``committed`` after the commit. ``allocate``: the transaction
        runs ``write_many(allocate=False)`` and ``positions`` (empty) is
        filled here, by the events' insert when it can."""
        return await self._write(
            conn, positions, room_id, batch, base=base, room_version=room_version, new_room=new_room,
            redaction_targets=redaction_targets, allocate=allocate,
        )

    async def committed(self, room_id: str, events: list[Event]) -> None:
        self.notifier.poke()
        if self.notifier.waiting:
            # Let the notifier's read of the new position go out now, so
            # the database runs it while this request finishes (its
            # response): the long-polls it wakes answer about 0.5 ms
            # sooner (bench/bench_send_path.py).
            await asyncio.sleep(0)
        self.events_persisted += len(events)
        for cb in self.after_persist:
            await cb(room_id, events)

    # -- the transaction ------------------------------------------------------------
    async def _write(
        self,
        conn: asyncpg.Connection,
        positions: list[int],
        room_id: str,
        batch: Sequence[NewEvent],
        *,
        base: RoomBase | None,
        room_version: RoomVersion | None,
        new_room: NewRoom | None = None,
        redaction_targets: tuple[dict[str, Any], dict[str, Any]] | None = None,
        allocate: bool = False,
        also: RowInsert | None = None,
    ) -> PersistResult:
        store = EventStore(conn)
        in_insert = 0  # positions the events' insert takes (write_many(allocate=False))
        if allocate:
            assert not positions and all(b.context.in_timeline for b in batch)
            if any(b.event.type == "m.room.member" for b in batch):
                # membership rows need the positions before the insert
                positions.extend(await allocate_positions(conn, len(batch)))
            else:
                in_insert = len(batch)
        if new_room is not None:
            assert room_version is not None
            created = await store.create_room_row(
                conn, room_id, room_version.identifier, new_room.creator,
                batch[0].event.origin_server_ts, new_room.is_public,
            )
            if not created:
                raise RoomIdCollision(room_id)
        if base is None:
            version = await store.room_version(room_id, for_update=True) if new_room is None else None
            if new_room is None:
                if version is None:
                    raise UnknownRoom(room_id)
                room_version = get_room_version(version)
            known = await store.stored_info(b.event.event_id for b in batch)
            todo = [b for b in batch if _is_new(b, known)]
            if sum(1 for b in todo if b.context.in_timeline) != len(positions):
                raise _Changed()
            stale_outliers = [b.event.event_id for b in todo if b.event.event_id in known]
            if stale_outliers:
                await delete_outliers(conn, stale_outliers)
            stored_flags = [_is_new(b, known) for b in batch]
            old_extremities = await store.forward_extremities(room_id)
            old_state = await store.state.current_state_ids(room_id)
        else:
            todo = list(batch)
            stored_flags = [True] * len(batch)
            old_extremities = list(base.extremities)
            old_state = dict(base.state)
        assert room_version is not None
        plan = WritePlan(store, room_id, room_version, todo, base)
        await plan.build(old_extremities, old_state)
        if any(b.client is None for b in todo):
            await plan.fill_client_forms()
        if plan.new_group_count:
            plan.assign_group_ids(await allocate_state_group_ids(conn, plan.new_group_count))
        # with in_insert, 1-based indexes the insert replaces by the positions it takes
        items = plan.stored_events(list(range(1, in_insert + 1)) if in_insert else positions)
        change: CurrentStateChange | None = None
        redactions: list[tuple[str, str, str, str]] | None = None
        if isinstance(conn, (SingleStatement, DeferredInsert)):
            # a one-statement write (StreamStore.write_many(single=True)),
            # or one of a group commit's shared insert: the insert commits
            # as it ends, or with the others', so nothing may follow it
            change = await plan.current_state_change(old_state)
            redactions = await plan.redactions(items, redaction_targets)
            if (not in_insert or plan.new_groups or change.changed or change.removed or redactions or also
                    or any(b.event.type == "m.room.member" for b in todo)):
                raise RuntimeError("not a one-statement write")
        taken = await insert_events(
            conn, room_id, items,
            expected_extremities=old_extremities if base is not None else None,
            new_extremities=plan.extremities if plan.extremities != old_extremities else None,
            allocate=in_insert,
            also=also,
        )
        positions.extend(taken)
        if plan.new_groups:
            await insert_state_groups(conn, room_id, plan.new_groups)
        if change is None:
            change = await plan.current_state_change(old_state)
        if change.changed or change.removed:
            await apply_current_state(conn, room_id, change, self.stream.db.text_order)
        members = [
            (it.event, it.stream_pos) for it in items
            if it.stream_pos is not None and it.event.type == "m.room.member" and it.event.membership
        ]
        if members:
            await insert_memberships(conn, room_id, members)
        await self._memberships_entering_without_position(conn, room_id, plan, change, items, positions)
        if redactions is None:
            redactions = await plan.redactions(items, redaction_targets)
        if redactions:
            await apply_redactions(conn, room_id, redactions)
        pos_by_id = {it.event.event_id: it.stream_pos for it in items}
        return PersistResult(
            positions=[pos_by_id.get(b.event.event_id) for b in batch],
            forward_extremities=plan.extremities,
            current_state=plan.current_state,
            state_group=plan.current_group,
            chain_length=plan.current_chain,
            stored=stored_flags,
        )

    @staticmethod
    async def _memberships_entering_without_position(
        conn: asyncpg.Connection, room_id: str, plan: WritePlan, change: CurrentStateChange,
        items: Sequence[StoredEvent], positions: Sequence[int],
    ) -> None:
        """Membership events that enter the current state without a stream
        position of their own (outliers: the members already in a room we
        join over federation, or members learnt from a gap's state) get a
        membership row at the position of the write that made them current.
        Who shares a room with whom (device lists, /keys/changes) and the
        federation sender read memberships from those rows: without them,
        everyone who was in a remote room before our user joined it is
        invisible to both."""
        positioned = {it.event.event_id for it in items if it.stream_pos is not None}
        entering = [
            (event_id, key[1], membership) for key, (event_id, membership) in change.changed.items()
            if key[0] == "m.room.member" and membership and event_id not in positioned
        ]
        if entering and positions:
            at = max(positions)  # (items may hold the insert's placeholders)
            await insert_membership_rows(conn, room_id, [
                (event_id, user_id, plan.member_senders.get(event_id, user_id), membership, at)
                for event_id, user_id, membership in entering
            ])


def _is_new(b: NewEvent, known: Mapping[str, Any]) -> bool:
    """Not stored yet, or stored as an outlier and now joining the DAG."""
    info = known.get(b.event.event_id)
    return info is None or (info.outlier and not b.context.outlier)


