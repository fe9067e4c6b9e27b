"""The redaction algorithm, per room version's ``RedactionRules``.

``redact`` returns the redacted form of a PDU (or any event dict): the keys
the rules keep at top level, and a content object stripped to the keys kept
for its event type. Used for signing, the reference hash (event ID), and
for events whose content hash does not match.

The rules are data: one ``_Rules`` row per ``RedactionRules`` value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .room_versions import RedactionRules, RoomVersion

__all__ = ["redact", "redact_content", "ALL_KEYS"]

# Marker in a content-key table meaning "keep the whole content".
ALL_KEYS: frozenset[str] = frozenset({"*"})


@dataclass(frozen=True, slots=True)
class _Rules:
    top_level: frozenset[str]
    content: Mapping[str, frozenset[str]]
    # v11: m.room.member keeps content.third_party_invite.signed
    member_keeps_third_party_signed: bool


_V1_TOP = frozenset(
    {
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "prev_state",
        "auth_events",
        "origin",
        "origin_server_ts",
        "membership",
    }
)
_V11_TOP = _V1_TOP - {"origin", "membership", "prev_state"}

_PL_V1 = frozenset(
    {"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}
)

_RULES: dict[RedactionRules, _Rules] = {
    # Room versions 1-10 as of v10: includes the v9 (join_authorised_via_users_server)
    # and v8 (join_rules `allow`) keeps.
    RedactionRules.V1: _Rules(
        top_level=_V1_TOP,
        content={
            "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
            "m.room.create": frozenset({"creator"}),
            "m.room.join_rules": frozenset({"join_rule", "allow"}),
            "m.room.power_levels": _PL_V1,
            "m.room.history_visibility": frozenset({"history_visibility"}),
        },
        member_keeps_third_party_signed=False,
    ),
    RedactionRules.V11: _Rules(
        top_level=_V11_TOP,
        content={
            "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
            "m.room.create": ALL_KEYS,
            "m.room.join_rules": frozenset({"join_rule", "allow"}),
            "m.room.power_levels": _PL_V1 | {"invite"},
            "m.room.history_visibility": frozenset({"history_visibility"}),
            "m.room.redaction": frozenset({"redacts"}),
        },
        member_keeps_third_party_signed=True,
    ),
}


def redact_content(event_type: Any, content: Any, room_version: RoomVersion) -> dict[str, Any]:
    """The content object left after redacting an event of ``event_type``."""
    rules = _RULES[room_version.redaction]
    if not isinstance(content, Mapping):
        return {}
    keep = rules.content.get(event_type) if isinstance(event_type, str) else None
    if keep is None:
        return {}
    if keep is ALL_KEYS:
        return dict(content)
    out = {k: v for k, v in content.items() if k in keep}
    if rules.member_keeps_third_party_signed and event_type == "m.room.member":
        tpi = content.get("third_party_invite")
        if isinstance(tpi, Mapping) and "signed" in tpi:
            out["third_party_invite"] = {"signed": tpi["signed"]}
    return out


def redact(event: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """Return the redacted form of ``event`` (a new dict; the input is untouched).

    Nested values that are kept (e.g. ``users`` in power levels, ``signatures``)
    are shared with the input, not copied: treat the result as read-only.
    """
    top = _RULES[room_version.redaction].top_level
    out = {k: v for k, v in event.items() if k in top}
    if "content" in event:
        out["content"] = redact_content(event.get("type"), event["content"], room_version)
    else:
        out["content"] = {}
    return out
