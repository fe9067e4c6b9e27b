"""Content hashes, reference hashes and event IDs (room versions 10-12).

* Content hash: SHA-256 of the canonical JSON of the PDU without
  ``unsigned``, ``signatures`` and ``hashes``; stored as
  ``hashes.sha256`` (unpadded base64).
* Reference hash: SHA-256 of the canonical JSON of the *redacted* PDU without
  ``signatures`` and ``unsigned``.
* Event ID (event format 3, room versions 4+): ``$`` + URL-safe unpadded
  base64 of the reference hash.

Like Synapse, the hashes also ignore the legacy top-level ``age_ts`` (and
``outlier``/``destinations`` for the content hash), which never appear in
PDUs we build; this keeps us compatible with old senders.

These functions encode with ``encode_canonical_json_trusted``: pass PDUs that
were built here or checked with ``check_canonical_json_values`` on intake.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from .canonical import decode_base64, encode_base64, encode_canonical_json_trusted
from .events import Event
from .redaction import redact
from .room_versions import RoomVersion

__all__ = [
    "compute_content_hash",
    "add_content_hash",
    "check_content_hash",
    "compute_reference_hash",
    "reference_hash_of_redacted",
    "compute_event_id",
    "event_id_from_reference_hash",
    "event_from_pdu",
]

_CONTENT_HASH_EXCLUDED = frozenset(
    {"unsigned", "signatures", "hashes", "age_ts", "outlier", "destinations"}
)
_REFERENCE_HASH_EXCLUDED = frozenset({"signatures", "unsigned", "age_ts"})


def compute_content_hash(pdu: Mapping[str, Any]) -> bytes:
    """The raw SHA-256 content hash of a PDU."""
    payload = {k: v for k, v in pdu.items() if k not in _CONTENT_HASH_EXCLUDED}
    return hashlib.sha256(encode_canonical_json_trusted(payload)).digest()


def add_content_hash(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``pdu`` with ``hashes.sha256`` set (other hashes dropped)."""
    out = dict(pdu)
    out["hashes"] = {"sha256": encode_base64(compute_content_hash(pdu))}
    return out


def check_content_hash(pdu: Mapping[str, Any]) -> bool:
    """True if ``hashes.sha256`` is present and matches the PDU's content hash.

    A PDU failing this check is redacted before use (spec: "Checks performed
    on receipt of a PDU"), not rejected.
    """
    hashes = pdu.get("hashes")
    if not isinstance(hashes, Mapping):
        return False
    claimed = hashes.get("sha256")
    if not isinstance(claimed, str):
        return False
    try:
        expected = decode_base64(claimed)
    except ValueError:
        return False
    return hmac.compare_digest(expected, compute_content_hash(pdu))


def reference_hash_of_redacted(redacted: Mapping[str, Any]) -> bytes:
    """Reference hash of an event that is already redacted."""
    payload = {k: v for k, v in redacted.items() if k not in _REFERENCE_HASH_EXCLUDED}
    return hashlib.sha256(encode_canonical_json_trusted(payload)).digest()


def compute_reference_hash(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """The raw SHA-256 reference hash of a PDU under ``room_version``'s rules."""
    return reference_hash_of_redacted(redact(pdu, room_version))


def event_id_from_reference_hash(ref_hash: bytes) -> str:
    return "$" + encode_base64(ref_hash, urlsafe=True)


def compute_event_id(pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    """The event ID of a PDU (event format 3: URL-safe reference hash)."""
    if room_version.event_format < 3:  # pragma: no cover - no such version is supported
        raise ValueError(f"event format {room_version.event_format} not supported")
    return event_id_from_reference_hash(compute_reference_hash(pdu, room_version))


def event_from_pdu(pdu: Mapping[str, Any], room_version: RoomVersion) -> Event:
    """Wrap a PDU in an ``Event`` with its computed event ID."""
    return Event(pdu, compute_event_id(pdu, room_version), room_version)
