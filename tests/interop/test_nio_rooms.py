"""matrix-nio as real clients in rooms: create, invite, join, send, edit,
redact, kick, paginate history, typing and receipts, an initial sync of 50
rooms, and incremental syncs that see a message exactly once.

Every action goes through nio's own API; raw HTTP is not needed. Waits are
bounded by a number of syncs (each a long-poll with a timeout), never by
wall-clock assertions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

import nio
import pytest

from .nio_helpers import nio_user

pytestmark = pytest.mark.slow

SYNC_ROUNDS = 20  # long-polls to wait for something, at most
LONG_POLL_MS = 3000


async def _sync(client: nio.AsyncClient, timeout_ms: int = 0, **kw: Any) -> nio.SyncResponse:
    resp = await client.sync(timeout=timeout_ms, **kw)
    assert isinstance(resp, nio.SyncResponse), resp
    return resp


async def _sync_until(client: nio.AsyncClient, done: Callable[[], bool], what: str) -> None:
    """Long-poll until ``done()``; a bounded number of syncs."""
    for _ in range(SYNC_ROUNDS):
        if done():
            return
        await _sync(client, LONG_POLL_MS)
    assert done(), f"{client.user_id} never saw {what}"


def _timeline_events(resp: nio.SyncResponse, room_id: str) -> list[Any]:
    room = resp.rooms.join.get(room_id)
    return list(room.timeline.events) if room is not None else []


async def _history(client: nio.AsyncClient, room_id: str, page: int = 4) -> list[Any]:
    """All events of the room, oldest first, paginating back with nio
    (following ``end`` until there is none)."""
    events: list[Any] = []
    start = client.next_batch
    for _ in range(500):
        resp = await client.room_messages(room_id, start=start, limit=page)
        assert isinstance(resp, nio.RoomMessagesResponse), resp
        events.extend(resp.chunk)
        if not resp.end or not resp.chunk:
            break
        start = resp.end
    else:
        raise AssertionError("history pagination never reached the start")
    events.reverse()
    return events


async def test_nio_room_conversation(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    carol = await nio_user(base_url, tmp_path, "carol")
    clients = [alice, bob, carol]
    try:
        await _sync(alice)
        created = await alice.room_create(name="Coffee corner", topic="beans", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        invited = await alice.room_invite(room_id, carol.user_id)
        assert isinstance(invited, nio.RoomInviteResponse), invited

        # bob and carol see the invite via sync, with the room's name, and join
        for c in (bob, carol):
            await _sync_until(c, lambda c=c: room_id in c.invited_rooms, "the invite")
            assert c.invited_rooms[room_id].name == "Coffee corner"
            joined = await c.join(room_id)
            assert isinstance(joined, nio.JoinResponse) and joined.room_id == room_id, joined
        for c in clients:
            await _sync_until(
                c,
                lambda c=c: room_id in c.rooms and {alice.user_id, bob.user_id, carol.user_id} <= set(c.rooms[room_id].users),
                "everyone joined",
            )
            assert c.rooms[room_id].name == "Coffee corner" and c.rooms[room_id].topic == "beans"

        sent: list[str] = []

        async def say(c: nio.AsyncClient, content: dict[str, Any]) -> str:
            resp = await c.room_send(room_id, "m.room.message", content)
            assert isinstance(resp, nio.RoomSendResponse), resp
            sent.append(resp.event_id)
            return resp.event_id

        a1 = await say(alice, {"msgtype": "m.text", "body": "hello from alice"})
        b1 = await say(bob, {"msgtype": "m.text", "body": "secret from bob"})
        c1 = await say(carol, {"msgtype": "m.text", "body": "hi from carol"})
        edit = await say(alice, {
            "msgtype": "m.text",
            "body": "* hello everyone",
            "m.new_content": {"msgtype": "m.text", "body": "hello everyone"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": a1},
        })
        redaction = await bob.room_redact(room_id, b1, reason="oops")
        assert isinstance(redaction, nio.RoomRedactResponse), redaction
        sent.append(redaction.event_id)

        # the others see the messages, the edit and the redaction through sync
        for c in (alice, carol):
            got: dict[str, Any] = {}

            def collect(room: nio.MatrixRoom, event: Any, got: dict[str, Any] = got) -> None:
                got[event.event_id] = event

            c.add_event_callback(collect, (nio.RoomMessageText, nio.RedactionEvent, nio.RedactedEvent))
            await _sync_until(c, lambda got=got: redaction.event_id in got, "the redaction")
            c.event_callbacks.clear()
            red = got[redaction.event_id]
            assert isinstance(red, nio.RedactionEvent) and red.redacts == b1 and red.reason == "oops"
            assert got[edit].source["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": a1}
            assert got[edit].source["content"]["m.new_content"]["body"] == "hello everyone"

        # a fresh login sees bob's message redacted in its initial sync
        carol2 = nio.AsyncClient(base_url, carol.user_id, store_path=str(tmp_path / "nio-carol"))
        clients.append(carol2)
        assert isinstance(await carol2.login("password of carol", device_name="phone"), nio.LoginResponse)
        initial = await _sync(carol2, sync_filter={"room": {"timeline": {"limit": 50}}})
        by_id = {e.event_id: e for e in _timeline_events(initial, room_id)}
        assert isinstance(by_id[b1], nio.RedactedEvent), by_id[b1]
        assert "body" not in by_id[b1].source["content"]
        assert by_id[a1].body == "hello from alice"

        # alice kicks carol; carol can no longer send
        kicked = await alice.room_kick(room_id, carol.user_id, reason="enough coffee")
        assert isinstance(kicked, nio.RoomKickResponse), kicked
        left: dict[str, Any] = {}
        for _ in range(SYNC_ROUNDS):  # nio 0.26 keeps left rooms in client.rooms: read rooms.leave
            resp = await _sync(carol, LONG_POLL_MS)
            left.update(resp.rooms.leave)
            if room_id in left:
                break
        assert room_id in left, "carol never saw the kick in rooms.leave"
        kick_seen = [e for e in left[room_id].timeline.events if isinstance(e, nio.RoomMemberEvent)]
        assert kick_seen and kick_seen[-1].membership == "leave" and kick_seen[-1].sender == alice.user_id
        refused = await carol.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "still here?"})
        assert isinstance(refused, nio.RoomSendError) and refused.status_code == "M_FORBIDDEN", refused
        after_kick = await say(bob, {"msgtype": "m.text", "body": "bye carol"})

        # history, paginated back to the start, holds exactly what was sent, in order
        await _sync(alice)
        history = await _history(alice, room_id)
        ids = [e.event_id for e in history]
        assert len(ids) == len(set(ids)), "history repeated an event"
        assert history[0].source["type"] == "m.room.create"
        assert [i for i in ids if i in set(sent)] == sent
        assert isinstance(history[ids.index(b1)], nio.RedactedEvent)
        assert history[-1].event_id == after_kick
        carol_memberships = [
            e.membership for e in history
            if isinstance(e, nio.RoomMemberEvent) and e.state_key == carol.user_id
        ]
        assert carol_memberships == ["invite", "join", "leave"]
        kick_event = next(e for e in history if isinstance(e, nio.RoomMemberEvent) and e.membership == "leave")
        assert kick_event.sender == alice.user_id
        # and a page size of one gives the same
        await _sync(bob)
        assert [e.event_id for e in await _history(bob, room_id, page=1)] == ids
        assert c1 in ids
    finally:
        for c in clients:
            await c.close()


async def test_nio_typing_and_receipts(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "talker")
    bob = await nio_user(base_url, tmp_path, "listener")
    try:
        created = await alice.room_create(name="Typing room", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await _sync_until(bob, lambda: room_id in bob.invited_rooms, "the invite")
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await _sync_until(bob, lambda: room_id in bob.rooms, "the join")
        await _sync_until(alice, lambda: bob.user_id in alice.rooms.get(room_id, nio.MatrixRoom("", "")).users,
                          "bob joining")
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "read me"})
        assert isinstance(sent, nio.RoomSendResponse), sent

        typing = await alice.room_typing(room_id, True, timeout=30000)
        assert isinstance(typing, nio.RoomTypingResponse), typing
        await _sync_until(bob, lambda: alice.user_id in bob.rooms[room_id].typing_users, "alice typing")
        stopped = await alice.room_typing(room_id, False)
        assert isinstance(stopped, nio.RoomTypingResponse), stopped
        await _sync_until(bob, lambda: alice.user_id not in bob.rooms[room_id].typing_users, "alice stop typing")

        markers = await bob.room_read_markers(room_id, fully_read_event=sent.event_id, read_event=sent.event_id)
        assert isinstance(markers, nio.RoomReadMarkersResponse), markers

        def bob_read() -> bool:
            receipt = alice.rooms[room_id].read_receipts.get(bob.user_id)
            return receipt is not None and receipt.event_id == sent.event_id

        await _sync_until(alice, bob_read, "bob's read receipt")
        await _sync_until(bob, lambda: bob.rooms[room_id].fully_read_marker == sent.event_id, "the fully read marker")

        # a threaded receipt through update_receipt_marker (thread "main")
        second = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "and me"})
        assert isinstance(second, nio.RoomSendResponse), second
        receipt = await bob.update_receipt_marker(room_id, second.event_id)
        assert isinstance(receipt, nio.UpdateReceiptMarkerResponse), receipt

        def bob_read_main() -> bool:
            r = alice.rooms[room_id].threaded_read_receipts.get(bob.user_id, {}).get("main")
            return r is not None and r.event_id == second.event_id

        await _sync_until(alice, bob_read_main, "bob's threaded read receipt")
    finally:
        await alice.close()
        await bob.close()


async def test_nio_initial_sync_of_fifty_rooms(base_url: str, tmp_path: Path) -> None:
    owner = await nio_user(base_url, tmp_path, "owner")
    member = await nio_user(base_url, tmp_path, "member")
    try:
        names = {}
        for i in range(50):
            created = await owner.room_create(name=f"room {i:02d}", invite=[member.user_id])
            assert isinstance(created, nio.RoomCreateResponse), created
            names[created.room_id] = f"room {i:02d}"
        for room_id in names:
            joined = await member.join(room_id)
            assert isinstance(joined, nio.JoinResponse), joined

        fresh = nio.AsyncClient(base_url, member.user_id, store_path=str(tmp_path / "nio-member"))
        try:
            assert isinstance(await fresh.login("password of member", device_name="new laptop"), nio.LoginResponse)
            resp = await _sync(fresh, full_state=True)
            assert set(resp.rooms.join) == set(names)
            assert set(fresh.rooms) == set(names)
            for room_id, name in names.items():
                room = fresh.rooms[room_id]
                assert room.name == name and room.display_name == name
                assert set(room.users) == {owner.user_id, member.user_id}
                assert room.member_count == 2 and room.invited_count == 0
            assert not resp.rooms.invite and not resp.rooms.leave
        finally:
            await fresh.close()
    finally:
        await owner.close()
        await member.close()


async def test_nio_incremental_sync_sees_a_message_once(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "poster")
    bob = await nio_user(base_url, tmp_path, "poller")
    try:
        created = await alice.room_create(name="Once", invite=[bob.user_id])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await _sync_until(bob, lambda: room_id in bob.invited_rooms, "the invite")
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await _sync(alice)

        first = await _sync(bob)  # catch up; its next_batch is the since token below
        since = first.next_batch
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "exactly once"})
        assert isinstance(sent, nio.RoomSendResponse), sent

        seen: list[str] = []
        tokens = [since]
        for _ in range(SYNC_ROUNDS):  # a sync_forever-style loop, bounded
            resp = await _sync(bob, LONG_POLL_MS, since=tokens[-1])
            seen += [e.event_id for e in _timeline_events(resp, room_id)]
            tokens.append(resp.next_batch)
            if sent.event_id in seen:
                break
        # and once more after it arrived: nothing repeats
        resp = await _sync(bob, 500, since=tokens[-1])
        seen += [e.event_id for e in _timeline_events(resp, room_id)]
        assert seen.count(sent.event_id) == 1, seen
        assert seen == [sent.event_id]

        # a long-poll already waiting wakes for a new message
        waiting = asyncio.create_task(bob.sync(timeout=30000, since=resp.next_batch))
        await asyncio.sleep(0)
        second = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "wake up"})
        assert isinstance(second, nio.RoomSendResponse), second
        woke = await asyncio.wait_for(waiting, 60)
        assert isinstance(woke, nio.SyncResponse), woke
        got = [e.event_id for e in _timeline_events(woke, room_id)]
        for _ in range(SYNC_ROUNDS):
            if second.event_id in got:
                break
            woke = await _sync(bob, LONG_POLL_MS, since=woke.next_batch)
            got += [e.event_id for e in _timeline_events(woke, room_id)]
        assert got == [second.event_id]
    finally:
        await alice.close()
        await bob.close()
