"""Power levels and the other state lookups the authorization rules share:
creators, a user's power, the level an event type needs, memberships.
Room-version differences come from ``RoomVersion`` flags."""

from __future__ import annotations

import math
import re
from typing import Mapping

from .events import Event, StateKey
from .room_versions import DEFAULT_ROOM_VERSION, RoomVersion


CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
THIRD_PARTY_INVITE = "m.room.third_party_invite"

CREATE_KEY: StateKey = (CREATE, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")

# Room version 12: creators have an infinitely high power level.
INFINITE_POWER = math.inf
PowerLevel = int | float

# Levels of the named actions when not given (m.room.power_levels schema).
NAMED_LEVEL_DEFAULTS: dict[str, int] = {
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
    "users_default": 0,
    "events_default": 0,
    "state_default": 50,
}
NAMED_LEVELS = ("users_default", "events_default", "state_default", "ban", "redact", "kick", "invite")
LEVEL_MAPS = ("events", "notifications")

# --------------------------------------------------------------------------
# identifiers (kept local: protocol modules here must not depend on the
# grammar module being written alongside)

_SERVER_NAME_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(?::[0-9]{1,5})?$")
# historical user id localparts: printable ASCII except ':'
_LOCALPART_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")


def is_valid_user_id(user_id: object) -> bool:
    """The user id validation applied to ``sender`` (historical grammar allowed)."""
    if not isinstance(user_id, str) or not user_id.startswith("@"):
        return False
    if len(user_id.encode("utf-8")) > 255:
        return False
    localpart, sep, server = user_id[1:].partition(":")
    if not sep:
        return False
    return bool(_LOCALPART_RE.match(localpart)) and bool(_SERVER_NAME_RE.match(server))


def server_name_of(identifier: str) -> str:
    """The server name of a user id or a v1-v11 room id ('' if none)."""
    if not isinstance(identifier, str):
        return ""
    return identifier.partition(":")[2]


# --------------------------------------------------------------------------
# power levels


def parse_level(value: object, strict: bool) -> int | None:
    """An integer power level, or None if ``value`` is not one.

    ``strict`` (room versions 10+) accepts JSON integers only; older versions
    also accept strings holding an integer.
    """
    if type(value) is int:
        return value
    if not strict and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def room_version_of(auth_state: Mapping[StateKey, Event]) -> RoomVersion:
    for key in (CREATE_KEY, POWER_LEVELS_KEY):
        ev = auth_state.get(key)
        if ev is not None:
            return ev.room_version
    for ev in auth_state.values():
        return ev.room_version
    return DEFAULT_ROOM_VERSION


def creators_of(create: Event) -> frozenset[str]:
    """The room creators named by a create event.

    v12 (privileged creators): the sender plus ``additional_creators``;
    v11: the sender; v10: ``content.creator``.
    """
    rv = create.room_version
    if rv.privileged_creators:
        out = {create.sender}
        extra = create.content.get("additional_creators")
        if isinstance(extra, list):
            out.update(u for u in extra if isinstance(u, str))
        return frozenset(out)
    if rv.implicit_room_creator:
        return frozenset((create.sender,))
    creator = create.content.get("creator")
    return frozenset((creator,)) if isinstance(creator, str) else frozenset()


def creators(auth_state: Mapping[StateKey, Event]) -> frozenset[str]:
    """The room creators according to the create event in ``auth_state``."""
    create = auth_state.get(CREATE_KEY)
    return creators_of(create) if create is not None else frozenset()


def get_power_level(
    user_id: str, auth_state: Mapping[StateKey, Event], room_version: RoomVersion
) -> PowerLevel:
    """A user's power level: ``INFINITE_POWER`` for v12 creators, else the
    ``users`` entry or ``users_default`` of the power levels event; without a
    power levels event 100 for the creator (v10/v11) and 0 for everyone else.
    """
    create = auth_state.get(CREATE_KEY)
    if room_version.privileged_creators and create is not None and user_id in creators_of(create):
        return INFINITE_POWER
    strict = room_version.enforce_int_power_levels
    pl = auth_state.get(POWER_LEVELS_KEY)
    if pl is not None:
        users = pl.content.get("users")
        if isinstance(users, Mapping) and user_id in users:
            level = parse_level(users[user_id], strict)
            if level is not None:
                return level
        level = parse_level(pl.content.get("users_default", 0), strict)
        return level if level is not None else 0
    if create is not None and not room_version.privileged_creators and user_id in creators_of(create):
        return 100
    return 0


def get_user_power_level(
    user_id: str,
    auth_state: Mapping[StateKey, Event],
    room_version: RoomVersion | None = None,
) -> PowerLevel:
    """``get_power_level`` with the room version taken from the state's events."""
    return get_power_level(user_id, auth_state, room_version or room_version_of(auth_state))


def get_named_level(
    name: str, auth_state: Mapping[StateKey, Event], room_version: RoomVersion | None = None
) -> int:
    """The level of a named action (``ban``, ``kick``, ``redact``, ``invite``,
    ``state_default`` ...), with the spec's defaults."""
    rv = room_version or room_version_of(auth_state)
    default = NAMED_LEVEL_DEFAULTS[name]
    pl = auth_state.get(POWER_LEVELS_KEY)
    if pl is None or name not in pl.content:
        return default
    level = parse_level(pl.content[name], rv.enforce_int_power_levels)
    return level if level is not None else default


def required_power_level(
    event_type: str,
    state_key: str | None,
    auth_state: Mapping[StateKey, Event],
    room_version: RoomVersion | None = None,
) -> int:
    """The *required power level* for an event type: ``events[type]``, else
    ``state_default`` (state events) or ``events_default``."""
    rv = room_version or room_version_of(auth_state)
    pl = auth_state.get(POWER_LEVELS_KEY)
    if pl is not None:
        events = pl.content.get("events")
        if isinstance(events, Mapping) and event_type in events:
            level = parse_level(events[event_type], rv.enforce_int_power_levels)
            if level is not None:
                return level
    return get_named_level("state_default" if state_key is not None else "events_default", auth_state, rv)


def membership_of(user_id: str, auth_state: Mapping[StateKey, Event]) -> str | None:
    """The user's current membership (None if there is no member event)."""
    ev = auth_state.get((MEMBER, user_id))
    return ev.membership if ev is not None else None


def can_send(
    sender: str,
    event_type: str,
    state_key: str | None,
    auth_state: Mapping[StateKey, Event],
    room_version: RoomVersion | None = None,
) -> bool:
    """Whether a joined-member rule check would let ``sender`` send a
    non-membership event of this type (rules: sender joined, required power
    level, ``@`` state keys). Membership events have their own rules."""
    rv = room_version or room_version_of(auth_state)
    if membership_of(sender, auth_state) != "join":
        return False
    level = get_power_level(sender, auth_state, rv)
    if event_type == THIRD_PARTY_INVITE:
        return level >= get_named_level("invite", auth_state, rv)
    if required_power_level(event_type, state_key, auth_state, rv) > level:
        return False
    if state_key is not None and state_key.startswith("@") and state_key != sender:
        return False
    return True


def check_redaction_allowed(
    redaction: Event, original: Event, auth_state: Mapping[StateKey, Event]
) -> bool:
    """Whether a (valid) redaction may be applied to ``original``
    ("Handling redactions", room versions 3+): the redaction's sender has at
    least the *redact level*, or is on the same server as the original's
    sender. ``auth_state`` is the state used for the sender's power level.
    The target comes from ``redaction.redacts`` (content in v11+).
    """
    if redaction.redacts != original.event_id or redaction.room_id != original.room_id:
        return False
    rv = redaction.room_version
    if get_power_level(redaction.sender, auth_state, rv) >= get_named_level("redact", auth_state, rv):
        return True
    return server_name_of(redaction.sender) == server_name_of(original.sender) != ""
