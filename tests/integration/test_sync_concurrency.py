"""Many concurrent writers, readers long-polling /sync (DESIGN.md section 4).

Senders (each its own user and HTTP connection) send into one room at once
while readers follow /sync with since tokens. Every reader must see every
event exactly once, each after its prev_events (read from the stored PDUs),
and /messages backwards from the end must list the same events in reverse.
The second test runs two server instances on one database: senders switch
instance on every message and each instance has a reader.

A room written only by local users must keep a linear history however many
instances write into it at once: one forward extremity, and every event's
prev_events exactly the event before it (the compare-and-set on the room's
forward extremities is what guarantees it; without it two instances build
on the same head and the history forks while every event still comes after
its prev_events).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import asyncpg
import orjson

from ..helpers import ApiClient
from .conftest import StartServer
from .db_checks import assert_linear_history
from .room_helpers import q

SENDERS = 10
MESSAGES_PER_SENDER = 20
TOTAL = SENDERS * MESSAGES_PER_SENDER
READ_DEADLINE_S = 90.0  # a bound on the readers' loop, not a performance claim
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})

_txn = itertools.count()


async def _register(base_url: str, session: aiohttp.ClientSession, name: str) -> ApiClient:
    api = ApiClient(base_url, session)
    await api.register(name)
    return api


def _on(api: ApiClient, base_url: str) -> ApiClient:
    """The same user and device, talking to another instance."""
    other = ApiClient(base_url, api.session, validate=api.validate)
    other.token, other.user_id, other.device_id = api.token, api.user_id, api.device_id
    return other


async def _sync(api: ApiClient, since: str | None, timeout_ms: int) -> dict[str, Any]:
    params = {"filter": SYNC_FILTER, "timeout": str(timeout_ms)}
    if since is not None:
        params["since"] = since
    r = await api.get("sync", params=params, validate=False)
    assert r.status == 200, r
    return r.body


def _room_timeline(body: dict[str, Any], room_id: str) -> tuple[list[dict[str, Any]], bool]:
    room = body.get("rooms", {}).get("join", {}).get(room_id)
    if room is None:
        return [], False
    timeline = room.get("timeline", {})
    return timeline.get("events", []), bool(timeline.get("limited"))


class Reader:
    """Follows /sync from an initial sync until it has seen ``expected``
    new events or the deadline passes."""

    def __init__(self, api: ApiClient, room_id: str) -> None:
        self.api = api
        self.room_id = room_id
        self.before: list[str] = []  # the room's events in the initial sync
        self.seen: list[str] = []  # event ids from incremental syncs, in order
        self.since: str | None = None
        self.limited = False

    async def initial(self) -> None:
        body = await _sync(self.api, None, 0)
        events, limited = _room_timeline(body, self.room_id)
        assert not limited, "the initial timeline must hold the whole (small) room"
        self.before = [e["event_id"] for e in events]
        self.since = body["next_batch"]

    async def follow(self, expected: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_DEADLINE_S
        while len(self.seen) < expected and loop.time() < deadline:
            body = await _sync(self.api, self.since, 2000)
            events, limited = _room_timeline(body, self.room_id)
            self.limited |= limited
            self.seen.extend(e["event_id"] for e in events)
            self.since = body["next_batch"]


async def _sender(api: ApiClient, urls: list[str], index: int, room_id: str) -> list[str]:
    sent = []
    for j in range(MESSAGES_PER_SENDER):
        target = _on(api, urls[(index + j) % len(urls)])
        r = await target.put(
            f"rooms/{q(room_id)}/send/m.room.message/c{next(_txn)}",
            {"msgtype": "m.text", "body": f"sender {index} message {j}"},
            validate=False,
        )
        assert r.status == 200, r
        sent.append(r["event_id"])
    return sent


async def _messages_backwards(api: ApiClient, room_id: str) -> list[str]:
    out: list[str] = []
    token: str | None = None
    for _ in range(1000):  # bounded: 1000 pages of 37 is far more than the room holds
        params = {"dir": "b", "limit": "37"}
        if token is not None:
            params["from"] = token
        r = await api.get(f"rooms/{q(room_id)}/messages", params=params)
        assert r.status == 200, r
        out.extend(e["event_id"] for e in r["chunk"])
        token = r.body.get("end")
        if token is None or not r["chunk"]:
            return out
    raise AssertionError("/messages never reached the start of the room")


async def _prev_events(database_url: str, event_ids: list[str]) -> dict[str, list[str]]:
    """prev_events of each event, from the stored PDUs (read only)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT event_id, pdu FROM events WHERE event_id = ANY($1::TEXT[])", event_ids)
    finally:
        await conn.close()
    return {r["event_id"]: orjson.loads(r["pdu"])["prev_events"] for r in rows}


