"""Small helpers for the background tasks services run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


# How long a stopping service waits for one of its background tasks.
STOP_TIMEOUT_S = 5.0


async def cancel_and_wait(task: asyncio.Task[Any] | None, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Cancel a background task (if any) and wait until it has stopped, at
    most ``timeout`` seconds; returns whether it stopped.

    Cancelled again while it runs on: a task can swallow a cancellation
    (Python 3.11's ``asyncio.wait_for`` returns the inner result instead of
    raising when the inner awaitable finished just before the cancel), and
    a plain ``await task`` then waits forever. The task's own exception is
    logged, not raised: a service's stop must not fail because its loop
    failed earlier."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning("background task %s did not stop within %.1f s of its cancellation", task.get_name(), timeout)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(remaining, 1.0))
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s had failed: %r", task.get_name(), task.exception())
    return True


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """``event.wait()`` for at most ``timeout`` seconds; whether it was set.
    Use this rather than ``asyncio.wait_for(event.wait(), timeout)`` in a
    loop that is stopped by cancellation: on Python 3.11 that ``wait_for``
    swallows a cancellation that arrives just after the event was set, and
    the loop runs on (tests/integration/test_shutdown.py)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class KeyedLocks(Generic[K]):
    """One asyncio lock per key (a room, a transaction), kept only while
    someone holds or waits for it."""

    def __init__(self) -> None:
        self._entries: dict[K, list[Any]] = {}  # key -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        entry = self._entries.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._entries.pop(key, None)
