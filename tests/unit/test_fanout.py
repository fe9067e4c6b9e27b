"""services/fanout.py: one read for many who ask the same, one batch for
the keys asked in one turn of the event loop."""

from __future__ import annotations

import asyncio

import pytest

from coffeechat_home.services.fanout import Batcher, SharedReads


async def test_shared_reads_read_once_for_concurrent_askers() -> None:
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.01)
        return 42

    shared: SharedReads[str, int] = SharedReads(ttl=60)
    got = await asyncio.gather(*(shared.get("k", read) for _ in range(100)))
    assert got == [42] * 100 and reads == 1
    assert await shared.get("k", read) == 42 and reads == 1  # remembered
    assert await shared.get("other", read) == 42 and reads == 2


async def test_shared_reads_share_a_failure_and_retry_after() -> None:
    calls = 0

    async def read() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise RuntimeError("database away")
        return 7

    shared: SharedReads[str, int] = SharedReads()
    results = await asyncio.gather(*(shared.get("k", read) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await shared.get("k", read) == 7  # a failure is not remembered


async def test_batcher_reads_one_turns_keys_together() -> None:
    batches: list[list[int]] = []

    async def read_many(keys: list[int]) -> dict[int, int]:
        batches.append(sorted(keys))
        return {k: k * 2 for k in keys if k != 999}

    b: Batcher[int, int] = Batcher(read_many, max_batch=50)
    got = await asyncio.gather(*(b.get(i % 80) for i in range(120)))
    assert got == [(i % 80) * 2 for i in range(120)]
    assert batches == [list(range(50)), list(range(50, 80))]  # each key once, at most 50 a batch
    with pytest.raises(KeyError):
        await b.get(999)


async def test_shared_read_survives_the_first_asker_going_away() -> None:
    """The asker that started a read is cancelled (its client disconnected):
    the others still get the answer, from the one read."""
    reads = 0
    release = asyncio.Event()

    async def read() -> int:
        nonlocal reads
        reads += 1
        await release.wait()
        return 5

    shared: SharedReads[str, int] = SharedReads()
    first = asyncio.ensure_future(shared.get("k", read))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(shared.get("k", read)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*others), 5) == [5, 5, 5]
    assert reads == 1 and first.cancelled()


async def test_shared_reads_let_go_of_expired_answers() -> None:
    """An answer past its ttl is not kept alive until ``size`` newer ones
    push it out: the next read drops it (a hundred rooms' timelines of one
    initial sync stayed in memory until 512 more reads came)."""
    import gc
    import weakref

    class Rows(list[int]):
        pass

    shared: SharedReads[str, Rows] = SharedReads(ttl=0.05, size=512)
    box = [Rows([1, 2, 3])]
    alive = weakref.ref(box[0])

    async def read_first() -> Rows:
        return box.pop()  # the cache holds the only reference

    assert await shared.get("old", read_first) == [1, 2, 3]
    gc.collect()
    assert alive() is not None  # remembered within its ttl
    await asyncio.sleep(0.1)

    async def read_new() -> Rows:
        return Rows([4])

    assert await shared.get("new", read_new) == [4]
    gc.collect()
    assert alive() is None
