"""A transaction of many PDUs for one room is checked in order and persisted
together (services/federation/room_batch.py): each PDU's answer and what is
stored (accepted, rejected, soft-failed, refused, fetched) must be what
receiving the same PDUs one per transaction gives, including an event
refused in the middle, a rejected event other events build on, a soft
failure against the state the batch itself changed, an event whose auth
event is earlier in the batch, a prev event fetched from the origin in the
middle, a duplicate, and a fork of the DAG."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from coffeechat_home.protocol.events import Event, StateKey
from coffeechat_home.protocol.signing import generate_signing_key

from ..integration.processes import User
from .peers import FederatingServer
from .receive_helpers import Origin, Room, _state_content, setup  # noqa: F401  (setup: the fixture)

pytestmark = pytest.mark.federation


async def _room(ours: FederatingServer, origin: Origin, alice: User, remy: str) -> Room:
    """A public v11 room of alice's that the origin's remy joined."""
    status, body = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": "11"})
    assert status == 200, body
    room = Room(ours, body["room_id"], "11")
    join = origin.build("11", room.room_id, remy,
                        {"type": "m.room.member", "state_key": remy, "content": {"membership": "join"}},
                        await room.head(), await room.state())
    assert await origin.send(ours.server_name, [dict(join.pdu)]) == {"pdus": {join.event_id: {}}}
    return room


async def _scenario(origin: Origin, room: Room, remy: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The PDUs to send, in order, and a label for each event id (the
    events fetched rather than sent included)."""
    rid, remy2 = room.room_id, f"@remy2:{origin.name}"
    state: dict[StateKey, str] = await room.state()
    labels: dict[str, str] = {}
    pdus: list[dict[str, Any]] = []

    def build(label: str, sender: str, template: dict[str, Any], prev: Event | list[tuple[str, int]],
              st: dict[StateKey, str] | None = None, send: bool = True) -> Event:
        prevs = [(prev.event_id, prev.depth)] if isinstance(prev, Event) else prev
        ev = origin.build("11", rid, sender, template, prevs, dict(state if st is None else st))
        labels[ev.event_id] = label
        if send:
            pdus.append(dict(ev.pdu))
        return ev

    def text(body: str) -> dict[str, Any]:
        return {"type": "m.room.message", "content": {"msgtype": "m.text", "body": body}}

    def member(user: str, membership: str) -> dict[str, Any]:
        return {"type": "m.room.member", "state_key": user, "content": {"membership": membership}}

    m1 = build("m1", remy, text("one"), await room.head())
    m2 = build("m2", remy, text("two"), m1)
    pdus.append(dict(m2.pdu))  # the same PDU twice
    power = await _state_content(room, ("m.room.power_levels", ""))
    power["users"][remy] = 100
    coup = build("coup", remy, {"type": "m.room.power_levels", "state_key": "", "content": power}, m2)
    m3 = build("m3", remy, text("on the rejected one"), coup)
    good_key, origin.key = origin.key, generate_signing_key("o1")
    build("forged", remy, text("forged"), m3)
    origin.key = good_key
    g1 = build("g1", remy, text("never sent: fetched"), m3, send=False)
    g2 = build("g2", remy, text("after a gap"), g1)
    j2 = build("j2", remy2, member(remy2, "join"), g2)
    joined = dict(state)
    state[("m.room.member", remy2)] = j2.event_id
    m5 = build("m5", remy2, text("auth event in the batch"), j2)
    with_join = dict(state)
    l2 = build("l2", remy2, member(remy2, "leave"), m5)
    state[("m.room.member", remy2)] = l2.event_id
    # allowed by the state before it (remy2 joined), not by the current one
    build("late", remy2, text("after my leave, on the old branch"), m5, with_join)
    # allowed by its own auth events (the join), not by the state before it (left)
    rej = build("rej", remy2, text("after my leave"), l2, with_join)
    m8 = build("m8", remy, text("on the rejected one, a fork"), rej)
    build("m9", remy, text("last"), m8)
    assert joined != state
    return pdus, labels


async def _outcomes(room: Room, answers: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """Per label: (answered with an error, stored, rejected, soft-failed,
    has a stream position); the current state and extremities by label."""
    rows = await room.server.db_fetch(
        "SELECT event_id, stream_pos, rejected_reason, soft_failed FROM events WHERE event_id = ANY($1::TEXT[])",
        list(labels))
    stored = {r["event_id"]: r for r in rows}
    out: dict[str, Any] = {}
    for eid, label in labels.items():
        r = stored.get(eid)
        answer = answers.get(eid)
        out[label] = (
            None if answer is None else "error" in answer,
            r is not None,
            r is not None and r["rejected_reason"] is not None,
            r is not None and r["soft_failed"],
            r is not None and r["stream_pos"] is not None,
        )
    state = await room.state()
    out["state"] = sorted((k, labels[v]) for k, v in state.items() if v in labels)
    out["extremities"] = sorted(labels.get(e, e) for e, _ in await room.head())
    return out


async def test_one_transaction_as_one_pdu_each(
    setup: tuple[FederatingServer, Origin, aiohttp.ClientSession],  # noqa: F811  (the fixture imported above)
) -> None:
    ours, origin, http = setup
    alice = await User(http, ours.client_url).register("alice")
    remy = f"@remy:{origin.name}"

    together = await _room(ours, origin, alice, remy)
    pdus, labels = await _scenario(origin, together, remy)
    answers = (await origin.send(ours.server_name, pdus))["pdus"]
    got = await _outcomes(together, answers, labels)

    apart = await _room(ours, origin, alice, remy)
    pdus_b, labels_b = await _scenario(origin, apart, remy)
    answers_b: dict[str, Any] = {}
    for pdu in pdus_b:
        answers_b.update((await origin.send(ours.server_name, [pdu]))["pdus"])
    assert got == await _outcomes(apart, answers_b, labels_b)

    # and what that is: (error, stored, rejected, soft-failed, stream position)
    accepted = (False, True, False, False, True)
    assert got == {
        "m1": accepted, "m2": accepted, "m3": accepted, "g2": accepted, "j2": accepted, "m5": accepted,
        "l2": accepted, "m8": accepted, "m9": accepted,
        "g1": (None, True, False, False, True),  # fetched with get_missing_events, not answered for
        "coup": (True, True, True, False, False),
        "forged": (True, False, False, False, False),
        "late": (False, True, False, True, False),
        "rej": (True, True, True, False, False),
        "state": [(("m.room.member", f"@remy2:{origin.name}"), "l2")],
        # a rejected event is no extremity and leaves its prev events as they were:
        # m2 (before the rejected coup), l2 (before the rejected rej)
        "extremities": ["l2", "m2", "m9"],
    }, got
    assert len(pdus) == 14 and set(answers) == {e for e, label in labels.items() if label != "g1"}
    row = await together.stored(next(e for e, label in labels.items() if label == "late"))
    assert orjson.loads(row["pdu"])["content"]["body"] == "after my leave, on the old branch"
