"""Our users in rooms that live on Synapse: our user joins a public Synapse
room (by room id with ``via``, and by alias) through make_join/send_join,
sees its state in /sync (whole, and lazy-loaded: the non-member state,
the heroes' and the timeline senders' members), pages back through the history from before its
join (backfilled from Synapse), then receives the Synapse user's new
messages and state changes live (Synapse pushes them to our /send), typing
and read receipts go both ways (v10), and it leaves through Synapse
(make_leave/send_leave); it knocks on a Synapse room (make_knock/send_knock)
and is let in; invites from Synapse show in /sync with their stripped state,
one is accepted (joined through the inviting server), one rejected (Synapse
sees the leave). Room versions 10, 11 and 12, one Synapse for all of them."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from ..federation.ephemeral_checks import presence_reaches, typing_and_receipts_both_ways
from ..federation.peers import FederatingServer
from ..integration.processes import User, pages_back, wait_until
from .synapse_peer import SynapsePeer
from .test_synapse_federation import peers, pytestmark, register_on_synapse

__all__ = ["peers", "pytestmark"]


def _joined(sync: dict[str, Any], room_id: str) -> dict[str, Any]:
    return dict(sync.get("rooms", {}).get("join", {}).get(room_id, {}))


async def _sync_until(user: User, since: str | None, room_id: str, pred: Any) -> tuple[str, list[dict[str, Any]]]:
    """Long-poll /sync (at most 20 polls) collecting the room's timeline
    until ``pred(events)`` holds."""
    seen: list[dict[str, Any]] = []
    for _ in range(20):
        body = await user.sync(since, timeout_ms=5000)
        since = body["next_batch"]
        seen += _joined(body, room_id).get("timeline", {}).get("events", [])
        if pred(seen):
            break
    assert since is not None
    return since, seen


LAZY = quote(json.dumps({"room": {"state": {"lazy_load_members": True}, "timeline": {"limit": 10}}}))


async def first_sync_after_join(alice: User, bob: User, others: list[User], syn: SynapsePeer) -> None:
    """A room on Synapse without a name, bob and ``others`` (6 in all)
    joined, a message from the last of them; alice joins. Her first /sync:
    the whole state with the full filter; with lazy-loaded members, every
    non-member state event, the members of the summary's heroes and of the
    timeline's senders (the spec's sync.yaml: the heroes' membership events
    MUST be in the state) and no other member; the timeline's prev_batch
    pages back through the history from before the join (from Synapse)."""
    status, room = await bob.call("POST", "createRoom", {"preset": "public_chat", "room_version": "10"})
    assert status == 200, room
    room_id = room["room_id"]
    for u in others:
        assert (await u.call("POST", f"rooms/{quote(room_id)}/join", {}))[0] == 200
    status, said = await others[-1].send(room_id, "said before alice came")
    assert status == 200, said
    status, answer = await alice.call("POST", f"join/{quote(room_id)}?server_name={quote(syn.server_name)}", {})
    assert status == 200, answer
    status, state = await bob.call("GET", f"rooms/{quote(room_id)}/state")
    assert status == 200, state
    on_synapse = {(e["type"], e["state_key"]): e["event_id"] for e in state}

    for sync_filter in ("", LAZY):
        body = {}

        async def in_sync(sync_filter: str = sync_filter) -> bool:
            # (a room joined with a partial state comes to a non-lazy sync once its members are in)
            nonlocal body
            status, body = await alice.call("GET", "sync" + (f"?filter={sync_filter}" if sync_filter else ""))
            assert status == 200, body
            return bool(_joined(body, room_id))

        assert await wait_until(in_sync, 30, interval=0.2), body
        joined = _joined(body, room_id)
        timeline = joined["timeline"]["events"]
        got = {(e["type"], e["state_key"]): e["event_id"] for e in joined["state"]["events"]}
        in_timeline = {(e["type"], e["state_key"]): e["event_id"] for e in timeline if "state_key" in e}
        assert timeline[-1]["event_id"] == on_synapse[("m.room.member", alice.user_id)], timeline
        heroes = joined["summary"]["m.heroes"]
        assert len(heroes) == 5 and set(heroes) <= {u.user_id for u in [bob, *others]}, joined["summary"]
        if not sync_filter:  # the whole state, before the timeline
            assert {**got, **in_timeline} == on_synapse, (got, on_synapse)
        else:
            senders = {e["sender"] for e in timeline} | set(heroes)
            want = {k: v for k, v in on_synapse.items()
                    if (k[0] != "m.room.member" or k[1] in senders) and k not in in_timeline}
            assert got == want, (sorted(got), sorted(want))
            assert ("m.room.member", others[-1].user_id) not in got
        # the history from before the join, backfilled from Synapse, from prev_batch
        status, page = await alice.call(
            "GET", f"rooms/{quote(room_id)}/messages?dir=b&limit=50&from={joined['timeline']['prev_batch']}")
        assert status == 200, page
        types = [e["type"] for e in page["chunk"]]
        assert "m.room.create" in types and said["event_id"] in {e["event_id"] for e in page["chunk"]}, types


async def test_join_synapse_rooms_and_receive_live(peers: tuple[FederatingServer, SynapsePeer]) -> None:
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        alice = await User(http, ours.client_url).register("alice")
        bob = await register_on_synapse(http, syn, "bob")
        others = [await register_on_synapse(http, syn, name) for name in ("carol", "dan", "erin", "fay", "zed")]
        await first_sync_after_join(alice, bob, others, syn)
        for version, how in (("10", "via"), ("11", "alias"), ("12", "server_name")):
            body: dict[str, Any] = {"preset": "public_chat", "room_version": version, "name": f"syn v{version}"}
            if how == "alias":
                body["room_alias_name"] = f"syn{version}"
            status, room = await bob.call("POST", "createRoom", body)
            assert status == 200, room
            room_id = room["room_id"]
            before = [f"before alice v{version} #{i}" for i in range(5)]
            for text in before:
                assert (await bob.send(room_id, text))[0] == 200
            for u in others:  # members Synapse omits from send_join (partial-state join)
                assert (await u.call("POST", f"rooms/{quote(room_id)}/join", {}))[0] == 200

            since = (await alice.sync())["next_batch"]
            if how == "alias":
                target = quote(f"#syn{version}:{syn.server_name}")
            else:
                target = quote(room_id) + f"?{how}={quote(syn.server_name)}"
            status, answer = await alice.call("POST", f"join/{target}", {})
            assert status == 200, (answer, ours.process.stderr()[-3000:])
            assert answer == {"room_id": room_id}

            # joined with a partial state (Synapse answered with the members omitted)
            partial = await ours.db_fetch("SELECT servers FROM partial_state_rooms WHERE room_id = $1", room_id)
            assert partial and syn.server_name in partial[0]["servers"], partial
            # the room's state is ours now: its name; /joined_members waits for
            # the resync and has Synapse's whole member list
            status, name = await alice.call("GET", f"rooms/{quote(room_id)}/state/m.room.name")
            assert (status, name) == (200, {"name": f"syn v{version}"}), name
            everyone = {alice.user_id, bob.user_id, *(u.user_id for u in others)}
            status, members = await alice.call("GET", f"rooms/{quote(room_id)}/joined_members")
            assert status == 200 and set(members["joined"]) == everyone, members
            status, members = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
            assert status == 200 and set(members["joined"]) == everyone, members
            done = await ours.db_fetch("SELECT stream_pos FROM partial_state_rooms WHERE room_id = $1", room_id)
            assert done[0]["stream_pos"] is not None, done
            since, seen = await _sync_until(
                alice, since, room_id,
                lambda evs: any(e["type"] == "m.room.member" and e["state_key"] == alice.user_id for e in evs))
            assert any(e["type"] == "m.room.member" and e.get("state_key") == alice.user_id for e in seen), seen
            # the history from before alice's join, backfilled from Synapse in pages of 3
            history, pages = await pages_back(alice, room_id, 3)
            ids = [e["event_id"] for e in history]
            assert len(ids) == len(set(ids)) and pages > 3, ids
            assert history[0]["type"] == "m.room.create", history[0]
            assert [e["content"]["body"] for e in history if e["type"] == "m.room.message"] == before
            on_synapse = [e["event_id"] for e in await bob.history(room_id)]
            assert ids == on_synapse[:len(ids)], (ids, on_synapse)

            # live from Synapse: a message, then a topic change
            status, sent = await bob.send(room_id, f"live v{version}")
            assert status == 200, sent
            status, topic = await bob.call("PUT", f"rooms/{quote(room_id)}/state/m.room.topic",
                                           {"topic": f"topic v{version}"})
            assert status == 200, topic
            want = {sent["event_id"], topic["event_id"]}
            since, seen = await _sync_until(
                alice, since, room_id, lambda evs, want=want: want <= {e["event_id"] for e in evs})
            ids = [e["event_id"] for e in seen]
            assert sent["event_id"] in ids and topic["event_id"] in ids, (seen, syn.log_tail())
            status, got = await alice.call("GET", f"rooms/{quote(room_id)}/state/m.room.topic")
            assert (status, got) == (200, {"topic": f"topic v{version}"})
            if version == "10":  # typing and read receipts, both ways (not room-version specific)
                status, mine = await alice.send(room_id, "alice was here")
                assert status == 200, mine

                path = f"rooms/{quote(room_id)}/event/{quote(mine['event_id'])}"

                async def on_synapse(path: str = path) -> bool:
                    return (await bob.call("GET", path))[0] == 200

                assert await wait_until(on_synapse, 30, interval=0.1), syn.log_tail()
                await typing_and_receipts_both_ways(alice, bob, room_id, mine["event_id"], sent["event_id"])
                await presence_reaches(alice, bob, "from coffeechat")
                await presence_reaches(bob, alice, "from synapse")

            # alice leaves through Synapse (make_leave / send_leave): Synapse sees it at once
            status, body = await alice.call("POST", f"rooms/{quote(room_id)}/leave", {})
            assert status == 200, (body, ours.process.stderr()[-3000:])
            status, members = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
            assert status == 200 and set(members["joined"]) == everyone - {alice.user_id}, members
            status, mine = await alice.call("GET", "joined_rooms")
            assert status == 200 and room_id not in mine["joined_rooms"], mine

        # knocking on a Synapse room (join rule knock): make_knock / send_knock,
        # the room under knock in /sync with Synapse's stripped state, then
        # bob lets alice in (invite) and she joins
        status, room = await bob.call("POST", "createRoom", {
            "preset": "private_chat", "room_version": "10", "name": "knock on synapse",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]})
        assert status == 200, room
        room_id = room["room_id"]
        status, body = await alice.call("POST", f"knock/{quote(room_id)}?server_name={quote(syn.server_name)}",
                                        {"reason": "hello"})
        assert (status, body) == (200, {"room_id": room_id}), (body, ours.process.stderr()[-3000:])
        knock_state = (await alice.sync())["rooms"]["knock"][room_id]["knock_state"]["events"]
        assert any(e["type"] == "m.room.name" and e["content"] == {"name": "knock on synapse"}
                   for e in knock_state), knock_state
        status, member = await bob.call("GET", f"rooms/{quote(room_id)}/state/m.room.member/{quote(alice.user_id)}")
        assert (status, member.get("membership"), member.get("reason")) == (200, "knock", "hello"), member
        status, body = await bob.call("POST", f"rooms/{quote(room_id)}/invite", {"user_id": alice.user_id})
        assert status == 200, (body, syn.log_tail())

        async def joined(room_id: str = room_id) -> bool:  # once the invite reached us
            return (await alice.call("POST", f"rooms/{quote(room_id)}/join", {}))[0] == 200

        assert await wait_until(joined, 30, interval=0.2), ours.process.stderr()[-3000:]
        status, members = await bob.call("GET", f"rooms/{quote(room_id)}/joined_members")
        assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id}, members

        # invites from Synapse: one accepted, one rejected, in each version
        for version in ("10", "11", "12"):
            rooms = []
            for purpose in ("accept", "reject"):
                status, room = await bob.call("POST", "createRoom", {
                    "preset": "private_chat", "room_version": version, "name": f"{purpose} v{version}"})
                assert status == 200, room
                since = (await alice.sync())["next_batch"]
                status, body = await bob.call("POST", f"rooms/{quote(room['room_id'])}/invite",
                                              {"user_id": alice.user_id})
                assert status == 200, (body, syn.log_tail(), ours.process.stderr()[-3000:])
                invite: dict[str, Any] = {}
                for _ in range(10):
                    sync = await alice.sync(since, timeout_ms=5000)
                    since = sync["next_batch"]
                    invite = sync.get("rooms", {}).get("invite", {}).get(room["room_id"], {})
                    if invite:
                        break
                stripped = invite["invite_state"]["events"]
                assert {"type": "m.room.name", "sender": bob.user_id, "state_key": "",
                        "content": {"name": f"{purpose} v{version}"}} in stripped, stripped
                assert any(e["type"] == "m.room.member" and e["state_key"] == alice.user_id
                           and e["content"]["membership"] == "invite" for e in stripped), stripped
                rooms.append(room["room_id"])
            accept, reject = rooms
            # accepting joins through the inviting server
            status, body = await alice.call("POST", f"rooms/{quote(accept)}/join", {})
            assert status == 200, (body, ours.process.stderr()[-3000:])
            status, members = await bob.call("GET", f"rooms/{quote(accept)}/joined_members")
            assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id}, members
            # rejecting leaves through it: Synapse sees alice's leave
            status, body = await alice.call("POST", f"rooms/{quote(reject)}/leave", {})
            assert status == 200, (body, ours.process.stderr()[-3000:])
            status, member = await bob.call("GET", f"rooms/{quote(reject)}/state/m.room.member/{quote(alice.user_id)}")
            assert (status, member.get("membership")) == (200, "leave"), member
            sync = await alice.sync()
            assert accept in sync["rooms"]["join"] and reject not in sync["rooms"].get("invite", {}), sync["rooms"]
            if version == "12":
                # Synapse's user bans ours: the ban reaches our side (the room
                # moves to alice's leave section), and a new join is refused
                status, body = await bob.call("POST", f"rooms/{quote(accept)}/ban",
                                              {"user_id": alice.user_id, "reason": "enough"})
                assert status == 200, body

                member_path = f"rooms/{quote(accept)}/state/m.room.member/{quote(alice.user_id)}"

                async def banned_here(member_path: str = member_path) -> bool:
                    s_, m_ = await alice.call("GET", member_path)
                    return s_ == 200 and m_.get("membership") == "ban"

                assert await wait_until(banned_here, 30, interval=0.2), ours.process.stderr()[-3000:]
                status, mine = await alice.call("GET", "joined_rooms")
                assert status == 200 and accept not in mine["joined_rooms"], mine
                status, body = await alice.call("POST", f"rooms/{quote(accept)}/join", {})
                assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
