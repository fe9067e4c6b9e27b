"""Group commit of concurrent sends (storage/group_commit.py, issue #7).

The first test holds one instance's group commit as if a transaction were
in flight, so the sends made meanwhile queue and then go as one batch: a
batch of good sends commits once; a batch holding a repeated transaction id
and a send under a token revoked meanwhile falls back to single sends, so
only the revoked one fails (401), the repeat answers its first event, the
others are stored once; a forbidden state event from a user without power
fails alone (403) while the batch it waited beside goes through; a send
on a room head another instance moved leaves the batch alone. The second
runs many senders into many rooms through two instances on one database at
once: every event stored exactly once, each room linear and in the order
its sender sent, each /sync long-poll on either instance sees them all.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Awaitable

import aiohttp
import asyncpg

from coffeechat_home.app import HomeServer
from coffeechat_home.storage.event_writes import DeferredInsert
from coffeechat_home.storage.group_commit import GroupCommit

from ..helpers import ApiClient, Response
from .conftest import StartServer
from .db_checks import assert_linear_history
from .room_helpers import q

QUEUE_DEADLINE_S = 20.0  # bounds on waiting loops, not performance claims
READ_DEADLINE_S = 90.0
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})
_txn = itertools.count()


def _group(hs: HomeServer) -> GroupCommit:
    return hs.services.writer.group_commit


async def _user(url: str, http: aiohttp.ClientSession, name: str) -> ApiClient:
    api = ApiClient(url, http)
    await api.register(name)
    return api


async def _room(api: ApiClient, **extra: Any) -> str:
    r = await api.post("createRoom", {"preset": "public_chat", **extra})
    assert r.status == 200, r
    return str(r["room_id"])


def _send(api: ApiClient, room_id: str, body: str, txn: str | None = None) -> Awaitable[Response]:
    return api.put(
        f"rooms/{q(room_id)}/send/m.room.message/{txn or f'g{next(_txn)}'}",
        {"msgtype": "m.text", "body": body}, validate=False,
    )


async def _queued(group: GroupCommit, n: int) -> None:
    """Wait (bounded) until ``n`` writes wait for the held group commit."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + QUEUE_DEADLINE_S
    while len(group._queue) < n:
        assert loop.time() < deadline, f"{len(group._queue)} of {n} sends queued"
        await asyncio.sleep(0.01)


async def _held_batch(group: GroupCommit, sends: list[Awaitable[Response]], queued: int) -> list[Response]:
    """Run ``sends`` at once while the group commit looks busy, let the
    ``queued`` of them that reach it go as one batch, return the answers."""
    _hold(group)
    tasks = [asyncio.ensure_future(s) for s in sends]
    try:
        await _queued(group, queued)
    finally:
        _release(group)
    return list(await asyncio.gather(*tasks))


def _hold(group: GroupCommit) -> None:
    """As if every transaction the group commit may have open were in flight."""
    assert group._in_flight == 0
    group._in_flight = group.transactions


def _release(group: GroupCommit) -> None:
    """Those "in-flight" transactions are done: what queued goes as one batch."""
    group._in_flight -= group.transactions - 1
    group._next()


async def _stored(database_url: str, event_ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_id, count(*) AS n FROM events WHERE event_id = ANY($1::TEXT[]) GROUP BY event_id",
            event_ids,
        )
    finally:
        await conn.close()
    return {r["event_id"]: r["n"] for r in rows}


