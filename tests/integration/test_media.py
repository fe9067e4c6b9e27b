"""The content repository over real HTTP: uploads (direct and to a created
URI), downloads with their safety headers, the legacy unauthenticated
paths and their cut-off, limits, quotas and every refusal the issue lists."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from ..helpers import ApiClient
from .conftest import StartServer
from .media_helpers import (
    AUTHED,
    UPLOAD,
    assert_error,
    image_bytes,
    media_path,
    raw,
    upload,
)
from .processes import wait_until


async def _uploaded(api: ApiClient, data: bytes, ctype: str = "application/octet-stream", filename: str | None = None) -> str:
    r = await upload(api.session, api.base_url, api.token, data, ctype, filename)
    assert r.status == 200, r.body
    uri = r.json()["content_uri"]
    assert uri.startswith("mxc://test.local/")
    return media_path(uri)


async def test_upload_download_with_safe_headers(alice: ApiClient, bob: ApiClient) -> None:
    data = b"%PDF-1.4 not really a pdf\n" * 100
    path = await _uploaded(alice, data, "application/pdf", "War and Peace.pdf")
    # any local user may download it (the spec has no per-media permissions)
    r = await raw(bob.session, "GET", f"{bob.base_url}{AUTHED}/download/{path}", token=bob.token)
    assert r.status == 200 and r.body == data
    assert r.headers["Content-Type"] == "application/pdf"
    assert r.headers["Content-Disposition"] == 'attachment; filename="War and Peace.pdf"'
    assert r.headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert r.headers["Access-Control-Allow-Origin"] == "*"  # browser clients fetch media too
    head = await raw(bob.session, "HEAD", f"{bob.base_url}{AUTHED}/download/{path}", token=bob.token)
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) == len(data)
    # the file name in the path replaces the stored one
    r = await raw(bob.session, "GET", f"{bob.base_url}{AUTHED}/download/{path}/r%C3%A9sum%C3%A9.pdf", token=bob.token)
    assert r.status == 200 and r.body == data
    assert r.headers["Content-Disposition"] == "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf"
    # HEAD and byte ranges work too
    r = await raw(bob.session, "GET", f"{bob.base_url}{AUTHED}/download/{path}", token=bob.token,
                  headers={"Range": "bytes=0-7"})
    assert r.status == 206 and r.body == data[:8]


async def test_content_types_are_sniffed_for_images(alice: ApiClient) -> None:
    png = image_bytes(20, 10)
    cases = [
        (png, "application/octet-stream", "image/png", "inline"),  # an image sent untyped
        (png, "image/jpeg", "image/png", "inline"),  # mislabelled image: the bytes win
        (b"<svg onload=alert(1)>", "image/png", "application/octet-stream", "attachment"),  # not a PNG
        (b"<html><script>alert(1)</script>", "text/html", "text/html", "attachment"),
        (b"hello", "text/plain; charset=UTF-8; x=y", "text/plain; charset=utf-8", "inline"),
        (b"hello", "not a type", "application/octet-stream", "attachment"),
        (b"{}", "", "application/octet-stream", "attachment"),
    ]
    for data, declared, served, disposition in cases:
        path = await _uploaded(alice, data, declared)
        r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/download/{path}", token=alice.token)
        assert r.status == 200 and r.body == data
        assert r.headers["Content-Type"] == served, (declared, r.headers["Content-Type"])
        assert r.headers["Content-Disposition"] == disposition, declared


async def test_authenticated_endpoints_need_a_token(alice: ApiClient) -> None:
    path = await _uploaded(alice, b"secret")
    base = alice.base_url
    for url in (f"{AUTHED}/download/{path}", f"{AUTHED}/download/{path}/x.txt",
                f"{AUTHED}/thumbnail/{path}?width=32&height=32", f"{AUTHED}/config"):
        assert_error(await raw(alice.session, "GET", base + url), 401, "M_MISSING_TOKEN")
        assert_error(await raw(alice.session, "GET", base + url, token="nope"), 401, "M_UNKNOWN_TOKEN")
    assert_error(await upload(alice.session, base, None, b"x"), 401, "M_MISSING_TOKEN")
    assert_error(await raw(alice.session, "POST", base + "/_matrix/media/v1/create"), 401, "M_MISSING_TOKEN")


async def test_config_and_preview(alice: ApiClient) -> None:
    r = await alice.get(f"{AUTHED}/config")
    assert r.status == 200 and r["m.upload.size"] == 50 * 1024 * 1024
    r = await alice.get("/_matrix/media/v3/config")
    assert r.status == 200 and r["m.upload.size"] == 50 * 1024 * 1024
    r = await alice.get(f"{AUTHED}/preview_url", params={"url": "http://127.0.0.1/"}, validate=False)
    assert r.status == 404 and r["errcode"] == "M_UNRECOGNIZED"


async def test_legacy_paths_serve_only_media_before_the_cutoff(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    frozen = await start_server()  # cut-off 0: every upload is new media
    later = int(time.time() * 1000) + 3_600_000
    open_ = await start_server(COFFEECHAT_INSTANCE_NAME="open", COFFEECHAT_MEDIA_UNAUTHENTICATED_CUTOFF_TS=str(later))
    api = ApiClient(f"http://127.0.0.1:{frozen.client_port}", http)
    await api.register("alice")
    png = image_bytes(64, 64)
    path = await _uploaded(api, png, "image/png", "cat.png")
    for prefix in ("/_matrix/media/v3", "/_matrix/media/r0"):
        for tail in (f"download/{path}", f"download/{path}/cat.png", f"thumbnail/{path}?width=32&height=32"):
            r = await raw(http, "GET", f"{api.base_url}{prefix}/{tail}")
            assert_error(r, 404, "M_NOT_FOUND")
            # an instance whose cut-off is later serves the same media unauthenticated
            r = await raw(http, "GET", f"http://127.0.0.1:{open_.client_port}{prefix}/{tail}")
            assert r.status == 200, (tail, r.body[:200])
            assert r.headers["Content-Type"] == "image/png"
    # the authenticated path serves it everywhere
    r = await raw(http, "GET", f"{api.base_url}{AUTHED}/download/{path}", token=api.token)
    assert r.status == 200 and r.body == png


async def test_uploads_larger_than_the_json_body_limit(alice: ApiClient) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB, over limits.max_request_body_bytes (1 MiB)
    path = await _uploaded(alice, data)
    r = await raw(alice.session, "GET", f"{alice.base_url}{AUTHED}/download/{path}", token=alice.token)
    assert r.status == 200 and r.body == data
    # other routes keep the 1 MiB limit
    r = await raw(alice.session, "PUT", f"{alice.base_url}/_matrix/client/v3/profile/{alice.user_id}/displayname",
                  token=alice.token, data=b'{"displayname": "' + b"x" * 1_100_000 + b'"}')
    assert_error(r, 413, "M_TOO_LARGE")


async def test_oversize_uploads_are_refused(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    hs = await start_server(COFFEECHAT_MEDIA_MAX_UPLOAD_BYTES="1000")
    api = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    await api.register("alice")
    assert (await api.get(f"{AUTHED}/config"))["m.upload.size"] == 1000
    await _uploaded(api, b"x" * 1000)
    # declared too large: refused before reading
    assert_error(await upload(http, api.base_url, api.token, b"x" * 1001), 413, "M_TOO_LARGE")

    # chunked, no Content-Length: refused once the 1001st byte arrives
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"y" * 400

    assert_error(await upload(http, api.base_url, api.token, chunks()), 413, "M_TOO_LARGE")
    # Expect: 100-continue: refused before the body is sent
    async with http.post(api.base_url + UPLOAD, data=b"z" * 5000, expect100=True,
                         headers={"Authorization": f"Bearer {api.token}"}) as resp:
        assert resp.status == 413 and (await resp.json())["errcode"] == "M_TOO_LARGE"
    async with http.post(api.base_url + UPLOAD, data=b"z" * 500, expect100=True,
                         headers={"Authorization": f"Bearer {api.token}"}) as resp:
        assert resp.status == 200 and (await resp.json())["content_uri"].startswith("mxc://")
    # nothing of the refused bodies is left on disk
    tmp = Path(hs.config.media_path) / "tmp"
    assert list(tmp.iterdir()) == []


def _upload_request(token: str, declared: int, body: bytes) -> bytes:
    """An upload with Content-Length ``declared`` and ``body`` (which may be shorter)."""
    return (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n".encode() + body
    )


async def _no_upload_file_left(server) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) until the server's folder of uploads being received is
    empty: an upload's clean-up can run after its connection closed."""
    tmp = Path(server.config.media_path) / "tmp"

    async def empty() -> bool:
        return not any(tmp.iterdir())

    assert await wait_until(empty, 10, interval=0.02), list(tmp.iterdir())


