"""Authorization rules for m.room.member events (join, invite, third-party
invites, leave, kick, ban, knock) per room version: a table of cases.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

import pytest
from nacl.signing import SigningKey

from .auth_cases import (
    ALICE,
    BOB,
    CAROL,
    CREATE_ID,
    CaseTable,
    DAVE,
    Event,
    RoomVersion,
    State,
    V10,
    V11,
    V12,
    ev,
    member,
    power_levels,
    room,
    run_case,
)

table = CaseTable()


# --- m.room.member: basics and join -----------------------------------------------

@table.case("member.no_state_key", "member.no_state_key")
def _(rv):
    return ev(rv, "m.room.member", BOB, {"membership": "join"}), room(rv)


@table.case("member.no_membership", "member.no_membership")
def _(rv):
    return ev(rv, "m.room.member", BOB, {}, BOB), room(rv)


@table.case("member.unknown_membership", "member.unknown_membership")
def _(rv):
    return member(rv, BOB, "dance"), room(rv)


@table.case("join: creator's first join after create", None)
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={})
    return ev(rv, "m.room.member", ALICE, {"membership": "join"}, ALICE, prev=[CREATE_ID[rv]]), state


@table.case("join: content.creator's first join (v10) ", None, (V10,))
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={}, create_extra={"creator": CAROL})
    return ev(rv, "m.room.member", CAROL, {"membership": "join"}, CAROL, prev=[CREATE_ID[rv]]), state


@table.case("join: content.creator is ignored (v11+): not invited", "member.join.not_invited", (V11, V12))
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={}, create_extra={"creator": CAROL})
    return ev(rv, "m.room.member", CAROL, {"membership": "join"}, CAROL, prev=[CREATE_ID[rv]]), state


@table.case("join: not first event after create", "member.join.not_invited")
def _(rv):
    state = room(rv, pl=None, join_rule=None, members={})
    return ev(rv, "m.room.member", ALICE, {"membership": "join"}, ALICE, prev=["$something-else"]), state


@table.case("member.join.sender_mismatch", "member.join.sender_mismatch")
def _(rv):
    return member(rv, CAROL, "join", sender=BOB), room(rv)


@table.case("member.join.banned", "member.join.banned")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, members={ALICE: "join", CAROL: "ban"})


@table.case("join public: allowed", None)
def _(rv):
    return member(rv, CAROL, "join"), room(rv)


@table.case("join invite rule: invited allowed", None)
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="invite", members={ALICE: "join", CAROL: "invite"})


@table.case("join invite rule: re-join of joined allowed", None)
def _(rv):
    return member(rv, BOB, "join", displayname="B"), room(rv, join_rule="invite")


@table.case("join invite rule: not invited", "member.join.not_invited")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="invite")


@table.case("join knock rule: invited allowed", None)
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "invite"})


@table.case("join knock rule: knocked only", "member.join.not_invited")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "knock"})


@table.case("join no join_rules event: treated as invite", "member.join.not_invited")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule=None)


@table.case("join unknown join rule", "member.join.join_rule")
def _(rv):
    return member(rv, CAROL, "join"), room(rv, join_rule="private")


for _rule in ("restricted", "knock_restricted"):

    @table.case(f"join {_rule}: authorised by joined inviter", None)
    def _(rv, _rule=_rule):
        return (
            member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
            room(rv, join_rule=_rule),
        )

    @table.case(f"join {_rule}: already invited, no authoriser needed", None)
    def _(rv, _rule=_rule):
        return member(rv, CAROL, "join"), room(rv, join_rule=_rule, members={ALICE: "join", CAROL: "invite"})

    @table.case(f"join {_rule}: no authoriser", "member.join.no_authoriser")
    def _(rv, _rule=_rule):
        return member(rv, CAROL, "join"), room(rv, join_rule=_rule)

    @table.case(f"join {_rule}: authoriser not joined", "member.join.authoriser_not_joined")
    def _(rv, _rule=_rule):
        return (
            member(rv, CAROL, "join", join_authorised_via_users_server=DAVE),
            room(rv, join_rule=_rule),
        )

    @table.case(f"join {_rule}: authoriser may not invite", "member.join.authoriser_power")
    def _(rv, _rule=_rule):
        pl = power_levels(rv, invite=50)
        return (
            member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
            room(rv, join_rule=_rule, pl=pl),
        )


@table.case("join authoriser signature check fails", "member.authorising_server_signature")
def _(rv):
    return (
        member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
        room(rv, join_rule="restricted"),
        {"is_signed_by_server": lambda event, server: False},
    )


@table.case("join authoriser signature check passes for the authoriser's server", None)
def _(rv):
    return (
        member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
        room(rv, join_rule="restricted"),
        {"is_signed_by_server": lambda event, server: server == "a.test"},
    )


# --- invite ----------------------------------------------------------------------

@table.case("invite: allowed", None)
def _(rv):
    return member(rv, CAROL, "invite", sender=BOB), room(rv)


@table.case("member.invite.sender_not_joined", "member.invite.sender_not_joined")
def _(rv):
    return member(rv, CAROL, "invite", sender=DAVE), room(rv)


@table.case("member.invite.target_joined", "member.invite.target_joined_or_banned")
def _(rv):
    return member(rv, ALICE, "invite", sender=BOB), room(rv)


@table.case("member.invite.target_banned", "member.invite.target_joined_or_banned")
def _(rv):
    return member(rv, CAROL, "invite", sender=BOB), room(rv, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@table.case("member.invite.power", "member.invite.power")
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


@table.case("3pid invite: valid signature (public_key)", None)
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv)


@table.case("3pid invite: valid signature (public_keys)", None)
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, key_field="public_keys")


@table.case("3pid invite: sender need not be joined", None)
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, members={ALICE: "join", BOB: "leave"})


@table.case("3pid invite: bad signature", "member.invite.3pid.bad_signature")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok", key=_OTHER_KEY)), _tpi_state(rv)


@table.case("3pid invite: tampered signed", "member.invite.3pid.bad_signature")
def _(rv):
    signed = _signed(CAROL, "tok")
    signed["sender"] = ALICE
    return _tpi_invite(rv, signed), _tpi_state(rv)


@table.case("3pid invite: target banned", "member.invite.3pid.target_banned")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@table.case("3pid invite: no signed", "member.invite.3pid.no_signed")
def _(rv):
    return _tpi_invite(rv, None), _tpi_state(rv)


@table.case("3pid invite: no token", "member.invite.3pid.no_mxid_token")
def _(rv):
    signed = _signed(CAROL, "tok")
    del signed["token"]
    return _tpi_invite(rv, signed), _tpi_state(rv)


@table.case("3pid invite: mxid mismatch", "member.invite.3pid.mxid_mismatch")
def _(rv):
    return _tpi_invite(rv, _signed(DAVE, "tok")), _tpi_state(rv)


@table.case("3pid invite: no m.room.third_party_invite", "member.invite.3pid.no_invite_event")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "other-token")), _tpi_state(rv)


@table.case("3pid invite: sender mismatch", "member.invite.3pid.sender_mismatch")
def _(rv):
    return _tpi_invite(rv, _signed(CAROL, "tok")), _tpi_state(rv, sender=ALICE)


@table.case("3pid invite: custom verifier", "member.invite.3pid.bad_signature")
def _(rv):
    return (
        _tpi_invite(rv, _signed(CAROL, "tok")),
        _tpi_state(rv),
        {"verify_third_party_signature": lambda signed, key: False},
    )


# --- leave / kick / unban ------------------------------------------------------------

@table.case("leave: own leave while joined", None)
def _(rv):
    return member(rv, BOB, "leave"), room(rv)


@table.case("leave: reject own invite", None)
def _(rv):
    return member(rv, CAROL, "leave"), room(rv, members={ALICE: "join", CAROL: "invite"})


@table.case("leave: rescind own knock", None)
def _(rv):
    return member(rv, CAROL, "leave"), room(rv, members={ALICE: "join", CAROL: "knock"})


@table.case("member.leave.not_member", "member.leave.not_member")
def _(rv):
    return member(rv, CAROL, "leave"), room(rv)


@table.case("leave: banned user cannot leave", "member.leave.not_member")
def _(rv):
    return member(rv, CAROL, "leave"), room(rv, members={ALICE: "join", CAROL: "ban"})


@table.case("kick: allowed", None)
def _(rv):
    return member(rv, BOB, "leave", sender=ALICE), room(rv)


@table.case("member.leave.kick_power (target not below sender)", "member.leave.kick_power")
def _(rv):
    return member(rv, ALICE, "leave", sender=BOB), room(rv, pl=power_levels(rv, {BOB: 100} if rv is V12 else {ALICE: 100, BOB: 100}))


@table.case("member.leave.kick_power (below kick level)", "member.leave.kick_power")
def _(rv):
    return member(rv, CAROL, "leave", sender=BOB), room(rv, members={ALICE: "join", BOB: "join", CAROL: "join"})


@table.case("member.leave.sender_not_joined", "member.leave.sender_not_joined")
def _(rv):
    return member(rv, BOB, "leave", sender=DAVE), room(rv)


@table.case("unban: allowed", None)
def _(rv):
    return member(rv, CAROL, "leave", sender=ALICE), room(rv, members={ALICE: "join", CAROL: "ban"})


@table.case("member.leave.unban_power", "member.leave.unban_power")
def _(rv):
    pl = power_levels(rv, {BOB: 60} if rv is V12 else {ALICE: 100, BOB: 60}, ban=70, kick=50)
    return member(rv, CAROL, "leave", sender=BOB), room(rv, pl=pl, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@table.case("kick of a creator (v12: infinite) / of a lower user (v10, v11)", None, (V10, V11))
def _(rv):
    pl = power_levels(rv, {ALICE: 50, BOB: 100})
    return member(rv, ALICE, "leave", sender=BOB), room(rv, pl=pl)


@table.case("kick of a creator (v12: infinite)", "member.leave.kick_power", (V12,))
def _(rv):
    pl = power_levels(rv, {BOB: 100})
    return member(rv, ALICE, "leave", sender=BOB), room(rv, pl=pl)


def _peers(rv, bob: int, carol: int):
    """Bob and Carol joined, neither a creator, at the given levels (kick and ban at 50)."""
    users = {BOB: bob, CAROL: carol} if rv.privileged_creators else {ALICE: 100, BOB: bob, CAROL: carol}
    return room(rv, pl=power_levels(rv, users, kick=50, ban=50), members={ALICE: "join", BOB: "join", CAROL: "join"})


@table.case("kick at equal level (neither a creator)", "member.leave.kick_power")
def _(rv):
    return member(rv, CAROL, "leave", sender=BOB), _peers(rv, 60, 60)


@table.case("kick of a user one level below", None)
def _(rv):
    return member(rv, CAROL, "leave", sender=BOB), _peers(rv, 61, 60)


@table.case("kick of a user one level above", "member.leave.kick_power")
def _(rv):
    return member(rv, CAROL, "leave", sender=BOB), _peers(rv, 60, 61)


# --- ban -----------------------------------------------------------------------------

@table.case("ban at equal level (neither a creator)", "member.ban.power")
def _(rv):
    return member(rv, CAROL, "ban", sender=BOB), _peers(rv, 60, 60)


@table.case("ban of a user one level below", None)
def _(rv):
    return member(rv, CAROL, "ban", sender=BOB), _peers(rv, 61, 60)


@table.case("ban of a user one level above", "member.ban.power")
def _(rv):
    return member(rv, CAROL, "ban", sender=BOB), _peers(rv, 60, 61)


@table.case("ban below the ban level, target lower", "member.ban.power")
def _(rv):
    return member(rv, CAROL, "ban", sender=BOB), _peers(rv, 49, 0)



@table.case("ban: allowed", None)
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv)


@table.case("ban: of a non-member allowed", None)
def _(rv):
    return member(rv, DAVE, "ban", sender=ALICE), room(rv)


@table.case("member.ban.power", "member.ban.power")
def _(rv):
    return member(rv, ALICE, "ban", sender=BOB), room(rv)


@table.case("member.ban.sender_not_joined", "member.ban.sender_not_joined")
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv, members={ALICE: "leave", BOB: "join"})


@table.case("ban by an additional creator not in users (v12)", None, (V12,))
def _(rv):
    pl = power_levels(rv, {BOB: 100})
    return member(rv, BOB, "ban", sender=DAVE), room(
        rv, pl=pl, create_extra={"additional_creators": [DAVE]}, members={ALICE: "join", BOB: "join", DAVE: "join"}
    )


@table.case("ban by additional_creators listed user: no power before v12", "member.ban.power", (V10, V11))
def _(rv):
    pl = power_levels(rv, {ALICE: 100, BOB: 100})
    return member(rv, BOB, "ban", sender=DAVE), room(
        rv, pl=pl, create_extra={"additional_creators": [DAVE]}, members={ALICE: "join", BOB: "join", DAVE: "join"}
    )


@table.case("creator not in users still has power (v12)", None, (V12,))
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv, pl=power_levels(rv, {BOB: 100}))


@table.case("creator not in users has users_default (v10, v11)", "member.ban.power", (V10, V11))
def _(rv):
    return member(rv, BOB, "ban", sender=ALICE), room(rv, pl=power_levels(rv, {BOB: 100}))


# --- knock ------------------------------------------------------------------------------

@table.case("knock: allowed", None)
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock")


@table.case("knock: knock_restricted allowed", None)
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock_restricted")


@table.case("member.knock.join_rule", "member.knock.join_rule")
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="public")


@table.case("member.knock.sender_mismatch", "member.knock.sender_mismatch")
def _(rv):
    return member(rv, CAROL, "knock", sender=BOB), room(rv, join_rule="knock")


@table.case("member.knock.already", "member.knock.already")
def _(rv):
    return member(rv, BOB, "knock"), room(rv, join_rule="knock")


@table.case("knock: banned user", "member.knock.already")
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "ban"})

# --- boundaries found by mutation testing (tools/mutation.py) ---------------------------


@table.case("kick by a user exactly at the kick level", None)
def _(rv):
    return member(rv, CAROL, "leave", sender=BOB), _peers(rv, 50, 0)


@table.case("ban by a user exactly at the ban level", None)
def _(rv):
    return member(rv, CAROL, "ban", sender=BOB), _peers(rv, 50, 0)


@table.case("unban by a user exactly at the ban level", None)
def _(rv):
    users = {BOB: 50} if rv.privileged_creators else {ALICE: 100, BOB: 50}
    pl = power_levels(rv, users, ban=50, kick=50)
    return member(rv, CAROL, "leave", sender=BOB), room(rv, pl=pl, members={ALICE: "join", BOB: "join", CAROL: "ban"})


@table.case("join: a joined user's join again (profile change) in an invite-only room", None)
def _(rv):
    return member(rv, BOB, "join", displayname="Bob"), room(rv, join_rule="invite")


@table.case("join: join_rules without join_rule means invite", "member.join.not_invited")
def _(rv):
    jr = ev(rv, "m.room.join_rules", ALICE, {}, "")
    return member(rv, CAROL, "join"), room(rv, join_rule=None, extra=[jr])


@table.case("join: a non-string join_rule allows nobody", "member.join.join_rule")
def _(rv):
    jr = ev(rv, "m.room.join_rules", ALICE, {"join_rule": 5}, "")
    return member(rv, CAROL, "join"), room(rv, join_rule=None, extra=[jr])


@table.case("knock: an invited user cannot knock", "member.knock.already")
def _(rv):
    return member(rv, CAROL, "knock"), room(rv, join_rule="knock", members={ALICE: "join", CAROL: "invite"})


@table.case("invite by a user exactly at the invite level", None)
def _(rv):
    users = {BOB: 50} if rv.privileged_creators else {ALICE: 100, BOB: 50}
    return member(rv, CAROL, "invite", sender=BOB), room(rv, pl=power_levels(rv, users, invite=50))


@table.case("join restricted: authoriser exactly at the invite level", None)
def _(rv):
    users = {BOB: 50} if rv.privileged_creators else {ALICE: 100, BOB: 50}
    return (
        member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
        room(rv, join_rule="restricted", pl=power_levels(rv, users, invite=50)),
    )

@table.case("join restricted: a joined user's join again needs no authoriser", None)
def _(rv):
    return member(rv, BOB, "join", displayname="Bob"), room(rv, join_rule="restricted")


@table.case("join authoriser signature checked on the join event itself", None)
def _(rv):
    return (
        member(rv, CAROL, "join", join_authorised_via_users_server=BOB),
        room(rv, join_rule="restricted"),
        {"is_signed_by_server": lambda event, server: event.state_key == CAROL and server == "a.test"},
    )


@table.case("3pid invite: third_party_invite not an object", "member.invite.3pid.no_signed")
def _(rv):
    return member(rv, CAROL, "invite", sender=BOB, third_party_invite="x"), _tpi_state(rv)


@table.case("3pid invite: unusable public_keys entries are skipped", None)
def _(rv):
    state = _tpi_state(rv, key_field="public_keys")
    tpi = state[("m.room.third_party_invite", "tok")]
    content = {**tpi.content, "public_keys": ["junk", {"public_key": 5}, {"public_key": _TPI_PUBLIC}]}
    state[("m.room.third_party_invite", "tok")] = ev(rv, "m.room.third_party_invite", BOB, content, "tok")
    return _tpi_invite(rv, _signed(CAROL, "tok")), state


@pytest.mark.parametrize(("build", "rv", "rule"), table.params())
def test_auth_rule_case(build: Callable[[RoomVersion], tuple[Any, ...]], rv: RoomVersion, rule: str | None) -> None:
    run_case(build, rv, rule)
