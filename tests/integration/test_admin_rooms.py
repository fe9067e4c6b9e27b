"""Admin API for rooms (issue 11): list with member counts, details,
members, delete (everyone out, blocked, purged) and purge history as
background jobs with a status, resumed after the instance running them
died; refused with 403 M_FORBIDDEN for non-admins."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from coffeechat_home.app import HomeServer
from coffeechat_home.storage.admin_jobs import AdminJobStore

from ..helpers import ApiClient
from .admin_helpers import make_admin
from .conftest import StartServer
from .processes import wait_until

V1, V2 = "/_synapse/admin/v1", "/_synapse/admin/v2"
ROOM = "!room:test.local"

ADMIN_ONLY = [
    ("GET", V1 + "/rooms", None),
    ("GET", V1 + f"/rooms/{ROOM}", None),
    ("GET", V1 + f"/rooms/{ROOM}/members", None),
    ("DELETE", V2 + f"/rooms/{ROOM}", {}),
    ("GET", V2 + f"/rooms/{ROOM}/delete_status", None),
    ("GET", V2 + "/rooms/delete_status/abc", None),
    ("POST", V1 + f"/purge_history/{ROOM}", {"purge_up_to_ts": 1}),
    ("GET", V1 + "/purge_history_status/abc", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_refused_for_non_admins(alice: ApiClient, method: str, path: str, body: Any) -> None:
    r = await alice.request(method, path, body, validate=False)
    assert r.status == 403 and r["errcode"] == "M_FORBIDDEN", r


async def _room_with(alice: ApiClient, *others: ApiClient, name: str = "Coffee") -> str:
    r = await alice.post("createRoom", {"preset": "public_chat", "name": name, "room_alias_name": name.lower()})
    room = str(r["room_id"])
    for o in others:
        assert (await o.post(f"join/{quote(room)}", {})).status == 200
    return room


async def _done(admin: ApiClient, path: str, status: str = "complete") -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def finished() -> bool:
        nonlocal last
        last = (await admin.get(path)).body
        return bool(last.get("status") in (status, "failed"))

    assert await wait_until(finished, 60)
    return last


async def test_list_details_and_members(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient,
                                        bob: ApiClient) -> None:
    admin = await make_admin(server, http)
    big = await _room_with(alice, bob, name="Coffee")
    small = await _room_with(alice, name="Tea")
    r = await admin.get(V1 + "/rooms")
    assert r.status == 200 and r["total_rooms"] == 2 and r["offset"] == 0
    assert [(x["room_id"], x["joined_members"], x["name"]) for x in r["rooms"]] == [(big, 2, "Coffee"),
                                                                                   (small, 1, "Tea")]
    assert r["rooms"][0]["canonical_alias"] == "#coffee:test.local" and r["rooms"][0]["public"] is False
    r = await admin.get(V1 + "/rooms?limit=1")
    assert len(r["rooms"]) == 1 and r["next_batch"] == 1
    r = await admin.get(V1 + "/rooms?search_term=tea")
    assert [x["room_id"] for x in r["rooms"]] == [small]
    r = await admin.get(V1 + f"/rooms/{quote(big)}")
    assert r["creator"] == "@alice:test.local" and r["join_rules"] == "public" and r["version"]
    r = await admin.get(V1 + f"/rooms/{quote(big)}/members")
    assert r.body == {"members": ["@alice:test.local", "@bob:test.local"], "total": 2}
    r = await admin.get(V1 + "/rooms/!nope:test.local")
    assert r.status == 404 and r["errcode"] == "M_NOT_FOUND"


async def test_delete_room_kicks_blocks_and_purges(server: HomeServer, http: aiohttp.ClientSession,
                                                   alice: ApiClient, bob: ApiClient) -> None:
    admin = await make_admin(server, http)
    room = await _room_with(alice, bob)
    for i in range(5):
        await alice.put(f"rooms/{quote(room)}/send/m.room.message/d{i}", {"msgtype": "m.text", "body": str(i)})
    assert server.services is not None
    db = server.services.db
    # rows of the tables added after the purge was written (a partial-state
    # join, a state reset, a key backup, a relayed event, a /hierarchy page)
    await db.execute("INSERT INTO partial_state_rooms (room_id, join_event_id, servers, started_ts)"
                     " VALUES ($1, '$join', ARRAY['remote.test'], 0)", room)
    await db.execute("INSERT INTO room_state_resets (room_id, stream_pos) VALUES ($1, 1)", room)
    await db.execute("INSERT INTO remote_invite_state (event_id, room_id, state_json) VALUES ('$inv', $1, '[]')",
                     room)
    await db.execute("INSERT INTO federation_relay (event_id, room_id, created_ts) VALUES ('$rel', $1, 0)", room)
    await db.execute("INSERT INTO hierarchy_pages (token, user_id, room_id, suggested_only, max_depth, walk,"
                     " created_ts) VALUES ('tok', '@alice:test.local', $1, false, 1, '{}', 0)", room)
    await db.execute("INSERT INTO e2e_room_keys (user_id, version, room_id, session_id, first_message_index,"
                     " forwarded_count, is_verified, session_data) VALUES ('@alice:test.local', 1, $1, 's', 0, 0,"
                     " false, '{}')", room)
    r = await admin.delete(V2 + f"/rooms/{quote(room)}", {"block": True, "purge": True})
    assert r.status == 200
    status = await _done(admin, V2 + f"/rooms/delete_status/{r['delete_id']}")
    assert status["status"] == "complete", status
    assert status["room_id"] == room
    # no row of the room is left in any table with a room_id column (found in
    # information_schema, so a table added later is covered) but the block
    # and the deletion's own job
    tables = [x["table_name"] for x in await db.fetch(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND column_name = 'room_id' AND table_name IN (SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE')")]
    assert "room_state_resets" in tables
    left = {t: n for t in tables if t not in ("blocked_rooms", "admin_jobs")
            if (n := await db.fetchval(f'SELECT count(*) FROM "{t}" WHERE room_id = $1', room))}
    assert left == {}
    assert sorted(status["shutdown_room"]["kicked_users"]) == ["@alice:test.local", "@bob:test.local"]
    assert status["shutdown_room"]["local_aliases"] == ["#coffee:test.local"]
    r = await admin.get(V2 + f"/rooms/{quote(room)}/delete_status")
    assert [x["delete_id"] for x in r["results"]] == [status["delete_id"]]
    # out, gone and blocked
    assert (await admin.get(V1 + f"/rooms/{quote(room)}")).status == 404
    sync = (await bob.get("sync")).body
    assert room not in sync.get("rooms", {}).get("join", {})
    r = await bob.post(f"join/{quote(room)}", {})
    assert r.status in (403, 404)
    assert (await alice.get("directory/room/%23coffee:test.local")).status == 404


async def test_delete_without_purge_blocks_joins(server: HomeServer, http: aiohttp.ClientSession,
                                                 alice: ApiClient, bob: ApiClient) -> None:
    admin = await make_admin(server, http)
    room = await _room_with(alice)
    r = await admin.delete(V2 + f"/rooms/{quote(room)}", {"block": True, "purge": False})
    status = await _done(admin, V2 + f"/rooms/delete_status/{r['delete_id']}")
    assert status["status"] == "complete" and status["shutdown_room"]["kicked_users"] == ["@alice:test.local"]
    r = await bob.post(f"join/{quote(room)}", {})
    assert r.status == 403 and "blocked" in r["error"]
    r = await admin.delete(V2 + f"/rooms/{quote(room)}", {"block": "yes"})
    assert r.status == 400 and r["errcode"] == "M_BAD_JSON"
    assert (await admin.get(V2 + "/rooms/delete_status/unknown")).status == 404


async def test_purge_history(server: HomeServer, http: aiohttp.ClientSession, alice: ApiClient) -> None:
    admin = await make_admin(server, http)
    room = await _room_with(alice)
    ids = []
    for i in range(6):
        r = await alice.put(f"rooms/{quote(room)}/send/m.room.message/p{i}", {"msgtype": "m.text", "body": f"m{i}"})
        ids.append(r["event_id"])
    # without delete_local_events only remote users' events go (Synapse's rule): none here
    r = await admin.post(V1 + f"/purge_history/{quote(room)}", {"purge_up_to_event_id": ids[4]})
    assert (await _done(admin, V1 + f"/purge_history_status/{r['purge_id']}"))["status"] == "complete"
    r = await alice.get(f"rooms/{quote(room)}/messages?dir=b&limit=50", validate=False)
    assert len([e for e in r["chunk"] if e["type"] == "m.room.message"]) == 6
    r = await admin.post(V1 + f"/purge_history/{quote(room)}/{quote(ids[4])}", {"delete_local_events": True})
    assert r.status == 200
    assert (await _done(admin, V1 + f"/purge_history_status/{r['purge_id']}"))["status"] == "complete"
    r = await alice.get(f"rooms/{quote(room)}/messages?dir=b&limit=50", validate=False)
    bodies = [e["content"].get("body") for e in r["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["m5", "m4"]  # the state (create, members, ...) stays
    assert any(e["type"] == "m.room.create" for e in r["chunk"])
    # the room still works
    r = await alice.put(f"rooms/{quote(room)}/send/m.room.message/after", {"msgtype": "m.text", "body": "after"})
    assert r.status == 200
    r = await admin.post(V1 + f"/purge_history/{quote(room)}", {})
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM"
    r = await admin.post(V1 + f"/purge_history/{quote(room)}", {"purge_up_to_event_id": "$nope"})
    assert r.status == 404


async def test_a_deletion_left_by_a_dead_instance_is_resumed(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """The job's state is in the database: a job claimed by an instance that
    is gone (no liveness lease) is taken up by a live one."""
    first = await start_server()
    admin = await make_admin(first, http)
    alice = ApiClient(f"http://127.0.0.1:{first.client_port}", http, validate=False)
    await alice.register("alice")
    room = await _room_with(alice)
    assert first.services is not None
    await first.services.jobs.stop()  # this instance will not run it
    store = AdminJobStore(first.services.db)
    await store.create("resume-me", "delete_room", room, {"requester": admin.user_id, "block": True,
                                                         "purge": True}, "shutting_down", 0)
    assert await store.claim("main/dead-instance") is not None  # held by an instance with no lease
    second = await start_server(COFFEECHAT_INSTANCE_NAME="second")
    admin2 = ApiClient(f"http://127.0.0.1:{second.client_port}", http, validate=False)
    admin2.token = admin.token
    status = await _done(admin2, V2 + "/rooms/delete_status/resume-me")
    assert status["status"] == "complete" and status["shutdown_room"]["kicked_users"] == ["@alice:test.local"]
