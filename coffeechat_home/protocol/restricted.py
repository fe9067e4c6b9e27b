"""Restricted rooms (join rules ``restricted``, v8+, and
``knock_restricted``, v10+): who may be let in without an invite, and which
users of a server can authorise such a join (the event's
``join_authorised_via_users_server``). The auth rules themselves are in
auth.py; this module answers the questions a server asks before it builds
or countersigns a join."""

from __future__ import annotations

from typing import Any, Mapping

from .events import Event, StateKey
from .power_levels import get_named_level, get_power_level
from .room_versions import RoomVersion

AUTHORISING_USER = "join_authorised_via_users_server"


def is_restricted(state: Mapping[StateKey, Event], rv: RoomVersion) -> bool:
    """The room's join rule lets members of other rooms join without an
    invite (in a room version that has that rule)."""
    rules = state.get(("m.room.join_rules", ""))
    rule = rules.content.get("join_rule") if rules is not None else None
    return (rule == "restricted" and rv.restricted_join_rule) or (
        rule == "knock_restricted" and rv.knock_restricted_join_rule
    )


def allowed_room_ids(state: Mapping[StateKey, Event]) -> list[str]:
    """The rooms whose members may join (``m.room_membership`` entries of
    ``allow``; other entry types are not understood and grant nothing)."""
    rules = state.get(("m.room.join_rules", ""))
    return allowed_rooms_in(rules.content if rules is not None else {})


def allowed_rooms_in(join_rules_content: Mapping[str, Any]) -> list[str]:
    """``allowed_room_ids`` of an ``m.room.join_rules`` content: the room
    ids of its ``m.room_membership`` entries, in order, each once."""
    allow = join_rules_content.get("allow")
    out: list[str] = []
    for entry in allow if isinstance(allow, list) else []:
        if isinstance(entry, Mapping) and entry.get("type") == "m.room_membership":
            room_id = entry.get("room_id")
            if isinstance(room_id, str) and room_id.startswith("!") and room_id not in out:
                out.append(room_id)
    return out


def local_authorisers(state: Mapping[StateKey, Event], server_name: str, rv: RoomVersion) -> list[str]:
    """The users of ``server_name`` joined to the room with the power to
    invite, in a stable order (by power, highest first, then user id)."""
    invite_level = get_named_level("invite", state, rv)
    found: list[tuple[float, str]] = []
    for (etype, skey), ev in state.items():
        if etype == "m.room.member" and ev.membership == "join" and skey.split(":", 1)[-1] == server_name:
            level = get_power_level(skey, state, rv)
            if level >= invite_level:
                found.append((-float(level), skey))
    return [user for _, user in sorted(found)]


def authorising_servers(state: Mapping[StateKey, Event], rv: RoomVersion) -> list[str]:
    """The servers with a joined user who may invite (who could authorise a
    restricted join), the one of the most powerful such user first."""
    invite_level = get_named_level("invite", state, rv)
    found: list[tuple[float, str, str]] = []
    for (etype, skey), ev in state.items():
        if etype == "m.room.member" and ev.membership == "join" and ":" in skey:
            level = get_power_level(skey, state, rv)
            if level >= invite_level:
                found.append((-float(level), skey, skey.split(":", 1)[1]))
    out: list[str] = []
    for _, _, server in sorted(found):
        if server not in out:
            out.append(server)
    return out
