"""The power-level helpers, redaction permission, user-id checks,
third-party signatures and auth-event list rules."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from nacl.signing import SigningKey

from coffeechat_home.protocol.auth import (
    AuthError,
    auth_state_from_auth_events,
    check_auth_rules,
    check_event_format_for_auth,
    verify_third_party_signed,
)
from coffeechat_home.protocol.power_levels import (
    INFINITE_POWER,
    can_send,
    check_redaction_allowed,
    creators,
    get_named_level,
    get_power_level,
    get_user_power_level,
    is_valid_user_id,
    parse_level,
    required_power_level,
)
from .test_auth_rules_membership import _OTHER_KEY, _TPI_KEY, _TPI_PUBLIC, _signed
from .auth_cases import (
    ALICE,
    ALL,
    BOB,
    CAROL,
    CREATE_ID,
    DAVE,
    ERIN,
    Event,
    RoomVersion,
    V10,
    V11,
    V12,
    ev,
    power_levels,
    room,
)


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_power_level_without_power_levels_event(rv: RoomVersion) -> None:
    state = room(rv, pl=None)
    expected_creator = INFINITE_POWER if rv.privileged_creators else 100
    assert get_power_level(ALICE, state, rv) == expected_creator
    assert get_user_power_level(ALICE, state) == expected_creator
    assert get_power_level(BOB, state, rv) == 0


def test_power_level_v10_creator_comes_from_content() -> None:
    state = room(V10, pl=None, create_extra={"creator": CAROL})
    assert get_power_level(CAROL, state, V10) == 100
    assert get_power_level(ALICE, state, V10) == 0


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_power_level_with_power_levels_event(rv: RoomVersion) -> None:
    state = room(rv, pl=power_levels(rv, {BOB: 0, CAROL: 30}, users_default=7), create_extra={"additional_creators": [DAVE]})
    assert get_power_level(BOB, state, rv) == 0  # an explicit 0 is not the default
    assert get_power_level(CAROL, state, rv) == 30
    assert get_power_level(ERIN, state, rv) == 7
    assert get_power_level(ALICE, state, rv) == (INFINITE_POWER if rv is V12 else 7)
    assert get_power_level(DAVE, state, rv) == (INFINITE_POWER if rv is V12 else 7)


def test_creators_per_version() -> None:
    assert creators(room(V10, create_extra={"additional_creators": [DAVE]})) == {ALICE}
    assert creators(room(V11, create_extra={"additional_creators": [DAVE]})) == {ALICE}
    assert creators(room(V12, create_extra={"additional_creators": [DAVE]})) == {ALICE, DAVE}
    assert creators({}) == frozenset()


def test_named_and_required_levels() -> None:
    state = room(V11, pl=power_levels(V11, events={"m.room.name": 20}, state_default=40))
    assert required_power_level("m.room.name", "", state) == 20
    assert required_power_level("m.room.topic", "", state) == 40
    assert required_power_level("m.room.message", None, state) == 0
    assert get_named_level("ban", state) == 50
    assert get_named_level("invite", state) == 0
    assert get_named_level("redact", room(V11, pl=None)) == 50


def test_can_send() -> None:
    state = room(V11)
    assert can_send(BOB, "m.room.message", None, state)
    assert not can_send(BOB, "m.room.topic", "", state)
    assert can_send(ALICE, "m.room.topic", "", state)
    assert not can_send(CAROL, "m.room.message", None, state)
    assert not can_send(ALICE, "org.example", BOB, state)


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_check_redaction_allowed(rv: RoomVersion) -> None:
    state = room(rv, members={ALICE: "join", BOB: "join", CAROL: "join"})

    def redaction(sender: str, target: str) -> Event:
        if rv.redacts_in_content:  # v11+: `redacts` lives in content
            return ev(rv, "m.room.redaction", sender, {"redacts": target})
        return ev(rv, "m.room.redaction", sender, {}, redacts=target)

    original = ev(rv, "m.room.message", CAROL, {"body": "x"}, event_id="$orig")
    assert check_redaction_allowed(redaction(ALICE, "$orig"), original, state)  # power >= redact
    assert not check_redaction_allowed(redaction(BOB, "$orig"), original, state)  # other server, no power
    assert check_redaction_allowed(redaction(ERIN, "$orig"), original, state)  # same server as original
    assert not check_redaction_allowed(redaction(ALICE, "$other"), original, state)


def test_v11_redacts_read_from_content_only_there() -> None:
    assert ev(V11, "m.room.redaction", BOB, {"redacts": "$a"}).redacts == "$a"
    assert ev(V10, "m.room.redaction", BOB, {"redacts": "$a"}).redacts is None
    assert ev(V10, "m.room.redaction", BOB, {}, redacts="$a").redacts == "$a"


def test_check_event_format_for_auth_non_create() -> None:
    check_event_format_for_auth(ev(V11, "m.room.message", BOB, {}))
    bad = Event({"type": "m.room.message", "sender": BOB, "content": {}}, "$x", V12)
    with pytest.raises(AuthError) as info:
        check_event_format_for_auth(bad)
    assert info.value.rule == "event.room_id"


def test_user_id_validation() -> None:
    assert is_valid_user_id("@alice:example.org")
    assert is_valid_user_id("@a:[::1]:8448")
    assert is_valid_user_id("@Historic=Char$:example.org")
    assert is_valid_user_id("@" + "a" * 250 + ":b.c")  # exactly 255 bytes
    for bad in ("alice:example.org", "@alice", "@:example.org", "@a b:example.org", "@a:exa mple", 5, "@" + "a" * 251 + ":b.c"):
        assert not is_valid_user_id(bad), bad


def test_verify_third_party_signed_directly() -> None:
    signed = _signed(CAROL, "tok")
    assert verify_third_party_signed(signed, _TPI_PUBLIC)
    assert not verify_third_party_signed(signed, "not base64!")
    assert not verify_third_party_signed({"mxid": CAROL}, _TPI_PUBLIC)
    urlsafe = base64.urlsafe_b64encode(bytes(_TPI_KEY.verify_key)).decode().rstrip("=")
    assert verify_third_party_signed(signed, urlsafe)


# --- auth events list -------------------------------------------------------------------------


def _store(*events: Event) -> dict[str, Event]:
    return {e.event_id: e for e in events}


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_auth_state_from_auth_events(rv: RoomVersion) -> None:
    state = room(rv)
    listed = [e.event_id for k, e in state.items() if k in {("m.room.power_levels", ""), ("m.room.member", BOB)}]
    if rv.create_event_in_auth_events:
        listed.append(CREATE_ID[rv])
    event = ev(rv, "m.room.message", BOB, {}, auth_events=listed)
    store = _store(*state.values())
    auth_state = auth_state_from_auth_events(event, store.get)
    assert auth_state[("m.room.create", "")].event_id == CREATE_ID[rv]  # v12: implied by the room id
    assert set(auth_state) == {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", BOB)}
    check_auth_rules(event, auth_state)


def _auth_events_error(rv: RoomVersion, listed: list[str], store: dict[str, Event], **kw: Any) -> str:
    event = ev(rv, "m.room.message", BOB, {}, auth_events=listed)
    with pytest.raises(AuthError) as info:
        auth_state_from_auth_events(event, store.get, **kw)
    return info.value.rule


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_auth_events_list_rules(rv: RoomVersion) -> None:
    state = room(rv)
    store = _store(*state.values())
    pl = state[("m.room.power_levels", "")].event_id
    bob = state[("m.room.member", BOB)].event_id
    alice = state[("m.room.member", ALICE)].event_id
    jr = state[("m.room.join_rules", "")].event_id
    create = [CREATE_ID[rv]] if rv.create_event_in_auth_events else []
    store["$pl2"] = ev(rv, "m.room.power_levels", ALICE, {"users": {}}, "", event_id="$pl2")
    assert _auth_events_error(rv, create + [pl, "$pl2", bob], store) == "auth_events.duplicate"
    assert _auth_events_error(rv, create + [pl, bob, alice], store) == "auth_events.unexpected"
    assert _auth_events_error(rv, create + [pl, bob, jr], store) == "auth_events.unexpected"
    assert _auth_events_error(rv, create + [pl, "$missing"], store) == "auth_events.missing"
    assert _auth_events_error(rv, create + [pl, bob], store, is_rejected=lambda e: e == pl) == "auth_events.rejected"
    foreign = ev(rv, "m.room.power_levels", ALICE, {"users": {}}, "", event_id="$foreign", room_id="!elsewhere:a.test")
    store["$foreign"] = foreign
    assert _auth_events_error(rv, create + ["$foreign", bob], store) == "auth_events.room_mismatch"
    if rv.create_event_in_auth_events:
        assert _auth_events_error(rv, [pl, bob], store) == "auth_events.no_create"
    else:
        # v12: the create event must not be listed, and must exist
        assert _auth_events_error(rv, [CREATE_ID[rv], pl, bob], store) == "auth_events.unexpected"
        rejected_create = CREATE_ID[rv]
        assert _auth_events_error(rv, [pl, bob], store, is_rejected=lambda e: e == rejected_create) == "create.missing"
        del store[CREATE_ID[rv]]
        assert _auth_events_error(rv, [pl, bob], store) == "create.missing"


# --- found by mutation testing (tools/mutation.py) ---------------------------------------------


def _sign_with(key: SigningKey, body: dict[str, Any], key_id: str = "ed25519:0", server: str = "id.test") -> dict[str, Any]:
    """``body`` signed over its canonical JSON (UTF-8, not \\u escapes)."""
    message = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    sig = base64.b64encode(key.sign(message).signature).decode().rstrip("=")
    return {**body, "signatures": {server: {key_id: sig}}}


def _public(key: SigningKey, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(bytes(key.verify_key)).decode().rstrip("=")


def test_third_party_signature_over_non_ascii_is_canonical_utf8() -> None:
    signed = _sign_with(_TPI_KEY, {"mxid": CAROL, "token": "tok", "sender": BOB, "display": "Zoë ☕"})
    assert verify_third_party_signed(signed, _TPI_PUBLIC)


def test_third_party_signature_ignores_unsigned_and_skips_unusable_entries() -> None:
    body = {"mxid": CAROL, "token": "tok", "sender": BOB}
    signed = _sign_with(_TPI_KEY, body)
    signed["unsigned"] = {"added": "later"}
    assert verify_third_party_signed(signed, _TPI_PUBLIC)
    good = signed["signatures"]["id.test"]["ed25519:0"]
    bad = base64.b64encode(_OTHER_KEY.sign(b"x").signature).decode().rstrip("=")
    # unusable blocks and entries before the good one are skipped, not the end of the search
    signed["signatures"] = {
        "a.test": "not an object",
        "b.test": {"curve25519:0": good, "ed25519:1": 5, "ed25519:2": bad, "ed25519:3": "!!!"},
        "id.test": {"ed25519:0": good},
    }
    assert verify_third_party_signed(signed, _TPI_PUBLIC)
    signed["signatures"] = {"b.test": {"curve25519:0": good}, "c.test": {"ed25519:2": bad}}
    assert not verify_third_party_signed(signed, _TPI_PUBLIC)


@pytest.mark.parametrize("seed", [3, 7], ids=["urlsafe-with-underscore", "urlsafe-with-dash"])
def test_third_party_public_key_in_urlsafe_base64(seed: int) -> None:
    key = SigningKey(bytes([seed]) * 32)
    urlsafe = _public(key, urlsafe=True)
    assert ("-" in urlsafe) != ("_" in urlsafe)  # exactly one url-safe character kind
    signed = _sign_with(key, {"mxid": CAROL, "token": "tok", "sender": BOB})
    assert verify_third_party_signed(signed, urlsafe)
    assert verify_third_party_signed(signed, _public(key))


def test_third_party_public_key_with_stray_characters_is_refused() -> None:
    signed = _sign_with(_TPI_KEY, {"mxid": CAROL, "token": "tok", "sender": BOB})
    # lenient base64 would drop the '!' and decode the right key
    assert not verify_third_party_signed(signed, _TPI_PUBLIC[:10] + "!!!!" + _TPI_PUBLIC[10:])


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_auth_event_that_is_not_state(rv: RoomVersion) -> None:
    state = room(rv)
    store = _store(*state.values())
    store["$msg"] = ev(rv, "m.room.message", ALICE, {"body": "x"}, event_id="$msg")
    pl = state[("m.room.power_levels", "")].event_id
    create = [CREATE_ID[rv]] if rv.create_event_in_auth_events else []
    assert _auth_events_error(rv, create + [pl, "$msg"], store) == "auth_events.not_state"


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_auth_events_of_an_invite_and_a_restricted_join(rv: RoomVersion) -> None:
    """The selectable auth events depend on the event's type, state_key and
    content: an invite lists its target's membership, a restricted join its
    authoriser's."""
    state = room(rv, join_rule="restricted", members={ALICE: "join", BOB: "join", CAROL: "leave"})
    store = _store(*state.values())
    create = [CREATE_ID[rv]] if rv.create_event_in_auth_events else []
    ids = {k: e.event_id for k, e in state.items()}
    pl, jr = ids[("m.room.power_levels", "")], ids[("m.room.join_rules", "")]
    invite = ev(rv, "m.room.member", BOB, {"membership": "invite"}, CAROL,
                auth_events=create + [pl, jr, ids[("m.room.member", BOB)], ids[("m.room.member", CAROL)]])
    check_auth_rules(invite, auth_state_from_auth_events(invite, store.get))
    join = ev(rv, "m.room.member", CAROL, {"membership": "join", "join_authorised_via_users_server": BOB}, CAROL,
              auth_events=create + [pl, jr, ids[("m.room.member", CAROL)], ids[("m.room.member", BOB)]])
    check_auth_rules(join, auth_state_from_auth_events(join, store.get))


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_string_levels_are_not_levels_in_v10_and_later(rv: RoomVersion) -> None:
    """v10+ accept JSON integers only: a string anywhere a level goes counts
    as absent (the default applies), as if the key were not there."""
    pl = power_levels(rv, {CAROL: "30"}, users_default="7", ban="20", events={"m.room.name": "5"})  # type: ignore[dict-item]
    state = room(rv, pl=pl)
    assert get_power_level(CAROL, state, rv) == 0
    assert get_power_level(ERIN, state, rv) == 0
    assert get_named_level("ban", state, rv) == 50
    assert required_power_level("m.room.name", "", state, rv) == 50
    assert parse_level(" 42 ", strict=False) == 42
    assert parse_level("4x", strict=False) is None
    assert parse_level("42", strict=True) is None
    assert parse_level(True, strict=False) is None


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_power_level_defaults_with_a_sparse_power_levels_event(rv: RoomVersion) -> None:
    state = room(rv, pl=ev(rv, "m.room.power_levels", ALICE, {}, ""))
    assert get_power_level(ERIN, state, rv) == 0
    assert get_user_power_level(ERIN, state) == 0
    assert get_named_level("kick", state) == 50  # room version from the state's events
    assert required_power_level("m.room.topic", "", state) == 50


