"""Wakes long-polling /sync requests when something they care about lands.

Positions come from the database (storage/stream.py), so writes on any
instance are seen: a local write pokes the notifier at once; writes by other
instances are found by a cheap position poll. Waiters register the keys
they care about (room ids and their user id) and are woken only by changes
to those keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Iterable

from ..storage.stream import StreamStore
from ..storage.database import DatabaseError
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)


class _Waiter:
    __slots__ = ("keys", "event")

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys
        self.event = asyncio.Event()


class Notifier:
    def __init__(self, stream: StreamStore, *, poll_interval: float = 0.1) -> None:
        self.stream = stream
        self.poll_interval = poll_interval
        self.position = 0
        self._waiters: set[_Waiter] = set()
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._advance_lock = asyncio.Lock()
        self.wakeups = 0  # waiting requests woken by a change, for metrics

    async def start(self) -> None:
        self.position = await self.stream.current_position()
        self._task = asyncio.create_task(self._run(), name="notifier")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for w in self._waiters:
            w.event.set()

    @property
    def waiting(self) -> int:
        """Requests (long-poll /sync) waiting for a change now."""
        return len(self._waiters)

    def poke(self) -> None:
        """Something was committed locally: look for a new position now."""
        self._poked.set()

    async def advance(self) -> int:
        """Read the safe position; wake the waiters whose keys changed."""
        async with self._advance_lock:
            new = await self.stream.current_position()
            if new > self.position:
                keys = await self.stream.changes_between(self.position, new)
                self.position = new
                for w in list(self._waiters):
                    if w.keys & keys:
                        w.event.set()
                        self.wakeups += 1
            return self.position

    async def wait_for_change(self, after: int, keys: Iterable[str], timeout: float) -> int:
        """Return once a change to one of ``keys`` beyond ``after`` is
        visible, or after ``timeout`` seconds; returns the position then."""
        waiter = _Waiter(frozenset(keys))
        self._waiters.add(waiter)
        try:
            if self.position > after:
                # something landed between the caller's read and now
                changed = await self.stream.changes_between(after, self.position)
                if waiter.keys & changed:
                    return self.position
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), timeout)
            return self.position
        finally:
            self._waiters.discard(waiter)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.poll_interval)
            self._poked.clear()
            try:
                await self.advance()
            except asyncio.CancelledError:
                raise
            except DatabaseError as e:  # an outage: keep going, quietly
                log.warning("notifier poll failed: %s", e)
            except Exception:  # keep polling through a database blip
                log.exception("notifier poll failed")
                await asyncio.sleep(1.0)
