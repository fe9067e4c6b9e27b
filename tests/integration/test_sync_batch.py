"""Rooms new to a client are built together (SyncService._whole_rooms, a
few queries for any number of rooms); each must come out exactly as the
one-room path (_joined_room) builds it, under every kind of filter and
history visibility."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from coffeechat_home.app import HomeServer
from coffeechat_home.services.sync_filter import SyncFilter

from ..helpers import ApiClient
from .room_helpers import create_room, invite_and_join, q, send_text

def _plain(value: Any) -> Any:
    """Served events are pre-encoded JSON fragments: compare what a client reads."""
    return orjson.loads(orjson.dumps(value))


FILTERS: list[dict[str, Any]] = [
    {},
    {"room": {"timeline": {"limit": 0}}},
    {"room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": True}}},
    {"room": {"timeline": {"types": ["m.room.*"], "not_senders": ["@nobody:test.local"]}}},
    {"room": {"state": {"types": ["m.room.name", "m.room.member"]}, "timeline": {"limit": 50}}},
]


@pytest.mark.parametrize("filter_json", FILTERS)
async def test_rooms_built_together_equal_rooms_built_alone(
    server: HomeServer, alice: ApiClient, bob: ApiClient, carol: ApiClient, filter_json: dict[str, Any]
) -> None:
    rooms = []
    for visibility in ("shared", "joined", "invited", "world_readable"):
        room_id = await create_room(alice, {"name": f"room {visibility}", "preset": "private_chat"})
        r = await alice.put(f"rooms/{q(room_id)}/state/m.room.history_visibility/",
                            {"history_visibility": visibility})
        assert r.status == 200
        for i in range(12):
            await send_text(alice, room_id, f"before bob {i}")
        await invite_and_join(alice, bob, room_id)
        await invite_and_join(alice, carol, room_id)
        for i in range(4):
            await send_text(carol if i % 2 else alice, room_id, f"after bob {i}")
        rooms.append(room_id)
    r = await bob.post(f"rooms/{q(rooms[0])}/leave", {})
    assert r.status == 200
    r = await alice.post(f"rooms/{q(rooms[0])}/invite", {"user_id": bob.user_id})
    assert r.status == 200
    r = await bob.post(f"rooms/{q(rooms[0])}/join", {})
    assert r.status == 200

    assert server.services is not None
    sync = server.services.sync
    requester = await server.services.accounts.requester_for_token(bob.token or "")
    assert requester is not None
    f = SyncFilter.from_json(filter_json)
    upto = await sync.notifier.stream.current_position()
    latest = await sync.rooms.latest_memberships(requester.user_id, upto)
    together = await sync._whole_rooms(requester, {r: latest[r][2] for r in rooms}, None, upto, f)
    for room_id in rooms:
        alone = await sync._joined_room(requester, room_id, None, upto, latest[room_id][2], f, False)
        assert _plain(together[room_id]) == _plain(alone), room_id
    # and a full_state sync from a later token: timelines since it, state whole
    await send_text(alice, rooms[1], "after the token")
    since = upto
    upto = await sync.notifier.stream.current_position()
    together = await sync._whole_rooms(requester, {r: latest[r][2] for r in rooms}, since, upto, f)
    for room_id in rooms:
        alone = await sync._joined_room(requester, room_id, since, upto, latest[room_id][2], f, True)
        assert _plain(together[room_id]) == _plain(alone), room_id
