"""PUT /sendToDevice and the to_device section of /sync: idempotent per
transaction id, '*' for every device, delivered exactly once (also when a
sync response is lost), in batches of about 100, deleted with the device."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import aiohttp

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer
from .room_helpers import create_room, q

_txn = itertools.count()


async def _login(new_client: Callable[[], ApiClient], user: str) -> ApiClient:
    c = new_client()
    r = await c.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
                               "password": "correct horse battery"}, token=None)
    assert r.status == 200, r
    c.token, c.user_id, c.device_id = r["access_token"], r["user_id"], r["device_id"]
    return c


async def _send(api: ApiClient, messages: dict[str, Any], txn: str | None = None, etype: str = "m.test") -> Any:
    r = await api.put(f"sendToDevice/{etype}/{txn or f't{next(_txn)}'}", {"messages": messages})
    return r


def _events(body: Any) -> list[dict[str, Any]]:
    return list(body.get("to_device", {}).get("events", []))


async def test_send_and_receive_once(alice: ApiClient, bob: ApiClient) -> None:
    since = (await bob.get("sync"))["next_batch"]
    r = await _send(alice, {bob.user_id: {bob.device_id: {"n": 1}}})
    assert r.status == 200 and r.body == {}
    s = await bob.get("sync", params={"since": since})
    assert _events(s.body) == [{"sender": alice.user_id, "type": "m.test", "content": {"n": 1}}]
    s2 = await bob.get("sync", params={"since": s["next_batch"]})
    assert _events(s2.body) == []


async def test_duplicate_txn_id_is_delivered_once(alice: ApiClient, bob: ApiClient) -> None:
    since = (await bob.get("sync"))["next_batch"]
    for _ in range(3):
        r = await _send(alice, {bob.user_id: {bob.device_id: {"n": 1}}}, txn="same")
        assert r.status == 200 and r.body == {}
    # the same txn id from another of alice's devices is another message
    s = await bob.get("sync", params={"since": since})
    assert len(_events(s.body)) == 1
    # r0 path
    r = await alice.put("/_matrix/client/r0/sendToDevice/m.test/r0txn", {"messages": {bob.user_id: {"*": {}}}})
    assert r.status == 200


async def test_dropped_sync_response_loses_nothing(alice: ApiClient, bob: ApiClient) -> None:
    since = (await bob.get("sync"))["next_batch"]
    await _send(alice, {bob.user_id: {bob.device_id: {"n": 1}}})
    first = await bob.get("sync", params={"since": since})
    assert len(_events(first.body)) == 1
    # the client never saw `first`: it asks again with the old since
    again = await bob.get("sync", params={"since": since})
    assert [e["content"] for e in _events(again.body)] == [{"n": 1}]
    # acknowledged now: gone
    after = await bob.get("sync", params={"since": again["next_batch"]})
    assert _events(after.body) == []
    after2 = await bob.get("sync", params={"since": since})  # even with the old token
    assert _events(after2.body) == []


async def test_star_reaches_every_device_and_unknown_devices_are_ignored(
    alice: ApiClient, bob: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    bob2 = await _login(new_client, "bob")
    t1 = (await bob.get("sync"))["next_batch"]
    t2 = (await bob2.get("sync"))["next_batch"]
    r = await _send(alice, {bob.user_id: {"*": {"all": True}, "NOSUCHDEVICE": {"x": 1}}})
    assert r.status == 200
    for c, t in ((bob, t1), (bob2, t2)):
        s = await c.get("sync", params={"since": t})
        assert [e["content"] for e in _events(s.body)] == [{"all": True}]


async def test_batches_of_about_100(alice: ApiClient, bob: ApiClient) -> None:
    since = (await bob.get("sync"))["next_batch"]
    for i in range(0, 250, 50):
        await asyncio.gather(*(_send(alice, {bob.user_id: {bob.device_id: {"i": j}}}) for j in range(i, i + 50)))
    seen: list[int] = []
    sizes = []
    for _ in range(10):
        s = await bob.get("sync", params={"since": since})
        batch = [e["content"]["i"] for e in _events(s.body)]
        if not batch:
            break
        sizes.append(len(batch))
        seen.extend(batch)
        since = s["next_batch"]
    assert sorted(seen) == list(range(250)) and len(seen) == 250
    assert max(sizes) <= 101 and len(sizes) >= 3


async def test_initial_sync_ended_by_a_batch_shows_rooms_as_of_its_end(alice: ApiClient, bob: ApiClient) -> None:
    """An initial sync whose end the to-device batch lowers shows bob's
    rooms as of that end: a room he joined after the first 100 messages
    comes in the next sync, not in this one (the memberships an initial
    sync reads beside the batch's limit are as of the higher position)."""
    for i in range(0, 150, 50):
        await asyncio.gather(*(_send(alice, {bob.user_id: {bob.device_id: {"i": j}}}) for j in range(i, i + 50)))
    room_id = await create_room(alice, {"preset": "public_chat"})
    assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200
    first = await bob.get("sync")
    assert 0 < len(_events(first.body)) <= 101
    assert room_id not in first.body.get("rooms", {}).get("join", {})
    after = await bob.get("sync", params={"since": first["next_batch"]})
    assert room_id in after.body.get("rooms", {}).get("join", {})
    assert len(_events(first.body)) + len(_events(after.body)) == 150


async def test_long_poll_wakes_on_to_device(alice: ApiClient, bob: ApiClient) -> None:
    since = (await bob.get("sync"))["next_batch"]
    waiting = asyncio.ensure_future(bob.get("sync", params={"since": since, "timeout": "30000"}))
    await asyncio.sleep(0.3)
    await _send(alice, {bob.user_id: {bob.device_id: {"wake": 1}}})
    s = await asyncio.wait_for(waiting, 25)
    assert [e["content"] for e in _events(s.body)] == [{"wake": 1}]


async def test_logout_deletes_pending_messages(
    alice: ApiClient, bob: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    bob2 = await _login(new_client, "bob")
    await _send(alice, {bob.user_id: {bob2.device_id: {"n": 1}}})
    assert (await bob2.post("logout", {})).status == 200
    # the same device id logging in again starts with an empty inbox
    again = new_client()
    r = await again.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                                   "password": "correct horse battery", "device_id": bob2.device_id}, token=None)
    again.token = r["access_token"]
    s = await again.get("sync")
    assert _events(s.body) == []


