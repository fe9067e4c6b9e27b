"""``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` on one server: a
space with a sub-space, ordered children, rooms the user may and may not
see, pagination, ``suggested_only`` and ``max_depth``, and bad input.
Every answer is validated against the spec's schema (tests/helpers.py)."""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import quote

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient

VIA = {"via": ["test.local"]}


async def _room(api: ApiClient, **body: Any) -> str:
    r = await api.post("createRoom", body)
    assert r.status == 200, r
    return str(r["room_id"])


async def _child(api: ApiClient, space: str, child: str, content: dict[str, Any]) -> None:
    r = await api.put(f"rooms/{quote(space)}/state/m.space.child/{quote(child)}", content)
    assert r.status == 200, r


async def _hierarchy(user: ApiClient, room_id: str, **params: str) -> Any:
    query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
    return await user.get(f"/_matrix/client/v1/rooms/{quote(room_id)}/hierarchy" + (f"?{query}" if query else ""))


async def _names(user: ApiClient, room_id: str, **params: str) -> list[str]:
    r = await _hierarchy(user, room_id, **params)
    assert r.status == 200, r
    return [room.get("name", "?") for room in r["rooms"]]


async def test_space_hierarchy(api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer) -> None:
    alice = api
    await alice.register("alice")
    space_type = {"creation_content": {"type": "m.space"}}
    space = await _room(alice, preset="public_chat", name="Space", topic="all of it", **space_type)
    sub = await _room(alice, preset="public_chat", name="Sub", **space_type)
    deep = await _room(alice, preset="public_chat", name="Deep")
    general = await _room(alice, preset="public_chat", name="General")
    secret = await _room(alice, preset="private_chat", name="Secret")
    members_only = await _room(alice, preset="private_chat", name="Members", room_version="10", initial_state=[
        {"type": "m.room.join_rules", "state_key": "",
         "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    readable = await _room(alice, preset="private_chat", name="Readable", initial_state=[
        {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "world_readable"}}])
    removed = await _room(alice, preset="public_chat", name="Removed")
    # children without an order come after those with one, then by time
    await _child(alice, space, general, {**VIA, "order": "b", "suggested": True})
    await _child(alice, space, sub, {**VIA, "order": "a"})
    await _child(alice, space, secret, VIA)
    await _child(alice, space, members_only, VIA)
    await _child(alice, space, readable, {**VIA, "order": "\u00e9 not printable ascii"})
    await _child(alice, space, removed, {})  # an empty content: no longer a child
    await _child(alice, space, "!unknown:test.local", VIA)  # a room nobody here is in
    await _child(alice, sub, deep, VIA)
    await _child(alice, sub, space, VIA)  # a loop back to the top
    await _child(alice, general, secret, VIA)  # not a space: no children

    bob = new_client()
    await bob.register("bob")
    assert (await bob.post(f"join/{quote(space)}", {})).status == 200

    everything = ["Space", "Sub", "Deep", "General", "Members", "Readable"]
    assert await _names(bob, space) == everything
    assert await _names(alice, space) == ["Space", "Sub", "Deep", "General", "Secret", "Members", "Readable"]
    r = await _hierarchy(bob, space)
    top = r["rooms"][0]
    assert {k: top[k] for k in ("room_id", "name", "topic", "room_type", "join_rule", "num_joined_members",
                                "world_readable", "guest_can_join")} == {
        "room_id": space, "name": "Space", "topic": "all of it", "room_type": "m.space", "join_rule": "public",
        "num_joined_members": 2, "world_readable": False, "guest_can_join": False}
    assert [e["state_key"] for e in top["children_state"]] == [
        sub, general, secret, members_only, readable, "!unknown:test.local"]
    assert all(e["type"] == "m.space.child" and e["sender"] == alice.user_id and e["origin_server_ts"] > 0
               for e in top["children_state"])
    members = next(room for room in r["rooms"] if room["room_id"] == members_only)
    assert (members["join_rule"], members["allowed_room_ids"]) == ("restricted", [space])
    assert next(room for room in r["rooms"] if room["room_id"] == deep)["children_state"] == []
    assert next(room for room in r["rooms"] if room["room_id"] == general)["children_state"] == []
    assert "next_batch" not in r.body

    # pages of two: the same rooms in the same order, then no next_batch
    seen: list[str] = []
    token: str | None = None
    for _ in range(5):
        params = {"limit": "2", **({"from": token} if token else {})}
        page = await _hierarchy(bob, space, **params)
        assert page.status == 200 and len(page["rooms"]) <= 2, page
        seen += [room["name"] for room in page["rooms"]]
        token = page.body.get("next_batch")
        if token is None:
            break
    assert seen == everything
    first = await _hierarchy(bob, space, limit="2")
    r = await _hierarchy(bob, space, limit="2", max_depth="1", **{"from": first["next_batch"]})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await _hierarchy(alice, space, **{"from": first["next_batch"]})  # another user's token
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await _hierarchy(bob, space, **{"from": "nonsense"})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")

    assert await _names(bob, space, suggested_only="true") == ["Space", "General"]
    assert await _names(bob, space, max_depth="0") == ["Space"]
    assert await _names(bob, space, max_depth="1") == ["Space", "Sub", "General", "Members", "Readable"]
    assert await _names(bob, sub) == ["Sub", "Deep", "Space", "General", "Members", "Readable"]

    # rooms bob may not see, and bad parameters
    for room_id in (secret, "!nosuchroom:test.local"):
        r = await _hierarchy(bob, room_id)
        assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN"), r
    for params in ({"limit": "0"}, {"limit": "x"}, {"max_depth": "-1"}, {"suggested_only": "maybe"}):
        r = await _hierarchy(bob, space, **params)
        assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM"), (params, r)
    r = await bob.get(f"/_matrix/client/v1/rooms/{quote(space)}/hierarchy", token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")

    await _round_trips_per_space(alice, server)
    await _remote_children_bounded(alice, server)


class _CountingDb:
    """The store's database, counting the statements it sends."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.db, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute"):
            return attr

        async def counted(*args: Any) -> Any:
            self.statements += 1
            return await attr(*args)

        return counted


async def _round_trips_per_space(alice: ApiClient, server: HomeServer) -> None:
    """A page of a space we are in costs the same few statements whatever
    its number of children: the children and whether the user may see them
    are read together (here 6: the space, then its 20 children, 3 each)."""
    store = server.services.hierarchy.store
    space = await _room(alice, preset="public_chat", name="Wide", creation_content={"type": "m.space"})
    children = [await _room(alice, preset="public_chat", name=f"w{i:02d}") for i in range(20)]
    for room_id in children:
        await _child(alice, space, room_id, VIA)
    counting = _CountingDb(store.db)
    store.db = counting
    try:
        names = await _names(alice, space)
    finally:
        store.db = counting.db
    assert names == ["Wide"] + [f"w{i:02d}" for i in range(20)]
    assert counting.statements == 6


async def _remote_children_bounded(alice: ApiClient, server: HomeServer) -> None:
    """Children only other servers hold are asked of their via servers
    (three at most, never us) within a page's bounds: at most 10 requests,
    and 20 s in all (a clock of the test's: each request "takes" 7 s),
    each request's timeout within what is left; the rest of the walk waits
    for the next page."""
    service = server.services.hierarchy
    now = [1000.0]
    asked: list[tuple[str, str, float]] = []

    async def unreachable(via: str, room_id: str, suggested_only: bool, timeout_s: float) -> Any:
        asked.append((via, room_id, timeout_s))
        now[0] += step
        return None

    service.remote, service.clock = unreachable, lambda: now[0]
    space = await _room(alice, preset="public_chat", name="Far", creation_content={"type": "m.space"})
    far = [f"!far{i:02d}:remote.invalid" for i in range(15)]
    vias = ["test.local", "one.invalid", "two.invalid", "three.invalid", "four.invalid"]
    for room_id in far:
        await _child(alice, space, room_id, {"via": vias})
    step = 0.0
    r = await _hierarchy(alice, space)
    assert r.status == 200 and [room["name"] for room in r["rooms"]] == ["Far"], r
    assert len(asked) == 10 and [a[:2] for a in asked[:3]] == [
        ("one.invalid", far[0]), ("two.invalid", far[0]), ("three.invalid", far[0])], asked
    pages = 1
    while "next_batch" in r.body and pages < 10:
        before = len(asked)
        r = await _hierarchy(alice, space, **{"from": r["next_batch"]})
        assert r.status == 200 and r["rooms"] == [] and len(asked) - before <= 10, r
        pages += 1
    assert "next_batch" not in r.body
    # each room asked of its first three other servers, once each (a room
    # whose servers the budget did not reach is asked again next page)
    assert sorted({a[:2] for a in asked}) == sorted((v, f) for v in vias[1:4] for f in far)
    assert (pages, len(asked)) == (5, 49)
    asked.clear()
    step = 7.0
    r = await _hierarchy(alice, space)
    assert r.status == 200 and "next_batch" in r.body, r
    assert [a[2] for a in asked] == [10.0, 10.0, 6.0], asked
