"""The partial-state resync's replay (services/federation/state_replay.py,
storage/partial_state.py ``rewrite_state``) on a room whose events are built
as a remote server builds them (test_persister's ``Remote``): remy, a
moderator demoted by alice, forges two topic changes on his old power
levels that the persister is handed as accepted (as a partial-state room
accepts what it cannot check yet); a remote event rejected on receipt names
the first as its prev event (so the first one's state group is not only
the window's); alice sends a message and renames the room on top of the
forged topic; the second forgery is the room's only forward extremity.

The replay, from remy's join, rejects both forgeries, takes the topic out
of the state after every event since (a new group where the old one is
shared with the rejected event, the others rewritten in place), of the
current state and of the forward extremities (whose prev events no
accepted event names any more become ones); a second replay finds nothing
to do. A failing message alone (the resync's path when no state event
fails) is rejected and leaves the extremities it took."""

from __future__ import annotations

import functools

import asyncpg

from coffeechat_home.app import HomeServer
from coffeechat_home.services.federation.state_replay import replay_state
from coffeechat_home.storage.partial_state import PartialStateStore, PartialStateWindow, rewrite_state

from ..helpers import ApiClient
from .db_checks import assert_forward_extremities
from .room_helpers import q, send_text
from .test_persister import REMY, _public_room_with_remote

TOPIC = ("m.room.topic", "")
NAME = ("m.room.name", "")
POWER = ("m.room.power_levels", "")


async def test_replay_takes_failing_state_events_out_of_the_state(
    alice: ApiClient, server: HomeServer, database_url: str
) -> None:
    assert server.services is not None and server.db is not None
    s, db = server.services, server.db
    room_id, remote = await _public_room_with_remote(alice, server, database_url)
    rv = await remote.rv()
    promoted = await remote.current_state()  # remy may change the topic here
    join_id = promoted[("m.room.member", REMY)]
    r = await alice.get(f"rooms/{q(room_id)}/state/m.room.power_levels")
    power = dict(r.body)
    power["users"] = {**power["users"], REMY: 0}
    assert (await alice.put(f"rooms/{q(room_id)}/state/m.room.power_levels", power)).status == 200
    before = await remote.current_state()
    assert TOPIC not in before

    (tip,) = await remote.extremities()
    on_old_power = {**before, POWER: promoted[POWER]}
    forged = await remote.build({"type": "m.room.topic", "state_key": "", "content": {"topic": "seized"}},
                                [tip], on_old_power, check=False)
    await remote.persist(forged, state_before=before)
    after_forged = {**before, TOPIC: forged.event_id}
    refused = await remote.build({"type": "m.room.message", "content": {"msgtype": "m.text", "body": "no"}},
                                 [forged.event_id], after_forged, check=False)
    await remote.persist(refused, state_before=after_forged, rejected_reason="refused on receipt")
    message = await send_text(alice, room_id, "on top")
    r = await alice.put(f"rooms/{q(room_id)}/state/m.room.name", {"name": "renamed"})
    assert r.status == 200, r
    renamed = r["event_id"]
    now = await remote.current_state()
    assert now[TOPIC] == forged.event_id
    forged2 = await remote.build({"type": "m.room.topic", "state_key": "", "content": {"topic": "again"}},
                                 [renamed], {**now, POWER: promoted[POWER]}, check=False)
    await remote.persist(forged2, state_before=now)
    assert await remote.extremities() == [forged2.event_id]
    group_of = {e: await s.events.event_state_group(e) for e in (forged.event_id, refused.event_id, message,
                                                                  renamed, forged2.event_id)}
    assert group_of[refused.event_id] == group_of[forged.event_id]

    resync_pos = int(await db.fetchval("SELECT max(stream_pos) FROM events")) + 1
    replay = functools.partial(replay_state, s.events, PartialStateWindow(db), room_id, rv, join_id, resync_pos,
                               server.config.server_name, "fails the auth rules (test)", 100)
    plan = await replay()
    assert plan is not None
    assert plan.rejected == [forged.event_id, forged2.event_id]
    assert plan.new_groups and plan.patches, plan
    assert plan.current.removed == [TOPIC], plan.current
    await s.stream.write(functools.partial(rewrite_state, room_id=room_id, plan=plan, text_order=db.text_order))

    expected = {
        forged.event_id: before, message: before, renamed: {**before, NAME: renamed}, forged2.event_id:
        {**before, NAME: renamed},
    }
    for event_id, state in expected.items():
        group = await s.events.event_state_group(event_id)
        assert await s.events.state_ids_for_group(group or 0) == state, event_id
    # the group the rejected-on-receipt event shares is left as it was
    assert group_of[forged.event_id] != await s.events.event_state_group(forged.event_id)
    assert (await s.events.state_ids_for_group(group_of[forged.event_id]))[TOPIC] == forged.event_id
    assert await remote.current_state() == {**before, NAME: renamed}
    assert (await alice.get(f"rooms/{q(room_id)}/state/m.room.topic")).status == 404
    # the forgeries' prev events that no accepted event names any more are
    # extremities again (the demotion's only successor was the first one)
    assert sorted(await remote.extremities()) == sorted([renamed, tip])
    await assert_forward_extremities(database_url, room_id)
    rows = await db.fetch("SELECT event_id, stream_pos, rejected_reason FROM events WHERE event_id = ANY($1::TEXT[])",
                          [forged.event_id, forged2.event_id])
    assert all(r["stream_pos"] is None and r["rejected_reason"] for r in rows), rows
    r = await alice.get(f"rooms/{q(room_id)}/messages", params={"dir": "b", "limit": "50"})
    assert r.status == 200 and not {forged.event_id, forged2.event_id} & {e["event_id"] for e in r["chunk"]}
    # the state at each stream position (what /sync reads) holds no topic either
    assert TOPIC not in await s.events.state_ids_for_group(
        await s.events.state_group_at(room_id, resync_pos) or 0)
    assert await db.fetchval("SELECT events_rejected FROM room_state_resets WHERE room_id = $1", room_id) == 2

    again = await replay()
    assert again is not None and not (again.rejected or again.patches or again.new_groups or again.event_groups
                                      or again.current.changed or again.current.removed), again

    # a message that fails (the resync's path when no state event does):
    # rejected, out of the timeline and of the extremities it took
    heads = await remote.extremities()
    ghost = await remote.build({"type": "m.room.message", "sender": "@ghost:remote.example",
                                "content": {"msgtype": "m.text", "body": "boo"}},
                               sorted(heads), await remote.current_state(), check=False)
    await remote.persist(ghost)
    assert await remote.extremities() == [ghost.event_id]

    async def reject(conn: asyncpg.Connection) -> list[str]:
        return await PartialStateStore(conn).reject_late(room_id, [ghost.event_id], "fails (test)")
    assert await db.transaction(reject) == [ghost.event_id]
    assert sorted(await remote.extremities()) == sorted(heads)
    await assert_forward_extremities(database_url, room_id)