async def test_a_batch_commits_together_and_isolates_failures(
    start_server: StartServer, database_url: str, http: aiohttp.ClientSession
) -> None:
    hs = await start_server()
    url = f"http://127.0.0.1:{hs.client_port}"
    group = _group(hs)
    alice = await _user(url, http, "alice")
    bob = await _user(url, http, "bob")
    rooms = [await _room(alice, name=f"room {i}") for i in range(4)]
    r = await bob.post(f"join/{q(rooms[0])}", {})
    assert r.status == 200, r
    # alice's second device: its token is cached by the server after one use
    r = await alice.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                                   "password": "correct horse battery"}, token=None)
    assert r.status == 200, r
    phone = ApiClient(url, http)
    phone.token, phone.user_id, phone.device_id = r["access_token"], r["user_id"], r["device_id"]
    assert (await _send(phone, rooms[3], "from the phone")).status == 200
    first = await _send(alice, rooms[1], "first", txn="repeat-me")
    assert first.status == 200, first
    since = (await bob.get("sync", params={"timeout": "0"})).body["next_batch"]

    # 1. four good sends into four rooms, and bob's long-poll: one batch
    poll = asyncio.ensure_future(bob.get("sync", params={"since": since, "timeout": "20000", "filter": SYNC_FILTER}))
    before = (group.batches, group.batched_writes, group.fallbacks)
    shared = group.shared_writes
    answers = await _held_batch(group, [_send(alice, room, f"together {i}") for i, room in enumerate(rooms)], 4)
    assert [a.status for a in answers] == [200] * 4, answers
    assert (group.batches, group.batched_writes, group.fallbacks) == (before[0] + 1, before[1] + 4, before[2])
    assert group.shared_writes == shared + 4  # the four messages were one insert statement
    sent = [a["event_id"] for a in answers]
    assert await _stored(database_url, sent) == {e: 1 for e in sent}
    woken = await poll
    assert woken.status == 200, woken
    seen = [e["event_id"] for e in woken.body["rooms"]["join"][rooms[0]]["timeline"]["events"]]
    assert seen == [sent[0]], seen

    # 2. a batch with a repeated transaction id and a token revoked after
    # the server cached it (another instance logged the device out): the
    # batch falls back to single sends; only the revoked one fails
    async def logout_elsewhere() -> None:
        await _queued(group, 3)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("DELETE FROM access_tokens WHERE device_id = $1", phone.device_id)
        finally:
            await conn.close()

    _hold(group)
    tasks = [
        asyncio.ensure_future(_send(alice, rooms[0], "good one")),
        asyncio.ensure_future(_send(alice, rooms[1], "first", txn="repeat-me")),
        asyncio.ensure_future(_send(phone, rooms[3], "phone again")),
    ]
    try:
        await logout_elsewhere()  # the three are queued, the phone's token gone
    finally:
        _release(group)
    good, repeat, revoked = await asyncio.gather(*tasks)
    assert good.status == 200, good
    assert repeat.status == 200 and repeat["event_id"] == first["event_id"], repeat
    assert revoked.status == 401 and revoked["errcode"] == "M_UNKNOWN_TOKEN", revoked
    assert group.fallbacks == before[2] + 1
    assert await _stored(database_url, [good["event_id"], first["event_id"]]) == {
        good["event_id"]: 1, first["event_id"]: 1,
    }
    conn = await asyncpg.connect(database_url)
    try:
        phone_events = await conn.fetchval(
            "SELECT count(*) FROM events WHERE sender_device = $1 AND room_id = $2", phone.device_id, rooms[3]
        )
    finally:
        await conn.close()
    assert phone_events == 1  # "from the phone" only

    # 3. a forbidden state event (bob has no power in room 0) beside a
    # batch: it fails alone, the batch commits
    topic = bob.put(f"rooms/{q(rooms[0])}/state/m.room.topic", {"topic": "mine"}, validate=False)
    answers = await _held_batch(
        group, [_send(alice, rooms[1], "still fine"), _send(alice, rooms[2], "also fine"), topic], 2
    )
    assert [a.status for a in answers[:2]] == [200, 200], answers
    assert answers[2].status == 403 and answers[2]["errcode"] == "M_FORBIDDEN", answers[2]
    assert group.batches == before[0] + 2

    # 4. a room head another instance moved: that send leaves the batch
    # (and rebuilds on the room's head), the other commits in it
    hs2 = await start_server()
    other = ApiClient(f"http://127.0.0.1:{hs2.client_port}", http)
    other.token = alice.token
    assert (await _send(other, rooms[1], "through the other instance")).status == 200
    counts = (group.batches, group.batched_writes, group.fallbacks)
    shared = group.shared_writes
    answers = await _held_batch(group, [_send(alice, rooms[1], "on a stale head"), _send(alice, rooms[2], "ok")], 2)
    assert [a.status for a in answers] == [200, 200], answers
    assert (group.batches, group.batched_writes, group.fallbacks) == (counts[0] + 1, counts[1] + 1, counts[2])
    assert group.shared_writes == shared + 1  # the shared insert wrote room 2 and left room 1 alone

    # 5. a state event (its own statements) and messages to other rooms (one
    # shared insert after it) in one batch: all stored once, each room's
    # history one chain, stream positions in the order of the batch's writes
    topic = alice.put(f"rooms/{q(rooms[0])}/state/m.room.topic", {"topic": "ours"}, validate=False)
    shared = group.shared_writes
    answers = await _held_batch(group, [topic, _send(alice, rooms[2], "m2"), _send(alice, rooms[3], "m3")], 3)
    assert [a.status for a in answers] == [200] * 3, answers
    assert group.shared_writes == shared + 2
    ids = [a["event_id"] for a in answers]
    assert await _stored(database_url, ids) == {e: 1 for e in ids}
    conn = await asyncpg.connect(database_url)
    try:
        pos = {r["event_id"]: r["stream_pos"] for r in await conn.fetch(
            "SELECT event_id, stream_pos FROM events WHERE event_id = ANY($1::TEXT[])", ids)}
    finally:
        await conn.close()
    for room in rooms:
        await assert_linear_history(database_url, room)
    assert pos[ids[0]] < min(pos[ids[1]], pos[ids[2]]), pos
    assert await _stored(database_url, [a["event_id"] for a in answers]) == {a["event_id"]: 1 for a in answers}
    for room in rooms:
        await assert_linear_history(database_url, room)


