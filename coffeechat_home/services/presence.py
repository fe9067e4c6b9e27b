"""Presence: PUT/GET /presence/{userId}/status, set_presence from /sync
and the m.presence events of /sync. ``presence.enabled = false`` makes
updates no-ops and everyone read as offline."""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from ..errors import forbidden
from ..storage.presence import PresenceState, PresenceStore
from ..storage.rooms import RoomStore
from .notifier import Notifier

STATES = ("online", "unavailable", "offline")
# A user active this recently and online is "currently active".
CURRENTLY_ACTIVE_MS = 5 * 60_000
# Activity bumps closer together than this are not written.
LAST_ACTIVE_GRANULARITY_MS = 60_000
# A user still active (syncing, setting presence) is announced to other
# servers again this often: Synapse takes a remote user it has heard
# nothing of for 30 min to be offline (and re-announces its own every 25).
REMOTE_REFRESH_MS = 25 * 60_000

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


def presence_content(p: PresenceState | None, now_ms: int) -> dict[str, Any]:
    if p is None:
        return {"presence": "offline"}
    out: dict[str, Any] = {
        "presence": p.state,
        "last_active_ago": max(0, now_ms - p.last_active_ts),
        "currently_active": p.state == "online" and now_ms - p.last_active_ts < CURRENTLY_ACTIVE_MS,
    }
    if p.status_msg is not None:
        out["status_msg"] = p.status_msg
    return out


class PresenceService:
    def __init__(self, store: PresenceStore, rooms: RoomStore, notifier: Notifier, *, enabled: bool = True) -> None:
        self.store = store
        self.rooms = rooms
        self.notifier = notifier
        self.enabled = enabled
        # set by app.py when federating: a local user's change goes to the servers sharing a room
        self.remote: Callable[[str], Awaitable[None]] | None = None
        self.remote_refresh_ms = REMOTE_REFRESH_MS
        self._announced: dict[str, int] = {}  # user -> when last announced (a cache, per instance)

    async def _changed(self, user_id: str) -> None:
        self.notifier.poke()
        await self._tell_remote(user_id, _now_ms())

    async def _tell_remote(self, user_id: str, now: int) -> None:
        if self.remote is None:
            return
        if len(self._announced) > 100_000:  # losing it costs one early announcement each
            self._announced.clear()
        self._announced[user_id] = now
        try:
            await self.remote(user_id)
        except Exception:  # never fail the local request for this
            log.exception("queueing the presence of %s for other servers", user_id)

    async def set_presence(self, user_id: str, state: str, status_msg: str | None) -> None:
        """From PUT /presence: sets state and status message (an omitted
        message clears it)."""
        if not self.enabled:
            return
        now = _now_ms()
        current = await self.store.get(user_id)
        if current is not None and (current.state, current.status_msg) == (state, status_msg):
            await self._touch(current, now)
            return
        await self.store.set(user_id, state, status_msg, now)
        await self._changed(user_id)

    async def set_presence_from_sync(self, user_id: str, state: str) -> None:
        """/sync's ``set_presence`` (pass "online" when it is omitted):
        "offline" leaves presence alone; otherwise the state is set, keeping
        the status message. Writes a stream position only on a change."""
        if not self.enabled or state not in ("online", "unavailable"):
            return
        now = _now_ms()
        current = await self.store.get(user_id)
        if current is not None and current.state == state:
            await self._touch(current, now)
            return
        await self.store.set(user_id, state, current.status_msg if current else None, now)
        await self._changed(user_id)

    async def _touch(self, current: PresenceState, now: int) -> None:
        """Activity without a change: recorded (coarsely), and announced to
        other servers again once in a while so they keep the user's state."""
        if now - current.last_active_ts >= LAST_ACTIVE_GRANULARITY_MS:
            await self.store.touch(current.user_id, now)
        if self.remote is not None and now - self._announced.get(current.user_id, 0) >= self.remote_refresh_ms:
            await self._tell_remote(current.user_id, now)

    async def get_presence(self, requester_id: str, user_id: str) -> dict[str, Any]:
        if requester_id != user_id and user_id not in await self.rooms.users_sharing_a_room(requester_id):
            raise forbidden("You are not allowed to see their presence")
        if not self.enabled:
            return {"presence": "offline"}
        return presence_content(await self.store.get(user_id), _now_ms())

    async def presence_for_sync(self, user_id: str, since: int | None, upto: int) -> list[dict[str, Any]]:
        """m.presence events for the user and everyone sharing a room with
        them whose presence changed in (since, upto]."""
        if not self.enabled:
            return []
        now = _now_ms()
        return [
            {"type": "m.presence", "sender": p.user_id, "content": presence_content(p, now)}
            for p in await self.store.changes_seen_by(user_id, since, upto)
        ]
