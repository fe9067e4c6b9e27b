"""The content of the ephemeral EDUs a server sends about its own users
(server-server API, "Typing Notifications", "Receipts", "Presence")."""

from __future__ import annotations

from typing import Any, Mapping


def typing_edu(room_id: str, user_id: str, typing: bool) -> dict[str, Any]:
    """``m.typing``: the user started or stopped typing in the room."""
    return {"room_id": room_id, "user_id": user_id, "typing": typing}


def receipt_edu(
    room_id: str, receipt_type: str, user_id: str, event_id: str, ts: int, thread_id: str | None
) -> dict[str, Any]:
    """``m.receipt``: one user's receipt (``thread_id`` None: unthreaded)."""
    data: dict[str, Any] = {"ts": ts}
    if thread_id:
        data["thread_id"] = thread_id
    return {room_id: {receipt_type: {user_id: {"event_ids": [event_id], "data": data}}}}


def presence_edu(user_id: str, presence: Mapping[str, Any]) -> dict[str, Any]:
    """``m.presence``: one user's presence (``presence``, ``last_active_ago``,
    and optionally ``currently_active`` and ``status_msg``)."""
    return {"push": [{"user_id": user_id, **presence}]}
