"""Profiles: lazy defaults, displayname/avatar_url, extended fields, the
change hook, and join events built from the profile."""

from __future__ import annotations

from typing import Callable

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .room_helpers import create_room, q


async def test_new_user_profile_is_localpart(api: ApiClient) -> None:
    await api.register("alice")
    r = await api.get(f"profile/{q(api.user_id)}", token=None)  # no token needed
    assert r.status == 200 and r.body == {"displayname": "alice"}
    r = await api.get(f"profile/{q(api.user_id)}/displayname")
    assert r.body == {"displayname": "alice"}
    r = await api.get(f"profile/{q(api.user_id)}/avatar_url")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_set_displayname_and_avatar(api: ApiClient) -> None:
    await api.register("bob")
    base = f"profile/{q(api.user_id)}"
    assert (await api.put(f"{base}/displayname", {"displayname": "Bob B."})).status == 200
    assert (await api.put(f"{base}/avatar_url", {"avatar_url": "mxc://test.local/abc"})).status == 200
    r = await api.get(base)
    assert r.body == {"displayname": "Bob B.", "avatar_url": "mxc://test.local/abc"}
    assert (await api.get(f"{base}/avatar_url")).body == {"avatar_url": "mxc://test.local/abc"}
    # an empty value removes the field
    assert (await api.put(f"{base}/avatar_url", {"avatar_url": ""})).status == 200
    assert (await api.get(base)).body == {"displayname": "Bob B."}
    assert (await api.delete(f"{base}/displayname")).status == 200
    assert (await api.get(base)).body == {}
    assert (await api.get(f"{base}/displayname")).status == 404
    assert (await api.delete(f"{base}/displayname")).status == 200  # absent: still fine


async def test_extended_fields(api: ApiClient) -> None:
    await api.register("carol")
    base = f"profile/{q(api.user_id)}"
    assert (await api.put(f"{base}/m.tz", {"m.tz": "Europe/London"})).status == 200
    assert (await api.put(f"{base}/org.example.job", {"org.example.job": {"title": "baker"}})).status == 200
    r = await api.get(base)
    assert r.body == {"displayname": "carol", "m.tz": "Europe/London", "org.example.job": {"title": "baker"}}
    assert (await api.get(f"{base}/org.example.job")).body == {"org.example.job": {"title": "baker"}}
    assert (await api.delete(f"{base}/org.example.job")).status == 200
    assert (await api.get(f"{base}/org.example.job")).status == 404


async def test_profile_errors(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("dave")
    other = new_client()
    await other.register("erin")
    base = f"profile/{q(api.user_id)}"
    r = await other.put(f"{base}/displayname", {"displayname": "pwned"})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await other.delete(f"{base}/displayname")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.put(f"{base}/displayname", {"displayname": "x" * 257})
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.put(f"{base}/displayname", {"displayname": 5})
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.put(f"{base}/avatar_url", {"avatar_url": "https://example.org/a.png"})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await api.put(f"{base}/displayname", {"avatar_url": "mxc://a/b"})
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.put(f"{base}/Not-A-Key", {"Not-A-Key": 1})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    long_key = "org.example." + "k" * 260
    r = await api.put(f"{base}/{long_key}", {long_key: 1})
    assert (r.status, r["errcode"]) == (400, "M_KEY_TOO_LARGE")
    r = await api.put(f"{base}/org.example.big", {"org.example.big": "x" * 70_000})
    assert (r.status, r["errcode"]) == (400, "M_PROFILE_TOO_LARGE")
    r = await api.put(f"{base}/displayname", data=b"[", headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")
    for user in ("@nobody:test.local", "@dave:elsewhere.example"):
        r = await api.get(f"profile/{q(user)}")
        assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND"), user
        r = await api.get(f"profile/{q(user)}/displayname")
        assert r.status == 404, user


async def test_change_hook_and_member_events(api: ApiClient, server: HomeServer) -> None:
    await api.register("fay")
    calls: list[tuple[str, str | None, str | None]] = []

    async def hook(user_id: str, displayname: str | None, avatar_url: str | None) -> None:
        calls.append((user_id, displayname, avatar_url))

    server.services.conversation.profiles.on_profile_change.append(hook)
    base = f"profile/{q(api.user_id)}"
    await api.put(f"{base}/displayname", {"displayname": "Fay"})
    await api.put(f"{base}/displayname", {"displayname": "Fay"})  # unchanged: no call
    await api.put(f"{base}/m.tz", {"m.tz": "UTC"})  # not a member field: no call
    await api.put(f"{base}/avatar_url", {"avatar_url": "mxc://test.local/fay"})
    assert calls == [
        (api.user_id, "Fay", None),
        (api.user_id, "Fay", "mxc://test.local/fay"),
    ]
    # join events carry the profile
    room_id = await create_room(api)
    r = await api.get(f"rooms/{q(room_id)}/state/m.room.member/{q(api.user_id)}")
    assert r.status == 200
    assert r["displayname"] == "Fay" and r["avatar_url"] == "mxc://test.local/fay"


async def test_profile_change_updates_member_events_in_joined_rooms(
    api: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    await api.register("gil")
    other = new_client()
    await other.register("hop")
    rooms = [await create_room(api, {"preset": "public_chat"}) for _ in range(2)]
    for room_id in rooms:
        assert (await other.post(f"join/{q(room_id)}", {})).status == 200
    left = await create_room(api, {"preset": "public_chat"})
    assert (await other.post(f"join/{q(left)}", {})).status == 200
    assert (await api.post(f"rooms/{q(left)}/leave", {})).status == 200
    r = await api.put(f"profile/{q(api.user_id)}/displayname", {"displayname": "Gil the Great"})
    assert r.status == 200
    for room_id in rooms:
        # the other member sees the new name in the room's state and timeline
        member = await other.get(f"rooms/{q(room_id)}/state/m.room.member/{q(api.user_id)}")
        assert member["displayname"] == "Gil the Great" and member["membership"] == "join"
        msgs = await other.get(f"rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "1"})
        last = msgs["chunk"][0]
        assert last["type"] == "m.room.member" and last["unsigned"]["prev_content"]["displayname"] == "gil"
    # no join event was sent into the room the user had left
    member = await other.get(f"rooms/{q(left)}/state/m.room.member/{q(api.user_id)}")
    assert member["membership"] == "leave" and "displayname" not in member.body