async def _run(database_url: str, urls: list[str], reader_urls: list[str]) -> None:
    sessions = [aiohttp.ClientSession() for _ in range(SENDERS + len(reader_urls) + 1)]
    try:
        owner = await _register(urls[0], sessions[0], "owner")
        r = await owner.post("createRoom", {"preset": "public_chat", "name": "busy room"})
        assert r.status == 200, r
        room_id = r["room_id"]
        senders = [await _register(urls[i % len(urls)], sessions[1 + i], f"sender{i}") for i in range(SENDERS)]
        readers = [
            await _register(url, sessions[1 + SENDERS + k], f"reader{k}") for k, url in enumerate(reader_urls)
        ]
        for i, api in enumerate([*senders, *readers]):
            joiner = _on(api, urls[i % len(urls)])
            r = await joiner.post(f"join/{q(room_id)}", {})
            assert r.status == 200, r

        followers = [Reader(api, room_id) for api in readers]
        for f in followers:
            await f.initial()
        tasks = [asyncio.create_task(f.follow(TOTAL)) for f in followers]
        tasks += [asyncio.create_task(_sender(api, urls, i, room_id)) for i, api in enumerate(senders)]
        try:
            results = await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        sent_lists: list[list[str]] = results[len(followers):]

        sent = {e for lst in sent_lists for e in lst}
        assert len(sent) == TOTAL
        history = await _messages_backwards(owner, room_id)
        assert len(history) == len(set(history)), "/messages repeated an event"
        for f in followers:
            assert not f.limited, "timelines of 1000 must never be limited here"
            assert len(f.seen) == len(set(f.seen)), "an incremental /sync repeated an event"
            assert set(f.seen) == sent, (
                f"missed {len(sent - set(f.seen))}, unexpected {len(set(f.seen) - sent)}"
            )
            # each sender's messages in the order it sent them
            for lst in sent_lists:
                assert [e for e in f.seen if e in set(lst)] == lst
            # every event after its prev_events
            ordered = f.before + f.seen
            prevs = await _prev_events(database_url, ordered)
            index = {e: i for i, e in enumerate(ordered)}
            for i, e in enumerate(ordered):
                for p in prevs[e]:
                    assert p in index and index[p] < i, f"{e} came before its prev_event {p}"
            # /messages backwards from the end: the same events, reversed
            assert list(reversed(history)) == ordered
        await assert_linear_history(database_url, room_id)
    finally:
        for s in sessions:
            await s.close()


async def test_concurrent_senders_one_reader(start_server: StartServer, database_url: str) -> None:
    hs = await start_server()
    url = f"http://127.0.0.1:{hs.client_port}"
    await _run(database_url, [url], [url])


async def test_concurrent_senders_two_instances(start_server: StartServer, database_url: str) -> None:
    hs1 = await start_server()
    hs2 = await start_server()
    urls = [f"http://127.0.0.1:{hs1.client_port}", f"http://127.0.0.1:{hs2.client_port}"]
    # a reader on each instance; senders switch instance on every message
    await _run(database_url, urls, list(reversed(urls)))


async def test_membership_changes_cross_instances(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    """An invite made through one instance lets the invitee join through the
    other, which had the room cached from before; a kick made through one
    instance stops sends through the other at once."""
    hs1 = await start_server()
    hs2 = await start_server()
    url1, url2 = f"http://127.0.0.1:{hs1.client_port}", f"http://127.0.0.1:{hs2.client_port}"
    owner = await _register(url1, http, "owner")
    bob = await _register(url1, http, "bob")
    r = await owner.post("createRoom", {"preset": "private_chat"})
    assert r.status == 200, r
    room_id = r["room_id"]
    # instance 2 reads the room's head (and keeps it) by sending into it
    r = await _on(owner, url2).put(f"rooms/{q(room_id)}/send/m.room.message/x1", {"msgtype": "m.text", "body": "hi"})
    assert r.status == 200, r

    r = await owner.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    assert r.status == 200, r
    r = await _on(bob, url2).post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    r = await _on(bob, url2).put(f"rooms/{q(room_id)}/send/m.room.message/x2", {"msgtype": "m.text", "body": "in"})
    assert r.status == 200, r

    r = await _on(owner, url2).post(f"rooms/{q(room_id)}/kick", {"user_id": bob.user_id})
    assert r.status == 200, r
    r = await bob.put(f"rooms/{q(room_id)}/send/m.room.message/x3", {"msgtype": "m.text", "body": "out?"})
    assert r.status == 403 and r["errcode"] == "M_FORBIDDEN", r

    # a ban seen (and cached) by instance 2, lifted through instance 1:
    # instance 2's membership checks must not go by its stale copy
    r = await owner.post(f"rooms/{q(room_id)}/ban", {"user_id": bob.user_id})
    assert r.status == 200, r
    r = await _on(owner, url2).put(f"rooms/{q(room_id)}/send/m.room.message/x4", {"msgtype": "m.text", "body": "."})
    assert r.status == 200, r
    r = await owner.post(f"rooms/{q(room_id)}/unban", {"user_id": bob.user_id})
    assert r.status == 200, r
    r = await owner.post(f"rooms/{q(room_id)}/invite", {"user_id": bob.user_id})
    assert r.status == 200, r
    r = await _on(bob, url2).post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    r = await bob.get(f"rooms/{q(room_id)}/joined_members")
    assert r.status == 200 and set(r["joined"]) == {owner.user_id, bob.user_id}, r
    # instance 1 last saw bob invited; his join went through instance 2
    r = await bob.put(f"rooms/{q(room_id)}/send/m.room.message/x5", {"msgtype": "m.text", "body": "back"})
    assert r.status == 200, r
