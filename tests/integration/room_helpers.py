"""Room setup for tests of features that need joined rooms, through the
real client API (no faked memberships). A failing createRoom fails the
test: it is our own route, never a reason to skip."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import quote

from ..helpers import ApiClient

_txn = itertools.count()


async def create_room(api: ApiClient, body: dict[str, Any] | None = None) -> str:
    r = await api.post("createRoom", body or {})
    assert r.status == 200, r
    return r["room_id"]


async def invite_and_join(inviter: ApiClient, invitee: ApiClient, room_id: str) -> None:
    r = await inviter.post(f"rooms/{quote(room_id)}/invite", {"user_id": invitee.user_id})
    assert r.status == 200, r
    r = await invitee.post(f"rooms/{quote(room_id)}/join", {})
    assert r.status == 200, r


async def send_text(api: ApiClient, room_id: str, body: str, **content: Any) -> str:
    r = await api.put(
        f"rooms/{quote(room_id)}/send/m.room.message/t{next(_txn)}", {"msgtype": "m.text", "body": body, **content}
    )
    assert r.status == 200, r
    return r["event_id"]


def q(s: str) -> str:
    """Percent-encode one path segment (room ids, event ids, user ids)."""
    return quote(s, safe="")


def assert_error(r: Any, status: int, errcode: str) -> None:
    assert (r.status, r.body.get("errcode")) == (status, errcode), r
