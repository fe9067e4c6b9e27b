"""Small helpers for the background tasks services run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task (if any) and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
