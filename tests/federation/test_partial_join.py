"""Partial-state joins as the joiner (issue #9, MSC3706): a user of b joins
a room of a with 50 members; b asks send_join with omit_members, /join
answers on the partial state, and the resync (one per room, owned through
a work lease) completes it afterwards.

While the resync cannot run (another live "instance" holds its lease, put
there by the test) the room is partial: /members waits, a non-lazy /sync
leaves the room out and a lazy-loading one shows it, messages flow both
ways, also from a member b does not know yet (checked against its auth
events only); a message a forges for a moderator who left before the join,
on his old join, is accepted, and so is his topic change (the partial
state lacks his leave: it becomes b's state, a lazy-loading client sees
it), while a topic change a forges for a moderator demoted before the
join, on his old power levels, is refused (the partial state has the
room's power levels); another user of b joins and leaves (a sees it).
Once the lease is free, b takes the resync over: the state at the join
event is the resident's, event for event, /members has all 51 (not the
leaver, whom the forged topic's auth chain had brought into a fork's
resolution), the resync's check of what came meanwhile against the whole
state finds the forged message and topic out and rejects them (the
message gone from bob's /messages and GET /event, which showed it while
the room was partial; the topic gone from the current state and from the
state after the events built on it), the lazy-loading client gets the room
whole again with the old topic, the room comes to a non-lazy /sync as
newly joined with its members and the old topic, messages flow on and both
current states agree.
A kill -9 of b between the resync's fetch and its commit (crash point
``partial_state_fetched``) is resumed after the restart."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from coffeechat_home.crash_points import ENV as CRASH_ENV
from coffeechat_home.protocol.hashing import compute_event_id
from coffeechat_home.protocol.room_versions import KNOWN_ROOM_VERSIONS
from coffeechat_home.protocol.signing import hash_and_sign_event

from ..integration.processes import User, message_bodies, pages_back, wait_until
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers, send_transaction

pytestmark = pytest.mark.federation

ENV = {"COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "300",
       "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "2000",
       "COFFEECHAT_FEDERATION_PARTIAL_STATE_RETRY_MS": "300"}
LAZY = quote(json.dumps({"room": {"state": {"lazy_load_members": True}}}))
HOLDER = "partial-join-test-holder"

# the state after an event, through its state group's chain (same schema on both servers)
STATE_AFTER = """
WITH RECURSIVE chain (id, prev_group, n) AS (
    SELECT g.id, g.prev_group, 0 FROM state_groups g JOIN events e ON e.state_group = g.id WHERE e.event_id = $1
    UNION ALL
    SELECT s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group)
SELECT DISTINCT ON (x.type, x.state_key) x.type, x.state_key, x.event_id
FROM state_group_entries x JOIN chain c ON x.state_group = c.id ORDER BY x.type, x.state_key, c.n"""


@pytest.fixture(scope="module")
async def pair(pg: PostgresForTests, pg_template: str,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    tmp = tmp_path_factory.mktemp("partial-join")
    async with federating_servers(pg, pg_template, tmp, "pj", 2, **ENV) as servers:
        yield servers[0], servers[1]


async def room_with_members(http: aiohttp.ClientSession, a: FederatingServer, owner: User, prefix: str,
                            count: int) -> tuple[str, list[User]]:
    status, room = await owner.call("POST", "createRoom", {"preset": "public_chat", "room_version": "10"})
    assert status == 200, room
    room_id = room["room_id"]
    members = []
    for i in range(count):
        u = await User(http, a.client_url).register(f"{prefix}{i:02d}")
        status, body = await u.call("POST", f"rooms/{quote(room_id)}/join", {})
        assert status == 200, body
        members.append(u)
    return room_id, members


async def arrives(user: User, room_id: str, body: str) -> bool:
    async def seen() -> bool:
        return body in await message_bodies(user, room_id)
    return await wait_until(seen, 30, interval=0.2)


async def state_after(server: FederatingServer, event_id: str) -> dict[tuple[str, str], str]:
    return {(r["type"], r["state_key"]): r["event_id"] for r in await server.db_fetch(STATE_AFTER, event_id)}


async def partial_row(b: FederatingServer, room_id: str) -> Any:
    rows = await b.db_fetch("SELECT servers, stream_pos FROM partial_state_rooms WHERE room_id = $1", room_id)
    return rows[0] if rows else None


async def resynced(b: FederatingServer, room_id: str) -> bool:
    row = await partial_row(b, room_id)
    return row is not None and row["stream_pos"] is not None


async def hold_resync(b: FederatingServer, room_id: str, holder: str) -> None:
    """Another live "instance" of b (``holder``) holds the room's resync
    lease: b's own resync waits (only the holder resyncs)."""
    await b.db_fetch("INSERT INTO instance_leases VALUES ($1, 'elsewhere', 0, 9000000000000)", holder)
    await b.db_fetch("INSERT INTO work_leases VALUES ($1, $2, 9000000000000)", f"partial-state:{room_id}", holder)


