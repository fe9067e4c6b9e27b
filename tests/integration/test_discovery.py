"""/versions, .well-known, CORS and the JSON errors every route shares."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer


async def test_versions_lists_spec_versions(api: ApiClient) -> None:
    r = await api.get("/_matrix/client/versions")
    assert r.status == 200
    assert "v1.11" in r["versions"]
    assert r.body["unstable_features"] == {}


async def test_well_known_client_names_our_base_url(api: ApiClient, base_url: str) -> None:
    r = await api.get("/.well-known/matrix/client", validate=False)
    assert r.status == 200
    assert r.body == {"m.homeserver": {"base_url": base_url.rstrip("/") + "/"}}, (r.body, base_url)


async def test_login_well_known_names_the_bound_port(api: ApiClient, base_url: str) -> None:
    """The server listens on a port the system picked (port 0 in the
    config): the login answer's well_known names the port it is bound to,
    the same document /.well-known/matrix/client serves."""
    await api.register("wk", "a password of wk")
    r = await api.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "wk"},
                                 "password": "a password of wk"})
    assert r.status == 200, r
    assert r["well_known"] == {"m.homeserver": {"base_url": base_url.rstrip("/") + "/"}}, (r.body, base_url)
    assert ":0/" not in r["well_known"]["m.homeserver"]["base_url"]
    served = await api.get("/.well-known/matrix/client", validate=False)
    assert served.body == r["well_known"]


async def test_login_well_known_names_the_public_base_url(
    start_server: StartServer, http: aiohttp.ClientSession,
) -> None:
    hs = await start_server(COFFEECHAT_PUBLIC_BASEURL="https://matrix.example.org")
    api = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    await api.register("wk", "a password of wk")
    r = await api.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "wk"},
                                 "password": "a password of wk"})
    assert r.status == 200, r
    assert r["well_known"] == {"m.homeserver": {"base_url": "https://matrix.example.org/"}}


async def test_well_known_server_advertises_no_federation(api: ApiClient) -> None:
    """Federation is not served: advertising a delegation (e.g. port 8448)
    would send other servers where nothing answers."""
    r = await api.get("/.well-known/matrix/server", validate=False)
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND"), r
    assert "m.server" not in r.body


async def test_unknown_route_is_m_unrecognized(api: ApiClient) -> None:
    r = await api.get("/_matrix/client/v3/no/such/thing", validate=False)
    assert (r.status, r["errcode"]) == (404, "M_UNRECOGNIZED")


async def test_wrong_method_is_405_unrecognized(api: ApiClient) -> None:
    r = await api.request("DELETE", "/_matrix/client/v3/login", validate=False)
    assert (r.status, r["errcode"]) == (405, "M_UNRECOGNIZED")


async def test_cors_preflight_on_any_route(api: ApiClient, base_url: str) -> None:
    async with api.session.options(
        base_url + "/_matrix/client/v3/rooms/!x:y/send/m.room.message/1",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert "PUT" in resp.headers["Access-Control-Allow-Methods"]


async def test_cors_headers_on_errors_too(api: ApiClient) -> None:
    r = await api.get("/_matrix/client/v3/account/whoami", token=None)
    assert r.status == 401
    assert r.headers["Access-Control-Allow-Origin"] == "*"


async def test_cache_buster_query_is_ignored(api: ApiClient) -> None:
    plain = await api.get("/_matrix/client/versions", validate=False)
    r = await api.get("/_matrix/client/versions?_cacheBuster=12345", validate=False)
    assert r.status == 200 and r.body == plain.body, r
    r = await api.get("/.well-known/matrix/client?_cacheBuster=12345", validate=False)
    assert r.status == 200 and "m.homeserver" in r.body, r
    r = await api.get("/_matrix/client/v3/account/whoami?_cacheBuster=1", validate=False)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN"), r


MALFORMED_HEADERS = [
    "Content-Length: abc",
    "Content-Length: -1",
    "Content-Length: 1, 2",
    "Content-Length: 99999999999999999999999999",
    "Content-Length: 5\r\nContent-Length: 6",
    "Bad Header Name: x",
]


async def _raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send one hand-written request; read the whole answer (the server
    closes the connection after a malformed one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    header_block, _, body = raw.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize("bad", MALFORMED_HEADERS)
async def test_malformed_http_gets_a_matrix_error(server: HomeServer, bad: str) -> None:
    """aiohttp's parser refuses these before any handler or middleware
    runs; the answer is still a Matrix error body (and readable by a
    browser client: CORS headers)."""
    assert server.client_port is not None
    status, headers, body = await _raw_request(
        server.client_port, f"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\n{bad}", b"{}"
    )
    assert status == 400, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    assert headers.get("access-control-allow-origin") == "*"
    err = json.loads(body)
    assert err["errcode"] == "M_UNKNOWN" and err["error"].startswith("Bad Request"), err
    # the server goes on answering
    status, _, body = await _raw_request(server.client_port, "GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n"
                                         "Connection: close")
    assert status == 200 and b"versions" in body
