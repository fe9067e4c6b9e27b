"""/sync's view of the rooms joined with a partial state, kept in memory.

A non-lazy /sync leaves a partial room out and shows it whole once its
resync committed (services/sync.py ``_partial_state_rooms``). Reading
``partial_state_rooms`` for that cost a statement on every woken sync of a
federating server, long after every resync had finished. ``PartialRoomsView``
holds the table's rows instead, valid up to a stream position, and brings
them up to a later position from what the stream says changed in between
(``Notifier.changes``, shared by every sync woken by the same change, and
covering the writes of every instance):

* a row is written (or written again: partial once more after the server
  had left) only in the transaction of our user's join, which has a
  ``room_memberships`` row at its position;
* a row is completed at the resync's position, a ``partial_state_rooms``
  change of that room in the stream;
* a correction of the room's state after the resync moves its
  ``room_state_resets`` row to the correction's position, a change of that
  table in the stream.

So a range with neither kind of change leaves the rows as they are (no
statement); otherwise only the rows of the rooms concerned are read again.
Rows are never deleted.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

from ...storage.partial_state import PartialStateStore
from ..notifier import CHANGED_KEYS_SPAN, Notifier


class PartialRoomsView:
    def __init__(self, store: PartialStateStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier
        self._rows: dict[str, tuple[int | None, int | None]] = {}
        self._valid_at = -1  # the rows are those at this position or later (-1: not read yet)
        self._lock = asyncio.Lock()
        self.reads = 0  # statements made (for tests and metrics)

    async def sync_view(self, room_ids: Iterable[str], upto: int) -> dict[str, tuple[int | None, int | None]]:
        """``PartialStateStore.sync_view`` without the statement: of
        ``room_ids``, those ever joined partially, with the position their
        resync committed at (None: still partial) and that of the last
        correction of their state (None: none), as of ``upto`` (a safe
        position) or later."""
        if self._valid_at < upto:
            await self._catch_up(upto)
        rows = self._rows
        return {r: rows[r] for r in room_ids if r in rows}

    async def _catch_up(self, upto: int) -> None:
        async with self._lock:
            after = self._valid_at
            if after >= upto:  # another sync brought it here meanwhile
                return
            target = max(upto, self.notifier.position)  # both safe positions
            if after < 0 or target - after > CHANGED_KEYS_SPAN:
                # rows read after ``target`` was safe are those at it or later
                self.reads += 1
                self._rows = await self.store.all_rows()
            else:
                changes = await self.notifier.changes(after, target)
                moved = changes.get("partial_state_rooms", set()) | changes.get("room_state_resets", set())
                if moved or changes.get("room_memberships"):
                    self.reads += 1
                    self._rows.update(await self.store.rows_changed(after, target, moved))
            self._valid_at = target
