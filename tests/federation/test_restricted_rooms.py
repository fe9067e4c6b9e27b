"""Restricted rooms across coffeechat-home servers (join rules
``restricted`` and ``knock_restricted``): a space-like room A and a room R
restricted to A's members live on server a. Users of b and c who are in A
join R through a (a puts its user in ``join_authorised_via_users_server``
and countersigns the join in send_join; the joiner keeps the event a
answered, with both signatures); a user in no allowed room is refused with
M_FORBIDDEN, and a send_join b forges for them (naming a's user, or one
of c's) is refused. c, in R without any user who may invite, answers make_join
with M_UNABLE_TO_GRANT_JOIN (so the joining server goes on to a), and with
M_UNABLE_TO_AUTHORISE_JOIN once it has left A; a join relayed by a reaches
c, which checks a's signature on it; a user of c joining R, which c holds
but cannot authorise joins to, is let in through a."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from coffeechat_home.federation.client import FederationClient, RemoteError
from coffeechat_home.protocol.builder import build_event
from coffeechat_home.protocol.room_versions import get_room_version

from ..integration.processes import User, wait_until
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers, signed_federation_get

pytestmark = pytest.mark.federation


@pytest.fixture
async def three(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[list[FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "restr", 3) as servers:
        yield servers


async def join(user: User, room_id: str, *via: str) -> tuple[int, Any]:
    q = "&".join(f"server_name={quote(s)}" for s in via)
    return await user.call("POST", f"join/{quote(room_id)}?{q}", {})


async def member_event(user: User, room_id: str, target: str) -> dict[str, Any] | None:
    status, body = await user.call("GET", f"rooms/{quote(room_id)}/state")
    if status != 200:
        return None
    return next((e for e in body if e["type"] == "m.room.member" and e["state_key"] == target), None)


async def joined(user: User, room_id: str, target: str) -> bool:
    """Whether ``user``'s server has ``target`` joined to the room."""
    ev = await member_event(user, room_id, target)
    return ev is not None and ev["content"]["membership"] == "join"


async def signed_pdu(server: FederatingServer, event_id: str) -> dict[str, Any]:
    rows = await server.db_fetch("SELECT pdu FROM events WHERE event_id = $1", event_id)
    assert rows, f"{event_id} is not on {server.server_name}"
    return dict(orjson.loads(rows[0]["pdu"]))


