"""A room shared between two coffeechat-home servers, both ways: a user of
the second server joins a room of the first (make_join/send_join), both
talk, every message reaches both servers exactly once (the outbound sender
and inbound /send on each side), both report the same room state, typing,
read receipts and presence reach the other side's /sync both ways, a state
change and a leave reach the other side. The history from before the join
is backfilled (an event altered on the way kept redacted; a joined-only
room's stays hidden, but for what was said while it was shared); knocks,
server ACLs and the public room directory across the two servers, and
each one's spaces listing the other's sub-spaces (/hierarchy on both
APIs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from ..integration.processes import User, pages_back, wait_until
from ..pg import PostgresForTests
from .ephemeral_checks import presence_reaches, typing_and_receipts_both_ways
from .hierarchy_checks import check_hierarchy_both_ways
from .peers import FederatingServer, federating_servers, signed_federation_get

pytestmark = pytest.mark.federation


@pytest.fixture
async def trio(
    pg: PostgresForTests, pg_template: str, tmp_path: Path
) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "rooms", 2) as servers:
        yield servers[0], servers[1]


async def messages(user: User, room_id: str) -> list[str]:
    """Bodies of the room's messages (redacted ones have none)."""
    return [e["content"]["body"] for e in await user.history(room_id)
            if e["type"] == "m.room.message" and "body" in e["content"]]


async def room_on(server: FederatingServer, room_id: str, user_id: str) -> str:
    """What a failure message shows of a room on a server: its events with
    their positions and flags, its state groups (with their history
    visibility and the user's membership entries), and the server's log
    (a test's diagnostics, read only then)."""
    events = await server.db_fetch(
        """SELECT event_id, type, stream_pos, depth, outlier, rejected_reason, soft_failed, state_group,
                  client NOT LIKE '%"body"%' AS no_body
           FROM events WHERE room_id = $1 ORDER BY depth, stream_pos""", room_id)
    groups = await server.db_fetch(
        """SELECT s.id, s.prev_group, g.type, g.event_id, x.client::jsonb->'content' AS content
           FROM state_groups s LEFT JOIN state_group_entries g ON g.state_group = s.id
                AND (g.type = 'm.room.history_visibility' OR (g.type = 'm.room.member' AND g.state_key = $2))
           LEFT JOIN events x ON x.event_id = g.event_id
           WHERE s.room_id = $1 ORDER BY s.id""", room_id, user_id)
    lines = [*(str(tuple(r)) for r in events), *(str(tuple(r)) for r in groups), server.process.stderr()[-4000:]]
    return "\n".join(lines)


async def state_ids(user: User, room_id: str) -> dict[tuple[str, str], str]:
    status, body = await user.call("GET", f"rooms/{quote(room_id)}/state")
    assert status == 200, body
    return {(e["type"], e["state_key"]): e["event_id"] for e in body}


async def wait_for_bodies(user: User, room_id: str, expected: list[str], deadline_s: float = 30) -> list[str]:
    seen: list[str] = []

    async def arrived() -> bool:
        nonlocal seen
        seen = await messages(user, room_id)
        # in any order and place: two servers' concurrent sends have no
        # order the test can expect (waiting for one ran out the deadline)
        return all(m in seen for m in expected)

    await wait_until(arrived, deadline_s, interval=0.2)
    return seen


async def check_backfilled_history(alice: User, bob: User, room_id: str) -> None:
    """bob (who joined from another server) pages back in small pages: the
    room's whole history from its creation, each event once, the part
    before his join in the resident server's order."""
    on_a = [e["event_id"] for e in await alice.history(room_id)]
    got, pages = await pages_back(bob, room_id, 3)
    ids = [e["event_id"] for e in got]
    assert len(ids) == len(set(ids)), "duplicates in bob's history"
    assert got[0]["type"] == "m.room.create" and pages > 3
    join = next(e["event_id"] for e in got if e["type"] == "m.room.member" and e["state_key"] == bob.user_id
                and e["content"]["membership"] == "join")
    k = on_a.index(join)
    assert ids[:k + 1] == on_a[:k + 1]
    assert sorted(ids) == sorted(on_a)


