"""Synapse as a real federation peer: profile and room alias queries and
space hierarchies (/hierarchy) both ways. Our signed requests are accepted
by Synapse (which fetches our key from our key server), and Synapse's
signed requests are verified by us (which fetch Synapse's key from it)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from ..federation.hierarchy_checks import check_remote_sub_space
from ..federation.peers import FederatingServer
from ..integration.processes import User
from ..pg import PostgresForTests
from .synapse_peer import SynapsePeer, synapse_python

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

_n = itertools.count()


async def register_on_synapse(http: aiohttp.ClientSession, peer: SynapsePeer, name: str) -> User:
    user = User(http, peer.client_url)
    body: dict[str, Any] = {"username": name, "password": "a password", "auth": {"type": "m.login.dummy"}}
    status, answer = await user.call("POST", "register", body)
    if status == 401 and "session" in answer:  # user-interactive auth: once more with the session
        body["auth"]["session"] = answer["session"]
        status, answer = await user.call("POST", "register", body)
    assert status == 200, answer
    user.token, user.user_id = answer["access_token"], answer["user_id"]
    return user


@pytest.fixture
async def peers(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[tuple[FederatingServer, SynapsePeer]]:
    synapse_python()  # installs on first use, or skips with the reason
    url = await pg.create_database(f"cch_syn{os.getpid()}_{next(_n)}", template=pg_template)
    ours = FederatingServer(url, tmp_path / "ours")
    syn = SynapsePeer(tmp_path / "synapse")
    try:
        await ours.start()
        await syn.start()
        yield ours, syn
    finally:
        await ours.stop()
        await syn.stop()


async def test_profiles_and_aliases_both_ways(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice")
        bob = await register_on_synapse(http, syn, "bob")
        assert bob.user_id == f"@bob:{syn.server_name}"
        assert (await alice.call("PUT", f"profile/{quote(alice.user_id)}/displayname",
                                 {"displayname": "Alice of coffeechat"}))[0] == 200
        assert (await bob.call("PUT", f"profile/{quote(bob.user_id)}/displayname",
                               {"displayname": "Bob of Synapse"}))[0] == 200

        # ours -> Synapse: our signed request, Synapse fetches our key from us
        status, body = await alice.call("GET", f"profile/{quote(bob.user_id)}")
        assert status == 200, (body, syn.log_tail())
        assert body.get("displayname") == "Bob of Synapse"
        status, body = await alice.call("GET", f"profile/{quote(bob.user_id)}/displayname")
        assert (status, body) == (200, {"displayname": "Bob of Synapse"})
        status, body = await alice.call("GET", f"profile/{quote('@nobody:' + syn.server_name)}")
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", body

        # Synapse -> ours: Synapse's signed request verified by us (we fetch its key)
        status, body = await bob.call("GET", f"profile/{quote(alice.user_id)}")
        assert status == 200, (body, syn.log_tail(), ours.process.stderr()[-3000:])
        assert body.get("displayname") == "Alice of coffeechat"
        rows = await ours.db_fetch("SELECT key_id FROM remote_server_keys WHERE server_name = $1", syn.server_name)
        assert [r["key_id"] for r in rows] == ["ed25519:a_syn"]
        status, body = await bob.call("GET", f"profile/{quote('@nobody:' + ours.server_name)}")
        assert status == 404, body

        # room aliases across, both ways
        status, room = await bob.call("POST", "createRoom", {"room_alias_name": "synroom"})
        assert status == 200, room
        status, body = await alice.call("GET", f"directory/room/{quote('#synroom:' + syn.server_name)}")
        assert status == 200, body
        assert body["room_id"] == room["room_id"] and syn.server_name in body["servers"]
        status, body = await alice.call("GET", f"directory/room/{quote('#missing:' + syn.server_name)}")
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", body

        status, our_room = await alice.call("POST", "createRoom", {"room_alias_name": "ourroom"})
        assert status == 200, our_room
        status, body = await bob.call("GET", f"directory/room/{quote('#ourroom:' + ours.server_name)}")
        assert status == 200, (body, syn.log_tail())
        assert body["room_id"] == our_room["room_id"] and ours.server_name in body["servers"]

        # spaces both ways: a space of each side lists a sub-space of the
        # other; /hierarchy asks the other side's federation /hierarchy
        # (the invite-only child hidden from us; shown to bob, whom alice invited)
        await check_remote_sub_space(alice, ours.server_name, bob, syn.server_name,
                                     lambda: ours.process.stderr()[-3000:])
        await check_remote_sub_space(bob, syn.server_name, alice, ours.server_name, syn.log_tail, invited=True)
