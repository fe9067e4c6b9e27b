"""Checks on received PDUs: format, required signatures, content hash."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from coffeechat_home.protocol.errors import EventFormatError, SignatureError
from coffeechat_home.protocol.hashing import add_content_hash, compute_event_id
from coffeechat_home.protocol.pdu import (
    MAX_AUTH_EVENTS,
    MAX_PREV_EVENTS,
    check_pdu_format,
    check_received_pdu,
    servers_that_must_sign,
    signing_requirements,
)
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion
from coffeechat_home.protocol.signing import (
    SigningKey,
    VerifyKey,
    generate_signing_key,
    get_verify_key,
    hash_and_sign_event,
    key_id_of,
    sign_event,
)

REMOTE = "remote.example"
OTHER = "other.example"
PARENT = "$" + "A" * 43
ROOMS = {ROOM_V10: "!room:remote.example", ROOM_V11: "!room:remote.example", ROOM_V12: "!" + "B" * 42 + "A"}
VERSIONS = [ROOM_V10, ROOM_V11, ROOM_V12]


class Keys:
    def __init__(self) -> None:
        self.signing: dict[str, SigningKey] = {REMOTE: generate_signing_key("a1"), OTHER: generate_signing_key("b1")}

    def lookup(self, server: str, key_id: str) -> VerifyKey | None:
        key = self.signing.get(server)
        return get_verify_key(key) if key is not None and key_id_of(key) == key_id else None


def _pdu(room_version: RoomVersion, **over: Any) -> dict[str, Any]:
    pdu: dict[str, Any] = {
        "room_id": ROOMS[room_version],
        "sender": "@alice:remote.example",
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": "hello"},
        "depth": 5,
        "origin_server_ts": 1_700_000_000_000,
        "prev_events": [PARENT],
        "auth_events": [PARENT],
    }
    pdu.update(over)
    return pdu


def _signed(keys: Keys, pdu: dict[str, Any], rv: RoomVersion, *servers: str) -> dict[str, Any]:
    out = add_content_hash(pdu)
    for server in servers or (REMOTE,):
        out = sign_event(out, server, keys.signing[server], rv)
    return out


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_a_good_pdu_passes_unredacted(rv: RoomVersion) -> None:
    keys = Keys()
    pdu = hash_and_sign_event(_pdu(rv), REMOTE, keys.signing[REMOTE], rv)
    got = check_received_pdu(pdu, rv, keys.lookup)
    assert not got.redacted
    assert got.event.event_id == compute_event_id(pdu, rv)
    assert got.event.content["body"] == "hello"


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_a_wrong_content_hash_redacts_but_keeps_the_event(rv: RoomVersion) -> None:
    keys = Keys()
    pdu = hash_and_sign_event(_pdu(rv), REMOTE, keys.signing[REMOTE], rv)
    tampered = copy.deepcopy(pdu)
    tampered["content"]["body"] = "changed in transit"  # the signature covers the redacted form only
    got = check_received_pdu(tampered, rv, keys.lookup)
    assert got.redacted
    assert got.event.content == {}
    assert got.event.event_id == compute_event_id(pdu, rv)  # same id: ids hash the redacted form


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_signature_failures_drop_the_pdu(rv: RoomVersion) -> None:
    keys = Keys()
    pdu = hash_and_sign_event(_pdu(rv), REMOTE, keys.signing[REMOTE], rv)
    # a change to a field the signature covers
    forged = copy.deepcopy(pdu)
    forged["depth"] = 6
    with pytest.raises(SignatureError, match="no valid signature from remote.example"):
        check_received_pdu(forged, rv, keys.lookup)
    # signed by the wrong server only
    wrong = _signed(keys, _pdu(rv), rv, OTHER)
    with pytest.raises(SignatureError, match="not signed by remote.example"):
        check_received_pdu(wrong, rv, keys.lookup)
    # a key the lookup does not know (or not valid at the event's time)
    with pytest.raises(SignatureError, match="unknown or not valid"):
        check_received_pdu(pdu, rv, lambda server, key_id: None)
    # the same key id with another key (a server that lost its key)
    with pytest.raises(SignatureError, match="bad signature"):
        check_received_pdu(pdu, rv, Keys().lookup)


def test_one_good_signature_per_server_is_enough_while_keys_rotate() -> None:
    rv = ROOM_V11
    keys = Keys()
    old = generate_signing_key("old")
    pdu = sign_event(hash_and_sign_event(_pdu(rv), REMOTE, old, rv), REMOTE, keys.signing[REMOTE], rv)
    assert sorted(pdu["signatures"][REMOTE]) == ["ed25519:a1", "ed25519:old"]
    assert not check_received_pdu(pdu, rv, keys.lookup).redacted


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_a_restricted_join_needs_the_authorising_server_too(rv: RoomVersion) -> None:
    keys = Keys()
    join = _pdu(
        rv, type="m.room.member", state_key="@alice:remote.example",
        content={"membership": "join", "join_authorised_via_users_server": "@mod:other.example"},
    )
    assert servers_that_must_sign(join, rv) == {REMOTE, OTHER}
    only_sender = _signed(keys, join, rv, REMOTE)
    assert signing_requirements(only_sender, rv) == {OTHER: [], REMOTE: ["ed25519:a1"]}
    with pytest.raises(SignatureError, match="not signed by other.example"):
        check_received_pdu(only_sender, rv, keys.lookup)
    both = _signed(keys, join, rv, REMOTE, OTHER)
    assert not check_received_pdu(both, rv, keys.lookup).redacted
    # a plain join needs the sender only
    plain = _pdu(rv, type="m.room.member", state_key="@alice:remote.example", content={"membership": "join"})
    assert servers_that_must_sign(plain, rv) == {REMOTE}


def _bad(rv: RoomVersion) -> list[tuple[str, dict[str, Any]]]:
    base = _pdu(rv)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("missing type", {k: v for k, v in base.items() if k != "type"}),
        ("content not an object", {**base, "content": []}),
        ("depth a string", {**base, "depth": "5"}),
        ("depth negative", {**base, "depth": -1}),
        ("depth a bool", {**base, "depth": True}),
        ("ts missing", {k: v for k, v in base.items() if k != "origin_server_ts"}),
        ("state_key not a string", {**base, "state_key": 5}),
        ("event_id present", {**base, "event_id": PARENT}),
        ("prev_events not a list", {**base, "prev_events": PARENT}),
        ("prev event id invalid", {**base, "prev_events": ["$short"]}),
        ("too many prev_events", {**base, "prev_events": [PARENT] * (MAX_PREV_EVENTS + 1)}),
        ("too many auth_events", {**base, "auth_events": [PARENT] * (MAX_AUTH_EVENTS + 1)}),
        ("sender invalid", {**base, "sender": "alice"}),
        ("room_id missing", {k: v for k, v in base.items() if k != "room_id"}),
        ("room_id invalid", {**base, "room_id": "room"}),
        ("float in content", {**base, "content": {"x": 1.5}}),
        ("too big", {**base, "content": {"body": "x" * 70_000}}),
    ]
    return cases


@pytest.mark.parametrize("rv", VERSIONS, ids=lambda v: f"v{v.identifier}")
def test_malformed_pdus_are_refused(rv: RoomVersion) -> None:
    keys = Keys()
    for what, pdu in _bad(rv):
        signed = dict(pdu, hashes={"sha256": "x"}, signatures={REMOTE: {"ed25519:a1": "x"}})
        with pytest.raises(EventFormatError):
            check_pdu_format(signed, rv)
            pytest.fail(f"accepted: {what}")
        with pytest.raises(EventFormatError):
            check_received_pdu(signed, rv, keys.lookup)
    for what, extra in (("no hashes", {"hashes": None}), ("signatures not a map", {"signatures": ["x"]})):
        pdu = {**_signed(keys, _pdu(rv), rv), **extra}
        with pytest.raises(EventFormatError):
            check_pdu_format(pdu, rv)
            pytest.fail(f"accepted: {what}")
    with pytest.raises(EventFormatError):
        check_pdu_format(["not", "an", "object"], rv)


def test_v12_create_events_carry_no_room_id() -> None:
    rv = ROOM_V12
    keys = Keys()
    create: dict[str, Any] = {
        "sender": "@alice:remote.example", "type": "m.room.create", "state_key": "",
        "content": {"room_version": "12"}, "depth": 1, "origin_server_ts": 1_700_000_000_000,
        "prev_events": [], "auth_events": [],
    }
    signed = _signed(keys, create, rv)
    got = check_received_pdu(signed, rv, keys.lookup)
    assert got.event.room_id == "!" + got.event.event_id[1:]
    with pytest.raises(EventFormatError, match="carries no room_id"):
        check_pdu_format({**signed, "room_id": "!" + "C" * 42 + "A"}, rv)
    with pytest.raises(EventFormatError, match="no prev_events"):
        check_pdu_format({**signed, "prev_events": [PARENT]}, rv)
    # in v11 a create event without room_id is malformed
    with pytest.raises(EventFormatError, match="room_id"):
        check_pdu_format(_signed(keys, dict(create, content={"room_version": "11"}), ROOM_V11), ROOM_V11)
