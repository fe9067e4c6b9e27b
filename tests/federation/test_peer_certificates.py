"""Outbound federation checks the peer's TLS certificate by default: a
server on a self-signed certificate is unreachable unless verification is
turned off (``federation.verify_peer_certificates = false``, tests only)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from coffeechat_home.federation.client import FederationClient, Unreachable
from coffeechat_home.protocol.signing import generate_signing_key

from .certs import make_certificate


@pytest.fixture
async def self_signed_peer(tmp_path: Path) -> AsyncIterator[str]:
    """A federation version endpoint over HTTPS on 127.0.0.1 with a
    self-signed certificate; yields its server name."""
    cert, key = make_certificate(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "peer", "version": "1"}})

    app.router.add_get("/_matrix/federation/v1/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_self_signed_peer_is_refused_unless_verification_is_off(self_signed_peer: str) -> None:
    for verify in (True, False):
        client = FederationClient("origin.test", generate_signing_key("k"), allow_private_addresses=["127.0.0.1/32"],
                                  verify_certificates=verify, timeout_s=5)
        try:
            if verify:
                with pytest.raises(Unreachable, match="(?i)certificate"):
                    await client.get_json(self_signed_peer, "/_matrix/federation/v1/version")
            else:
                answer = await client.get_json(self_signed_peer, "/_matrix/federation/v1/version")
                assert answer == {"server": {"name": "peer", "version": "1"}}
        finally:
            await client.close()
