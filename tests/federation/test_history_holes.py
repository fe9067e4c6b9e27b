"""Issue #9: a hole in the middle of a room's history.

B is stopped (by PID) while A's user sends more messages than B asks for
with one get_missing_events (``federation.missing_events_limit``, set low
here). A's sender then skips its backlog for B (as a server catching up a
destination with only the latest event does: its position for B is moved
to the end), so after B restarts the next message reaches B alone: B
fetches the few events before it with get_missing_events and closes the
rest of the gap with the state at it (state_ids). B's timeline now has a
hole between the messages from before the outage and those
get_missing_events brought.

Paging back with ``/messages`` on B must show every message once, in
order: a page that reaches the event whose prev_events B lacks (a backward
extremity) backfills the hole from A before answering. Also in a room whose
history is for joined members only: the backfilled events sort below every
live position (outside bob's stream window), and are judged by the state
at each (bob was joined there). Every fourth message of the hole is a reply
in a thread: /relations and /threads count the backfilled replies too (in
the joined-only room as well), and /relations pages through them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from ..integration.processes import User, pages_back, wait_until
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers

pytestmark = pytest.mark.federation

MISSING_LIMIT = 5
GAP = 40  # messages B misses: far more than MISSING_LIMIT
THREAD_EVERY = 4  # of those, every fourth is a reply in a thread
FAST = {
    "COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "200",
    "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "1000",
    "COFFEECHAT_FEDERATION_MISSING_EVENTS_LIMIT": str(MISSING_LIMIT),
}


@pytest.fixture
async def pair(
    pg: PostgresForTests, pg_template: str, tmp_path: Path
) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "holes", 2, **FAST) as servers:
        yield servers[0], servers[1]


async def _stored(server: FederatingServer, event_ids: list[str]) -> int:
    rows = await server.db_fetch(
        "SELECT count(*) AS n FROM events WHERE event_id = ANY($1::TEXT[]) AND stream_pos IS NOT NULL", event_ids)
    return int(rows[0]["n"])


async def v1(user: User, path: str) -> tuple[int, Any]:
    async with user.session.get(f"{user.base_url}/_matrix/client/v1/{path}",
                                headers={"Authorization": f"Bearer {user.token}"}) as r:
        return r.status, await r.json()


async def thread_of_the_hole(bob: User, room_id: str, root: str, gap: list[str]) -> None:
    """The thread whose replies are mostly backfilled events of the hole:
    /relations pages through each reply once, newest first (a page ending
    among backfilled events, below stream position zero, goes on from
    there), and /threads counts them all, the newest as its latest."""
    replies = [gap[i] for i in range(0, GAP, THREAD_EVERY)]
    got: list[str] = []
    token = ""
    for _ in range(len(replies) + 2):
        q = "limit=3" + (f"&from={token}" if token else "")
        status, body = await v1(bob, f"rooms/{quote(room_id)}/relations/{quote(root)}/m.thread?{q}")
        assert status == 200, body
        got.extend(e["event_id"] for e in body["chunk"])
        token = body.get("next_batch", "")
        if not token:
            break
    assert got == replies[::-1], (len(got), len(replies))
    status, body = await v1(bob, f"rooms/{quote(room_id)}/threads")
    assert status == 200, body
    [thread] = body["chunk"]
    summary = thread["unsigned"]["m.relations"]["m.thread"]
    assert (thread["event_id"], summary["count"], summary["latest_event"]["event_id"]) == \
        (root, len(replies), replies[-1]), summary


async def test_messages_backfills_a_hole_in_the_middle_of_history(
    pair: tuple[FederatingServer, FederatingServer]
) -> None:
    """In a room with the default (shared) history and in one for joined
    members only, where bob was joined all along."""
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        bob = await User(http, b.client_url).register("bob")
        rooms = []
        for visibility in ("shared", "joined"):
            status, room = await alice.call("POST", "createRoom", {
                "preset": "public_chat", "room_version": "10",
                "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                   "content": {"history_visibility": visibility}}],
            })
            assert status == 200, room
            rooms.append(room["room_id"])
            status, body = await bob.call(
                "POST", f"join/{quote(room['room_id'])}?server_name={quote(a.server_name)}", {})
            assert status == 200, body
        before = []
        for room_id in rooms:
            for i in range(3):
                status, sent = await alice.send(room_id, f"before {i}")
                assert status == 200, sent
                before.append(sent["event_id"])

        async def b_has(ids: list[str]) -> bool:
            return await _stored(b, ids) == len(ids)

        assert await wait_until(lambda: b_has(before), 30, interval=0.1)

        await b.stop()  # SIGTERM to its PID
        gaps: dict[str, list[str]] = {r: [] for r in rooms}
        roots = {room_id: before[3 * n] for n, room_id in enumerate(rooms)}  # "before 0": a thread's root
        for i in range(GAP):
            for room_id in rooms:
                content: dict[str, Any] = {"msgtype": "m.text", "body": f"gap {i}"}
                if i % THREAD_EVERY == 0:  # a reply in the thread: most of them in the hole
                    content["m.relates_to"] = {"rel_type": "m.thread", "event_id": roots[room_id],
                                               "is_falling_back": True,
                                               "m.in_reply_to": {"event_id": roots[room_id]}}
                status, sent = await alice.call(
                    "PUT", f"rooms/{quote(room_id)}/send/m.room.message/gap-{i}-{room_id}", content)
                assert status == 200, sent
                gaps[room_id].append(sent["event_id"])
        # A's sender gives up the backlog for B: only what comes next goes
        # (A stopped meanwhile: a batch its sender read before the change
        # could still reach B once B is back)
        await a.stop()
        await a.db_fetch(
            "UPDATE federation_destinations SET stream_pos = (SELECT max(stream_pos) FROM events), "
            "retry_count = 0, retry_until_ts = 0 WHERE destination = $1", b.server_name)
        await a.start()
        alice = alice.on(a.client_url)  # a new client port
        await b.start()
        bob = bob.on(b.client_url)  # a new client port
        after = []
        for room_id in rooms:
            status, sent = await alice.send(room_id, "after")
            assert status == 200, sent
            after.append(sent["event_id"])
        assert await wait_until(lambda: b_has(after), 60, interval=0.1)

        expected = [f"before {i}" for i in range(3)] + [f"gap {i}" for i in range(GAP)] + ["after"]
        for room_id in rooms:
            gap = gaps[room_id]
            # B holds the last few (get_missing_events) and not the rest: a hole
            assert await _stored(b, gap[-MISSING_LIMIT:]) == MISSING_LIMIT
            assert await _stored(b, gap[:-MISSING_LIMIT]) == 0

            events, pages = await pages_back(bob, room_id, 10)
            bodies = [e["content"]["body"] for e in events if e["type"] == "m.room.message"]
            assert bodies == expected, (rooms.index(room_id), bodies)
            ids = [e["event_id"] for e in events]
            assert len(ids) == len(set(ids)), "an event shown twice"
            # the hole is filled on B now: a second reader pays no fetch
            assert await _stored(b, gap) == GAP
            again, _ = await pages_back(bob, room_id, 50)
            assert [e["event_id"] for e in again] == ids
            # a backfilled event of the hole, alone
            status, got = await bob.call("GET", f"rooms/{quote(room_id)}/event/{quote(gap[0])}")
            assert (status, got.get("event_id")) == (200, gap[0]), got
            await thread_of_the_hole(bob, room_id, roots[room_id], gap)
