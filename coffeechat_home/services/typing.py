"""Typing notifications: PUT /typing, the periodic expiry sweep, and the
m.typing ephemeral events of /sync.

Every instance runs the sweep (``start``/``stop``); sweeps are cheap when
nothing expired and safe to run concurrently (each expired row is turned
off once, in a serializable transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Iterable

from ..errors import forbidden
from ..storage.rooms import RoomStore
from ..storage.typing import EXPIRE_BATCH, TypingStore
from .notifier import Notifier
from ..storage.database import DatabaseError
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 30_000
# Typing from another server: the spec's EDU has no timeout; Synapse
# re-announces a user still typing every 40 s and times out after 60 s.
FEDERATION_TIMEOUT_MS = 60_000
MAX_SWEEP_ROUNDS = 20  # bound on back-to-back batches per tick
# A user who keeps typing is announced to other servers again this often
# (they time typing out on their own, after 30 s here and 60 s in Synapse).
REMOTE_REFRESH_MS = 20_000

# (user id, room id, typing, expires_ts): a change other servers should hear of
TypingHook = Callable[[str, str, bool, int | None], Awaitable[None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class TypingService:
    def __init__(
        self, store: TypingStore, rooms: RoomStore, notifier: Notifier, *, sweep_interval: float = 1.0
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.notifier = notifier
        # Read on every tick, so tests may shorten it while running.
        self.sweep_interval = sweep_interval
        self._task: asyncio.Task[None] | None = None
        # set by app.py when federating: tells other servers in the room
        self.remote: TypingHook | None = None
        self.remote_refresh_ms = REMOTE_REFRESH_MS
        self._announced: dict[tuple[str, str], int] = {}  # (room, user) -> when, for REMOTE_REFRESH_MS

    @property
    def running(self) -> bool:
        return self._task is not None

    async def set_typing(
        self, user_id: str, room_id: str, typing: bool, timeout_ms: int | None, *, max_timeout_ms: int = MAX_TIMEOUT_MS
    ) -> None:
        if not await self.rooms.is_joined(room_id, user_id):
            raise forbidden("You are not joined to this room")
        if typing:
            timeout = min(max(timeout_ms if timeout_ms is not None else DEFAULT_TIMEOUT_MS, 0), max_timeout_ms)
            now = _now_ms()
            pos = await self.store.start(room_id, user_id, now + timeout, now)
            if pos is not None or now - self._announced.get((room_id, user_id), 0) >= self.remote_refresh_ms:
                await self._tell_remote(user_id, room_id, True, now + timeout)
        else:
            pos = await self.store.stop(room_id, user_id)
            if pos is not None:
                await self._tell_remote(user_id, room_id, False, None)
        if pos is not None:
            self.notifier.poke()

    async def _tell_remote(self, user_id: str, room_id: str, typing: bool, expires_ts: int | None) -> None:
        if self.remote is None:
            return
        if typing:
            if len(self._announced) > 10_000:  # a cache: losing it costs one early refresh
                self._announced.clear()
            self._announced[(room_id, user_id)] = _now_ms()
        else:
            self._announced.pop((room_id, user_id), None)
        try:
            await self.remote(user_id, room_id, typing, expires_ts)
        except Exception:  # typing is best effort: never fail the local request
            log.exception("queueing typing of %s in %s for other servers", user_id, room_id)

    async def typing_for_sync(self, room_ids: Iterable[str], since: int | None, upto: int) -> dict[str, list[str]]:
        """{room_id: [user ids typing now]} for the rooms whose typing set
        changed in (since, upto]; when ``since`` is None, the rooms where
        anyone is typing. Each entry is the content of an m.typing event
        ({"user_ids": [...]})."""
        return await self.store.typing_users(room_ids, since, upto, _now_ms())

    async def sweep(self) -> int:
        """Expire typing notifications whose timeout passed; returns how many."""
        expired: list[tuple[str, str]] = []
        for _ in range(MAX_SWEEP_ROUNDS):
            batch = await self.store.expire(_now_ms())
            expired += batch
            if len(batch) < EXPIRE_BATCH:
                break
        if expired:
            self.notifier.poke()
        for room_id, user_id in expired:
            await self._tell_remote(user_id, room_id, False, None)
        return len(expired)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="typing-expiry")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except DatabaseError as e:  # an outage: keep going, quietly
                log.warning("typing expiry sweep failed: %s", e)
            except Exception:  # keep sweeping through a database blip
                log.exception("typing expiry sweep failed")
                await asyncio.sleep(1.0)
