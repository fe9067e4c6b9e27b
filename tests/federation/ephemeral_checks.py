"""Typing and read receipts between two users of two servers, as their
clients see them in /sync (the ephemeral events of the room), for the
two-server and the Synapse tests. Each wait is a bounded number of
long-polls."""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import quote

from ..integration.processes import User

Events = list[dict[str, Any]]


def room_ephemeral(body: dict[str, Any], room_id: str) -> Events:
    return list(body.get("rooms", {}).get("join", {}).get(room_id, {}).get("ephemeral", {}).get("events", []))


def typing_now(events: Events) -> list[str] | None:
    """Who types according to the last m.typing event (None: none seen)."""
    typing = [e for e in events if e["type"] == "m.typing"]
    return sorted(typing[-1]["content"]["user_ids"]) if typing else None


def read_by(events: Events, event_id: str) -> set[str]:
    """Users with a public read receipt on ``event_id`` in the receipts seen."""
    return {u for e in events if e["type"] == "m.receipt"
            for u in e["content"].get(event_id, {}).get("m.read", {})}


async def sync_until(user: User, since: str, pred: Callable[[dict[str, Any]], bool],
                     polls: int = 15) -> tuple[str, bool]:
    """Long-poll /sync (``polls`` times at most) until ``pred(body)``."""
    for _ in range(polls):
        body = await user.sync(since, timeout_ms=3000)
        since = body["next_batch"]
        if pred(body):
            return since, True
    return since, False


async def until_ephemeral(user: User, since: str, room_id: str, pred: Callable[[Events], bool]) -> tuple[str, Events]:
    seen: Events = []

    def check(body: dict[str, Any]) -> bool:
        seen.extend(room_ephemeral(body, room_id))
        return pred(seen)

    since, ok = await sync_until(user, since, check)
    assert ok, (user.user_id, seen)
    return since, seen


async def set_typing(user: User, room_id: str, typing: bool) -> None:
    body: dict[str, Any] = {"typing": typing, **({"timeout": 25000} if typing else {})}
    status, answer = await user.call("PUT", f"rooms/{quote(room_id)}/typing/{quote(user.user_id)}", body)
    assert status == 200, answer


async def read_receipt(user: User, room_id: str, event_id: str, receipt_type: str = "m.read") -> None:
    status, answer = await user.call("POST", f"rooms/{quote(room_id)}/receipt/{receipt_type}/{quote(event_id)}", {})
    assert status == 200, answer


async def typing_and_receipts_both_ways(a: User, b: User, room_id: str, a_event: str, b_event: str) -> None:
    """``a`` and ``b`` (on two servers) are joined to the room, where
    ``a_event`` was sent by ``a`` and ``b_event`` by ``b``, and both
    reached both servers."""
    since_a = (await a.sync())["next_batch"]
    since_b = (await b.sync())["next_batch"]
    # a types: b sees it; a stops: b sees that too
    await set_typing(a, room_id, True)
    since_b, _ = await until_ephemeral(b, since_b, room_id, lambda evs: typing_now(evs) == [a.user_id])
    await set_typing(a, room_id, False)
    since_b, _ = await until_ephemeral(b, since_b, room_id, lambda evs: typing_now(evs) == [])
    # b types: a sees it
    await set_typing(b, room_id, True)
    since_a, _ = await until_ephemeral(a, since_a, room_id, lambda evs: typing_now(evs) == [b.user_id])
    # read receipts, both ways
    await read_receipt(a, room_id, b_event)
    await read_receipt(b, room_id, a_event)
    await until_ephemeral(b, since_b, room_id, lambda evs: a.user_id in read_by(evs, b_event))
    await until_ephemeral(a, since_a, room_id, lambda evs: b.user_id in read_by(evs, a_event))


async def presence_reaches(a: User, b: User, status_msg: str) -> None:
    """``a``'s presence change shows in the /sync of ``b`` (sharing a room)."""
    since_b = (await b.sync())["next_batch"]
    status, answer = await a.call("PUT", f"presence/{quote(a.user_id)}/status",
                                  {"presence": "unavailable", "status_msg": status_msg})
    assert status == 200, answer

    def arrived(body: dict[str, Any]) -> bool:
        return any(e["sender"] == a.user_id and e["content"].get("status_msg") == status_msg
                   and e["content"]["presence"] == "unavailable" for e in body.get("presence", {}).get("events", []))

    assert (await sync_until(b, since_b, arrived))[1]