async def test_restricted_rooms_across_three_servers(three: list[FederatingServer]) -> None:
    a, b, c = three
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice")
        bob, dave, frank, grace = [await User(http, b.client_url).register(n) for n in ("bob", "dave", "frank", "grace")]
        carol, heidi = [await User(http, c.client_url).register(n) for n in ("carol", "heidi")]
        b_key = b.signing_key()

        async def make_join_on_c(room_id: str, user: User) -> tuple[int, Any]:
            path = (f"/_matrix/federation/v1/make_join/{quote(room_id, safe='')}/{quote(user.user_id, safe='')}"
                    "?ver=10&ver=11")
            return await signed_federation_get(http, c.fed_url, path, origin=b.server_name,
                                               destination=c.server_name, key=b_key)

        async def forged_send_joins(room_id: str, version: str, allowed: User, refused: User) -> None:
            """b builds dave's join on a's template for frank (same auth
            events), naming alice: a refuses to countersign (dave is in no
            allowed room); naming a user of c: not a's to authorise."""
            r = quote(room_id, safe="")
            answer = await as_b.get_json(
                a.server_name, f"/_matrix/federation/v1/make_join/{r}/{quote(allowed.user_id, safe='')}?ver={version}")
            tpl = answer["event"]
            assert tpl["content"]["join_authorised_via_users_server"] == alice.user_id, tpl
            for via, status, errcode, says in ((alice.user_id, 403, "M_FORBIDDEN", "not in any of the rooms"),
                                               (carol.user_id, 400, "M_BAD_JSON", "not a user of this server")):
                forged = build_event(
                    get_room_version(version),
                    template={"type": "m.room.member", "room_id": room_id, "sender": refused.user_id,
                              "state_key": refused.user_id,
                              "content": {"membership": "join", "join_authorised_via_users_server": via}},
                    prev_events=tpl["prev_events"], auth_events=tpl["auth_events"], depth=tpl["depth"],
                    origin_server_ts=tpl["origin_server_ts"], server_name=b.server_name, signing_key=b_key)
                with pytest.raises(RemoteError) as e:
                    await as_b.put_json(a.server_name, f"/_matrix/federation/v2/send_join/{r}/"
                                        f"{quote(forged.event_id, safe='')}", dict(forged.pdu))
                assert (e.value.status, e.value.errcode) == (status, errcode) and says in e.value.error, e.value
                assert not await a.db_fetch("SELECT 1 FROM events WHERE event_id = $1", forged.event_id)

        async def one_version(version: str, rule: str) -> None:
            status, space = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": version})
            assert status == 200, space
            space_id = space["room_id"]
            status, room = await alice.call("POST", "createRoom", {
                "preset": "public_chat", "room_version": version,
                "power_level_content_override": {"invite": 50},
                "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                    "join_rule": rule, "allow": [{"type": "m.room_membership", "room_id": space_id}]}}],
            })
            assert status == 200, room
            room_id = room["room_id"]

            # bob (in A) joins R through a: a authorises and countersigns
            assert (await join(bob, space_id, a.server_name))[0] == 200
            status, body = await join(bob, room_id, a.server_name)
            assert status == 200, (body, b.process.stderr()[-3000:], a.process.stderr()[-3000:])
            ev = await member_event(alice, room_id, bob.user_id)
            assert ev is not None and ev["content"]["membership"] == "join", ev
            assert ev["content"]["join_authorised_via_users_server"] == alice.user_id
            for server in (a, b):  # b kept the event a answered, signed by both
                pdu = await signed_pdu(server, ev["event_id"])
                assert set(pdu["signatures"]) == {a.server_name, b.server_name}, (server.server_name, pdu)
            assert (await alice.send(room_id, f"hello v{version}"))[0] == 200

            # dave is in no allowed room: refused, nothing joined
            status, body = await join(dave, room_id, a.server_name)
            assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
            assert await member_event(alice, room_id, dave.user_id) is None

            # carol (c) joins A and R through a; c now holds R but no user of c may invite
            assert (await join(carol, space_id, a.server_name))[0] == 200
            status, body = await join(carol, room_id, a.server_name)
            assert status == 200, (body, c.process.stderr()[-3000:])

            # c answers make_join for frank: not in A -> 403; in A -> M_UNABLE_TO_GRANT_JOIN
            status, body = await make_join_on_c(room_id, frank)
            assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
            # b makes frank's join to A itself (bob is in A) and sends it to
            # the servers it knows in A: once carol's join (made through a)
            # has reached b, c is one of them (before, c would learn of
            # frank's join only with a later event of A, as from Synapse)
            assert await wait_until(lambda: joined(bob, space_id, carol.user_id), 30, interval=0.2), \
                b.process.stderr()[-3000:]
            assert (await join(frank, space_id, a.server_name))[0] == 200

            async def c_cannot_grant() -> bool:  # once frank's join to A (made by b) reached c
                status, body = await make_join_on_c(room_id, frank)
                return (status, body.get("errcode")) == (400, "M_UNABLE_TO_GRANT_JOIN")

            assert await wait_until(c_cannot_grant, 30, interval=0.2), (
                await make_join_on_c(room_id, frank), a.process.stderr()[-3000:], c.process.stderr()[-3000:])
            # a authorises frank's join to R by its own state of A
            assert await wait_until(lambda: joined(alice, space_id, frank.user_id), 30, interval=0.2), \
                a.process.stderr()[-3000:]
            await forged_send_joins(room_id, version, frank, dave)
            # b holds R but none of its users may invite: it joins frank
            # through a server whose users may (a), not c (see above)
            status, body = await join(frank, room_id, c.server_name, a.server_name)
            assert status == 200, (body, b.process.stderr()[-3000:])
            frank_join = await member_event(alice, room_id, frank.user_id)
            assert frank_join is not None and frank_join["content"]["join_authorised_via_users_server"] == alice.user_id

            # a relays frank's join to c, which checks a's signature on it
            async def frank_joined_on_c() -> bool:
                ev = await member_event(carol, room_id, frank.user_id)
                return ev is not None and ev["event_id"] == frank_join["event_id"]

            assert await wait_until(frank_joined_on_c, 30, interval=0.2), c.process.stderr()[-3000:]
            pdu = await signed_pdu(c, frank_join["event_id"])
            assert set(pdu["signatures"]) == {a.server_name, b.server_name}

            # heidi (c) is in A; R is on c but no user of c may authorise: the join goes through a
            assert (await join(heidi, space_id, a.server_name))[0] == 200  # made on c (in A), sent to a
            assert await wait_until(lambda: joined(alice, space_id, heidi.user_id), 30, interval=0.2)
            status, body = await join(heidi, room_id)
            assert status == 200, (body, c.process.stderr()[-3000:])
            ev = await member_event(alice, room_id, heidi.user_id)
            assert ev is not None and ev["content"]["join_authorised_via_users_server"] == alice.user_id, ev

            # c leaves A: it can no longer tell who is in A
            for user in (carol, heidi):
                assert (await user.call("POST", f"rooms/{quote(space_id)}/leave", {}))[0] == 200
            assert (await join(grace, space_id, a.server_name))[0] == 200
            status, body = await make_join_on_c(room_id, grace)
            assert (status, body.get("errcode")) == (400, "M_UNABLE_TO_AUTHORISE_JOIN"), body

            # the three servers see the same members of R
            want = {alice.user_id, bob.user_id, carol.user_id, frank.user_id, heidi.user_id}
            for user in (alice, bob, carol):
                async def same_members(user: User = user) -> bool:
                    status, members = await user.call("GET", f"rooms/{quote(room_id)}/joined_members")
                    return status == 200 and set(members["joined"]) == want

                assert await wait_until(same_members, 30, interval=0.2), user.user_id

        as_b = FederationClient(b.server_name, b_key, allow_private_addresses=["127.0.0.0/8"],
                                verify_certificates=False)
        try:
            for version, rule in (("10", "knock_restricted"), ("11", "restricted")):
                await one_version(version, rule)
        finally:
            await as_b.close()
