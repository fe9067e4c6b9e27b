"""Signed requests with a JSON body, end to end in one process: the
outbound client signs method, URI and body; the inbound decorator checks
them (fetching the origin's key from its key server) and hands the handler
the verified origin and body."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from coffeechat_home.api.federation.auth import FEDERATION_BODY, FederationAuth
from coffeechat_home.api.federation.keys import KeyRoutes
from coffeechat_home.api.http import json_response
from coffeechat_home.api.middleware import make_matrix_middleware
from coffeechat_home.federation.client import FederationClient, RemoteError
from coffeechat_home.protocol.signing import generate_signing_key
from coffeechat_home.services.server_keys import KeyStore, LocalKeys
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.server_keys import ServerKeyStore

from .certs import make_certificate
from .peers import free_port


async def serve(app: web.Application, port: int, tls: ssl.SSLContext) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    return runner


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    d = await Database.connect(database_url, min_size=1, max_size=4)
    yield d
    await d.close()


async def test_put_with_body_signed_and_checked(db: Database, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    origin_port, dest_port = free_port(), free_port()
    origin, dest = f"localhost:{origin_port}", f"localhost:{dest_port}"
    origin_key, dest_key = generate_signing_key("o1"), generate_signing_key("d1")
    loopback = ["127.0.0.0/8"]

    # the origin: only its key server
    origin_app = web.Application()
    origin_local = LocalKeys(origin, origin_key)
    origin_client = FederationClient(origin, origin_key, allow_private_addresses=loopback, verify_certificates=False)
    KeyRoutes(origin_local, KeyStore(ServerKeyStore(db), origin_local, origin_client, [])).register_routes(
        origin_app.router)

    # the destination: an authenticated echo route
    dest_client = FederationClient(dest, dest_key, allow_private_addresses=loopback, verify_certificates=False)
    auth = FederationAuth(KeyStore(ServerKeyStore(db), LocalKeys(dest, dest_key), dest_client, []), dest)

    async def echo(request: web.Request, verified_origin: str) -> web.StreamResponse:
        return json_response({"origin": verified_origin, "body": request[FEDERATION_BODY],
                              "txn": request.match_info["txn"]})

    dest_app = web.Application(middlewares=[make_matrix_middleware()])
    dest_app.router.add_put("/_matrix/federation/v1/send/{txn}", auth(echo))
    runners = [await serve(origin_app, origin_port, tls), await serve(dest_app, dest_port, tls)]
    try:
        body = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"text": "é ☕"}}]}
        answer = await origin_client.put_json(dest, "/_matrix/federation/v1/send/t%201", body, {"q": "a b"})
        assert answer == {"origin": origin, "body": body, "txn": "t 1"}
        # the same request signed by a key the origin does not publish
        impostor = FederationClient(origin, generate_signing_key("o1"), allow_private_addresses=loopback,
                                    verify_certificates=False)
        try:
            with pytest.raises(RemoteError) as e:
                await impostor.put_json(dest, "/_matrix/federation/v1/send/t2", body)
            assert (e.value.status, e.value.errcode) == (401, "M_UNAUTHORIZED")
        finally:
            await impostor.close()
    finally:
        for r in runners:
            await r.cleanup()
        await origin_client.close()
        await dest_client.close()
