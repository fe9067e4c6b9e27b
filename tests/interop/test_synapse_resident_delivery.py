"""Our server's federation side toward Synapse users in our rooms: the
routes it serves (refused while Synapse has no member in the room,
answered once it has one) and its sender, whose events reach Synapse
exactly once through a kill -9 of our server, a Synapse outage and the
takeover of a destination by a second instance. One Synapse and one
server of ours for the module (Synapse is slow to start)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from coffeechat_home.protocol.signing import signing_key_from_seed

from ..federation.peers import FederatingServer, signed_federation_get
from ..integration.processes import User
from .resident_helpers import (  # noqa: F401  (resident_peers: the ``peers`` fixture)
    each_once_on_synapse, resident_peers, room_joined_from_synapse, room_state, sync_until, timeline_bodies,
)
from .synapse_peer import SynapsePeer
from .test_synapse_federation import register_on_synapse

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


async def test_serving_routes_refuse_and_answer(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    """Reads signed with Synapse's own key: refused while Synapse has no
    member in the room, answered once it has one; bad ids and unknown
    events get Matrix errors."""
    ours, syn = peers
    version, seed = syn.signing_key_seed()
    key = signing_key_from_seed(seed, version)

    async def get(path: str) -> tuple[int, Any]:
        return await signed_federation_get(
            http, ours.fed_url, path, origin=syn.server_name, destination=ours.server_name, key=key
        )

    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice_reads")
        bob = await register_on_synapse(http, syn, "bob_reads")
        status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": "11"})
        assert status == 200, room
        room_id = room["room_id"]
        status, sent = await alice.send(room_id, "first")
        assert status == 200, sent
        eid = sent["event_id"]
        r = quote(room_id)

        for path in (f"/_matrix/federation/v1/event/{quote(eid)}",
                     f"/_matrix/federation/v1/state_ids/{r}?event_id={quote(eid)}",
                     f"/_matrix/federation/v1/state/{r}?event_id={quote(eid)}",
                     f"/_matrix/federation/v1/event_auth/{r}/{quote(eid)}",
                     f"/_matrix/federation/v1/backfill/{r}?v={quote(eid)}&limit=5"):
            status, body = await get(path)
            assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), (path, body)
        status, body = await get(f"/_matrix/federation/v1/event/{quote('$' + 'A' * 43)}")
        assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body
        status, body = await get("/_matrix/federation/v1/event/not-an-id")
        assert (status, body.get("errcode")) == (400, "M_INVALID_PARAM"), body
        status, body = await get(f"/_matrix/federation/v1/state_ids/{r}")
        assert (status, body.get("errcode")) == (400, "M_MISSING_PARAM"), body
        uid = quote(f"@someone:{syn.server_name}")
        status, body = await get(f"/_matrix/federation/v1/make_join/{r}/{uid}?ver=10")
        assert (status, body.get("errcode")) == (400, "M_INCOMPATIBLE_ROOM_VERSION"), body
        assert body.get("room_version") == "11"
        status, body = await get(f"/_matrix/federation/v1/make_join/{r}/{quote('@x:' + ours.server_name)}?ver=11")
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
        status, private = await alice.call("POST", "createRoom", {"preset": "private_chat", "room_version": "11"})
        assert status == 200
        status, body = await get(f"/_matrix/federation/v1/make_join/{quote(private['room_id'])}/{uid}?ver=11")
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
        status, body = await get(f"/_matrix/federation/v1/make_join/{quote('!nope:' + ours.server_name)}/{uid}?ver=11")
        assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body

        # once a Synapse user is in the room, the same reads are answered
        status, body = await bob.call("POST", f"join/{r}?server_name={quote(ours.server_name)}", {})
        assert status == 200, body
        status, sent2 = await alice.send(room_id, "second")
        assert status == 200
        status, body = await get(f"/_matrix/federation/v1/event/{quote(eid)}")
        assert status == 200, body
        assert body["pdus"][0]["content"]["body"] == "first"
        status, ids = await get(f"/_matrix/federation/v1/state_ids/{r}?event_id={quote(sent2['event_id'])}")
        assert status == 200, ids
        ours_state = await room_state(alice, room_id)
        assert set(ids["pdu_ids"]) == {e for _, _, e in ours_state}
        assert set(ids["auth_chain_ids"]) <= set(ids["pdu_ids"])
        status, body = await get(f"/_matrix/federation/v1/backfill/{r}?v={quote(sent2['event_id'])}&limit=4")
        assert status == 200, body
        depths = [p["depth"] for p in body["pdus"]]
        assert len(depths) == 4 and depths == sorted(depths, reverse=True), depths
        assert body["pdus"][0]["content"].get("body") == "second"


async def test_sender_survives_kill9_and_a_peer_outage(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    """Synapse is down while our user sends; our server is killed -9 right
    after the sends commit; after both come back every acknowledged message
    reaches Synapse exactly once (the backlog, with a short backoff)."""
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice_crash")
        bob = await register_on_synapse(http, syn, "bob_crash")
        room_id = await room_joined_from_synapse(alice, bob, ours, "12")
        assert (await alice.send(room_id, "warm-up"))[0] == 200
        await sync_until(bob, lambda b: "warm-up" in timeline_bodies(b, room_id), "the warm-up message")

        await syn.stop()
        for i in range(5):
            assert (await alice.send(room_id, f"while down {i}"))[0] == 200
        # the sender tried and failed at least once (the backoff is stored)
        await until_send_failed(ours, syn)
        await ours.process.kill9()
        await ours.process.start()
        alice = alice.on(ours.client_url)
        for i in range(2):  # and two more after the restart
            assert (await alice.send(room_id, f"after restart {i}"))[0] == 200
        await syn.resume()

        wanted = [f"while down {i}" for i in range(5)] + [f"after restart {i}" for i in range(2)]
        await each_once_on_synapse(bob, room_id, wanted, 150, syn.log_tail)


async def test_two_instances_one_destination_survivor_takes_over(
    peers: tuple[FederatingServer, SynapsePeer], tmp_path: Path
) -> None:
    """Two instances of our server on one database: both write to the room,
    each message reaches Synapse once; the instance that was sending is
    killed -9 while Synapse is down, and the survivor delivers the backlog."""
    ours, syn = peers
    second = FederatingServer(ours.database_url, tmp_path / "second")
    second.env.update({
        "COFFEECHAT_SERVER_NAME": ours.server_name,
        "COFFEECHAT_SIGNING_KEY_PATH": str(ours.data_dir / "signing.key"),
        "COFFEECHAT_INSTANCE_NAME": "second",
        "COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "300",
        "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "3000",
    })
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice_two")
        bob = await register_on_synapse(http, syn, "bob_two")
        room_id = await room_joined_from_synapse(alice, bob, ours, "10")
        await second.start()
        try:
            alice_b = alice.on(second.client_url)
            for i in range(4):
                assert (await (alice if i % 2 else alice_b).send(room_id, f"both {i}"))[0] == 200

            await syn.stop()
            for i in range(3):
                assert (await alice.send(room_id, f"down {i}"))[0] == 200
            await until_send_failed(ours, syn)
            await ours.process.kill9()
            assert (await alice_b.send(room_id, "survivor"))[0] == 200
            await syn.resume()
            wanted = [f"both {i}" for i in range(4)] + [f"down {i}" for i in range(3)] + ["survivor"]
            await each_once_on_synapse(bob, room_id, wanted, 200, lambda: second.process.stderr()[-3000:])
            holders = await second.db_fetch(
                "SELECT instance_id FROM work_leases WHERE name = $1", f"fed-dest:{syn.server_name}"
            )
            assert all(not h["instance_id"].startswith("main") for h in holders), holders
        finally:
            await second.stop()
            if ours.process.proc is not None and ours.process.proc.returncode is not None:
                await ours.process.start()

async def until_send_failed(ours: FederatingServer, syn: SynapsePeer) -> None:
    """Wait (bounded) until the sender has tried ``syn`` and failed at least
    once: its stored backoff counts a retry."""
    rows: list[Any] = []
    for _ in range(100):
        rows = await ours.db_fetch(
            "SELECT retry_count FROM federation_destinations WHERE destination = $1", syn.server_name
        )
        if rows and rows[0]["retry_count"] > 0:
            return
        await asyncio.sleep(0.1)
    assert rows and rows[0]["retry_count"] > 0
