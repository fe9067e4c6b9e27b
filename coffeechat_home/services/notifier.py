"""Wakes long-polling /sync requests when something they care about lands.

Positions come from the database (storage/stream.py), so writes on any
instance are seen: a local write pokes the notifier, which reads the new
position at once when someone waits or asked for one (``want``), else at
its next poll; writes by other instances are found by that cheap position poll,
at once when the writer's instance wakes this one (services/instances.py).
``position`` may therefore lag: a reader that must see every committed write
reads ``StreamStore.current_position`` itself (as /sync does). Waiters
register the keys they care about (room ids and their user id) and are
woken only by changes to those keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from types import TracebackType
from typing import Awaitable, Callable, Iterable

from ..storage.event_listings import EventsRead
from ..storage.stream import StreamStore
from ..storage.database import DatabaseError
from .fanout import SYNC_TIMING, SharedReads
from .tasks import cancel_and_wait, wait_event

log = logging.getLogger(__name__)

# A range of at most this many stream positions is read as "which keys
# changed" (one indexed range query) before anything else; a longer gap (a
# client back after a long time) is built without that shortcut.
CHANGED_KEYS_SPAN = 20_000

# A read of the position that may wake someone also reads the range's
# timeline events when there are at most this many (``events_read``): the
# syncs it wakes build their rooms from them, without a statement each.
EVENTS_READ = 16


# Tables keyed by a user id whose changes concern everyone sharing a room
# with that user (presence, device lists): a waiter that asks for them is
# woken through the rooms of the users who changed, so it need not hold
# the ids of everyone it shares a room with.
PEER_TABLES = ("presence", "device_list_changes")

# Long-polls one change wakes are resumed this many at a time: the next ones
# once half of these have built their answers (``WakeUp.__aexit__``). All at
# once, a thousand of them ran each step of the build in lockstep (every
# shared read and batch awaited by all before any went on), so the first
# answer went out about when the last did.
WAKE_CHUNK = 64
# A queue that has not moved for this long (the woken requests' builds
# stalled: a slow database, huge answers) resumes the next chunk anyway.
WAKE_STALL_S = 1.0


class _Waiter:
    """One waiting request: a bare future the notifier resolves (no task
    or Event per long-poll: a wake-up is one step of the request's task)."""

    __slots__ = ("keys", "fut", "peers", "woken", "holding")

    def __init__(self, keys: frozenset[str], peers: bool, fut: asyncio.Future[None]) -> None:
        self.keys = keys
        self.peers = peers
        self.fut = fut
        self.woken: tuple[float, ...] = ()  # (poked, read, woken) monotonic times
        self.holding = False  # woken by a change: one of the notifier's WAKE_CHUNK slots

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


class WakeUp:
    """``async with notifier.change(...) as position``: waits like
    ``Notifier.wait_for_change``; a request woken by a change holds one of
    the notifier's wake-up slots until the block ends (its answer built), so
    the long-polls one change wakes are built a chunk at a time."""

    __slots__ = ("notifier", "after", "keys", "timeout", "peers", "waiter")

    def __init__(self, notifier: "Notifier", after: int, keys: Iterable[str], timeout: float, peers: bool) -> None:
        self.notifier = notifier
        self.after = after
        self.keys = keys
        self.timeout = timeout
        self.peers = peers
        self.waiter: _Waiter | None = None

    async def __aenter__(self) -> int:
        return await self.notifier._wait(self)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.waiter is not None:
            self.notifier._release(self.waiter)


class Notifier:
    def __init__(self, stream: StreamStore, *, poll_interval: float = 0.1) -> None:
        self.stream = stream
        self.poll_interval = poll_interval
        self.position = 0
        self._waiters: dict[_Waiter, None] = {}  # in the order they came (the first waiting is woken first)
        # woken by a change, not resumed yet (WAKE_CHUNK at a time), and how
        # many resumed are building their answers
        self._to_wake: deque[_Waiter] = deque()
        self._holding = 0
        self.wake_chunk = WAKE_CHUNK
        self.wake_stall_s = WAKE_STALL_S
        self._stall_timer: asyncio.TimerHandle | None = None
        self._woken_total = 0  # waiters resumed from the queue, ever (the stall check's progress mark)
        self._poked = asyncio.Event()
        self._poked_at = 0.0
        # A poke with nobody waiting and no position asked for (``want``) is
        # not followed at once: the position lags until the next poll, a
        # waiter that comes, or a ``want``; a sync reads its own position.
        self._lagging = False
        self._wanted = 0
        self._remote = False  # poked by another instance since the last read
        # called on every local poke (services/instances.py wakes the other instances)
        self.on_local_poke: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_full = 0.0  # (loop time) the last read of the committed maximum by _run
        self._advance_lock = asyncio.Lock()
        self._closing = False
        self.wakeups = 0  # waiting requests woken by a change, for metrics
        # the rooms the given users are joined to (set by app.py's wiring)
        self.peer_rooms: Callable[[set[str]], Awaitable[set[str]]] | None = None
        # What changed in a range of positions, per stream table: the
        # range a poll found is what the syncs it wakes ask about.
        self._changes: SharedReads[tuple[int, int], dict[str, set[str]]] = SharedReads(ttl=10.0, size=128)
        self._last_changes: tuple[int, int, dict[str, set[str]]] = (0, 0, {})  # the range asked last
        self._events_read: tuple[int, int, EventsRead] | None = None  # the last move's events

    async def start(self) -> None:
        self.position = await self.stream.current_position()
        self._task = asyncio.create_task(self._run(), name="notifier")

    def release_waiters(self) -> None:
        """The server is stopping: every waiting request returns now with
        what it has (a long-poll answers as at its timeout), and new ones do
        not wait, so the HTTP server's shutdown does not sit out their
        timeouts."""
        self._closing = True
        for w in self._waiters:
            w.wake()
        self._to_wake.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    async def stop(self) -> None:
        self.release_waiters()
        await cancel_and_wait(self._task)
        self._task = None

    @property
    def waiting(self) -> int:
        """Requests (long-poll /sync) waiting for a change now."""
        return len(self._waiters)

    def poke(self) -> None:
        """Something was committed locally: look for a new position now
        when someone waits or asked for it (``want``), otherwise at the next
        poll; and tell the other instances (``on_local_poke``)."""
        if not self._poked.is_set():
            self._poked_at = time.monotonic()
        self._poked.set()
        if self.on_local_poke is not None:
            self.on_local_poke()

    def poke_remote(self) -> None:
        """Another instance committed something (its wake-up,
        services/instances.py): read the committed maximum now when someone
        waits or asked for a position, as the poll would."""
        if not self._poked.is_set():
            self._poked_at = time.monotonic()
        self._remote = True
        self._poked.set()

    def want(self, position: int) -> None:
        """A reader of ``position`` (the federation sender) needs it to
        reach ``position`` soon: follow local pokes until it does."""
        if position > self._wanted:
            self._wanted = position
            if self._lagging:
                self._poked.set()

    async def advance(self, *, read_max: bool = True) -> int:
        """Read the safe position; wake the waiters whose keys changed.
        Without ``read_max`` the committed maximum is what this instance's
        own writes committed or the last read found
        (``StreamStore.known_committed``): one statement fewer after a local
        write; newer writes of other instances are found by the next
        advance that reads it."""
        async with self._advance_lock:
            old = self.position
            asked = bool(self._waiters)
            by_table: dict[str, set[str]] | None = None
            events: EventsRead | None = None
            if asked:
                # someone may need waking: the position and what changed
                # up to it in one statement
                committed = self.stream.known_committed
                if read_max:
                    committed = max(committed, await self.stream.committed_max())
                new, by_table, events = await self.stream.position_changes_and_events(old, committed, EVENTS_READ)
                if new > old:
                    self._changes.put((old, new), by_table)
            else:  # nobody to wake: a sync reads the range when it asks
                new = await self.stream.current_position(read_max=read_max)
            if new > old:
                # (only while the position is where they were read to: a
                # later write, e.g. a redaction of one of them, moves it)
                self._events_read = None if events is None else (old, new, events)
                # Waiters that registered while we read (their sync had read
                # a position below ``new``, and they saw ours still at
                # ``old``) are woken by this move too if it concerns them.
                peer_keys: set[str] | None = None
                for _ in range(10):
                    waiters = list(self._waiters)
                    if by_table is None and waiters:
                        by_table = await self.changes(old, new)
                    elif by_table and peer_keys is None and any(w.peers for w in waiters):
                        peer_keys = await self._rooms_of_peers(by_table)
                    else:
                        break
                keys: set[str] = set().union(*by_table.values()) if by_table else set()
                keys |= peer_keys or set()
                waiters = list(self._waiters)  # as they are now: no await from here on
                self.position = new
                read = time.monotonic()
                # (a waiter already queued by an earlier move has its times)
                woken = [w for w in waiters if not w.woken and not w.keys.isdisjoint(keys)]
                self.wakeups += len(woken)
                times = (self._poked_at, read, time.monotonic())
                for w in woken:
                    w.woken = times
                self._to_wake.extend(woken)
                self._wake_next()
            self._lagging = False
            return self.position

    def _wake_next(self, limit: int | None = None) -> None:
        """Resume queued waiters until ``wake_chunk`` hold a slot (or
        ``limit`` more, whatever the slots)."""
        woken = 0
        while self._to_wake and (self._holding < self.wake_chunk if limit is None else woken < limit):
            w = self._to_wake.popleft()
            if w.fut.done():  # timed out, cancelled or released meanwhile: not holding
                continue
            w.fut.set_result(None)
            w.holding = True
            self._holding += 1
            woken += 1
        self._woken_total += woken
        if self._to_wake and self._stall_timer is None:
            mark = self._woken_total
            self._stall_timer = asyncio.get_running_loop().call_later(self.wake_stall_s, self._stalled, mark)

    def _stalled(self, mark: int) -> None:
        self._stall_timer = None
        if not self._to_wake:
            return
        if self._woken_total == mark:  # nobody resumed since: the next chunk goes anyway
            self._wake_next(self.wake_chunk)
        else:
            self._wake_next()  # (re-arms the check)

    def _release(self, w: _Waiter) -> None:
        """A woken request is done with its slot (answer built, or gone)."""
        if w.holding:
            w.holding = False
            self._holding -= 1
            if self._holding <= self.wake_chunk // 2:
                self._wake_next()

    async def changes(self, after: int, upto: int) -> dict[str, set[str]]:
        """``StreamStore.changes_by_table(after, upto)``, read once for all
        who ask (``upto`` must be at or below a safe position, so the
        answer cannot change). Callers must not modify it."""
        if upto <= after:
            return {}
        last = self._last_changes
        if last[0] == after and last[1] == upto:  # a woken sync asks about 4 times, as do all it woke with
            return last[2]
        found = await self._changes.get((after, upto), lambda: self.stream.changes_by_table(after, upto))
        self._last_changes = (after, upto, found)
        return found

    def events_read(self, after: int, upto: int) -> EventsRead | None:
        """Every timeline event of (after, upto] when that is the range the
        last move of the position read them for (None otherwise)."""
        read = self._events_read
        return read[2] if read is not None and read[0] == after and read[1] == upto else None

    async def _rooms_of_peers(self, by_table: dict[str, set[str]]) -> set[str]:
        users = set().union(*(by_table.get(t, set()) for t in PEER_TABLES))
        if not users or self.peer_rooms is None:
            return set()
        return await self.peer_rooms(users)

    async def wait_for_change(self, after: int, keys: Iterable[str], timeout: float, *, peers: bool = False) -> int:
        """Return once a change to one of ``keys`` beyond ``after`` is
        visible, or after ``timeout`` seconds; returns the position then.
        With ``peers``, a change in ``PEER_TABLES`` by a user joined to one
        of the rooms in ``keys`` counts too. (``change`` is the same for a
        caller that builds an answer afterwards.)"""
        async with self.change(after, keys, timeout, peers=peers) as position:
            return position

    def change(self, after: int, keys: Iterable[str], timeout: float, *, peers: bool = False) -> WakeUp:
        """``wait_for_change`` as an async context manager: a request woken
        by a change builds its answer inside the block, and the long-polls
        one change wakes are resumed ``wake_chunk`` at a time (the next as
        the block of half of them ends), so the first answers go out before
        the last are started."""
        return WakeUp(self, after, keys, timeout, peers)

    async def _wait(self, wake: WakeUp) -> int:
        if self._closing:
            return self.position
        if self._lagging and self.position < wake.after:
            # local writes not followed (nobody waited): catch up before
            # registering, so they cannot wake this waiter for nothing
            await self.advance(read_max=False)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(frozenset(wake.keys), wake.peers, loop.create_future())
        self._waiters[waiter] = None
        try:
            if self.position > wake.after:
                # something landed between the caller's read and now
                by_table = await self.changes(wake.after, self.position)
                if any(waiter.keys & v for v in by_table.values()):
                    return self.position
                if wake.peers and waiter.keys & await self._rooms_of_peers(by_table):
                    return self.position
            timer = loop.call_later(max(wake.timeout, 0.0), waiter.wake)
            try:
                await waiter.fut
            except BaseException:  # cancelled (the client went away): give up any slot
                self._release(waiter)
                raise
            finally:
                timer.cancel()
            wake.waiter = waiter
            timing = SYNC_TIMING.get()
            if timing is not None and waiter.woken:
                timing.update(zip(("poked", "read", "woken"), waiter.woken))
                timing["resumed"] = time.monotonic()
            return self.position
        finally:
            self._waiters.pop(waiter, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_full = loop.time()
        full_next = False  # a committed-maximum read put off behind a wake-up: due at once
        while True:
            poked = self._poked.is_set() if full_next else await wait_event(self._poked, self.poll_interval)
            self._poked.clear()
            remote, self._remote = self._remote, False
            # a local poke needs no committed-maximum statement; the poll
            # reads it at least every poll_interval, pokes or not, and so
            # does another instance's wake-up when someone waits
            full = (full_next or not poked or loop.time() - self._last_full >= self.poll_interval
                    or (remote and (bool(self._waiters) or self.position < self._wanted)))
            if full and poked and not full_next and not remote and self._waiters:
                # A local write wakes someone while the committed-maximum
                # read is due by time: wake from what this instance
                # committed first (one statement), then read it. Read
                # first, the wake-up waited for that statement's round
                # trip, every other send on an idle server (a write
                # every 85 ms against a 100 ms poll: bench/bench_rooms.py).
                full, full_next = False, True
            else:
                full_next = False
            if not full and not self._waiters and self.position >= self._wanted:
                # nobody to wake, no position asked for: one statement
                # (the reservations' floor) fewer per local write; a sync
                # reads the position itself (sync.py), a waiter that comes
                # catches up first (_wait), the poll within poll_interval
                self._lagging = True
                continue
            if full:
                self._last_full = loop.time()
            try:
                await self.advance(read_max=full)
            except asyncio.CancelledError:
                raise
            except DatabaseError as e:  # an outage: keep going, quietly
                log.warning("notifier poll failed: %s", e)
            except Exception:  # keep polling through a database blip
                log.exception("notifier poll failed")
                await asyncio.sleep(1.0)
