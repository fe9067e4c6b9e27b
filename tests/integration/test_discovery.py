"""/versions, .well-known, CORS and the JSON errors every route shares."""

from __future__ import annotations

import aiohttp

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
