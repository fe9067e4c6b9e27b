"""The redaction algorithm: spec-derived vectors and v10 vs v11+ differences."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from coffeechat_home.protocol.redaction import redact, redact_content
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

V11_PLUS = [ROOM_V11, ROOM_V12]


@pytest.mark.needs_spec
def test_redaction_vectors(spec_dir: Path, redaction_vector: dict[str, Any]) -> None:
    v = redaction_vector
    before = copy.deepcopy(v["input"])
    assert redact(v["input"], ROOM_V10) == v["expected_pre_v11"]
    for rv in V11_PLUS:
        assert redact(v["input"], rv) == v["expected_v11_plus"]
    assert v["input"] == before  # input untouched


def _event(event_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "state_key": "",
        "sender": "@a:x",
        "room_id": "!r:x",
        "content": content,
        "origin": "x",
        "origin_server_ts": 1,
        "membership": "join",
        "prev_state": [],
        "depth": 1,
        "prev_events": [],
        "auth_events": [],
        "hashes": {"sha256": "h"},
        "signatures": {"x": {"ed25519:a": "s"}},
        "unsigned": {"age": 5},
        "redacts": "$e",
        "extra_key": 1,
        **extra,
    }


COMMON_TOP = {"type", "state_key", "sender", "room_id", "content", "origin_server_ts", "depth",
              "prev_events", "auth_events", "hashes", "signatures"}


def test_top_level_keys_per_version() -> None:
    ev = _event("m.room.message", {"body": "hi"}, event_id="$e:x")
    assert set(redact(ev, ROOM_V10)) == COMMON_TOP | {"origin", "membership", "prev_state", "event_id"}
    for rv in V11_PLUS:
        assert set(redact(ev, rv)) == COMMON_TOP | {"event_id"}
    for rv in (ROOM_V10, *V11_PLUS):
        assert redact(ev, rv)["content"] == {}


CREATE = {"creator": "@a:x", "room_version": "10", "m.federate": False, "predecessor": {"room_id": "!o:x"}}
PL = {"ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 0, "kick": 50,
      "redact": 50, "state_default": 50, "users": {"@a:x": 100}, "users_default": 0,
      "notifications": {"room": 50}}
MEMBER = {"membership": "join", "displayname": "A", "avatar_url": "mxc://x/y",
          "join_authorised_via_users_server": "@b:x",
          "third_party_invite": {"display_name": "d", "signed": {"token": "t", "mxid": "@a:x"}}}


@pytest.mark.parametrize(
    "event_type, content, v10, v11",
    [
        ("m.room.create", CREATE, {"creator": "@a:x"}, CREATE),
        ("m.room.power_levels", PL,
         {k: v for k, v in PL.items() if k not in ("invite", "notifications")},
         {k: v for k, v in PL.items() if k != "notifications"}),
        ("m.room.member", MEMBER,
         {"membership": "join", "join_authorised_via_users_server": "@b:x"},
         {"membership": "join", "join_authorised_via_users_server": "@b:x",
          "third_party_invite": {"signed": {"token": "t", "mxid": "@a:x"}}}),
        ("m.room.join_rules", {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1},
         {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
         {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]}),
        ("m.room.history_visibility", {"history_visibility": "shared", "x": 1},
         {"history_visibility": "shared"}, {"history_visibility": "shared"}),
        ("m.room.redaction", {"redacts": "$e", "reason": "spam"}, {}, {"redacts": "$e"}),
        ("m.room.name", {"name": "n"}, {}, {}),
        ("m.room.topic", {"topic": "t"}, {}, {}),
    ],
)
def test_content_keys_per_version(
    event_type: str, content: dict[str, Any], v10: dict[str, Any], v11: dict[str, Any]
) -> None:
    ev = _event(event_type, copy.deepcopy(content))
    assert redact(ev, ROOM_V10)["content"] == v10
    for rv in V11_PLUS:
        assert redact(ev, rv)["content"] == v11
    assert ev["content"] == content  # not mutated


def test_member_third_party_invite_without_signed() -> None:
    content = {"membership": "invite", "third_party_invite": {"display_name": "d"}}
    for rv in V11_PLUS:
        assert redact_content("m.room.member", content, rv) == {"membership": "invite"}
    assert redact_content("m.room.member", {"membership": "invite", "third_party_invite": "x"},
                          ROOM_V11) == {"membership": "invite"}


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11, ROOM_V12])
def test_malformed_content_and_missing_keys(rv: RoomVersion) -> None:
    assert redact({"type": "m.room.create", "content": "nope"}, rv) == {"type": "m.room.create", "content": {}}
    assert redact({"type": "m.room.member"}, rv) == {"type": "m.room.member", "content": {}}
    assert redact({"content": {"a": 1}}, rv) == {"content": {}}


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11, ROOM_V12])
def test_redaction_is_idempotent(rv: RoomVersion) -> None:
    for ev in (_event("m.room.power_levels", PL), _event("m.room.member", MEMBER),
               _event("m.room.create", CREATE)):
        once = redact(ev, rv)
        assert redact(once, rv) == once
