"""The admins' room DAG endpoint (behind the DAG viewer): admin only, a
bounded window of events with prev_events edges, the state at an event."""

from __future__ import annotations

from typing import Any

import aiohttp

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .admin_helpers import make_admin
from .dag_fork import make_forked_room
from .room_helpers import assert_error, create_room, invite_and_join, q, send_text

DAG = "/_coffeechat/admin/v1/rooms/{}/dag"


def dag_path(room_id: str) -> str:
    return DAG.format(q(room_id))


async def get_dag(admin: ApiClient, room_id: str, **params: Any) -> Any:
    return await admin.get(dag_path(room_id), params={k: str(v) for k, v in params.items()}, validate=False)


async def test_non_admin_gets_403_and_no_token_401(
    server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient
) -> None:
    room_id = await create_room(alice)
    assert_error(await alice.get(dag_path(room_id), validate=False), 403, "M_FORBIDDEN")
    assert_error(await alice.get(dag_path(room_id) + "/state/" + q("$x"), validate=False), 403, "M_FORBIDDEN")
    assert_error(await alice.get(dag_path(room_id), token=None, validate=False), 401, "M_MISSING_TOKEN")


async def test_unknown_room_and_event_404(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient) -> None:
    admin = await make_admin(server, http)
    room_id = await create_room(alice)
    assert_error(await get_dag(admin, "!nope:test.local"), 404, "M_NOT_FOUND")
    assert_error(await get_dag(admin, room_id, around="$nope"), 404, "M_NOT_FOUND")
    r = await admin.get(dag_path(room_id) + "/state/" + q("$nope"), validate=False)
    assert_error(r, 404, "M_NOT_FOUND")
    # an event of another room is unknown in this one
    other = await create_room(alice)
    other_event = await send_text(alice, other, "elsewhere")
    assert_error(await get_dag(admin, room_id, around=other_event), 404, "M_NOT_FOUND")


async def test_bad_params_400(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient) -> None:
    admin = await make_admin(server, http)
    room_id = await create_room(alice)
    event_id = await send_text(alice, room_id, "hi")
    for params in (
        {"limit": "x"}, {"limit": 0}, {"limit": 1001}, {"from_depth": "1.5"}, {"to_depth": "deep"},
        {"from_depth": 5, "to_depth": 2}, {"around": event_id, "from_depth": 1}, {"from_depth": 10**30},
    ):
        assert_error(await get_dag(admin, room_id, **params), 400, "M_INVALID_PARAM")


async def test_window_nodes_edges_extremities_and_state(
    server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient, bob: ApiClient
) -> None:
    admin = await make_admin(server, http)
    room_id = await create_room(alice, {"name": "Coffee"})
    await invite_and_join(alice, bob, room_id)
    sent = [await send_text(alice if i % 2 else bob, room_id, f"m{i}") for i in range(6)]
    body = (await get_dag(admin, room_id)).body
    nodes = {n["event_id"]: n for n in body["nodes"]}
    assert body["total_events"] == len(nodes) and set(sent) <= set(nodes)
    assert body["window"]["more_below"] is False and body["window"]["more_above"] is False
    assert {"outlier", "rejected"} <= set(body["flags"])
    # our server writes one chain: every event but the create has one prev event, in the window
    create = [n for n in body["nodes"] if n["type"] == "m.room.create"]
    assert len(create) == 1 and create[0]["prev_events"] == [] and create[0]["depth"] == 1
    edges = {(e["from"], e["to"]) for e in body["edges"]}
    for n in body["nodes"]:
        assert {(n["event_id"], p) for p in n["prev_events"]} <= edges
        assert all(nodes[p]["depth"] < n["depth"] for p in n["prev_events"])
        assert n["origin"] == "test.local" and n["rejected"] is False and n["outlier"] is False
        assert isinstance(n["stream_pos"], int)
    assert all(e["in_window"] for e in body["edges"])
    assert body["forward_extremities"] == [sent[-1]]
    assert [n["event_id"] for n in body["nodes"] if n["forward_extremity"]] == [sent[-1]]
    assert body["depth_range"] == {"min": 1, "max": nodes[sent[-1]]["depth"]}
    # the state after the last message: the room's state (name, both members)
    st = (await admin.get(dag_path(room_id) + "/state/" + q(sent[-1]), validate=False)).body
    keys = {(s["type"], s["state_key"]) for s in st["state"]}
    assert ("m.room.name", "") in keys and ("m.room.member", bob.user_id) in keys
    name = [s for s in st["state"] if s["type"] == "m.room.name"][0]
    assert name["content"] == {"name": "Coffee"} and name["sender"] == alice.user_id
    assert st["conflicts"] == [] and st["prev_events"] == nodes[sent[-1]]["prev_events"]
    # the state after the create event holds only the create event
    st = (await admin.get(dag_path(room_id) + "/state/" + q(create[0]["event_id"]), validate=False)).body
    assert [(s["type"], s["state_key"]) for s in st["state"]] == [("m.room.create", "")]


