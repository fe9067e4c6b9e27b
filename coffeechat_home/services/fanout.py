"""Sharing work between /sync requests woken by the same change.

When one event wakes hundreds of long-polls, they all ask the same
questions (what changed in (since, upto], the room's new events) and many
small per-user ones (key counts). ``SharedReads`` answers each distinct
question once (callers asking while it runs wait for the same answer) and
keeps the answer a few seconds; ``Batcher`` turns the per-user questions
asked in the same turn of the event loop into one query.

Only answers that cannot change are shared: reads of a stream range that
ends at or below the safe position (nothing new can appear there), so a
cached answer is the one the database would give. Both are in-process
caches, safe to lose.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Set (to an empty dict) by the /sync route when ``metrics.sync_timing`` is
# on: the notifier and the sync service write the monotonic times of the
# steps of a wake-up into it (poked, read, woken, resumed, built).
SYNC_TIMING: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar("sync_timing", default=None)


class SharedReads(Generic[K, V]):
    """Single-flight reads with a short memory (``ttl`` seconds, at most
    ``size`` answers)."""

    def __init__(self, *, ttl: float = 5.0, size: int = 256) -> None:
        self.ttl = ttl
        self.size = size
        self._done: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._running: dict[K, list[asyncio.Future[V]]] = {}  # askers waiting for a read
        self._tasks: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0

    def put(self, key: K, value: V) -> None:
        now = time.monotonic()
        self._done[key] = (now + self.ttl, value)
        self._done.move_to_end(key)
        # oldest first (one ttl for all): expired answers go now, not when
        # ``size`` newer ones push them out (a hundred rooms' timelines of
        # an initial sync stayed in memory until 512 more reads came)
        done = self._done
        while len(done) > self.size or (done and next(iter(done.values()))[0] <= now):
            done.popitem(last=False)

    def peek(self, key: K) -> V | None:
        hit = self._done.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        hit = self._done.get(key)
        if hit is not None:
            if hit[0] > time.monotonic():
                self.hits += 1
                return hit[1]
            del self._done[key]
        loop = asyncio.get_running_loop()
        waiters = self._running.get(key)
        if waiters is None:
            # the read runs in a task of its own: an asker that goes away
            # (a client disconnecting) does not cancel it for the others
            self.misses += 1
            waiters = self._running[key] = []
            task = loop.create_task(self._read(key, read, waiters))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.hits += 1
        fut: asyncio.Future[V] = loop.create_future()
        waiters.append(fut)
        return await fut

    async def _read(self, key: K, read: Callable[[], Awaitable[V]], waiters: list[asyncio.Future[V]]) -> None:
        try:
            value = await read()
        except BaseException as e:
            self._running.pop(key, None)
            err = e if isinstance(e, Exception) else RuntimeError("shared read cancelled")
            for f in waiters:
                if not f.done():
                    f.set_exception(err)
            if not isinstance(e, Exception):
                raise
            return
        self._running.pop(key, None)
        self.put(key, value)
        for f in waiters:
            if not f.done():
                f.set_result(value)


class Batcher(Generic[K, V]):
    """Collects the keys asked for in one turn of the event loop and reads
    them with one call of ``read_many`` (at most ``max_batch`` keys a call)."""

    def __init__(self, read_many: Callable[[list[K]], Awaitable[dict[K, V]]], *, max_batch: int = 500) -> None:
        self.read_many = read_many
        self.max_batch = max_batch
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._scheduled = False
        self.calls = 0

    async def get(self, key: K) -> V:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[V] = loop.create_future()
        self._waiting.setdefault(key, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for i in range(0, len(keys), self.max_batch):
            part = {k: waiting[k] for k in keys[i:i + self.max_batch]}
            asyncio.get_running_loop().create_task(self._read(part))

    async def _read(self, part: dict[K, list[asyncio.Future[V]]]) -> None:
        self.calls += 1
        try:
            found = await self.read_many(list(part))
        except BaseException as e:
            err = e if isinstance(e, Exception) else asyncio.CancelledError()
            for futs in part.values():
                for f in futs:
                    if not f.done():
                        f.set_exception(err)
            if not isinstance(e, Exception):
                raise
            return
        for k, futs in part.items():
            for f in futs:
                if not f.done():
                    if k in found:
                        f.set_result(found[k])
                    else:
                        f.set_exception(KeyError(k))