def _raw_upload(port: int, token: str, declared: int, body: bytes) -> bytes:
    """Send a body shorter than its Content-Length, close our side, read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_upload_request(token, declared, body))
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def test_body_shorter_than_content_length(alice: ApiClient, server) -> None:  # type: ignore[no-untyped-def]
    answer = await asyncio.to_thread(_raw_upload, server.client_port, alice.token, 1000, b"a" * 10)
    # the client closed its side, so asyncio closes the connection before
    # an answer can go out (aiohttp answers a 400 if it still can); nothing
    # is stored either way and the server keeps serving
    if answer:
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"M_INVALID_PARAM" in answer
    # the connection can close before the handler has seen the short body:
    # its clean-up runs after, in this test's event loop
    await _no_upload_file_left(server)
    assert (await alice.get(f"{AUTHED}/config")).status == 200  # still serving


async def test_client_gone_in_the_middle_of_its_body(alice: ApiClient, server) -> None:  # type: ignore[no-untyped-def]
    """The client closes its side once the server is writing the body to
    disk (the file exists): the handler is cancelled or finds the body
    short, and the file goes either way."""
    tmp = Path(server.config.media_path) / "tmp"

    def send_half() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", server.client_port), timeout=10)
        s.sendall(_upload_request(alice.token, 100_000, b"b" * 50_000))
        return s

    s = await asyncio.to_thread(send_half)
    try:
        async def writing() -> bool:
            return any(tmp.iterdir())

        assert await wait_until(writing, 10, interval=0.02)
        s.shutdown(socket.SHUT_WR)
        await _no_upload_file_left(server)
    finally:
        s.close()
    assert (await alice.get(f"{AUTHED}/config")).status == 200


async def test_bad_ids_and_path_traversal(alice: ApiClient) -> None:
    s, base, tok = alice.session, alice.base_url, alice.token
    path = await _uploaded(alice, b"data")
    media_id = path.split("/")[1]
    for bad in ("abc%24def", "..", "%2E%2E", "a.b", "x%00y", "%2e%2e%2fetc%2fpasswd", "A" * 300):
        for url in (f"{AUTHED}/download/test.local/{bad}", f"{AUTHED}/thumbnail/test.local/{bad}?width=8&height=8"):
            r = await raw(s, "GET", base + url, token=tok)
            assert r.status == 404 and r.json()["errcode"] in ("M_NOT_FOUND", "M_UNRECOGNIZED"), (url, r.body)
        r = await raw(s, "PUT", f"{base}/_matrix/media/v3/upload/test.local/{bad}", token=tok, data=b"x")
        assert r.status == 404 and r.json()["errcode"] in ("M_NOT_FOUND", "M_UNRECOGNIZED"), (bad, r.body)
    # file names: one path component, no control characters
    for bad_name in ("../../etc/passwd", "a/b", "a\\b", "..", "line\nbreak", "nul\x00", "x" * 300):
        assert_error(await upload(s, base, tok, b"x", filename=bad_name), 400, "M_INVALID_PARAM")
    for bad_name in ("..%5C..%5Cboot.ini", "%2E%2E", "a%0Ab"):
        r = await raw(s, "GET", f"{base}{AUTHED}/download/test.local/{media_id}/{bad_name}", token=tok)
        assert r.status in (400, 404), (bad_name, r.status)
        assert r.json()["errcode"] in ("M_INVALID_PARAM", "M_NOT_FOUND", "M_UNRECOGNIZED")
    # remote media: no federation yet
    r = await raw(s, "GET", f"{base}{AUTHED}/download/other.example/{media_id}", token=tok)
    assert_error(r, 404, "M_NOT_FOUND")
    assert "federate" in r.json()["error"]
    # unknown but well-formed
    assert_error(await raw(s, "GET", f"{base}{AUTHED}/download/test.local/nosuchmedia", token=tok), 404, "M_NOT_FOUND")


async def test_asynchronous_upload(alice: ApiClient, bob: ApiClient) -> None:
    r = await alice.post("/_matrix/media/v1/create", {})
    assert r.status == 200, r
    now = int(time.time() * 1000)
    assert 23 * 3600_000 < r["unused_expires_at"] - now <= 24 * 3600_000
    path = media_path(r["content_uri"])
    s, base = alice.session, alice.base_url
    # not uploaded yet: answered at once with timeout_ms=0
    r2 = await raw(s, "GET", f"{base}{AUTHED}/download/{path}", token=alice.token, params={"timeout_ms": "0"})
    assert_error(r2, 504, "M_NOT_YET_UPLOADED")
    # a download that waits sees the upload when it lands
    waiting = asyncio.create_task(raw(s, "GET", f"{base}{AUTHED}/download/{path}", token=bob.token,
                                      params={"timeout_ms": "10000"}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    # only the creator may upload
    r2 = await raw(s, "PUT", f"{base}/_matrix/media/v3/upload/{path}", token=bob.token, data=b"bob's")
    assert_error(r2, 403, "M_FORBIDDEN")
    r2 = await raw(s, "PUT", f"{base}/_matrix/media/v3/upload/{path}", token=alice.token, data=b"alice's file",
                   headers={"Content-Type": "text/plain"}, params={"filename": "notes.txt"})
    assert r2.status == 200 and r2.json() == {}
    got = await asyncio.wait_for(waiting, 15)
    assert got.status == 200 and got.body == b"alice's file"
    assert got.headers["Content-Disposition"] == 'inline; filename="notes.txt"'
    r2 = await raw(s, "PUT", f"{base}/_matrix/media/v3/upload/{path}", token=alice.token, data=b"again")
    assert_error(r2, 409, "M_CANNOT_OVERWRITE_MEDIA")
    # a URI nobody created, and one on another server
    r2 = await raw(s, "PUT", f"{base}/_matrix/media/v3/upload/test.local/nevercreated", token=alice.token, data=b"x")
    assert_error(r2, 404, "M_NOT_FOUND")
    r2 = await raw(s, "PUT", f"{base}/_matrix/media/v3/upload/other.example/abc", token=alice.token, data=b"x")
    assert_error(r2, 404, "M_NOT_FOUND")


async def test_pending_upload_limits_and_expiry(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    hs = await start_server(COFFEECHAT_MEDIA_MAX_PENDING_UPLOADS="2", COFFEECHAT_MEDIA_UNUSED_EXPIRY_MS="300")
    api = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    await api.register("alice")
    first = media_path((await api.post("/_matrix/media/v1/create", {}))["content_uri"])
    assert (await api.post("/_matrix/media/v1/create", {})).status == 200
    r = await api.post("/_matrix/media/v1/create", {})
    assert r.status == 429 and r["errcode"] == "M_LIMIT_EXCEEDED"
    await asyncio.sleep(0.4)  # both expire
    r2 = await raw(http, "PUT", f"{api.base_url}/_matrix/media/v3/upload/{first}", token=api.token, data=b"late")
    assert_error(r2, 404, "M_NOT_FOUND")
    r2 = await raw(http, "GET", f"{api.base_url}{AUTHED}/download/{first}", token=api.token)
    assert_error(r2, 404, "M_NOT_FOUND")
    assert (await api.post("/_matrix/media/v1/create", {})).status == 200


async def test_quota(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    hs = await start_server(COFFEECHAT_MEDIA_USER_QUOTA_BYTES="3000")
    alice = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    await alice.register("alice")
    bob = ApiClient(alice.base_url, http)
    await bob.register("bob")
    await _uploaded(alice, b"a" * 2000)
    assert_error(await upload(http, alice.base_url, alice.token, b"b" * 1500), 403, "M_FORBIDDEN")
    await _uploaded(alice, b"c" * 1000)  # exactly at the quota
    assert_error(await upload(http, alice.base_url, alice.token, b"d"), 403, "M_FORBIDDEN")
    # a created URI counts when it is filled
    created = media_path((await alice.post("/_matrix/media/v1/create", {}))["content_uri"])
    r = await raw(http, "PUT", f"{alice.base_url}/_matrix/media/v3/upload/{created}", token=alice.token, data=b"e")
    assert_error(r, 403, "M_FORBIDDEN")
    await _uploaded(bob, b"f" * 3000)  # quotas are per user


async def test_quarantine_and_delete(server, alice: ApiClient) -> None:  # type: ignore[no-untyped-def]
    media = server.services.media
    data = image_bytes(100, 100)
    path = await _uploaded(alice, data, "image/png")
    again = await _uploaded(alice, data, "image/png")  # the same body, stored once
    url = f"{alice.base_url}{AUTHED}/download/{path}"
    thumb = f"{alice.base_url}{AUTHED}/thumbnail/{path}?width=32&height=32&method=crop"
    assert (await raw(alice.session, "GET", thumb, token=alice.token)).status == 200
    listed = await media.list_user_media(alice.user_id)
    assert {f"{m.server_name}/{m.media_id}" for m in listed} == {path, again}
    assert await media.quarantine(f"mxc://{path}", "@admin:test.local")
    assert_error(await raw(alice.session, "GET", url, token=alice.token), 404, "M_NOT_FOUND")
    assert_error(await raw(alice.session, "GET", thumb, token=alice.token), 404, "M_NOT_FOUND")
    assert await media.quarantine(f"mxc://{path}", None)  # released
    assert (await raw(alice.session, "GET", url, token=alice.token)).status == 200
    body = media.files.path_of(listed[0].sha256)
    assert await media.delete(f"mxc://{path}")
    assert_error(await raw(alice.session, "GET", url, token=alice.token), 404, "M_NOT_FOUND")
    assert body.is_file()  # the other upload still uses it
    assert await media.delete(f"mxc://{again}")
    assert not body.is_file()
    assert not await media.delete(f"mxc://{again}")
    assert await media.purge_remote_before(int(time.time() * 1000)) == 0


async def test_two_instances_serve_each_others_uploads(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    a = await start_server(COFFEECHAT_INSTANCE_NAME="a")
    b = await start_server(COFFEECHAT_INSTANCE_NAME="b")  # same database, same data_dir
    on_a = ApiClient(f"http://127.0.0.1:{a.client_port}", http)
    await on_a.register("alice")
    on_b = ApiClient(f"http://127.0.0.1:{b.client_port}", http)
    await on_b.register("bob")
    png = image_bytes(640, 480)
    path_a = await _uploaded(on_a, png, "image/png", "a.png")
    path_b = await _uploaded(on_b, b"from b" * 1000, "text/plain", "b.txt")
    r = await raw(http, "GET", f"{on_b.base_url}{AUTHED}/download/{path_a}", token=on_b.token)
    assert r.status == 200 and r.body == png
    r = await raw(http, "GET", f"{on_a.base_url}{AUTHED}/download/{path_b}", token=on_a.token)
    assert r.status == 200 and r.body == b"from b" * 1000
    # a thumbnail generated by one instance is served by the other from the cache
    t_b = await raw(http, "GET", f"{on_b.base_url}{AUTHED}/thumbnail/{path_a}",
                    token=on_b.token, params={"width": "96", "height": "96", "method": "crop"})
    assert t_b.status == 200
    t_a = await raw(http, "GET", f"{on_a.base_url}{AUTHED}/thumbnail/{path_a}",
                    token=on_a.token, params={"width": "96", "height": "96", "method": "crop"})
    assert t_a.status == 200 and t_a.body == t_b.body
    rows = await a.services.db.fetchval("SELECT count(*) FROM media_thumbnails")
    assert rows == 1
    # an upload to a URI created on the other instance
    created = media_path((await on_a.post("/_matrix/media/v1/create", {}))["content_uri"])
    alice_on_b = ApiClient(on_b.base_url, http)
    alice_on_b.token = on_a.token
    r = await raw(http, "PUT", f"{on_b.base_url}/_matrix/media/v3/upload/{created}", token=on_a.token, data=b"late")
    assert r.status == 200
    r = await raw(http, "GET", f"{on_a.base_url}{AUTHED}/download/{created}", token=on_a.token)
    assert r.status == 200 and r.body == b"late"


def _write_random(path: Path, size: int) -> None:
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(size // len(block)))


@pytest.mark.slow
async def test_large_upload_streams_without_holding_the_body(alice: ApiClient, tmp_path: Path) -> None:
    """40 MB in and out of the server (running in this process) while a
    thread samples the resident size: it must not grow by the file's size."""
    size = 40 * 1024 * 1024
    src = tmp_path / "big.bin"
    await asyncio.to_thread(_write_random, src, size)
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.01)

    gc.collect()
    base = proc.memory_info().rss
    peak[0] = base
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        f = await asyncio.to_thread(open, src, "rb")
        try:
            r = await upload(alice.session, alice.base_url, alice.token, f, "application/octet-stream", "big.bin")
        finally:
            f.close()
        assert r.status == 200, r.body
        path = media_path(r.json()["content_uri"])
        got = 0
        async with alice.session.get(f"{alice.base_url}{AUTHED}/download/{path}",
                                     headers={"Authorization": f"Bearer {alice.token}"}) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(1 << 20):
                got += len(chunk)
        assert got == size
    finally:
        stop.set()
        sampler.join()
    growth = peak[0] - base
    assert growth < size // 2, f"resident size grew by {growth / 2**20:.1f} MiB for a {size / 2**20:.0f} MiB file"
