"""Checks on a PDU received from another server, before it may count.

The spec's "Checks performed on receipt of a PDU" begin with three that need
nothing but the PDU and the keys of the servers that signed it:

1. it is a valid event of its room version (format, sizes, identifiers),
   else it is dropped;
2. it carries valid signatures from every server that must have signed it
   (``servers_that_must_sign``), else it is dropped;
3. its content hash matches, else it is *redacted* and processed further in
   that form (the signatures cover the redacted form, so they still hold).

``check_received_pdu`` runs them in that order and returns the event to use.
Auth checks (against the event's auth events, the state before it and the
current state) come after, in ``protocol.auth`` and the persister's caller.

Fetching keys is I/O and lives outside: ``signing_requirements`` says which
keys of which servers a PDU names, the caller fetches them (valid at the
event's ``origin_server_ts``) and passes them in as ``verify_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .builder import check_event_size_limits
from .canonical import check_canonical_json_values
from .errors import CanonicalJSONError, EventFormatError, InvalidIdentifier, SignatureError
from .events import Event
from .hashing import check_content_hash, compute_event_id
from .identifiers import is_valid_event_id, parse_room_id, parse_user_id
from .redaction import redact
from .room_versions import RoomIdFormat, RoomVersion
from .signing import VerifyKey, verify_event_signature

# Synapse refuses more than these (DoS bounds on DAG walks); the spec sets no
# number, so we follow the reference implementation.
MAX_PREV_EVENTS = 20
MAX_AUTH_EVENTS = 10
MAX_DEPTH = 2**63 - 1

AUTHORISING_USER = "join_authorised_via_users_server"

# (server name, key id) -> the verify key, or None when unknown / not valid
# at the event's origin_server_ts.
KeyLookup = Callable[[str, str], "VerifyKey | None"]


@dataclass(frozen=True)
class ReceivedPdu:
    event: Event
    # The content hash did not match: ``event`` is the redacted form.
    redacted: bool


def check_pdu_format(pdu: Any, room_version: RoomVersion) -> None:
    """Raise ``EventFormatError`` unless ``pdu`` is a well-formed PDU of
    ``room_version`` (event format 3: no ``event_id`` field)."""
    if not isinstance(pdu, Mapping):
        raise EventFormatError("a PDU must be a JSON object")
    try:
        check_canonical_json_values(pdu)
    except CanonicalJSONError as e:
        raise EventFormatError(f"PDU is not canonical JSON: {e}") from None
    for name in ("type", "sender"):
        if not isinstance(pdu.get(name), str):
            raise EventFormatError(f"PDU field {name!r} must be a string")
    if not isinstance(pdu.get("content"), Mapping):
        raise EventFormatError("PDU field 'content' must be an object")
    for name in ("depth", "origin_server_ts"):
        value = pdu.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise EventFormatError(f"PDU field {name!r} must be an integer")
    if not 0 <= pdu["depth"] <= MAX_DEPTH:
        raise EventFormatError("PDU depth out of range")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise EventFormatError("PDU field 'state_key' must be a string")
    if "event_id" in pdu:
        raise EventFormatError(f"room version {room_version.identifier} PDUs carry no 'event_id'")
    for name, limit in (("prev_events", MAX_PREV_EVENTS), ("auth_events", MAX_AUTH_EVENTS)):
        ids = pdu.get(name)
        if not isinstance(ids, list):
            raise EventFormatError(f"PDU field {name!r} must be a list")
        if len(ids) > limit:
            raise EventFormatError(f"PDU has {len(ids)} {name}; at most {limit} are accepted")
        for event_id in ids:
            if not isinstance(event_id, str) or not is_valid_event_id(event_id, room_version):
                raise EventFormatError(f"PDU {name} holds an invalid event id: {event_id!r}")
    hashes = pdu.get("hashes")
    if not isinstance(hashes, Mapping) or not isinstance(hashes.get("sha256"), str):
        raise EventFormatError("PDU field 'hashes' must hold a sha256 string")
    signatures = pdu.get("signatures")
    if not isinstance(signatures, Mapping) or not all(
        isinstance(v, Mapping) and all(isinstance(s, str) for s in v.values()) for v in signatures.values()
    ):
        raise EventFormatError("PDU field 'signatures' must map server names to {key id: signature}")
    try:
        parse_user_id(pdu["sender"])
    except InvalidIdentifier as e:
        raise EventFormatError(f"PDU sender: {e}") from None
    is_v12_create = (
        room_version.room_id_format is RoomIdFormat.CREATE_EVENT_HASH
        and pdu["type"] == "m.room.create"
        and pdu.get("state_key") == ""
    )
    if is_v12_create:
        if "room_id" in pdu:
            raise EventFormatError(f"a room version {room_version.identifier} create event carries no room_id")
        if pdu.get("auth_events") or pdu.get("prev_events"):
            raise EventFormatError("a create event has no prev_events or auth_events")
    else:
        room_id = pdu.get("room_id")
        if not isinstance(room_id, str):
            raise EventFormatError("PDU field 'room_id' must be a string")
        try:
            parse_room_id(room_id, room_version)
        except InvalidIdentifier as e:
            raise EventFormatError(f"PDU room_id: {e}") from None
    check_event_size_limits(pdu)


def servers_that_must_sign(pdu: Mapping[str, Any], room_version: RoomVersion) -> set[str]:
    """The servers whose signatures a PDU needs: the sender's, and for a
    restricted-room join authorised by another server's user, that
    server's too. (Event format 3 ids are hashes, so the v1/v2 rule for the
    event id's server does not apply.)"""
    servers = {_server_of(pdu["sender"])}
    content = pdu.get("content")
    if (
        room_version.restricted_join_rule
        and pdu.get("type") == "m.room.member"
        and isinstance(content, Mapping)
        and content.get("membership") == "join"
        and isinstance(content.get(AUTHORISING_USER), str)
    ):
        try:
            servers.add(_server_of(content[AUTHORISING_USER]))
        except EventFormatError:
            pass  # an invalid authorising user fails the auth rules instead
    return servers


