"""protocol/restricted.py: which rooms a restricted join rule allows, whether
a room is restricted in its version, and who (which users of a server,
which servers) can authorise a restricted join."""

from __future__ import annotations

from dataclasses import replace

from coffeechat_home.protocol.events import Event, StateKey
from coffeechat_home.protocol.restricted import (
    allowed_room_ids,
    authorising_servers,
    is_restricted,
    local_authorisers,
)
from coffeechat_home.protocol.room_versions import get_room_version

from .auth_cases import ALICE, BOB, CAROL, DAVE, ERIN, V10, V11, V12, ev, power_levels, room


def _rules(version: str, rule: str, allow: object = None) -> dict[StateKey, Event]:
    content: dict[str, object] = {"join_rule": rule}
    if allow is not None:
        content["allow"] = allow
    join_rules = ev(get_room_version(version), "m.room.join_rules", ALICE, content, "", room_id="!r:a.test")
    return {("m.room.join_rules", ""): join_rules}


def test_restricted_only_in_versions_that_have_the_rule() -> None:
    for v in ("10", "11", "12"):
        rv = get_room_version(v)
        assert is_restricted(_rules(v, "restricted"), rv) and is_restricted(_rules(v, "knock_restricted"), rv)
        assert not is_restricted(_rules(v, "public"), rv) and not is_restricted(_rules(v, "knock"), rv)
        assert not is_restricted({}, rv)
    # versions before 8 (no restricted) and 8-9 (no knock_restricted): we serve only 10+, the rule reads the flags
    v7 = replace(V10, restricted_join_rule=False, knock_restricted_join_rule=False)
    v9 = replace(V10, knock_restricted_join_rule=False)
    assert not is_restricted(_rules("10", "restricted"), v7)
    assert is_restricted(_rules("10", "restricted"), v9) and not is_restricted(_rules("10", "knock_restricted"), v9)


def test_allowed_rooms_only_from_room_membership_entries() -> None:
    allow = [
        {"type": "m.room_membership", "room_id": "!a:x"},
        {"type": "m.room_membership", "room_id": "!a:x"},  # once
        {"type": "m.room_membership", "room_id": "#alias:x"},  # not a room id
        {"type": "m.room_membership"},
        {"type": "org.example.other", "room_id": "!b:x"},
        "!c:x",
        {"type": "m.room_membership", "room_id": "!d:x"},
    ]
    assert allowed_room_ids(_rules("11", "restricted", allow)) == ["!a:x", "!d:x"]
    assert allowed_room_ids(_rules("11", "restricted", "!a:x")) == []
    assert allowed_room_ids(_rules("11", "restricted")) == []
    assert allowed_room_ids({}) == []


def test_authorisers_are_joined_users_who_may_invite() -> None:
    for rv in (V10, V11, V12):
        users = {BOB: 60, CAROL: 50, ERIN: 49, DAVE: 80}
        if not rv.privileged_creators:
            users[ALICE] = 100
        state = room(rv, join_rule="restricted", pl=power_levels(rv, users, invite=50),
                     members={ALICE: "join", BOB: "join", CAROL: "join", ERIN: "join", DAVE: "leave"})
        # a.test: alice (creator / 100) before bob (60); b.test: carol (50), not erin (49); dave left
        assert local_authorisers(state, "a.test", rv) == [ALICE, BOB]
        assert local_authorisers(state, "b.test", rv) == [CAROL]
        assert local_authorisers(state, "c.test", rv) == []
        assert authorising_servers(state, rv) == ["a.test", "b.test"]
        # invite level above carol: b.test can no longer authorise
        state[("m.room.power_levels", "")] = power_levels(rv, users, invite=55)
        assert local_authorisers(state, "b.test", rv) == []
        assert authorising_servers(state, rv) == ["a.test"]
