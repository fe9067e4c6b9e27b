"""The private-address guard: outbound federation refuses loopback unless
allowed, before any connection is made (a real listener counts them)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from coffeechat_home.federation.client import FederationClient, Unreachable
from coffeechat_home.protocol.signing import generate_signing_key


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts connections (and drops them)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def listener() -> AsyncIterator[CountingListener]:
    lst = CountingListener()
    await lst.start()
    yield lst
    await lst.stop()


def client(allowed: list[str]) -> FederationClient:
    return FederationClient("origin.test", generate_signing_key("k"), allow_private_addresses=allowed,
                            verify_certificates=False, timeout_s=5)


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
async def test_loopback_refused_before_connecting(listener: CountingListener, name: str) -> None:
    c = client([])
    try:
        with pytest.raises(Unreachable, match="may not reach"):
            await c.get_json(f"{name}:{listener.port}", "/_matrix/federation/v1/version")
        # 10.0.0.0/8 allowed does not let loopback through
        c2 = client(["10.0.0.0/8"])
        try:
            with pytest.raises(Unreachable, match="may not reach"):
                await c2.get_json(f"{name}:{listener.port}", "/_matrix/federation/v1/version")
        finally:
            await c2.close()
    finally:
        await c.close()
    assert listener.connections == 0


async def test_loopback_allowed_when_listed(listener: CountingListener) -> None:
    c = client(["127.0.0.0/8"])
    try:
        # the listener drops the connection: unreachable, but it was reached
        with pytest.raises(Unreachable):
            await c.get_json(f"127.0.0.1:{listener.port}", "/_matrix/federation/v1/version")
    finally:
        await c.close()
    assert listener.connections == 1


async def test_backoff_after_failure(listener: CountingListener) -> None:
    c = client(["127.0.0.0/8"])
    try:
        with pytest.raises(Unreachable):
            await c.get_json(f"127.0.0.1:{listener.port}", "/x")
        with pytest.raises(Unreachable, match="not trying"):
            await c.get_json(f"127.0.0.1:{listener.port}", "/x")
    finally:
        await c.close()
    assert listener.connections == 1