def signing_requirements(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, list[str]]:
    """For each server that must sign, the ed25519 key ids its signatures
    name in the PDU (the keys the caller has to fetch). An empty list means
    that server did not sign at all: the PDU will fail the check."""
    signatures = pdu.get("signatures")
    sigs: Mapping[str, Any] = signatures if isinstance(signatures, Mapping) else {}
    out: dict[str, list[str]] = {}
    for server in sorted(servers_that_must_sign(pdu, room_version)):
        by_server = sigs.get(server)
        key_ids = sorted(k for k in by_server if k.startswith("ed25519:")) if isinstance(by_server, Mapping) else []
        out[server] = key_ids
    return out


def verify_pdu_signatures(pdu: Mapping[str, Any], room_version: RoomVersion, verify_keys: KeyLookup) -> None:
    """Raise ``SignatureError`` unless every server that must sign has a
    valid signature with a key ``verify_keys`` knows. One good signature
    per server is enough (a server may sign with several keys while it
    rotates)."""
    for server, key_ids in signing_requirements(pdu, room_version).items():
        if not key_ids:
            raise SignatureError(f"PDU is not signed by {server}")
        failures: list[str] = []
        for key_id in key_ids:
            key = verify_keys(server, key_id)
            if key is None:
                failures.append(f"{key_id}: key unknown or not valid at the event's time")
                continue
            try:
                verify_event_signature(pdu, server, key, room_version, key_id)
                break
            except SignatureError as e:
                failures.append(str(e))
        else:
            raise SignatureError(f"no valid signature from {server} ({'; '.join(failures)})")


def check_received_pdu(
    pdu: Any, room_version: RoomVersion, verify_keys: KeyLookup, *, format_checked: bool = False
) -> ReceivedPdu:
    """Format, signatures, then the content hash (see the module docstring).
    Raises ``EventFormatError`` or ``SignatureError`` for a PDU to drop.
    ``format_checked``: the caller ran ``check_pdu_format`` on this PDU
    already (it reads fields before fetching keys)."""
    if not format_checked:
        check_pdu_format(pdu, room_version)
    verify_pdu_signatures(pdu, room_version, verify_keys)
    event_id = compute_event_id(pdu, room_version)
    if check_content_hash(pdu):
        return ReceivedPdu(Event(pdu, event_id, room_version), redacted=False)
    # The redacted form keeps hashes and signatures, so it has the same
    # event id and still verifies.
    return ReceivedPdu(Event(redact(pdu, room_version), event_id, room_version), redacted=True)


def _server_of(user_id: str) -> str:
    try:
        return parse_user_id(user_id).server_name
    except InvalidIdentifier as e:
        raise EventFormatError(f"invalid user id {user_id!r}: {e}") from None