async def holder_dies(b: FederatingServer, holder: str) -> None:
    """``holder``'s leases are gone: b's sweep takes the resync over."""
    await b.db_fetch("DELETE FROM work_leases WHERE instance_id = $1", holder)
    await b.db_fetch("DELETE FROM instance_leases WHERE instance_id = $1", holder)


async def forge(a: FederatingServer, b: FederatingServer, room_id: str, sender: str, prev_id: str,
                auth_ids: list[str], kind: str, content: dict[str, Any],
                state_key: str | None = None) -> tuple[str, dict[str, Any]]:
    """An event of ``sender`` built and signed by a on the auth events it
    names, pushed to b in a transaction of its own: (event id, b's answer
    for it)."""
    rv = KNOWN_ROOM_VERSIONS["10"]
    depth = (await a.db_fetch("SELECT depth FROM events WHERE event_id = $1", prev_id))[0]["depth"]
    event: dict[str, Any] = {
        "room_id": room_id, "sender": sender, "type": kind, "content": content, "prev_events": [prev_id],
        "auth_events": auth_ids, "depth": depth + 1, "origin_server_ts": int(time.time() * 1000),
    }
    if state_key is not None:
        event["state_key"] = state_key
    forged = hash_and_sign_event(event, a.server_name, a.signing_key(), rv)
    forged_id = compute_event_id(forged, rv)
    return forged_id, (await send_transaction(a, b, f"forged-{forged_id}", [forged]))[forged_id]