def test_creator_field_that_is_not_a_user_id_names_no_creator() -> None:
    assert creators(room(V10, create_extra={"creator": 5})) == frozenset()


def test_can_send_third_party_invite_and_per_type_levels() -> None:
    users = {ALICE: 100, BOB: 50}
    state = room(V11, pl=power_levels(V11, users, invite=50, events={"m.room.topic": 40, "org.example.x": 60}))
    assert can_send(BOB, "m.room.third_party_invite", "tok", state)  # exactly the invite level
    state_high = room(V11, pl=power_levels(V11, users, invite=51))
    assert not can_send(BOB, "m.room.third_party_invite", "tok", state_high)
    assert can_send(BOB, "m.room.topic", "", state)  # events override below state_default 50
    assert not can_send(BOB, "org.example.x", None, state)  # events override above events_default 0


@pytest.mark.parametrize("rv", ALL, ids=lambda rv: f"v{rv.identifier}")
def test_redaction_by_a_user_exactly_at_the_redact_level(rv: RoomVersion) -> None:
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    state = room(rv, pl=power_levels(rv, users, redact=50), members={ALICE: "join", BOB: "join", CAROL: "join"})
    content = {"redacts": "$orig"} if rv.redacts_in_content else {}
    top = {} if rv.redacts_in_content else {"redacts": "$orig"}
    redaction = ev(rv, "m.room.redaction", BOB, content, **top)
    original = ev(rv, "m.room.message", CAROL, {"body": "x"}, event_id="$orig")
    assert check_redaction_allowed(redaction, original, state)


def test_redaction_server_comparison_uses_the_whole_server_name() -> None:
    """Server names with the same port are different servers."""
    state = room(V11, members={ALICE: "join", "@x:one.test:8448": "join"})
    redaction = ev(V11, "m.room.redaction", "@x:one.test:8448", {"redacts": "$orig"})
    original = ev(V11, "m.room.message", "@y:two.test:8448", {"body": "x"}, event_id="$orig")
    assert not check_redaction_allowed(redaction, original, state)
    same = ev(V11, "m.room.message", "@z:one.test:8448", {"body": "x"}, event_id="$orig")
    assert check_redaction_allowed(redaction, same, state)
