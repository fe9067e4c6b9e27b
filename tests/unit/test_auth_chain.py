"""Auth checks of a batch of received events (send_join state and auth chain)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from coffeechat_home.protocol.auth_chain import check_auth_chain
from coffeechat_home.protocol.builder import build_event
from coffeechat_home.protocol.events import Event, StateKey, auth_types_for_event
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from coffeechat_home.protocol.signing import generate_signing_key

SERVER = "remote.example"
KEY = generate_signing_key("k1")
ALICE = "@alice:remote.example"
BOB = "@bob:remote.example"
VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]


class Room:
    """A straight-line room built with real hashes, signatures and ids."""

    count = 0

    def __init__(self, rv: RoomVersion) -> None:
        self.rv = rv
        self.state: dict[StateKey, Event] = {}
        self.events: list[Event] = []
        Room.count += 1
        self.room_id: str | None = None if rv.privileged_creators else f"!room{Room.count}:remote.example"
        create_content: dict[str, Any] = {"room_version": rv.identifier}
        if not rv.implicit_room_creator:
            create_content["creator"] = ALICE
        self.create = self.add("m.room.create", ALICE, create_content, state_key="")
        self.add("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE)
        users = {} if rv.privileged_creators else {ALICE: 100}
        self.add("m.room.power_levels", ALICE, {"users": users, "users_default": 0}, state_key="")
        self.add("m.room.join_rules", ALICE, {"join_rule": "public"}, state_key="")

    def add(
        self, type_: str, sender: str, content: dict[str, Any], *, state_key: str | None = None,
        auth_override: list[str] | None = None, keep: bool = True,
    ) -> Event:
        template: dict[str, Any] = {"type": type_, "sender": sender, "content": content}
        if state_key is not None:
            template["state_key"] = state_key
        if self.room_id is not None:
            template["room_id"] = self.room_id
        keys = auth_types_for_event(self.rv, type_, sender, state_key, content)
        auth = [self.state[k].event_id for k in keys if k in self.state]
        prev = [self.events[-1].event_id] if self.events else []
        ev = build_event(
            self.rv, template=template, prev_events=prev,
            auth_events=auth if auth_override is None else auth_override,
            depth=len(self.events) + 1, origin_server_ts=1_700_000_000_000 + len(self.events),
            server_name=SERVER, signing_key=KEY,
        )
        if self.room_id is None:
            self.room_id = ev.room_id
        if keep:
            self.events.append(ev)
            if ev.state_key is not None:
                self.state[(ev.type, ev.state_key)] = ev
        return ev


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_a_valid_chain_is_accepted_in_any_order(rv: RoomVersion) -> None:
    room = Room(rv)
    room.add("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    room.add("m.room.topic", ALICE, {"topic": "t"}, state_key="")
    for seed in range(5):
        batch = list(room.events)
        random.Random(seed).shuffle(batch)
        result = check_auth_chain(batch)
        assert result.rejected == {}
        assert set(result.accepted) == {e.event_id for e in room.events}


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_unauthorised_events_and_what_rests_on_them_are_rejected(rv: RoomVersion) -> None:
    room = Room(rv)
    bob_join = room.add("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    # bob has power 0: his power-levels change fails the auth rules
    users = {BOB: 100} if rv.privileged_creators else {ALICE: 100, BOB: 100}
    bad_pl = room.add("m.room.power_levels", BOB, {"users": users}, state_key="")
    # an event citing the rejected power levels is rejected too, though bob
    # would be allowed to send it against the real state
    room.state[("m.room.power_levels", "")] = bad_pl
    after = room.add("m.room.message", BOB, {"body": "hi", "msgtype": "m.text"})
    result = check_auth_chain(room.events)
    assert set(result.rejected) == {bad_pl.event_id, after.event_id}
    assert "power" in result.rejected[bad_pl.event_id]
    assert "rejected" in result.rejected[after.event_id]
    assert bob_join.event_id in result.accepted


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_missing_auth_events_come_from_known_or_reject(rv: RoomVersion) -> None:
    room = Room(rv)
    bob_join = room.add("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    msg = room.add("m.room.message", BOB, {"body": "hi", "msgtype": "m.text"})
    partial = [bob_join, msg]
    result = check_auth_chain(partial)
    assert set(result.rejected) == {bob_join.event_id, msg.event_id}
    assert "not available" in result.rejected[bob_join.event_id]
    # the rest of the chain already known (stored) to the caller
    stored = {e.event_id: e for e in room.events[:4]}
    result = check_auth_chain(partial, known=stored.get)
    assert result.rejected == {}
    # ... unless the caller had rejected one of them
    pl = room.state[("m.room.power_levels", "")].event_id
    result = check_auth_chain(partial, known=stored.get, known_rejected=lambda i: i == pl)
    assert set(result.rejected) == {bob_join.event_id, msg.event_id}


def test_an_event_may_not_cite_itself_or_events_of_another_room() -> None:
    rv = ROOM_V11
    room = Room(rv)
    other = Room(rv)
    other.add("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    bob_elsewhere = other.state[("m.room.member", BOB)]
    auth = [room.create.event_id, room.state[("m.room.power_levels", "")].event_id, bob_elsewhere.event_id]
    foreign = room.add("m.room.message", BOB, {"body": "x"}, auth_override=auth, keep=False)
    result = check_auth_chain([*room.events, *other.events, foreign])
    assert foreign.event_id in result.rejected
    assert "another room" in result.rejected[foreign.event_id]
    assert not set(result.rejected) - {foreign.event_id}
