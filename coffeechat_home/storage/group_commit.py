"""Group commit of concurrent stream writes (issue #7).

Writes to different rooms that arrive while one of this instance's grouped
transactions is in flight wait for it, then go together in the next one:
one reservation, one BEGIN, each write's own statements, one COMMIT
(``StreamStore.write_group``); when they are all messages, one reservation
and one statement that writes them all and commits. A write that finds
nothing in flight goes at once, alone, as ``StreamStore.write_many`` would
run it, so a lone client pays nothing for the grouping; a second lone write
may go beside it (``transactions``), but nothing goes beside a batch: what
arrives meanwhile waits for the next one (``_free``).

What stays as it was:

* Per-room order: the caller (the local sender) holds the room's lock until
  its write is done, so a batch holds at most one write per room, and the
  next write to a room is built after the previous one committed.
* Idempotent transaction ids: a write that fails in a batch (a repeated
  transaction id, a guard whose token was revoked) makes the batch roll
  back as a whole; each of its writes then runs again alone, with its own
  retries, and gets its own outcome. Nothing else fails with it. (A batch
  of messages is one statement: a write that fails without reaching it,
  once it has committed the others, fails alone instead; see
  ``_shared_insert``.)
* A stale room head (another instance wrote to the room since we cached
  it): that write's insert writes nothing and leaves the transaction
  usable, so only that write leaves the batch (its sender rebuilds on the
  room's head, services/room_writer.py) and the others commit.
* Serialization failures and lost connections (before COMMIT): the same
  fallback; only a batch whose COMMIT's outcome is unknown reports that to
  every write of it (as a lone write would), since re-running them could
  store an event twice.
* Several instances on one database: each groups its own writes; the
  stream's reservation protocol (storage/stream.py) and each write's own
  compare-and-set work for a batch as for one write.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, TypeVar

import asyncpg

from .database import DatabaseUnavailable
from .event_writes import InsertBatch, StaleRoomState
from .stream import Ahead, StreamStore
from .stream_statements import Guard, SingleStatement

T = TypeVar("T")

WriteFn = Callable[[asyncpg.Connection, list[int]], Awaitable[T]]


@dataclass
class _Pending(Generic[T]):
    fn: WriteFn[T]
    count: int
    guard: Guard | None
    name: str
    fut: asyncio.Future[tuple[T, list[int]]]
    single: bool = False  # a one-statement write: it may share the batch's insert


class GroupCommit:
    """``write`` has the contract of ``StreamStore.write_many(allocate=False)``
    (``fn`` appends its positions, taken by its own statements)."""

    def __init__(
        self, stream: StreamStore, *, enabled: bool = True, max_batch: int = 64, transactions: int = 2
    ) -> None:
        self.stream = stream
        self.enabled = enabled
        self.max_batch = max_batch
        self.transactions = max(1, transactions)
        self._queue: list[_Pending[Any]] = []
        self._in_flight = 0  # writes or batches of ours in flight
        self._batch_running = False  # one of them is a batch (two writes or more)
        self._tasks: set[asyncio.Task[None]] = set()
        # counters (metrics, tests): transactions that held more than one
        # write, the writes they held, and batches that fell back to singles
        self.batches = 0
        self.batched_writes = 0
        self.fallbacks = 0
        # several one-statement writes of a batch go as one statement
        # (event_writes.InsertBatch); off: one statement each
        self.shared_insert = True
        self.shared_writes = 0  # writes committed through a shared insert (metrics, tests)

    async def ahead(self) -> Ahead | None:
        """For a one-statement write (a message) about to be built: when it
        would go alone (a transaction free), take that transaction now and
        start its reservation (``StreamStore.reserve_ahead``), so the
        reservation's round trip overlaps the build. Pass it to ``write``,
        or ``drop`` it (which frees the transaction). None when the write
        would queue for a batch, or the stream's write gate is full.
        (Never pauses.)"""
        if not self.enabled:
            return await self.stream.reserve_ahead()
        if not self._free():
            return None
        made = await self.stream.reserve_ahead(slot=self._next)
        if made is not None:
            self._in_flight += 1
        return made

    async def write(
        self, fn: WriteFn[T], count: int, *, name: str = "stream_write", guard: Guard | None = None,
        single: bool = False, ahead: Ahead | None = None,
    ) -> tuple[T, list[int]]:
        """``single``: ``fn`` is a one-statement write, run as such when it
        goes alone (``StreamStore.write_many(single=True)``: two round
        trips); in a batch it gets the batch's connection as any write.
        ``ahead`` (from ``self.ahead()``): a single write goes alone on the
        transaction and reservation taken for it; any other drops it."""
        if ahead is not None:
            if single and not ahead.taken:
                slot = ahead.slot_held
                try:
                    return await self.stream.write_many(
                        fn, count, name=name, guard=guard, allocate=False, single=True, ahead=ahead
                    )
                finally:
                    if slot:
                        self._next()
            ahead.drop()
        if not self.enabled:
            return await self.stream.write_many(fn, count, name=name, guard=guard, allocate=False, single=single)
        if self._free():
            # a transaction free: go now, alone; what queues meanwhile goes next
            self._in_flight += 1
            try:
                return await self.stream.write_many(
                    fn, count, name=name, guard=guard, allocate=False, single=single
                )
            finally:
                self._next()
        fut: asyncio.Future[tuple[T, list[int]]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(fn, count, guard, name, fut, single))
        try:
            # the batch runs in a task of its own: a caller that hangs up
            # does not cancel it (as write_many's shield)
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_retrieve)
            raise

    def _free(self) -> bool:
        """Whether a write may go now, alone: a transaction is free, no
        write queues before it and no batch is in flight. A second
        transaction opens only beside a lone write (two clients each get
        theirs at once); when writes come faster than that, they queue for
        one shared transaction at a time: the fewest commits per message.
        (A write alone or a second batch beside a batch each took a commit
        of its own for a share of the load, and the batches got smaller.)"""
        return self._in_flight < self.transactions and not self._queue and not self._batch_running

    def _next(self, batch_ended: bool = False) -> None:
        """A transaction of ours ended: what queued goes next, as one batch
        at a time (see ``_free``)."""
        self._in_flight -= 1
        if batch_ended:
            self._batch_running = False
        while self._queue and self._in_flight < self.transactions and not self._batch_running:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            self._in_flight += 1
            self._batch_running = len(batch) > 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending[Any]]) -> None:
        try:
            if len(batch) == 1:
                await _alone(self.stream, batch[0])
            else:
                await self._together(batch)
        finally:
            for p in batch:  # cancelled itself (the server stopping): no caller waits forever
                if not p.fut.done():
                    p.fut.cancel()
            self._next(batch_ended=len(batch) > 1)

    async def _together(self, batch: list[_Pending[Any]]) -> None:
        # one-statement writes (messages) share one insert statement when
        # there are several; the others run their statements one by one first
        shared = [p for p in batch if p.single] if self.shared_insert else []
        if len(shared) < 2:
            shared = []
        batch = [p for p in batch if not p.single or not shared] + shared

        async def tail(conn: asyncpg.Connection, positions: list[int]) -> list[tuple[Any, list[int]] | Exception]:
            return await _shared_insert(conn, [p.fn for p in shared], positions)

        try:
            results = await self.stream.write_group(
                [(p.fn, p.count) for p in batch[: len(batch) - len(shared)]],
                [p.guard for p in batch if p.guard is not None],
                harmless=(StaleRoomState,), tail=tail if shared else None,
            )
        except Exception as e:
            if isinstance(e, DatabaseUnavailable) and not e.retryable:
                # the COMMIT's outcome is unknown: as for a lone write
                for p in batch:
                    _settle(p, exc=e)
                return
            self.fallbacks += 1
            await asyncio.gather(*(_alone(self.stream, p) for p in batch))
            return
        self.batches += 1
        self.batched_writes += sum(1 for r in results if not isinstance(r, Exception))
        self.shared_writes += sum(1 for r in results[len(results) - len(shared):] if not isinstance(r, Exception))
        for p, r in zip(batch, results):
            if isinstance(r, Exception):
                _settle(p, exc=r)
            else:
                _settle(p, result=r)


async def _shared_insert(
    conn: asyncpg.Connection, fns: list[WriteFn[Any]], positions: list[int]
) -> list[tuple[Any, list[int]] | Exception]:
    """Run one-statement writes (to different rooms) together, their inserts
    as one statement (``InsertBatch``): each write's outcome, StaleRoomState
    for a room whose extremities moved; any other failure is raised (the
    group rolls back and its writes run alone), except once that statement
    has committed (on a ``SingleStatement``: the group is that statement):
    then a failed write's error is its own outcome, since running the
    group's writes again alone would write the others' events twice. Their
    positions go into ``positions`` in increasing order."""
    batch = InsertBatch(conn, len(fns))

    async def one(fn: WriteFn[Any]) -> tuple[Any, list[int]]:
        handle = batch.connection()
        own: list[int] = []
        try:
            return await fn(handle, own), own
        finally:
            batch.ended(handle.registered)

    tasks = [asyncio.ensure_future(one(fn)) for fn in fns]
    try:
        await batch.all_in.wait()
        await batch.run()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
                t.add_done_callback(_retrieve)
    committed = isinstance(conn, SingleStatement) and conn.used
    out: list[tuple[Any, list[int]] | Exception] = []
    for o in outcomes:
        if not isinstance(o, BaseException) or isinstance(o, StaleRoomState):
            out.append(o)
        elif not committed:
            raise o
        else:
            out.append(o if isinstance(o, Exception) else RuntimeError(f"a committed group's write ended with {o!r}"))
    positions.extend(sorted(p for o in out if not isinstance(o, Exception) for p in o[1]))
    return out


async def _alone(stream: StreamStore, p: _Pending[Any]) -> None:
    try:
        result = await stream.write_many(p.fn, p.count, name=p.name, guard=p.guard, allocate=False)
    except Exception as e:
        _settle(p, exc=e)
    else:
        _settle(p, result=result)


def _settle(p: _Pending[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if p.fut.done():
        return
    if exc is not None:
        p.fut.set_exception(exc)
    else:
        p.fut.set_result(result)


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()
