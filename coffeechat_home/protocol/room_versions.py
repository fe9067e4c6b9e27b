"""Room versions as data: one row of rule flags per version.

Adding a room version means adding a row to ``KNOWN_ROOM_VERSIONS``; code
elsewhere asks a flag (``rv.knock_join_rule``), never ``if version == "11"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RedactionRules(Enum):
    V1 = "v1"  # room versions 1-10 (with the v9/v10 restricted/knock keeps)
    V11 = "v11"  # room version 11+: keeps create content, drops `origin` etc.


class StateResAlgorithm(Enum):
    V2 = "v2"
    V2_1 = "v2.1"  # room version 12: conflicted subgraph, empty-map start


class RoomIdFormat(Enum):
    SERVER = "server"  # !opaque:server.name
    CREATE_EVENT_HASH = "hash"  # !<reference hash of the create event>, v12


@dataclass(frozen=True, slots=True)
class RoomVersion:
    identifier: str
    # Event ids are the url-safe unpadded base64 reference hash (format 3+).
    event_format: int
    redaction: RedactionRules
    state_res: StateResAlgorithm
    room_id_format: RoomIdFormat
    # join rules available
    knock_join_rule: bool
    restricted_join_rule: bool
    knock_restricted_join_rule: bool
    # power levels values must be integers (v10+)
    enforce_int_power_levels: bool
    # v11+: `creator` is gone from create content; the sender is the creator
    implicit_room_creator: bool
    # v12: creators (sender of create + content.additional_creators) have
    # unbounded power and may not appear in power_levels.users
    privileged_creators: bool
    # v12: the create event is not listed in auth_events (implied by room id)
    create_event_in_auth_events: bool
    # v11+: redaction events carry `redacts` in content rather than top level
    redacts_in_content: bool


def _v(identifier: str, **overrides: object) -> RoomVersion:
    base: dict[str, object] = dict(
        identifier=identifier,
        event_format=3,
        redaction=RedactionRules.V1,
        state_res=StateResAlgorithm.V2,
        room_id_format=RoomIdFormat.SERVER,
        knock_join_rule=True,
        restricted_join_rule=True,
        knock_restricted_join_rule=True,
        enforce_int_power_levels=True,
        implicit_room_creator=False,
        privileged_creators=False,
        create_event_in_auth_events=True,
        redacts_in_content=False,
    )
    base.update(overrides)
    return RoomVersion(**base)  # type: ignore[arg-type]


ROOM_V10 = _v("10")
ROOM_V11 = _v(
    "11",
    redaction=RedactionRules.V11,
    implicit_room_creator=True,
    redacts_in_content=True,
)
ROOM_V12 = _v(
    "12",
    redaction=RedactionRules.V11,
    implicit_room_creator=True,
    redacts_in_content=True,
    state_res=StateResAlgorithm.V2_1,
    room_id_format=RoomIdFormat.CREATE_EVENT_HASH,
    privileged_creators=True,
    create_event_in_auth_events=False,
)

KNOWN_ROOM_VERSIONS: dict[str, RoomVersion] = {
    rv.identifier: rv for rv in (ROOM_V10, ROOM_V11, ROOM_V12)
}
DEFAULT_ROOM_VERSION = ROOM_V12


class UnsupportedRoomVersion(ValueError):
    """Raised for a room version we do not implement (M_UNSUPPORTED_ROOM_VERSION)."""


def get_room_version(identifier: str) -> RoomVersion:
    try:
        return KNOWN_ROOM_VERSIONS[identifier]
    except (KeyError, TypeError):
        raise UnsupportedRoomVersion(f"unsupported room version {identifier!r}") from None
