"""One event waking many long-polling /sync requests (issue #15).

The syncs woken together share work (services/fanout.py; unread counts
carried from each user's previous sync, services/unread.py): every member
must still get the event exactly once, with exact unread and highlight
counts (a mention highlights only the mentioned member), whichever instance
they poll, and counts carried forward must be recounted when what they
depend on changes (receipts, push rules, display names).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Callable

import aiohttp
import asyncpg

from ..helpers import ApiClient
from .conftest import StartServer
from .room_helpers import create_room, q, send_text
from .test_sync import joined, sync
from .test_unread import counts, read_up_to

MEMBERS_TWO_INSTANCES = 12
MEMBERS_MANY = 200  # each with its own socket
WAKE_DEADLINE_S = 90.0  # a bound on the test's waiting, not a performance claim
FILTER = json.dumps({"room": {"timeline": {"limit": 20}, "state": {"lazy_load_members": True}}})


def _on(api: ApiClient, base_url: str, session: aiohttp.ClientSession) -> ApiClient:
    other = ApiClient(base_url, session, validate=False)
    other.token, other.user_id, other.device_id = api.token, api.user_id, api.device_id
    return other


async def _limited(n: int, jobs: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(n)

    async def one(job: Any) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


async def _members(base_urls: list[str], session: aiohttp.ClientSession, n: int, room_id: str) -> list[ApiClient]:
    """n users registered and joined to the public room, alternating instances."""
    async def make(i: int) -> ApiClient:
        api = ApiClient(base_urls[i % len(base_urls)], session, validate=False)
        await api.register(f"member{i}")
        r = await api.post(f"rooms/{q(room_id)}/join", {})
        assert r.status == 200, r
        return api

    return list(await _limited(8, [lambda i=i: make(i) for i in range(n)]))


async def _until_event(api: ApiClient, since: str, room_id: str, event_id: str) -> tuple[dict[str, Any], int, str]:
    """Long-polls from ``since`` until a response carries the event (bounded);
    returns that response, how many times the event came in all responses
    read, and the next token."""
    seen = 0
    found: dict[str, Any] | None = None
    loop = asyncio.get_running_loop()
    end = loop.time() + WAKE_DEADLINE_S
    while found is None and loop.time() < end:
        r = await api.get("sync", params={"since": since, "timeout": "30000", "filter": FILTER}, validate=False)
        assert r.status == 200, r
        since = r["next_batch"]
        room = joined(r.body).get(room_id, {})
        ids = [e["event_id"] for e in room.get("timeline", {}).get("events", [])]
        seen += ids.count(event_id)
        if event_id in ids:
            found = r.body
    assert found is not None, f"{api.user_id} never got {event_id}"
    # nothing more: the event is not delivered again
    again = await api.get("sync", params={"since": since, "timeout": "0", "filter": FILTER}, validate=False)
    room = joined(again.body).get(room_id, {})
    seen += [e["event_id"] for e in room.get("timeline", {}).get("events", [])].count(event_id)
    return found, seen, again["next_batch"]


async def _fan_out(
    members: list[ApiClient], tokens: list[str], sender: ApiClient, room_id: str, body: str, mentioned: ApiClient | None
) -> tuple[str, list[tuple[dict[str, Any], int, str]]]:
    polls = [asyncio.ensure_future(_until_event_later(m, t, room_id)) for m, t in zip(members, tokens)]
    await asyncio.sleep(0.5)  # let the long-polls park
    content: dict[str, Any] = {}
    if mentioned is not None:
        content["m.mentions"] = {"user_ids": [mentioned.user_id]}
    event_id = await send_text(sender, room_id, body, **content)
    _EVENT[room_id].set_result(event_id)
    results = await asyncio.wait_for(asyncio.gather(*polls), WAKE_DEADLINE_S + 30)
    _EVENT[room_id] = asyncio.get_running_loop().create_future()
    return event_id, results


_EVENT: dict[str, asyncio.Future[str]] = {}


async def _until_event_later(api: ApiClient, since: str, room_id: str) -> tuple[dict[str, Any], int, str]:
    """Like _until_event for an event not sent yet: the first long-poll is
    open before the send."""
    first = asyncio.ensure_future(
        api.get("sync", params={"since": since, "timeout": "30000", "filter": FILTER}, validate=False)
    )
    event_id = await _EVENT[room_id]
    r = await first
    assert r.status == 200, r
    room = joined(r.body).get(room_id, {})
    ids = [e["event_id"] for e in room.get("timeline", {}).get("events", [])]
    if event_id in ids:
        again = await api.get("sync", params={"since": r["next_batch"], "timeout": "0", "filter": FILTER},
                              validate=False)
        room2 = joined(again.body).get(room_id, {})
        return r.body, ids.count(event_id) + [e["event_id"] for e in room2.get("timeline", {}).get(
            "events", [])].count(event_id), again["next_batch"]
    found, seen, token = await _until_event(api, r["next_batch"], room_id, event_id)
    return found, seen, token


async def test_fan_out_over_two_instances_exact_counts(start_server: StartServer) -> None:
    one, two = await start_server(), await start_server()
    urls = [f"http://127.0.0.1:{one.client_port}", f"http://127.0.0.1:{two.client_port}"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sender = ApiClient(urls[0], session, validate=False)
        await sender.register("sender")
        room_id = await create_room(sender, {"preset": "public_chat"})
        members = await _members(urls, session, MEMBERS_TWO_INSTANCES, room_id)
        tokens = [(await sync(m, filter=json.loads(FILTER)))["next_batch"] for m in members]
        _EVENT[room_id] = asyncio.get_running_loop().create_future()
        mentioned = members[3]
        # 1: a mention of one member
        event_id, results = await _fan_out(members, tokens, sender, room_id, "hello there", mentioned)
        for m, (body, seen, _) in zip(members, results):
            assert seen == 1, f"{m.user_id} got {event_id} {seen} times"
            want = {"notification_count": 1, "highlight_count": 1 if m is mentioned else 0}
            assert counts(body, room_id) == want, m.user_id
        tokens = [t for _, _, t in results]
        # 2: a plain message; the mentioned member keeps their highlight
        event_id, results = await _fan_out(members, tokens, sender, room_id, "second", None)
        for m, (body, seen, _) in zip(members, results):
            assert seen == 1
            want = {"notification_count": 2, "highlight_count": 1 if m is mentioned else 0}
            assert counts(body, room_id) == want, m.user_id
        tokens = [t for _, _, t in results]
        # 3: the mentioned member reads up to the last message (on the other
        # instance from their syncs); their counts clear, nobody else's
        await read_up_to(_on(mentioned, urls[(MEMBERS_TWO_INSTANCES + 1) % 2], session), room_id, event_id)
        event_id, results = await _fan_out(members, tokens, sender, room_id, "third", None)
        for m, (body, seen, _) in zip(members, results):
            assert seen == 1
            want = {"notification_count": 1, "highlight_count": 0} if m is mentioned else {
                "notification_count": 3, "highlight_count": 0}
            assert counts(body, room_id) == want, m.user_id
        # initial syncs agree with the counts carried forward
        for m, (body, _, _) in zip(members, results):
            assert counts(await sync(m), room_id) == counts(body, room_id)


async def test_a_few_hundred_long_polls_all_woken_with_right_counts(start_server: StartServer) -> None:
    server = await start_server()
    url = f"http://127.0.0.1:{server.client_port}"
    # one socket per member: no connection limit on this session
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sender = ApiClient(url, session, validate=False)
        await sender.register("sender")
        room_id = await create_room(sender, {"preset": "public_chat"})
        members = await _members([url], session, MEMBERS_MANY, room_id)
        tokens = list(await _limited(8, [
            lambda m=m: sync(m, filter=json.loads(FILTER)) for m in members
        ]))
        tokens = [t["next_batch"] for t in tokens]
        _EVENT[room_id] = asyncio.get_running_loop().create_future()
        mentioned = members[MEMBERS_MANY // 2]
        event_id, results = await _fan_out(members, tokens, sender, room_id, "to everyone", mentioned)
        assert len(results) == MEMBERS_MANY
        for m, (body, seen, _) in zip(members, results):
            assert seen == 1, f"{m.user_id} got {event_id} {seen} times"
            want = {"notification_count": 1, "highlight_count": 1 if m is mentioned else 0}
            assert counts(body, room_id) == want, m.user_id


async def _next(api: ApiClient, since: str) -> dict[str, Any]:
    r = await api.get("sync", params={"since": since, "timeout": "5000"})
    assert r.status == 200, r
    return r.body


async def test_carried_counts_follow_push_rule_changes(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    r = await bob.post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    body = await sync(alice)
    await send_text(bob, room_id, "one")
    await send_text(bob, room_id, "two")
    body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 2, "highlight_count": 0}
    # muting the room changes how the unread events count (read-time rules)
    r = await alice.put(f"pushrules/global/room/{q(room_id)}", {"actions": []})
    assert r.status == 200, r
    await send_text(bob, room_id, "three")
    body = await _next(alice, body["next_batch"])
    while room_id not in joined(body):  # the push rule change alone may come first
        body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 0, "highlight_count": 0}


async def test_carried_counts_follow_display_name_changes(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    r = await bob.post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    r = await alice.put(f"profile/{q(alice.user_id)}/displayname", {"displayname": "Wonderland"})
    assert r.status == 200, r
    body = await sync(alice)
    await send_text(bob, room_id, "hello wonderland")
    body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 1, "highlight_count": 1}
    # another name: her new member event restarts the count (as a receipt
    # would), and the new name is what messages are matched against
    r = await alice.put(f"profile/{q(alice.user_id)}/displayname", {"displayname": "Looking Glass"})
    assert r.status == 200, r
    await send_text(bob, room_id, "and this")
    body = await _next(alice, body["next_batch"])
    while not any(e.get("content", {}).get("body") == "and this"
                  for e in joined(body).get(room_id, {}).get("timeline", {}).get("events", [])):
        body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 1, "highlight_count": 0}
    await send_text(bob, room_id, "hi looking glass")
    body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 2, "highlight_count": 1}


async def test_carried_counts_follow_power_level_changes(alice: ApiClient, bob: ApiClient) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    r = await bob.post(f"rooms/{q(room_id)}/join", {})
    assert r.status == 200, r
    body = await sync(alice)
    # an @room from someone without the power to notify the room: no highlight
    await send_text(bob, room_id, "@room wake up")
    body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 1, "highlight_count": 0}
    # bob gets the power: the rules see the room's current power levels, so
    # the unread @room now highlights (recounted, not carried forward)
    levels = (await alice.get(f"rooms/{q(room_id)}/state/m.room.power_levels")).body
    levels.setdefault("users", {})[bob.user_id] = 50
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.power_levels", levels)
    assert r.status == 200, r
    await send_text(bob, room_id, "done")
    body = await _next(alice, body["next_batch"])
    while not any(e.get("content", {}).get("body") == "done"
                  for e in joined(body).get(room_id, {}).get("timeline", {}).get("events", [])):
        body = await _next(alice, body["next_batch"])
    assert counts(body, room_id) == {"notification_count": 2, "highlight_count": 1}


async def test_summary_follows_joins_invites_leaves_and_names(
    alice: ApiClient, bob: ApiClient, carol: ApiClient
) -> None:
    room_id = await create_room(alice, {"preset": "public_chat"})
    body = await sync(alice)
    assert joined(body)[room_id]["summary"] == {
        "m.heroes": [], "m.joined_member_count": 1, "m.invited_member_count": 0}

    async def summary_after(step: Any) -> dict[str, Any]:
        nonlocal body
        await step()
        body = await _next(alice, body["next_batch"])
        return dict(joined(body)[room_id]["summary"])

    async def bob_joins() -> None:
        assert (await bob.post(f"rooms/{q(room_id)}/join", {})).status == 200

    async def carol_invited() -> None:
        assert (await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": carol.user_id})).status == 200

    async def bob_renamed() -> None:
        r = await bob.put(f"profile/{q(bob.user_id)}/displayname", {"displayname": "Robert"})
        assert r.status == 200

    async def carol_joins() -> None:
        assert (await carol.post(f"rooms/{q(room_id)}/join", {})).status == 200

    async def bob_leaves() -> None:
        assert (await bob.post(f"rooms/{q(room_id)}/leave", {})).status == 200

    s = await summary_after(bob_joins)
    assert s == {"m.heroes": [bob.user_id], "m.joined_member_count": 2, "m.invited_member_count": 0}
    s = await summary_after(carol_invited)
    assert s["m.joined_member_count"] == 2 and s["m.invited_member_count"] == 1
    assert set(s["m.heroes"]) == {bob.user_id, carol.user_id}
    s = await summary_after(bob_renamed)
    assert s["m.joined_member_count"] == 2 and s["m.invited_member_count"] == 1
    s = await summary_after(carol_joins)
    assert s["m.joined_member_count"] == 3 and s["m.invited_member_count"] == 0
    assert set(s["m.heroes"]) == {bob.user_id, carol.user_id}
    s = await summary_after(bob_leaves)
    assert s == {"m.heroes": [carol.user_id], "m.joined_member_count": 2, "m.invited_member_count": 0}


async def test_summary_row_kept_on_write(
    alice: ApiClient, new_client: Callable[[], ApiClient], database_url: str
) -> None:
    """The summary (counts and the first joined and invited users) is one
    row the persister keeps with the room's current state: after joins,
    invites, a kick, a ban and leaves of users among the first ones (so the
    heroes move on to later users) it equals a recount of current_state,
    and /sync reads it instead of counting."""
    room_id = await create_room(alice, {"preset": "public_chat"})
    users = []
    for i in range(9):
        u = new_client()
        await u.register(f"summ{i}")
        users.append(u)
    for u in users[:7]:
        assert (await u.post(f"rooms/{q(room_id)}/join", {})).status == 200
    for u in users[7:]:
        assert (await alice.post(f"rooms/{q(room_id)}/invite", {"user_id": u.user_id})).status == 200
    ordered = sorted(u.user_id for u in users[:7])
    by_id = {u.user_id: u for u in users}
    # the first two joined (by code point) go: one leaves, one is kicked;
    # the third is banned; an invited user joins, the other is uninvited
    assert (await by_id[ordered[0]].post(f"rooms/{q(room_id)}/leave", {})).status == 200
    assert (await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": ordered[1]})).status == 200
    assert (await alice.post(f"rooms/{q(room_id)}/ban", {"user_id": ordered[2]})).status == 200
    assert (await users[7].post(f"rooms/{q(room_id)}/join", {})).status == 200
    assert (await alice.post(f"rooms/{q(room_id)}/kick", {"user_id": users[8].user_id})).status == 200
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM room_summaries WHERE room_id = $1", room_id)
        members = await conn.fetch(
            "SELECT state_key, membership FROM current_state WHERE room_id = $1 AND type = 'm.room.member'",
            room_id,
        )
        joined_ids = sorted(r["state_key"] for r in members if r["membership"] == "join")
        invited_ids = sorted(r["state_key"] for r in members if r["membership"] == "invite")
        assert row is not None
        assert (row["joined_members"], row["invited_members"]) == (len(joined_ids), len(invited_ids)) == (6, 0)
        assert list(row["heroes_joined"]) == joined_ids[:6] and list(row["heroes_invited"]) == invited_ids[:6]
        assert ordered[0] not in row["heroes_joined"] and users[7].user_id in row["heroes_joined"]
        # a new member's initial sync shows the row (here altered by hand:
        # a count on read would show the real numbers)
        await conn.execute(
            "UPDATE room_summaries SET joined_members = 4321, invited_members = 7 WHERE room_id = $1", room_id
        )
    finally:
        await conn.close()
    reader = new_client()
    await reader.register("summreader")
    assert (await reader.post(f"rooms/{q(room_id)}/join", {})).status == 200
    summary = joined(await sync(reader))[room_id]["summary"]
    assert summary["m.joined_member_count"] == 4322 and summary["m.invited_member_count"] == 7
    first = sorted([*joined_ids, reader.user_id])[:6]
    assert summary["m.heroes"] == [u for u in first if u != reader.user_id][:5]


async def test_next_long_poll_at_the_notifier_position_reads_no_position(start_server: StartServer) -> None:
    """A woken client's next long-poll comes with the notifier's position as
    its since: it waits without reading the position (two statements each,
    a thousand at once after a fan-out) or the user's rooms, and its own
    write still wakes it."""
    server = await start_server()
    assert server.services is not None
    notifier = server.services.notifier
    stream = notifier.stream
    async with aiohttp.ClientSession() as session:
        alice = ApiClient(f"http://127.0.0.1:{server.client_port}", session)
        await alice.register("alice")
        room_id = await create_room(alice)
        token = (await sync(alice))["next_batch"]
        loop = asyncio.get_running_loop()
        end = loop.time() + WAKE_DEADLINE_S
        while f"s{notifier.position}" != token and loop.time() < end:  # the notifier catches up
            token = (await sync(alice, token))["next_batch"]
            await asyncio.sleep(0.05)
        assert f"s{notifier.position}" == token
        reads = 0
        real = stream.current_position

        async def counted(*, read_max: bool = True) -> int:
            nonlocal reads
            caller = sys._getframe(1).f_code
            if caller.co_name == "sync" and caller.co_filename.endswith("services/sync.py"):
                reads += 1  # (not the notifier's polls)
            return await real(read_max=read_max)

        rooms = server.services.sync.rooms
        real_rooms = rooms.rooms_for_user
        room_reads = 0

        async def counted_rooms(user_id: str, membership: str = "join") -> list[str]:
            nonlocal room_reads
            room_reads += 1
            return await real_rooms(user_id, membership)

        stream.current_position = counted  # type: ignore[method-assign]
        rooms.rooms_for_user = counted_rooms  # type: ignore[method-assign]
        try:
            poll = asyncio.ensure_future(alice.get("sync", params={"since": token, "timeout": "30000"}))
            while notifier.waiting == 0 and loop.time() < end and not poll.done():
                await asyncio.sleep(0.01)
            # the rooms it waits on: those of the memberships its last response was built from
            assert notifier.waiting == 1 and reads == 0 and room_reads == 0
        finally:
            stream.current_position = real  # type: ignore[method-assign]
            rooms.rooms_for_user = real_rooms  # type: ignore[method-assign]
        event_id = await send_text(alice, room_id, "mine")
        r = await asyncio.wait_for(poll, WAKE_DEADLINE_S)
        assert [e["event_id"] for e in joined(r.body)[room_id]["timeline"]["events"]] == [event_id]
