"""The local send path: build, auth-check and persist events in a room.

Writes to one room are serialized in this process by a per-room lock, so
local forward extremities never fork. Each room's head (extremities, depth,
current state, state group) is cached; the persist transaction checks the
extremities it built on are still the room's, so a write by another
instance makes us reload and rebuild instead of forking (DESIGN.md 2, 4).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

from ..errors import MatrixError, forbidden
from ..protocol.auth import AuthError, check_auth_rules
from ..protocol.builder import build_event
from ..protocol.client_events import client_event
from ..protocol.errors import ProtocolError
from ..protocol.events import Event, StateKey, auth_types_for_event
from ..protocol.room_versions import RoomIdFormat, RoomVersion, get_room_version
from ..protocol.signing import SigningKey
from ..storage.event_writes import StaleRoomState
from ..storage.events import EventStore
from ..storage.group_commit import GroupCommit
from ..storage.stream import Ahead, StreamStore
from ..storage.stream_statements import Guard
from .persister import (
    EventContext,
    NewEvent,
    NewRoom,
    Persister,
    PersistResult,
    RoomBase,
    RoomIdCollision,
)

__all__ = ["NewRoom", "RoomHead", "RoomIdCollision", "RoomWriter", "SendResult"]

MAX_PREV_EVENTS = 10

# An extra check run on each built event against the state before it, after
# the auth rules (e.g. "may this user redact that event").
EventCheck = Callable[[Event, Mapping[StateKey, Event]], Awaitable[None]]
_T = TypeVar("_T")


@dataclass
class RoomHead:
    room_id: str
    room_version: RoomVersion
    extremities: list[str]
    depth: int
    state: dict[StateKey, Event]  # slim events (Event.slim): content, not signatures
    state_group: int
    chain_length: int
    state_ids: dict[StateKey, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.state_ids and self.state:
            self.state_ids = {k: e.event_id for k, e in self.state.items()}


@dataclass
class SendResult:
    events: list[Event]
    positions: list[int]


@dataclass
class _Built:
    event: Event
    client: dict[str, Any]
    state_before: dict[StateKey, str]
    redaction_target: str | None = None


class RoomWriter:
    """The local sender: builds events on the room's head, signs and
    auth-checks them (AuthError -> 403) and hands them to the persister
    with a compare-and-set of the extremities it built on."""

    def __init__(
        self,
        persister: Persister,
        server_name: str,
        signing_key: SigningKey,
        *,
        cache_size: int = 2000,
        group_commit: bool = True,
        group_commit_transactions: int = 2,
    ) -> None:
        self.persister = persister
        # concurrent sends to different rooms share a transaction (issue #7)
        self.group_commit = GroupCommit(persister.stream, enabled=group_commit, transactions=group_commit_transactions)
        self.stream: StreamStore = persister.stream
        self.events: EventStore = persister.events
        self.server_name = server_name
        self.signing_key = signing_key
        self._heads: collections.OrderedDict[str, RoomHead] = collections.OrderedDict()
        self._cache_size = cache_size
        persister.room_changed.append(self.forget)

    @property
    def events_persisted(self) -> int:
        return self.persister.events_persisted

    # -- room heads ------------------------------------------------------------
    def forget(self, room_id: str) -> None:
        self._heads.pop(room_id, None)

    async def head(self, room_id: str) -> RoomHead | None:
        head = self._heads.get(room_id)
        if head is not None:
            self._heads.move_to_end(room_id)
            return head
        return await self._load_head(room_id)

    async def _load_head(self, room_id: str) -> RoomHead | None:
        head = await _read_head(self.events, room_id)
        if head is not None:
            self._remember(head)
        return head

    def _remember(self, head: RoomHead) -> None:
        self._heads[head.room_id] = head
        self._heads.move_to_end(head.room_id)
        while len(self._heads) > self._cache_size:
            self._heads.popitem(last=False)

    async def current_state(self, room_id: str) -> dict[StateKey, Event] | None:
        """The room's current state for decisions made outside the send
        path (membership pre-checks, directory permissions), as slim
        events (``Event.slim``: read their content, never send them). Another
        instance may have written since we cached the head, so the cache is
        checked against the stored forward extremities (one cheap query)."""
        cached = self._heads.get(room_id)
        if cached is not None and cached.extremities != await self.events.forward_extremities(room_id):
            self._heads.pop(room_id, None)
        head = await self.head(room_id)
        return None if head is None else head.state

    # -- sending -----------------------------------------------------------------
    async def send(
        self,
        room_id: str | None,
        templates: Sequence[Mapping[str, Any]],
        *,
        room_version: RoomVersion | None = None,
        new_room: NewRoom | None = None,
        txn: tuple[str, str, str, str] | None = None,
        check: EventCheck | None = None,
        guard: Guard | None = None,
    ) -> SendResult:
        """Build, check and persist ``templates`` in order as one batch.
        ``room_id`` is None for a new v12 room (it comes from the create
        event). Raises MatrixError(403) when the auth rules refuse one.
        ``guard``: run first in the write transaction (``StreamStore.write_many``)."""
        if new_room is not None:
            assert room_version is not None
            return await self._create(room_id, templates, room_version, new_room, check)
        assert room_id is not None

        async with self.persister.room_lock(room_id):
            # Optimistic first: build on the cached head. When another
            # instance wrote to the room since (stale extremities), or our
            # cached state refuses the event (it may lag such a write),
            # rebuild once on the room's head read under a row lock.
            from_cache = room_id in self._heads
            head = await self.head(room_id)
            if head is None:
                raise MatrixError(404, "M_NOT_FOUND", "Room not found")
            # A message that will go alone: its reservation's round trip
            # runs in the database while the event is built (GroupCommit.ahead).
            # Made under the room's lock: made before it, the transaction it
            # takes could be held while the write that holds the lock queues
            # for one.
            ahead = await self.group_commit.ahead() if _one_statement(templates) else None
            try:
                if ahead is not None:
                    await asyncio.sleep(0)  # (the reservation's statement goes out)
                built, new_head = await self._build(head, templates, check, int(time.time() * 1000))
                result, positions = await self._persist(head, built, txn, None, guard=guard, ahead=ahead)
            except StaleRoomState:
                pass
            except MatrixError as e:
                if e.status != 403 or not from_cache:
                    raise
            else:
                return await self._committed(new_head, built, result, positions)
            finally:
                if ahead is not None:
                    ahead.drop()  # unless the write took it
            self._heads.pop(room_id, None)
            built, new_head, result, positions = await self._persist_exclusive(room_id, templates, txn, check, guard)
            return await self._committed(new_head, built, result, positions)

    async def _persist_exclusive(
        self,
        room_id: str,
        templates: Sequence[Mapping[str, Any]],
        txn: tuple[str, str, str, str] | None,
        check: EventCheck | None,
        guard: Guard | None = None,
    ) -> tuple[list[_Built], RoomHead, PersistResult, list[int]]:
        """Read the head, build and persist in one transaction that holds
        the room's row ``FOR UPDATE``: writers on other instances wait (or
        restart on 40001) instead of winning the race again, so a
        cold-cache instance is not starved (DESIGN.md 4)."""
        ts = int(time.time() * 1000)
        targets = await self._redaction_targets(
            [t["redacts"] for t in templates if isinstance(t.get("redacts"), str)]
        )

        async def fn(conn: Any, positions: list[int]) -> tuple[list[_Built], RoomHead, PersistResult]:
            store = EventStore(conn)
            await store.room_version(room_id, for_update=True)
            head = await _read_head(store, room_id)
            if head is None:
                raise MatrixError(404, "M_NOT_FOUND", "Room not found")
            built, new_head = await self._build(head, templates, check, ts)
            result = await self.persister.write_on_base(
                conn, positions, room_id, self._batch(head, built, txn), _base(head),
                room_version=head.room_version, redaction_targets=targets,
            )
            return built, new_head, result

        (built, new_head, result), positions = await self.stream.write_many(
            fn, len(templates), name="persist_events_exclusive", guard=guard
        )
        return built, new_head, result, positions

    async def _redaction_targets(self, event_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """PDUs and rows of the events a batch redacts (read before the
        transaction, which then writes their redacted forms)."""
        if not event_ids:
            return None
        return await self.events.get_pdus(event_ids), await self.events.get_rows(event_ids)

    async def _create(
        self,
        room_id: str | None,
        templates: Sequence[Mapping[str, Any]],
        rv: RoomVersion,
        new_room: NewRoom,
        check: EventCheck | None,
    ) -> SendResult:
        ts = int(time.time() * 1000)
        for _ in range(20):
            rid = room_id
            if rv.room_id_format is RoomIdFormat.SERVER and rid is None:
                rid = f"!{secrets.token_urlsafe(18)}:{self.server_name}"
            empty = RoomHead(rid or "", rv, [], 0, {}, 0, 0)
            built, new_head = await self._build(empty, templates, check, ts)
            try:
                async with self.persister.room_lock(new_head.room_id):
                    result, positions = await self._persist(empty, built, None, new_room, new_head.room_id)
            except RoomIdCollision:
                # v12: same creator, content and millisecond -> same room id
                ts += 1
                room_id = None if rv.room_id_format is RoomIdFormat.CREATE_EVENT_HASH else room_id
                continue
            return await self._committed(new_head, built, result, positions)
        raise MatrixError(500, "M_UNKNOWN", "Could not allocate a room id")

    async def _committed(
        self, new_head: RoomHead, built: list[_Built], result: PersistResult, positions: list[int]
    ) -> SendResult:
        room_id = new_head.room_id
        new_head.extremities = result.forward_extremities
        new_head.state_group = result.state_group
        new_head.chain_length = result.chain_length
        redacted = {b.redaction_target for b in built if b.redaction_target}
        if len(result.forward_extremities) != 1 or (
            redacted and any(e.event_id in redacted for e in new_head.state.values())
        ):
            # a fork we did not merge (its state was resolved by the
            # persister), or a redacted state event (it counts with its
            # redacted content): read the head again next time
            self._heads.pop(room_id, None)
        else:
            self._remember(new_head)
        events = [b.event for b in built]
        await self.persister.committed(room_id, events)
        return SendResult(events, positions)

    async def _build(
        self,
        head: RoomHead,
        templates: Sequence[Mapping[str, Any]],
        check: EventCheck | None,
        ts: int,
    ) -> tuple[list[_Built], RoomHead]:
        rv = head.room_version
        state = dict(head.state)
        state_ids = head.state_ids
        prev = head.extremities[-MAX_PREV_EVENTS:]
        depth = head.depth
        room_id = head.room_id
        built: list[_Built] = []
        for tpl in templates:
            template = dict(tpl)
            is_v12_create = (
                template["type"] == "m.room.create" and rv.room_id_format is RoomIdFormat.CREATE_EVENT_HASH
            )
            if not is_v12_create:
                template["room_id"] = room_id
            content = template.get("content") or {}
            keys = auth_types_for_event(rv, template["type"], template["sender"], template.get("state_key"), content)
            auth_ids = [state[k].event_id for k in keys if k in state]
            try:
                event = build_event(
                    rv, template=template, prev_events=prev, auth_events=auth_ids, depth=depth + 1,
                    origin_server_ts=ts, server_name=self.server_name, signing_key=self.signing_key,
                )
            except ProtocolError as e:
                raise MatrixError(400, "M_BAD_JSON", f"Invalid event: {e}") from None
            if event.type == "m.room.create":
                room_id = event.room_id
            auth_state = {k: state[k] for k in keys if k in state}
            if ("m.room.create", "") in state:
                auth_state[("m.room.create", "")] = state[("m.room.create", "")]
            try:
                check_auth_rules(event, auth_state)
            except AuthError as e:
                raise forbidden(e.message) from None
            if check is not None:
                await check(event, state)
            b = _Built(
                event, client_event(event, state.get(event.state_tuple) if event.is_state else None), state_ids
            )
            if event.is_state:
                state[event.state_tuple] = event.slim()  # (the head keeps it: Event.slim)
                state_ids = dict(state_ids)
                state_ids[event.state_tuple] = event.event_id
            if event.redacts is not None:
                b.redaction_target = event.redacts
            built.append(b)
            prev = [event.event_id]
            depth += 1
        new_head = RoomHead(room_id, rv, prev, depth, state, head.state_group, head.chain_length, state_ids)
        return built, new_head

    def _batch(
        self, head: RoomHead, built: list[_Built], txn: tuple[str, str, str, str] | None
    ) -> list[NewEvent]:
        first = True
        out = []
        for i, b in enumerate(built):
            ctx = EventContext(state_before=b.state_before, state_group_before=head.state_group if first else None)
            if head.state_group == 0:
                ctx.state_group_before = None  # a new room: nothing stored yet
            first = False
            out.append(NewEvent(b.event, ctx, client=b.client, txn=txn if i == len(built) - 1 else None,
                                redaction_checked=True))
        return out

    async def _persist(
        self,
        head: RoomHead,
        built: list[_Built],
        txn: tuple[str, str, str, str] | None,
        new_room: NewRoom | None,
        room_id: str | None = None,
        *,
        guard: Guard | None = None,
        ahead: Ahead | None = None,
    ) -> tuple[PersistResult, list[int]]:
        rid = room_id or head.room_id
        targets = await self._redaction_targets([b.redaction_target for b in built if b.redaction_target])
        batch = self._batch(head, built, txn)

        async def fn(conn: Any, positions: list[int]) -> PersistResult:
            return await self.persister.write_on_base(
                conn, positions, rid, batch, _base(head),
                room_version=head.room_version, new_room=new_room, redaction_targets=targets, allocate=True,
            )

        if new_room is not None:
            return await self.stream.write_many(fn, len(built), name="persist_events", guard=guard, allocate=False)
        # the positions are taken by the events' insert (one round trip
        # fewer); sends to other rooms in flight meanwhile share its commit.
        # Messages (no state, membership or redaction) are that insert
        # alone: when they go alone it commits by itself (two round trips)
        single = all(
            b.event.state_key is None and b.event.redacts is None and b.redaction_target is None
            and b.event.type != "m.room.redaction" for b in built
        )
        return await self.group_commit.write(
            fn, len(built), name="persist_events", guard=guard, single=single, ahead=ahead
        )


def _one_statement(templates: Sequence[Mapping[str, Any]]) -> bool:
    """Whether events built from ``templates`` are written as one statement
    (``_persist``'s ``single``: no state, no redaction)."""
    return all(
        "state_key" not in t and t.get("redacts") is None and t.get("type") != "m.room.redaction" for t in templates
    )


def _base(head: RoomHead) -> RoomBase:
    return RoomBase(head.extremities, head.state_ids, head.state_group, head.chain_length)


async def _read_head(events: EventStore, room_id: str) -> RoomHead | None:
    """The room's head as stored; ``events`` may be bound to a connection
    inside a transaction."""
    version = await events.room_version(room_id)
    if version is None:
        return None
    rv = get_room_version(version)
    extremities = await events.forward_extremities(room_id)
    head_info = await events.state.room_head(room_id)
    if head_info is None:
        return None
    depth, group, chain_length = head_info
    # slim events (Event.slim): a head is cached, with every state event of its room
    state = {k: e.slim() for k, e in (await events.state.current_state_events(room_id, rv)).items()}
    return RoomHead(room_id, rv, extremities, depth, state, group, chain_length)
