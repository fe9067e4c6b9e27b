"""The notifier's wake-ups against the real database: a long-poll that
registers during the notifier's read is woken, the long-polls one change
wakes are resumed a chunk at a time (and a stalled chunk does not hold the
rest back), and a local write costs no position read when nobody waits and
wakes its long-poll before the due committed-maximum read. (Split from
test_stream.py, which keeps the stream positions themselves.)"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable

import pytest

from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.event_listings import EventsRead
from coffeechat_home.storage.stream import StreamStore

from .stream_helpers import insert_at, stream_database


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with stream_database(database_url) as database:
        yield database


async def test_a_waiter_that_registers_during_the_notifiers_read_is_woken(db: Database) -> None:
    """A long-poll whose sync read a position below the write, and which
    registers while the notifier reads what changed (seeing the notifier's
    position still below the write), is woken by that advance; it used to
    sleep until its timeout."""

    class Paused(StreamStore):
        """Reads what changed only when the test lets it (a real read)."""

        gate: asyncio.Event | None = None
        reading = asyncio.Event()

        async def changes_by_table(self, after: int, upto: int) -> dict[str, set[str]]:
            await self._pause()
            return await super().changes_by_table(after, upto)

        async def position_changes_and_events(
            self, after: int, committed: int, events: int = 0
        ) -> tuple[int, dict[str, set[str]], EventsRead | None]:
            await self._pause()
            return await super().position_changes_and_events(after, committed, events)

        async def _pause(self) -> None:
            if self.gate is not None:
                self.reading.set()
                await self.gate.wait()

    store = Paused(db, instance_id="n")
    notifier = Notifier(store)
    notifier.position = before = await store.current_position()
    other = asyncio.create_task(notifier.wait_for_change(before, ["!elsewhere:test"], 60))
    await store.write(lambda conn, pos: insert_at(conn, pos))  # concerns @u:test
    store.gate = asyncio.Event()
    advance = asyncio.create_task(notifier.advance())
    await store.reading.wait()  # the notifier is reading what changed
    late = asyncio.create_task(notifier.wait_for_change(before, ["@u:test"], 60))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not late.done()  # registered, waiting (the notifier's position is still `before`)
    store.gate.set()
    assert await advance > before
    for _ in range(5):
        await asyncio.sleep(0)
    assert late.done() and await late == notifier.position
    assert notifier.wakeups == 1 and not other.done()
    other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await other


async def test_the_long_polls_one_change_wakes_are_resumed_a_chunk_at_a_time(db: Database) -> None:
    """Ten long-polls woken by one write, three slots: three resume and
    build (inside ``Notifier.change``); the next ones only once half the
    slots are free again, so the first answers are not held back by the
    last (all ten resumed at once before). A holder whose client goes away
    gives its slot back, a queued one that goes away is skipped, and the
    rest still all resume."""
    store = StreamStore(db, instance_id="c")
    notifier = Notifier(store)
    notifier.wake_chunk = 3
    notifier.position = before = await store.current_position()
    resumed: list[int] = []
    finish = {i: asyncio.Event() for i in range(10)}

    async def long_poll(i: int) -> int:
        async with notifier.change(before, ["@u:test"], 60) as position:
            resumed.append(i)
            await finish[i].wait()  # building its answer
            return position

    polls = [asyncio.create_task(long_poll(i)) for i in range(10)]

    async def settle() -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    await settle()
    assert notifier.waiting == 10 and not resumed
    await store.write(lambda conn, pos: insert_at(conn, pos))
    await notifier.advance()
    await settle()
    assert resumed == [0, 1, 2]  # the first to wait, first woken
    assert notifier.wakeups == 10
    finish[0].set()
    await settle()
    assert resumed == [0, 1, 2]  # two of three slots still held
    polls[1].cancel()  # a client gone while building: its slot is free
    polls[3].cancel()  # a client gone while queued: skipped
    await settle()
    assert resumed == [0, 1, 2, 4, 5]
    assert polls[0].done() and await polls[0] == notifier.position
    for i in (2, 4, 5):  # the slots empty down to one: two more resume
        finish[i].set()
    await settle()
    assert resumed == [0, 1, 2, 4, 5, 6, 7]
    for i in range(10):
        finish[i].set()
    await settle()
    assert resumed == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    results = await asyncio.gather(*polls, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError) and isinstance(results[3], asyncio.CancelledError)
    assert {r for i, r in enumerate(results) if i not in (1, 3)} == {notifier.position}
    assert notifier.waiting == 0 and notifier._holding == 0 and not notifier._to_wake


async def test_a_stalled_chunk_does_not_hold_back_the_rest_for_ever(db: Database) -> None:
    """Woken long-polls whose builds never end (a stalled database) hold
    every slot: after ``wake_stall_s`` without anyone resumed, the next
    chunk resumes anyway."""
    store = StreamStore(db, instance_id="s")
    notifier = Notifier(store)
    notifier.wake_chunk = 3
    notifier.wake_stall_s = 0.05
    notifier.position = before = await store.current_position()
    resumed: list[int] = []
    finish = asyncio.Event()

    async def long_poll(i: int) -> None:
        async with notifier.change(before, ["@u:test"], 60):
            resumed.append(i)
            await finish.wait()

    polls = [asyncio.create_task(long_poll(i)) for i in range(7)]
    for _ in range(10):
        await asyncio.sleep(0)
    await store.write(lambda conn, pos: insert_at(conn, pos))
    await notifier.advance()
    for _ in range(10):
        await asyncio.sleep(0)
    assert resumed == [0, 1, 2]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # bounded; the stall check fires after 0.05 s, then 0.05 s more
    while len(resumed) < 7 and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert resumed == [0, 1, 2, 3, 4, 5, 6]
    finish.set()
    await asyncio.gather(*polls)
    assert notifier._holding == 0 and not notifier._to_wake


async def until(cond: Callable[[], bool]) -> None:
    """Until ``cond()`` holds, for at most 10 s (the caller asserts it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # bounded
    while not cond() and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def test_a_local_write_nobody_waits_for_costs_no_position_read(db: Database) -> None:
    """A poke with no long-poll waiting and no position asked for
    (``want``) reads nothing: the position lags (a sync reads its own).
    A long-poll that comes catches up first, so the writes it already has
    do not wake it for nothing; the next write wakes it; ``want`` (the
    federation sender) makes the notifier follow pokes again."""

    class Counting(StreamStore):
        reads = 0

        async def reservation_floor(self) -> int | None:
            self.reads += 1
            return await super().reservation_floor()

        async def position_changes_and_events(
            self, after: int, committed: int, events: int = 0
        ) -> tuple[int, dict[str, set[str]], EventsRead | None]:
            self.reads += 1
            return await super().position_changes_and_events(after, committed, events)

    store = Counting(db, instance_id="lazy")
    notifier = Notifier(store, poll_interval=60.0)  # no timed poll within the test
    await notifier.start()

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    try:
        before = notifier.position
        store.reads = 0
        for _ in range(3):
            await store.write(lambda conn, pos: insert_at(conn, pos))
            notifier.poke()
            await settle()
        assert store.reads == 0 and notifier.position == before  # three writes, no statement
        upto = await store.current_position()  # what a sync reads for itself
        assert upto > before
        poll = asyncio.create_task(notifier.wait_for_change(upto, ["@u:test"], 60))
        await until(lambda: notifier.waiting == 1)
        assert notifier.position == upto and not poll.done()  # caught up; not woken by what it has
        _, pos = await store.write(lambda conn, pos: insert_at(conn, pos))
        notifier.poke()
        await until(poll.done)
        assert await poll == notifier.position >= pos
        _, pos = await store.write(lambda conn, pos: insert_at(conn, pos))
        notifier.poke()
        await settle()
        assert notifier.position < pos  # nobody waits again: not followed
        notifier.want(pos)
        await until(lambda: notifier.position >= pos)
        assert notifier.position >= pos
    finally:
        await notifier.stop()


async def test_a_local_write_wakes_its_long_poll_before_the_due_committed_maximum_read(db: Database) -> None:
    """The notifier reads the committed maximum (every instance's writes)
    once per poll interval; a local write needs only the reservations'
    floor on top of what this instance committed. When a local write that
    wakes someone arrives with that read due, the long-poll is woken first
    and the read follows at once: it used to wait for it, a round trip on
    every other send of an idle server."""

    class Watching(StreamStore):
        woken_first: list[bool] = []

        async def committed_max(self) -> int:
            self.woken_first.append(notifier.wakeups > 0)
            return await super().committed_max()

    store = Watching(db, instance_id="due")
    notifier = Notifier(store, poll_interval=60.0)  # no timed poll within the test
    await notifier.start()

    try:
        upto = await store.current_position()
        poll = asyncio.create_task(notifier.wait_for_change(upto, ["@u:test"], 60))
        await until(lambda: notifier.waiting == 1)
        notifier._last_full -= 120.0  # the committed-maximum read is due
        store.woken_first.clear()
        _, pos = await store.write(lambda conn, pos: insert_at(conn, pos))
        notifier.poke()
        await until(lambda: poll.done() and bool(store.woken_first))
        assert await poll >= pos
        assert store.woken_first == [True]  # read once, after the wake-up
        assert asyncio.get_running_loop().time() - notifier._last_full < 60  # and counted as the poll's read
    finally:
        await notifier.stop()
