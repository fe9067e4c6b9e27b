"""End-to-end encryption between two coffeechat-home servers (real
processes on loopback, TLS), through the federation sender's persisted EDU
outbox: to-device messages reach the other server's user exactly once,
also when the sending server is killed -9 before it could deliver them."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, AsyncIterator

import aiohttp
import pytest

from ..integration.processes import User, wait_until
from ..pg import PostgresForTests
from .peers import FederatingServer

pytestmark = pytest.mark.federation

_n = itertools.count()
SHORT_RETRY = {"COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "300",
               "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "2000"}


@pytest.fixture(scope="module")
async def pair(pg: PostgresForTests, pg_template: str,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    tmp = tmp_path_factory.mktemp("e2e-across")
    servers: list[FederatingServer] = []
    try:
        for name in ("a", "b"):
            url = await pg.create_database(f"cch_e2ex{os.getpid()}_{next(_n)}", template=pg_template)
            servers.append(await FederatingServer(url, tmp / name, **SHORT_RETRY).start())
        yield servers[0], servers[1]
    finally:
        for s in servers:
            await s.stop()


async def to_device_events(user: User, since: str | None) -> tuple[list[dict[str, Any]], str]:
    body = await user.sync(since)
    return list(body.get("to_device", {}).get("events", [])), str(body["next_batch"])


async def test_to_device_across_servers_and_outbox_survives_kill9(
    pair: tuple[FederatingServer, FederatingServer],
) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice_td")
        bob = await User(http, b.client_url).register("bob_td")
        status, devices = await bob.call("GET", "devices")
        assert status == 200, devices
        bob_device = devices["devices"][0]["device_id"]
        _, since = await to_device_events(bob, None)

        # -- delivered once through the outbox; a retried request sends nothing again
        content = {"n": 1, "body": "opaque"}
        sent_at = time.monotonic()
        for _ in range(2):
            status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-1",
                                            {"messages": {bob.user_id: {bob_device: content}}})
            assert status == 200, body
        got: list[dict[str, Any]] = []

        async def arrived() -> bool:
            nonlocal since
            events, since = await to_device_events(bob, since)
            got.extend(events)
            return bool(got)

        assert await wait_until(arrived, 30), a.process.stderr()[-3000:]
        latency_ms = (time.monotonic() - sent_at) * 1000
        print(f"to-device across servers: {latency_ms:.0f} ms from send to the recipient's sync")
        assert got == [{"sender": alice.user_id, "type": "m.test.secret", "content": content}]
        assert await a.db_fetch("SELECT * FROM federation_edu_outbox") == []  # acknowledged: deleted

        # -- B down: the message waits in A's outbox; A killed -9; both back
        await b.stop()
        status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-2",
                                        {"messages": {bob.user_id: {"*": {"n": 2}}}})
        assert status == 200, body

        async def failed_once() -> bool:
            rows = await a.db_fetch("SELECT retry_count FROM federation_destinations WHERE destination = $1",
                                    b.server_name)
            return bool(rows) and rows[0]["retry_count"] > 0

        assert await wait_until(failed_once, 30)
        queued = await a.db_fetch("SELECT destination, edu_type, content FROM federation_edu_outbox")
        assert [(r["destination"], r["edu_type"]) for r in queued] == [(b.server_name, "m.direct_to_device")]
        await a.process.kill9()
        await b.start()
        await a.start()
        alice, bob = alice.on(a.client_url), bob.on(b.client_url)
        got.clear()
        assert await wait_until(arrived, 30), a.process.stderr()[-3000:]
        assert got == [{"sender": alice.user_id, "type": "m.test.secret", "content": {"n": 2}}]

        async def outbox_empty() -> bool:
            return await a.db_fetch("SELECT 1 FROM federation_edu_outbox") == []

        assert await wait_until(outbox_empty, 30)
        # exactly once: nothing more arrives (the next sync is empty)
        events, since = await to_device_events(bob, since)
        assert events == []
        # a remote user's device that does not exist gets nothing
        status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-3",
                                        {"messages": {bob.user_id: {"NODEVICE": {"n": 3}}}})
        assert status == 200, body
        assert await wait_until(outbox_empty, 30)
        events, since = await to_device_events(bob, since)
        assert events == []
