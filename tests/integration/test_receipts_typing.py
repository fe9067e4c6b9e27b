"""Receipts, read markers and typing notifications, over HTTP and /sync,
including typing across two instances sharing one database."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import aiohttp

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer
from .room_helpers import create_room, invite_and_join, q, send_text


async def two_in_a_room(api: ApiClient, new_client: Callable[[], ApiClient]) -> tuple[ApiClient, str]:
    await api.register("alice")
    bob = new_client()
    await bob.register("bob")
    room_id = await create_room(api)
    await invite_and_join(api, bob, room_id)
    return bob, room_id


def ephemeral(sync: Any, room_id: str, event_type: str) -> Any:
    room = sync.body.get("rooms", {}).get("join", {}).get(room_id, {})
    for e in room.get("ephemeral", {}).get("events", []):
        if e["type"] == event_type:
            return e["content"]
    return None


async def test_read_receipt_is_seen_by_the_room(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    event_id = await send_text(api, room_id, "hello")
    r = await bob.post(f"rooms/{q(room_id)}/receipt/m.read/{q(event_id)}", {})
    assert r.status == 200 and r.body == {}
    content = ephemeral(await api.get("sync"), room_id, "m.receipt")
    assert content[event_id]["m.read"][bob.user_id]["ts"] > 0
    assert "thread_id" not in content[event_id]["m.read"][bob.user_id]


async def test_private_receipt_only_for_its_owner(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    event_id = await send_text(api, room_id, "hello")
    assert (await bob.post(f"rooms/{q(room_id)}/receipt/m.read.private/{q(event_id)}", {})).status == 200
    assert ephemeral(await api.get("sync"), room_id, "m.receipt") is None
    mine = ephemeral(await bob.get("sync"), room_id, "m.receipt")
    assert bob.user_id in mine[event_id]["m.read.private"]


async def test_threaded_receipts(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    root = await send_text(api, room_id, "root")
    reply = await send_text(
        api, room_id, "in thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": root}}
    )
    base = f"rooms/{q(room_id)}/receipt/m.read"
    assert (await bob.post(f"{base}/{q(root)}", {"thread_id": "main"})).status == 200
    assert (await bob.post(f"{base}/{q(reply)}", {"thread_id": root})).status == 200
    r = await bob.post(f"{base}/{q(reply)}", {"thread_id": "main"})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await bob.post(f"{base}/{q(root)}", {"thread_id": reply})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    content = ephemeral(await api.get("sync"), room_id, "m.receipt")
    assert content[root]["m.read"][bob.user_id]["thread_id"] == "main"
    assert content[reply]["m.read"][bob.user_id]["thread_id"] == root


async def test_receipt_errors(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    event_id = await send_text(api, room_id, "hello")
    other_room = await create_room(api)
    elsewhere = await send_text(api, other_room, "elsewhere")
    base = f"rooms/{q(room_id)}/receipt"
    r = await bob.post(f"{base}/m.read/{q('$nonexistent')}", {})
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await bob.post(f"{base}/m.read/{q(elsewhere)}", {})
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await bob.post(f"rooms/{q(other_room)}/receipt/m.read/{q(elsewhere)}", {})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await bob.post(f"{base}/m.bogus/{q(event_id)}", {})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    for body in ({"thread_id": ""}, {"thread_id": 5}):
        r = await bob.post(f"{base}/m.read/{q(event_id)}", body, validate=False)
        assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM"), body
    r = await bob.post(f"{base}/m.fully_read/{q(event_id)}", {"thread_id": "main"})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")
    r = await bob.post(f"{base}/m.read/{q(event_id)}", [1], validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await bob.post(f"rooms/{q('not-a-room')}/receipt/m.read/{q(event_id)}", {})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")


async def test_receipts_do_not_move_backwards(
    api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer
) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    first = await send_text(api, room_id, "one")
    second = await send_text(api, room_id, "two")
    base = f"rooms/{q(room_id)}/receipt/m.read"
    assert (await bob.post(f"{base}/{q(second)}", {})).status == 200
    assert (await bob.post(f"{base}/{q(first)}", {})).status == 200  # accepted, ignored
    receipts = server.services.conversation.receipts
    upto = await server.services.stream.current_position()
    content = (await receipts.receipts_for_sync([room_id], None, upto, api.user_id))[room_id]
    assert list(content) == [second]
    # nothing changed since upto
    assert await receipts.receipts_for_sync([room_id], upto, upto, api.user_id) == {}


async def test_read_markers(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    first = await send_text(api, room_id, "one")
    second = await send_text(api, room_id, "two")
    r = await bob.post(
        f"rooms/{q(room_id)}/read_markers",
        {"m.fully_read": second, "m.read": second, "m.read.private": first},
    )
    assert r.status == 200
    r = await bob.get(f"user/{q(bob.user_id)}/rooms/{q(room_id)}/account_data/m.fully_read")
    assert r.body == {"event_id": second}
    # the read marker never moves backwards
    assert (await bob.post(f"rooms/{q(room_id)}/receipt/m.fully_read/{q(first)}", {})).status == 200
    r = await bob.get(f"user/{q(bob.user_id)}/rooms/{q(room_id)}/account_data/m.fully_read")
    assert r.body == {"event_id": second}
    sync = await bob.get("sync")
    content = ephemeral(sync, room_id, "m.receipt")
    assert bob.user_id in content[second]["m.read"] and bob.user_id in content[first]["m.read.private"]
    room_ad = sync["rooms"]["join"][room_id]["account_data"]["events"]
    assert {"type": "m.fully_read", "content": {"event_id": second}} in room_ad


async def test_read_markers_errors(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    event_id = await send_text(api, room_id, "one")
    outsider = new_client()
    await outsider.register("carl")
    r = await outsider.post(f"rooms/{q(room_id)}/read_markers", {"m.fully_read": event_id})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    r = await bob.post(f"rooms/{q(room_id)}/read_markers", {"m.fully_read": "$unknown"})
    assert (r.status, r["errcode"]) == (404, "M_NOT_FOUND")
    r = await bob.post(f"rooms/{q(room_id)}/read_markers", {"m.read": 5}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")


async def test_typing_start_stop(
    api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer
) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    path = f"rooms/{q(room_id)}/typing/{q(bob.user_id)}"
    assert (await bob.put(path, {"typing": True, "timeout": 20000})).status == 200
    sync = await api.get("sync")
    assert ephemeral(sync, room_id, "m.typing") == {"user_ids": [bob.user_id]}
    since = sync["next_batch"]
    # refreshing typing changes nothing a client sees
    before = await server.services.stream.current_position()
    assert (await bob.put(path, {"typing": True, "timeout": 20000})).status == 200
    assert await server.services.stream.current_position() == before
    assert (await bob.put(path, {"typing": False})).status == 200
    sync = await api.get("sync", params={"since": since, "timeout": "5000"})
    assert ephemeral(sync, room_id, "m.typing") == {"user_ids": []}
    # stopping again is a no-op
    assert (await bob.put(path, {"typing": False})).status == 200


async def test_typing_errors(api: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    r = await bob.put(f"rooms/{q(room_id)}/typing/{q(api.user_id)}", {"typing": True})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    outsider = new_client()
    await outsider.register("carl")
    r = await outsider.put(f"rooms/{q(room_id)}/typing/{q(outsider.user_id)}", {"typing": True})
    assert (r.status, r["errcode"]) == (403, "M_FORBIDDEN")
    path = f"rooms/{q(room_id)}/typing/{q(bob.user_id)}"
    r = await bob.put(path, {"timeout": 100}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_MISSING_PARAM")
    r = await bob.put(path, {"typing": "yes"}, validate=False)
    assert (r.status, r["errcode"]) == (400, "M_BAD_JSON")
    r = await bob.put(f"rooms/{q('!bad')}/typing/{q(bob.user_id)}", {"typing": True})
    assert (r.status, r["errcode"]) == (400, "M_INVALID_PARAM")


async def _sweeping(hs: HomeServer) -> Any:
    typing = hs.services.conversation.typing
    typing.sweep_interval = 0.05
    if not typing.running:  # until HomeServer starts it
        await typing.start()
    return typing


async def test_typing_expires_with_a_stream_change(
    api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer
) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    typing = await _sweeping(server)
    try:
        start = await server.services.stream.current_position()
        assert (await bob.put(f"rooms/{q(room_id)}/typing/{q(bob.user_id)}", {"typing": True, "timeout": 200})).status == 200
        upto = await server.services.stream.current_position()
        assert await typing.typing_for_sync([room_id], start, upto) == {room_id: [bob.user_id]}
        assert await typing.typing_for_sync([room_id], None, upto) == {room_id: [bob.user_id]}
        for _ in range(100):
            await asyncio.sleep(0.05)
            now = await server.services.stream.current_position()
            if now > upto:
                break
        assert now > upto, "expiry produced no stream change"
        assert await typing.typing_for_sync([room_id], upto, now) == {room_id: []}
        assert await typing.typing_for_sync([room_id], None, now) == {}
    finally:
        await typing.stop()


async def test_typing_across_instances(
    api: ApiClient, new_client: Callable[[], ApiClient], server: HomeServer,
    start_server: StartServer, http: aiohttp.ClientSession,
) -> None:
    bob, room_id = await two_in_a_room(api, new_client)
    other = await start_server()
    bob_there = ApiClient(f"http://127.0.0.1:{other.client_port}", http)
    bob_there.token, bob_there.user_id = bob.token, bob.user_id
    typing_here = server.services.conversation.typing
    sweeper = await _sweeping(other)  # only the other instance sweeps
    try:
        if typing_here.running:
            await typing_here.stop()
        r = await bob_there.put(f"rooms/{q(room_id)}/typing/{q(bob.user_id)}", {"typing": True, "timeout": 300})
        assert r.status == 200
        sync = await api.get("sync")  # on the first instance
        assert ephemeral(sync, room_id, "m.typing") == {"user_ids": [bob.user_id]}
        sync = await api.get("sync", params={"since": sync["next_batch"], "timeout": "5000"})
        assert ephemeral(sync, room_id, "m.typing") == {"user_ids": []}
    finally:
        await sweeper.stop()