async def test_window_bounds(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient) -> None:
    admin = await make_admin(server, http)
    room_id = await create_room(alice)
    sent = [await send_text(alice, room_id, f"m{i}") for i in range(30)]
    full = (await get_dag(admin, room_id, limit=1000)).body
    depth = {n["event_id"]: n["depth"] for n in full["nodes"]}
    total = full["total_events"]
    # newest window
    top = (await get_dag(admin, room_id, limit=10)).body
    assert [n["event_id"] for n in top["nodes"]] == sent[-10:]
    assert top["window"] == {"limit": 10, "count": 10, "from_depth": depth[sent[-10]], "to_depth": depth[sent[-1]],
                              "more_below": True, "more_above": False}
    # prev events outside the window are edges marked as such
    lowest = top["nodes"][0]
    assert [e["in_window"] for e in top["edges"] if e["from"] == lowest["event_id"]] == [False]
    # around an event: about half below (itself included), the rest above
    mid = (await get_dag(admin, room_id, around=sent[15], limit=7)).body
    assert [n["event_id"] for n in mid["nodes"]] == sent[12:19]
    assert mid["window"]["more_below"] and mid["window"]["more_above"]
    # a depth range, lowest first, cut at the limit
    rng = (await get_dag(admin, room_id, from_depth=depth[sent[3]], to_depth=depth[sent[8]])).body
    assert [n["event_id"] for n in rng["nodes"]] == sent[3:9]
    cut = (await get_dag(admin, room_id, from_depth=depth[sent[3]], to_depth=depth[sent[8]], limit=4)).body
    assert [n["event_id"] for n in cut["nodes"]] == sent[3:7] and cut["window"]["more_above"] is True
    # from_depth alone runs to the top; to_depth alone from below
    assert [n["event_id"] for n in (await get_dag(admin, room_id, from_depth=depth[sent[27]])).body["nodes"]] == sent[27:]
    low = (await get_dag(admin, room_id, to_depth=2, limit=1000)).body
    assert [n["depth"] for n in low["nodes"]] == [1, 2] and low["window"]["more_below"] is False
    # an empty range is an empty window, not an error
    empty = (await get_dag(admin, room_id, from_depth=10_000, to_depth=20_000)).body
    assert empty["nodes"] == [] and empty["edges"] == [] and empty["window"]["count"] == 0
    assert empty["total_events"] == total


async def test_fork_and_merge(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient) -> None:
    admin = await make_admin(server, http)
    room = await make_forked_room(server, alice)
    body = (await get_dag(admin, room.room_id)).body
    nodes = {n["event_id"]: n for n in body["nodes"]}
    # two branches from the fork point, at the same depth, and a merge of both
    assert nodes[room.main]["prev_events"] == [room.fork_point] == nodes[room.fork]["prev_events"]
    assert nodes[room.main]["depth"] == nodes[room.fork]["depth"]
    assert sorted(nodes[room.merge]["prev_events"]) == sorted([room.main, room.fork])
    assert {(e["from"], e["to"]) for e in body["edges"] if e["from"] == room.merge} == {
        (room.merge, room.main), (room.merge, room.fork)}
    assert body["forward_extremities"] == [room.merge] and nodes[room.merge]["forward_extremity"]
    assert isinstance(nodes[room.fork]["stream_pos"], int)
    # the state at the merge: the topic was in conflict, each branch's value and the resolved one
    st = (await admin.get(dag_path(room.room_id) + "/state/" + q(room.merge), validate=False)).body
    assert st["conflicts"] == [{"type": "m.room.topic", "state_key": "", "resolved": room.resolved_topic,
                                "branches": {room.main: room.main, room.fork: room.fork}}]
    assert room.resolved_topic in (room.main, room.fork)
    topic = [s for s in st["state"] if s["type"] == "m.room.topic"]
    assert [t["event_id"] for t in topic] == [room.resolved_topic]
    # at a plain event there is no conflict
    st = (await admin.get(dag_path(room.room_id) + "/state/" + q(room.fork), validate=False)).body
    assert st["conflicts"] == [] and {s["content"].get("topic") for s in st["state"]
                                      if s["type"] == "m.room.topic"} == {"fork topic"}
