"""/sync: initial and incremental, built from stream positions.

A token is one stream position (``s<pos>``, storage/stream.py). A response
covers (since, upto] where ``upto`` is the notifier's safe position, so no
event is missed or repeated even when several instances write at once. An
empty incremental sync long-polls on the notifier for changes to the user's
rooms or to the user.

The filters are in sync_filter.py, the per-room parts of a response in
sync_rooms.py (the SyncRooms mixin).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Iterable, Mapping

from ..storage.event_listings import EventRow
from ..storage.events import EventStore
from ..storage.rooms import RoomStore
from .accounts import Requester
from .history import HistoryService
from .history_tokens import make_token, parse_token
from .fanout import SharedReads
from .notifier import CHANGED_KEYS_SPAN, Notifier
from .sync_filter import SyncFilter, type_matches
from .sync_rooms import SyncRooms

SYNC_ROOM_CONCURRENCY = 6
UNREAD_EARLY_ROOMS = 50
# Rooms new to the client (an initial sync) are built this many at a time
# (SyncService._whole_rooms_chunked).
WHOLE_ROOMS_CHUNK = 25
# Latest memberships kept per user between syncs (see _latest_memberships).
MEMBERSHIPS_CACHED = 20_000
MEMBERSHIPS_TTL_S = 600.0  # longer than the longest long-poll (300 s)


@dataclass
class SyncSources:
    """Other streams' contributions (filled in by app.py's wiring)."""

    receipts: Callable[[list[str], int | None, int, str], Awaitable[dict[str, dict[str, Any]]]] | None = None
    typing: Callable[[list[str], int | None, int], Awaitable[dict[str, list[str]]]] | None = None
    account_data_global: Callable[[str, int | None, int], Awaitable[list[dict[str, Any]]]] | None = None
    account_data_rooms: Callable[[str, list[str], int | None, int], Awaitable[dict[str, list[dict[str, Any]]]]] | None = None
    presence: Callable[[str, int | None, int], Awaitable[list[dict[str, Any]]]] | None = None
    # unread_notifications per joined room in the response (user, room ids,
    # since, upto, and what changed in (since, upto] when known)
    unread: Callable[
        [str, list[str], int | None, int, Mapping[str, set[str]] | None], Awaitable[dict[str, dict[str, int]]]
    ] | None = None
    # Told of a room's every event in (after, upto], newest first, as a
    # sync's timeline read them (room id, after, upto, rows): the unread
    # counts' read of the same events is then not made.
    timeline_read: Callable[[str, int, int, list[EventRow]], None] | None = None
    # Top-level sections from other features (E2EE: to_device, device_lists,
    # key counts): each returns its fields and whether they carry news.
    extra_global: list[Callable[[Requester, int | None, int], Awaitable[tuple[dict[str, Any], bool]]]] = field(
        default_factory=list
    )
    # Lowers a response's end position (to-device batches); also called
    # first with the request's since, so it may forget acknowledged data.
    limit_upto: Callable[[Requester, int | None, int], Awaitable[int]] | None = None
    # Wake a long-poll when a user sharing a room changes something keyed
    # by their user id (presence, device lists).
    wake_on_room_peers: bool = False



class SyncService(SyncRooms):
    def __init__(
        self, events: EventStore, rooms: RoomStore, notifier: Notifier, sources: SyncSources,
        history: HistoryService | None = None,
    ) -> None:
        self.events = events
        self.rooms = rooms
        self.notifier = notifier
        self.sources = sources
        # the app's (unread counts judge the same rows with it: one shared
        # read of a room's history restrictions per change, not one each)
        self.history = history or HistoryService(events, rooms, notifier.stream)
        # user -> (position, expiry, latest memberships as of that position)
        self._memberships: OrderedDict[str, tuple[int, float, dict[str, tuple[str, str, int]]]] = OrderedDict()
        # the new events of a room in (since, upto]: the same for every
        # member woken by them
        self._timelines: SharedReads[tuple[Any, ...], list[EventRow]] = SharedReads(ttl=2.0, size=512)
        # invites from other servers: their stripped state (set when federating)
        self.remote_invite_state: Callable[[str], Awaitable[list[Any] | None]] | None = None
        # rooms joined with a partial state (federation/partial_view.py
        # sync_view: room -> (resync position, None while partial; position
        # of the last correction of its state or None), as of the position
        # given or later; when federating)
        self.partial_rooms: Callable[
            [list[str], int], Awaitable[dict[str, tuple[int | None, int | None]]]] | None = None

    async def sync(
        self, requester: Requester, *, since_token: str | None, timeout_ms: int, sync_filter: SyncFilter,
        full_state: bool,
    ) -> dict[str, Any]:
        since = parse_token(since_token, "since")
        position = self.notifier.position
        if since is not None and since == position and timeout_ms > 0 and not full_state:
            # a long-poll from where the notifier is (the next poll of a
            # woken client): whatever committed since, its own writes too,
            # moves the notifier on and wakes it (_wait checks the position
            # first), so the position need not be read fresh
            upto = position
        else:
            # Read the position fresh: a client sees its own writes (and those
            # made through other instances) at once, without waiting for a poll.
            upto = max(position, await self.notifier.stream.current_position())
        if since is not None and since > upto:
            since = upto  # a token from the future (e.g. a restored database)
        read_ahead: tuple[int, dict[str, tuple[str, str, int]]] | None = None
        if since is None and self.sources.limit_upto is not None:
            # an initial sync reads the user's memberships (which every
            # part of it waits for) beside the limit, as of the position
            # before it: one round trip less unless the limit lowers it
            limited, latest = await asyncio.gather(
                self._limit(requester, since, upto), self.rooms.latest_memberships(requester.user_id, upto))
            read_ahead, upto = (upto, latest), limited
        else:
            upto = await self._limit(requester, since, upto)
        if since is not None and since == upto and timeout_ms > 0 and not full_state:
            # nothing can have happened since the client's token (every part
            # of a response is a stream range): wait first, build once
            body: dict[str, Any] = {}
            empty = True
        else:
            body, empty = await self._build(requester, since, upto, sync_filter, full_state, read_ahead)
            if since is None or full_state or not empty or timeout_ms <= 0:
                return body
        # rooms and the user; (for presence, device lists) changes of
        # everyone sharing a room, found through the rooms at wake-up
        joined = self._joined_as_built(requester.user_id, upto)
        if joined is None:
            joined = await self.rooms.rooms_for_user(requester.user_id)
        keys = set(joined) | {requester.user_id}
        peers = self.sources.presence is not None or self.sources.wake_on_room_peers
        deadline_s = min(timeout_ms, 300_000) / 1000
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while True:
            remaining = end - loop.time()
            if remaining <= 0:
                return body or (await self._build(requester, since, upto, sync_filter, False))[0]
            # woken by a change, the answer is built inside the block: the
            # notifier resumes the long-polls one change wakes a chunk at a time
            async with self.notifier.change(upto, keys, remaining, peers=peers) as new:
                if new <= upto:
                    return body or (await self._build(requester, since, upto, sync_filter, False))[0]
                upto = await self._limit(requester, since, new)
                body, empty = await self._build(requester, since, upto, sync_filter, False)
                if not empty:
                    return body

    def _joined_as_built(self, user_id: str, upto: int) -> list[str] | None:
        """The rooms a long-poll waits on from ``upto``, without a statement
        when the user's memberships are known as of exactly that position
        (the next poll of a woken client: its last response was built up to
        there): the joined rooms among them, the rooms a response would
        show. A membership change after it is the user's own key, so it
        wakes the poll anyway."""
        hit = self._memberships.get(user_id)
        if hit is None or hit[0] != upto or hit[1] <= time.monotonic():
            return None
        return [r for r, (m, _, _) in hit[2].items() if m == "join"]

    async def _latest_memberships(
        self, user_id: str, since: int | None, upto: int, changes: Mapping[str, set[str]] | None,
        read_ahead: tuple[int, dict[str, tuple[str, str, int]]] | None = None,
    ) -> dict[str, tuple[str, str, int]]:
        """The user's latest membership per room as of ``upto``; reused from
        the user's previous sync when none of theirs changed in between, or
        given (``read_ahead``: as of a position, used when it is upto)."""
        hit = self._memberships.get(user_id)
        now = time.monotonic()
        if (
            hit is not None and changes is not None and since is not None and since <= hit[0] <= upto
            and hit[1] > now and user_id not in changes.get("room_memberships", ())
        ):
            if hit[0] != upto:  # nothing of theirs changed up to upto: the same as of upto
                self._memberships[user_id] = (upto, hit[1], hit[2])
            self._memberships.move_to_end(user_id)
            return hit[2]
        if read_ahead is not None and read_ahead[0] == upto:
            latest = read_ahead[1]
        else:
            latest = await self.rooms.latest_memberships(user_id, upto)
        self._memberships[user_id] = (upto, now + MEMBERSHIPS_TTL_S, latest)
        self._memberships.move_to_end(user_id)
        while len(self._memberships) > MEMBERSHIPS_CACHED:
            self._memberships.popitem(last=False)
        return latest

    async def _limit(self, requester: Requester, since: int | None, upto: int) -> int:
        if self.sources.limit_upto is None:
            return upto
        return await self.sources.limit_upto(requester, since, upto)

    async def _build(
        self, requester: Requester, since: int | None, upto: int, f: SyncFilter, full_state: bool,
        read_ahead: tuple[int, dict[str, tuple[str, str, int]]] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        user_id = requester.user_id
        # An incremental sync asks only what changed: the keys (room ids,
        # user ids) with anything in (since, upto], per stream table, say
        # which rooms need building and which streams can have something
        # for this user (each stream is a table in storage/stream.py's
        # STREAM_TABLES, keyed as registered there).
        incremental = since is not None and not full_state and upto - since <= CHANGED_KEYS_SPAN
        changes = await self.notifier.changes(since, upto) if incremental and since is not None else None
        latest = await self._latest_memberships(user_id, since, upto, changes, read_ahead)

        def touched(table: str, key: str) -> bool:
            return changes is None or key in changes.get(table, ())

        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        knock: dict[str, Any] = {}
        if self.partial_rooms is not None:
            f, latest = await self._partial_state_rooms(f, latest, since, upto, changes)
        joined_ids = [r for r, (m, _, _) in latest.items() if m == "join" and f.wants_room(r)]
        src = self.sources
        if changes is None:
            build_ids = typing_ids = receipt_ids = joined_ids
        else:  # the rooms with news (a user in many rooms: few of them)
            events = changes.get("events", ())
            build_ids = [r for r in joined_ids if r in events or (since is not None and latest[r][2] > since)]
            typing_ids = _with_key(joined_ids, changes.get("typing"))
            # public receipts change under the room's key, private ones under the user's
            receipt_ids = joined_ids if touched("receipts", user_id) else _with_key(joined_ids, changes.get("receipts"))
        account_data = touched("account_data", user_id)
        presence_changed = changes is None or bool(changes.get("presence"))

        nothing = None  # a part with nothing to read (see _gather_parts)

        # Joined rooms are built concurrently (a few queries each, on several
        # pooled connections), and so are the other streams' parts: a sync
        # costs the database's parallelism, not round trips in a row.
        gates: list[asyncio.Semaphore] = []  # made when two rooms or more are built (not for a woken sync's one)

        async def joined_room(room_id: str, pos: int) -> dict[str, Any]:
            if not gates:
                gates.append(asyncio.Semaphore(SYNC_ROOM_CONCURRENCY))
            async with gates[0]:
                return await self._joined_room(requester, room_id, since, upto, pos, f, full_state)

        # Rooms new to the client (an initial sync, a join since, full_state)
        # are built together in a few queries whatever their number; rooms
        # the client has are built one by one (few change at once).
        whole_ids = [r for r in build_ids if since is None or full_state or latest[r][2] > since]
        whole_set = set(whole_ids)
        part_ids = [r for r in build_ids if r not in whole_set]

        async def all_joined_rooms() -> list[dict[str, Any]]:
            if not whole_ids:  # an incremental sync: rooms the client has
                if len(part_ids) == 1:
                    return [await self._joined_room(requester, part_ids[0], since, upto, latest[part_ids[0]][2],
                                                    f, full_state)]
                return list(await asyncio.gather(*(joined_room(r, latest[r][2]) for r in part_ids)))
            whole_read = self._whole_rooms_chunked(requester, {r: latest[r][2] for r in whole_ids}, since, upto, f)
            if not part_ids:  # (no task of its own: its statements start a turn sooner)
                whole = await whole_read
                return [whole[r] for r in whole_ids]
            whole, parts = await asyncio.gather(
                whole_read, asyncio.gather(*(joined_room(r, latest[r][2]) for r in part_ids)),
            )
            return [*(whole[r] for r in whole_ids), *parts]

        # Unread counts go with everything else when every joined room will
        # be in the response (initial sync) or there are few rooms; for an
        # incremental sync, or a user in many rooms, only the rooms in the
        # response are counted.
        unread_early = bool(src.unread and joined_ids) and (
            since is None or (changes is None and len(joined_ids) <= UNREAD_EARLY_ROOMS)
        )
        # the other features' parts (E2EE key counts, to-device) along
        # with everything else rather than after it: a woken long-poll's
        # key counts beside its room's events, one round trip instead of
        # two in a row (scratch timing marks on bench_rooms' latency phase:
        # its build 0.88-0.94 ms against 0.95-1.21; within the machine's
        # noise in bench_send_path.py's A/B)
        async def extras_part() -> list[tuple[dict[str, Any], bool]]:
            return list(await asyncio.gather(*(extra(requester, since, upto) for extra in src.extra_global)))

        extras = extras_part() if src.extra_global else nothing
        # Rooms new to the client are built by a chain of statements in a
        # row (see _whole_rooms), the longest of the sync; the other parts
        # are a statement or two each. Those start two turns of the loop
        # later, so that the chain's first statements, made in tasks of
        # their own, ask the pool for connections first (with more parts
        # than connections they waited behind them all).
        side = _behind if whole_ids else _as_is
        (built_list, typing, receipts, room_account_data, global_account_data, presence,
         unread, extra_parts) = await _gather_parts(
            all_joined_rooms(),
            side(src.typing(typing_ids, since, upto) if src.typing and typing_ids else nothing),
            side(src.receipts(receipt_ids, since, upto, user_id) if src.receipts and receipt_ids else nothing),
            side(src.account_data_rooms(user_id, list(latest), since, upto)
                 if src.account_data_rooms and latest and account_data else nothing),
            side(src.account_data_global(user_id, since, upto)
                 if src.account_data_global and account_data else nothing),
            side(src.presence(user_id, since, upto) if src.presence and presence_changed else nothing),
            side(src.unread(user_id, joined_ids, since, upto, changes) if src.unread and unread_early else nothing),
            side(extras),
        )
        built = dict(zip(whole_ids + part_ids, built_list))
        typing, receipts, room_account_data = typing or {}, receipts or {}, room_account_data or {}
        forgotten: set[str] | None = None  # read only when a left room may be in the response
        for room_id, (membership, event_id, pos) in latest.items():
            if not f.wants_room(room_id):
                continue
            changed = since is None or pos > since
            if membership == "join":
                room = built.get(room_id)
                if room is None:  # nothing of its own changed: no timeline or state
                    if room_id not in typing and room_id not in receipts and not room_account_data.get(room_id):
                        continue  # (an incremental sync: every joined room is built otherwise)
                    room = {
                        "timeline": {"events": [], "limited": False, "prev_batch": make_token(upto)},
                        "state": {"events": []},
                    }
                ephemeral = []
                if room_id in typing:
                    ephemeral.append({"type": "m.typing", "content": {"user_ids": typing[room_id]}})
                if room_id in receipts:
                    ephemeral.append({"type": "m.receipt", "content": receipts[room_id]})
                if ephemeral:
                    room["ephemeral"] = {"events": ephemeral}
                if room_account_data.get(room_id):
                    room["account_data"] = {"events": room_account_data[room_id]}
                if since is None or full_state or _room_has_content(room):
                    join[room_id] = room
            elif membership == "invite" and (changed or full_state):
                invite[room_id] = {"invite_state": {"events": await self._stripped_state(event_id, requester)}}
            elif membership == "knock" and (changed or full_state):
                knock[room_id] = {"knock_state": {"events": await self._stripped_state(event_id, requester)}}
            elif membership in ("leave", "ban"):
                if (since is not None and changed) or (since is None and f.include_leave) or (full_state and f.include_leave):
                    if forgotten is None:
                        forgotten = await self.rooms.forgotten(user_id)
                    if room_id not in forgotten:
                        leave[room_id] = await self._left_room(requester, room_id, since, pos, f)
        if src.unread and join:
            if unread is None:  # only the rooms in this response
                unread = await src.unread(user_id, list(join), since, upto, changes)
            for room_id in join:
                if room_id in unread:
                    join[room_id]["unread_notifications"] = unread[room_id]
        rooms: dict[str, Any] = {}
        for name, section in (("join", join), ("invite", invite), ("leave", leave), ("knock", knock)):
            if section:
                rooms[name] = section
        body: dict[str, Any] = {"next_batch": make_token(upto)}
        if rooms:
            body["rooms"] = rooms
        for key, events, types in (
            ("account_data", global_account_data, f.account_data_types),
            ("presence", presence, f.presence_types),
        ):
            kept = [e for e in events or () if types is None or type_matches(e.get("type", ""), types)]
            if kept:
                body[key] = {"events": kept}
        news = False
        for part, part_news in extra_parts or ():
            body.update(part)
            news = news or part_news
        empty = not rooms and "account_data" not in body and "presence" not in body and not news
        return body, empty

    async def _whole_rooms_chunked(
        self, requester: Requester, join_pos: dict[str, int], since: int | None, upto: int, f: SyncFilter
    ) -> dict[str, dict[str, Any]]:
        """``_whole_rooms`` a ``WHOLE_ROOMS_CHUNK`` of rooms at a time: a
        big initial sync holds one chunk's rows, state and members at once
        instead of all of them (bench_rooms, 100 rooms: peak RSS 64.1 ->
        62.4 MB, the sync's time within the noise). Each chunk is the same
        few statements, so a chunk of 25 keeps a typical account's initial
        sync to one."""
        if len(join_pos) <= WHOLE_ROOMS_CHUNK:
            return await self._whole_rooms(requester, join_pos, since, upto, f)
        items = list(join_pos.items())
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(items), WHOLE_ROOMS_CHUNK):
            out.update(await self._whole_rooms(requester, dict(items[i:i + WHOLE_ROOMS_CHUNK]), since, upto, f))
        return out

    async def _partial_state_rooms(
        self, f: SyncFilter, latest: dict[str, tuple[str, str, int]], since: int | None, upto: int,
        changes: Mapping[str, Iterable[str]] | None,
    ) -> tuple[SyncFilter, dict[str, tuple[str, str, int]]]:
        """The room filter for rooms joined with a partial state (as
        Synapse): without lazy-loaded members, a room whose member list is
        still being fetched is left out, and once resynced it comes as newly
        joined (its whole state) from the resync's position. With
        lazy-loaded members the room shows as it is. A room whose state was
        corrected after its resync (a state event received while it was
        partial, rejected: storage/partial_state.py rewrite_state)
        comes whole again from the correction's position, lazy-loading or
        not: the state the client built from its timeline is wrong. Asks
        the database only about rooms this sync may show."""
        lazy = f.lazy_load_members
        if lazy and since is None:
            return f, latest
        joined = [r for r, (m, _, _) in latest.items() if m == "join"]
        if changes is not None and since is not None:
            tables = ("room_state_resets",) if lazy else (
                "events", "partial_state_rooms", "room_state_resets", "typing", "receipts")
            touched: set[str] = set()
            for table in tables:
                touched.update(changes.get(table, ()))
            joined = [r for r in joined if r in touched or (not lazy and latest[r][2] > since)]
        if not joined:
            return f, latest
        view = await self.partial_rooms(joined, upto) if self.partial_rooms is not None else {}
        if not view:
            return f, latest
        # (what happened after ``upto``, read by a later view: not yet here;
        # the next sync finds it in the stream)
        view = {r: (None if pos is None or pos > upto else pos, None if reset is None or reset > upto else reset)
                for r, (pos, reset) in view.items()}
        hidden = [] if lazy else [r for r, (pos, _) in view.items() if pos is None]
        whole_from: dict[str, int] = {}
        for r, (pos, reset) in view.items():
            at = reset if lazy or pos is None else max(pos, reset or 0)
            if at is not None and at > latest[r][2]:
                whole_from[r] = at
        if whole_from:
            latest = {**latest, **{r: (latest[r][0], latest[r][1], pos) for r, pos in whole_from.items()}}
        if hidden:
            f = replace(f, not_rooms=[*f.not_rooms, *hidden])
        return f, latest



def _as_is(part: Awaitable[Any] | None) -> Awaitable[Any] | None:
    return part


def _behind(part: Awaitable[Any] | None) -> Awaitable[Any] | None:
    """``part`` started two turns of the event loop later (None: None)."""
    if part is None:
        return None

    async def later() -> Any:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return await part

    return later()


async def _gather_parts(*parts: Awaitable[Any] | None) -> list[Any]:
    """The parts' results (None for a part that is None), concurrently when
    more than one has work; a lone part is awaited directly (gather's tasks
    cost more than it: a woken incremental sync's room without the E2EE
    part, which is absent when no such feature is wired)."""
    real = [p for p in parts if p is not None]
    if len(real) <= 1:
        return [None if p is None else await p for p in parts]
    done = iter(await asyncio.gather(*real))
    return [None if p is None else next(done) for p in parts]



def _with_key(room_ids: list[str], keys: set[str] | None) -> list[str]:
    """The rooms among ``room_ids`` (in their order) that are in ``keys``."""
    return [r for r in room_ids if r in keys] if keys else []


def _room_has_content(room: Mapping[str, Any]) -> bool:
    return bool(
        room["timeline"]["events"] or room["state"]["events"] or room.get("ephemeral") or room.get("account_data")
    )
