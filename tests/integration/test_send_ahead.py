"""A lone message's reservation is made while the message is built
(GroupCommit.ahead, StreamStore.reserve_ahead; issue #7): through the real
server, a message that goes alone uses it, and one that never reaches its
write (refused by the auth rules, or its request cancelled) gives it up,
so neither the stream's readers nor the group commit's transactions are
held: later messages reach a long-poll as before."""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable

import aiohttp
import pytest

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer
from .room_helpers import q

SETTLE_DEADLINE_S = 20.0  # a bound on a waiting loop, not a performance claim
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 50}}})


async def _user(url: str, http: aiohttp.ClientSession, name: str) -> ApiClient:
    api = ApiClient(url, http)
    await api.register(name)
    return api


async def _settled(hs: HomeServer) -> None:
    """Until no reservation is left, no discard runs and the group commit
    holds no transaction (bounded)."""
    writer = hs.services.writer
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_DEADLINE_S
    while True:
        left = await writer.stream.db.fetchval("SELECT count(*) FROM stream_inflight")
        if left == 0 and not writer.stream._discards and writer.group_commit._in_flight == 0:
            return
        assert loop.time() < deadline, (left, writer.stream._discards, writer.group_commit._in_flight)
        await asyncio.sleep(0.01)


async def _message(api: ApiClient, room_id: str, body: str, txn: str) -> tuple[int, dict[str, object]]:
    r = await api.put(f"rooms/{q(room_id)}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": body},
                      validate=False)
    return r.status, r.body


async def _long_poll_sees(bob: ApiClient, room_id: str, since: str, send: Awaitable[object], body: str) -> None:
    r = await bob.get("sync", params={"since": since, "timeout": "20000", "filter": SYNC_FILTER})
    assert r.status == 200, r
    await send
    events = r.body["rooms"]["join"][room_id]["timeline"]["events"]
    assert [e["content"]["body"] for e in events] == [body], events


async def test_a_refused_or_cancelled_message_gives_up_its_reservation_made_ahead(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    hs = await start_server()
    url = f"http://127.0.0.1:{hs.client_port}"
    stream = hs.services.writer.stream
    alice = await _user(url, http, "alice")
    bob = await _user(url, http, "bob")
    r = await alice.post("createRoom", {"preset": "public_chat"})
    assert r.status == 200, r
    room_id = r["room_id"]
    assert (await bob.post(f"join/{q(room_id)}", {})).status == 200
    r = await alice.get(f"rooms/{q(room_id)}/state/m.room.power_levels")
    levels = dict(r.body)
    levels["events"] = {**levels.get("events", {}), "m.room.message": 50}  # bob (0) may not talk
    assert (await alice.put(f"rooms/{q(room_id)}/state/m.room.power_levels", levels)).status == 200
    await _settled(hs)

    # a message that goes alone reserves ahead and uses it
    made, dropped = stream.aheads, stream.aheads_dropped
    status, body = await _message(alice, room_id, "hello", "a1")
    assert status == 200, body
    assert (stream.aheads, stream.aheads_dropped) == (made + 1, dropped)

    # refused by the auth rules once built: the reservation is given up
    status, body = await _message(bob, room_id, "may I?", "b1")
    assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
    assert (stream.aheads, stream.aheads_dropped) == (made + 2, dropped + 1)
    await _settled(hs)
    since = (await bob.get("sync", params={"timeout": "0"})).body["next_batch"]
    send = asyncio.ensure_future(_message(alice, room_id, "after the refusal", "a2"))
    await _long_poll_sees(bob, room_id, since, send, "after the refusal")
    await _settled(hs)

    # cancelled (the client hung up) with the reservation on its way
    template = {"type": "m.room.message", "sender": "@alice:" + hs.config.server_name,
                "content": {"msgtype": "m.text", "body": "never sent"}}
    task = asyncio.ensure_future(hs.services.writer.send(room_id, [template]))
    await asyncio.sleep(0)  # the send runs up to its first pause: the reservation just made
    assert stream.aheads == made + 4  # (the message after the refusal made one too)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.aheads_dropped == dropped + 2
    await _settled(hs)
    since = (await bob.get("sync", params={"timeout": "0"})).body["next_batch"]
    send = asyncio.ensure_future(_message(alice, room_id, "after the cancel", "a3"))
    await _long_poll_sees(bob, room_id, since, send, "after the cancel")
    r = await bob.get(f"rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "10"})
    bodies = [e["content"].get("body") for e in r.body["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["after the cancel", "after the refusal", "hello"], bodies
