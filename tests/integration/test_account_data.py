"""Account data (global and per room) and room tags, over HTTP and /sync."""

from __future__ import annotations

from typing import Callable

from ..helpers import ApiClient
from .room_helpers import create_room, q

ROOM = "!someroom:test.local"


async def test_global_account_data_roundtrip(api: ApiClient) -> None:
    await api.register("alice")
    path = f"user/{q(api.user_id)}/account_data/org.example.config"
    r = await api.get(path)
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    assert (await api.put(path, {"a": 1, "nested": {"b": [1, 2]}})).status == 200
    r = await api.get(path)
    assert r.status == 200 and r.body == {"a": 1, "nested": {"b": [1, 2]}}
    assert (await api.put(path, {"a": 2})).status == 200
    assert (await api.get(path)).body == {"a": 2}


async def test_room_account_data_roundtrip(api: ApiClient) -> None:
    await api.register("bob")
    path = f"user/{q(api.user_id)}/rooms/{q(ROOM)}/account_data/org.example.room"
    assert (await api.get(path)).status == 404
    assert (await api.put(path, {"x": "y"})).status == 200
    assert (await api.get(path)).body == {"x": "y"}
    # global and room account data of one type are separate
    r = await api.get(f"user/{q(api.user_id)}/account_data/org.example.room")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_account_data_of_other_users_is_forbidden(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("carol")
    other = new_client()
    await other.register("dave")
    for path in (
        f"user/{q(api.user_id)}/account_data/org.example.t",
        f"user/{q(api.user_id)}/rooms/{q(ROOM)}/account_data/org.example.t",
        f"user/{q(api.user_id)}/rooms/{q(ROOM)}/tags",
    ):
        r = await other.get(path)
        assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN"), path
    r = await other.put(f"user/{q(api.user_id)}/account_data/org.example.t", {"a": 1})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await other.put(f"user/{q(api.user_id)}/rooms/{q(ROOM)}/account_data/org.example.t", {"a": 1})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await other.put(f"user/{q(api.user_id)}/rooms/{q(ROOM)}/tags/u.work", {})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await other.delete(f"user/{q(api.user_id)}/rooms/{q(ROOM)}/tags/u.work")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.get(f"user/{q(api.user_id)}/account_data/org.example.t", token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_server_controlled_types_are_refused(api: ApiClient) -> None:
    await api.register("erin")
    for path in (
        f"user/{q(api.user_id)}/account_data/m.fully_read",
        f"user/{q(api.user_id)}/account_data/m.push_rules",
        f"user/{q(api.user_id)}/rooms/{q(ROOM)}/account_data/m.fully_read",
        f"user/{q(api.user_id)}/rooms/{q(ROOM)}/account_data/m.push_rules",
    ):
        r = await api.put(path, {"event_id": "$x"})
        assert (r.status, r["errcode"]) == (405, "M_BAD_JSON"), path


async def test_malformed_bodies_and_room_ids(api: ApiClient) -> None:
    await api.register("frank")
    path = f"user/{q(api.user_id)}/account_data/org.example.t"
    r = await api.put(path, [1, 2], validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.put(path, data=b"{nope", headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")
    r = await api.put(path, data=b'{"big": 100000000000000000000000}', headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    for bad in ("@notaroom:test.local", "!nocolon"):
        r = await api.get(f"user/{q(api.user_id)}/rooms/{q(bad)}/account_data/org.example.t")
        assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM"), bad
        r = await api.put(f"user/{q(api.user_id)}/rooms/{q(bad)}/account_data/org.example.t", {})
        assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM"), bad
        r = await api.get(f"user/{q(api.user_id)}/rooms/{q(bad)}/tags")
        assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM"), bad


async def test_push_rules_readable_as_account_data(api: ApiClient) -> None:
    await api.register("gina")
    r = await api.get(f"user/{q(api.user_id)}/account_data/m.push_rules")
    assert r.status == 200
    assert r["global"]["override"][0]["rule_id"] == ".m.rule.master"


async def test_tags(api: ApiClient) -> None:
    await api.register("hank")
    base = f"user/{q(api.user_id)}/rooms/{q(ROOM)}/tags"
    r = await api.get(base)
    assert r.status == 200 and r.body == {"tags": {}}
    assert (await api.put(f"{base}/m.favourite", {"order": 0.25})).status == 200
    assert (await api.put(f"{base}/u.work", {})).status == 200
    r = await api.get(base)
    assert r.body == {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}
    # tags are the room account data m.tag
    r = await api.get(f"user/{q(api.user_id)}/rooms/{q(ROOM)}/account_data/m.tag")
    assert r.body == {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}
    assert (await api.put(f"{base}/m.favourite", {"order": 0.5})).status == 200
    assert (await api.delete(f"{base}/u.work")).status == 200
    assert (await api.delete(f"{base}/u.never")).status == 200  # absent: still fine
    assert (await api.get(base)).body == {"tags": {"m.favourite": {"order": 0.5}}}
    r = await api.put(f"{base}/u.bad", {"order": "high"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")


async def test_account_data_and_tags_in_sync(api: ApiClient) -> None:
    await api.register("ivy")
    room_id = await create_room(api)
    await api.put(f"user/{q(api.user_id)}/account_data/org.example.a", {"v": 1})
    await api.put(f"user/{q(api.user_id)}/rooms/{q(room_id)}/tags/u.work", {"order": 0.1})
    r = await api.get("sync")
    assert r.status == 200
    events = {e["type"]: e["content"] for e in r["account_data"]["events"]}
    assert events["org.example.a"] == {"v": 1}
    assert events["m.push_rules"]["global"]["override"][0]["rule_id"] == ".m.rule.master"
    room_ad = {e["type"]: e["content"] for e in r["rooms"]["join"][room_id]["account_data"]["events"]}
    assert room_ad["m.tag"] == {"tags": {"u.work": {"order": 0.1}}}
    since = r["next_batch"]
    await api.put(f"user/{q(api.user_id)}/account_data/org.example.b", {"v": 2})
    r = await api.get("sync", params={"since": since, "timeout": "5000"})
    assert [e["type"] for e in r["account_data"]["events"]] == ["org.example.b"]
    assert room_id not in r.body.get("rooms", {}).get("join", {})
