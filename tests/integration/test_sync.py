"""/sync: initial, incremental, long-poll, full_state, limited timelines
and their pagination, invites, leaves, kicks, filters, forgotten rooms."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .room_helpers import create_room, invite_and_join, q, send_text


async def sync(api: ApiClient, since: str | None = None, *, filter: Any = None, timeout: int = 0,
               full_state: bool = False, path: str = "sync") -> dict[str, Any]:
    params: dict[str, str] = {"timeout": str(timeout)}
    if since is not None:
        params["since"] = since
    if filter is not None:
        params["filter"] = filter if isinstance(filter, str) else json.dumps(filter)
    if full_state:
        params["full_state"] = "true"
    r = await api.get(path, params=params)
    assert r.status == 200, r
    return r.body


def joined(body: dict[str, Any]) -> dict[str, Any]:
    return body.get("rooms", {}).get("join", {})


def timeline_bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"]["body"] for e in room["timeline"]["events"] if e["type"] == "m.room.message"]


def state_keys(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in events}


# -- initial and incremental ---------------------------------------------------------------


async def test_initial_sync(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"name": "Room", "preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "hello")
    body = await sync(bob)
    assert body["next_batch"]
    room = joined(body)[room_id]
    assert timeline_bodies(room) == ["hello"]
    timeline_ids = {e["event_id"] for e in room["timeline"]["events"]}
    # state + timeline together describe the room, without overlap
    keys = state_keys(room["state"]["events"]) | state_keys(
        [e for e in room["timeline"]["events"] if "state_key" in e]
    )
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", alice.user_id),
            ("m.room.member", bob.user_id), ("m.room.power_levels", "")} <= keys
    assert not timeline_ids & {e["event_id"] for e in room["state"]["events"]}
    assert room["summary"]["m.joined_member_count"] == 2
    assert room["summary"]["m.heroes"] == [alice.user_id]


async def test_incremental_sync(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    first = await sync(bob)
    await send_text(alice, room_id, "new")
    body = await sync(bob, first["next_batch"])
    room = joined(body)[room_id]
    assert timeline_bodies(room) == ["new"]
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []
    # nothing new: the room is left out
    again = await sync(bob, body["next_batch"])
    assert room_id not in joined(again)
    # a token from another sync works as a /messages token
    r = await bob.get(f"rooms/{q(room_id)}/messages",
                      params={"dir": "b", "from": room["timeline"]["prev_batch"], "limit": "1"})
    assert r.status == 200 and r["chunk"] and r["chunk"][0]["type"] == "m.room.member"


async def test_own_txn_id_in_sync(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    first = await sync(alice)
    await alice.put(f"rooms/{q(room_id)}/send/m.room.message/abc", {"msgtype": "m.text", "body": "x"})
    body = await sync(alice, first["next_batch"])
    ev = joined(body)[room_id]["timeline"]["events"][-1]
    assert ev["unsigned"]["transaction_id"] == "abc"


async def test_long_poll_wakes_when_another_user_sends(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    poll = asyncio.create_task(sync(bob, since, timeout=30_000))
    await asyncio.sleep(0.3)  # let the request start waiting (the result does not depend on it)
    assert not poll.done()
    await send_text(alice, room_id, "wake up")
    body = await asyncio.wait_for(poll, 20)
    assert timeline_bodies(joined(body)[room_id]) == ["wake up"]


async def test_a_long_poll_from_the_last_answer_takes_its_rooms_from_that_answer(
    server: HomeServer, alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll from the position the previous answer gave takes the
    rooms whose changes wake it from the memberships that answer read (no
    current-state read per long-poll); still woken by a message, and by a
    room joined meanwhile (a change of the user's own memberships)."""
    assert server.services is not None
    room_id = await create_room(alice, {"preset": "public_chat"})
    other = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    rooms = server.services.sync.rooms
    read = rooms.rooms_for_user
    asked: list[str] = []

    async def counting(user_id: str, membership: str = "join") -> list[str]:
        asked.append(user_id)
        return await read(user_id, membership)

    monkeypatch.setattr(rooms, "rooms_for_user", counting)
    notifier = server.services.sync.notifier
    loop = asyncio.get_running_loop()
    for text in ("wake up", "again"):
        poll = asyncio.create_task(sync(bob, since, timeout=30_000))
        deadline = loop.time() + 20  # bounded: until the request waits
        while notifier.waiting == 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert notifier.waiting == 1 and not poll.done()
        await send_text(alice, room_id, text)
        body = await asyncio.wait_for(poll, 20)
        assert timeline_bodies(joined(body)[room_id]) == [text]
        since = body["next_batch"]
    assert bob.user_id not in asked
    poll = asyncio.create_task(sync(bob, since, timeout=30_000))
    await bob.post(f"rooms/{q(other)}/join", {})  # (maybe before the request waits: either way)
    body = await asyncio.wait_for(poll, 20)
    assert other in joined(body)


