"""Filters: upload, download, validation, and use by /sync."""

from __future__ import annotations

from typing import Callable

from ..helpers import ApiClient
from .room_helpers import q

FILTER = {
    "room": {
        "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
        "timeline": {"limit": 10, "types": ["m.room.message"], "not_senders": ["@spam:example.com"]},
        "ephemeral": {"types": ["m.receipt", "m.typing"]},
        "include_leave": False,
    },
    "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
    "account_data": {"limit": 5},
    "event_format": "client",
    "event_fields": ["type", "content", "sender"],
}


async def test_upload_and_download(api: ApiClient) -> None:
    await api.register("alice")
    r = await api.post(f"user/{q(api.user_id)}/filter", FILTER)
    assert r.status == 200
    filter_id = r["filter_id"]
    assert isinstance(filter_id, str) and filter_id and not filter_id.startswith("{")
    r = await api.get(f"user/{q(api.user_id)}/filter/{q(filter_id)}")
    assert r.status == 200 and r.body == FILTER
    # the same filter again gives the same id; another gives another
    assert (await api.post(f"user/{q(api.user_id)}/filter", FILTER))["filter_id"] == filter_id
    r = await api.post(f"user/{q(api.user_id)}/filter", {})
    assert r.status == 200 and r["filter_id"] != filter_id
    assert (await api.get(f"user/{q(api.user_id)}/filter/{q(r['filter_id'])}")).body == {}


async def test_filters_are_per_user(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("bob")
    other = new_client()
    await other.register("carol")
    filter_id = (await api.post(f"user/{q(api.user_id)}/filter", FILTER))["filter_id"]
    r = await other.get(f"user/{q(api.user_id)}/filter/{q(filter_id)}")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await other.post(f"user/{q(api.user_id)}/filter", FILTER)
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await other.get(f"user/{q(other.user_id)}/filter/{q(filter_id)}")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await api.get(f"user/{q(api.user_id)}/filter/nosuchfilter")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_malformed_filters(api: ApiClient) -> None:
    await api.register("dave")
    path = f"user/{q(api.user_id)}/filter"
    for bad in (
        {"event_format": "xml"},
        {"room": {"timeline": {"limit": "ten"}}},
        {"room": {"timeline": {"limit": 0}}},
        {"room": {"rooms": ["not-a-room"]}},
        {"presence": {"senders": ["alice"]}},
        {"event_fields": "type"},
        {"room": {"state": {"lazy_load_members": "yes"}}},
        {"room": {"include_leave": 1}},
    ):
        r = await api.post(path, bad, validate=False)
        assert (r.status, r["errcode"]) == (400, "M_BAD_JSON"), bad
    r = await api.post(path, [1], validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await api.post(path, data=b"{", headers={"Content-Type": "application/json"})
    assert (r.status, r["errcode"]) == (400, "M_NOT_JSON")


async def test_sync_uses_a_stored_filter(api: ApiClient) -> None:
    await api.register("erin")
    await api.put(f"user/{q(api.user_id)}/account_data/org.example.a", {"v": 1})
    r = await api.post(f"user/{q(api.user_id)}/filter", {"account_data": {"types": ["org.example.*"]}})
    r = await api.get("sync", params={"filter": r["filter_id"]})
    assert r.status == 200
    assert [e["type"] for e in r["account_data"]["events"]] == ["org.example.a"]


async def test_wildcard_type_filters_in_sync_and_messages(api: ApiClient) -> None:
    """`m.room.*` and other trailing-`*` types select by prefix in the
    database (no PostgreSQL-only starts_with); `_` and `%` in the prefix
    match only themselves."""
    import json

    from .room_helpers import create_room

    await api.register("wanda")
    room = await create_room(api)
    for event_type, n in (("org.x_y.a", 1), ("org.xZy.b", 2), ("org.x%y.c", 3), ("org.xy.d", 4)):
        r = await api.put(f"rooms/{q(room)}/send/{q(event_type)}/w{n}", {"n": n})
        assert r.status == 200, r

    def timeline_filter(types: list[str] | None = None, not_types: list[str] | None = None) -> dict[str, object]:
        f: dict[str, object] = {"limit": 50}
        if types is not None:
            f["types"] = types
        if not_types is not None:
            f["not_types"] = not_types
        return f

    cases = [
        (timeline_filter(["org.x_y.*"]), ["org.x_y.a"]),
        (timeline_filter(["org.x%y.*", "org.xy.d"]), ["org.x%y.c", "org.xy.d"]),
        (timeline_filter(["org.*"], ["org.x_*", "org.x%*"]), ["org.xZy.b", "org.xy.d"]),
    ]
    for f, want in cases:
        # /messages with a filter
        r = await api.get(f"rooms/{q(room)}/messages", params={"dir": "f", "filter": json.dumps(f)})
        assert r.status == 200, r
        assert [e["type"] for e in r["chunk"]] == want, (f, r["chunk"])
        # /sync with an inline filter and with a stored one
        sync_filter = {"room": {"timeline": f, "state": {"types": []}}}
        stored = (await api.post(f"user/{q(api.user_id)}/filter", sync_filter))["filter_id"]
        for fid in (json.dumps(sync_filter), stored):
            r = await api.get("sync", params={"filter": fid})
            assert r.status == 200, r
            got = [e["type"] for e in r["rooms"]["join"][room]["timeline"]["events"]]
            assert got == want, (f, got)
    # m.room.*: the room's state events, none of the custom ones
    f = timeline_filter(["m.room.*"])
    r = await api.get(f"rooms/{q(room)}/messages", params={"dir": "f", "filter": json.dumps(f)})
    types = [e["type"] for e in r["chunk"]]
    assert types and all(t.startswith("m.room.") for t in types), types
    assert "m.room.create" in types and "m.room.member" in types
    r = await api.get("sync", params={"filter": json.dumps({"room": {"timeline": f}})})
    types = [e["type"] for e in r["rooms"]["join"][room]["timeline"]["events"]]
    assert types and all(t.startswith("m.room.") for t in types), types
