"""A room whose DAG forks and merges, for the DAG viewer's tests.

Our own server never forks a room by itself (the forward-extremity
compare-and-set serializes its writes), and federation does not persist
remote events yet. So this writes a fork the way a persister would, with
nothing faked that the viewer reads: real events (built, hashed and signed
with the server's key by the protocol builder, auth-checked), a real stream
position (through the stream store's write), state groups holding the real
state after each event, and the merge's state computed by the real state
resolver (protocol/state_res.py).

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
from coffeechat_home.protocol.client_events import client_event
from coffeechat_home.protocol.events import Event, StateKey, auth_types_for_event
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.state_res import resolve_state

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

    async def write(conn: Any, positions: list[int]) -> None:
        # a state group takes its id from the stream position of the event that starts it
        for ev, pos, group, state in ((fork, positions[0], positions[0], state_f),
                                      (merge, positions[1], positions[1], resolved)):
            prev_state = events[state_x[("m.room.topic", "")]] if ev is fork and ("m.room.topic", "") in state_x else None
            await conn.execute(
                """INSERT INTO events (event_id, room_id, stream_pos, depth, type, state_key, sender,
                                       origin_server_ts, pdu, client, state_group)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                ev.event_id, room_id, pos, ev.depth, ev.type, ev.state_key, ev.sender, ev.origin_server_ts,
                orjson.dumps(ev.pdu).decode(), orjson.dumps(client_event(ev, prev_state)).decode(), group,
            )
            await conn.executemany("INSERT INTO event_edges (event_id, prev_event_id) VALUES ($1, $2)",
                                   [(ev.event_id, p) for p in ev.prev_event_ids])
            await conn.executemany("INSERT INTO event_auth_edges (event_id, auth_event_id) VALUES ($1, $2)",
                                   [(ev.event_id, a) for a in ev.auth_event_ids])
            # a full snapshot (no prev_group): the state after the event
            await conn.execute("INSERT INTO state_groups (id, room_id, prev_group, chain_length) VALUES ($1, $2, NULL, 0)",
                               group, room_id)
            await conn.executemany(
                "INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES ($1, $2, $3, $4)",
                [(group, k[0], k[1], v) for k, v in state.items()],
            )
        await conn.execute(
            "UPDATE current_state SET event_id = $2 WHERE room_id = $1 AND type = 'm.room.topic' AND state_key = ''",
            room_id, resolved[("m.room.topic", "")],
        )
        await conn.execute("UPDATE rooms SET forward_extremities = $2::TEXT[] WHERE room_id = $1", room_id,
                           [merge.event_id])

    await s.stream.write_many(write, 2, name="test_fork")
    return ForkedRoom(room_id, x, t1, fork.event_id, merge.event_id, resolved[("m.room.topic", "")])
