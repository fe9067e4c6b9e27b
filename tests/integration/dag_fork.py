"""A room whose DAG forks and merges, for the DAG viewer's tests.

Our own server never forks a room by itself (the forward-extremity
compare-and-set serializes its writes), so the fork is built here as a
second writer on an older head would have built it: real events (built,
hashed and signed with the server's key by the protocol builder,
auth-checked), handed to the persister (the one door into a room, which the
federation receiver uses too) with the state before each, the merge's
computed by the real state resolver (protocol/state_res.py).

The room: ... -> X -> T1 (topic "main topic", sent through the client API)
                  \\-> F (topic "fork topic", built on X, the older head)
              T1, F -> M (a message merging both branches)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from coffeechat_home.app import HomeServer
from coffeechat_home.protocol.auth import check_auth_rules
from coffeechat_home.protocol.builder import build_event
from coffeechat_home.protocol.events import Event, StateKey, auth_types_for_event
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.state_res import resolve_state
from coffeechat_home.services.persister import EventContext, NewEvent

from ..helpers import ApiClient
from .room_helpers import create_room, q, send_text


@dataclass
class ForkedRoom:
    room_id: str
    fork_point: str  # X
    main: str  # T1
    fork: str  # F
    merge: str  # M
    resolved_topic: str  # the topic event the resolver chose


async def make_forked_room(server: HomeServer, alice: ApiClient) -> ForkedRoom:
    assert server.services is not None and server.db is not None
    s = server.services
    db = server.db
    room_id = await create_room(alice, {"name": "Fork"})
    x = await send_text(alice, room_id, "before the fork")
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.topic", {"topic": "main topic"})
    assert r.status == 200, r
    t1 = r["event_id"]

    rv = get_room_version(await db.fetchval("SELECT room_version FROM rooms WHERE room_id = $1", room_id))
    rows = await db.fetch("SELECT event_id, pdu, state_group, depth FROM events WHERE room_id = $1", room_id)
    events = {r["event_id"]: Event(orjson.loads(r["pdu"]), r["event_id"], rv) for r in rows}
    groups = {r["event_id"]: r["state_group"] for r in rows}
    depth_x = next(int(r["depth"]) for r in rows if r["event_id"] == x)
    state_x = await s.events.state_ids_for_group(groups[x])
    state_t1 = await s.events.state_ids_for_group(groups[t1])

    def build(template: dict[str, Any], prev: list[str], depth: int, state: dict[StateKey, str]) -> Event:
        keys = auth_types_for_event(rv, template["type"], template["sender"], template.get("state_key"),
                                    template["content"])
        auth_state = {k: events[state[k]] for k in keys if k in state}
        ev = build_event(
            rv, template={**template, "room_id": room_id}, prev_events=prev,
            auth_events=[e.event_id for e in auth_state.values()], depth=depth,
            origin_server_ts=int(time.time() * 1000), server_name=server.config.server_name,
            signing_key=s.writer.signing_key,
        )
        check_auth_rules(ev, {**auth_state, ("m.room.create", ""): events[state[("m.room.create", "")]]})
        events[ev.event_id] = ev
        return ev

    fork = build({"type": "m.room.topic", "state_key": "", "sender": alice.user_id,
                  "content": {"topic": "fork topic"}}, [x], depth_x + 1, state_x)
    state_f = {**state_x, ("m.room.topic", ""): fork.event_id}
    resolved = resolve_state(rv, [state_t1, state_f], events.get)
    merge = build({"type": "m.room.message", "sender": alice.user_id,
                   "content": {"msgtype": "m.text", "body": "after the merge"}},
                  [t1, fork.event_id], depth_x + 2, resolved)

    # through the one door into a room, as the federation receiver does
    await s.persister.persist(room_id, [
        NewEvent(fork, EventContext(state_before=state_x)),
        NewEvent(merge, EventContext(state_before=resolved)),
    ])
    return ForkedRoom(room_id, x, t1, fork.event_id, merge.event_id, resolved[("m.room.topic", "")])
