"""Unread notification counts for /sync and the notification list of
GET /notifications, both from push rule evaluation at read time.

Nothing is stored per event: the events after the user's read receipt are
evaluated with the user's push rules when asked. The work is bounded: at
most ``UNREAD_SCAN_LIMIT`` (the newest) events per room are evaluated, so a
room with more unread events than that reports the count among those. The
room's member count, the user's display name and the power levels are the
room's current ones (not those at each event).

For /sync, what each user's last sync counted is kept in the process and
carried forward when nothing it depends on changed (``counts_for_sync``):
then only the room's new events are evaluated, and they are read and parsed
once for all the members woken by them. A cache safe to lose: any instance
counts afresh when it has nothing to carry.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

import orjson

from ..protocol.push_eval import (
    CompiledRule, PushContext, compile_ruleset, evaluate, highlights, matching_compiled, notifies,
)
from ..errors import invalid_param
from ..storage.event_listings import EventRow
from ..storage.rooms import RoomStore
from ..storage.stream import StreamStore
from ..storage.unread import RoomEvent, RoomPushState, UnreadEvent, UnreadStore
from .fanout import SharedReads
from .push_rules import PushRuleService

UNREAD_SCAN_LIMIT = 100  # newest events evaluated per room for unread counts
NOTIFICATIONS_BATCH = 100
NOTIFICATIONS_SCAN_LIMIT = 1000  # events examined per GET /notifications page


NOTIFY = 1
HIGHLIGHT = 2
CARRY_TTL_S = 600.0  # recounted from the database at least this often (longer than a long-poll)
COUNTED_CACHED = 100_000  # (user, room) counts kept for carrying forward

# (user, rows by room) -> the ids of the rows the user may not see by the
# state at each event (HistoryService.hidden_events)
HiddenEvents = Callable[[str, Mapping[str, Sequence[Any]]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class _Counted:
    pos: int  # counted as of this position
    expires: float
    state: RoomPushState  # what the events were evaluated with
    flags: bytes  # NOTIFY | HIGHLIGHT per unread event by others, oldest first (at most UNREAD_SCAN_LIMIT)
    levels: Mapping[str, int]  # the notifications power levels of ``state``


@dataclass(frozen=True, slots=True)
class _NewEvent:
    row: RoomEvent
    event: dict[str, Any]
    # answers of push rule conditions on this event, shared by every member
    # it is evaluated for (push_eval.matching_compiled)
    memo: dict[Any, Any] = field(default_factory=dict)


def _flags(actions: list[Any]) -> int:
    if not notifies(actions):
        return 0
    return NOTIFY | (HIGHLIGHT if highlights(actions) else 0)


def _sender_level(power_levels: Mapping[str, Any], sender: str) -> int:
    users = power_levels.get("users")
    level = users.get(sender) if isinstance(users, dict) else None
    if level is None:
        level = power_levels.get("users_default", 0)
    return level if isinstance(level, int) and not isinstance(level, bool) else 0


def _notification_levels(power_levels: Mapping[str, Any]) -> dict[str, int]:
    levels = power_levels.get("notifications")
    if not isinstance(levels, dict):
        return {}
    return {k: v for k, v in levels.items() if isinstance(v, int) and not isinstance(v, bool)}


class UnreadService:
    def __init__(self, store: UnreadStore, push_rules: PushRuleService, rooms: RoomStore, stream: StreamStore) -> None:
        self.store = store
        self.push_rules = push_rules
        self.rooms = rooms
        self.stream = stream
        # (user, room) -> what the user's last sync counted, to carry forward
        self._counted: OrderedDict[tuple[str, str], _Counted] = OrderedDict()
        # user -> (position, expiry, push rules as of that position)
        self._rulesets: dict[str, tuple[int, float, Mapping[str, Any], tuple[CompiledRule, ...]]] = {}
        # a room's new events, shared by the members woken by them
        self._new: SharedReads[tuple[str, int, int], list[_NewEvent] | None] = SharedReads(ttl=5.0, size=256)
        self._new_last: tuple[tuple[str, int, int] | None, list[_NewEvent] | None] = (None, None)
        # set by the app: events a user may not see by the state at each
        # event (late arrivals in a joined-only room) are not counted
        self.hidden_events: HiddenEvents | None = None

    async def _hidden(self, user_id: str, rows_by_room: Mapping[str, Sequence[Any]]) -> set[str]:
        if self.hidden_events is None or not any(rows_by_room.values()):
            return set()
        return await self.hidden_events(user_id, rows_by_room)

    def _actions(
        self, user_id: str, ruleset: Mapping[str, Any], state: RoomPushState, ev: UnreadEvent
    ) -> tuple[list[Any], dict[str, Any]]:
        event = orjson.loads(ev.client)
        return evaluate(ruleset, event, self._context(user_id, state, ev.sender)), event

    async def counts_for_sync(
        self, user_id: str, room_ids: list[str], since: int | None, upto: int,
        changes: Mapping[str, set[str]] | None = None,
    ) -> dict[str, dict[str, int]]:
        """``unread_notifications`` for each room: notifying and highlighting
        events after the user's read receipt.

        A room counted for the user's previous sync (at ``since``) is carried
        forward by evaluating only the room's new events, when nothing the
        counts depend on changed in (since, upto] (``changes``): no state
        event in the room (member count, display name, power levels), no
        receipt of the room or the user, no membership or account data
        (push rules) of the user. Otherwise the room is counted afresh."""
        out = {r: {"notification_count": 0, "highlight_count": 0} for r in room_ids}
        if not room_ids:
            return out
        fresh: list[str] = []
        carried: dict[str, _Counted] = {}
        user_unchanged = changes is not None and not (
            user_id in changes.get("room_memberships", ()) or user_id in changes.get("account_data", ())
            or user_id in changes.get("receipts", ())
        )
        for room_id in room_ids:
            hit = self._counted.get((user_id, room_id))
            if (
                user_unchanged and hit is not None and since is not None and since <= hit.pos <= upto
                and hit.expires > time.monotonic() and changes is not None
                and room_id not in changes.get("receipts", ())
            ):
                carried[room_id] = hit
            else:
                fresh.append(room_id)
        counted: dict[str, bytes] = {}
        if carried:
            rules = await self._ruleset(user_id, since, upto, changes)
            for room_id, hit in carried.items():
                new = await self._new_events(room_id, hit.pos, upto)
                if new is None or any(e.row.is_state for e in new):
                    fresh.append(room_id)
                    continue
                others = [e for e in new if e.row.sender != user_id]
                hidden = await self._hidden(user_id, {room_id: [e.row for e in others]})
                added = bytes(self._flag(rules, user_id, hit, e) for e in others if e.row.event_id not in hidden)
                counted[room_id] = (hit.flags + added)[-UNREAD_SCAN_LIMIT:] if added else hit.flags
                self._remember(user_id, room_id, upto, hit.state, counted[room_id], hit.levels)
        if fresh:
            counted.update(await self._count_fresh(user_id, fresh, upto))
        for room_id, flags_of in counted.items():
            # a highlight always notifies: each flag is 0, NOTIFY or NOTIFY | HIGHLIGHT
            highlighted = flags_of.count(NOTIFY | HIGHLIGHT)
            out[room_id] = {
                "notification_count": flags_of.count(NOTIFY) + highlighted, "highlight_count": highlighted,
            }
        return out

    async def _count_fresh(self, user_id: str, room_ids: list[str], upto: int) -> dict[str, bytes]:
        unread = await self.store.unread_events(user_id, room_ids, upto, UNREAD_SCAN_LIMIT)
        by_room: dict[str, list[UnreadEvent]] = {}
        for ev in unread:
            by_room.setdefault(ev.room_id, []).append(ev)
        ruleset, states, hidden = await asyncio.gather(
            self.push_rules.get_ruleset(user_id), self.store.push_state(user_id, room_ids),
            self._hidden(user_id, by_room),
        )
        if hidden:
            unread = [ev for ev in unread if ev.event_id not in hidden]
        self._remember_ruleset(user_id, upto, ruleset)
        flags: dict[str, list[int]] = {r: [] for r in room_ids}
        for ev in unread:  # newest first per room
            actions, _ = self._actions(user_id, ruleset, states[ev.room_id], ev)
            flags[ev.room_id].append(_flags(actions))
        out: dict[str, bytes] = {}
        for room_id in room_ids:
            flags[room_id].reverse()
            out[room_id] = bytes(flags[room_id])
            self._remember(user_id, room_id, upto, states[room_id], out[room_id])
        return out

    @staticmethod
    def _flag(rules: tuple[CompiledRule, ...], user_id: str, hit: _Counted, e: _NewEvent) -> int:
        ctx = PushContext(
            user_id, hit.state.display_name, hit.state.member_count,
            _sender_level(hit.state.power_levels, e.row.sender), hit.levels,
        )
        rule = matching_compiled(rules, e.event, ctx, e.memo)
        if rule is None or not rule.notify:
            return 0
        return NOTIFY | (HIGHLIGHT if rule.highlight else 0)

    def _remember(
        self, user_id: str, room_id: str, pos: int, state: RoomPushState, flags: bytes,
        levels: Mapping[str, int] | None = None,
    ) -> None:
        key = (user_id, room_id)
        if levels is None:
            levels = _notification_levels(state.power_levels)
        self._counted[key] = _Counted(pos, time.monotonic() + CARRY_TTL_S, state, flags, levels)
        self._counted.move_to_end(key)
        while len(self._counted) > COUNTED_CACHED:
            self._counted.popitem(last=False)

    async def _ruleset(
        self, user_id: str, since: int | None, upto: int, changes: Mapping[str, set[str]] | None
    ) -> tuple[CompiledRule, ...]:
        """The user's push rules, compiled (kept from their previous sync
        unless their account data changed)."""
        hit = self._rulesets.get(user_id)
        if (
            hit is not None and since is not None and since <= hit[0] <= upto and hit[1] > time.monotonic()
            and changes is not None and user_id not in changes.get("account_data", ())
        ):
            # still right at ``upto``: the next sync (since = upto) finds it too
            self._rulesets[user_id] = (upto, hit[1], hit[2], hit[3])
            return hit[3]
        ruleset = await self.push_rules.get_ruleset(user_id)
        return self._remember_ruleset(user_id, upto, ruleset)

    def _remember_ruleset(self, user_id: str, pos: int, ruleset: Mapping[str, Any]) -> tuple[CompiledRule, ...]:
        if len(self._rulesets) >= COUNTED_CACHED:
            self._rulesets.clear()
        compiled = compile_ruleset(ruleset)
        self._rulesets[user_id] = (pos, time.monotonic() + CARRY_TTL_S, ruleset, compiled)
        return compiled

    def new_events_read(self, room_id: str, after: int, upto: int, rows: Sequence[EventRow]) -> None:
        """A sync's timeline read every event of the room in (after, upto]
        (``rows``, newest first): ``_new_events`` takes them from here
        rather than reading them again. They are the events
        ``room_events_between`` reads: an event with a stream position is
        not rejected (one rejected later loses its position)."""
        if len(rows) > UNREAD_SCAN_LIMIT:
            return
        self._new.put((room_id, after, upto), [
            _NewEvent(RoomEvent(r.event_id, r.stream_pos, r.type, r.state_key, r.sender, r.client),
                      orjson.loads(r.client))
            for r in reversed(rows) if r.stream_pos is not None
        ])

    async def _new_events(self, room_id: str, after: int, upto: int) -> list[_NewEvent] | None:
        """The room's events in (after, upto], parsed once for every member
        who asks; None when there are more than a scan's worth."""
        key = (room_id, after, upto)
        if self._new_last[0] == key:  # what every member woken with the last asker asks
            return self._new_last[1]

        async def read() -> list[_NewEvent] | None:
            rows = await self.store.room_events_between(room_id, after, upto, UNREAD_SCAN_LIMIT + 1)
            if len(rows) > UNREAD_SCAN_LIMIT:
                return None
            return [_NewEvent(r, orjson.loads(r.client)) for r in rows]

        found = await self._new.get(key, read)
        self._new_last = (key, found)
        return found

    def _context(self, user_id: str, state: RoomPushState, sender: str) -> PushContext:
        return PushContext(
            user_id=user_id,
            display_name=state.display_name,
            member_count=state.member_count,
            sender_power_level=_sender_level(state.power_levels, sender),
            notification_levels=_notification_levels(state.power_levels),
        )

    async def notifications(
        self, user_id: str, room_ids: Iterable[str], upto: int, before: int | None, limit: int,
        only_highlight: bool,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Events the user was notified of, newest first, with positions
        below ``before``; and the position to continue from (None at the
        end). Examines at most ``NOTIFICATIONS_SCAN_LIMIT`` events a call."""
        rooms = list(room_ids)
        found: list[dict[str, Any]] = []
        if not rooms or limit <= 0:
            return found, None
        ruleset = await self.push_rules.get_ruleset(user_id)
        states = await self.store.push_state(user_id, rooms)
        scanned = 0
        while scanned < NOTIFICATIONS_SCAN_LIMIT:
            batch = await self.store.recent_events(user_id, rooms, before, upto, NOTIFICATIONS_BATCH)
            by_room: dict[str, list[UnreadEvent]] = {}
            for ev in batch:
                by_room.setdefault(ev.room_id, []).append(ev)
            hidden = await self._hidden(user_id, by_room)
            for ev in batch:
                before = ev.stream_pos
                if ev.event_id in hidden:
                    continue
                actions, event = self._actions(user_id, ruleset, states[ev.room_id], ev)
                if not notifies(actions) or (only_highlight and not highlights(actions)):
                    continue
                found.append({
                    "actions": actions,
                    "event": event,
                    "read": ev.read,
                    "room_id": ev.room_id,
                    "ts": event.get("origin_server_ts", 0),
                })
                if len(found) == limit:
                    return found, ev.stream_pos
            if len(batch) < NOTIFICATIONS_BATCH:
                return found, None
            scanned += len(batch)
        return found, before

    async def list_notifications(
        self, user_id: str, from_token: str | None, limit: int, only: str | None
    ) -> dict[str, Any]:
        """GET /notifications: the user's notifications in the rooms they
        are joined to, newest first; ``next_token`` is ``n<position>``."""
        before: int | None = None
        if from_token is not None:
            if not from_token.startswith("n") or not from_token[1:].isdigit():
                raise invalid_param("Invalid from token")
            before = int(from_token[1:])
        upto = await self.stream.current_position()
        rooms = await self.rooms.rooms_for_user(user_id)
        found, next_pos = await self.notifications(user_id, rooms, upto, before, limit, only == "highlight")
        body: dict[str, Any] = {"notifications": found}
        if next_pos is not None:
            body["next_token"] = f"n{next_pos}"
        return body
