"""Building local events: template -> complete, hashed, signed PDU.

``build_event`` does the spec's steps in order (content hash, sign the
redacted form, event ID = reference hash) with one canonical encoding per
step and the redacted encoding shared between signing and the event ID:
the signed bytes are exactly the reference-hash input, since the redacted
form carries no ``signatures``/``unsigned``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from .canonical import (
    CanonicalJSONError,
    check_canonical_json_values,
    encode_base64,
    encode_canonical_json_trusted,
)
from .errors import EventFormatError, EventSizeError, InvalidIdentifier
from .events import Event, StateKey, auth_types_for_event
from .hashing import compute_event_id, event_id_from_reference_hash
from .identifiers import parse_user_id
from .redaction import redact
from .room_versions import RoomIdFormat, RoomVersion
from .signing import SigningKey, key_id_of

__all__ = [
    "EventFormatError",
    "EventSizeError",
    "MAX_PDU_BYTES",
    "MAX_FIELD_BYTES",
    "build_event",
    "check_event_size_limits",
    "room_id_for_create_event",
    "select_auth_event_ids",
]

MAX_PDU_BYTES = 65536
MAX_FIELD_BYTES = 255
_SIZED_FIELDS = ("sender", "room_id", "state_key", "type", "event_id")
_TEMPLATE_KEYS = frozenset({"type", "sender", "content", "state_key", "room_id", "redacts"})


def _is_v12_create(room_version: RoomVersion, event_type: str, state_key: Any) -> bool:
    return (
        room_version.room_id_format is RoomIdFormat.CREATE_EVENT_HASH
        and event_type == "m.room.create"
        and state_key == ""
    )


def _pdu_from_template(
    room_version: RoomVersion, template: Mapping[str, Any], server_name: str
) -> dict[str, Any]:
    extra = set(template) - _TEMPLATE_KEYS
    if extra:
        raise EventFormatError(f"unexpected event template keys: {sorted(extra)}")
    event_type = template.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise EventFormatError("event template needs a non-empty string 'type'")
    sender = template.get("sender")
    if not isinstance(sender, str):
        raise EventFormatError("event template needs a string 'sender'")
    try:
        sender_server = parse_user_id(sender).server_name
    except InvalidIdentifier as e:
        raise EventFormatError(f"bad sender: {e}") from None
    if sender_server != server_name:
        raise EventFormatError(f"sender {sender} is not a user of {server_name}")
    content = template.get("content", {})
    if not isinstance(content, Mapping):
        raise EventFormatError("event 'content' must be an object")
    content = dict(content)
    pdu: dict[str, Any] = {"type": event_type, "sender": sender}
    if "state_key" in template:
        if not isinstance(template["state_key"], str):
            raise EventFormatError("'state_key' must be a string")
        pdu["state_key"] = template["state_key"]
    room_id = template.get("room_id")
    if _is_v12_create(room_version, event_type, pdu.get("state_key")):
        if room_id is not None:
            raise EventFormatError(
                f"room version {room_version.identifier}: the create event has no room_id"
            )
    elif not isinstance(room_id, str):
        raise EventFormatError("event template needs a string 'room_id'")
    else:
        pdu["room_id"] = room_id
    redacts = template.get("redacts")
    if redacts is not None and not isinstance(redacts, str):
        raise EventFormatError("'redacts' must be an event ID string")
    if room_version.redacts_in_content:
        if redacts is not None:
            if content.get("redacts", redacts) != redacts:
                raise EventFormatError("template 'redacts' disagrees with content.redacts")
            content["redacts"] = redacts
        if event_type == "m.room.redaction" and not isinstance(content.get("redacts"), str):
            raise EventFormatError("redaction events need content.redacts")
    else:
        if redacts is not None:
            pdu["redacts"] = redacts
        elif event_type == "m.room.redaction":
            raise EventFormatError("redaction events need a top-level 'redacts'")
    pdu["content"] = content
    return pdu


def build_event(
    room_version: RoomVersion,
    *,
    template: Mapping[str, Any],
    prev_events: list[str],
    auth_events: list[str],
    depth: int,
    origin_server_ts: int,
    server_name: str,
    signing_key: SigningKey,
) -> Event:
    """Build a complete PDU (hashes, signature, no ``event_id`` key) as an Event.

    ``template`` holds ``type``, ``sender``, ``content`` and optionally
    ``state_key``, ``room_id`` (absent for a v12 create event) and
    ``redacts`` (moved into content for v11+). Raises ``EventFormatError``,
    ``EventSizeError`` or ``CanonicalJSONError``.
    """
    pdu = _pdu_from_template(room_version, template, server_name)
    for name, ids in (("prev_events", prev_events), ("auth_events", auth_events)):
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
            raise EventFormatError(f"'{name}' must be a list of event ID strings")
    pdu["prev_events"] = list(prev_events)
    pdu["auth_events"] = list(auth_events)
    pdu["depth"] = depth
    pdu["origin_server_ts"] = origin_server_ts
    for name in ("depth", "origin_server_ts"):
        if type(pdu[name]) is not int or pdu[name] < 0:
            raise EventFormatError(f"'{name}' must be a non-negative integer")
    check_canonical_json_values(pdu)  # once; every encoding below is trusted

    content_hash = hashlib.sha256(encode_canonical_json_trusted(pdu)).digest()
    pdu["hashes"] = {"sha256": encode_base64(content_hash)}
    signed_bytes = encode_canonical_json_trusted(redact(pdu, room_version))
    signature = encode_base64(signing_key.sign(signed_bytes).signature)
    pdu["signatures"] = {server_name: {key_id_of(signing_key): signature}}
    event_id = event_id_from_reference_hash(hashlib.sha256(signed_bytes).digest())
    check_event_size_limits(pdu, event_id)
    return Event(pdu, event_id, room_version)


def check_event_size_limits(pdu: Mapping[str, Any], event_id: str | None = None) -> None:
    """Raise ``EventSizeError`` if the PDU breaks the spec's size limits.

    The whole PDU as canonical JSON (with signatures) must be at most 65536
    bytes; ``sender``, ``room_id``, ``state_key``, ``type`` and ``event_id``
    at most 255 bytes each.
    """
    for name in _SIZED_FIELDS:
        value = event_id if name == "event_id" and event_id is not None else pdu.get(name)
        if isinstance(value, str):
            n = len(value.encode("utf-8", "surrogatepass"))
            if n > MAX_FIELD_BYTES:
                raise EventSizeError(f"event '{name}' is {n} bytes; the limit is {MAX_FIELD_BYTES}")
    try:
        # Key order does not change the length, so skip sorting.
        size = len(orjson.dumps(pdu))
    except TypeError:
        try:
            size = len(encode_canonical_json_trusted(pdu))
        except CanonicalJSONError as e:
            raise EventFormatError(str(e)) from None
    if size > MAX_PDU_BYTES:
        raise EventSizeError(f"event is {size} bytes as canonical JSON; the limit is {MAX_PDU_BYTES}")


def room_id_for_create_event(event: Event | Mapping[str, Any], room_version: RoomVersion) -> str:
    """The room ID a v12 create event implies: ``!`` + its reference hash."""
    if room_version.room_id_format is not RoomIdFormat.CREATE_EVENT_HASH:
        raise EventFormatError(
            f"room version {room_version.identifier} room IDs are not derived from the create event"
        )
    if isinstance(event, Event):
        event_id = event.event_id
        event_type, state_key = event.type, event.state_key
    else:
        event_id = compute_event_id(event, room_version)
        event_type, state_key = str(event.get("type")), event.get("state_key")
    if event_type != "m.room.create" or state_key != "":
        raise EventFormatError("only the m.room.create event (state_key '') defines a room ID")
    return "!" + event_id[1:]


def select_auth_event_ids(
    room_version: RoomVersion,
    template: Mapping[str, Any],
    current_state: Mapping[StateKey, str],
) -> list[str]:
    """The ``auth_events`` for a new event, from the current state's event IDs.

    Follows ``events.auth_types_for_event`` (no create event in v12); state
    keys absent from ``current_state`` are skipped.
    """
    content = template.get("content")
    keys = auth_types_for_event(
        room_version,
        template["type"],
        template["sender"],
        template.get("state_key"),
        content if isinstance(content, Mapping) else {},
    )
    return [current_state[k] for k in keys if k in current_state]
