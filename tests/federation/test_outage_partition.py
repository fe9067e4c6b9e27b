"""Three coffeechat-home servers in one room, as real processes on loopback
(TLS): an outage and a partition, each healed by the servers alone (the
senders' persisted retries, get_missing_events, and the state at a gap).

* Outage: C is stopped (by PID) while A and B keep talking and change the
  state (B's user sends more messages than one get_missing_events returns,
  then A's user changes the topic and power levels and a new member joins).
  B is stopped too, then C restarted: A's backlog reaches C, whose first
  event sits on a gap that get_missing_events does not close, so C fetches
  the state at the gap. Then B is restarted and its backlog fills the rest.
  The DAG (event ids) and current state end up equal on all three.
* Partition: A and B each change the topic and power levels while the other
  is down (A demotes B's user first; B's user, not knowing it, changes the
  topic and someone's power level later). After both are up, all three
  servers hold the same state, and it is A's: state resolution applies the
  higher-powered sender's power levels first and refuses B's later changes
  against them (a last-writer-wins merge would keep B's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from ..integration.processes import User, wait_until
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers, signed_federation_get

pytestmark = pytest.mark.federation

GAP = 25  # more than the receiver's get_missing_events limit (20)
FAST_RETRY = {
    "COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "200",
    "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "2000",
}


@pytest.fixture
async def three(
    pg: PostgresForTests, pg_template: str, tmp_path: Path
) -> AsyncIterator[list[FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "gap", 3, **FAST_RETRY) as servers:
        yield servers


async def current_state(server: FederatingServer, room_id: str) -> dict[tuple[str, str], str]:
    rows = await server.db_fetch("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id)
    return {(r["type"], r["state_key"]): r["event_id"] for r in rows}


async def dag(server: FederatingServer, room_id: str) -> set[str]:
    """Every event of the room the server holds (a joining server holds the
    history before its join as outliers, from the send_join answer)."""
    rows = await server.db_fetch("SELECT event_id FROM events WHERE room_id = $1", room_id)
    return {r["event_id"] for r in rows}


async def rejected(server: FederatingServer, room_id: str) -> list[str]:
    rows = await server.db_fetch(
        "SELECT event_id FROM events WHERE room_id = $1 AND rejected_reason IS NOT NULL", room_id)
    return [r["event_id"] for r in rows]


async def converged(servers: list[FederatingServer], room_id: str) -> bool:
    states = [await current_state(s, room_id) for s in servers]
    dags = [await dag(s, room_id) for s in servers]
    return all(x == states[0] for x in states) and all(d == dags[0] for d in dags)


async def in_dag(server: FederatingServer, event_ids: list[str]) -> int:
    rows = await server.db_fetch("SELECT count(*) AS n FROM events WHERE event_id = ANY($1::TEXT[]) AND NOT outlier",
                                 event_ids)
    return int(rows[0]["n"])


async def has_events(server: FederatingServer, event_ids: list[str]) -> bool:
    return await in_dag(server, event_ids) == len(event_ids)


async def put_state(user: User, room_id: str, event_type: str, content: dict[str, Any]) -> str:
    status, body = await user.call("PUT", f"rooms/{quote(room_id)}/state/{event_type}/", content)
    assert status == 200, body
    return str(body["event_id"])


async def get_state(user: User, room_id: str, event_type: str) -> dict[str, Any]:
    status, body = await user.call("GET", f"rooms/{quote(room_id)}/state/{event_type}/")
    assert status == 200, body
    return dict(body)


async def test_outage_and_partition_converge(three: list[FederatingServer]) -> None:
    a, b, c = three
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        bob = await User(http, b.client_url).register("bob")
        carol = await User(http, c.client_url).register("carol")
        status, room = await alice.call("POST", "createRoom", {
            "preset": "public_chat", "room_version": "10",
            "power_level_content_override": {
                "users": {alice.user_id: 100, bob.user_id: 50},
                "events": {"m.room.power_levels": 50, "m.room.topic": 50},
            },
        })
        assert status == 200, room
        room_id = room["room_id"]
        for user in (bob, carol):
            status, body = await user.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
            assert status == 200, body
        assert await wait_until(lambda: converged(three, room_id), 60, interval=0.3), "the joins did not converge"

        # -- outage: C down while A and B talk and change the state
        await c.stop()
        sent = []
        for i in range(GAP):
            status, body = await bob.send(room_id, f"bob {i}")
            assert status == 200, body
            sent.append(body["event_id"])
        assert await wait_until(lambda: has_events(a, sent), 60, interval=0.2), "A did not get B's messages"
        topic = await put_state(alice, room_id, "m.room.topic", {"topic": "while C was away"})
        power = await get_state(alice, room_id, "m.room.power_levels")
        power["users"][carol.user_id] = 10
        power_id = await put_state(alice, room_id, "m.room.power_levels", power)
        dave = await User(http, a.client_url).register("dave")
        assert (await dave.call("POST", f"rooms/{quote(room_id)}/join", {}))[0] == 200
        status, body = await alice.send(room_id, "the last one C missed")
        assert status == 200, body
        last = body["event_id"]
        assert await wait_until(lambda: converged([a, b], room_id), 60, interval=0.2), "B did not get A's events"
        # B down too: C must get B's messages from A (get_missing_events, then the state at the gap)
        await b.stop()
        await c.start()
        assert await wait_until(lambda: has_events(c, [topic, power_id, last]), 60, interval=0.3), (
            "C did not catch up from A", c.process.stderr()[-3000:])
        assert await current_state(c, room_id) == await current_state(a, room_id)
        # get_missing_events gave the last 20 of B's messages; the one before
        # them was fetched (an outlier) with the state at the gap; the rest
        # C has not got yet
        assert await in_dag(c, sent[GAP - 20:]) == 20
        rows = await c.db_fetch("SELECT outlier FROM events WHERE event_id = $1", sent[GAP - 21])
        assert [r["outlier"] for r in rows] == [True]
        assert await in_dag(c, sent[:GAP - 20]) == 0
        # C serves the state at the first event after the gap (its prev is an
        # outlier there) as A does
        path = f"/_matrix/federation/v1/state_ids/{quote(room_id)}?event_id={quote(sent[GAP - 20])}"
        answers = [
            await signed_federation_get(http, s.fed_url, path, origin=other.server_name,
                                        destination=s.server_name, key=other.signing_key())
            for s, other in ((a, c), (c, a))
        ]
        assert answers[0][0] == answers[1][0] == 200, answers
        assert sorted(answers[0][1]["pdu_ids"]) == sorted(answers[1][1]["pdu_ids"])
        await b.start()
        assert await wait_until(lambda: converged(three, room_id), 60, interval=0.3), "no convergence after the outage"
        for s in three:
            assert await rejected(s, room_id) == []
        carol = carol.on(c.client_url)
        assert (await get_state(carol, room_id, "m.room.topic"))["topic"] == "while C was away"
        bodies = [e["content"].get("body") for e in await carol.history(room_id) if e["type"] == "m.room.message"]
        assert sorted(bodies) == sorted([f"bob {i}" for i in range(GAP)] + ["the last one C missed"]), bodies

        # -- partition: A and B change the topic and power levels apart
        await b.stop()
        power = await get_state(alice, room_id, "m.room.power_levels")
        power["users"][bob.user_id] = 0
        a_power = await put_state(alice, room_id, "m.room.power_levels", power)
        a_topic = await put_state(alice, room_id, "m.room.topic", {"topic": "A side"})
        assert await wait_until(lambda: has_events(c, [a_power, a_topic]), 60, interval=0.2)
        await a.stop()
        await b.start()
        bob = bob.on(b.client_url)
        b_topic = await put_state(bob, room_id, "m.room.topic", {"topic": "B side"})
        power = await get_state(bob, room_id, "m.room.power_levels")  # B still has bob at 50
        assert power["users"][bob.user_id] == 50
        power["users"][carol.user_id] = 25
        b_power = await put_state(bob, room_id, "m.room.power_levels", power)
        b_sent = []
        for i in range(GAP):
            status, body = await bob.send(room_id, f"bob apart {i}")
            assert status == 200, body
            b_sent.append(body["event_id"])
        assert await wait_until(lambda: has_events(c, [b_topic, b_power, *b_sent]), 60, interval=0.2)
        # carol's message on C names both sides; B goes down before A is back,
        # so A gets it from C alone, on a gap longer than get_missing_events
        status, body = await carol.send(room_id, "carol saw both sides")
        assert status == 200, body
        bridge = body["event_id"]
        await b.stop()
        await a.start()
        assert await wait_until(lambda: has_events(a, [bridge]), 60, interval=0.3), (
            "A did not get C's message", a.process.stderr()[-3000:])
        assert await in_dag(a, b_sent[:GAP - 20]) == 0  # the gap A filled with the state from C
        await b.start()
        assert await wait_until(lambda: converged(three, room_id), 60, interval=0.3), "no convergence after healing"
        alice, bob = alice.on(a.client_url), bob.on(b.client_url)
        for s, user in ((a, alice), (b, bob), (c, carol)):
            state = await current_state(s, room_id)
            assert state[("m.room.topic", "")] == a_topic, s.server_name
            assert state[("m.room.power_levels", "")] == a_power, s.server_name
            assert (await get_state(user, room_id, "m.room.topic"))["topic"] == "A side"
            assert await rejected(s, room_id) == []
            assert await in_dag(s, [*b_sent, bridge]) == GAP + 1, s.server_name
