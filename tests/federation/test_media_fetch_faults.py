"""Fetching remote media from servers that misbehave or are old, which no
real peer here can be made to do: a peer written in this test (an aiohttp
app on a real TLS socket, named ``localhost:<port>``) answers our
coffeechat-home process as such servers would. Checked: the fallback to
the legacy path on an unknown-endpoint answer (with ``allow_remote=false``),
a ``Location`` part followed, and every failure answered with a Matrix
error (never a 500) and nothing half-written left on disk."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from ..integration.media_helpers import AUTHED, Raw, assert_error, raw
from ..integration.processes import User
from ..pg import PostgresForTests
from .certs import make_certificate
from .peers import FederatingServer, free_port, new_database

pytestmark = pytest.mark.federation

LIMIT = 300_000
BOUNDARY = "0a1b2c3d"


class OddPeer:
    """The misbehaving peer: what it answers depends on the media id."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        self.workdir = workdir
        self.seen: list[str] = []  # path and query of each request
        self.runner: web.AppRunner | None = None

    def _multipart(self, part_headers: str, body: bytes) -> bytes:
        return (f"\r\n--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}\r\n"
                f"{part_headers}\r\n\r\n").encode() + body + f"\r\n--{BOUNDARY}--\r\n".encode()

    async def federation_download(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path_qs)
        media_id = request.match_info["media_id"]
        mixed = {"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"}
        if media_id == "legacyonly":
            return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, status=404)
        if media_id == "redirected":
            location = f"https://127.0.0.1:{self.port}/files/redirected"
            return web.Response(body=self._multipart(f"Location: {location}", b""), headers=mixed)
        if media_id == "notmultipart":
            return web.json_response({"not": "multipart"})
        if media_id == "truncated":
            resp = web.StreamResponse(headers=mixed)
            full = self._multipart("Content-Type: text/plain", b"x" * 200_000)
            resp.content_length = len(full)
            await resp.prepare(request)
            await resp.write(full[:100_000])
            assert request.transport is not None
            request.transport.abort()
            return resp
        if media_id == "endless":  # chunked, no length: past the limit
            resp = web.StreamResponse(headers=mixed)
            await resp.prepare(request)
            await resp.write(self._multipart("Content-Type: text/plain", b"")[:-len(f"\r\n--{BOUNDARY}--\r\n")])
            for _ in range(40):
                await resp.write(b"y" * 65536)
            await resp.write(f"\r\n--{BOUNDARY}--\r\n".encode())
            return resp
        if media_id == "slow":
            await asyncio.sleep(30)
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no"}, status=404)

    async def legacy_download(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path_qs)
        if request.query.get("allow_remote") != "false":
            return web.json_response({"errcode": "M_INVALID_PARAM", "error": "allow_remote"}, status=400)
        return web.Response(body=b"an old server's file", content_type="text/plain",
                            headers={"Content-Disposition": 'inline; filename="old.txt"'})

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.path_qs)
        return web.Response(body=b"found where the Location said", content_type="text/plain")

    async def start(self) -> "OddPeer":
        app = web.Application()
        app.router.add_get("/_matrix/federation/v1/media/download/{media_id}", self.federation_download)
        app.router.add_get("/_matrix/media/v3/download/{server}/{media_id}", self.legacy_download)
        app.router.add_get("/files/redirected", self.file)
        cert, key = make_certificate(self.workdir, "odd")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[tuple[FederatingServer, OddPeer]]:
    url = await new_database(pg, pg_template, "fedodd")
    ours = FederatingServer(url, tmp_path / "ours", COFFEECHAT_MEDIA_MAX_REMOTE_BYTES=str(LIMIT),
                            COFFEECHAT_FEDERATION_REQUEST_TIMEOUT_S="3")
    odd = OddPeer(tmp_path / "odd")
    try:
        await odd.start()
        await ours.start()
        yield ours, odd
    finally:
        await ours.stop()
        await odd.stop()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


async def test_old_and_misbehaving_servers(servers: tuple[FederatingServer, OddPeer]) -> None:
    ours, odd = servers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice")

        async def get(media_id: str, **params: str) -> Raw:
            return await raw(http, "GET", f"{ours.client_url}{AUTHED}/download/{odd.server_name}/{media_id}",
                             token=alice.token, params=params or None)

        # an old server: the legacy path, asked not to fetch elsewhere
        r = await get("legacyonly")
        assert r.status == 200 and r.body == b"an old server's file", r.body[:300]
        assert r.headers["Content-Disposition"] == 'inline; filename="old.txt"'
        assert odd.seen[-2:] == [
            "/_matrix/federation/v1/media/download/legacyonly?timeout_ms=20000",
            f"/_matrix/media/v3/download/{odd.server_name}/legacyonly?allow_remote=false&timeout_ms=20000",
        ]
        # the file part is a Location: followed
        r = await get("redirected")
        assert r.status == 200 and r.body == b"found where the Location said", r.body[:300]
        assert odd.seen[-1] == "/files/redirected"

        files_before = _files_under(ours.data_dir / "media")
        assert_error(await get("notmultipart"), 502, "M_UNKNOWN")
        assert_error(await get("truncated"), 502, "M_UNKNOWN")
        assert_error(await get("endless"), 502, "M_TOO_LARGE")
        assert_error(await get("nothere"), 404, "M_NOT_FOUND")
        assert _files_under(ours.data_dir / "media") == files_before  # nothing half-written stays
        rows = await ours.db_fetch("SELECT media_id FROM media WHERE server_name = $1 ORDER BY media_id",
                                   odd.server_name)
        assert [row["media_id"] for row in rows] == ["legacyonly", "redirected"]
        # a server that does not answer in time (3 s here): 502, not a 500
        assert_error(await get("slow", timeout_ms="0"), 502, "M_UNKNOWN")
