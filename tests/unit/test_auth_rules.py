"""Authorization rules for room versions 10, 11 and 12: a table of cases.

Each case builds an event and the state it is checked against for one room
version and names the rule it must fail (``None``: allowed). Version
differences appear as cases run on a subset of versions with different
outcomes.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import pytest
from nacl.signing import SigningKey

from coffeechat_home.protocol.auth import (
    INFINITE_POWER,
    AuthError,
    auth_state_from_auth_events,
    can_send,
    check_auth_rules,
    check_event_format_for_auth,
    check_redaction_allowed,
    creators,
    get_named_level,
    get_power_level,
    get_user_power_level,
    is_valid_user_id,
    required_power_level,
    verify_third_party_signed,
)
from coffeechat_home.protocol.events import Event, StateKey
from coffeechat_home.protocol.room_versions import ROOM_V10, ROOM_V11, ROOM_V12, RoomVersion

V10, V11, V12 = ROOM_V10, ROOM_V11, ROOM_V12
ALL = (V10, V11, V12)

ALICE = "@alice:a.test"  # creator
BOB = "@bob:a.test"
CAROL = "@carol:b.test"
DAVE = "@dave:c.test"
ERIN = "@erin:b.test"

CREATE_ID = {V10: "$create", V11: "$create", V12: "$create-hash-v12"}
ROOM_ID = {V10: "!room:a.test", V11: "!room:a.test", V12: "!create-hash-v12"}

State = dict[StateKey, Event]

_counter = iter(range(10**9))


def ev(
    rv: RoomVersion,
    type_: str,
    sender: str,
    content: dict[str, Any],
    state_key: str | None = None,
    *,
    prev: list[str] | None = None,
    event_id: str | None = None,
    room_id: str | None = None,
    **top: Any,
) -> Event:
    pdu: dict[str, Any] = {
        "type": type_,
        "sender": sender,
        "content": content,
        "room_id": room_id or ROOM_ID[rv],
        "prev_events": prev if prev is not None else ["$prev"],
        "auth_events": [],
        "depth": 5,
        "origin_server_ts": 1000,
        **top,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    return Event(pdu, event_id or f"$e{next(_counter)}", rv)


def create_event(rv: RoomVersion, sender: str = ALICE, extra: dict[str, Any] | None = None) -> Event:
    content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        content["creator"] = sender
    content.update(extra or {})
    pdu: dict[str, Any] = {
        "type": "m.room.create",
        "state_key": "",
        "sender": sender,
        "content": content,
        "prev_events": [],
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": 0,
    }
    if rv is not V12:
        pdu["room_id"] = ROOM_ID[rv]
    return Event(pdu, CREATE_ID[rv], rv)


def member(rv: RoomVersion, user: str, membership: str, sender: str | None = None, **content: Any) -> Event:
    return ev(rv, "m.room.member", sender or user, {"membership": membership, **content}, user)


def power_levels(rv: RoomVersion, users: dict[str, int] | None = None, sender: str = ALICE, **content: Any) -> Event:
    """Alice at 100 in v10/v11; in v12 she is creator and left out."""
    if users is None:
        users = {} if rv.privileged_creators else {ALICE: 100}
    return ev(rv, "m.room.power_levels", sender, {"users": users, **content}, "")


def room(
    rv: RoomVersion,
    *,
    join_rule: str | None = "public",
    members: dict[str, str] | None = None,
    pl: Event | None | bool = True,
    create_extra: dict[str, Any] | None = None,
    extra: list[Event] = (),  # type: ignore[assignment]
) -> State:
    """A room state: create (Alice), power levels, join rules, members."""
    events = [create_event(rv, extra=create_extra)]
    if pl is True:
        events.append(power_levels(rv))
    elif isinstance(pl, Event):
        events.append(pl)
    if join_rule is not None:
        events.append(ev(rv, "m.room.join_rules", ALICE, {"join_rule": join_rule}, ""))
    for user, m in (members if members is not None else {ALICE: "join", BOB: "join"}).items():
        events.append(member(rv, user, m))
    events.extend(extra)
    return {(e.type, e.state_key): e for e in events}  # type: ignore[misc]


Case = tuple[str, tuple[RoomVersion, ...], Callable[[RoomVersion], tuple[Any, ...]], str | None]
CASES: list[Case] = []


def case(name: str, rule: str | None, versions: tuple[RoomVersion, ...] = ALL) -> Callable[..., Any]:
    def register(fn: Callable[[RoomVersion], tuple[Any, ...]]) -> Callable[..., Any]:
        CASES.append((name, versions, fn, rule))
        return fn

    return register


# --- m.room.create -------------------------------------------------------------

@case("create.allowed", None)
def _(rv):  # noqa: ANN001, ANN202
    return create_event(rv), {}


@case("create.has_prev_events", "create.has_prev_events")
def _(rv):
    e = create_event(rv)
    return Event({**e.pdu, "prev_events": ["$x"]}, e.event_id, rv), {}


@case("create.room_id_domain", "create.room_id_domain", (V10, V11))
def _(rv):
    e = create_event(rv)
    return Event({**e.pdu, "room_id": "!room:other.test"}, e.event_id, rv), {}


@case("create.has_room_id (v12)", "create.has_room_id", (V12,))
def _(rv):
    e = create_event(rv)
    return Event({**e.pdu, "room_id": "!create-hash-v12"}, e.event_id, rv), {}


@case("create.unknown_room_version", "create.unknown_room_version")
def _(rv):
    return create_event(rv, extra={"room_version": "999"}), {}


@case("create.no_creator (v10 needs creator)", "create.no_creator", (V10,))
def _(rv):
    e = create_event(rv)
    content = {k: v for k, v in e.content.items() if k != "creator"}
    return Event({**e.pdu, "content": content}, e.event_id, rv), {}


@case("create.no_creator allowed (v11+ implicit creator)", None, (V11, V12))
def _(rv):
    return create_event(rv), {}


@case("create.additional_creators invalid (v12)", "create.additional_creators", (V12,))
def _(rv):
    return create_event(rv, extra={"additional_creators": ["not-a-user-id"]}), {}


@case("create.additional_creators not a list (v12)", "create.additional_creators", (V12,))
def _(rv):
    return create_event(rv, extra={"additional_creators": DAVE}), {}


@case("create.additional_creators valid (v12) / ignored (v10, v11)", None)
def _(rv):
    return create_event(rv, extra={"additional_creators": [DAVE, "@erin:b.test:8448"] if rv is V12 else ["junk"]}), {}


# --- the create event in the state ----------------------------------------------

@case("auth_events.no_create", "auth_events.no_create", (V10, V11))
def _(rv):
    state = room(rv)
    del state[("m.room.create", "")]
    return ev(rv, "m.room.message", BOB, {}), state


@case("create.room_id_mismatch (v12: no create)", "create.room_id_mismatch", (V12,))
def _(rv):
    state = room(rv)
    del state[("m.room.create", "")]
    return ev(rv, "m.room.message", BOB, {}), state


@case("create.room_id_mismatch (v12: create of another room)", "create.room_id_mismatch", (V12,))
def _(rv):
    state = room(rv)
    return ev(rv, "m.room.message", BOB, {}, room_id="!some-other-room"), state


@case("auth_events.room_mismatch (create of another room)", "auth_events.room_mismatch", (V10, V11))
def _(rv):
    state = room(rv)
    return ev(rv, "m.room.message", BOB, {}, room_id="!other:a.test"), state


@case("auth_events.room_mismatch (member of another room)", "auth_events.room_mismatch")
def _(rv):
    state = room(rv)
    state[("m.room.member", BOB)] = ev(rv, "m.room.member", BOB, {"membership": "join"}, BOB, room_id="!other:a.test")
    return ev(rv, "m.room.message", BOB, {}), state


@case("federate false: other server rejected", "federate")
def _(rv):
    return ev(rv, "m.room.message", CAROL, {}), room(rv, create_extra={"m.federate": False}, members={ALICE: "join", CAROL: "join"})


@case("federate false: same server allowed", None)
def _(rv):
    return ev(rv, "m.room.message", BOB, {}), room(rv, create_extra={"m.federate": False})


# --- m.room.member: basics and join -----------------------------------------------

@case("member.no_state_key", "member.no_state_key")
def _(rv):
    return ev(rv, "m.room.member", BOB, {"membership": "join"}), room(rv)


@case("member.no_membership", "member.no_membership")
def _(rv):
    return ev(rv, "m.room.member", BOB, {}, BOB), room(rv)


@case("member.unknown_membership", "member.unknown_membership")
def _(rv):
    return member(rv, BOB, "dance"), room(rv)


@case("join: creator's first join after create", None)
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={})
    return ev(rv, "m.room.member", ALICE, {"membership": "join"}, ALICE, prev=[CREATE_ID[rv]]), state


@case("join: content.creator's first join (v10) ", None, (V10,))
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={}, create_extra={"creator": CAROL})
    return ev(rv, "m.room.member", CAROL, {"membership": "join"}, CAROL, prev=[CREATE_ID[rv]]), state


@case("join: content.creator is ignored (v11+): not invited", "member.join.not_invited", (V11, V12))
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={}, create_extra={"creator": CAROL})
    return ev(rv, "m.room.member", CAROL, {"membership": "join"}, CAROL, prev=[CREATE_ID[rv]]), state


@case("join: not first event after create", "member.join.not_invited")
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={})
    return ev(rv, "m.room.member", ALICE, {"membership": "join"}, ALICE, prev=["$something-else"]), state


@case("member.join.sender_mismatch", "member.join.sender_mismatch")
def _(rv):
    return member(rv, CAROL, "join", sender=BOB), room(rv)


@case("member.join.banned", "member.join.banned")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, members={ALICE: "join", CAROL: "ban"})


@case("join public: allowed", None)
def _(rv):
    return member(rv, CAROL, "join"), room(rv)


@case("join invite rule: invited allowed", None)
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="invite", members={ALICE: "join", CAROL: "invite"})


@case("join invite rule: re-join of joined allowed", None)
def _(rv):
    return member(rv, BOB, "join", displayname="B"), room(rv, join_rule="invite")


@case("join invite rule: not invited", "member.join.not_invited")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="invite")


@case("join knock rule: invited allowed", None)
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "invite"})


@case("join knock rule: knocked only", "member.join.not_invited")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "knock"})


@case("join no join_rules event: treated as invite", "member.join.not_invited")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule=None)


@case("join unknown join rule", "member.join.join_rule")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="private")


for _rule in ("restricted", "knock_restricted"):

    @case(f"join {_rule}: authorised by joined inviter", None)
    def _(rv, _rule=_rule):
        return (
            member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
            room(rv, join_rule=_rule),
        )

    @case(f"join {_rule}: already invited, no authoriser needed", None)
    def _(rv, _rule=_rule):
        return member(rv, CAROL, "join"), room(rv, join_rule=_rule, members={ALICE: "join", CAROL: "invite"})

    @case(f"join {_rule}: no authoriser", "member.join.no_authoriser")
    def _(rv, _rule=_rule):
        return member(rv, CAROL, "join"), room(rv, join_rule=_rule)

    @case(f"join {_rule}: authoriser not joined", "member.join.authoriser_not_joined")
    def _(rv, _rule=_rule):
        return (
            member(rv, CAROL, "join", join_authorised_via_users_server=DAVE),
            room(rv, join_rule=_rule),
        )

    @case(f"join {_rule}: authoriser may not invite", "member.join.authoriser_power")
    def _(rv, _rule=_rule):
        pl = power_levels(rv, invite=50)
        return (
            member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
            room(rv, join_rule=_rule, pl=pl),
        )


@case("join authoriser signature check fails", "member.authorising_server_signature")
def _(rv):
    return (
        member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
        room(rv, join_rule="restricted"),
        {"is_signed_by_server": lambda event, server: False},
    )


@case("join authoriser signature check passes for the authoriser's server", None)
def _(rv):
    return (
        member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
        room(rv, join_rule="restricted"),
        {"is_signed_by_server": lambda event, server: server == "a.test"},
    )


# --- invite ----------------------------------------------------------------------

@case("invite: allowed", None)
def _(rv):
    return member(rv, CAROL, "invite", sender=BOB), room(rv)


@case("member.invite.sender_not_joined", "member.invite.sender_not_joined")
def _(rv):
    return member(rv, CAROL, "invite", sender=DAVE), room(rv)


@case("member.invite.target_joined", "member.invite.target_joined_or_banned")
def _(rv):
    return member(rv, ALICE, "invite", sender=BOB), room(rv)


@case("member.invite.target_banned", "member.invite.target_joined_or_banned")
def _(rv):
    return member(rv, CAROL, "invite", sender=BOB), room(rv, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@case("member.invite.power", "member.invite.power")
def _(rv):
    return member(rv, CAROL, "invite", sender=BOB), room(rv, pl=power_levels(rv, invite=50))


# --- third-party invites -----------------------------------------------------------

_TPI_KEY = SigningKey(b"\x01" * 32)
_TPI_PUBLIC = base64.b64encode(bytes(_TPI_KEY.verify_key)).decode().rstrip("=")
_OTHER_KEY = SigningKey(b"\x02" * 32)


def _signed(mxid: str, token: str, key: SigningKey = _TPI_KEY) -> dict[str, Any]:
    body = {"mxid": mxid, "token": token, "sender": BOB}
    message = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = base64.b64encode(key.sign(message).signature).decode().rstrip("=")
    return {**body, "signatures": {"id.test": {"ed25519:0": sig}}}


def _tpi_state(rv: RoomVersion, sender: str = BOB, key_field: str = "public_key", **kw: Any) -> State:
    content: dict[str, Any] = {"display_name": "c...@example.org", "key_validity_url": "https://id.test/isvalid"}
    if key_field == "public_key":
        content["public_key"] = _TPI_PUBLIC
    else:
        content["public_keys"] = [{"public_key": "AAAA"}, {"public_key": _TPI_PUBLIC}]
    tpi = ev(rv, "m.room.third_party_invite", sender, content, "tok")
    return room(rv, extra=[tpi], **kw)


def _tpi_invite(rv: RoomVersion, signed: Any, target: str = CAROL, sender: str = BOB) -> Event:
    return member(rv, target, "invite", sender=sender, third_party_invite={"display_name": "c", "signed": signed})


@case("3pid invite: valid signature (public_key)", None)
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv)


@case("3pid invite: valid signature (public_keys)", None)
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, key_field="public_keys")


@case("3pid invite: sender need not be joined", None)
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, members={ALICE: "join", BOB: "leave"})


@case("3pid invite: bad signature", "member.invite.3pid.bad_signature")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok", key=_OTHER_KEY)), _tpi_state(rv)


@case("3pid invite: tampered signed", "member.invite.3pid.bad_signature")
def _(rv):
    signed = _signed(CAROL, "tok")
    signed["sender"] = ALICE
    return _tpi_invite(rv, signed), _tpi_state(rv)


@case("3pid invite: target banned", "member.invite.3pid.target_banned")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@case("3pid invite: no signed", "member.invite.3pid.no_signed")
def _(rv):
    return _tpi_invite(rv, None), _tpi_state(rv)


@case("3pid invite: no token", "member.invite.3pid.no_mxid_token")
def _(rv):
    signed = _signed(CAROL, "tok")
    del signed["token"]
    return _tpi_invite(rv, signed), _tpi_state(rv)


@case("3pid invite: mxid mismatch", "member.invite.3pid.mxid_mismatch")
def _(rv):
    return _tpi_invite(rv, _signed(DAVE, "tok")), _tpi_state(rv)


@case("3pid invite: no m.room.third_party_invite", "member.invite.3pid.no_invite_event")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "other-token")), _tpi_state(rv)


@case("3pid invite: sender mismatch", "member.invite.3pid.sender_mismatch")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, sender=ALICE)


@case("3pid invite: custom verifier", "member.invite.3pid.bad_signature")
def _(rv):
    return (
        _tpi_invite(rv, _signed(CAROL, "tok")),
        _tpi_state(rv),
        {"verify_third_party_signature": lambda signed, key: False},
    )


# --- leave / kick / unban ------------------------------------------------------------

@case("leave: own leave while joined", None)
def _(rv):
    return member(rv, BOB, "leave"), room(rv)


@case("leave: reject own invite", None)
def _(rv):
    return member(rv, CAROL, "leave"), room(rv, members={ALICE: "join", CAROL: "invite"})


@case("leave: rescind own knock", None)
def _(rv):
    return member(rv, CAROL, "leave"), room(rv, members={ALICE: "join", CAROL: "knock"})


@case("member.leave.not_member", "member.leave.not_member")
def _(rv):
    return member(rv, CAROL, "leave"), room(rv)


@case("leave: banned user cannot leave", "member.leave.not_member")
def _(rv):
    return member(rv, CAROL, "leave"), room(rv, members={ALICE: "join", CAROL: "ban"})


@case("kick: allowed", None)
def _(rv):
    return member(rv, BOB, "leave", sender=ALICE), room(rv)


@case("member.leave.kick_power (target not below sender)", "member.leave.kick_power")
def _(rv):
    return member(rv, ALICE, "leave", sender=BOB), room(rv, pl=power_levels(rv, {BOB: 100} if rv is V12 else {ALICE: 100, BOB: 100}))


@case("member.leave.kick_power (below kick level)", "member.leave.kick_power")
def _(rv):
    return member(rv, CAROL, "leave", sender=BOB), room(rv, members={ALICE: "join", BOB: "join", CAROL: "join"})


@case("member.leave.sender_not_joined", "member.leave.sender_not_joined")
def _(rv):
    return member(rv, BOB, "leave", sender=DAVE), room(rv)


@case("unban: allowed", None)
def _(rv):
    return member(rv, CAROL, "leave", sender=ALICE), room(rv, members={ALICE: "join", CAROL: "ban"})


@case("member.leave.unban_power", "member.leave.unban_power")
def _(rv):
    pl = power_levels(rv, {BOB: 60} if rv is V12 else {ALICE: 100, BOB: 60}, ban=70, kick=50)
    return member(rv, CAROL, "leave", sender=BOB), room(rv, pl=pl, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@case("kick of a creator (v12: infinite) / of a lower user (v10, v11)", None, (V10, V11))
def _(rv):
    pl = power_levels(rv, {ALICE: 50, BOB: 100})
    return member(rv, ALICE, "leave", sender=BOB), room(rv, pl=pl)


@case("kick of a creator (v12: infinite)", "member.leave.kick_power", (V12,))
def _(rv):
    pl = power_levels(rv, {BOB: 100})
    return member(rv, ALICE, "leave", sender=BOB), room(rv, pl=pl)


# --- ban -----------------------------------------------------------------------------

@case("ban: allowed", None)
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv)


@case("ban: of a non-member allowed", None)
def _(rv):
    return member(rv, DAVE, "ban", sender=ALICE), room(rv)


@case("member.ban.power", "member.ban.power")
def _(rv):
    return member(rv, ALICE, "ban", sender=BOB), room(rv)


@case("member.ban.sender_not_joined", "member.ban.sender_not_joined")
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv, members={ALICE: "leave", BOB: "join"})


@case("ban by an additional creator not in users (v12)", None, (V12,))
def _(rv):
    pl = power_levels(rv, {BOB: 100})
    return member(rv, BOB, "ban", sender=DAVE), room(
        rv, pl=pl, create_extra={"additional_creators": [DAVE]}, members={ALICE: "join", BOB: "join", DAVE: "join"}
    )


@case("ban by additional_creators listed user: no power before v12", "member.ban.power", (V10, V11))
def _(rv):
    pl = power_levels(rv, {ALICE: 100, BOB: 100})
    return member(rv, BOB, "ban", sender=DAVE), room(
        rv, pl=pl, create_extra={"additional_creators": [DAVE]}, members={ALICE: "join", BOB: "join", DAVE: "join"}
    )


@case("creator not in users still has power (v12)", None, (V12,))
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv, pl=power_levels(rv, {BOB: 100}))


@case("creator not in users has users_default (v10, v11)", "member.ban.power", (V10, V11))
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv, pl=power_levels(rv, {BOB: 100}))


# --- knock ------------------------------------------------------------------------------

@case("knock: allowed", None)
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock")


@case("knock: knock_restricted allowed", None)
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock_restricted")


@case("member.knock.join_rule", "member.knock.join_rule")
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="public")


@case("member.knock.sender_mismatch", "member.knock.sender_mismatch")
def _(rv):
    return member(rv, CAROL, "knock", sender=BOB), room(rv, join_rule="knock")


@case("member.knock.already", "member.knock.already")
def _(rv):
    return member(rv, BOB, "knock"), room(rv, join_rule="knock")


@case("knock: banned user", "member.knock.already")
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "ban"})


# --- other events: membership, power, state keys ----------------------------------------

@case("sender.not_joined", "sender.not_joined")
def _(rv):
    return ev(rv, "m.room.message", CAROL, {}), room(rv)


@case("sender.not_joined (invited only)", "sender.not_joined")
def _(rv):
    return ev(rv, "m.room.message", CAROL, {}), room(rv, members={ALICE: "join", CAROL: "invite"})


@case("message: allowed at events_default", None)
def _(rv):
    return ev(rv, "m.room.message", BOB, {"body": "hi"}), room(rv)


@case("power.event_level (state_default 50)", "power.event_level")
def _(rv):
    return ev(rv, "m.room.topic", BOB, {"topic": "x"}, ""), room(rv)


@case("power.event_level (events override)", "power.event_level")
def _(rv):
    return ev(rv, "m.room.message", BOB, {}), room(rv, pl=power_levels(rv, events={"m.room.message": 10}))


@case("power: events override lowers a state event", None)
def _(rv):
    return ev(rv, "m.room.topic", BOB, {"topic": "x"}, ""), room(rv, pl=power_levels(rv, events={"m.room.topic": 0}))


@case("power: no power levels event, state_default still 50", "power.event_level")
def _(rv):
    return ev(rv, "m.room.topic", BOB, {"topic": "x"}, ""), room(rv, pl=None)


@case("power: no power levels event, creator has power", None)
def _(rv):
    return ev(rv, "m.room.topic", ALICE, {"topic": "x"}, ""), room(rv, pl=None)


@case("state_key.other_user", "state_key.other_user")
def _(rv):
    return ev(rv, "org.example.profile", BOB, {}, ALICE), room(rv, pl=power_levels(rv, state_default=0))


@case("state_key: own user id allowed", None)
def _(rv):
    return ev(rv, "org.example.profile", BOB, {}, BOB), room(rv, pl=power_levels(rv, state_default=0))


@case("third_party_invite event: allowed", None)
def _(rv):
    return ev(rv, "m.room.third_party_invite", BOB, {"public_key": "x"}, "tok"), room(rv)


@case("third_party_invite.power", "third_party_invite.power")
def _(rv):
    return ev(rv, "m.room.third_party_invite", BOB, {"public_key": "x"}, "tok"), room(rv, pl=power_levels(rv, invite=50))


# --- redactions (no auth-rule special case in v10-v12) ---------------------------------

@case("redaction: allowed by the auth rules below the redact level", None)
def _(rv):
    content = {"redacts": "$target"} if rv.redacts_in_content else {}
    top = {} if rv.redacts_in_content else {"redacts": "$target"}
    return ev(rv, "m.room.redaction", BOB, content, **top), room(rv)


@case("redaction: subject to events[m.room.redaction]", "power.event_level")
def _(rv):
    return ev(rv, "m.room.redaction", BOB, {"redacts": "$t"}), room(rv, pl=power_levels(rv, events={"m.room.redaction": 50}))


# --- m.room.power_levels ------------------------------------------------------------------

def _pl_change(rv: RoomVersion, users: dict[str, int] | None, sender: str = ALICE, old: Event | None = None, **content: Any) -> tuple[Any, ...]:
    state = room(rv, pl=old if old is not None else True)
    return power_levels(rv, users, sender=sender, **content), state


@case("power_levels: first one allowed", None)
def _(rv):
    return power_levels(rv, None), room(rv, pl=None)


@case("power_levels: named level not an integer", "power_levels.invalid_level")
def _(rv):
    return _pl_change(rv, None, ban="50")


@case("power_levels: named level float", "power_levels.invalid_level")
def _(rv):
    return _pl_change(rv, None, kick=50.5)


@case("power_levels: events value not an integer", "power_levels.invalid_map")
def _(rv):
    return _pl_change(rv, None, events={"m.room.name": "50"})


@case("power_levels: notifications not an object", "power_levels.invalid_map")
def _(rv):
    return _pl_change(rv, None, notifications=[50])


@case("power_levels: users key not a user id", "power_levels.invalid_users")
def _(rv):
    return _pl_change(rv, {"bob": 50})


@case("power_levels: users value not an integer", "power_levels.invalid_users")
def _(rv):
    return _pl_change(rv, {BOB: True})


@case("power_levels: creator in users (v12)", "power_levels.creator_in_users", (V12,))
def _(rv):
    return _pl_change(rv, {ALICE: 100})


@case("power_levels: additional creator in users (v12)", "power_levels.creator_in_users", (V12,))
def _(rv):
    state = room(rv, create_extra={"additional_creators": [DAVE]})
    return power_levels(rv, {DAVE: 50}), state


@case("power_levels: creator in users allowed (v10, v11)", None, (V10, V11))
def _(rv):
    return _pl_change(rv, {ALICE: 100, BOB: 50})


@case("power_levels: creator raises anyone (v12 infinite)", None, (V12,))
def _(rv):
    return _pl_change(rv, {BOB: 9007199254740991})


@case("power_levels: named change, current above sender", "power_levels.named_current_too_high")
def _(rv):
    old = power_levels(rv, {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}, ban=80)
    return _pl_change(rv, {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}, sender=BOB, old=old, ban=40, state_default=50)


@case("power_levels: named change, new above sender", "power_levels.named_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    old = power_levels(rv, users, state_default=50)
    return _pl_change(rv, users, sender=BOB, old=old, state_default=50, kick=60)


@case("power_levels: named change within sender's level", None)
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    old = power_levels(rv, users, state_default=50)
    return _pl_change(rv, users, sender=BOB, old=old, state_default=50, kick=40)


@case("power_levels: events entry removed, current above sender", "power_levels.map_current_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    old = power_levels(rv, users, events={"m.room.name": 100})
    return _pl_change(rv, users, sender=BOB, old=old)


@case("power_levels: events entry added above sender", "power_levels.map_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    return _pl_change(rv, users, sender=BOB, old=power_levels(rv, users), events={"m.room.name": 75})


@case("power_levels: notifications entry added above sender", "power_levels.map_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    return _pl_change(rv, users, sender=BOB, old=power_levels(rv, users), notifications={"room": 75})


@case("power_levels: user at sender's level changed", "power_levels.user_current_too_high")
def _(rv):
    users = {BOB: 50, CAROL: 50} if rv is V12 else {ALICE: 100, BOB: 50, CAROL: 50}
    new = dict(users)
    new[CAROL] = 10
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@case("power_levels: own level lowered", None)
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    new = dict(users)
    new[BOB] = 10
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@case("power_levels: user raised above sender", "power_levels.user_new_too_high")
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    new = dict(users)
    new[CAROL] = 51
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@case("power_levels: user raised to sender's level", None)
def _(rv):
    users = {BOB: 50} if rv is V12 else {ALICE: 100, BOB: 50}
    new = dict(users)
    new[CAROL] = 50
    return _pl_change(rv, new, sender=BOB, old=power_levels(rv, users))


@case("power_levels: sender below state_default for the PL event", "power.event_level")
def _(rv):
    users = {BOB: 40} if rv is V12 else {ALICE: 100, BOB: 40}
    return _pl_change(rv, users, sender=BOB, old=power_levels(rv, users))


CASE_PARAMS = [
    pytest.param(fn, rv, rule, id=f"v{rv.identifier}-{name}")
    for name, versions, fn, rule in CASES
    for rv in versions
]


@pytest.mark.parametrize(("build", "rv", "rule"), CASE_PARAMS)
def test_auth_rule_case(build: Callable[[RoomVersion], tuple[Any, ...]], rv: RoomVersion, rule: str | None) -> None:
    built = build(rv)
    event, state = built[0], built[1]
    kwargs = built[2] if len(built) > 2 else {}
    if rule is None:
        check_auth_rules(event, state, **kwargs)
    else:
        with pytest.raises(AuthError) as info:
            check_auth_rules(event, state, **kwargs)
        assert info.value.rule == rule, info.value.message
        assert info.value.message


def test_every_rejection_case_has_an_allowed_counterpart_per_version() -> None:
    for rv in ALL:
        outcomes = {rule is None for _, versions, _, rule in CASES if rv in versions}
        assert outcomes == {True, False}
    assert len(CASE_PARAMS) >= 250


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
        del store[CREATE_ID[rv]]
        assert _auth_events_error(rv, [pl, bob], store) == "create.missing"
