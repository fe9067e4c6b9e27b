"""Rooms new to a client are built together (SyncService._whole_rooms, a
few queries for any number of rooms); each must come out exactly as the
one-room path (_joined_room) builds it, under every kind of filter and
history visibility."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from coffeechat_home.app import HomeServer
from coffeechat_home.services.sync_filter import SyncFilter
from coffeechat_home.storage.event_listings import timeline_from_read

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


async def _parked(server: HomeServer, n: int) -> None:
    """Wait (bounded) until ``n`` requests wait in the notifier."""
    assert server.services is not None
    for _ in range(500):
        if server.services.notifier.waiting >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the long-poll never parked")


@pytest.mark.parametrize("visibility", ["shared", "joined"])
async def test_a_woken_sync_built_from_the_read_that_woke_it_equals_one_that_reads(
    server: HomeServer, alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch, visibility: str
) -> None:
    """A long-poll woken by a message takes the room's new events, and
    whether the room restricts its history, from the notifier's read of the
    new position (one statement for all it wakes) instead of a statement of
    its own; its answer is what a sync of the same range that reads them
    gives, and so is the restriction it notes. A filtered timeline reads."""
    assert server.services is not None
    services = server.services
    room_id = await create_room(alice, {"preset": "private_chat"})
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.history_visibility/", {"history_visibility": visibility})
    assert r.status == 200, r
    await invite_and_join(alice, bob, room_id)
    since = (await bob.get("sync"))["next_batch"]
    reads: list[tuple[Any, ...]] = []
    original = services.events.timeline_and_restriction

    async def counting(*args: Any, **kw: Any) -> Any:
        reads.append(args)
        return await original(*args, **kw)

    monkeypatch.setattr(services.events, "timeline_and_restriction", counting)
    for i, filter_json in enumerate([None, None, {"room": {"timeline": {"types": ["m.room.message"]}}}]):
        params = {"since": since, "timeout": "10000"}
        if filter_json is not None:
            params["filter"] = orjson.dumps(filter_json).decode()
        poll = asyncio.ensure_future(bob.get("sync", params=params))
        await _parked(server, 1)
        await send_text(alice, room_id, f"message {i}")
        woken = await poll
        assert woken.status == 200, woken
        events = woken["rooms"]["join"][room_id]["timeline"]["events"]
        assert [e["content"]["body"] for e in events] == [f"message {i}"]
        assert len(reads) == (1 if filter_json is not None else 0), reads
        # the same range read by a sync of its own (a timeline limit of its
        # own: no answer shared with the woken sync's)
        plain = await bob.get("sync", params={"since": since, "filter": orjson.dumps(
            {"room": {"timeline": {"limit": 11, **(filter_json or {}).get("room", {}).get("timeline", {})}}}
        ).decode()})
        assert plain["next_batch"] == woken["next_batch"]
        assert _plain(plain["rooms"]["join"][room_id]) == _plain(woken["rooms"]["join"][room_id])
        reads.clear()
        # what the woken sync noted for its rows (the message: the range's last position)
        noted = await services.history.restricts_history(room_id, int(woken["next_batch"][1:]))
        assert not reads and noted == (visibility == "joined") == await services.history.restricts(room_id)
        since = woken["next_batch"]


async def test_the_events_read_with_the_position_are_each_rooms_timeline(
    server: HomeServer, alice: ApiClient, bob: ApiClient
) -> None:
    """The notifier's read of a range's events (StreamStore.
    position_changes_and_events) gives each room what a timeline read of
    that room and range gives, restriction included; with more events than
    it may carry it gives none (the syncs read)."""
    assert server.services is not None
    services = server.services
    rooms = {}
    for visibility in ("joined", "shared"):
        rooms[visibility] = room_id = await create_room(alice, {"preset": "private_chat"})
        r = await alice.put(f"rooms/{q(room_id)}/state/m.room.history_visibility/",
                            {"history_visibility": visibility})
        assert r.status == 200, r
    quiet = await create_room(bob)
    start = await services.stream.current_position()
    for i in range(3):
        for room_id in rooms.values():
            await send_text(alice, room_id, f"{room_id} {i}")
    end = await services.stream.current_position()
    upto, changes, read = await services.stream.position_changes_and_events(start, end, 16)
    assert upto == end and read is not None and len(read.rows) == 6
    assert changes["events"] == set(rooms.values())
    for room_id in [*rooms.values(), quiet]:
        for limit in (2, 11):
            assert timeline_from_read(read, room_id, limit) == await services.events.timeline_and_restriction(
                room_id, after=start, upto=end, limit=limit)
    assert timeline_from_read(read, rooms["joined"], 11)[1] is True
    assert (await services.stream.position_changes_and_events(start, end, 5))[2] is None
    assert (await services.stream.position_changes_and_events(start, end, 0))[2] is None