@pytest.mark.parametrize("version", ["10", "12"])
async def test_two_servers_share_a_room_both_ways(
    trio: tuple[FederatingServer, FederatingServer], version: str
) -> None:
    a, b = trio
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        bob = await User(http, b.client_url).register("bob")
        status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
        assert status == 200, room
        room_id = room["room_id"]
        old = ["before bob"] + [f"old {i}" for i in range(8)]
        sent_ids = []
        for body in old:
            status, sent = await alice.send(room_id, body)
            assert status == 200
            sent_ids.append(sent["event_id"])
        # a's copy of "old 3" altered after signing: what a serves in
        # /backfill fails its content hash on b, which keeps it redacted
        tampered = sent_ids[old.index("old 3")]
        pdu = orjson.loads((await a.db_fetch("SELECT pdu FROM events WHERE event_id = $1", tampered))[0]["pdu"])
        pdu["content"]["body"] = "tampered"
        await a.db_fetch("UPDATE events SET pdu = $2 WHERE event_id = $1", tampered, orjson.dumps(pdu).decode())

        status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
        assert status == 200, (body, b.process.stderr()[-3000:])

        # both ways, interleaved
        for i in range(3):
            assert (await alice.send(room_id, f"alice {i}"))[0] == 200
            assert (await bob.send(room_id, f"bob {i}"))[0] == 200
        expected = old + [m for i in range(3) for m in (f"alice {i}", f"bob {i}")]
        seen_a = await wait_for_bodies(alice, room_id, expected[-2:])
        seen_b = await wait_for_bodies(bob, room_id, expected[-2:])
        # every message exactly once on each side (order within a pair of
        # concurrent sends may differ by DAG position, never the set); the
        # history from before bob's join was backfilled from a
        assert sorted(seen_a) == sorted(expected), seen_a
        assert sorted(seen_b) == sorted(m for m in expected if m != "old 3"), seen_b
        redacted = [e for e in await bob.history(room_id) if e["event_id"] == tampered]
        assert len(redacted) == 1 and redacted[0]["content"] == {}, redacted
        assert await state_ids(alice, room_id) == await state_ids(bob.on(b.client_url), room_id)
        if version == "12":  # typing, receipts and presence do not depend on the room version
            last = {e["sender"]: e["event_id"] for e in await alice.history(room_id) if e["type"] == "m.room.message"}
            await typing_and_receipts_both_ways(alice, bob, room_id, last[alice.user_id], last[bob.user_id])
            await presence_reaches(alice, bob, "away from a")
            await presence_reaches(bob, alice, "away from b")
        await check_backfilled_history(alice, bob, room_id)

        # a state change on the joining side reaches the resident side
        status, _ = await bob.call("PUT", f"rooms/{quote(room_id)}/state/m.room.topic/", {"topic": "from b"})
        # bob has power 0 in a public_chat room: refused by the auth rules, nothing sent
        assert status == 403
        status, _ = await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.topic/", {"topic": "from a"})
        assert status == 200

        async def topic_on_b() -> bool:
            s, body = await bob.call("GET", f"rooms/{quote(room_id)}/state/m.room.topic/")
            return s == 200 and body.get("topic") == "from a"

        assert await wait_until(topic_on_b, 30, interval=0.2)

        # bob leaves: alice's later messages no longer reach b
        assert (await bob.call("POST", f"rooms/{quote(room_id)}/leave", {}))[0] == 200

        async def bob_left_on_a() -> bool:
            return (await state_ids(alice, room_id)).get(("m.room.member", bob.user_id)) is not None and (
                (await alice.call("GET", f"rooms/{quote(room_id)}/state/m.room.member/{quote(bob.user_id)}"))[1]
                .get("membership") == "leave"
            )

        assert await wait_until(bob_left_on_a, 30, interval=0.2)

        # a room whose history is for joined members only when bob joins:
        # what was said before bob joined stays hidden after backfill, but
        # for what was said while it was shared (visible to whoever joins
        # later: the state at bob's join, joined, does not tell what came
        # before, so /messages backfills below it and judges each event)
        status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
        assert status == 200, room
        private_id = room["room_id"]
        for i in range(2):
            assert (await alice.send(private_id, f"open {i}"))[0] == 200
        assert (await alice.call("PUT", f"rooms/{quote(private_id)}/state/m.room.history_visibility/",
                                 {"history_visibility": "joined"}))[0] == 200
        for i in range(4):
            assert (await alice.send(private_id, f"secret {i}"))[0] == 200
        status, body = await bob.call("POST", f"join/{quote(private_id)}?server_name={quote(a.server_name)}", {})
        assert status == 200, body
        assert (await alice.send(private_id, "after join"))[0] == 200
        assert await wait_for_bodies(bob, private_id, ["after join"]) == ["open 0", "open 1", "after join"]
        got, _ = await pages_back(bob, private_id, 2)
        assert [e["content"].get("body") for e in got if e["type"] == "m.room.message"] == \
            ["open 0", "open 1", "after join"], f"{got}\n{await room_on(b, private_id, bob.user_id)}"
        fetched = await b.db_fetch("SELECT count(*) FROM events WHERE room_id = $1 AND stream_pos < 0", private_id)
        assert fetched[0][0] > 0  # backfilled, the secrets not shown
        # a backfilled secret (a served it redacted) whose state b does not
        # know stays hidden: an unknown state is not "shared"
        secret = (await b.db_fetch(
            "SELECT event_id FROM events WHERE room_id = $1 AND stream_pos < 0 AND type = 'm.room.message' "
            "AND client NOT LIKE '%\"body\"%' LIMIT 1", private_id))[0]["event_id"]
        await b.db_fetch("UPDATE events SET state_group = NULL WHERE event_id = $1", secret)
        got, _ = await pages_back(bob, private_id, 2)
        assert [e["content"].get("body") for e in got if e["type"] == "m.room.message"] == \
            ["open 0", "open 1", "after join"], got

        knock_room = await check_knock(a, alice, bob, version)
        await check_server_acl(http, a, b, alice, bob, knock_room)
        await check_public_rooms(a, alice, bob)
        if version == "12":  # spaces do not depend on the room version
            await check_hierarchy_both_ways(http, a, b, alice, bob)


