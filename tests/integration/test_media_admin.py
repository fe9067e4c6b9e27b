"""Media admin commands, run as an administrator runs them (a subprocess on
the same database and media folder as a running server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..helpers import ApiClient
from .media_helpers import AUTHED, assert_error, media_path, raw, upload
from .test_cli import run


async def test_media_admin_commands(server, alice: ApiClient, database_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"COFFEECHAT_DATABASE_URL": database_url, "COFFEECHAT_DATA_DIR": str(tmp_path),
           "COFFEECHAT_SERVER_NAME": "test.local"}
    r = await upload(alice.session, alice.base_url, alice.token, b"bad things", "text/plain", "x.txt")
    path = media_path(r.json()["content_uri"])
    url = f"{alice.base_url}{AUTHED}/download/{path}"
    code, out, err = await run("media-list", alice.user_id or "", env=env)
    assert code == 0, err
    assert out.split("\t")[:3] == [f"mxc://{path}", "10", "text/plain"] and "uploaded" in out

    code, out, err = await run("media-quarantine", f"mxc://{path}", env=env)
    assert code == 0 and "quarantined" in out, err
    assert_error(await raw(alice.session, "GET", url, token=alice.token), 404, "M_NOT_FOUND")
    code, out, _ = await run("media-list", alice.user_id or "", env=env)
    assert "quarantined" in out
    code, out, err = await run("media-quarantine", f"mxc://{path}", "--release", env=env)
    assert code == 0 and (await raw(alice.session, "GET", url, token=alice.token)).status == 200

    # cached remote media (as federation will store it), one old and one new
    media = server.services.media
    sha = await media.files.store_bytes(b"remote body")
    for media_id, created in (("old", 1_000), ("new", int(time.time() * 1000))):
        await server.services.db.execute(
            """INSERT INTO media (server_name, media_id, content_type, size_bytes, sha256, created_ts)
               VALUES ('remote.example', $1, 'text/plain', 11, $2, $3)""", media_id, sha, created)
    code, out, err = await run("media-purge-remote", "--before", "2001-01-01", env=env)
    assert code == 0 and "purged 1 remote media" in out, err
    assert media.files.exists(sha)  # still named by the new one
    code, out, err = await run("media-purge-remote", "--before", str(int(time.time() * 1000) + 1000), env=env)
    assert "purged 1 remote media" in out and not media.files.exists(sha)

    code, out, err = await run("media-delete", f"mxc://{path}", env=env)
    assert code == 0 and "deleted" in out, err
    assert_error(await raw(alice.session, "GET", url, token=alice.token), 404, "M_NOT_FOUND")
    code, out, _ = await run("media-delete", f"mxc://{path}", env=env)
    assert code == 1 and "no such media" in out
    code, _, err = await run("media-delete", "http://not-mxc", env=env)
    assert code == 1 and "M_INVALID_PARAM" in err
    code, _, err = await run("media-purge-remote", "--before", "yesterday-ish", env=env)
    assert code == 2 and "--before" in err


@pytest.mark.parametrize("sub", ["media-list", "media-quarantine", "media-delete", "media-purge-remote"])
async def test_help(sub: str) -> None:
    code, out, _ = await run(sub, "--help")
    assert code == 0 and "usage: coffeechat-home" in out


async def test_admin_http_routes(server, alice: ApiClient, bob: ApiClient) -> None:  # type: ignore[no-untyped-def]
    await server.services.db.execute("UPDATE users SET is_admin = true WHERE user_id = $1", alice.user_id)
    r = await upload(bob.session, bob.base_url, bob.token, b"bob's upload", "text/plain", "b.txt")
    path = media_path(r.json()["content_uri"])
    media_id = path.split("/")[1]
    url = f"{bob.base_url}{AUTHED}/download/{path}"
    admin = "/_synapse/admin/v1"
    # not for ordinary users
    for method, p in (("POST", f"{admin}/media/quarantine/{path}"), ("DELETE", f"{admin}/media/{path}"),
                      ("GET", f"{admin}/users/{bob.user_id}/media"), ("POST", f"{admin}/purge_media_cache?before_ts=1")):
        r2 = await bob.request(method, p, validate=False)
        assert r2.status == 403 and r2["errcode"] == "M_FORBIDDEN", (method, p)
    r2 = await alice.get(f"{admin}/users/{bob.user_id}/media", validate=False)
    assert r2.status == 200 and r2["total"] == 1
    assert r2["media"][0]["media_id"] == media_id and r2["media"][0]["media_length"] == 12
    assert (await alice.post(f"{admin}/media/quarantine/{path}", {}, validate=False)).status == 200
    assert_error(await raw(bob.session, "GET", url, token=bob.token), 404, "M_NOT_FOUND")
    assert (await alice.post(f"{admin}/media/unquarantine/{path}", {}, validate=False)).status == 200
    assert (await raw(bob.session, "GET", url, token=bob.token)).status == 200
    r2 = await alice.delete(f"{admin}/media/{path}", validate=False)
    assert r2.status == 200 and r2["deleted_media"] == [media_id]
    assert_error(await raw(bob.session, "GET", url, token=bob.token), 404, "M_NOT_FOUND")
    r2 = await alice.delete(f"{admin}/media/{path}", validate=False)
    assert r2.status == 404 and r2["errcode"] == "M_NOT_FOUND"
    r2 = await alice.post(f"{admin}/purge_media_cache?before_ts={int(time.time() * 1000)}", {}, validate=False)
    assert r2.status == 200 and r2["deleted"] == 0
    r2 = await alice.post(f"{admin}/purge_media_cache", {}, validate=False)
    assert r2.status == 400 and r2["errcode"] == "M_MISSING_PARAM"
