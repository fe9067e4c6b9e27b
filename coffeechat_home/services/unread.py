"""Unread notification counts for /sync and the notification list of
GET /notifications, both from push rule evaluation at read time.

Nothing is stored per event: the events after the user's read receipt are
evaluated with the user's push rules when asked. The work is bounded: at
most ``UNREAD_SCAN_LIMIT`` (the newest) events per room are evaluated, so a
room with more unread events than that reports the count among those. The
room's member count, the user's display name and the power levels are the
room's current ones (not those at each event).
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, Mapping

import orjson

from ..protocol.push_eval import PushContext, evaluate, highlights, notifies
from ..errors import invalid_param
from ..storage.rooms import RoomStore
from ..storage.stream import StreamStore
from ..storage.unread import RoomPushState, UnreadEvent, UnreadStore
from .push_rules import PushRuleService

UNREAD_SCAN_LIMIT = 100  # newest events evaluated per room for unread counts
NOTIFICATIONS_BATCH = 100
NOTIFICATIONS_SCAN_LIMIT = 1000  # events examined per GET /notifications page


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

    def _actions(
        self, user_id: str, ruleset: Mapping[str, Any], state: RoomPushState, ev: UnreadEvent
    ) -> tuple[list[Any], dict[str, Any]]:
        event = orjson.loads(ev.client)
        ctx = PushContext(
            user_id=user_id,
            display_name=state.display_name,
            member_count=state.member_count,
            sender_power_level=_sender_level(state.power_levels, ev.sender),
            notification_levels=_notification_levels(state.power_levels),
        )
        return evaluate(ruleset, event, ctx), event

    async def counts_for_sync(self, user_id: str, room_ids: list[str], upto: int) -> dict[str, dict[str, int]]:
        """``unread_notifications`` for each room: notifying and highlighting
        events after the user's read receipt."""
        out = {r: {"notification_count": 0, "highlight_count": 0} for r in room_ids}
        if not room_ids:
            return out
        unread = await self.store.unread_events(user_id, room_ids, upto, UNREAD_SCAN_LIMIT)
        if not unread:
            return out
        ruleset, states = await asyncio.gather(
            self.push_rules.get_ruleset(user_id), self.store.push_state(user_id, {e.room_id for e in unread})
        )
        for ev in unread:
            actions, _ = self._actions(user_id, ruleset, states[ev.room_id], ev)
            if notifies(actions):
                counts = out[ev.room_id]
                counts["notification_count"] += 1
                if highlights(actions):
                    counts["highlight_count"] += 1
        return out

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
            for ev in batch:
                before = ev.stream_pos
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
