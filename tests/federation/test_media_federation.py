"""Media over federation between two coffeechat-home processes (TLS on
loopback): each serves the other's uploads to its own users, fetched once
over the authenticated federation endpoints, cached (served with the
origin stopped, by every instance), purged; the federation endpoints'
multipart answers read as another server reads them; refusals (unknown,
unreachable, too large, quarantined, unsigned) with their Matrix errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import psutil
import pytest
from yarl import URL

from coffeechat_home.protocol.request_auth import sign_request

from ..integration.media_helpers import AUTHED, Raw, assert_error, image_bytes, media_path, raw, upload
from ..integration.processes import ServerProcess, User
from ..pg import PostgresForTests
from .peers import FederatingServer, free_port, new_database

pytestmark = pytest.mark.federation

FED_MEDIA = "/_matrix/federation/v1/media"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def pair(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    # A counts requests (metrics); B fetches files of at most 300 kB
    a = FederatingServer(await new_database(pg, pg_template), tmp_path / "a", COFFEECHAT_METRICS_ENABLED="true")
    b = FederatingServer(await new_database(pg, pg_template), tmp_path / "b",
                         COFFEECHAT_MEDIA_MAX_REMOTE_BYTES=str(300_000))
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def _upload(user: User, data: bytes, ctype: str, filename: str | None = None) -> str:
    r = await upload(user.session, user.base_url, user.token, data, ctype, filename)
    assert r.status == 200, r.body
    return media_path(r.json()["content_uri"])


async def _get(user: User, path: str, **params: str) -> Raw:
    return await raw(user.session, "GET", user.base_url + path, token=user.token, params=params or None)


async def _fed_downloads(a: FederatingServer, http: aiohttp.ClientSession, at_least: int) -> int:
    """How many federation media downloads A has answered (its metrics,
    counted just after the answer's last byte: waits up to 5 s for
    ``at_least``)."""
    deadline = time.monotonic() + 5
    while True:
        count = await _count_fed_downloads(a, http)
        if count >= at_least or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


async def _count_fed_downloads(a: FederatingServer, http: aiohttp.ClientSession) -> int:
    async with http.get(a.client_url + "/metrics") as r:
        text = await r.text()
    total = 0
    for line in text.splitlines():
        if line.startswith("coffeechat_http_requests_total{") and f'route="{FED_MEDIA}/download/{{media_id}}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


async def signed_get(http: aiohttp.ClientSession, target: FederatingServer, origin: FederatingServer,
                     path: str, *, sign: bool = True) -> tuple[int, str, bytes]:
    headers = {"Authorization": sign_request("GET", path, origin.server_name, target.server_name,
                                             origin.signing_key())} if sign else {}
    async with http.get(URL(target.fed_url + path, encoded=True), headers=headers, ssl=False,
                        timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def parse_multipart(content_type: str, body: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """(metadata, file part headers, file bytes) of a federation media answer."""
    m = re.fullmatch(r"multipart/mixed; boundary=([0-9A-Za-z'()+_,./:=?-]+)", content_type)
    assert m, content_type
    delimiter = b"\r\n--" + m.group(1).encode()
    assert body.startswith(delimiter + b"\r\n") and body.endswith(delimiter + b"--\r\n"), body[:200]
    parts = body[: -len(delimiter + b"--\r\n")].split(delimiter + b"\r\n")
    assert parts[0] == b"" and len(parts) == 3, len(parts)
    meta_head, meta = parts[1].split(b"\r\n\r\n", 1)
    assert meta_head == b"Content-Type: application/json"
    file_head, data = parts[2].split(b"\r\n\r\n", 1)
    headers = dict(line.split(": ", 1) for line in file_head.decode().split("\r\n"))
    return meta, headers, data


async def test_each_server_serves_the_others_media_cached(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice = await User(http, a.client_url).register("alice")
    bob = await User(http, b.client_url).register("bob")
    doc = os.urandom(200_000)
    png = image_bytes(640, 480)
    doc_path = await _upload(alice, doc, "application/pdf", "Plan d'été.pdf")
    png_path = await _upload(alice, png, "image/png", "cat.png")
    bob_path = await _upload(bob, b"from bob\n" * 100, "text/plain", "notes.txt")
    assert doc_path.startswith(a.server_name + "/") and bob_path.startswith(b.server_name + "/")

    # B's user reads A's files through B; A's user reads B's through A
    r = await _get(bob, f"{AUTHED}/download/{doc_path}")
    assert r.status == 200 and r.body == doc, (r.status, r.body[:300])
    assert r.headers["Content-Type"] == "application/pdf"
    assert r.headers["Content-Disposition"] == "attachment; filename*=utf-8''Plan%20d%27%C3%A9t%C3%A9.pdf"
    assert r.headers["Content-Security-Policy"].startswith("sandbox")
    r = await _get(alice, f"{AUTHED}/download/{bob_path}/other.txt")
    assert r.status == 200 and r.body == b"from bob\n" * 100
    assert r.headers["Content-Disposition"] == 'inline; filename="other.txt"'
    # a thumbnail of a remote image: the original fetched, thumbnailed here
    r = await _get(bob, f"{AUTHED}/thumbnail/{png_path}", width="96", height="96", method="crop")
    assert r.status == 200 and r.headers["Content-Type"] in ("image/png", "image/jpeg"), r.body[:200]
    rows = await b.db_fetch("SELECT server_name, user_id, content_type, upload_name, size_bytes FROM media "
                            "WHERE server_name = $1 ORDER BY size_bytes", a.server_name)
    assert [tuple(r) for r in rows] == [
        (a.server_name, None, "image/png", "cat.png", len(png)),
        (a.server_name, None, "application/pdf", "Plan d'été.pdf", len(doc)),
    ]
    assert await _fed_downloads(a, http, 2) == 2

    # concurrent first requests for one uncached file: one fetch
    many = os.urandom(150_000)
    many_path = await _upload(alice, many, "application/octet-stream")
    answers = await asyncio.gather(*(_get(bob, f"{AUTHED}/download/{many_path}") for _ in range(6)))
    assert all(r.status == 200 and r.body == many for r in answers), [r.status for r in answers]
    await asyncio.sleep(0.2)  # a second fetch, if any, would be counted by now too
    assert await _fed_downloads(a, http, 3) == 3

    # the legacy unauthenticated path (cut-off 0): not served, not fetched
    assert_error(await raw(http, "GET", f"{b.client_url}/_matrix/media/v3/download/{doc_path}"), 404, "M_NOT_FOUND")

    # unknown on A: 404; too large for B (300 kB): 502 M_TOO_LARGE, nothing left on disk
    assert_error(await _get(bob, f"{AUTHED}/download/{a.server_name}/nosuchmediaid"), 404, "M_NOT_FOUND")
    big_path = await _upload(alice, os.urandom(400_000), "application/octet-stream", "big.bin")
    files_before = _files_under(b.data_dir / "media")
    r = await _get(bob, f"{AUTHED}/download/{big_path}")
    assert_error(r, 502, "M_TOO_LARGE")
    assert _files_under(b.data_dir / "media") == files_before  # no part file, no body
    assert not await b.db_fetch("SELECT 1 FROM media WHERE media_id = $1", big_path.split("/")[1])

    # A stops: B still serves what it fetched (a new thumbnail size too); the rest is 502
    second_instance = ServerProcess(
        dict(b.env, COFFEECHAT_INSTANCE_NAME="b2", COFFEECHAT_FEDERATION_LISTENER_PORT=str(free_port())),
        b.workdir,
    )
    await a.stop()
    try:
        await second_instance.start()
        for user in (bob, bob.on(second_instance.url)):
            r = await _get(user, f"{AUTHED}/download/{doc_path}")
            assert r.status == 200 and r.body == doc
            r = await _get(user, f"{AUTHED}/thumbnail/{png_path}", width="320", height="240")
            assert r.status == 200
        fresh = f"{a.server_name}/neverfetched"
        r = await _get(bob.on(second_instance.url), f"{AUTHED}/download/{fresh}")
        assert_error(r, 502, "M_UNKNOWN")
    finally:
        await second_instance.stop()

    # quarantined on B: 404 there; the purge of remote media removes the copies and their files
    body_file = b.data_dir / "media"
    code, out = await b.run_command("media-quarantine", f"mxc://{doc_path}")
    assert code == 0, out
    assert_error(await _get(bob, f"{AUTHED}/download/{doc_path}"), 404, "M_NOT_FOUND")
    code, out = await b.run_command("media-purge-remote", "--before", str(int(time.time() * 1000) + 1000))
    assert code == 0 and "purged 3 remote media" in out, out  # doc, png, many (big was refused)
    assert not await b.db_fetch("SELECT 1 FROM media WHERE server_name = $1", a.server_name)
    remaining = {p.name for p in _files_under(body_file)}
    assert hashlib.sha256(doc).hexdigest() not in remaining and hashlib.sha256(png).hexdigest() not in remaining
    # fetched again once A is back
    await a.start()
    r = await _get(bob, f"{AUTHED}/download/{png_path}")
    assert r.status == 200 and r.body == png


async def test_federation_media_endpoints(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice = await User(http, a.client_url).register("alice")
    data = b"hello over federation " * 5000
    path = await _upload(alice, data, "text/plain", "hello.txt")
    media_id = path.split("/")[1]
    png_path = await _upload(alice, image_bytes(800, 600), "image/png")

    status, ctype, body = await signed_get(http, a, b, f"{FED_MEDIA}/download/{media_id}")
    assert status == 200, body[:300]
    meta, headers, got = parse_multipart(ctype, body)
    assert meta == b"{}" and got == data
    assert headers == {"Content-Type": "text/plain", "Content-Disposition": 'inline; filename="hello.txt"'}

    status, ctype, body = await signed_get(
        http, a, b, f"{FED_MEDIA}/thumbnail/{png_path.split('/')[1]}?width=64&height=64&method=scale")
    assert status == 200, body[:300]
    _, headers, thumb = parse_multipart(ctype, body)
    assert headers["Content-Type"] in ("image/png", "image/jpeg") and thumb[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0")

    # refusals: unsigned, unknown, quarantined, a bad thumbnail request
    status, _, body = await signed_get(http, a, b, f"{FED_MEDIA}/download/{media_id}", sign=False)
    assert status == 401 and b"M_UNAUTHORIZED" in body
    status, _, body = await signed_get(http, a, b, f"{FED_MEDIA}/download/nosuchmedia")
    assert status == 404 and b"M_NOT_FOUND" in body
    status, _, body = await signed_get(http, a, b, f"{FED_MEDIA}/thumbnail/{media_id}?width=x&height=1")
    assert status == 400 and b"M_INVALID_PARAM" in body
    status, _, body = await signed_get(http, a, b, f"{FED_MEDIA}/thumbnail/{media_id}?width=64&height=64")
    assert status == 400 and b"M_UNKNOWN" in body  # text is not thumbnailable
    code, out = await a.run_command("media-quarantine", f"mxc://{path}")
    assert code == 0, out
    status, _, body = await signed_get(http, a, b, f"{FED_MEDIA}/download/{media_id}")
    assert status == 404 and b"M_NOT_FOUND" in body
    # the legacy unauthenticated path on the federation listener (for older
    # servers): there, under the cut-off (0: nothing newer served)
    async with http.get(f"{a.fed_url}/_matrix/media/v3/download/{png_path}?allow_remote=false", ssl=False) as r:
        assert r.status == 404 and (await r.json())["errcode"] == "M_NOT_FOUND"
    # and through B's client API, the quarantined file is not found either
    bob = await User(http, b.client_url).register("bob")
    assert_error(await _get(bob, f"{AUTHED}/download/{path}"), 404, "M_NOT_FOUND")


@pytest.mark.slow
async def test_large_remote_file_streams_through_two_instances(
    pg: PostgresForTests, pg_template: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """40 MB uploaded on A, fetched at the same moment by two instances of
    B (one database, one media folder): both serve it, one row and one body
    stay, and no process's resident memory grows by anything like the
    file's size (sampled every 10 ms)."""
    a = FederatingServer(await new_database(pg, pg_template), tmp_path / "a")
    b = FederatingServer(await new_database(pg, pg_template), tmp_path / "b")
    b2 = ServerProcess(dict(b.env, COFFEECHAT_INSTANCE_NAME="b2",
                            COFFEECHAT_FEDERATION_LISTENER_PORT=str(free_port())), b.workdir)
    try:
        await a.start()
        await b.start()
        await b2.start()
        alice = await User(http, a.client_url).register("alice")
        bob = await User(http, b.client_url).register("bob")
        size = 40 * 1024 * 1024
        src = tmp_path / "big.bin"
        await asyncio.to_thread(_write_random, src, size)
        with open(src, "rb") as f:
            path = await _upload(alice, f.read(), "video/mp4", "film.mp4")
        digest = await asyncio.to_thread(lambda: hashlib.sha256(src.read_bytes()).hexdigest())

        procs = {name: psutil.Process(p.process.pid if isinstance(p, FederatingServer) else p.pid)
                 for name, p in (("a", a), ("b", b), ("b2", b2))}
        base = {name: p.memory_info().rss for name, p in procs.items()}
        peak = dict(base)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for name, p in procs.items():
                    peak[name] = max(peak[name], p.memory_info().rss)
                stop.wait(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            async def fetch(base_url: str) -> tuple[int, str, int]:
                h = hashlib.sha256()
                got = 0
                async with http.get(f"{base_url}{AUTHED}/download/{path}",
                                    headers={"Authorization": f"Bearer {bob.token}"},
                                    timeout=aiohttp.ClientTimeout(total=300)) as r:
                    async for chunk in r.content.iter_chunked(1 << 20):
                        h.update(chunk)
                        got += len(chunk)
                    return r.status, h.hexdigest(), got

            answers = await asyncio.gather(fetch(b.client_url), fetch(b2.url))
        finally:
            stop.set()
            sampler.join()
        assert answers == [(200, digest, size)] * 2, answers
        rows = await b.db_fetch("SELECT sha256, size_bytes FROM media WHERE server_name = $1", a.server_name)
        assert [tuple(r) for r in rows] == [(digest, size)]
        bodies = [p for p in _files_under(b.data_dir / "media") if p.stat().st_size == size]
        assert [p.name for p in bodies] == [digest]  # the loser's copy was the same body: one file
        growth = {name: (peak[name] - base[name]) / 2**20 for name in procs}
        assert all(g < 16 for g in growth.values()), growth  # MB, for a 40 MB file
    finally:
        await b2.stop()
        await b.stop()
        await a.stop()


def _write_random(path: Path, size: int) -> None:
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(size // len(block)))