async def test_long_poll_times_out_empty(alice: ApiClient) -> None:
    await create_room(alice)
    since = (await sync(alice))["next_batch"]
    body = await asyncio.wait_for(sync(alice, since, timeout=200), 20)
    assert joined(body) == {}
    assert body["next_batch"]


async def test_long_poll_wakes_for_invite(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    since = (await sync(bob))["next_batch"]
    poll = asyncio.create_task(sync(bob, since, timeout=30_000))
    await asyncio.sleep(0.3)
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    body = await asyncio.wait_for(poll, 20)
    assert room_id in body["rooms"]["invite"]


async def test_full_state(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"name": "n", "preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    await send_text(alice, room_id, "m")
    body = await sync(bob, since, full_state=True)
    room = joined(body)[room_id]
    assert timeline_bodies(room) == ["m"]
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", bob.user_id)} <= state_keys(
        room["state"]["events"]
    )
    # full_state answers at once even with nothing new, with every room
    body = await sync(bob, body["next_batch"], full_state=True, timeout=30_000)
    assert room_id in joined(body)


async def test_sync_bad_params(alice: ApiClient) -> None:
    for params in ({"since": "garbage"}, {"timeout": "soon"}, {"filter": "{bad json"},
                   {"filter": "no-such-filter-id"}, {"filter": "[1]"}, {"set_presence": "asleep"}):
        r = await alice.get("sync", params=params)
        assert (r.status, r["errcode"]) in ((400, "M_INVALID_PARAM"), (404, "M_NOT_FOUND")), (params, r)


async def test_sync_needs_auth(api: ApiClient) -> None:
    r = await api.get("sync", token=None)
    assert (r.status, r["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_sync_on_r0(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    body = await sync(alice, path="/_matrix/client/r0/sync")
    assert room_id in joined(body)


# -- limited timelines ---------------------------------------------------------------------


async def test_limited_timeline_and_prev_batch_back_to_start(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    for i in range(12):
        await send_text(alice, room_id, f"m{i}")
    body = await sync(alice, filter={"room": {"timeline": {"limit": 3}}})
    room = joined(body)[room_id]
    assert timeline_bodies(room) == ["m9", "m10", "m11"]
    assert room["timeline"]["limited"] is True
    # page back with /messages from prev_batch to the start of the room
    seen = [e["event_id"] for e in room["timeline"]["events"]]
    token = room["timeline"]["prev_batch"]
    for _ in range(50):
        r = await alice.get(f"rooms/{q(room_id)}/messages", params={"dir": "b", "from": token, "limit": "4"})
        assert r.status == 200
        seen = [e["event_id"] for e in reversed(r["chunk"])] + seen
        if "end" not in r.body:
            break
        token = r["end"]
    everything = await alice.get(f"rooms/{q(room_id)}/messages", params={"dir": "f", "limit": "1000"})
    assert seen == [e["event_id"] for e in everything["chunk"]]
    assert everything["chunk"][0]["type"] == "m.room.create"


async def test_incremental_limited_gives_state_delta(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat", "name": "old"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    f = {"room": {"timeline": {"limit": 2}}}
    since = (await sync(bob, filter=f))["next_batch"]
    await alice.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "new"})
    for i in range(5):
        await send_text(alice, room_id, f"m{i}")
    body = await sync(bob, since, filter=f)
    room = joined(body)[room_id]
    assert timeline_bodies(room) == ["m3", "m4"]
    assert room["timeline"]["limited"] is True
    state = {(e["type"], e["state_key"]): e for e in room["state"]["events"]}
    # only what changed in the gap, not the whole room state
    assert set(state) == {("m.room.name", "")}
    assert state[("m.room.name", "")]["content"] == {"name": "new"}
    # not limited: no state
    await send_text(alice, room_id, "one more")
    body = await sync(bob, body["next_batch"], filter=f)
    room = joined(body)[room_id]
    assert room["timeline"]["limited"] is False and room["state"]["events"] == []


async def test_state_change_in_timeline_not_repeated_in_state(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    await alice.put(f"rooms/{q(room_id)}/state/m.room.topic", {"topic": "t"})
    body = await sync(bob, since)
    room = joined(body)[room_id]
    assert [e["type"] for e in room["timeline"]["events"]] == ["m.room.topic"]
    assert room["state"]["events"] == []


async def test_timeline_limit_zero(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    body = await sync(alice, filter={"room": {"timeline": {"limit": 0}}})
    room = joined(body)[room_id]
    assert room["timeline"]["events"] == []
    assert ("m.room.create", "") in state_keys(room["state"]["events"])


# -- invites, joins, leaves, kicks ----------------------------------------------------------------


async def test_invite_appears_with_stripped_state(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"name": "Invite me", "topic": "tt"})
    since = (await sync(bob))["next_batch"]
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    body = await sync(bob, since)
    assert room_id not in joined(body)
    events = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    for e in events:
        assert set(e) <= {"content", "sender", "state_key", "type"}
    by_key = {(e["type"], e["state_key"]): e for e in events}
    assert by_key[("m.room.name", "")]["content"] == {"name": "Invite me"}
    assert ("m.room.create", "") in by_key and ("m.room.join_rules", "") in by_key
    assert by_key[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
    assert by_key[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    # the invite is not repeated in the next incremental sync, but is in an initial one
    again = await sync(bob, body["next_batch"])
    assert room_id not in again.get("rooms", {}).get("invite", {})
    assert room_id in (await sync(bob))["rooms"]["invite"]
    # joining moves it to rooms.join with the full state
    await bob.post(f"rooms/{q(room_id)}/join", {})
    body = await sync(bob, again["next_batch"])
    room = joined(body)[room_id]
    assert room_id not in body["rooms"].get("invite", {})
    keys = state_keys(room["state"]["events"]) | state_keys(
        [e for e in room["timeline"]["events"] if "state_key" in e]
    )
    assert ("m.room.create", "") in keys and ("m.room.name", "") in keys


async def test_leave_appears_in_leave_section(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    await send_text(alice, room_id, "before you go")
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    await send_text(alice, room_id, "after you left")
    body = await sync(bob, since)
    assert room_id not in joined(body)
    left = body["rooms"]["leave"][room_id]
    events = left["timeline"]["events"]
    assert [e["type"] for e in events] == ["m.room.message", "m.room.member"]
    assert events[-1]["state_key"] == bob.user_id and events[-1]["content"]["membership"] == "leave"
    assert "after you left" not in timeline_bodies(left)
    # later syncs do not repeat it
    again = await sync(bob, body["next_batch"])
    assert room_id not in again.get("rooms", {}).get("leave", {})
    # an initial sync shows it only with include_leave
    assert room_id not in (await sync(bob)).get("rooms", {}).get("leave", {})
    with_leave = await sync(bob, filter={"room": {"include_leave": True}})
    assert room_id in with_leave["rooms"]["leave"]


async def test_kicked_user_stops_getting_the_room(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": bob.user_id, "reason": "bye"})
    body = await sync(bob, since)
    left = body["rooms"]["leave"][room_id]
    kick = left["timeline"]["events"][-1]
    assert kick["sender"] == alice.user_id and kick["content"]["membership"] == "leave"
    since = body["next_batch"]
    await send_text(alice, room_id, "secret after kick")
    await alice.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "secret"})
    body = await sync(bob, since)
    assert room_id not in joined(body)
    assert room_id not in body.get("rooms", {}).get("leave", {})
    # nor does an initial sync (even with include_leave) show what came after
    body = await sync(bob, filter={"room": {"include_leave": True}})
    left = body["rooms"]["leave"][room_id]
    assert "secret after kick" not in timeline_bodies(left)
    assert ("m.room.name", "") not in state_keys(left["state"]["events"])


async def test_banned_user_gets_ban_in_leave(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    await alice.post(f"rooms/{q(room_id)}/ban", {"user_id": bob.user_id})
    body = await sync(bob, since)
    assert body["rooms"]["leave"][room_id]["timeline"]["events"][-1]["content"]["membership"] == "ban"


async def test_forgotten_rooms_not_in_leave(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await bob.post(f"rooms/{q(room_id)}/join", {})
    since = (await sync(bob))["next_batch"]
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    assert (await bob.post(f"rooms/{q(room_id)}/forget", {})).status == 200
    body = await sync(bob, since)
    assert room_id not in body.get("rooms", {}).get("leave", {})
    body = await sync(bob, filter={"room": {"include_leave": True}})
    assert room_id not in body.get("rooms", {}).get("leave", {})
    # rejoining brings it back
    await bob.post(f"rooms/{q(room_id)}/join", {})
    assert room_id in joined(await sync(bob))


async def test_newly_joined_room_in_incremental_sync(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat", "name": "late"})
    for i in range(3):
        await send_text(alice, room_id, f"m{i}")
    since = (await sync(bob))["next_batch"]
    await bob.post(f"rooms/{q(room_id)}/join", {})
    body = await sync(bob, since, filter={"room": {"timeline": {"limit": 2}}})
    room = joined(body)[room_id]
    keys = state_keys(room["state"]["events"]) | state_keys(
        [e for e in room["timeline"]["events"] if "state_key" in e]
    )
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", alice.user_id)} <= keys
    assert room["timeline"]["events"][-1]["state_key"] == bob.user_id
    assert room["timeline"]["limited"] is True


async def test_knock_section(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"initial_state": [
        {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]})
    since = (await sync(bob))["next_batch"]
    await bob.post(f"knock/{q(room_id)}", {})
    body = await sync(bob, since)
    events = body["rooms"]["knock"][room_id]["knock_state"]["events"]
    assert any(e["type"] == "m.room.member" and e["content"]["membership"] == "knock" for e in events)


# -- filters ------------------------------------------------------------------------------------


async def test_filter_timeline_types(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    since = (await sync(alice))["next_batch"]
    await send_text(alice, room_id, "text")
    await alice.put(f"rooms/{q(room_id)}/send/org.example.ping/t1", {"n": 1})
    await alice.put(f"rooms/{q(room_id)}/state/m.room.topic", {"topic": "x"})
    body = await sync(alice, since, filter={"room": {"timeline": {"types": ["m.room.message", "org.example.*"]}}})
    assert [e["type"] for e in joined(body)[room_id]["timeline"]["events"]] == ["m.room.message", "org.example.ping"]
    body = await sync(alice, since, filter={"room": {"timeline": {"not_types": ["org.example.ping"]}}})
    assert [e["type"] for e in joined(body)[room_id]["timeline"]["events"]] == ["m.room.message", "m.room.topic"]
    body = await sync(alice, since, filter={"room": {"timeline": {"limit": 1}}})
    room = joined(body)[room_id]
    assert [e["type"] for e in room["timeline"]["events"]] == ["m.room.topic"]
    assert room["timeline"]["limited"] is True


async def test_filter_rooms_and_not_rooms(alice: ApiClient) -> None:
    r1 = await create_room(alice)
    r2 = await create_room(alice)
    body = await sync(alice, filter={"room": {"rooms": [r1]}})
    assert set(joined(body)) == {r1}
    body = await sync(alice, filter={"room": {"not_rooms": [r1]}})
    assert set(joined(body)) == {r2}
    body = await sync(alice, filter={"room": {"rooms": [r1, r2], "not_rooms": [r2]}})
    assert set(joined(body)) == {r1}
    body = await sync(alice, filter={"room": {"rooms": []}})
    assert joined(body) == {}


async def test_filter_lazy_load_members(
    alice: ApiClient, bob: ApiClient, carol: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    # more members than heroes (5): "zed" sorts last, so is none of carol's heroes
    others = []
    for name in ("dave", "erin", "fay", "gus", "zed"):
        other = new_client()
        await other.register(name)
        others.append(other)
    for u in (bob, carol, *others):
        await u.post(f"rooms/{q(room_id)}/join", {})
    await send_text(bob, room_id, "only bob speaks")
    f = {"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}}
    body = await sync(carol, filter=f)
    room = joined(body)[room_id]
    members = {k for t, k in state_keys(room["state"]["events"]) if t == "m.room.member"}
    # the timeline's senders, the user itself and the summary's heroes (the
    # spec: their membership events MUST be in the state), nobody else
    heroes = room["summary"]["m.heroes"]
    assert heroes == [alice.user_id, bob.user_id, *(u.user_id for u in others[:3])], heroes
    assert members == {bob.user_id, carol.user_id, *heroes}
    assert ("m.room.member", others[-1].user_id) not in state_keys(room["state"]["events"])
    assert ("m.room.create", "") in state_keys(room["state"]["events"])
    # a hero (dave) leaves: gus is one now, and his membership comes with
    # the new heroes (carol's client never had it); zed's still does not
    since = body["next_batch"]
    await others[0].post(f"rooms/{q(room_id)}/leave", {})
    body = await sync(carol, since, filter=f)
    room = joined(body)[room_id]
    heroes = room["summary"]["m.heroes"]
    assert heroes == [alice.user_id, bob.user_id, *(u.user_id for u in others[1:4])], heroes
    members = {k for t, k in state_keys(room["state"]["events"]) if t == "m.room.member"}
    # (the other heroes' too: which of them carol's client has is not tracked)
    assert others[3].user_id in members and members <= set(heroes), room
    # without lazy loading, everyone
    body = await sync(carol, filter={"room": {"timeline": {"limit": 1}}})
    members = {k for t, k in state_keys(joined(body)[room_id]["state"]["events"]) if t == "m.room.member"}
    assert members == {alice.user_id, bob.user_id, carol.user_id, *(u.user_id for u in others)}  # dave: his leave


async def test_filter_by_id(alice: ApiClient) -> None:
    room_id = await create_room(alice)
    await send_text(alice, room_id, "a")
    await send_text(alice, room_id, "b")
    r = await alice.post(f"user/{q(alice.user_id)}/filter", {"room": {"timeline": {"limit": 1}}})
    assert r.status == 200, r
    body = await sync(alice, filter=r["filter_id"])
    assert timeline_bodies(joined(body)[room_id]) == ["b"]


async def test_two_users_see_the_same_order(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await invite_and_join(alice, bob, room_id)
    for i in range(4):
        await send_text(alice if i % 2 else bob, room_id, f"m{i}")
    a = timeline_bodies(joined(await sync(alice))[room_id])
    b = timeline_bodies(joined(await sync(bob))[room_id])
    assert a == b == ["m0", "m1", "m2", "m3"]


# -- history visibility in sync ----------------------------------------------------------------


async def test_sync_respects_joined_history_visibility(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    await alice.put(f"rooms/{q(room_id)}/state/m.room.history_visibility", {"history_visibility": "joined"})
    await send_text(alice, room_id, "before bob")
    since = (await sync(bob))["next_batch"]
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "after bob")
    # incremental: the room is new to bob
    room = joined(await sync(bob, since))[room_id]
    assert timeline_bodies(room) == ["after bob"]
    # initial
    room = joined(await sync(bob))[room_id]
    assert timeline_bodies(room) == ["after bob"]
    # bob leaves, alice talks, bob comes back: the gap stays hidden
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    await send_text(alice, room_id, "while bob is away")
    since = (await sync(bob))["next_batch"]
    await bob.post(f"rooms/{q(room_id)}/join", {})
    room = joined(await sync(bob, since))[room_id]
    assert "while bob is away" not in timeline_bodies(room)
    room = joined(await sync(bob))[room_id]
    assert timeline_bodies(room) == ["after bob"]
    # and an initial sync of a left room shows only what bob could see
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    body = await sync(bob, filter={"room": {"include_leave": True}})
    assert timeline_bodies(body["rooms"]["leave"][room_id]) == ["after bob"]


async def test_room_joined_and_left_between_syncs(alice: ApiClient, bob: ApiClient) -> None:
    """A room the client never saw arrives in rooms.leave with its state,
    not just the changes since the token."""
    room_id = await create_room(alice, {"preset": "public_chat", "name": "brief"})
    since = (await sync(bob))["next_batch"]
    await bob.post(f"rooms/{q(room_id)}/join", {})
    await send_text(alice, room_id, "hi")
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    body = await sync(bob, since)
    left = body["rooms"]["leave"][room_id]
    keys = state_keys(left["state"]["events"]) | state_keys(
        [e for e in left["timeline"]["events"] if "state_key" in e]
    )
    assert ("m.room.create", "") in keys and ("m.room.name", "") in keys


async def test_rejected_invite_in_leave(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice)
    await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    since = (await sync(bob))["next_batch"]
    await bob.post(f"rooms/{q(room_id)}/leave", {})
    body = await sync(bob, since)
    left = body["rooms"]["leave"][room_id]
    assert room_id not in body["rooms"].get("invite", {})
    assert left["timeline"]["events"][-1]["content"]["membership"] == "leave"
    # bob never joined: the room's state (members, ...) is not his to see
    assert ("m.room.member", alice.user_id) not in state_keys(left["state"]["events"])


async def test_initial_sync_of_many_rooms_comes_in_pieces_as_one_answer(
    alice: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An initial sync of more rooms than api/http.py's ROOMS_IN_PIECES is
    encoded room by room and written in chunks: the client reads the same
    answer as one encoded whole (and the spec's schema checks it)."""
    from coffeechat_home.api import http

    rooms = [await create_room(alice, {"name": f"room {i}"}) for i in range(http.ROOMS_IN_PIECES + 2)]
    for i, room_id in enumerate(rooms):
        await send_text(alice, room_id, f"message {i} " + "é" * 2000)
    params = {"filter": json.dumps({"presence": {"types": []}})}
    assert (await alice.get("sync", params=params)).status == 200  # (presence set online: nothing moves after)
    pieces = await alice.get("sync", params=params)
    monkeypatch.setattr(http, "ROOMS_IN_PIECES", 10**9)
    whole = await alice.get("sync", params=params)
    assert pieces.status == whole.status == 200
    assert set(pieces["rooms"]["join"]) == set(rooms)
    assert int(pieces.headers["Content-Length"]) > 64 * 1024  # several chunks
    assert pieces.body == whole.body


async def test_an_initial_sync_of_many_rooms_is_built_a_chunk_of_rooms_at_a_time(
    alice: ApiClient, bob: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rooms new to the client are built ``WHOLE_ROOMS_CHUNK`` at a time (a
    big initial sync then holds a chunk's rows and state at once, not all
    of them): the answer is the one built at once, for an initial sync and
    a full_state one, lazy-loading members or not."""
    from coffeechat_home.services import sync as sync_service

    rooms = [await create_room(alice, {"name": f"room {i}", "preset": "public_chat"}) for i in range(10)]
    for i, room_id in enumerate(rooms):
        if i % 3 == 0:
            await invite_and_join(alice, bob, room_id)
            await send_text(bob, room_id, f"bob in room {i}")
        await send_text(alice, room_id, f"message {i}")
    since = (await sync(alice, filter={"presence": {"types": []}}))["next_batch"]
    await send_text(alice, rooms[1], "after the first sync")
    for lazy in (False, True):
        params: dict[str, Any] = {
            "filter": {"presence": {"types": []}, "room": {"state": {"lazy_load_members": lazy}}}
        }
        answers = []
        for chunk in (4, 10**9):
            monkeypatch.setattr(sync_service, "WHOLE_ROOMS_CHUNK", chunk)
            answers.append((await sync(alice, **params), await sync(alice, since, full_state=True, **params)))
        (initial, full), (initial_whole, full_whole) = answers
        assert set(initial["rooms"]["join"]) == set(rooms)
        assert initial == initial_whole
        assert full == full_whole
        assert "after the first sync" in [
            e["content"].get("body") for e in full["rooms"]["join"][rooms[1]]["timeline"]["events"]
        ]
