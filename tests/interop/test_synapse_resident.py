"""Synapse users in rooms of our server: they join through Synapse (make_join
/ send_join to us), get our users' messages through our outbound sender, see
the same room state, and stop getting events once they have left;
restricted rooms both ways (we authorise Synapse's join, Synapse ours). One
Synapse and one server of ours for the module (Synapse is slow to start)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from coffeechat_home.protocol.builder import build_event
from coffeechat_home.protocol.request_auth import sign_request
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.signing import signing_key_from_seed

from ..federation.peers import FederatingServer, signed_federation_get
from ..integration.processes import User
from .resident_helpers import (  # noqa: F401  (resident_peers: the ``peers`` fixture)
    each_once_on_synapse, resident_peers, room_state, sync_until, timeline_bodies, wait_destination_past,
)
from .synapse_peer import SynapsePeer
from .test_synapse_federation import register_on_synapse

pytestmark = [pytest.mark.synapse, pytest.mark.slow]


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_synapse_user_joins_our_room_talks_and_leaves(
    peers: tuple[FederatingServer, SynapsePeer], version: str
) -> None:
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register(f"alice{version}")
        bob = await register_on_synapse(http, syn, f"bob{version}")
        status, room = await alice.call(
            "POST", "createRoom", {"preset": "public_chat", "room_version": version, "name": f"v{version}"}
        )
        assert status == 200, room
        room_id = room["room_id"]
        assert (await alice.call("PUT", f"rooms/{quote(room_id)}/send/m.room.message/t0",
                                 {"msgtype": "m.text", "body": "before the join"}))[0] == 200

        # Synapse joins through us
        status, body = await bob.call(
            "POST", f"join/{quote(room_id)}?server_name={quote(ours.server_name)}", {}
        )
        assert status == 200, (body, syn.log_tail(), ours.process.stderr()[-3000:])
        rows = await ours.db_fetch(
            "SELECT membership FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2",
            room_id, bob.user_id,
        )
        assert [r["membership"] for r in rows] == ["join"]

        # our messages reach Synapse's /sync, each once
        for i in range(3):
            assert (await alice.call("PUT", f"rooms/{quote(room_id)}/send/m.room.message/t{i + 1}",
                                     {"msgtype": "m.text", "body": f"hello {i}"}))[0] == 200
        seen: list[str] = []

        def got_all(b: dict[str, Any]) -> bool:
            seen.extend(x for x in timeline_bodies(b, room_id) if x)
            return "hello 2" in seen

        await sync_until(bob, got_all, "our messages on Synapse")
        assert [s for s in seen if s.startswith("hello")] == ["hello 0", "hello 1", "hello 2"], seen

        # a state change of ours reaches Synapse; both servers report the same state
        assert (await alice.call("PUT", f"rooms/{quote(room_id)}/state/m.room.topic",
                                 {"topic": "shared"}))[0] == 200
        for _ in range(100):
            if await room_state(bob, room_id) == await room_state(alice, room_id):
                break
            await asyncio.sleep(0.2)
        ours_state, syn_state = await room_state(alice, room_id), await room_state(bob, room_id)
        assert ours_state == syn_state
        assert ("m.room.member", bob.user_id) in {(t, k) for t, k, _ in ours_state}
        assert any(t == "m.room.topic" for t, _, _ in syn_state)

        # a kick of the Synapse user reaches Synapse (the membership rule);
        # afterwards our events no longer go there
        status, body = await alice.call("POST", f"rooms/{quote(room_id)}/kick",
                                        {"user_id": bob.user_id, "reason": "bye"})
        assert status == 200, body
        await sync_until(bob, lambda b: room_id in b.get("rooms", {}).get("leave", {}), "the kick on Synapse")
        status, sent = await alice.call("PUT", f"rooms/{quote(room_id)}/send/m.room.message/t9",
                                        {"msgtype": "m.text", "body": "after the kick"})
        assert status == 200
        rows = await ours.db_fetch("SELECT stream_pos FROM events WHERE event_id = $1", sent["event_id"])
        await wait_destination_past(ours, syn.server_name, rows[0]["stream_pos"])
        status, body = await bob.call("GET", f"rooms/{quote(room_id)}/event/{quote(sent['event_id'])}")
        assert status in (403, 404), body

        if version == "12":
            # bob comes back and is banned: Synapse sees the ban, and our
            # make_join refuses Synapse a new join for him
            status, body = await bob.call(
                "POST", f"join/{quote(room_id)}?server_name={quote(ours.server_name)}", {}
            )
            assert status == 200, body
            status, body = await alice.call("POST", f"rooms/{quote(room_id)}/ban",
                                            {"user_id": bob.user_id, "reason": "enough"})
            assert status == 200, body
            await sync_until(bob, lambda b: room_id in b.get("rooms", {}).get("leave", {}), "the ban on Synapse")
            key_version, seed = syn.signing_key_seed()
            status, body = await signed_federation_get(
                http, ours.fed_url,
                f"/_matrix/federation/v1/make_join/{quote(room_id)}/{quote(bob.user_id)}?ver=12",
                origin=syn.server_name, destination=ours.server_name, key=signing_key_from_seed(seed, key_version),
            )
            assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body

async def test_synapse_user_invited_from_our_side_joins(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice_inv")
        carol = await register_on_synapse(http, syn, "carol_inv")
        status, room = await alice.call("POST", "createRoom", {"preset": "private_chat", "room_version": "11",
                                                               "name": "invite only"})
        assert status == 200, room
        room_id = room["room_id"]
        status, body = await alice.call("POST", f"rooms/{quote(room_id)}/invite", {"user_id": carol.user_id})
        assert status == 200, (body, ours.process.stderr()[-3000:])
        rows = await ours.db_fetch("SELECT pdu FROM events WHERE room_id = $1 AND type = 'm.room.member' "
                                   "AND state_key = $2", room_id, carol.user_id)
        assert len(rows) == 1 and syn.server_name in json.loads(rows[0]["pdu"])["signatures"]
        body = await sync_until(carol, lambda b: room_id in b.get("rooms", {}).get("invite", {}), "the invite")
        invite_state = body["rooms"]["invite"][room_id]["invite_state"]["events"]
        assert any(e["type"] == "m.room.name" and e["content"]["name"] == "invite only" for e in invite_state)
        status, body = await carol.call("POST", f"join/{quote(room_id)}", {})
        assert status == 200, (body, syn.log_tail())
        assert (await alice.send(room_id, "welcome carol"))[0] == 200
        await sync_until(carol, lambda b: "welcome carol" in timeline_bodies(b, room_id), "the message after the join")
        # createRoom's invite list with a user of Synapse
        erin = await register_on_synapse(http, syn, "erin_inv")
        status, room2 = await alice.call("POST", "createRoom", {"preset": "private_chat", "room_version": "12",
                                                                "invite": [erin.user_id]})
        assert status == 200, room2
        await sync_until(erin, lambda b: room2["room_id"] in b.get("rooms", {}).get("invite", {}), "createRoom's invite")
        # a server that cannot be reached: no invite is persisted
        status, body = await alice.call("POST", f"rooms/{quote(room_id)}/invite", {"user_id": "@dan:127.0.0.1:1"})
        assert (status, body.get("errcode")) == (502, "M_UNKNOWN"), body
        rows = await ours.db_fetch("SELECT 1 FROM events WHERE room_id = $1 AND state_key = '@dan:127.0.0.1:1'",
                                   room_id)
        assert rows == []

        # a Synapse user knocks on our room (make_knock / send_knock served
        # here): Synapse shows it under knock with our stripped state; alice
        # sees the knock and invites, the user joins
        frank = await register_on_synapse(http, syn, "frank_knock")
        status, room3 = await alice.call("POST", "createRoom", {
            "preset": "private_chat", "room_version": "11", "name": "knock on us",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]})
        assert status == 200, room3
        knock_room = room3["room_id"]
        status, body = await frank.call("POST", f"knock/{quote(knock_room)}?server_name={quote(ours.server_name)}",
                                        {"reason": "knock knock"})
        assert status == 200, (body, syn.log_tail(), ours.process.stderr()[-3000:])
        body = await sync_until(frank, lambda b: knock_room in b.get("rooms", {}).get("knock", {}), "the knock")
        knock_state = body["rooms"]["knock"][knock_room]["knock_state"]["events"]
        assert any(e["type"] == "m.room.name" and e["content"]["name"] == "knock on us" for e in knock_state)
        status, member = await alice.call("GET", f"rooms/{quote(knock_room)}/state/m.room.member/{quote(frank.user_id)}")
        assert (status, member.get("membership"), member.get("reason")) == (200, "knock", "knock knock"), member
        status, body = await alice.call("POST", f"rooms/{quote(knock_room)}/invite", {"user_id": frank.user_id})
        assert status == 200, (body, ours.process.stderr()[-3000:])
        await sync_until(frank, lambda b: knock_room in b.get("rooms", {}).get("invite", {}), "the invite after knocking")
        status, body = await frank.call("POST", f"join/{quote(knock_room)}", {})
        assert status == 200, (body, syn.log_tail())
        status, members = await alice.call("GET", f"rooms/{quote(knock_room)}/joined_members")
        assert status == 200 and set(members["joined"]) == {alice.user_id, frank.user_id}, members


async def test_restricted_rooms_both_ways_with_synapse(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    """Restricted rooms (v10 knock_restricted, v11 restricted) both ways: a
    Synapse user in our room A joins our room R restricted to A (we name our
    user in join_authorised_via_users_server and countersign; Synapse takes
    the signed event); our user in a Synapse room joins a Synapse room
    restricted to it (Synapse authorises and countersigns, we keep its
    answer). A user in no allowed room is refused both ways."""
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice_restr")
        dan = await User(http, ours.client_url).register("dan_restr")
        bob = await register_on_synapse(http, syn, "bob_restr")
        carol = await register_on_synapse(http, syn, "carol_restr")

        async def restricted_pair(owner: User, version: str, rule: str) -> tuple[str, str]:
            status, space = await owner.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
            assert status == 200, space
            status, room = await owner.call("POST", "createRoom", {
                "preset": "public_chat", "room_version": version,
                "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                    "join_rule": rule, "allow": [{"type": "m.room_membership", "room_id": space["room_id"]}]}}],
            })
            assert status == 200, room
            return space["room_id"], room["room_id"]

        async def join(user: User, room_id: str, server: str) -> tuple[int, Any]:
            return await user.call("POST", f"join/{quote(room_id)}?server_name={quote(server)}", {})

        async def member_pdu(room_id: str, user_id: str) -> dict[str, Any]:
            rows = await ours.db_fetch(
                "SELECT e.pdu FROM current_state s JOIN events e ON e.event_id = s.event_id "
                "WHERE s.room_id = $1 AND s.type = 'm.room.member' AND s.state_key = $2", room_id, user_id)
            assert len(rows) == 1, rows
            return dict(json.loads(rows[0]["pdu"]))

        both = {ours.server_name, syn.server_name}
        for version, rule in (("10", "knock_restricted"), ("11", "restricted")):
            # Synapse joins our restricted room: we authorise
            space_id, room_id = await restricted_pair(alice, version, rule)
            assert (await join(bob, space_id, ours.server_name))[0] == 200
            status, body = await join(bob, room_id, ours.server_name)
            assert status == 200, (body, syn.log_tail(), ours.process.stderr()[-3000:])
            pdu = await member_pdu(room_id, bob.user_id)
            assert pdu["content"]["membership"] == "join", pdu
            assert pdu["content"]["join_authorised_via_users_server"] == alice.user_id
            assert set(pdu["signatures"]) == both, pdu
            status, members = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
            assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id}, members
            status, body = await join(carol, room_id, ours.server_name)  # carol is not in A
            assert status == 403, body
            assert (await alice.call("GET", f"rooms/{quote(room_id)}/state/m.room.member/{quote(carol.user_id)}")
                    )[0] == 404

            # our user joins a restricted room of Synapse: Synapse authorises
            space_id, room_id = await restricted_pair(bob, version, rule)
            assert (await join(alice, space_id, syn.server_name))[0] == 200
            status, body = await join(alice, room_id, syn.server_name)
            assert status == 200, (body, ours.process.stderr()[-3000:], syn.log_tail())
            pdu = await member_pdu(room_id, alice.user_id)
            assert pdu["content"]["join_authorised_via_users_server"] == bob.user_id, pdu
            assert set(pdu["signatures"]) == both, pdu
            status, members = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
            assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id}, members
            status, body = await join(dan, room_id, syn.server_name)  # dan is not in Synapse's A
            assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body


async def signed_federation_put(
    http: aiohttp.ClientSession, ours: FederatingServer, path: str, body: Any, *, origin: str, key: Any
) -> tuple[int, Any]:
    header = sign_request("PUT", path, origin, ours.server_name, key, body)
    async with http.put(URL(ours.fed_url + path, encoded=True), json=body, headers={"Authorization": header},
                        ssl=False, timeout=aiohttp.ClientTimeout(total=60)) as r:
        return r.status, await r.json(content_type=None)


async def probe_send_join(
    http: aiohttp.ClientSession, ours: FederatingServer, syn: SynapsePeer, room_id: str, user_id: str,
    query: str,
) -> dict[str, Any]:
    """A join of ``user_id`` (a name on Synapse's server, unknown to Synapse)
    signed with Synapse's key: make_join, then send_join v2 with ``query``;
    the answer."""
    key_version, seed = syn.signing_key_seed()
    key = signing_key_from_seed(seed, key_version)
    r, u = quote(room_id, safe=""), quote(user_id, safe="")
    status, made = await signed_federation_get(
        http, ours.fed_url, f"/_matrix/federation/v1/make_join/{r}/{u}?ver=12",
        origin=syn.server_name, destination=ours.server_name, key=key,
    )
    assert status == 200, made
    tpl = made["event"]
    join = build_event(
        get_room_version(made["room_version"]),
        template={"type": "m.room.member", "room_id": room_id, "sender": user_id, "state_key": user_id,
                  "content": {"membership": "join"}},
        prev_events=tpl["prev_events"], auth_events=tpl["auth_events"], depth=tpl["depth"],
        origin_server_ts=int(time.time() * 1000), server_name=syn.server_name, signing_key=key,
    )
    status, answer = await signed_federation_put(
        http, ours, f"/_matrix/federation/v2/send_join/{r}/{quote(join.event_id, safe='')}{query}",
        dict(join.pdu), origin=syn.server_name, key=key,
    )
    assert status == 200, answer
    return dict(answer)


async def test_synapse_joins_our_room_with_members_omitted(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    """send_join v2 with ``omit_members=true`` (what Synapse asks for): the
    state without membership events but the joiner's own and the heroes'
    (the room has no name), an auth chain without the events already in the
    state, ``members_omitted`` and ``servers_in_room``; without the
    parameter, every member and no state event repeated in the auth chain
    unless another one's chain reaches it. Then a real Synapse user joins
    another room of 20 members: Synapse takes the partial state, completes
    it from our /state_ids and /state (its partial-state flag is cleared),
    lists every member, sees the history, and both sides talk."""
    ours, syn = peers
    n = 20
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice_omit")
        others = await asyncio.gather(*(User(http, ours.client_url).register(f"omit{i:02d}") for i in range(n - 1)))
        rooms = []
        for _ in range(2):  # the probes' room and the one Synapse joins
            status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": "12"})
            assert status == 200, room
            rooms.append(room["room_id"])
            for u in others:
                status, body = await u.call("POST", f"join/{quote(room['room_id'])}", {})
                assert status == 200, body
        probe_room, room_id = rooms
        members = {alice.user_id, *(u.user_id for u in others)}

        # the answer itself, to joins signed with Synapse's key (users Synapse
        # never made, in a room Synapse is not in)
        omitted = await probe_send_join(http, ours, syn, probe_room, f"@probe1:{syn.server_name}",
                                        "?omit_members=true")
        assert omitted["members_omitted"] is True
        assert omitted["servers_in_room"] == sorted({ours.server_name, syn.server_name})
        state_members = {e["state_key"] for e in omitted["state"] if e["type"] == "m.room.member"}
        heroes = sorted(m for m in members)[:5]  # joined members by code point
        assert state_members == set(heroes), (state_members, heroes)
        assert {e["type"] for e in omitted["state"]} >= {"m.room.create", "m.room.power_levels",
                                                         "m.room.join_rules", "m.room.history_visibility"}
        # (PDUs told apart by their content hash: v12 PDUs carry no event id)
        state_hashes = {e["hashes"]["sha256"] for e in omitted["state"]}
        chain_hashes = [e["hashes"]["sha256"] for e in omitted["auth_chain"]]
        assert not state_hashes & set(chain_hashes)
        assert len(chain_hashes) == len(set(chain_hashes))

        full = await probe_send_join(http, ours, syn, probe_room, f"@probe2:{syn.server_name}", "")
        assert full["members_omitted"] is False
        full_members = {e["state_key"] for e in full["state"] if e["type"] == "m.room.member"}
        assert full_members == members | {f"@probe1:{syn.server_name}"}
        full_chain = [e["hashes"]["sha256"] for e in full["auth_chain"]]
        assert len(full_chain) == len(set(full_chain))
        # members' joins are in no other event's auth chain here (public room)
        assert len(full["auth_chain"]) < 10, [e["type"] for e in full["auth_chain"]]
        assert len(full["state"]) == len(omitted["state"]) - len(state_members) + len(full_members)

        # a real Synapse join of the other room, partial state first
        for i in range(3):
            status, body = await alice.send(room_id, f"history {i}")
            assert status == 200, body
        bob = await register_on_synapse(http, syn, "bob_omit")
        status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(ours.server_name)}", {})
        assert status == 200, (body, syn.log_tail())
        cleared = f"Clearing partial-state flag for {room_id}"
        synapse_log = syn.workdir / "homeserver.log"
        for _ in range(300):
            if cleared in synapse_log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"Synapse did not finish its partial-state join: {syn.log_tail()}")
        joined: dict[str, Any] = {}
        for _ in range(100):
            status, body = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
            assert status == 200, body
            joined = body.get("joined", {})
            if len(joined) == n + 1:
                break
            await asyncio.sleep(0.2)
        assert set(joined) == members | {bob.user_id}
        await each_once_on_synapse(bob, room_id, [f"history {i}" for i in range(3)], 100, syn.log_tail)

        # both ways
        status, body = await bob.send(room_id, "from synapse")
        assert status == 200, body
        status, body = await alice.send(room_id, "from ours")
        assert status == 200, body
        await each_once_on_synapse(bob, room_id, ["from ours", "from synapse"], 100, syn.log_tail)
        for _ in range(100):
            status, body = await alice.call("GET", f"rooms/{quote(room_id)}/messages?dir=b&limit=20")
            assert status == 200, body
            if "from synapse" in [e.get("content", {}).get("body") for e in body.get("chunk", [])]:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("bob's message did not reach our server")
