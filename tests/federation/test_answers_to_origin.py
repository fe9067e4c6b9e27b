"""What our server answers and sends to a server whose user joined our room
(``Origin``, receive_helpers.py, over TLS): ``get_missing_events`` about a
forked DAG, our sender's transactions in DAG order, and a room's server ACL
obeyed by our sender, /hierarchy and send_join."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from coffeechat_home.federation.client import RemoteError
from coffeechat_home.protocol.events import Event
from coffeechat_home.protocol.hashing import compute_event_id
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.storage.database import Database

from ..integration.processes import wait_until
from .peers import FederatingServer
from .receive_helpers import Origin, _true, room_with_remote_member

pytestmark = pytest.mark.federation


async def test_get_missing_events_answers(setup: tuple[FederatingServer, Origin, aiohttp.ClientSession]) -> None:
    """Our POST /get_missing_events, asked by the origin (a member server)
    about a forked DAG: alice's a1..a6, remy's r1 on a2, alice's a7 on both
    branches. The answer is what lies between earliest_events and
    latest_events (neither included, nothing behind earliest), at most
    ``limit`` events, none below ``min_depth``, each after its prev_events
    (what a receiver such as Synapse processes in order). Our sender's
    transactions to the origin have that order too."""
    ours, origin, http = setup
    version = "11"
    alice, room, remy, _join, _since, _state, _head = await room_with_remote_member(ours, origin, http, version)
    origin.received.clear()
    sent = []
    for i in range(6):
        status, body = await alice.send(room.room_id, f"a{i + 1}")
        assert status == 200, body
        sent.append(body["event_id"])
    a2 = sent[1]
    a2_pdu = orjson.loads((await room.stored(a2))["pdu"])
    r1 = origin.build(version, room.room_id, remy, {"type": "m.room.message",
                      "content": {"msgtype": "m.text", "body": "r1"}}, [(a2, a2_pdu["depth"])], await room.state())
    assert await origin.send(ours.server_name, [dict(r1.pdu)]) == {"pdus": {r1.event_id: {}}}
    status, body = await alice.send(room.room_id, "a7")
    assert status == 200, body
    a7 = body["event_id"]
    pdus = {e: orjson.loads((await room.stored(e))["pdu"]) for e in [*sent, a7]}
    assert set(pdus[a7]["prev_events"]) == {sent[5], r1.event_id}, pdus[a7]
    # our sender gave the origin alice's events, each after its prev_events
    # (in an earlier transaction or before it in the same one)
    rv = get_room_version(version)

    def pushed() -> list[str]:
        return [compute_event_id(p, rv) for _, body in origin.received for p in body.get("pdus", [])]

    assert await wait_until(lambda: _true(a7 in pushed()), 30), pushed()
    order = pushed()
    assert set(sent) | {a7} <= set(order) and len(order) == len(set(order)), order
    for e in [*sent, a7]:
        assert all(order.index(p) < order.index(e) for p in pdus[e]["prev_events"] if p in pdus), order
    depth = {**{e: p["depth"] for e, p in pdus.items()}, r1.event_id: r1.depth}
    path = f"/_matrix/federation/v1/get_missing_events/{quote(room.room_id)}"

    async def ask(**body: Any) -> list[str]:
        answer = await origin.client.post_json(ours.server_name, path, {"latest_events": [a7], **body})
        events = [Event(p, compute_event_id(p, rv), rv) for p in answer["events"]]
        ids = [e.event_id for e in events]
        assert len(ids) == len(set(ids)), ids
        for i, ev in enumerate(events):  # each event after the prev_events it came with
            assert not set(ev.prev_event_ids) & set(ids[i:]), ids
        return ids

    between = {*sent[2:], r1.event_id}
    got = await ask(earliest_events=[a2], limit=10)
    assert set(got) == between, got
    assert [depth[e] for e in got] == sorted(depth[e] for e in got)
    got = await ask(earliest_events=[a2], limit=2)
    assert len(got) == 2 and set(got) <= between, got
    got = await ask(earliest_events=[a2], limit=10, min_depth=depth[sent[4]])
    assert set(got) == {sent[4], sent[5]}, got
    # no earliest_events: back to the room's creation, oldest first
    got = await ask(earliest_events=[], limit=50)
    assert set(got) >= between | set(sent[:2]) and a7 not in got, got
    first = orjson.loads((await room.stored(got[0]))["pdu"])
    assert first["type"] == "m.room.create", first


async def test_sender_skips_servers_the_room_acl_denies(
    setup: tuple[FederatingServer, Origin, aiohttp.ClientSession], database_url: str, tmp_path: Path
) -> None:
    """Two servers in alice's room, one named by its IP address: once the
    room's server ACL denies IP literals, that one gets neither the room's
    events (the ACL event included) nor its typing, the other gets both;
    the room's federation /hierarchy answers the denied one 404, and our
    send_join answers leave it out of ``servers_in_room``."""
    ours, origin, http = setup
    version = "12"
    alice, room, _remy, _join, _since, _state, _head = await room_with_remote_member(ours, origin, http, version)
    db = await Database.connect(database_url, min_size=1, max_size=2)
    other = Origin(db, tmp_path / "other", host="127.0.0.1")
    try:
        await other.start()
        ip_user = f"@ip:{other.name}"
        join = other.build(version, room.room_id, ip_user,
                           {"type": "m.room.member", "state_key": ip_user, "content": {"membership": "join"}},
                           await room.head(), await room.state())
        assert await other.send(ours.server_name, [dict(join.pdu)]) == {"pdus": {join.event_id: {}}}

        def got(peer: Origin, event_id: str) -> bool:
            rv = get_room_version(version)
            return any(compute_event_id(p, rv) == event_id for _, body in peer.received for p in body.get("pdus", []))

        async def until(pred: Any) -> None:
            assert await wait_until(pred, 30, interval=0.05), (ours.process.stderr()[-3000:])

        status, before = await alice.send(room.room_id, "before the acl")
        assert status == 200, before
        await until(lambda: _true(got(origin, before["event_id"]) and got(other, before["event_id"])))

        hierarchy = f"/_matrix/federation/v1/hierarchy/{quote(room.room_id, safe='')}"
        assert (await other.client.get_json(ours.server_name, hierarchy))["room"]["room_id"] == room.room_id
        rid = quote(room.room_id)
        status, acl = await alice.call("PUT", f"rooms/{rid}/state/m.room.server_acl/",
                                       {"allow": ["*"], "allow_ip_literals": False})
        assert status == 200, acl
        # the room's /hierarchy: the denied server is answered 404, the other the room
        answer = await origin.client.get_json(ours.server_name, hierarchy)
        assert (answer["room"]["room_id"], answer["children"], answer["inaccessible_children"]) == (
            room.room_id, [], []), answer
        with pytest.raises(RemoteError) as denied:
            await other.client.get_json(ours.server_name, hierarchy)
        assert (denied.value.status, denied.value.errcode) == (404, "M_NOT_FOUND")
        status, after = await alice.send(room.room_id, "after the acl")
        assert status == 200, after
        me = quote(alice.user_id)
        assert (await alice.call("PUT", f"rooms/{rid}/typing/{me}", {"typing": True, "timeout": 20000}))[0] == 200
        await until(lambda: _true(got(origin, acl["event_id"]) and got(origin, after["event_id"])
                                  and [c for c in origin.edus("m.typing") if c["user_id"] == alice.user_id]))
        pos = (await ours.db_fetch("SELECT stream_pos FROM events WHERE event_id = $1", after["event_id"]))[0][0]

        async def passed() -> bool:  # the sender went past both events for the denied server
            rows = await ours.db_fetch("SELECT stream_pos FROM federation_destinations WHERE destination = $1",
                                       other.name)
            return bool(rows) and rows[0][0] >= pos

        await until(passed)
        assert not got(other, acl["event_id"]) and not got(other, after["event_id"]), other.received
        assert other.edus("m.typing") == []
        assert await ours.db_fetch("SELECT 1 FROM federation_edu_outbox WHERE destination = $1", other.name) == []
        # a send_join answer names the servers in the room but the denied one
        late = f"@late:{origin.name}"
        late_join = origin.build(version, room.room_id, late,
                                 {"type": "m.room.member", "state_key": late, "content": {"membership": "join"}},
                                 await room.head(), await room.state())
        answer = await origin.client.put_json(
            ours.server_name, f"/_matrix/federation/v2/send_join/{rid}/{quote(late_join.event_id)}", dict(late_join.pdu))
        assert answer["servers_in_room"] == sorted({ours.server_name, origin.name}), answer["servers_in_room"]
    finally:
        await other.stop()
        await db.close()
