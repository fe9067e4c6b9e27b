"""Builders and the case table shared by the authorization rule tests.

Each case builds an event and the state it is checked against for one room
version and names the rule it must fail (``None``: allowed). Version
differences appear as cases run on a subset of versions with different
outcomes.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from coffeechat_home.protocol.auth import AuthError, check_auth_rules
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


class CaseTable:
    """The cases of one test module: ``@table.case(name, rule)`` registers."""

    def __init__(self) -> None:
        self.cases: list[Case] = []

    def case(self, name: str, rule: str | None, versions: tuple[RoomVersion, ...] = ALL) -> Callable[..., Any]:
        def register(fn: Callable[[RoomVersion], tuple[Any, ...]]) -> Callable[..., Any]:
            self.cases.append((name, versions, fn, rule))
            return fn

        return register

    def params(self) -> list[Any]:
        return [
            pytest.param(fn, rv, rule, id=f"v{rv.identifier}-{name}")
            for name, versions, fn, rule in self.cases
            for rv in versions
        ]


def run_case(build: Callable[[RoomVersion], tuple[Any, ...]], rv: RoomVersion, rule: str | None) -> None:
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
        assert str(info.value) == f"{rule}: {info.value.message}"
