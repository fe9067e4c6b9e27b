"""The client-server format of room events (ClientEvent)."""

from __future__ import annotations

from typing import Any, Mapping

from .events import Event
from .redaction import redact


def client_event(event: Event, prev_state: Event | None = None) -> dict[str, Any]:
    """The client-format event; state events carry the previous state's
    content in ``unsigned.prev_content`` (and ``replaces_state``)."""
    out: dict[str, Any] = {
        "content": dict(event.content),
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
        "room_id": event.room_id,
        "sender": event.sender,
        "type": event.type,
    }
    if event.state_key is not None:
        out["state_key"] = event.state_key
    if event.redacts is not None:
        # Top-level too for clients that predate room version 11.
        out["redacts"] = event.redacts
    unsigned: dict[str, Any] = {}
    if prev_state is not None:
        unsigned["prev_content"] = dict(prev_state.content)
        unsigned["replaces_state"] = prev_state.event_id
        unsigned["prev_sender"] = prev_state.sender
    out["unsigned"] = unsigned
    return out


def redacted_forms(
    target_pdu: Mapping[str, Any], target_client: Mapping[str, Any], redaction_client: Mapping[str, Any], target: Event
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(redacted PDU, redacted client event with unsigned.redacted_because)."""
    pdu = redact(target_pdu, target.room_version)
    client = dict(target_client)
    client["content"] = dict(pdu.get("content", {}))
    unsigned = dict(client.get("unsigned") or {})
    unsigned.pop("prev_content", None)
    unsigned["redacted_because"] = dict(redaction_client)
    client["unsigned"] = unsigned
    return pdu, client
