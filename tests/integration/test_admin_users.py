"""Admin API for users, registration tokens and the server version, in
Synapse's paths and shapes (issue 11): each for an admin, and refused with
403 M_FORBIDDEN for everyone else."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .admin_helpers import login, make_admin
from .conftest import StartServer

V1, V2 = "/_synapse/admin/v1", "/_synapse/admin/v2"

ADMIN_ONLY = [
    ("GET", V2 + "/users", None),
    ("GET", V2 + "/users/@alice:test.local", None),
    ("PUT", V2 + "/users/@new:test.local", {"password": "x"}),
    ("GET", V2 + "/users/@alice:test.local/devices", None),
    ("DELETE", V2 + "/users/@alice:test.local/devices/D", None),
    ("POST", V1 + "/deactivate/@alice:test.local", {}),
    ("POST", V1 + "/reset_password/@alice:test.local", {"new_password": "x"}),
    ("GET", V1 + "/whois/@alice:test.local", None),
    ("GET", V1 + "/users/@alice:test.local/admin", None),
    ("GET", V1 + "/registration_tokens", None),
    ("POST", V1 + "/registration_tokens/new", {}),
    ("GET", V1 + "/registration_tokens/abc", None),
    ("PUT", V1 + "/registration_tokens/abc", {}),
    ("DELETE", V1 + "/registration_tokens/abc", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_refused_for_non_admins(alice: ApiClient, method: str, path: str, body: Any) -> None:
    r = await alice.request(method, path, body, validate=False)
    assert r.status == 403 and r["errcode"] == "M_FORBIDDEN", r
    r = await alice.request(method, path, body, token=None, validate=False)
    assert r.status == 401 and r["errcode"] == "M_MISSING_TOKEN"


async def test_server_version(api: ApiClient) -> None:
    r = await api.get(V1 + "/server_version", validate=False)
    assert r.status == 200 and r["server_version"].startswith("coffeechat-home ")


async def test_list_and_query_users(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient,
                                    bob: ApiClient) -> None:
    admin = await make_admin(server, http)
    await alice.put("profile/@alice:test.local/displayname", {"displayname": "Alice A"})
    r = await admin.get(V2 + "/users?limit=2")
    assert r.status == 200 and r["total"] == 3 and r["next_token"] == "2"
    assert [u["name"] for u in r["users"]] == ["@alice:test.local", "@bob:test.local"]
    r = await admin.get(V2 + "/users?from=2")
    assert [u["name"] for u in r["users"]] == ["@root:test.local"] and "next_token" not in r.body
    assert r["users"][0]["admin"] is True
    r = await admin.get(V2 + "/users?name=alice%20a")
    assert [u["name"] for u in r["users"]] == ["@alice:test.local"]
    r = await admin.get(V2 + "/users/@alice:test.local")
    assert r["displayname"] == "Alice A" and r["admin"] is False and r["deactivated"] is False
    assert abs(r["creation_ts"] - time.time()) < 3600
    r = await admin.get(V2 + "/users/@nobody:test.local")
    assert r.status == 404 and r["errcode"] == "M_NOT_FOUND"
    r = await admin.get(V2 + "/users/not-a-user-id")
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM"
    r = await admin.get(V2 + "/users?limit=x")
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM"


async def test_create_modify_and_deactivate_a_user(server: HomeServer, http: aiohttp.ClientSession,
                                                   new_client: Any) -> None:
    admin = await make_admin(server, http)
    r = await admin.put(V2 + "/users/@dave:test.local", {"password": "first pw", "displayname": "Dave"})
    assert r.status == 201 and r["name"] == "@dave:test.local" and r["displayname"] == "Dave"
    dave: ApiClient = new_client()
    assert await login(dave, "dave", "first pw") == 200
    # a password reset logs out every session unless asked not to
    r = await admin.put(V2 + "/users/@dave:test.local", {"password": "second pw", "admin": True})
    assert r.status == 200 and r["admin"] is True
    assert (await dave.get("account/whoami")).status == 401
    assert await login(dave, "dave", "first pw") == 403
    assert await login(dave, "dave", "second pw") == 200
    r = await admin.post(V1 + "/reset_password/@dave:test.local", {"new_password": "third pw",
                                                                   "logout_devices": False})
    assert r.status == 200 and (await dave.get("account/whoami")).status == 200
    # whois and devices
    r = await admin.get(V1 + "/whois/@dave:test.local")
    assert r["user_id"] == "@dave:test.local" and len(r["devices"][""]["sessions"]) == 1
    r = await admin.get(V2 + "/users/@dave:test.local/devices")
    assert r["total"] == 1 and r["devices"][0]["device_id"] == dave.device_id
    # deactivate with erase: sessions gone, profile gone, no login
    r = await admin.put(V2 + "/users/@dave:test.local", {"deactivated": True, "erase": True})
    assert r.status == 200 and r["deactivated"] is True and r["displayname"] is None
    assert (await dave.get("account/whoami")).status == 401
    assert await login(dave, "dave", "third pw") == 403
    # bad input is a Matrix error, never a 500
    r = await admin.put(V2 + "/users/@dave:test.local", {"admin": "yes"})
    assert r.status == 400 and r["errcode"] == "M_BAD_JSON"
    r = await admin.put(V2 + "/users/@x:elsewhere.org", {"password": "p"})
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM"
    r = await admin.post(V1 + "/deactivate/@erin:test.local", {"erase": True})
    assert r.status == 404


async def _register_with_token(client: ApiClient, name: str, token: str) -> Any:
    r = await client.post("register", {"username": name, "password": "p"}, token=None)
    assert r.status == 401, r
    return await client.post("register", {"username": name, "password": "p", "auth": {
        "type": "m.login.registration_token", "token": token, "session": r["session"]}}, token=None)


async def test_registration_tokens_are_honoured(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    server = await start_server(COFFEECHAT_REGISTRATION_MODE="token")
    admin = await make_admin(server, http)
    anyone = ApiClient(f"http://127.0.0.1:{server.client_port}", http, validate=False)
    r = await admin.post(V1 + "/registration_tokens/new", {"token": "once", "uses_allowed": 1})
    assert r.status == 200 and r.body == {"token": "once", "uses_allowed": 1, "pending": 0, "completed": 0,
                                          "expiry_time": None}
    assert (await _register_with_token(anyone, "first", "once")).status == 200
    r = await _register_with_token(anyone, "second", "once")
    assert r.status == 401 and r["errcode"] == "M_FORBIDDEN"
    past = int(time.time() * 1000) - 1000
    r = await admin.post(V1 + "/registration_tokens/new", {"token": "old", "expiry_time": past})
    assert r.status == 200
    assert (await _register_with_token(anyone, "third", "old")).status == 401
    r = await admin.post(V1 + "/registration_tokens/new", {"length": 20})
    generated = r["token"]
    assert len(generated) == 20 and r["uses_allowed"] is None
    assert (await _register_with_token(anyone, "fourth", generated)).status == 200
    # list, filter, get, update, delete
    r = await admin.get(V1 + "/registration_tokens")
    assert {t["token"] for t in r["registration_tokens"]} == {"once", "old", generated}
    r = await admin.get(V1 + "/registration_tokens?valid=true")
    assert [t["token"] for t in r["registration_tokens"]] == [generated]
    r = await admin.get(V1 + "/registration_tokens/once")
    assert r["completed"] == 1
    r = await admin.put(V1 + "/registration_tokens/once", {"uses_allowed": 2})
    assert r["uses_allowed"] == 2 and r["expiry_time"] is None
    assert (await _register_with_token(anyone, "fifth", "once")).status == 200
    assert (await admin.delete(V1 + "/registration_tokens/old")).status == 200
    r = await admin.get(V1 + "/registration_tokens/old")
    assert r.status == 404 and r["errcode"] == "M_NOT_FOUND"
    r = await admin.post(V1 + "/registration_tokens/new", {"token": "once"})
    assert r.status == 400
    r = await admin.post(V1 + "/registration_tokens/new", {"uses_allowed": "many"})
    assert r.status == 400 and r["errcode"] == "M_BAD_JSON"
    r = await admin.post(V1 + "/registration_tokens/new", {"token": "bad token!"})
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM"