async def test_bad_input(alice: ApiClient, bob: ApiClient) -> None:
    cases = [
        {"messages": "x"},
        {"messages": {"not-a-user": {"D": {}}}},
        {"messages": {bob.user_id: {"D": "not an object"}}},
        {"messages": {bob.user_id: {"D": {"n": 10**30}}}},
        {},
    ]
    for body in cases:
        r = await alice.put(f"sendToDevice/m.test/bad{next(_txn)}", body)
        assert r.status == 400 and r["errcode"].startswith("M_"), (body, r)
    r = await alice.put(f"sendToDevice/m.test/x{next(_txn)}", {"messages": {"@x:elsewhere.example": {"D": {}}}})
    assert r.status == 400 and r["errcode"] == "M_UNRECOGNIZED"
    many = {f"@u{i}:test.local": {f"D{j}": {} for j in range(100)} for i in range(101)}
    r = await alice.put(f"sendToDevice/m.test/x{next(_txn)}", {"messages": many})
    assert r.status == 413 and r["errcode"] == "M_TOO_LARGE"
    r = await alice.put("sendToDevice/m.test/" + "x" * 300, {"messages": {}})
    assert r.status == 400


async def test_exactly_once_across_two_instances(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    """Sent through one instance, synced through the other (long-poll woken
    across instances), delivered once, and not again after acknowledgement."""
    one, two = await start_server(), await start_server()
    alice = ApiClient(f"http://127.0.0.1:{one.client_port}", http)
    await alice.register("alice")
    bob = ApiClient(f"http://127.0.0.1:{two.client_port}", http)
    await bob.register("bob")
    since = (await bob.get("sync"))["next_batch"]
    waiting = asyncio.ensure_future(bob.get("sync", params={"since": since, "timeout": "30000"}))
    await asyncio.sleep(0.3)
    await _send(alice, {bob.user_id: {bob.device_id: {"n": 1}}}, txn="once")
    await _send(alice, {bob.user_id: {bob.device_id: {"n": 1}}}, txn="once")
    s = await asyncio.wait_for(waiting, 25)
    got = _events(s.body)
    if not got:  # woken by something else first: the next sync has it
        s = await bob.get("sync", params={"since": s["next_batch"], "timeout": "10000"})
        got = _events(s.body)
    assert [e["content"] for e in got] == [{"n": 1}]
    s2 = await bob.get("sync", params={"since": s["next_batch"]})
    assert _events(s2.body) == []


async def test_deleting_a_device_deletes_its_messages(
    alice: ApiClient, bob: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    bob2 = await _login(new_client, "bob")
    await _send(alice, {bob.user_id: {bob2.device_id: {"n": 1}}})
    r = await bob.delete(f"devices/{bob2.device_id}", {"auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": bob.user_id},
        "password": "correct horse battery"}})
    assert r.status == 200, r
    again = new_client()
    r = await again.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                                   "password": "correct horse battery", "device_id": bob2.device_id}, token=None)
    again.token = r["access_token"]
    assert _events((await again.get("sync")).body) == []


async def test_acknowledgement_deletes_only_when_something_came(server: HomeServer, http: aiohttp.ClientSession) -> None:
    """A sync acknowledges (deletes) what its since covers; where the stream
    shows nothing for the user's devices since the last acknowledgement
    there is nothing to delete, and no statement is made (a woken sync's
    next long-poll, hundreds at once in a fan-out)."""
    assert server.services is not None
    acks = server.services.e2e.to_device._acks
    base = f"http://127.0.0.1:{server.client_port}"
    alice, bob = ApiClient(base, http), ApiClient(base, http)
    await alice.register("alice")
    await bob.register("bob")
    since = (await bob.get("sync"))["next_batch"]
    rid = (await alice.post("createRoom", {}))["room_id"]  # a write: positions move on
    s = await bob.get("sync", params={"since": since})  # the first acknowledgement of the device
    first = acks.calls
    for i in range(3):  # messages in a room, nothing to-device
        await alice.put(f"rooms/{q(rid)}/send/m.room.message/q{i}", {"msgtype": "m.text", "body": "x"})
        s = await bob.get("sync", params={"since": s["next_batch"]})
    assert acks.calls == first
    await _send(alice, {bob.user_id: {bob.device_id: {"n": 1}}})
    s = await bob.get("sync", params={"since": s["next_batch"]})
    assert [e["content"] for e in _events(s.body)] == [{"n": 1}]
    s2 = await bob.get("sync", params={"since": s["next_batch"]})  # acknowledges the message
    assert acks.calls == first + 1 and _events(s2.body) == []
    assert server.db is not None
    assert await server.db.fetchval("SELECT count(*) FROM to_device_messages WHERE user_id = $1", bob.user_id) == 0
