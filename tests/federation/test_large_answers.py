"""Federation answers bigger than one network read (a send_join of a room
with a few hundred members, a big /state, /backfill or /event_auth) are read
whole, in however many pieces they arrive; an answer over the client's size
limit is refused as such, whether or not it says its length up front."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import AsyncIterator

import orjson
import pytest
from aiohttp import web

from coffeechat_home.federation.client import FederationClient, FederationError
from coffeechat_home.protocol.signing import generate_signing_key

from .certs import make_certificate

BIG = {"pdus": [{"type": "m.room.member", "state_key": f"@user{i}:big.test", "content": {"membership": "join",
                 "displayname": "x" * 200}} for i in range(2000)]}
BIG_RAW = orjson.dumps(BIG)


async def _chunked(request: web.Request) -> web.StreamResponse:
    """The answer in 16 KiB pieces with pauses between them, no length."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for i in range(0, len(BIG_RAW), 16384):
        await resp.write(BIG_RAW[i:i + 16384])
        await asyncio.sleep(0.002)
    await resp.write_eof()
    return resp


async def _whole(request: web.Request) -> web.Response:
    return web.Response(body=BIG_RAW, content_type="application/json")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    cert, key = make_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    app = web.Application()
    app.router.add_get("/_matrix/federation/v1/chunked", _chunked)
    app.router.add_get("/_matrix/federation/v1/whole", _whole)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    assert site._server is not None and site._server.sockets  # type: ignore[attr-defined]
    yield site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    await runner.cleanup()


def _client(max_response_bytes: int) -> FederationClient:
    return FederationClient("origin.test", generate_signing_key("k"), allow_private_addresses=["127.0.0.0/8"],
                            verify_certificates=False, timeout_s=30, max_response_bytes=max_response_bytes)


async def test_large_answers_are_read_whole_and_limits_hold(server: int) -> None:
    assert len(BIG_RAW) > 400_000
    c = _client(10 * 1024 * 1024)
    try:
        for path in ("chunked", "whole"):
            got = await c.get_json(f"127.0.0.1:{server}", f"/_matrix/federation/v1/{path}", signed=False)
            assert got == BIG, path
    finally:
        await c.close()
    small = _client(100_000)
    try:
        for path in ("chunked", "whole"):
            with pytest.raises(FederationError, match="limit"):
                await small.request_json("GET", f"127.0.0.1:{server}", f"/_matrix/federation/v1/{path}",
                                         signed=False, ignore_backoff=True)
    finally:
        await small.close()