async def check_knock(a: FederatingServer, alice: User, bob: User, version: str) -> str:
    """bob knocks on a room of a whose join rule is knock (make_knock,
    send_knock): /sync on b shows it under knock with the stripped state,
    a has the knock (marked for relay to the room's other servers), alice
    invites bob and he joins; an invite-only room refuses the knock."""
    via = f"server_name={quote(a.server_name)}"
    status, room = await alice.call("POST", "createRoom", {"preset": "private_chat", "room_version": version})
    assert status == 200, room
    status, body = await bob.call("POST", f"knock/{quote(room['room_id'])}?{via}", {})
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body

    status, room = await alice.call("POST", "createRoom", {
        "preset": "private_chat", "room_version": version, "name": "knock here",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    })
    assert status == 200, room
    room_id = room["room_id"]
    status, body = await bob.call("POST", f"knock/{quote(room_id)}?{via}", {"reason": "let me in"})
    assert (status, body) == (200, {"room_id": room_id}), body
    knock_state = (await bob.sync())["rooms"]["knock"][room_id]["knock_state"]["events"]
    assert {"type": "m.room.name", "state_key": "", "sender": alice.user_id,
            "content": {"name": "knock here"}} in knock_state, knock_state
    mine = [e for e in knock_state if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert mine and mine[0]["content"]["membership"] == "knock", knock_state
    rows = await a.db_fetch(
        """SELECT e.event_id, e.stream_pos, r.event_id AS relayed FROM events e
           LEFT JOIN federation_relay r ON r.event_id = e.event_id
           WHERE e.room_id = $1 AND e.type = 'm.room.member' AND e.state_key = $2""", room_id, bob.user_id)
    assert len(rows) == 1 and rows[0]["stream_pos"] is not None and rows[0]["relayed"], rows
    status, member = await alice.call("GET", f"rooms/{quote(room_id)}/state/m.room.member/{quote(bob.user_id)}")
    assert (status, member.get("membership"), member.get("reason")) == (200, "knock", "let me in"), member

    status, body = await alice.call("POST", f"rooms/{quote(room_id)}/invite", {"user_id": bob.user_id})
    assert status == 200, body

    async def joined() -> bool:
        s, _ = await bob.call("POST", f"rooms/{quote(room_id)}/join", {})
        return s == 200

    assert await wait_until(joined, 30, interval=0.2)
    status, members = await alice.call("GET", f"rooms/{quote(room_id)}/joined_members")
    assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id}, members
    return room_id


