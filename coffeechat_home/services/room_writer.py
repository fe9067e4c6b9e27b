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

import orjson

from ..errors import MatrixError, forbidden
from ..protocol.auth import AuthError, check_auth_rules
from ..protocol.builder import build_event
from ..protocol.canonical import encode_canonical_json_trusted
from ..protocol.client_events import client_event, redacted_forms
from ..protocol.errors import ProtocolError
from ..protocol.events import Event, StateKey, auth_types_for_event
from ..protocol.room_versions import RoomIdFormat, RoomVersion, get_room_version
from ..protocol.signing import SigningKey
from ..storage.events import (
    SNAPSHOT_EVERY,
    EventStore,
    NewStateGroup,
    PersistItem,
    StaleRoomState,
    persist_events,
)
from ..storage.stream import StreamStore
from .notifier import Notifier

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
    state: dict[StateKey, Event]
    state_group: int
    chain_length: int


@dataclass
class NewRoom:
    """Given for the first batch of a room: its row in `rooms`."""

    creator: str
    is_public: bool


@dataclass
class SendResult:
    events: list[Event]
    positions: list[int]


class RoomIdCollision(Exception):
    pass


@dataclass
class _Built:
    event: Event
    client: dict[str, Any]
    redaction_target: str | None = None
    relation: tuple[str, str, str | None] | None = None
    state_change: tuple[StateKey, Event] | None = None


