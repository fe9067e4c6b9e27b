"""What a received PDU refers to and the receiver lacks, fetched from the
server that sent it (the test's ``Origin`` from receive_helpers, which serves
event, event_auth, state_ids and get_missing_events from the events it
built):

* an auth event we never saw is fetched (event_auth), checked and stored as
  an outlier, and the PDU is accepted; a forged auth event (bad signature)
  or one the auth rules refuse is not stored, and the PDU does not count;
* a gap that get_missing_events does not close (more missing events than
  its limit) is filled with the state at the gap (state_ids, then the
  events we lack with /event): the state event inside the gap counts, the
  events after the gap are accepted, the messages inside it are not stored;
  a forged event listed in the state at the gap is dropped;
* when many events are missing at a gap, one /state request brings them;
* answers that list a message as state fill no gap, and the tries are
  bounded.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from coffeechat_home.protocol.events import StateKey
from coffeechat_home.protocol.signing import generate_signing_key
from coffeechat_home.services.federation.gaps import MAX_STATE_FILLS
from coffeechat_home.services.federation.receiver import MISSING_EVENTS_LIMIT

from .peers import FederatingServer
from .receive_helpers import (  # noqa: F401  (setup: a fixture)
    Origin, Room, _state_content, _sync_until, room_with_remote_member, setup,
)

pytestmark = pytest.mark.federation


async def _outlier(room: Room, event_id: str) -> Any:
    rows = await room.server.db_fetch(
        "SELECT outlier, stream_pos, rejected_reason FROM events WHERE event_id = $1", event_id)
    return rows[0] if rows else None


def _message(body: str) -> dict[str, Any]:
    return {"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}}


async def test_missing_auth_events_and_gaps_fetched(
    setup: tuple[FederatingServer, Origin, aiohttp.ClientSession],  # noqa: F811
) -> None:
    ours, origin, http = setup
    version = "12"
    alice, room, remy, _join, since, state, head = await room_with_remote_member(ours, origin, http, version)
    member_key: StateKey = ("m.room.member", remy)

    # 1. a message whose auth events name a membership update we never got
    renamed = origin.build(version, room.room_id, remy, {"type": "m.room.member", "state_key": remy,
                           "content": {"membership": "join", "displayname": "Remy"}}, head, state)
    msg = origin.build(version, room.room_id, remy, _message("auth event fetched"), head,
                       {**state, member_key: renamed.event_id})
    assert renamed.event_id in msg.auth_event_ids
    assert await origin.send(ours.server_name, [dict(msg.pdu)]) == {"pdus": {msg.event_id: {}}}
    assert any("/event_auth/" in p for p in origin.reads), origin.reads
    row = await _outlier(room, renamed.event_id)
    assert row is not None and row["outlier"] and row["stream_pos"] is None and row["rejected_reason"] is None
    row = await room.stored(msg.event_id)
    assert row is not None and row["stream_pos"] is not None and not row["rejected_reason"]
    since, seen = await _sync_until(alice, since, room.room_id, {msg.event_id})
    assert msg.event_id in [e["event_id"] for e in seen]
    assert renamed.event_id not in [e["event_id"] for e in seen]  # an outlier is not in the timeline

    # 2. a forged auth event (signed with a key the origin does not publish),
    # and 3. a well-signed one the auth rules refuse (remy gives himself power)
    good_key, origin.key = origin.key, generate_signing_key(origin.key.version)
    forged = origin.build(version, room.room_id, remy, {"type": "m.room.member", "state_key": remy,
                          "content": {"membership": "join", "displayname": "Forged"}}, head, state)
    origin.key = good_key
    msg_forged = origin.build(version, room.room_id, remy, _message("forged auth"), head,
                              {**state, member_key: forged.event_id})
    power = await _state_content(room, ("m.room.power_levels", ""))
    power["users"][remy] = 100
    coup = origin.build(version, room.room_id, remy,
                        {"type": "m.room.power_levels", "state_key": "", "content": power}, head, state)
    msg_coup = origin.build(version, room.room_id, remy, _message("unauthorised auth"), head,
                            {**state, ("m.room.power_levels", ""): coup.event_id})
    assert coup.event_id in msg_coup.auth_event_ids
    answer = (await origin.send(ours.server_name, [dict(msg_forged.pdu), dict(msg_coup.pdu)]))["pdus"]
    assert "error" in answer[msg_forged.event_id] and "error" in answer[msg_coup.event_id], answer
    for refused in (forged, coup, msg_forged, msg_coup):
        assert await room.stored(refused.event_id) is None, refused.event_id
    assert (await room.state())[("m.room.power_levels", "")] == state[("m.room.power_levels", "")]

    # 4. a gap longer than get_missing_events' limit, with a state event
    # (remy's new display name) inside the part it does not return
    chain = []
    prev, gap_state = [(msg.event_id, msg.depth)], dict(state)
    for i in range(MISSING_EVENTS_LIMIT + 5):
        if i == 1:
            ev = origin.build(version, room.room_id, remy, {"type": "m.room.member", "state_key": remy,
                              "content": {"membership": "join", "displayname": "Far away"}}, prev, gap_state)
            gap_state = {**gap_state, member_key: ev.event_id}
        else:
            ev = origin.build(version, room.room_id, remy, _message(f"gap {i}"), prev, gap_state)
        chain.append(ev)
        prev = [(ev.event_id, ev.depth)]
    last = origin.build(version, room.room_id, remy, _message("after the gap"), prev, gap_state)
    # the origin also lists a forged membership in the state at the gap
    mallory = f"@mallory:{origin.name}"
    good_key, origin.key = origin.key, generate_signing_key(origin.key.version)
    forged_join = origin.build(version, room.room_id, mallory, {"type": "m.room.member", "state_key": mallory,
                               "content": {"membership": "join"}}, head, state)
    origin.key = good_key
    edge = chain[-MISSING_EVENTS_LIMIT - 1]  # the missing prev of the oldest event get_missing_events gives
    origin.state_before[edge.event_id][("m.room.member", mallory)] = forged_join.event_id
    reads_before = len(origin.reads)
    assert await origin.send(ours.server_name, [dict(last.pdu)]) == {"pdus": {last.event_id: {}}}
    reads = origin.reads[reads_before:]
    # the first event after the gap names the new membership as an auth
    # event (event_auth), then the state at its missing prev (state_ids),
    # that prev and the forged membership (event): four reads for the gap
    assert sorted(p.split("/")[4] for p in reads) == ["event", "event", "event_auth", "state_ids"], reads
    returned = chain[-MISSING_EVENTS_LIMIT:]  # what get_missing_events gave
    current = await room.state()
    assert current[member_key] == chain[1].event_id  # the state inside the gap counts
    assert ("m.room.member", mallory) not in current  # the forged one does not
    assert await room.stored(forged_join.event_id) is None
    for ev in [*returned, last]:
        row = await room.stored(ev.event_id)
        assert row is not None and row["stream_pos"] is not None and not row["rejected_reason"], ev.event_id
    row = await _outlier(room, edge.event_id)
    assert row is not None and row["outlier"]
    row = await _outlier(room, chain[1].event_id)
    assert row is not None and row["outlier"]
    for ev in chain[2:-MISSING_EVENTS_LIMIT - 1]:
        assert await room.stored(ev.event_id) is None  # inside the gap, never fetched
    # the event before the gap stays a forward extremity (we cannot know it
    # is an ancestor of the gap) until an event names it; state resolution
    # over both gives the gap's state
    assert {eid for eid, _ in await room.head()} == {msg.event_id, last.event_id}
    since, seen = await _sync_until(alice, since, room.room_id, {last.event_id})
    assert [e["content"]["body"] for e in seen if e["type"] == "m.room.message"][-1] == "after the gap"

    # 5. a gap in which 21 users of the origin joined: more events missing at
    # the gap than are worth fetching one by one, so one /state request
    newcomers = [f"@u{i}:{origin.name}" for i in range(21)]
    prev, state5 = [(last.event_id, last.depth)], dict(gap_state)
    for user in newcomers:
        ev = origin.build(version, room.room_id, user, {"type": "m.room.member", "state_key": user,
                          "content": {"membership": "join"}}, prev, state5)
        state5 = {**state5, ("m.room.member", user): ev.event_id}
        prev = [(ev.event_id, ev.depth)]
    for i in range(MISSING_EVENTS_LIMIT + 1):
        ev = origin.build(version, room.room_id, remy, _message(f"crowd {i}"), prev, state5)
        prev = [(ev.event_id, ev.depth)]
    crowd_last = origin.build(version, room.room_id, remy, _message("after the crowd"), prev, state5)
    reads_before = len(origin.reads)
    assert await origin.send(ours.server_name, [dict(crowd_last.pdu)]) == {"pdus": {crowd_last.event_id: {}}}
    reads = origin.reads[reads_before:]
    assert sorted(p.split("/")[4] for p in reads) == ["event", "state", "state_ids"], reads
    current = await room.state()
    assert all(current.get(("m.room.member", u)) == state5[("m.room.member", u)] for u in newcomers)

    # 6. state_ids answers that list a message as state: the gap is not
    # filled (three tries for the events get_missing_events gave, no more),
    # the event after it is not stored
    prev = [(crowd_last.event_id, crowd_last.depth)]
    odd = []
    for i in range(MISSING_EVENTS_LIMIT + 2):
        ev = origin.build(version, room.room_id, remy, _message(f"odd {i}"), prev, state5)
        odd.append(ev)
        prev = [(ev.event_id, ev.depth)]
    odd_last = origin.build(version, room.room_id, remy, _message("after a bad answer"), prev, state5)
    for ev in odd[1:]:
        origin.state_before[ev.event_id][("m.room.name", "")] = odd[0].event_id
    reads_before = len(origin.reads)
    answer = (await origin.send(ours.server_name, [dict(odd_last.pdu)]))["pdus"]
    assert "error" in answer[odd_last.event_id], answer
    reads = [p.split("/")[4] for p in origin.reads[reads_before:]]
    assert reads.count("state_ids") == MAX_STATE_FILLS, reads
    assert await room.stored(odd_last.event_id) is None
    assert await room.state() == current

