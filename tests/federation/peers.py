"""coffeechat-home servers that federate on loopback, as real processes:
server name ``localhost:<federation port>``, TLS with a self-signed
certificate, loopback allowed for outbound federation, peer certificates
not verified (self-signed)."""

from __future__ import annotations

import itertools
import time
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from yarl import URL

from coffeechat_home.federation.client import FederationClient
from coffeechat_home.keyfile import load_signing_key
from coffeechat_home.protocol.request_auth import sign_request
from coffeechat_home.protocol.signing import SigningKey

from ..integration.processes import CMD, ServerProcess, server_env
from ..pg import PostgresForTests
from .certs import make_certificate

LOOPBACK = "127.0.0.0/8,::1/128"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FederatingServer:
    """One coffeechat-home process with its federation listener on."""

    def __init__(self, database_url: str, workdir: Path, **extra_env: str) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.fed_port = free_port()
        self.server_name = f"localhost:{self.fed_port}"
        self.database_url = database_url
        cert, key = make_certificate(workdir)
        env = {
            "COFFEECHAT_SERVER_NAME": self.server_name,
            "COFFEECHAT_FEDERATION_LISTENER_ENABLED": "true",
            "COFFEECHAT_FEDERATION_LISTENER_PORT": str(self.fed_port),
            "COFFEECHAT_FEDERATION_LISTENER_TLS_CERTIFICATE_PATH": str(cert),
            "COFFEECHAT_FEDERATION_LISTENER_TLS_PRIVATE_KEY_PATH": str(key),
            "COFFEECHAT_FEDERATION_ALLOW_PRIVATE_ADDRESSES": LOOPBACK,
            "COFFEECHAT_FEDERATION_VERIFY_PEER_CERTIFICATES": "false",
            "COFFEECHAT_FEDERATION_REQUEST_TIMEOUT_S": "20",
            # a send that fails on a loaded machine is tried again within
            # seconds (the default backoff, 10 s doubling, could eat a test's
            # whole wait); tests of the backoff set their own
            "COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "300",
            "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "3000",
            **extra_env,
        }
        self.env = server_env(database_url, self.data_dir, **env)
        self.process = ServerProcess(self.env, workdir)

    @property
    def client_url(self) -> str:
        return self.process.url

    @property
    def fed_url(self) -> str:
        return f"https://127.0.0.1:{self.fed_port}"

    def signing_key(self) -> SigningKey:
        return load_signing_key(self.data_dir / "signing.key")

    async def start(self) -> "FederatingServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.process.start()
        return self

    async def stop(self) -> None:
        await self.process.stop()

    async def run_command(self, *args: str) -> tuple[int, str]:
        import asyncio

        proc = await asyncio.create_subprocess_exec(
            *CMD, *args, env=self.env, cwd=self.workdir,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return int(proc.returncode or 0), out.decode(errors="replace")

    async def db_fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


async def signed_federation_get(
    http: aiohttp.ClientSession,
    base_url: str,
    path: str,
    *,
    origin: str,
    destination: str,
    key: SigningKey,
    authorization: str | None = None,
) -> tuple[int, Any]:
    """GET a federation path with an X-Matrix header signed by ``key`` for
    ``origin`` (or the ``authorization`` given, as it is)."""
    header = authorization if authorization is not None else sign_request("GET", path, origin, destination, key)
    headers = {"Authorization": header} if header else {}
    async with http.get(URL(base_url + path, encoded=True), headers=headers, ssl=False,
                        timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, await r.json(content_type=None)


async def send_transaction(origin: FederatingServer, destination: FederatingServer, txn_id: str,
                           pdus: list[Any], edus: list[Any] | None = None) -> dict[str, Any]:
    """``PUT /send/{txn_id}`` of ``pdus`` (and ``edus``) from ``origin`` to ``destination``,
    signed with ``origin``'s key by our federation client (as its sender
    would, but now and with what the test chose); the answer's per-PDU
    results."""
    client = FederationClient(origin.server_name, origin.signing_key(), allow_private_addresses=["127.0.0.0/8"],
                              verify_certificates=False)
    try:
        body = {"origin": origin.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus}
        if edus:
            body["edus"] = edus
        answer = await client.put_json(destination.server_name, f"/_matrix/federation/v1/send/{txn_id}", body)
    finally:
        await client.close()
    results = answer.get("pdus")
    assert isinstance(results, dict), answer
    return results


_databases = itertools.count()


async def new_database(pg: PostgresForTests, template: str, prefix: str = "fed") -> str:
    """A fresh database made from ``template``, named from one counter for
    every federation test of this process (names from counters of their own
    collided: a test dropped the database a running server was using)."""
    return await pg.create_database(f"cch_{prefix}{os.getpid()}_{next(_databases)}", template=template)


@asynccontextmanager
async def federating_servers(
    pg: PostgresForTests, template: str, folder: Path, prefix: str, count: int, **kw: Any
) -> AsyncIterator[list[FederatingServer]]:
    """``count`` federating servers (named a, b, c, ... in ``folder``), each
    with its own database made from ``template``; stopped afterwards, also
    when starting one of them failed. ``kw`` goes to FederatingServer."""
    servers: list[FederatingServer] = []
    try:
        for name in "abcdefgh"[:count]:
            url = await new_database(pg, template, prefix)
            servers.append(await FederatingServer(url, folder / name, **kw).start())
        yield servers
    finally:
        for s in servers:
            await s.stop()