async def test_a_write_that_fails_beside_a_committed_batch_statement_fails_alone(
    start_server: StartServer, database_url: str, http: aiohttp.ClientSession
) -> None:
    """A batch of messages is one statement that commits as it ends: when
    one of its writes fails without reaching that statement (any error but
    a stale room head: here one injected for room 2), the others are
    committed, so they are answered from it, once, with their hooks run
    (the long-poll is woken), and the batch does not fall back to running
    every write again alone."""
    hs = await start_server()
    url = f"http://127.0.0.1:{hs.client_port}"
    group = _group(hs)
    alice = await _user(url, http, "alice")
    rooms = [await _room(alice, name=f"room {i}") for i in range(3)]
    persister = hs.services.writer.persister
    real = persister.write_on_base

    async def failing_for_room_2(conn: Any, positions: list[int], room_id: str, *a: Any, **k: Any) -> Any:
        if room_id == rooms[2] and isinstance(conn, DeferredInsert):
            raise RuntimeError("an error before its insert")
        return await real(conn, positions, room_id, *a, **k)

    persister.write_on_base = failing_for_room_2  # type: ignore[method-assign]
    since = (await alice.get("sync", params={"timeout": "0"})).body["next_batch"]
    poll = asyncio.ensure_future(alice.get("sync", params={"since": since, "timeout": "20000",
                                                           "filter": SYNC_FILTER}))
    fallbacks, persisted = group.fallbacks, persister.events_persisted
    answers = await _held_batch(group, [_send(alice, r, f"message {i}") for i, r in enumerate(rooms)], 3)
    assert group.fallbacks == fallbacks
    assert [a.status for a in answers[:2]] == [200, 200], answers
    assert answers[2].status == 500 and answers[2]["errcode"] == "M_UNKNOWN", answers[2]
    assert persister.events_persisted == persisted + 2
    sent = [a["event_id"] for a in answers[:2]]
    assert await _stored(database_url, sent) == {e: 1 for e in sent}
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(
            "SELECT count(*) FROM events WHERE room_id = ANY($1::TEXT[]) AND type = 'm.room.message'", rooms
        ) == 2
    finally:
        await conn.close()
    woken = await poll
    assert woken.status == 200, woken
    seen = {e["event_id"] for room in woken.body["rooms"]["join"].values() for e in room["timeline"]["events"]}
    assert set(sent) <= seen, (sent, seen)