async def current_ids(a: FederatingServer, room_id: str) -> dict[tuple[str, str], str]:
    return {(r["type"], r["state_key"]): r["event_id"] for r in await a.db_fetch(
        "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id)}


async def old_join(a: FederatingServer, room_id: str, user_id: str) -> str:
    return str((await a.db_fetch(
        "SELECT event_id FROM events WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 "
        "AND membership = 'join'", room_id, user_id))[0]["event_id"])


async def forge_from_leaver(a: FederatingServer, b: FederatingServer, room_id: str, leaver: str,
                            prev_id: str) -> str:
    """A message of ``leaver`` (who left) built by a on his old join and
    pushed to b; b accepts it (answer without error). Its event id."""
    ids = await current_ids(a, room_id)
    forged_id, answer = await forge(
        a, b, room_id, leaver, prev_id,
        [ids[("m.room.create", "")], ids[("m.room.power_levels", "")], await old_join(a, room_id, leaver)],
        "m.room.message", {"msgtype": "m.text", "body": "from beyond"})
    assert answer == {}, answer
    return forged_id


async def test_partial_join_of_a_room_of_ours(pair: tuple[FederatingServer, FederatingServer]) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        room_id, members = await room_with_members(http, a, alice, "u", 50)
        status, topic = await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.topic/",
                                         {"topic": "original"})
        assert status == 200, topic
        # a moderator who left before bob came: his join is an old auth
        # event, and the power levels still name him
        leaver = members.pop(45)
        status, levels = await alice.call("GET", f"rooms/{quote(room_id)}/state/m.room.power_levels/")
        assert status == 200, levels
        levels = {**levels, "users": {**levels["users"], leaver.user_id: 50}}
        assert (await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.power_levels/", levels))[0] == 200
        assert (await leaver.call("POST", f"rooms/{quote(room_id)}/leave", {}))[0] == 200
        # a moderator demoted before bob came: his old power levels are an old auth event
        demoted = members[1]
        status, promoted = await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.power_levels/",
                                            {**levels, "users": {**levels["users"], demoted.user_id: 50}})
        assert status == 200, promoted
        assert (await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.power_levels/", levels))[0] == 200
        bob = await User(http, b.client_url).register("bob")
        first = await bob.sync()
        await hold_resync(b, room_id, HOLDER)

        status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
        assert status == 200, (body, b.process.stderr()[-3000:])
        row = await partial_row(b, room_id)
        assert row is not None and row["stream_pos"] is None and a.server_name in row["servers"], row
        known = await b.db_fetch("SELECT count(*) AS n FROM current_state WHERE room_id = $1 AND type = "
                                 "'m.room.member'", room_id)
        assert known[0]["n"] < 10, known  # bob and a few heroes: the members were omitted
        members_call = asyncio.create_task(bob.call("GET", f"rooms/{quote(room_id)}/members", timeout=60))

        # partial: a non-lazy sync leaves the room out, a lazy-loading one shows it
        plain = await bob.sync(first["next_batch"])
        assert room_id not in plain.get("rooms", {}).get("join", {}), plain
        status, lazy = await bob.call("GET", f"sync?timeout=0&filter={LAZY}")
        assert status == 200 and room_id in lazy["rooms"]["join"], lazy

        # messages both ways meanwhile, also from a member b's state lacks
        stranger = members[40]
        assert not await b.db_fetch("SELECT 1 FROM current_state WHERE room_id = $1 AND state_key = $2",
                                    room_id, stranger.user_id)
        assert (await stranger.send(room_id, "from a stranger"))[0] == 200
        status, during = await alice.send(room_id, "during, from a")
        assert status == 200
        assert (await bob.send(room_id, "during, from b"))[0] == 200
        assert await arrives(bob, room_id, "from a stranger"), b.process.stderr()[-3000:]
        assert await arrives(bob, room_id, "during, from a")
        assert await arrives(alice, room_id, "during, from b"), a.process.stderr()[-3000:]
        # a message of the leaver's that a forges on his old join: it passes
        # its own auth events (all b checks while partial); the resync's
        # check against the whole state before it finds it out
        forged_id = await forge_from_leaver(a, b, room_id, leaver.user_id, during["event_id"])
        # a state change of the demoted moderator's on his old power levels:
        # refused on receipt (the partial state has the room's power levels),
        # not taken into b's state to be found out after the resync
        ids = await current_ids(a, room_id)
        topic_id, answer = await forge(
            a, b, room_id, demoted.user_id, during["event_id"],
            [ids[("m.room.create", "")], promoted["event_id"], ids[("m.room.member", demoted.user_id)]],
            "m.room.topic", {"topic": "seized"}, state_key="")
        assert "error" in answer, answer
        assert not await b.db_fetch("SELECT 1 FROM current_state WHERE event_id = $1", topic_id)
        assert "from beyond" in await message_bodies(bob, room_id)
        # a topic change of the leaver's on his old join: accepted while
        # partial (the partial state lacks his leave), it becomes state, and
        # the lazy-loading client sees it
        seized_id, answer = await forge(
            a, b, room_id, leaver.user_id, during["event_id"],
            [ids[("m.room.create", "")], ids[("m.room.power_levels", "")], await old_join(a, room_id, leaver.user_id)],
            "m.room.topic", {"topic": "seized"}, state_key="")
        assert answer == {}, answer
        assert (await current_ids(b, room_id))[("m.room.topic", "")] == seized_id
        seen: dict[str, Any] = {}

        async def lazy_saw_seized() -> bool:
            status, body = await bob.call("GET", f"sync?timeout=0&filter={LAZY}&since={lazy['next_batch']}")
            timeline = body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
            seen.update(body)
            return status == 200 and any(e["event_id"] == seized_id for e in timeline)
        assert await wait_until(lazy_saw_seized, 10)
        # another user of b joins (on b's partial state) and leaves: a sees both
        eve = await User(http, b.client_url).register("eve")
        assert (await eve.call("POST", f"rooms/{quote(room_id)}/join", {}))[0] == 200
        assert (await eve.call("POST", f"rooms/{quote(room_id)}/leave", {}))[0] == 200

        async def a_saw_eve_leave() -> bool:
            return bool(await a.db_fetch("SELECT 1 FROM current_state WHERE room_id = $1 AND state_key = $2 "
                                         "AND membership = 'leave'", room_id, eve.user_id))
        assert await wait_until(a_saw_eve_leave, 30), a.process.stderr()[-3000:]
        eve_left = (await b.db_fetch("SELECT event_id FROM current_state WHERE room_id = $1 AND state_key = $2",
                                     room_id, eve.user_id))[0]["event_id"]
        assert (await state_after(b, eve_left))[("m.room.topic", "")] == seized_id
        assert not members_call.done()  # /members waits for the resync
        assert (await partial_row(b, room_id))["stream_pos"] is None

        await holder_dies(b, HOLDER)
        status, got = await members_call
        assert status == 200, got
        joined = {e["state_key"] for e in got["chunk"] if e["content"]["membership"] == "join"}
        assert joined == {alice.user_id, bob.user_id, *(m.user_id for m in members)}, len(joined)
        assert {e["state_key"]: e["content"]["membership"] for e in got["chunk"]}[leaver.user_id] == "leave"
        status, jm = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
        assert status == 200 and len(jm["joined"]) == 51, jm
        assert (await partial_row(b, room_id))["stream_pos"] is not None

        async def found_out() -> bool:
            return f"event {forged_id}, received while" in b.process.stderr()
        assert await wait_until(found_out, 10), b.process.stderr()[-3000:]

        async def rejected() -> bool:
            return "from beyond" not in await message_bodies(bob, room_id)
        assert await wait_until(rejected, 10), b.process.stderr()[-3000:]
        status, body = await bob.call("GET", f"rooms/{quote(room_id)}/event/{quote(forged_id)}")
        assert status == 404, body
        assert "during, from a" in await message_bodies(bob, room_id)
        # the leaver's topic is found out too: rejected, and out of b's
        # state (current, and the state after the events built on it)
        rows = await b.db_fetch("SELECT rejected_reason, stream_pos FROM events WHERE event_id = $1", seized_id)
        assert rows[0]["rejected_reason"] is not None and rows[0]["stream_pos"] is None, rows
        assert (await current_ids(b, room_id))[("m.room.topic", "")] == topic["event_id"]
        assert (await state_after(b, eve_left))[("m.room.topic", "")] == topic["event_id"]
        status, body = await bob.call("GET", f"rooms/{quote(room_id)}/state/m.room.topic/")
        assert status == 200 and body["topic"] == "original", body

        # the lazy-loading client that saw the topic change gets the room
        # whole again, with the topic it has
        async def lazy_told() -> bool:
            status, body = await bob.call("GET", f"sync?timeout=0&filter={LAZY}&since={seen['next_batch']}")
            room = body.get("rooms", {}).get("join", {}).get(room_id)
            if status != 200 or room is None:
                return False
            topics = [e for e in room["state"]["events"] if e["type"] == "m.room.topic"]
            return [e["content"]["topic"] for e in topics] == ["original"] and room["timeline"]["limited"]
        assert await wait_until(lazy_told, 10), b.process.stderr()[-3000:]
        assert "2 event(s) rejected" in next(x for x in b.process.stderr().splitlines() if "replayed at" in x)

        # the state at bob's join is the resident's, event for event
        join_id = (await b.db_fetch(
            "SELECT event_id FROM events WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2",
            room_id, bob.user_id))[0]["event_id"]
        on_b, on_a = await state_after(b, join_id), await state_after(a, join_id)
        assert len(on_a) >= 56 and on_b == on_a, (len(on_a), len(on_b))
        # and so is the state after every event since, as the resync's
        # replay left it (without the forged topic; a never took it)
        since_join = [r["event_id"] for r in await b.db_fetch(
            "SELECT e.event_id FROM events e, events j WHERE j.event_id = $1 AND e.room_id = j.room_id "
            "AND e.stream_pos > j.stream_pos AND e.rejected_reason IS NULL ORDER BY e.stream_pos", join_id)]
        on_a_too = {r["event_id"] for r in await a.db_fetch(
            "SELECT event_id FROM events WHERE event_id = ANY($1::TEXT[]) AND rejected_reason IS NULL", since_join)}
        assert len(on_a_too) >= 5, since_join
        for event_id in since_join:
            if event_id in on_a_too:
                assert await state_after(b, event_id) == await state_after(a, event_id), event_id

        # the room comes to a non-lazy sync as newly joined, with its members
        async def shown() -> bool:
            body = await bob.sync(plain["next_batch"])
            room = body.get("rooms", {}).get("join", {}).get(room_id)
            if room is None:
                return False
            events = room["state"]["events"] + room["timeline"]["events"]
            assert seized_id not in {e["event_id"] for e in events}
            assert [e["content"]["topic"] for e in room["state"]["events"] if e["type"] == "m.room.topic"] == \
                ["original"]
            return len({e["state_key"] for e in events if e["type"] == "m.room.member"}) == 53  # leaver, eve too
        assert await wait_until(shown, 10)

        # and after: both ways, and current states agree
        assert (await alice.send(room_id, "after, from a"))[0] == 200
        assert (await bob.send(room_id, "after, from b"))[0] == 200
        assert await arrives(bob, room_id, "after, from a")
        assert await arrives(alice, room_id, "after, from b")
        assert await b.db_fetch("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1 "
                                "ORDER BY 1, 2", room_id) == \
            await a.db_fetch("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1 "
                             "ORDER BY 1, 2", room_id)


async def test_resync_resumes_after_kill9(pair: tuple[FederatingServer, FederatingServer]) -> None:
    """b dies (kill -9 alike) after the resync fetched and stored the
    state, before completing the room; after the restart the resync runs
    again (the sweep finds the room partial) and completes it."""
    a, b = pair
    async with aiohttp.ClientSession() as http:
        carol = await User(http, a.client_url).register("carol")
        room_id, members = await room_with_members(http, a, carol, "k", 12)
        dave = await User(http, b.client_url).register("dave")
        b.env[CRASH_ENV] = "partial_state_fetched"
        try:
            await b.stop()
            await b.start()
            dave = dave.on(b.client_url)
            status, body = await dave.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
            assert status == 200, body  # answered before the resync (which then kills b)
            assert b.process.proc is not None
            assert await asyncio.wait_for(b.process.proc.wait(), 60) == 137
        finally:
            del b.env[CRASH_ENV]
        row = await partial_row(b, room_id)
        assert row is not None and row["stream_pos"] is None, row
        await b.start()
        dave = dave.on(b.client_url)

        assert await wait_until(lambda: resynced(b, room_id), 30), b.process.stderr()[-3000:]
        status, jm = await dave.call("GET", f"rooms/{quote(room_id)}/joined_members")
        assert status == 200 and set(jm["joined"]) == {carol.user_id, dave.user_id, *(m.user_id for m in members)}


async def test_history_backfilled_while_partial_stays_hidden(pair: tuple[FederatingServer, FederatingServer]) -> None:
    """bob (b) joins a room of a whose history is for joined members only
    and pages back through it while b's resync cannot run: b backfills that
    history on the partial state, and then gets a message that crossed his
    join (sent on the last message before it). The resync completes the
    state at bob's join (with bob joined), and only the state from the join
    on: what was said before he joined (a serves it redacted) and the
    crossing message stay hidden from bob, in /messages and as single
    events, before and after the resync."""
    a, b = pair
    holder = f"{HOLDER}-history"
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("hv_alice")
        status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": "10"})
        assert status == 200, room
        room_id = room["room_id"]
        assert (await alice.send(room_id, "open"))[0] == 200
        assert (await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.history_visibility/",
                                 {"history_visibility": "joined"}))[0] == 200
        secrets = [(await alice.send(room_id, f"secret {i}"))[1]["event_id"] for i in range(3)]
        bob = await User(http, b.client_url).register("hv_bob")
        await hold_resync(b, room_id, holder)
        status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
        assert status == 200, body
        assert (await alice.send(room_id, "after join"))[0] == 200
        assert await arrives(bob, room_id, "after join"), b.process.stderr()[-3000:]

        async def bobs_view() -> list[Any]:
            got, _ = await pages_back(bob, room_id, 2)
            hidden = [(await bob.call("GET", f"rooms/{quote(room_id)}/event/{quote(s)}"))[0] for s in secrets]
            return [[e["content"].get("body") for e in got if e["type"] == "m.room.message"], hidden]

        assert await bobs_view() == [["open", "after join"], [404, 404, 404]]
        backfilled = await b.db_fetch("SELECT event_id FROM events WHERE room_id = $1 AND stream_pos < 0", room_id)
        assert set(secrets) <= {r["event_id"] for r in backfilled}  # backfilled while partial
        # a message that crossed bob's join (its prev event is the last
        # secret) reaches b now: a live position, a state without bob
        ids = await current_ids(a, room_id)
        crossed, answer = await forge(
            a, b, room_id, alice.user_id, secrets[-1],
            [ids[("m.room.create", "")], ids[("m.room.power_levels", "")], ids[("m.room.member", alice.user_id)]],
            "m.room.message", {"msgtype": "m.text", "body": "crossed"})
        assert answer == {}, answer
        secrets.append(crossed)
        assert await bobs_view() == [["open", "after join"], [404, 404, 404, 404]]
        assert (await partial_row(b, room_id))["stream_pos"] is None

        await holder_dies(b, holder)
        assert await wait_until(lambda: resynced(b, room_id), 30), b.process.stderr()[-3000:]
        assert await bobs_view() == [["open", "after join"], [404, 404, 404, 404]]
        for secret in secrets:  # the state before bob's join does not have him in it
            assert ("m.room.member", bob.user_id) not in await state_after(b, secret)
