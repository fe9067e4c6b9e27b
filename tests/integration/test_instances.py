"""Instance liveness leases and work leases, against the real database."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from coffeechat_home.storage.database import Database
from coffeechat_home.storage.instances import InstanceStore


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[InstanceStore]:
    db = await Database.connect(database_url, min_size=1, max_size=4)
    try:
        yield InstanceStore(db)
    finally:
        await db.close()


async def _reservation(store: InstanceStore, token: str, instance_id: str) -> None:
    await store.db.execute(
        "INSERT INTO stream_inflight (token, floor, expires_ts, instance_id) VALUES ($1, 1, 9e15::BIGINT, $2)",
        token, instance_id,
    )


async def _tokens(store: InstanceStore) -> set[str]:
    return {r["token"] for r in await store.db.fetch("SELECT token FROM stream_inflight")}


async def test_restart_under_same_name_releases_at_once(store: InstanceStore) -> None:
    await store.register("a/1", "a", ttl_ms=60_000)
    await store.register("b/1", "b", ttl_ms=60_000)
    await _reservation(store, "t-a", "a/1")
    await _reservation(store, "t-b", "b/1")
    replaced = await store.register("a/2", "a", ttl_ms=60_000)
    assert [(r.instance_id, r.looked_alive) for r in replaced] == [("a/1", True)]
    assert await _tokens(store) == {"t-b"}
    assert [i for i, _ in await store.live_instances()] == ["a/2", "b/1"]


async def test_survivor_reclaims_what_an_expired_instance_held(store: InstanceStore) -> None:
    await store.register("dead/1", "dead", ttl_ms=300)
    await store.register("live/1", "live", ttl_ms=60_000)
    await _reservation(store, "t-dead", "dead/1")
    await _reservation(store, "t-live", "live/1")
    assert await store.acquire_work_lease("destination:remote.example", "dead/1", ttl_ms=300)
    assert not await store.acquire_work_lease("destination:remote.example", "live/1", ttl_ms=60_000)
    assert await store.reclaim_dead() == 0  # nothing expired yet
    await asyncio.sleep(0.5)  # "dead" stops renewing
    assert await store.reclaim_dead() == 1
    assert await _tokens(store) == {"t-live"}
    assert await store.work_lease_holder("destination:remote.example") is None
    assert await store.acquire_work_lease("destination:remote.example", "live/1", ttl_ms=60_000)
    assert await store.work_lease_holder("destination:remote.example") == "live/1"
    # a holder renews its own lease; another instance cannot take it
    assert await store.acquire_work_lease("destination:remote.example", "live/1", ttl_ms=60_000)
    assert not await store.acquire_work_lease("destination:remote.example", "dead/1", ttl_ms=300)


async def test_renew_after_losing_the_lease_registers_again(store: InstanceStore) -> None:
    await store.register("slow/1", "slow", ttl_ms=60_000)
    await store.db.execute("DELETE FROM instance_leases")  # as a survivor would after a long outage
    assert await store.renew("slow/1", "slow", ttl_ms=60_000) is False
    assert await store.renew("slow/1", "slow", ttl_ms=60_000) is True
    await store.deregister("slow/1")
    assert await store.live_instances() == []