async def check_server_acl(http: aiohttp.ClientSession, a: FederatingServer, b: FederatingServer, alice: User,
                           bob: User, room_id: str) -> None:
    """alice's room denies servers named localhost (b, whatever its port):
    b's reads of the room are refused with 403, bob's new message is
    answered with an error and never stored on a."""
    last = (await a.db_fetch("SELECT event_id FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL "
                             "ORDER BY stream_pos DESC LIMIT 1", room_id))[0]["event_id"]
    paths = [f"/_matrix/federation/v1/state_ids/{quote(room_id)}?event_id={quote(last)}",
             f"/_matrix/federation/v1/backfill/{quote(room_id)}?v={quote(last)}&limit=5"]

    async def read(path: str) -> tuple[int, Any]:
        return await signed_federation_get(http, a.fed_url, path, origin=b.server_name,
                                           destination=a.server_name, key=b.signing_key())

    for path in paths:
        assert (await read(path))[0] == 200, path
    status, _ = await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.server_acl/",
                                 {"allow": ["*"], "deny": ["localhost"]})
    assert status == 200
    for path in paths:
        status, body = await read(path)
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), (path, body)

    status, sent = await bob.send(room_id, "from a denied server")
    assert status == 200, sent
    pos = (await b.db_fetch("SELECT stream_pos FROM events WHERE event_id = $1", sent["event_id"]))[0][0]

    async def delivered() -> bool:  # b's sender had its transaction answered by a
        rows = await b.db_fetch("SELECT stream_pos FROM federation_destinations WHERE destination = $1",
                                a.server_name)
        return bool(rows) and rows[0][0] >= pos

    assert await wait_until(delivered, 30, interval=0.2)
    assert await a.db_fetch("SELECT 1 FROM events WHERE event_id = $1", sent["event_id"]) == []


async def check_public_rooms(a: FederatingServer, alice: User, bob: User) -> None:
    """bob asks a's room directory through his server (GET and POST
    /publicRooms?server=, served over federation by a), with paging and a
    search term; without a token, asking another server is refused."""
    names = ["lobby one", "lobby two", "cellar"]
    for name in names:
        status, room = await alice.call("POST", "createRoom", {
            "preset": "public_chat", "visibility": "public", "name": name, "topic": f"about {name}"})
        assert status == 200, room
    server = quote(a.server_name)
    status, page = await bob.call("GET", f"publicRooms?server={server}&limit=2")
    assert status == 200 and len(page["chunk"]) == 2 and page["total_room_count_estimate"] == 3, page
    status, rest = await bob.call("GET", f"publicRooms?server={server}&limit=2&since={page['next_batch']}")
    assert status == 200 and "next_batch" not in rest, rest
    assert sorted(r["name"] for r in page["chunk"] + rest["chunk"]) == sorted(names)
    assert {"topic": "about cellar", "join_rule": "public", "num_joined_members": 1}.items() <= next(
        r for r in rest["chunk"] + page["chunk"] if r["name"] == "cellar").items()
    status, found = await bob.call("POST", f"publicRooms?server={server}", {"filter": {"generic_search_term": "LOBBY"}})
    assert status == 200 and sorted(r["name"] for r in found["chunk"]) == ["lobby one", "lobby two"], found
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{bob.base_url}/_matrix/client/v3/publicRooms?server={server}") as r:
            assert r.status == 401, await r.text()
