"""Presence status over HTTP and /sync, and the presence.enabled switch."""

from __future__ import annotations

from typing import Any, Callable

import aiohttp

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer
from .room_helpers import create_room, invite_and_join, q


def presence_events(sync: Any) -> dict[str, dict[str, Any]]:
    return {e["sender"]: e["content"] for e in sync.body.get("presence", {}).get("events", [])}


async def test_own_presence_defaults_offline_then_set(api: ApiClient) -> None:
    await api.register("alice")
    path = f"presence/{q(api.user_id)}/status"
    r = await api.get(path)
    assert r.status == 200 and r.body == {"presence": "offline"}
    assert (await api.put(path, {"presence": "unavailable", "status_msg": "lunch"})).status == 200
    r = await api.get(path)
    assert r["presence"] == "unavailable" and r["status_msg"] == "lunch"
    assert r["currently_active"] is False and 0 <= r["last_active_ago"] < 60_000
    assert (await api.put(path, {"presence": "online"})).status == 200
    r = await api.get(path)
    assert r["presence"] == "online" and "status_msg" not in r.body and r["currently_active"] is True


async def test_presence_visibility(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("bob")
    carol, stranger = new_client(), new_client()
    await carol.register("carol")
    await stranger.register("sam")
    await carol.put(f"presence/{q(carol.user_id)}/status", {"presence": "online", "status_msg": "hi"})
    r = await api.get(f"presence/{q(carol.user_id)}/status")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    room_id = await create_room(api)
    await invite_and_join(api, carol, room_id)
    r = await api.get(f"presence/{q(carol.user_id)}/status")
    assert r.status == 200 and r["presence"] == "online" and r["status_msg"] == "hi"
    r = await stranger.get(f"presence/{q(carol.user_id)}/status")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.get(f"presence/{q('@nobody:test.local')}/status")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")


async def test_presence_put_errors(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("dave")
    other = new_client()
    await other.register("erin")
    r = await other.put(f"presence/{q(api.user_id)}/status", {"presence": "online"})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    path = f"presence/{q(api.user_id)}/status"
    r = await api.put(path, {"presence": "busy"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.put(path, {"status_msg": "x"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.put(path, data=b"nope", headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")


async def test_presence_in_sync(api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer) -> None:
    await api.register("fay")
    gus = new_client()
    await gus.register("gus")
    room_id = await create_room(api)
    await invite_and_join(api, gus, room_id)
    await gus.put(f"presence/{q(gus.user_id)}/status", {"presence": "unavailable", "status_msg": "away"})
    sync = await api.get("sync", params={"set_presence": "offline"})
    seen = presence_events(sync)
    assert seen[gus.user_id]["presence"] == "unavailable" and seen[gus.user_id]["status_msg"] == "away"
    assert api.user_id not in seen  # set_presence=offline does not mark us online
    since = sync["next_batch"]
    # syncing (set_presence defaults to online) marks gus online, keeping his message
    await gus.get("sync")
    sync = await api.get("sync", params={"since": since, "set_presence": "offline"})
    assert [(e["sender"], e["content"]["presence"], e["content"]["status_msg"])
            for e in sync["presence"]["events"]] == [(gus.user_id, "online", "away")]
    # a second sync with the same state writes no stream position
    before = await server.services.stream.current_position()
    await gus.get("sync")
    assert await server.services.stream.current_position() == before


async def test_presence_disabled(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    hs = await start_server(COFFEECHAT_PRESENCE_ENABLED="false")
    api = ApiClient(f"http://127.0.0.1:{hs.client_port}", http)
    await api.register("hal")
    path = f"presence/{q(api.user_id)}/status"
    assert (await api.put(path, {"presence": "online", "status_msg": "here"})).status == 200
    assert (await api.get(path)).body == {"presence": "offline"}
    upto = await hs.services.stream.current_position()
    assert await hs.services.conversation.presence.presence_for_sync(api.user_id, None, upto) == []
