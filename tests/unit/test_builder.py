"""Building local events: hashes, signatures, event IDs, v12 specifics, limits."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from coffeechat_home.protocol.builder import (
    EventFormatError,
    EventSizeError,
    build_event,
    check_event_size_limits,
    room_id_for_create_event,
    select_auth_event_ids,
)
from coffeechat_home.protocol.canonical import CanonicalJSONError, encode_canonical_json
from coffeechat_home.protocol.events import Event, create_event_id_for_room
from coffeechat_home.protocol.hashing import check_content_hash, compute_event_id
from coffeechat_home.protocol.identifiers import is_valid_event_id, is_valid_room_id
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from coffeechat_home.protocol.signing import (
    SignatureError,
    generate_signing_key,
    get_verify_key,
    verify_event_signature,
)

SERVER = "hs.example"
KEY = generate_signing_key("t1")
ALL = [ROOM_V10, ROOM_V11, ROOM_V12]


def _build(rv: RoomVersion, template: dict[str, Any], **kw: Any) -> Event:
    args: dict[str, Any] = dict(prev_events=["$p"], auth_events=["$a"], depth=3,
                                origin_server_ts=1_700_000_000_000, server_name=SERVER, signing_key=KEY)
    args.update(kw)
    return build_event(rv, template=template, **args)


def _msg(room_id: str = "!r:hs.example", **extra: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": "@alice:hs.example", "room_id": room_id,
            "content": {"msgtype": "m.text", "body": "héllo 日本"}, **extra}


@pytest.mark.parametrize("rv", ALL)
def test_built_event_is_complete_and_verifies(rv: RoomVersion) -> None:
    template = _msg()
    before = copy.deepcopy(template)
    ev = _build(rv, template)
    pdu = ev.pdu
    assert template == before  # template untouched
    assert set(pdu) == {"type", "sender", "room_id", "content", "prev_events", "auth_events",
                        "depth", "origin_server_ts", "hashes", "signatures"}
    assert "event_id" not in pdu and "origin" not in pdu and "unsigned" not in pdu
    assert check_content_hash(pdu)
    verify_event_signature(pdu, SERVER, get_verify_key(KEY), rv)
    assert ev.event_id == compute_event_id(pdu, rv)  # same id from a fresh computation
    assert is_valid_event_id(ev.event_id, rv)
    assert (ev.depth, ev.prev_event_ids, ev.auth_event_ids) == (3, ["$p"], ["$a"])
    # Deterministic: same inputs -> same event id (ed25519 is deterministic).
    assert _build(rv, _msg()).event_id == ev.event_id
    assert _build(rv, _msg(), depth=4).event_id != ev.event_id
    # Another server's key does not verify it.
    with pytest.raises(SignatureError):
        verify_event_signature(pdu, SERVER, get_verify_key(generate_signing_key("t1")), rv)


def test_event_ids_follow_the_redaction_rules() -> None:
    # We build no `origin`, so a message redacts alike under v10 and v11 rules...
    assert _build(ROOM_V10, _msg()).event_id == _build(ROOM_V11, _msg()).event_id
    # ...but power levels with `invite` do not: v11 keeps it in the redacted form.
    pl = {"type": "m.room.power_levels", "state_key": "", "sender": "@alice:hs.example",
          "room_id": "!r:hs.example", "content": {"users": {"@alice:hs.example": 100}, "invite": 50}}
    v10, v11 = _build(ROOM_V10, pl), _build(ROOM_V11, pl)
    assert v10.pdu["hashes"] == v11.pdu["hashes"]
    assert v10.event_id != v11.event_id
    assert _build(ROOM_V11, pl).event_id == _build(ROOM_V12, pl).event_id


def _create(rv: RoomVersion, **extra: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"type": "m.room.create", "state_key": "", "sender": "@alice:hs.example",
                         "content": {"room_version": rv.identifier}}
    t.update(extra)
    return t


def test_v12_create_event_has_no_room_id_and_defines_it() -> None:
    ev = _build(ROOM_V12, _create(ROOM_V12), prev_events=[], auth_events=[], depth=1)
    assert "room_id" not in ev.pdu
    assert ev.room_id == "!" + ev.event_id[1:]
    assert room_id_for_create_event(ev, ROOM_V12) == ev.room_id
    assert room_id_for_create_event(ev.pdu, ROOM_V12) == ev.room_id  # from the bare PDU too
    assert is_valid_room_id(ev.room_id, ROOM_V12)
    assert create_event_id_for_room(ev.room_id, ROOM_V12) == ev.event_id
    verify_event_signature(ev.pdu, SERVER, get_verify_key(KEY), ROOM_V12)
    # The create event's content survives redaction in v12, so its id covers it.
    other = _build(ROOM_V12, _create(ROOM_V12, content={"room_version": "12", "m.federate": False}),
                   prev_events=[], auth_events=[], depth=1)
    assert other.room_id != ev.room_id


def test_v12_create_event_rejects_room_id() -> None:
    with pytest.raises(EventFormatError, match="create event has no room_id"):
        _build(ROOM_V12, _create(ROOM_V12, room_id="!x:hs.example"))


@pytest.mark.parametrize("rv", [ROOM_V10, ROOM_V11])
def test_pre_v12_create_event_keeps_room_id(rv: RoomVersion) -> None:
    ev = _build(rv, _create(rv, room_id="!abc:hs.example"), prev_events=[], auth_events=[], depth=1)
    assert ev.pdu["room_id"] == ev.room_id == "!abc:hs.example"
    with pytest.raises(EventFormatError, match="not derived from the create event"):
        room_id_for_create_event(ev, rv)
    with pytest.raises(EventFormatError, match="needs a string 'room_id'"):
        _build(rv, _create(rv))


def test_room_id_for_create_event_requires_a_create_event() -> None:
    ev = _build(ROOM_V12, _msg(room_id="!" + "A" * 43))
    with pytest.raises(EventFormatError, match="only the m.room.create event"):
        room_id_for_create_event(ev, ROOM_V12)


@pytest.mark.parametrize("rv", [ROOM_V11, ROOM_V12])
def test_redaction_redacts_in_content_v11_plus(rv: RoomVersion) -> None:
    room = "!r:hs.example" if rv is ROOM_V11 else "!" + "A" * 43
    t = {"type": "m.room.redaction", "sender": "@alice:hs.example", "room_id": room,
         "content": {"reason": "spam"}, "redacts": "$target"}
    ev = _build(rv, t)
    assert ev.pdu["content"] == {"reason": "spam", "redacts": "$target"}
    assert "redacts" not in ev.pdu
    assert ev.redacts == "$target"
    # Already in content is fine too; a disagreement is not.
    t2 = {**t, "content": {"redacts": "$target"}}
    assert _build(rv, t2).pdu["content"] == {"redacts": "$target"}
    with pytest.raises(EventFormatError, match="disagrees"):
        _build(rv, {**t, "content": {"redacts": "$other"}})
    with pytest.raises(EventFormatError, match="need content.redacts"):
        _build(rv, {k: v for k, v in t.items() if k != "redacts"})


def test_redaction_redacts_top_level_v10() -> None:
    t = {"type": "m.room.redaction", "sender": "@alice:hs.example", "room_id": "!r:hs.example",
         "content": {}, "redacts": "$target"}
    ev = _build(ROOM_V10, t)
    assert ev.pdu["redacts"] == "$target" and "redacts" not in ev.pdu["content"]
    assert ev.redacts == "$target"
    with pytest.raises(EventFormatError, match="top-level 'redacts'"):
        _build(ROOM_V10, {k: v for k, v in t.items() if k != "redacts"})


STATE = {
    ("m.room.create", ""): "$create",
    ("m.room.power_levels", ""): "$pl",
    ("m.room.join_rules", ""): "$jr",
    ("m.room.member", "@alice:hs.example"): "$alice",
    ("m.room.member", "@bob:hs.example"): "$bob",
}


@pytest.mark.parametrize(
    "rv, template, expected",
    [
        (ROOM_V11, _msg(), ["$create", "$pl", "$alice"]),
        (ROOM_V12, _msg(), ["$pl", "$alice"]),
        (ROOM_V10, {"type": "m.room.member", "state_key": "@bob:hs.example", "sender": "@alice:hs.example",
                    "content": {"membership": "invite"}}, ["$create", "$pl", "$alice", "$bob", "$jr"]),
        (ROOM_V12, {"type": "m.room.member", "state_key": "@bob:hs.example", "sender": "@alice:hs.example",
                    "content": {"membership": "invite"}}, ["$pl", "$alice", "$bob", "$jr"]),
        (ROOM_V12, {"type": "m.room.member", "state_key": "@carol:hs.example", "sender": "@carol:hs.example",
                    "content": {"membership": "join"}}, ["$pl", "$jr"]),
        (ROOM_V12, _create(ROOM_V12), []),
    ],
)
def test_select_auth_event_ids(rv: RoomVersion, template: dict[str, Any], expected: list[str]) -> None:
    auth = select_auth_event_ids(rv, template, STATE)
    assert auth == expected
    if rv is ROOM_V12:
        assert "$create" not in auth
    if template["type"] != "m.room.create":
        ev = _build(rv, {**template, "room_id": "!" + "A" * 43 if rv is ROOM_V12 else "!r:hs.example"},
                    auth_events=auth)
        assert ev.auth_event_ids == expected


@pytest.mark.parametrize(
    "template, message",
    [
        ({"sender": "@alice:hs.example", "room_id": "!r:hs.example", "content": {}}, "non-empty string 'type'"),
        ({"type": "", "sender": "@alice:hs.example", "room_id": "!r:hs.example"}, "non-empty string 'type'"),
        ({"type": "m.x", "room_id": "!r:hs.example"}, "string 'sender'"),
        ({"type": "m.x", "sender": "alice", "room_id": "!r:hs.example"}, "bad sender"),
        ({"type": "m.x", "sender": "@alice:elsewhere.org", "room_id": "!r:hs.example"}, "not a user of hs.example"),
        ({"type": "m.x", "sender": "@alice:hs.example", "room_id": "!r:hs.example", "content": []}, "must be an object"),
        ({"type": "m.x", "sender": "@alice:hs.example", "room_id": "!r:hs.example", "state_key": 1}, "'state_key' must be"),
        ({"type": "m.x", "sender": "@alice:hs.example", "room_id": "!r:hs.example", "depth": 1}, "unexpected event template keys"),
        ({"type": "m.x", "sender": "@alice:hs.example", "room_id": "!r:hs.example", "redacts": 5}, "'redacts' must be"),
    ],
)
def test_template_errors(template: dict[str, Any], message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        _build(ROOM_V11, template)


def test_argument_errors() -> None:
    with pytest.raises(EventFormatError, match="'prev_events' must be a list"):
        _build(ROOM_V11, _msg(), prev_events="$p")
    with pytest.raises(EventFormatError, match="'auth_events' must be a list"):
        _build(ROOM_V11, _msg(), auth_events=[1])
    with pytest.raises(EventFormatError, match="'depth' must be a non-negative integer"):
        _build(ROOM_V11, _msg(), depth=True)
    with pytest.raises(EventFormatError, match="'origin_server_ts' must be"):
        _build(ROOM_V11, _msg(), origin_server_ts=-1)
    with pytest.raises(CanonicalJSONError, match="integer out of range at depth"):
        _build(ROOM_V11, _msg(), depth=2**53)
    with pytest.raises(CanonicalJSONError, match="float value not allowed at content.x"):
        _build(ROOM_V11, {**_msg(), "content": {"x": 0.5}})


def test_size_limits() -> None:
    # Just under the limit builds; just over fails, counting signatures.
    base = _build(ROOM_V11, {**_msg(), "content": {"body": ""}})
    room = len(encode_canonical_json(base.pdu))
    fits = 65536 - room
    ev = _build(ROOM_V11, {**_msg(), "content": {"body": "x" * fits}})
    assert len(encode_canonical_json(ev.pdu)) == 65536
    with pytest.raises(EventSizeError, match="65537 bytes as canonical JSON; the limit is 65536"):
        _build(ROOM_V11, {**_msg(), "content": {"body": "x" * (fits + 1)}})
    # Multi-byte text counts in bytes.
    with pytest.raises(EventSizeError):
        _build(ROOM_V11, {**_msg(), "content": {"body": "日" * (fits // 3 + 1)}})


@pytest.mark.parametrize("field", ["type", "state_key", "room_id", "sender", "event_id"])
def test_field_size_limits(field: str) -> None:
    pdu = {"type": "m.x", "state_key": "", "room_id": "!r:x", "sender": "@a:x", "event_id": "$e"}
    check_event_size_limits(pdu)
    check_event_size_limits({**pdu, field: "é" * 127})  # 254 bytes
    with pytest.raises(EventSizeError, match=f"'{field}' is 256 bytes; the limit is 255"):
        check_event_size_limits({**pdu, field: "é" * 128})


def test_field_size_limit_via_builder() -> None:
    with pytest.raises(EventSizeError, match="'state_key' is 300 bytes"):
        _build(ROOM_V11, {**_msg(), "type": "m.x", "state_key": "k" * 300})
    with pytest.raises(EventSizeError, match="'event_id' is 300 bytes"):
        check_event_size_limits({"type": "m.x"}, event_id="$" + "e" * 299)


@pytest.mark.parametrize("rv", ALL)
def test_slim_event_keeps_what_state_is_read_for(rv: RoomVersion) -> None:
    """A room head's cached state (Event.slim) keeps what the auth rules and
    the membership checks read, without the signatures, hashes, prev and
    auth events that only sending and storing need."""
    full = _build(rv, {"type": "m.room.member", "sender": "@bob:hs.example", "state_key": "@bob:hs.example",
                       "room_id": "!r:hs.example", "content": {"membership": "join", "displayname": "Bob"}})
    slim = full.slim()
    assert {"signatures", "hashes", "prev_events", "auth_events"} <= set(full.pdu)
    assert not {"signatures", "hashes", "prev_events", "auth_events"} & set(slim.pdu)
    for attr in ("event_id", "room_id", "type", "state_key", "sender", "content", "depth", "origin_server_ts",
                 "membership", "room_version", "redacts"):
        assert getattr(slim, attr) == getattr(full, attr), attr
    assert slim.slim() is slim
    assert full.pdu["signatures"]  # the full event is untouched
