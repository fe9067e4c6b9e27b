"""A typed, read-only view of a PDU (a room event as servers exchange it).

``Event`` wraps the PDU JSON (a dict, never mutated after construction) and
exposes the fields auth rules and state resolution read. The event id is
given by the caller: for room versions 3+ it is the reference hash of the
PDU, computed by ``protocol.hashing.compute_event_id``; for the v12 create
event the room id is derived from it.
"""

from __future__ import annotations

from typing import Any, Mapping

from .room_versions import RoomIdFormat, RoomVersion

StateKey = tuple[str, str]  # (event type, state key)
_SLIM_KEYS = frozenset({"type", "room_id", "sender", "state_key", "content", "origin_server_ts", "depth", "redacts"})


class Event:
    __slots__ = (
        "event_id",
        "room_version",
        "pdu",
        "room_id",
        "type",
        "state_key",
        "sender",
        "content",
        "prev_event_ids",
        "auth_event_ids",
        "depth",
        "origin_server_ts",
        "redacts",
    )

    def __init__(self, pdu: Mapping[str, Any], event_id: str, room_version: RoomVersion):
        self.pdu = pdu
        self.event_id = event_id
        self.room_version = room_version
        self.type: str = pdu["type"]
        self.state_key: str | None = pdu.get("state_key")
        self.sender: str = pdu["sender"]
        content = pdu.get("content")
        self.content: Mapping[str, Any] = content if isinstance(content, Mapping) else {}
        self.prev_event_ids: list[str] = list(pdu.get("prev_events") or [])
        self.auth_event_ids: list[str] = list(pdu.get("auth_events") or [])
        self.depth: int = pdu.get("depth", 0)
        self.origin_server_ts: int = pdu.get("origin_server_ts", 0)
        if room_version.redacts_in_content:
            redacts = self.content.get("redacts", pdu.get("redacts"))
        else:
            redacts = pdu.get("redacts")
        self.redacts: str | None = redacts if isinstance(redacts, str) else None
        room_id = pdu.get("room_id")
        if (
            room_id is None
            and self.type == "m.room.create"
            and self.state_key == ""
            and room_version.room_id_format is RoomIdFormat.CREATE_EVENT_HASH
        ):
            room_id = "!" + event_id[1:]
        self.room_id: str = room_id  # type: ignore[assignment]

    def slim(self) -> Event:
        """This event as a cached copy of a room's current state keeps it
        (services/room_writer.py's room heads): what the auth rules and the
        membership, directory and federation checks read of a state event
        (type, state key, sender, content, ids), without its hashes,
        signatures, prev and auth events, which are most of an event's
        memory. Never sent or stored: those read the full event."""
        pdu = self.pdu
        if pdu.keys() <= _SLIM_KEYS:
            return self
        return Event({k: v for k, v in pdu.items() if k in _SLIM_KEYS}, self.event_id, self.room_version)

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_tuple(self) -> StateKey:
        assert self.state_key is not None, "not a state event"
        return (self.type, self.state_key)

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r} {self.sender}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)


def create_event_id_for_room(room_id: str, room_version: RoomVersion) -> str | None:
    """In v12 rooms the create event's id is implied by the room id."""
    if room_version.room_id_format is RoomIdFormat.CREATE_EVENT_HASH:
        return "$" + room_id[1:]
    return None


def auth_types_for_event(
    room_version: RoomVersion,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: Mapping[str, Any],
) -> list[StateKey]:
    """The state keys whose current events go into an event's auth_events.

    Per the spec's "Auth events selection". The create event is left out in
    room versions that imply it from the room id (v12).
    """
    if event_type == "m.room.create":
        return []
    keys: list[StateKey] = []
    if room_version.create_event_in_auth_events:
        keys.append(("m.room.create", ""))
    keys.append(("m.room.power_levels", ""))
    keys.append(("m.room.member", sender))
    if event_type == "m.room.member" and state_key is not None:
        membership = content.get("membership")
        if state_key != sender:
            keys.append(("m.room.member", state_key))
        if membership in ("join", "invite", "knock"):
            keys.append(("m.room.join_rules", ""))
        if membership == "invite" and isinstance(content.get("third_party_invite"), Mapping):
            signed = content["third_party_invite"].get("signed")
            token = signed.get("token") if isinstance(signed, Mapping) else None
            if isinstance(token, str):
                keys.append(("m.room.third_party_invite", token))
        if membership == "join" and room_version.restricted_join_rule:
            via = content.get("join_authorised_via_users_server")
            if isinstance(via, str):
                keys.append(("m.room.member", via))
    # de-duplicate, keep order
    seen: set[StateKey] = set()
    out: list[StateKey] = []
    for k in keys:
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out
