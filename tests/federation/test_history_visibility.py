"""What another server may read of our rooms follows the rooms' history
visibility at each event (spec: history visibility; Synapse's
filter_events_for_server): a server whose user joined a ``joined`` room
later gets the earlier messages only in their redacted form, through
``/backfill``, ``/get_missing_events`` and ``/event`` alike; with
``invited``, what was sent while its user was invited is readable."""

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


@pytest.fixture
async def pair(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[list[FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "hv", 2) as servers:
        yield servers

async def _send(user: User, room_id: str, body: str) -> str:
    status, answer = await user.send(room_id, body)
    assert status == 200, answer
    return str(answer["event_id"])

async def _room_with_late_joiner(alice: User, bob: User, b: FederatingServer, visibility: str) -> tuple[str, dict[str, str]]:
    status, room = await alice.call("POST", "createRoom", {
        "preset": "private_chat",
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                           "content": {"history_visibility": visibility}}],
    })
    assert status == 200, room
    room_id = room["room_id"]
    ids = {"before invite": await _send(alice, room_id, "before invite")}
    status, body = await alice.call("POST", f"rooms/{quote(room_id)}/invite", {"user_id": bob.user_id})
    assert status == 200, body
    ids["while invited"] = await _send(alice, room_id, "while invited")

    async def invited() -> bool:
        return room_id in (await bob.sync()).get("rooms", {}).get("invite", {})

    assert await wait_until(invited, 30, interval=0.2), b.process.stderr()[-2000:]
    status, body = await bob.call("POST", f"join/{quote(room_id)}", {})
    assert status == 200, body
    ids["after join"] = await _send(alice, room_id, "after join")
    return room_id, ids

async def test_servers_read_only_what_their_users_could_see(pair: list[FederatingServer]) -> None:
    a, b = pair
    key = b.signing_key()
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        bob = await User(http, b.client_url).register("bob")

        async def as_b(path: str) -> Any:
            status, body = await signed_federation_get(
                http, a.fed_url, path, origin=b.server_name, destination=a.server_name, key=key
            )
            assert status == 200, body
            return body

        async def bodies_seen_by_b(room_id: str, latest: str) -> dict[str, Any]:
            body = await as_b(f"/_matrix/federation/v1/backfill/{quote(room_id)}?v={quote(latest)}&limit=50")
            return {p["content"].get("body", "<redacted>"): p for p in body["pdus"] if p["type"] == "m.room.message"}

        for visibility, readable in (("joined", {"after join"}), ("invited", {"while invited", "after join"})):
            room_id, ids = await _room_with_late_joiner(alice, bob, b, visibility)
            seen = await bodies_seen_by_b(room_id, ids["after join"])
            assert set(seen) - {"<redacted>"} == readable, (visibility, seen)
            hidden = set(ids) - readable
            # the hidden ones are there, redacted (the DAG stays whole), signatures kept
            redacted = [p for p in (await as_b(f"/_matrix/federation/v1/backfill/{quote(room_id)}"
                                               f"?v={quote(ids['after join'])}&limit=50"))["pdus"]
                        if p["type"] == "m.room.message" and p["content"] == {}]
            assert len(redacted) == len(hidden) and all(p["signatures"] for p in redacted), (visibility, redacted)
            for label in hidden:
                single = await as_b(f"/_matrix/federation/v1/event/{quote(ids[label])}")
                assert single["pdus"][0]["content"] == {}, (visibility, label, single)
            for label in readable:
                single = await as_b(f"/_matrix/federation/v1/event/{quote(ids[label])}")
                assert single["pdus"][0]["content"]["body"] == label

        # the room the other server has no member in stays closed to it
        status, room = await alice.call("POST", "createRoom", {"preset": "private_chat"})
        lone = await _send(alice, room["room_id"], "alone")
        status, body = await signed_federation_get(
            http, a.fed_url, f"/_matrix/federation/v1/event/{quote(lone)}",
            origin=b.server_name, destination=a.server_name, key=key,
        )
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
