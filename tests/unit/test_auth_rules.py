"""Authorization rules for create, power levels, redactions and other events
per room version: a table of cases (membership cases are in
test_auth_rules_membership.py).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from .auth_cases import (
    ALICE,
    ALL,
    BOB,
    CAROL,
    CaseTable,
    DAVE,
    Event,
    RoomVersion,
    V10,
    V11,
    V12,
    create_event,
    ev,
    power_levels,
    room,
    run_case,
)

table = CaseTable()


# --- m.room.create -------------------------------------------------------------

@table.case("create.allowed", None)
def _(rv):  # noqa: ANN001, ANN202
    return create_event(rv), {}


@table.case("create.has_prev_events", "create.has_prev_events")
def _(rv):
    e = create_event(rv)
    return Event({**e.pdu, "prev_events": ["$x"]}, e.event_id, rv), {}


@table.case("create.room_id_domain", "create.room_id_domain", (V10, V11))
def _(rv):
    e = create_event(rv)
    return Event({**e.pdu, "room_id": "!room:other.test"}, e.event_id, rv), {}


@table.case("create.has_room_id (v12)", "create.has_room_id", (V12,))
def _(rv):
    e = create_event(rv)
    return Event({**e.pdu, "room_id": "!create-hash-v12"}, e.event_id, rv), {}


@table.case("create.unknown_room_version", "create.unknown_room_version")
def _(rv):
    return create_event(rv, extra={"room_version": "999"}), {}


@table.case("create.no_creator (v10 needs creator)", "create.no_creator", (V10,))
def _(rv):
    e = create_event(rv)
    content = {k: v for k, v in e.content.items() if k != "creator"}
    return Event({**e.pdu, "content": content}, e.event_id, rv), {}


@table.case("create.no_creator allowed (v11+ implicit creator)", None, (V11, V12))
def _(rv):
    return create_event(rv), {}


@table.case("create.additional_creators invalid (v12)", "create.additional_creators", (V12,))
def _(rv):
    return create_event(rv, extra={"additional_creators": ["not-a-user-id"]}), {}


@table.case("create.additional_creators not a list (v12)", "create.additional_creators", (V12,))
def _(rv):
    return create_event(rv, extra={"additional_creators": DAVE}), {}


@table.case("create.additional_creators valid (v12) / ignored (v10, v11)", None)
def _(rv):
    return create_event(rv, extra={"additional_creators": [DAVE, "@erin:b.test:8448"] if rv is V12 else ["junk"]}), {}


# --- the create event in the state ----------------------------------------------

@table.case("auth_events.no_create", "auth_events.no_create", (V10, V11))
def _(rv):
    state = room(rv)
    del state[("m.room.create", "")]
    return ev(rv, "m.room.message", BOB, {}), state


@table.case("create.room_id_mismatch (v12: no create)", "create.room_id_mismatch", (V12,))
def _(rv):
    state = room(rv)
    del state[("m.room.create", "")]
    return ev(rv, "m.room.message", BOB, {}), state


@table.case("create.room_id_mismatch (v12: create of another room)", "create.room_id_mismatch", (V12,))
def _(rv):
    state = room(rv)
    return ev(rv, "m.room.message", BOB, {}, room_id="!some-other-room"), state


@table.case("auth_events.room_mismatch (create of another room)", "auth_events.room_mismatch", (V10, V11))
def _(rv):
    state = room(rv)
    return ev(rv, "m.room.message", BOB, {}, room_id="!other:a.test"), state


@table.case("auth_events.room_mismatch (member of another room)", "auth_events.room_mismatch")
def _(rv):
    state = room(rv)
    state[("m.room.member", BOB)] = ev(rv, "m.room.member", BOB, {"membership": "join"}, BOB, room_id="!other:a.test")
    return ev(rv, "m.room.message", BOB, {}), state


@table.case("federate false: other server rejected", "federate")
def _(rv):
    return ev(rv, "m.room.message", CAROL, {}), room(rv, create_extra={"m.federate": False}, members={ALICE: "join", CAROL: "join"})


@table.case("federate false: same server allowed", None)
def _(rv):
    return ev(rv, "m.room.message", BOB, {}), room(rv, create_extra={"m.federate": False})


# --- other events: membership, power, state keys ----------------------------------------

@table.case("sender.not_joined", "sender.not_joined")
def _(rv):
    return ev(rv, "m.room.message", CAROL, {}), room(rv)


@table.case("sender.not_joined (invited only)", "sender.not_joined")
def _(rv):
    return ev(rv, "m.room.message", CAROL, {}), room(rv, members={ALICE: "join", CAROL: "invite"})


@table.case("message: allowed at events_default", None)
def _(rv):
    return ev(rv, "m.room.message", BOB, {"body": "hi"}), room(rv)


@table.case("power.event_level (state_default 50)", "power.event_level")
def _(rv):
    return ev(rv, "m.room.topic", BOB, {"topic": "x"}, ""), room(rv)


@table.case("power.event_level (events override)", "power.event_level")
def _(rv):
    return ev(rv, "m.room.message", BOB, {}), room(rv, pl=power_levels(rv, events={"m.room.message": 10}))


@table.case("power: events override lowers a state event", None)
def _(rv):
    return ev(rv, "m.room.topic", BOB, {"topic": "x"}, ""), room(rv, pl=power_levels(rv, events={"m.room.topic": 0}))


@table.case("power: no power levels event, state_default still 50", "power.event_level")
def _(rv):
    return ev(rv, "m.room.topic", BOB, {"topic": "x"}, ""), room(rv, pl=None)


@table.case("power: no power levels event, creator has power", None)
def _(rv):
    return ev(rv, "m.room.topic", ALICE, {"topic": "x"}, ""), room(rv, pl=None)


@table.case("state_key.other_user", "state_key.other_user")
def _(rv):
    return ev(rv, "org.example.profile", BOB, {}, ALICE), room(rv, pl=power_levels(rv, state_default=0))


@table.case("state_key: own user id allowed", None)
def _(rv):
    return ev(rv, "org.example.profile", BOB, {}, BOB), room(rv, pl=power_levels(rv, state_default=0))


@table.case("third_party_invite event: allowed", None)
def _(rv):
    return ev(rv, "m.room.third_party_invite", BOB, {"public_key": "x"}, "tok"), room(rv)


@table.case("third_party_invite.power", "third_party_invite.power")
def _(rv):
    return ev(rv, "m.room.third_party_invite", BOB, {"public_key": "x"}, "tok"), room(rv, pl=power_levels(rv, invite=50))


# --- redactions (no auth-rule special case in v10-v12) ---------------------------------

@table.case("redaction: allowed by the auth rules below the redact level", None)
def _(rv):
    content = {"redacts": "$target"} if rv.redacts_in_content else {}
    top = {} if rv.redacts_in_content else {"redacts": "$target"}
    return ev(rv, "m.room.redaction", BOB, content, **top), room(rv)


@table.case("redaction: subject to events[m.room.redaction]", "power.event_level")
def _(rv):
    return ev(rv, "m.room.redaction", BOB, {"redacts": "$t"}), room(rv, pl=power_levels(rv, events={"m.room.redaction": 50}))


# --- m.room.power_levels ------------------------------------------------------------------

def _pl_change(rv: RoomVersion, users: dict[str, int] | None, sender: str = ALICE, old: Event | None = None, **content: Any) -> tuple[Any, ...]:
    state = room(rv, pl=old if old is not None else True)
    return power_levels(rv, users, sender=sender, **content), state


@table.case("power_levels: first one allowed", None)
def _(rv):
    return power_levels(rv, None), room(rv, pl=None)


@table.case("power_levels: named level not an integer", "power_levels.invalid_level")
def _(rv):
    return _pl_change(rv, None, ban="50")


@table.case("power_levels: named level float", "power_levels.invalid_level")
def _(rv):
    return _pl_change(rv, None, kick=50.5)


@table.case("power_levels: events value not an integer", "power_levels.invalid_map")
def _(rv):
    return _pl_change(rv, None, events={"m.room.name": "50"})


@table.case("power_levels: notifications not an object", "power_levels.invalid_map")
def _(rv):
    return _pl_change(rv, None, notifications=[50])


@table.case("power_levels: users key not a user id", "power_levels.invalid_users")
def _(rv):
    return _pl_change(rv, {"bob": 50})


@table.case("power_levels: users value not an integer", "power_levels.invalid_users")
def _(rv):
    return _pl_change(rv, {BOB: True})


@table.case("power_levels: creator in users (v12)", "power_levels.creator_in_users", (V12,))
def _(rv):
    return _pl_change(rv, {ALICE: 100})


@table.case("power_levels: additional creator in users (v12)", "power_levels.creator_in_users", (V12,))
def _(rv):
    state = room(rv, create_extra={"additional_creators": [DAVE]})
    return power_levels(rv, {DAVE: 50}), state


@table.case("power_levels: creator in users allowed (v10, v11)", None, (V10, V11))
def _(rv):
    return _pl_change(rv, {ALICE: 100, BOB: 50})


@table.case("power_levels: creator raises anyone (v12 infinite)", None, (V12,))
def _(rv):
    return _pl_change(rv, {BOB: 9007199254740991})


@table.case("power_levels: named change, current above sender", "power_levels.named_current_too_high")
def _(rv):
    old = power_levels(rv, {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}, ban=80)
    return _pl_change(rv, {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}, sender=BOB, old=old, ban=40, state_default=50)


@table.case("power_levels: named change, new above sender", "power_levels.named_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    old = power_levels(rv, users, state_default=50)
    return _pl_change(rv, users, sender=BOB, old=old, state_default=50, kick=60)


@table.case("power_levels: named change within sender's level", None)
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    old = power_levels(rv, users, state_default=50)
    return _pl_change(rv, users, sender=BOB, old=old, state_default=50, kick=40)


@table.case("power_levels: events entry removed, current above sender", "power_levels.map_current_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    old = power_levels(rv, users, events={"m.room.name": 100})
    return _pl_change(rv, users, sender=BOB, old=old)


@table.case("power_levels: events entry added above sender", "power_levels.map_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    return _pl_change(rv, users, sender=BOB, old=power_levels(rv, users), events={"m.room.name": 75})


@table.case("power_levels: notifications entry added above sender", "power_levels.map_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    return _pl_change(rv, users, sender=BOB, old=power_levels(rv, users), notifications={"room": 75})


@table.case("power_levels: user at sender's level changed", "power_levels.user_current_too_high")
def _(rv):
    users = {BOB: 50, CAROL: 50} if rv is V12 else {ALICE: 100, BOB: 50, CAROL: 50}
    new = dict(users)
    new[CAROL] = 10
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@table.case("power_levels: own level lowered", None)
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    new = dict(users)
    new[BOB] = 10
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@table.case("power_levels: user raised above sender", "power_levels.user_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    new = dict(users)
    new[CAROL] = 51
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@table.case("power_levels: user raised to sender's level", None)
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    new = dict(users)
    new[CAROL] = 50
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@table.case("power_levels: sender below state_default for the PL event", "power.event_level")
def _(rv):
    users = {BOB: 40} if rv is V12 else {ALICE: 100, BOB: 40}
    return _pl_change(rv, users, sender=BOB, old=power_levels(rv, users))


# --- boundaries found by mutation testing (tools/mutation.py) ---------------------------


def _bob50(rv: RoomVersion) -> dict[str, int]:
    return {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}


@table.case("power_levels: named level equal to the sender's changed", None)
def _(rv):
    old = power_levels(rv, _bob50(rv), state_default=50, kick=50)
    return _pl_change(rv, _bob50(rv), sender=BOB, old=old, state_default=50, kick=40)


@table.case("power_levels: events entry equal to the sender's level changed", None)
def _(rv):
    old = power_levels(rv, _bob50(rv), events={"m.room.name": 50})
    return _pl_change(rv, _bob50(rv), sender=BOB, old=old, events={"m.room.name": 20})


@table.case("power_levels: one of many events entries changed above sender", "power_levels.map_current_too_high")
def _(rv):
    # many unchanged entries: the check must look at every key, whatever the order
    same = {f"org.example.e{i}": 10 for i in range(30)}
    old = power_levels(rv, _bob50(rv), events={**same, "m.room.name": 100})
    return _pl_change(rv, _bob50(rv), sender=BOB, old=old, events={**same, "m.room.name": 10})


@table.case("power_levels: one of many named levels changed above sender", "power_levels.named_current_too_high")
def _(rv):
    old = power_levels(rv, _bob50(rv), state_default=50, invite=0, redact=50, kick=50, ban=100)
    return _pl_change(rv, _bob50(rv), sender=BOB, old=old, state_default=50, invite=0, redact=50, kick=50, ban=10)


@table.case("power_levels: users value a string of digits (v10+ integers only)", "power_levels.invalid_users")
def _(rv):
    users: dict[str, Any] = {**_bob50(rv), CAROL: "50"}
    return _pl_change(rv, users)


@table.case("power_levels: users removed entirely allowed for the creator", None)
def _(rv):
    return ev(rv, "m.room.power_levels", ALICE, {}, ""), room(rv)


@pytest.mark.parametrize(("build", "rv", "rule"), table.params())
def test_auth_rule_case(build: Callable[[RoomVersion], tuple[Any, ...]], rv: RoomVersion, rule: str | None) -> None:
    run_case(build, rv, rule)


def test_every_rejection_case_has_an_allowed_counterpart_per_version() -> None:
    """For each room version, every kind of event a case rejects (its type,
    and for m.room.member its membership) also has a case where that kind of
    event is allowed: a rule that rejected everything of a kind would fail.
    Kinds that no room version allows (no or an unknown membership) are the
    only exceptions."""
    from .test_auth_rules_membership import table as membership_table

    never_allowed = {("m.room.member", None), ("m.room.member", "dance")}

    def kind(event: Event) -> tuple[str, Any]:
        return event.type, event.content.get("membership") if event.type == "m.room.member" else None

    cases = table.cases + membership_table.cases
    for rv in ALL:
        rejected: dict[tuple[str, Any], list[str]] = {}
        allowed: set[tuple[str, Any]] = set()
        for name, versions, build, rule in cases:
            if rv not in versions:
                continue
            event = build(rv)[0]
            if rule is None:
                allowed.add(kind(event))
            else:
                rejected.setdefault(kind(event), []).append(name)
        unpaired = {k: names for k, names in rejected.items() if k not in allowed and k not in never_allowed}
        assert not unpaired, f"v{rv.identifier}: rejections with no allowed case of the same kind: {unpaired}"
        assert set(rejected) - never_allowed <= allowed
        assert never_allowed <= set(rejected)
    assert len(table.params()) + len(membership_table.params()) >= 250


def _slim_cases() -> list[Any]:
    from .test_auth_rules_membership import table as membership_table

    return table.params() + membership_table.params()


@pytest.mark.parametrize(("build", "rv", "rule"), _slim_cases())
def test_auth_rule_case_on_slim_state(
    build: Callable[[RoomVersion], tuple[Any, ...]], rv: RoomVersion, rule: str | None
) -> None:
    """Every case decides the same with its state as a room head caches it
    (``Event.slim``: no hashes, signatures, prev or auth events), so the
    cached heads of services/room_writer.py judge sends as the full events
    would."""

    def slimmed(version: RoomVersion) -> tuple[Any, ...]:
        built = build(version)
        state = {k: e.slim() for k, e in built[1].items()}
        for e in state.values():
            assert "signatures" not in e.pdu and "hashes" not in e.pdu and not e.auth_event_ids
        return (built[0], state, *built[2:])

    run_case(slimmed, rv, rule)

