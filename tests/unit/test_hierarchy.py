"""Space hierarchy rules (protocol/hierarchy.py) and the checks on other
servers' /hierarchy answers (services/hierarchy.py)."""

from __future__ import annotations

import random
from typing import Any

from coffeechat_home.protocol.hierarchy import (
    LocalRoom, child_event, children_of, ordered_children, remote_summary, user_may_see,
)
from coffeechat_home.services.hierarchy import parse_remote_answer


def _child(room_id: str, ts: int, **content: Any) -> Any:
    return child_event(room_id, {"via": ["hs"], **content}, "@a:hs", ts)


def test_which_child_events_count() -> None:
    assert child_event("!r:hs", {"via": ["hs"]}, "@a:hs", 5) is not None
    for content in ({}, {"via": []}, {"via": "hs"}, {"via": [""]}, {"via": ["hs", 3]}, None):
        assert child_event("!r:hs", content, "@a:hs", 5) is None, content
    assert child_event("#alias:hs", {"via": ["hs"]}, "@a:hs", 5) is None
    child = child_event("!r:hs", {"via": ["hs"], "suggested": True, "order": "x"}, "@a:hs", 5)
    assert child is not None and child.suggested and child.order == "x"
    assert child.stripped() == {"type": "m.space.child", "state_key": "!r:hs", "sender": "@a:hs",
                                "origin_server_ts": 5, "content": {"via": ["hs"], "suggested": True, "order": "x"}}
    loose = child_event("!r:hs", {"via": ["hs"], "suggested": "yes"}, "@a:hs", 5)
    assert loose is not None and loose.suggested is False


def test_children_order_is_independent_of_input_order() -> None:
    expected = [
        _child("!b:hs", 9, order="a"),
        _child("!a:hs", 1, order="a "),  # a longer string sorts after its prefix
        _child("!c:hs", 0, order="b"),
        _child("!z:hs", 1),  # no order: by time, then room id
        _child("!x:hs", 2, order="\u00e9"),  # not printable ASCII: no order
        _child("!y:hs", 2, order="x" * 51),  # too long: no order
        _child("!w:hs", 3, order=7),
    ]
    for seed in range(20):
        shuffled = list(expected)
        random.Random(seed).shuffle(shuffled)
        assert [c.room_id for c in ordered_children(shuffled)] == [c.room_id for c in expected]
    suggested = [_child("!s:hs", 5, suggested=True), _child("!n:hs", 1)]
    assert [c.room_id for c in ordered_children(suggested, suggested_only=True)] == ["!s:hs"]


def test_local_summary_and_who_may_see() -> None:
    room = LocalRoom("!r:hs", "10", 3, state={
        "m.room.create": {"type": "m.space"}, "m.room.name": {"name": "R"}, "m.room.topic": {"topic": 5},
        "m.room.join_rules": {"join_rule": "restricted",
                              "allow": [{"type": "m.room_membership", "room_id": "!p:hs"}, {"type": "other"}]},
        "m.room.encryption": {"algorithm": "m.megolm.v1.aes-sha2"},
    }, children=[_child("!b:hs", 2), _child("!a:hs", 1)])
    summary = room.summary()
    assert {k: v for k, v in summary.items() if k != "children_state"} == {
        "room_id": "!r:hs", "num_joined_members": 3, "world_readable": False, "guest_can_join": False,
        "join_rule": "restricted", "room_version": "10", "name": "R", "room_type": "m.space",
        "allowed_room_ids": ["!p:hs"], "encryption": "m.megolm.v1.aes-sha2"}
    assert [e["state_key"] for e in summary["children_state"]] == ["!a:hs", "!b:hs"]
    assert LocalRoom("!q:hs", "12", 1).join_rule == "invite"  # no join rules event
    not_space = LocalRoom("!n:hs", "12", 1, state={"m.room.create": {}}, children=[_child("!b:hs", 2)])
    assert not_space.summary()["children_state"] == [] and not_space.space_children() == []
    args = (room.join_rule, room.world_readable)
    assert not user_may_see(*args, None, room.allowed_room_ids(), [])
    assert user_may_see(*args, None, room.allowed_room_ids(), ["!p:hs"])
    assert user_may_see(*args, "invite", room.allowed_room_ids(), [])
    assert not user_may_see(*args, "leave", room.allowed_room_ids(), ["!other:hs"])
    for rule in ("public", "knock", "knock_restricted"):
        assert user_may_see(rule, False, None, [], [])
    assert user_may_see("invite", True, None, [], []) and not user_may_see("invite", False, "ban", [], [])


def test_remote_answers_are_checked() -> None:
    child_state = [{"type": "m.space.child", "state_key": "!c1:o", "content": {"via": ["o"]}, "sender": "@u:o",
                    "origin_server_ts": 2},
                   {"type": "m.space.child", "state_key": "!c2:o", "content": {"via": ["o"], "order": "0"},
                    "sender": "@u:o", "origin_server_ts": 3},
                   {"type": "m.space.child", "state_key": "!gone:o", "content": {}, "sender": "@u:o",
                    "origin_server_ts": 1},
                   "not an event", {"type": "m.room.name", "state_key": "!x:o", "content": {"via": ["o"]}}]
    raw = {
        "room": {"room_id": "!s:o", "num_joined_members": -4, "name": 3, "topic": "t", "world_readable": "yes",
                 "join_rule": "public", "room_type": "m.space", "children_state": child_state, "extra": "dropped",
                 "allowed_room_ids": ["!a:o", 5, "nope"]},
        "children": [{"room_id": "!c1:o", "num_joined_members": 2, "world_readable": True, "guest_can_join": False},
                     {"room_id": "!elsewhere:o", "num_joined_members": 1}, "junk", {"room_id": 4}],
        "inaccessible_children": ["!c2:o", 7, "!unrelated:o"],
    }
    answer = parse_remote_answer(raw, "!s:o")
    assert answer is not None
    assert answer.room == {"room_id": "!s:o", "num_joined_members": 0, "world_readable": False,
                           "guest_can_join": False, "topic": "t", "join_rule": "public", "room_type": "m.space",
                           "allowed_room_ids": ["!a:o"], "children_state": [child_state[1], child_state[0]]}
    assert [c.room_id for c in children_of(answer.room)] == ["!c2:o", "!c1:o"]
    assert list(answer.children) == ["!c1:o"] and answer.children["!c1:o"]["children_state"] == []
    assert answer.inaccessible == {"!c2:o"}
    for bad in (None, [], {"room": {"room_id": "!other:o"}}, {"room": "x"}, {}):
        assert parse_remote_answer(bad, "!s:o") is None, bad
    # not a space: no children
    other = remote_summary({**raw["room"], "room_type": "m.other"})
    assert other is not None and other["children_state"] == []
    assert remote_summary({"room_id": "!s:o", "children_state": "x"}) == {
        "room_id": "!s:o", "num_joined_members": 0, "world_readable": False, "guest_can_join": False,
        "children_state": []}