@dataclass
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class RoomWriter:
    def __init__(
        self,
        stream: StreamStore,
        events: EventStore,
        notifier: Notifier,
        server_name: str,
        signing_key: SigningKey,
        *,
        cache_size: int = 2000,
    ) -> None:
        self.stream = stream
        self.events = events
        self.notifier = notifier
        self.server_name = server_name
        self.signing_key = signing_key
        self._locks: dict[str, _Lock] = {}
        self._heads: collections.OrderedDict[str, RoomHead] = collections.OrderedDict()
        self._cache_size = cache_size
        self.events_persisted = 0  # events committed by this instance, for metrics
        # callbacks run after a batch commits (e.g. federation, push)
        self.after_persist: list[Callable[[str, list[Event]], Awaitable[None]]] = []

    # -- room heads ------------------------------------------------------------
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
        path (membership pre-checks, directory permissions). Another
        instance may have written since we cached the head, so the cache is
        checked against the stored forward extremities (one cheap query)."""
        cached = self._heads.get(room_id)
        if cached is not None and cached.extremities != await self.events.forward_extremities(room_id):
            self._heads.pop(room_id, None)
        head = await self.head(room_id)
        return None if head is None else head.state

    # -- locking ---------------------------------------------------------------
    async def _with_room_lock(self, room_id: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        entry = self._locks.setdefault(room_id, _Lock())
        entry.users += 1
        try:
            async with entry.lock:
                return await fn()
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._locks.pop(room_id, None)

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
    ) -> SendResult:
        """Build, check and persist ``templates`` in order as one batch.
        ``room_id`` is None for a new v12 room (it comes from the create
        event). Raises MatrixError(403) when the auth rules refuse one."""
        if new_room is not None:
            assert room_version is not None
            return await self._create(room_id, templates, room_version, new_room, check)
        assert room_id is not None

        async def locked() -> SendResult:
            # Optimistic first: build on the cached head. When another
            # instance wrote to the room since (stale extremities), or our
            # cached state refuses the event (it may lag such a write),
            # rebuild once on the room's head read under a row lock.
            from_cache = room_id in self._heads
            head = await self.head(room_id)
            if head is None:
                raise MatrixError(404, "M_NOT_FOUND", "Room not found")
            try:
                built, new_head = await self._build(head, templates, check, int(time.time() * 1000))
                positions = await self._persist(head, built, new_head, txn, None)
            except StaleRoomState:
                pass
            except MatrixError as e:
                if e.status != 403 or not from_cache:
                    raise
            else:
                self._remember(new_head)
                return await self._committed(room_id, built, positions)
            self._heads.pop(room_id, None)
            built, new_head, positions = await self._persist_exclusive(room_id, templates, txn, check)
            self._remember(new_head)
            return await self._committed(room_id, built, positions)

        return await self._with_room_lock(room_id, locked)

    async def _persist_exclusive(
        self,
        room_id: str,
        templates: Sequence[Mapping[str, Any]],
        txn: tuple[str, str, str, str] | None,
        check: EventCheck | None,
    ) -> tuple[list[_Built], RoomHead, list[int]]:
        """Read the head, build and persist in one transaction that holds
        the room's forward extremity rows ``FOR UPDATE``: writers on other
        instances wait (or restart on 40001) instead of winning the race
        again, so a cold-cache instance is not starved (DESIGN.md 4)."""
        ts = int(time.time() * 1000)
        targets, target_rows = await self._redaction_targets(
            [t["redacts"] for t in templates if isinstance(t.get("redacts"), str)]
        )

        async def fn(conn: Any, positions: list[int]) -> tuple[list[_Built], RoomHead, list[PersistItem]]:
            await conn.execute(
                "SELECT forward_extremities FROM rooms WHERE room_id = $1 FOR UPDATE", room_id
            )
            head = await _read_head(EventStore(conn), room_id)
            if head is None:
                raise MatrixError(404, "M_NOT_FOUND", "Room not found")
            built, new_head = await self._build(head, templates, check, ts)
            items = self._items(head, built, positions, txn, targets, target_rows)
            await persist_events(
                conn, room_id, items,
                expected_extremities=head.extremities, new_extremities=[built[-1].event.event_id],
            )
            return built, new_head, items

        (built, new_head, items), positions = await self.stream.write_many(
            fn, len(templates), name="persist_events_exclusive"
        )
        _advance_state_group(new_head, items)
        return built, new_head, positions

    async def _redaction_targets(self, event_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """PDUs and rows of the events a batch redacts (read before the
        transaction, which then writes their redacted forms)."""
        if not event_ids:
            return {}, {}
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
            rid = new_head.room_id
            try:
                positions = await self._persist(empty, built, new_head, None, new_room)
            except RoomIdCollision:
                # v12: same creator, content and millisecond -> same room id
                ts += 1
                room_id = None if rv.room_id_format is RoomIdFormat.CREATE_EVENT_HASH else room_id
                continue
            self._remember(new_head)
            return await self._committed(rid, built, positions)
        raise MatrixError(500, "M_UNKNOWN", "Could not allocate a room id")

    async def _committed(self, room_id: str, built: list[_Built], positions: list[int]) -> SendResult:
        redacted = {b.redaction_target for b in built if b.redaction_target}
        head = self._heads.get(room_id)
        if redacted and head is not None and any(e.event_id in redacted for e in head.state.values()):
            # a redacted state event counts with its redacted content: reload
            self._heads.pop(room_id, None)
        self.notifier.poke()
        self.events_persisted += len(built)
        events = [b.event for b in built]
        for cb in self.after_persist:
            await cb(room_id, events)
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
            b = _Built(event, client_event(event, state.get(event.state_tuple) if event.is_state else None))
            if event.is_state:
                b.state_change = (event.state_tuple, event)
                state[event.state_tuple] = event
            if event.redacts is not None:
                b.redaction_target = event.redacts
            relates = content.get("m.relates_to") if isinstance(content, Mapping) else None
            if isinstance(relates, Mapping) and isinstance(relates.get("event_id"), str):
                rel_type = relates.get("rel_type")
                if isinstance(rel_type, str):
                    thread = relates["event_id"] if rel_type == "m.thread" else None
                    b.relation = (relates["event_id"], rel_type, thread)
            built.append(b)
            prev = [event.event_id]
            depth += 1
        new_head = RoomHead(room_id, rv, prev, depth, state, head.state_group, head.chain_length)
        return built, new_head

    async def _persist(
        self,
        head: RoomHead,
        built: list[_Built],
        new_head: RoomHead,
        txn: tuple[str, str, str, str] | None,
        new_room: NewRoom | None,
    ) -> list[int]:
        room_id = new_head.room_id
        targets, target_rows = await self._redaction_targets(
            [b.redaction_target for b in built if b.redaction_target]
        )

        async def fn(conn: Any, positions: list[int]) -> list[PersistItem]:
            if new_room is not None:
                created = await self.events.create_room_row(
                    conn, room_id, head.room_version.identifier, new_room.creator,
                    built[0].event.origin_server_ts, new_room.is_public,
                )
                if not created:
                    raise RoomIdCollision(room_id)
            items = self._items(head, built, positions, txn, targets, target_rows)
            await persist_events(
                conn, room_id, items,
                expected_extremities=head.extremities, new_extremities=[built[-1].event.event_id],
            )
            return items

        items, positions = await self.stream.write_many(fn, len(built), name="persist_events")
        _advance_state_group(new_head, items)
        return positions

    def _items(
        self,
        head: RoomHead,
        built: list[_Built],
        positions: list[int],
        txn: tuple[str, str, str, str] | None,
        targets: dict[str, dict[str, Any]],
        target_rows: dict[str, Any],
    ) -> list[PersistItem]:
        items: list[PersistItem] = []
        group, chain = head.state_group, head.chain_length
        state_ids = {k: e.event_id for k, e in head.state.items()}
        for i, (b, pos) in enumerate(zip(built, positions)):
            new_group = None
            if b.state_change is not None:
                key, ev = b.state_change
                state_ids[key] = ev.event_id
                if group == 0 or chain + 1 >= SNAPSHOT_EVERY:
                    new_group = NewStateGroup(pos, None, 0, dict(state_ids))
                else:
                    new_group = NewStateGroup(pos, group, chain + 1, {key: ev.event_id})
                group, chain = new_group.id, new_group.chain_length
            redaction = None
            if b.redaction_target is not None:
                pdu = targets.get(b.redaction_target)
                row = target_rows.get(b.redaction_target)
                if pdu is not None and row is not None and row.room_id == b.event.room_id:
                    target_event = Event(pdu, b.redaction_target, b.event.room_version)
                    rpdu, rclient = redacted_forms(pdu, orjson.loads(row.client), b.client, target_event)
                    redaction = (
                        b.redaction_target,
                        encode_canonical_json_trusted(rpdu).decode(),
                        orjson.dumps(rclient).decode(),
                    )
            items.append(
                PersistItem(
                    event=b.event,
                    stream_pos=pos,
                    pdu_json=encode_canonical_json_trusted(b.event.pdu).decode(),
                    client_json=orjson.dumps(b.client).decode(),
                    state_group=group,
                    new_state_group=new_group,
                    txn=txn if i == len(built) - 1 else None,
                    relation=b.relation,
                    redaction=redaction,
                )
            )
        return items


def _advance_state_group(new_head: RoomHead, items: list[PersistItem]) -> None:
    """The head's state group is the one after the last persisted event."""
    new_head.state_group = items[-1].state_group
    groups = [it.new_state_group for it in items if it.new_state_group is not None]
    if groups:
        new_head.chain_length = groups[-1].chain_length


async def _read_head(events: EventStore, room_id: str) -> RoomHead | None:
    """The room's head as stored; ``events`` may be bound to a connection
    inside a transaction (asyncpg connections have fetch/fetchrow/fetchval)."""
    version = await events.db.fetchval("SELECT room_version FROM rooms WHERE room_id = $1", room_id)
    if version is None:
        return None
    rv = get_room_version(version)
    extremities = await events.forward_extremities(room_id)
    head_info = await events.room_head(room_id)
    if head_info is None:
        return None
    depth, group = head_info
    return RoomHead(
        room_id, rv, extremities, depth,
        await events.current_state_events(room_id, rv),
        group, await events.state_group_chain_length(group),
    )
