"""Aliases, the public room directory, relations and room upgrades."""

from __future__ import annotations

from typing import Callable

import pytest

from ..helpers import ApiClient


async def _room(api: ApiClient, **body) -> str:  # type: ignore[no-untyped-def]
    r = await api.post("createRoom", body)
    assert r.status == 200, r
    return r["room_id"]


async def test_alias_lifecycle(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("alice")
    rid = await _room(api)
    alias = "%23chat:test.local"  # '#' must be escaped in the path
    r = await api.put(f"directory/room/{alias}", {"room_id": rid})
    assert r.status == 200
    r = await api.get(f"directory/room/{alias}", token=None)
    assert r.status == 200 and r.body == {"room_id": rid, "servers": ["test.local"]}
    r = await api.put(f"directory/room/{alias}", {"room_id": rid})
    assert (r.status, r["errcode"]) == (409, "M_UNKNOWN")
    assert (await api.get(f"rooms/{rid}/aliases"))["aliases"] == ["#chat:test.local"]
    # another user can neither list (not joined) nor delete
    bob = new_client()
    await bob.register("bob")
    r = await bob.get(f"rooms/{rid}/aliases")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await bob.delete(f"directory/room/{alias}")
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    # joining by alias works
    r = await api.put(f"rooms/{rid}/state/m.room.join_rules", {"join_rule": "public"})
    assert r.status == 200
    r = await bob.post(f"join/{alias}", {})
    assert r.status == 200 and r["room_id"] == rid
    r = await api.delete(f"directory/room/{alias}")
    assert r.status == 200
    r = await api.get(f"directory/room/{alias}", token=None)
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await api.delete(f"directory/room/{alias}")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_alias_bad_input(api: ApiClient) -> None:
    await api.register("carl")
    rid = await _room(api)
    r = await api.put("directory/room/%23x:other.server", {"room_id": rid}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await api.put("directory/room/notanalias", {"room_id": rid})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await api.put("directory/room/%23y:test.local", {}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await api.put("directory/room/%23y:test.local", {"room_id": "!nope:test.local"}, validate=False)
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


async def test_room_alias_name_and_canonical_alias_checks(api: ApiClient) -> None:
    await api.register("dora")
    r = await api.post("createRoom", {"room_alias_name": "lobby"})
    assert r.status == 200 and r["room_alias"] == "#lobby:test.local"
    rid = r["room_id"]
    assert (await api.get("directory/room/%23lobby:test.local", token=None))["room_id"] == rid
    r = await api.post("createRoom", {"room_alias_name": "lobby"})
    assert (r.status, r["errcode"]) == (400, "M_ROOM_IN_USE")
    # canonical alias must point at the room
    r = await api.put(f"rooms/{rid}/state/m.room.canonical_alias", {"alias": "#other:test.local"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_ALIAS")


async def test_public_rooms_directory(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("erin")
    pub = await _room(api, visibility="public", preset="public_chat", name="Coffee lovers", topic="beans")
    priv = await _room(api, name="Secret")
    r = await api.get("publicRooms", token=None)
    assert r.status == 200
    ids = [c["room_id"] for c in r["chunk"]]
    assert pub in ids and priv not in ids
    chunk = next(c for c in r["chunk"] if c["room_id"] == pub)
    assert chunk["name"] == "Coffee lovers" and chunk["topic"] == "beans"
    assert chunk["num_joined_members"] == 1 and chunk["join_rule"] == "public"
    assert (await api.get(f"directory/list/room/{pub}", token=None))["visibility"] == "public"
    # publish the private one, then search
    r = await api.put(f"directory/list/room/{priv}", {"visibility": "public"})
    assert r.status == 200
    r = await api.post("publicRooms", {"filter": {"generic_search_term": "coffee"}})
    assert [c["room_id"] for c in r["chunk"]] == [pub]
    # pagination
    r = await api.post("publicRooms", {"limit": 1})
    assert len(r["chunk"]) == 1 and "next_batch" in r.body and r["total_room_count_estimate"] == 2
    r2 = await api.post("publicRooms", {"limit": 1, "since": r["next_batch"]})
    assert len(r2["chunk"]) == 1 and r2["chunk"][0]["room_id"] != r["chunk"][0]["room_id"]
    # a non-member may not change visibility
    bob = new_client()
    await bob.register("bobby")
    r = await bob.put(f"directory/list/room/{priv}", {"visibility": "private"})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.get("directory/list/room/!unknown:test.local", token=None)
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await api.post("publicRooms", {"limit": "ten"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")


async def test_relations(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("fay")
    rid = await _room(api, preset="public_chat")
    root = (await api.put(f"rooms/{rid}/send/m.room.message/r0", {"msgtype": "m.text", "body": "root"}))["event_id"]
    edit = {"msgtype": "m.text", "body": "* edited", "m.new_content": {"msgtype": "m.text", "body": "edited"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": root}}
    e1 = (await api.put(f"rooms/{rid}/send/m.room.message/r1", edit))["event_id"]
    react = {"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}
    e2 = (await api.put(f"rooms/{rid}/send/m.reaction/r2", react))["event_id"]
    thread = {"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    e3 = (await api.put(f"rooms/{rid}/send/m.room.message/r3", thread))["event_id"]
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/relations/{root}")
    assert r.status == 200
    assert [e["event_id"] for e in r["chunk"]] == [e3, e2, e1]
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/relations/{root}/m.annotation")
    assert [e["event_id"] for e in r["chunk"]] == [e2]
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/relations/{root}/m.annotation/m.room.message")
    assert r["chunk"] == []
    # paging forwards, one at a time
    seen = []
    token = None
    for _ in range(5):
        params = {"dir": "f", "limit": "1"}
        if token:
            params["from"] = token
        r = await api.get(f"/_matrix/client/v1/rooms/{rid}/relations/{root}", params=params)
        seen += [e["event_id"] for e in r["chunk"]]
        token = r.body.get("next_batch")
        if not token:
            break
    assert seen == [e1, e2, e3]
    # someone outside the (shared-history, invite-only) room sees nothing
    await api.put(f"rooms/{rid}/state/m.room.join_rules", {"join_rule": "invite"})
    bob = new_client()
    await bob.register("gus")
    r = await bob.get(f"/_matrix/client/v1/rooms/{rid}/relations/{root}")
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")


@pytest.mark.parametrize("old,new", [("10", "11"), ("11", "12"), ("12", "12")])
async def test_room_upgrade(api: ApiClient, new_client: Callable[[], ApiClient], old: str, new: str) -> None:
    await api.register("hal")
    r = await api.post("createRoom", {"room_version": old, "name": "Old", "room_alias_name": f"up{old}{new}",
                                      "preset": "public_chat"})
    rid = r["room_id"]
    bob = new_client()
    await bob.register("ike")
    assert (await bob.post(f"rooms/{rid}/join", {})).status == 200
    r = await bob.post(f"rooms/{rid}/upgrade", {"new_version": new})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.post(f"rooms/{rid}/upgrade", {"new_version": "999"})
    assert (r.status, r["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
    r = await api.post(f"rooms/{rid}/upgrade", {"new_version": new})
    assert r.status == 200
    new_rid = r["replacement_room"]
    tomb = await api.get(f"rooms/{rid}/state/m.room.tombstone/")
    assert tomb["replacement_room"] == new_rid
    create = await api.get(f"rooms/{new_rid}/state/m.room.create/")
    assert create["room_version"] == new and create["predecessor"]["room_id"] == rid
    assert (await api.get(f"rooms/{new_rid}/state/m.room.name/"))["name"] == "Old"
    assert (await api.get(f"directory/room/%23up{old}{new}:test.local", token=None))["room_id"] == new_rid
    # the old room is read-only for ordinary members now
    r = await bob.put(f"rooms/{rid}/send/m.room.message/x", {"msgtype": "m.text", "body": "still here?"})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    # and the member can join the replacement (public join rule copied)
    assert (await bob.post(f"rooms/{new_rid}/join", {})).status == 200


async def test_threads_list(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    await api.register("jan")
    rid = await _room(api, preset="public_chat")
    bob = new_client()
    await bob.register("kim")
    assert (await bob.post(f"join/{rid}", {})).status == 200

    async def say(c: ApiClient, txn: str, body: str, thread: str | None = None) -> str:
        content: dict = {"msgtype": "m.text", "body": body}
        if thread:
            content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread}
        return (await c.put(f"rooms/{rid}/send/m.room.message/{txn}", content))["event_id"]

    t1 = await say(api, "a", "thread one")
    t2 = await say(bob, "b", "thread two")
    await say(api, "c", "reply 1", t1)
    last_t2 = await say(bob, "d", "reply 2", t2)
    await say(bob, "e", "reply 3", t2)
    last_t2 = await say(bob, "f", "reply 4", t2)
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/threads")
    assert r.status == 200
    assert [e["event_id"] for e in r["chunk"]] == [t2, t1]
    summary = r["chunk"][0]["unsigned"]["m.relations"]["m.thread"]
    assert summary["count"] == 3 and summary["latest_event"]["event_id"] == last_t2
    assert summary["current_user_participated"] is False
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/threads", params={"include": "participated"})
    assert [e["event_id"] for e in r["chunk"]] == [t1]
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/threads", params={"limit": "1"})
    assert [e["event_id"] for e in r["chunk"]] == [t2]
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/threads", params={"limit": "1", "from": r["next_batch"]})
    assert [e["event_id"] for e in r["chunk"]] == [t1] and "next_batch" not in r.body
    r = await api.get(f"/_matrix/client/v1/rooms/{rid}/threads", params={"include": "mine"})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
