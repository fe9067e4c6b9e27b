"""Wake-ups between instances (issue 7): a message sent through one
instance reaches a long-poll /sync on another at once, not at that
instance's next position poll. Both instances here poll once a minute, so a
long-poll that returns the message before its 20 s timeout was woken by
the writer's instance (services/instances.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from .processes import ServerProcess, User, server_env, timeline_bodies, wait_until

pytestmark = pytest.mark.slow

SLOW_POLL = {"COFFEECHAT_INSTANCE_POLL_MS": "60000"}


async def _wake_addresses(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT wake_addr FROM instance_leases WHERE wake_addr IS NOT NULL")
        return [r["wake_addr"] for r in rows]
    finally:
        await conn.close()


async def test_a_send_on_one_instance_wakes_a_long_poll_on_another(database_url: str, tmp_path: Path) -> None:
    a = ServerProcess(server_env(database_url, tmp_path, COFFEECHAT_INSTANCE_NAME="a", **SLOW_POLL), tmp_path)
    b = ServerProcess(server_env(database_url, tmp_path, COFFEECHAT_INSTANCE_NAME="b", **SLOW_POLL), tmp_path)
    await a.start()
    await b.start()
    try:
        async def both_published() -> bool:
            return len(await _wake_addresses(database_url)) == 2

        assert await wait_until(both_published, 10)
        # every address is on loopback, as every server a test starts
        assert all(addr.startswith("127.0.0.1:") for addr in await _wake_addresses(database_url))
        await asyncio.sleep(2.5)  # a's heartbeat (every second) has read b's address
        async with aiohttp.ClientSession() as s:
            alice = await User(s, a.url).register("alice")
            bob = await User(s, b.url).register("bob")
            status, body = await alice.call("POST", "createRoom", {"preset": "public_chat"})
            assert status == 200, body
            room_id = body["room_id"]
            status, body = await bob.call("POST", f"rooms/{room_id}/join", {})
            assert status == 200, body
            since = (await bob.sync())["next_batch"]
            for i in range(3):  # each long-poll is parked on b before alice sends through a
                poll = asyncio.create_task(bob.sync(since, timeout_ms=20_000))
                await asyncio.sleep(0.3)
                status, body = await alice.send(room_id, f"across {i}")
                assert status == 200, body
                got = await poll
                assert f"across {i}" in timeline_bodies(got, room_id), (
                    f"the long-poll on b timed out without alice's message {i} (no wake-up from a)")
                since = got["next_batch"]
    finally:
        await a.stop()
        await b.stop()
