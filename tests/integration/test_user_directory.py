"""POST /user_directory/search: who is visible, matching, limits."""

from __future__ import annotations

from typing import Callable

import aiohttp

from ..helpers import ApiClient
from .conftest import StartServer
from .room_helpers import create_room, invite_and_join, q


def found(r: object) -> list[str]:
    return [x["user_id"] for x in r["results"]]  # type: ignore[index]


async def test_users_sharing_a_room_and_in_public_rooms(
    api: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    await api.register("alice")
    bob, carol, dave, erin = (new_client() for _ in range(4))
    for c, name in ((bob, "bob"), (carol, "carol"), (dave, "dave"), (erin, "erin")):
        await c.register(name)
    room_id = await create_room(api)
    await invite_and_join(api, bob, room_id)
    public = await create_room(dave, {"preset": "public_chat"})
    assert (await erin.post(f"rooms/{q(public)}/join", {})).status == 200
    search = "user_directory/search"
    r = await api.post(search, {"search_term": "bob"})
    assert r.status == 200 and found(r) == [bob.user_id] and r["limited"] is False
    assert r["results"][0]["display_name"] == "bob"
    assert found(await api.post(search, {"search_term": "carol"})) == []  # shares nothing
    assert found(await api.post(search, {"search_term": "erin"})) == [erin.user_id]  # public room
    # display names, case-insensitively, and every word must match
    await bob.put(f"profile/{q(bob.user_id)}/displayname", {"displayname": "Robert Tables"})
    await bob.put(f"profile/{q(bob.user_id)}/avatar_url", {"avatar_url": "mxc://test.local/bob"})
    r = await api.post(search, {"search_term": "TABLES"})
    assert r["results"] == [{"user_id": bob.user_id, "display_name": "Robert Tables", "avatar_url": "mxc://test.local/bob"}]
    assert found(await api.post(search, {"search_term": "robert tab"})) == [bob.user_id]
    assert found(await api.post(search, {"search_term": "robert carol"})) == []
    r = await api.post(search, {"search_term": "test.local", "limit": 50})
    assert set(found(r)) == {api.user_id, bob.user_id, dave.user_id, erin.user_id} and r["limited"] is False
    r = await api.post(search, {"search_term": "test.local", "limit": 2})
    assert len(r["results"]) == 2 and r["limited"] is True


async def test_search_all_users(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    hs = await start_server(COFFEECHAT_USER_DIRECTORY_SEARCH_ALL_USERS="true")
    base = f"http://127.0.0.1:{hs.client_port}"
    alice, carol, gone = ApiClient(base, http), ApiClient(base, http), ApiClient(base, http)
    await alice.register("alice")
    await carol.register("carol")
    await gone.register("carolyn")
    r = await alice.post("user_directory/search", {"search_term": "carol"})
    assert set(found(r)) == {carol.user_id, gone.user_id}
    r = await gone.post(
        "account/deactivate",
        {"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carolyn"},
                  "password": "correct horse battery"}},
    )
    assert r.status == 200
    r = await alice.post("user_directory/search", {"search_term": "carol"})
    assert found(r) == [carol.user_id]
    # prefix matches rank first
    await alice.put(f"profile/{q(alice.user_id)}/displayname", {"displayname": "Lou Carol"})
    r = await carol.post("user_directory/search", {"search_term": "carol"})
    assert found(r) == [carol.user_id, alice.user_id]


async def test_malformed_searches(api: ApiClient) -> None:
    await api.register("fay")
    r = await api.post("user_directory/search", {"limit": 3}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.post("user_directory/search", {"search_term": "x", "limit": "3"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.post("user_directory/search", {"search_term": 5}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.post("user_directory/search", {"search_term": "x"}, token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")