SENDERS_PER_INSTANCE = 6
MESSAGES = 12


async def _follow(api: ApiClient, since: str, rooms: set[str], expected: int) -> dict[str, list[str]]:
    """Long-poll /sync until ``expected`` events of ``rooms`` arrived (bounded)."""
    seen: dict[str, list[str]] = {r: [] for r in rooms}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_DEADLINE_S
    while sum(map(len, seen.values())) < expected and loop.time() < deadline:
        r = await api.get("sync", params={"since": since, "timeout": "2000", "filter": SYNC_FILTER}, validate=False)
        assert r.status == 200, r
        for room_id, room in r.body.get("rooms", {}).get("join", {}).items():
            if room_id in seen:
                assert not room["timeline"].get("limited"), "timelines of 1000 are never limited here"
                seen[room_id].extend(e["event_id"] for e in room["timeline"]["events"])
        since = r["next_batch"]
    return seen


async def test_many_rooms_two_instances(
    start_server: StartServer, database_url: str, http: aiohttp.ClientSession
) -> None:
    hs1, hs2 = await start_server(), await start_server()
    urls = [f"http://127.0.0.1:{hs.client_port}" for hs in (hs1, hs2)]
    senders = [await _user(urls[i % 2], http, f"sender{i}") for i in range(2 * SENDERS_PER_INSTANCE)]
    rooms = [await _room(s, name=f"own room {i}") for i, s in enumerate(senders)]
    readers = [await _user(url, http, f"reader{k}") for k, url in enumerate(urls)]
    for reader in readers:
        for room in rooms:
            r = await reader.post(f"join/{q(room)}", {})
            assert r.status == 200, r
    sinces = [(await rd.get("sync", params={"timeout": "0"})).body["next_batch"] for rd in readers]
    follows = [
        asyncio.ensure_future(_follow(rd, s, set(rooms), len(rooms) * MESSAGES)) for rd, s in zip(readers, sinces)
    ]

    async def send_all(i: int, api: ApiClient, room: str) -> list[str]:
        out = []
        for j in range(MESSAGES):
            # mostly through its own instance; every third message through
            # the other one (whose cached head of the room is then stale)
            other = ApiClient(urls[(i + (j % 3 == 2)) % 2], http, validate=False)
            other.token = api.token
            txn = f"m{i}-{j}"
            r = await _send(other, room, f"{i}/{j}", txn=txn)
            assert r.status == 200, r
            if j % 4 == 0:  # a client retry of the same request: the same event
                again = await _send(other, room, f"{i}/{j}", txn=txn)
                assert again.status == 200 and again["event_id"] == r["event_id"], again
            out.append(r["event_id"])
        return out

    try:
        sent = await asyncio.gather(*(send_all(i, s, room) for i, (s, room) in enumerate(zip(senders, rooms))))
        seen_by = await asyncio.gather(*follows)
    finally:
        for f in follows:
            f.cancel()
    all_sent = [e for lst in sent for e in lst]
    assert await _stored(database_url, all_sent) == {e: 1 for e in all_sent}
    for seen in seen_by:
        for room, lst in zip(rooms, sent):
            assert seen[room] == lst, f"{room}: saw {len(seen[room])} of {len(lst)}, or out of order"
    for room in rooms:
        await assert_linear_history(database_url, room)
    # the senders of each instance overlapped: some of their sends shared a commit
    assert _group(hs1).batches + _group(hs2).batches > 0
