"""What the tests of Synapse users in rooms of our server share: the
``peers`` fixture (one Synapse and one server of ours per test module:
Synapse is slow to start) and helpers reading both sides."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote

import pytest

from ..federation.peers import FederatingServer, new_database
from ..integration.processes import User
from ..pg import PostgresForTests
from .synapse_peer import SynapsePeer, synapse_python


@pytest.fixture(scope="module", name="peers")
async def resident_peers(
    pg: PostgresForTests, pg_template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[FederatingServer, SynapsePeer]]:
    synapse_python()  # installs on first use, or skips with the reason
    tmp = tmp_path_factory.mktemp("resident")
    # a name from the counter every federation test's database is named
    # from: with one name per worker process, the second of the two modules
    # using this fixture to run on a worker dropped and made again the
    # database the first one's server had just used
    url = await new_database(pg, pg_template, "res")
    ours = FederatingServer(url, tmp / "ours", COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS="300",
                           COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS="3000")
    syn = SynapsePeer(tmp / "synapse")
    try:
        await asyncio.gather(ours.start(), syn.start())
        yield ours, syn
    finally:
        await ours.stop()
        await syn.stop()


async def room_joined_from_synapse(alice: User, bob: User, ours: FederatingServer, version: str) -> str:
    """A public room of ``alice``'s (on our server) in room version
    ``version`` that ``bob`` (a Synapse user) has joined over federation."""
    status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
    assert status == 200, room
    room_id: str = room["room_id"]
    status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(ours.server_name)}", {})
    assert status == 200, body
    return room_id


async def sync_until(user: User, pred: Any, what: str, timeout_s: float = 60) -> dict[str, Any]:
    """Synapse /sync (long-polling) until ``pred(body)``, bounded."""
    since: str | None = None
    deadline = time.monotonic() + timeout_s
    for _ in range(200):
        q = "sync?timeout=2000" + (f"&since={since}" if since else "")
        status, body = await user.call("GET", q, timeout=30)
        assert status == 200, body
        if pred(body):
            return dict(body)
        since = body.get("next_batch")
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"timed out waiting for {what}")


def timeline_bodies(body: dict[str, Any], room_id: str) -> list[str]:
    room = body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e.get("content", {}).get("body") for e in room.get("timeline", {}).get("events", [])]


async def room_state(user: User, room_id: str) -> set[tuple[str, str, str]]:
    status, body = await user.call("GET", f"rooms/{quote(room_id)}/state")
    assert status == 200, body
    return {(e["type"], e["state_key"], e["event_id"]) for e in body}


async def wait_destination_past(ours: FederatingServer, destination: str, pos: int) -> None:
    for _ in range(300):
        rows = await ours.db_fetch(
            "SELECT stream_pos FROM federation_destinations WHERE destination = $1", destination
        )
        if rows and rows[0]["stream_pos"] >= pos:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the sender did not pass {pos} for {destination}")


async def each_once_on_synapse(
    bob: User, room_id: str, wanted: list[str], tries: int, context: Callable[[], str]
) -> None:
    """Bob's /messages on Synapse (polled, at most ``tries`` times) ends up
    with every one of ``wanted`` exactly once."""
    bodies: list[str] = []
    for _ in range(tries):
        status, body = await bob.call("GET", f"rooms/{quote(room_id)}/messages?dir=b&limit=100")
        assert status == 200, body
        bodies = [e.get("content", {}).get("body") for e in body.get("chunk", [])]
        if all(w in bodies for w in wanted):
            break
        await asyncio.sleep(0.2)
    for w in wanted:
        assert bodies.count(w) == 1, (w, bodies, context())
