"""End-to-end encryption between two coffeechat-home servers (real
processes on loopback, TLS), through the federation sender's persisted EDU
outbox: to-device messages reach the other server's user exactly once,
also when the sending server is killed -9 before it could deliver them;
matrix-nio[e2e] users on the two servers hold a Megolm conversation both
ways, and a second device logging in later (device-list update over
federation) gets the room key and decrypts new messages."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import aiohttp
import nio
import pytest

from coffeechat_home.crash_points import ENV as CRASH_ENV
from coffeechat_home.protocol.hashing import compute_event_id
from coffeechat_home.protocol.room_versions import KNOWN_ROOM_VERSIONS
from coffeechat_home.protocol.signing import hash_and_sign_event

from ..integration.processes import User, wait_until
from ..interop.test_nio_e2ee import ENCRYPTION, Inbox, _send, _tick, _until
from ..interop.nio_helpers import nio_user
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers, send_transaction

pytestmark = pytest.mark.federation

SCHEMA = Path(__file__).resolve().parents[2] / "schema"

SHORT_RETRY = {"COFFEECHAT_FEDERATION_DESTINATION_MIN_RETRY_MS": "300",
               "COFFEECHAT_FEDERATION_DESTINATION_MAX_RETRY_MS": "2000"}
METRICS = {"COFFEECHAT_METRICS_ENABLED": "true"}  # coffeechat_sync_waiting: a long-poll is parked


@pytest.fixture(scope="module")
async def pair(pg: PostgresForTests, pg_template: str,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    tmp = tmp_path_factory.mktemp("e2e-across")
    async with federating_servers(pg, pg_template, tmp, "e2ex", 2, **SHORT_RETRY, **METRICS) as servers:
        yield servers[0], servers[1]


async def to_device_events(user: User, since: str | None) -> tuple[list[dict[str, Any]], str]:
    body = await user.sync(since)
    return list(body.get("to_device", {}).get("events", [])), str(body["next_batch"])


async def only_device(user: User) -> str:
    """The id of the user's device (one: registered, never logged in again)."""
    status, devices = await user.call("GET", "devices")
    assert status == 200 and len(devices["devices"]) == 1, devices
    return str(devices["devices"][0]["device_id"])


async def test_to_device_across_servers_and_outbox_survives_kill9(
    pair: tuple[FederatingServer, FederatingServer],
) -> None:
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice_td")
        bob = await User(http, b.client_url).register("bob_td")
        bob_device = await only_device(bob)
        _, since = await to_device_events(bob, None)

        # -- delivered once through the outbox; a retried request sends nothing again
        content = {"n": 1, "body": "opaque"}
        for _ in range(2):
            status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-1",
                                            {"messages": {bob.user_id: {bob_device: content}}})
            assert status == 200, body
        got: list[dict[str, Any]] = []

        async def arrived() -> bool:
            nonlocal since
            events, since = await to_device_events(bob, since)
            got.extend(events)
            return bool(got)

        assert await wait_until(arrived, 30), a.process.stderr()[-3000:]
        assert got == [{"sender": alice.user_id, "type": "m.test.secret", "content": content}]
        assert await a.db_fetch("SELECT * FROM federation_edu_outbox") == []  # acknowledged: deleted

        # -- B down: the message waits in A's outbox; A killed -9; both back
        await b.stop()
        status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-2",
                                        {"messages": {bob.user_id: {"*": {"n": 2}}}})
        assert status == 200, body

        async def failed_once() -> bool:
            rows = await a.db_fetch("SELECT retry_count FROM federation_destinations WHERE destination = $1",
                                    b.server_name)
            return bool(rows) and rows[0]["retry_count"] > 0

        assert await wait_until(failed_once, 30)
        queued = await a.db_fetch("SELECT destination, edu_type, content FROM federation_edu_outbox")
        assert [(r["destination"], r["edu_type"]) for r in queued] == [(b.server_name, "m.direct_to_device")]
        await a.process.kill9()
        await b.start()
        await a.start()
        alice, bob = alice.on(a.client_url), bob.on(b.client_url)
        got.clear()
        assert await wait_until(arrived, 30), a.process.stderr()[-3000:]
        assert got == [{"sender": alice.user_id, "type": "m.test.secret", "content": {"n": 2}}]

        async def outbox_empty() -> bool:
            return await a.db_fetch("SELECT 1 FROM federation_edu_outbox") == []

        assert await wait_until(outbox_empty, 30)
        # exactly once: nothing more arrives (the next sync is empty)
        events, since = await to_device_events(bob, since)
        assert events == []
        # a remote user's device that does not exist gets nothing
        status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-3",
                                        {"messages": {bob.user_id: {"NODEVICE": {"n": 3}}}})
        assert status == 200, body
        assert await wait_until(outbox_empty, 30)
        events, since = await to_device_events(bob, since)
        assert events == []

        # -- a server that talks to us ends its backoff: B down, A's send
        # fails and A backs off for an hour; B back, bob sends A something:
        # A sends what waited at once instead of an hour later
        await b.stop()
        status, body = await alice.call("PUT", "sendToDevice/m.test.secret/txn-4",
                                        {"messages": {bob.user_id: {"*": {"n": 4}}}})
        assert status == 200, body
        assert await wait_until(failed_once, 30)
        hour_ms = 3_600_000
        await a.db_fetch(
            "UPDATE federation_destinations SET retry_until_ts = retry_until_ts + $2 WHERE destination = $1",
            b.server_name, hour_ms,
        )
        await b.start()
        bob = bob.on(b.client_url)
        status, body = await bob.call("PUT", "sendToDevice/m.test.reply/txn-b1",
                                      {"messages": {alice.user_id: {"*": {"hello": "a"}}}})
        assert status == 200, body
        got.clear()
        assert await wait_until(arrived, 30), "A kept backing off although B talked to it"
        assert got == [{"sender": alice.user_id, "type": "m.test.secret", "content": {"n": 4}}]


async def test_device_change_reaches_the_other_server_after_a_crash_right_after_its_commit(
    pair: tuple[FederatingServer, FederatingServer],
) -> None:
    """A new login of alice's on A commits its device-list change; A dies
    (crash point) before the post-commit step queued the EDU. The change
    was left to announce in its own transaction: after A's restart B hears
    of it (B records a device-list change of alice for its users: the
    update applied, or the resync it caused), without any further change of
    alice's."""
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice_dl")
        bob = await User(http, b.client_url).register("bob_dl")
        status, body = await alice.call("POST", "createRoom", {"invite": [bob.user_id]})
        assert status == 200, body
        room_id = body["room_id"]

        async def bob_joined() -> bool:
            status, _ = await bob.call("POST", f"join/{quote(room_id)}", {})
            return status == 200

        assert await wait_until(bob_joined, 30), b.process.stderr()[-3000:]

        async def bob_at_a() -> bool:
            status, body = await alice.call("GET", f"rooms/{quote(room_id)}/joined_members")
            return status == 200 and bob.user_id in body["joined"]

        assert await wait_until(bob_at_a, 30), a.process.stderr()[-3000:]

        # B knows nothing of alice's devices so far
        assert await b.db_fetch("SELECT 1 FROM device_list_changes WHERE user_id = $1", alice.user_id) == []

        # A dies right after the new device's change committed
        a.env[CRASH_ENV] = "device_list_committed"
        try:
            await a.stop()
            await a.start()
            alice = alice.on(a.client_url)  # (a new client port)
            try:
                await alice.call("POST", "login", {
                    "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice_dl"},
                    "password": "a password", "device_id": "CRASHPHONE",
                })
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # the server died under the request
            assert a.process.proc is not None
            assert await asyncio.wait_for(a.process.proc.wait(), 30) == 137
        finally:
            del a.env[CRASH_ENV]
        await a.start()
        alice = alice.on(a.client_url)
        status, devices = await alice.call("GET", "devices")
        assert status == 200 and "CRASHPHONE" in {d["device_id"] for d in devices["devices"]}, devices
        a_pos = (await a.db_fetch("SELECT max(stream_pos) AS p FROM device_list_changes WHERE user_id = $1",
                                  alice.user_id))[0]["p"]

        async def b_heard() -> bool:  # applied, or a resync (done, or failed: then marked for a later fetch)
            return bool(await b.db_fetch("SELECT 1 FROM device_list_changes WHERE user_id = $1", alice.user_id))

        assert await wait_until(b_heard, 30), "B never heard of alice's new device"
        seen = await b.db_fetch("SELECT stream_id FROM e2e_remote_device_list_ids WHERE user_id = $1",
                                alice.user_id)
        assert {r["stream_id"] for r in seen} <= {a_pos}, seen  # nothing but the change's id, if any
        assert await a.db_fetch("SELECT 1 FROM device_list_outbound") == []

        async def b_reaches_a() -> bool:  # B's backoff towards A (down a while) over, for the next tests
            status, body = await bob.call("POST", "keys/query", {"device_keys": {alice.user_id: []}})
            return status == 200 and not body.get("failures")

        assert await wait_until(b_reaches_a, 30)


async def test_members_already_in_a_remote_room_share_it_for_device_lists(
    pair: tuple[FederatingServer, FederatingServer],
) -> None:
    """alice and carol (A) are in the room before bob (B) joins it: B
    learns of them only from the join's state (outliers). bob's client must
    still be told to track their devices (device_lists.changed on the
    join), hear of carol's new device later (/sync and /keys/changes), and
    see alice in device_lists.left once she leaves. None of the three
    happened while only members with a stream position of their own
    counted as sharing a room."""
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice_pre")
        carol = await User(http, a.client_url).register("carol_pre")
        bob = await User(http, b.client_url).register("bob_pre")
        since = (await bob.sync())["next_batch"]
        status, room = await alice.call("POST", "createRoom", {"invite": [bob.user_id, carol.user_id]})
        assert status == 200, room
        room_id = room["room_id"]
        status, body = await carol.call("POST", f"join/{quote(room_id, safe='')}", {})
        assert status == 200, body

        async def invited() -> bool:
            return room_id in (await bob.sync(since)).get("rooms", {}).get("invite", {})

        assert await wait_until(invited, 30)
        status, body = await bob.call("POST", f"join/{quote(room_id, safe='')}", {})
        assert status == 200, body
        joined: dict[str, Any] = {}

        async def shown() -> bool:  # (joined with a partial state: shown once its members are in)
            nonlocal joined
            joined = await bob.sync(since)
            return room_id in joined.get("rooms", {}).get("join", {})

        assert await wait_until(shown, 30), joined
        assert {alice.user_id, carol.user_id} <= set(joined.get("device_lists", {}).get("changed", [])), joined
        # a database from before the fix (no rows for them) gets them from migration 0036, at bob's join
        rows_of = "SELECT user_id, stream_pos FROM room_memberships WHERE room_id = $1 ORDER BY user_id"
        fixed = await b.db_fetch(rows_of, room_id)
        await b.db_fetch("DELETE FROM room_memberships WHERE room_id = $1 AND user_id <> $2", room_id, bob.user_id)
        await b.db_fetch((SCHEMA / "0036_memberships_of_joined_state.sql").read_text())
        assert await b.db_fetch(rows_of, room_id) == fixed and len(fixed) == 4, fixed  # (bob: invite, join)

        # carol's new device: told through /sync and /keys/changes
        since = joined["next_batch"]
        status, body = await User(http, a.client_url).call("POST", "login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol_pre"},
            "password": "a password", "device_id": "CAROLPHONE",
        })
        assert status == 200, body
        changed: list[str] = []

        async def told() -> bool:
            nonlocal changed
            changed = (await bob.sync(since)).get("device_lists", {}).get("changed", [])
            return carol.user_id in changed

        assert await wait_until(told, 30), (changed, b.process.stderr()[-3000:])
        upto = (await bob.sync(since))["next_batch"]
        status, body = await bob.call("GET", f"keys/changes?from={since}&to={upto}")
        assert status == 200 and carol.user_id in body["changed"], body
        status, body = await bob.call("POST", "keys/query", {"device_keys": {carol.user_id: []}})
        assert status == 200, body

        # alice leaves: bob no longer shares a room with her
        since = upto
        status, body = await alice.call("POST", f"rooms/{quote(room_id, safe='')}/leave", {})
        assert status == 200, body
        left: list[str] = []

        async def gone() -> bool:
            nonlocal left
            left = (await bob.sync(since)).get("device_lists", {}).get("left", [])
            return alice.user_id in left

        assert await wait_until(gone, 30), left
        assert carol.user_id not in left


async def test_sync_of_a_room_joined_over_federation_carries_its_state(
    pair: tuple[FederatingServer, FederatingServer],
) -> None:
    """The join is the room's first event in the joiner's stream: the
    state before it (from send_join) still comes in /sync (it did not,
    so clients never saw m.room.encryption or the other members)."""
    a, b = pair
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice_st")
        bob = await User(http, b.client_url).register("bob_st")
        since = (await bob.sync())["next_batch"]
        status, room = await alice.call("POST", "createRoom", {"invite": [bob.user_id], "initial_state": [ENCRYPTION]})
        assert status == 200, room
        room_id = room["room_id"]

        async def invited() -> bool:
            return room_id in (await bob.sync(since)).get("rooms", {}).get("invite", {})

        assert await wait_until(invited, 30)
        status, body = await bob.call("POST", f"join/{quote(room_id, safe='')}", {})
        assert status == 200, body

        async def shown() -> bool:  # (joined with a partial state: shown once its members are in)
            return room_id in (await bob.sync(since)).get("rooms", {}).get("join", {})

        assert await wait_until(shown, 30)
        # A's sender may deliver bob's invite after the join (it is an event
        # about a user of B): B has it as an outlier in the join's auth chain
        # and must leave it there, not fetch its ancestors and put the room's
        # first events into bob's timeline after his join (it did: the state
        # section then lacked m.room.encryption)
        (invite,) = await a.db_fetch("SELECT event_id, pdu FROM events WHERE room_id = $1 AND type = 'm.room.member'"
                                     " AND state_key = $2 AND membership = 'invite'", room_id, bob.user_id)
        answer = await send_transaction(a, b, f"again-{invite['event_id']}", [json.loads(invite["pdu"])])
        assert answer == {invite["event_id"]: {}}, answer
        timeline_rows = await b.db_fetch("SELECT type FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL",
                                         room_id)
        assert [r["type"] for r in timeline_rows] == ["m.room.member"], timeline_rows  # bob's join alone
        for sync in (await bob.sync(since), await bob.sync()):  # incremental and initial
            joined = sync["rooms"]["join"][room_id]
            state = {(e["type"], e["state_key"]): e for e in joined["state"]["events"]}
            timeline = [(e["type"], e.get("state_key")) for e in joined["timeline"]["events"]]
            assert ("m.room.member", bob.user_id) in timeline
            assert state[("m.room.encryption", "")]["content"] == ENCRYPTION["content"]
            assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
            assert ("m.room.create", "") in state and ("m.room.member", bob.user_id) not in state


async def parked_long_polls(http: aiohttp.ClientSession, server: FederatingServer) -> int:
    async with http.get(f"{server.client_url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return int(float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("coffeechat_sync_waiting "))))


async def test_a_room_key_sent_with_its_message_reaches_sync_no_later_than_the_message(
    pair: tuple[FederatingServer, FederatingServer],
) -> None:
    """A sender batches a to-device message carrying a room key (sent
    first) and the Megolm message it opens into one transaction. A client
    decrypts an event when its sync brings it (matrix-nio does not try
    again when the key comes later), so a sync woken by the message must
    have the key, in it or before it. The message was stored first and
    alice's long-poll woke without the key: the Megolm test across two
    servers failed now and then with "never saw bob's reply"."""
    a, b = pair
    rv = KNOWN_ROOM_VERSIONS["10"]
    async with aiohttp.ClientSession() as http:
        alice = await User(http, a.client_url).register("alice_key_order")
        bob = await User(http, b.client_url).register("bob_key_order")
        alice_device = await only_device(alice)
        status, room = await alice.call("POST", "createRoom", {"preset": "public_chat", "room_version": "10"})
        assert status == 200, room
        room_id = room["room_id"]
        status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
        assert status == 200, body

        async def state_at_a() -> dict[tuple[str, str], str]:
            return {(r["type"], r["state_key"]): r["event_id"] for r in await a.db_fetch(
                "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id)}

        async def bob_joined_at_a() -> bool:
            return ("m.room.member", bob.user_id) in await state_at_a()

        assert await wait_until(bob_joined_at_a, 30)
        state = await state_at_a()
        auth = [state[k] for k in (("m.room.create", ""), ("m.room.power_levels", ""),
                                   ("m.room.member", bob.user_id))]
        since = (await alice.sync())["next_batch"]
        for i in range(3):  # the order used to be lost most of the time, not every time
            (last,) = await a.db_fetch("SELECT event_id, depth FROM events WHERE room_id = $1 "
                                       "ORDER BY depth DESC LIMIT 1", room_id)
            message = hash_and_sign_event({
                "room_id": room_id, "sender": bob.user_id, "type": "m.room.encrypted",
                "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": f"opaque {i}",
                            "session_id": f"session {i}", "sender_key": "k", "device_id": "BOBDEVICE"},
                "prev_events": [last["event_id"]], "auth_events": auth, "depth": last["depth"] + 1,
                "origin_server_ts": int(time.time() * 1000),
            }, b.server_name, b.signing_key(), rv)
            message_id = compute_event_id(message, rv)
            key = {"edu_type": "m.direct_to_device", "content": {
                "sender": bob.user_id, "type": "m.room.encrypted", "message_id": f"key-order-{i}",
                "messages": {alice.user_id: {alice_device: {"room key": f"session {i}"}}}}}
            poll = asyncio.create_task(alice.sync(since, timeout_ms=20_000))
            try:
                async def parked() -> bool:
                    return await parked_long_polls(http, a) == 1

                assert await wait_until(parked, 30, interval=0.02)
                answer = await send_transaction(b, a, f"key-order-{i}", [message], [key])
                assert answer == {message_id: {}}, answer
                keys_seen = brought = False
                for _ in range(3):  # the key's and the message's wake-ups, and one of something else
                    synced = await poll
                    since = synced["next_batch"]
                    keys_seen = keys_seen or any(e["content"] == {"room key": f"session {i}"}
                                                 for e in synced.get("to_device", {}).get("events", []))
                    timeline = synced.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {})
                    brought = any(e["event_id"] == message_id for e in timeline.get("events", []))
                    if brought:
                        break
                    poll = asyncio.create_task(alice.sync(since, timeout_ms=20_000))
                assert brought, f"round {i}: the message never came"
                assert keys_seen, f"round {i}: the sync that brought the message had no key before it"
            finally:
                if not poll.done():
                    poll.cancel()


# -- real E2EE clients (matrix-nio[e2e]: Olm and Megolm through vodozemac) ----------

async def _encrypted_room_across(alice: nio.AsyncClient, bob: nio.AsyncClient) -> str:
    """An m.room.encryption room of alice's that bob (another server) joins."""
    created = await alice.room_create(name="Secret beans", invite=[bob.user_id], initial_state=[ENCRYPTION])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = str(created.room_id)
    await _until([alice, bob], lambda: room_id in bob.invited_rooms, "the invite")
    joined = await bob.join(room_id)
    assert isinstance(joined, nio.JoinResponse), joined
    await _until(
        [bob, alice],
        lambda: all(room_id in c.rooms and c.rooms[room_id].encrypted
                    and {alice.user_id, bob.user_id} <= set(c.rooms[room_id].users) for c in (alice, bob)),
        "an encrypted room with both members on both servers",
    )
    return room_id


async def _keys_changes(base_url: str, client: nio.AsyncClient, since: str, upto: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/_matrix/client/v3/keys/changes", params={"from": since, "to": upto},
                            headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            assert r.status == 200
            return dict(await r.json())


@pytest.mark.slow
async def test_megolm_conversation_across_two_servers(
    pair: tuple[FederatingServer, FederatingServer], tmp_path: Path,
) -> None:
    a, b = pair
    alice = await nio_user(a.client_url, tmp_path, "alice_x")
    bob = await nio_user(b.client_url, tmp_path, "bob_x")
    clients = [alice, bob]
    try:
        for c in clients:
            await _tick(c)
        room_id = await _encrypted_room_across(alice, bob)
        alice_inbox, bob_inbox = Inbox(alice, room_id), Inbox(bob, room_id)

        # both ways: keys queried and one-time keys claimed over federation,
        # the room keys sent as Olm to-device messages through the outbox
        early = [await _send(alice, room_id, "a secret from alice on A")]
        await _until([alice, bob], lambda: "a secret from alice on A" in bob_inbox.texts(), "alice's message at bob")
        early.append(await _send(bob, room_id, "a secret reply from bob on B"))
        await _until([bob, alice], lambda: "a secret reply from bob on B" in alice_inbox.texts(), "bob's reply")
        assert not bob_inbox.undecrypted() and not alice_inbox.undecrypted()
        for server in (a, b):  # ciphertext only on both servers
            rows = await server.db_fetch("SELECT type, pdu FROM events WHERE room_id = $1 AND type LIKE 'm.room.%'",
                                         room_id)
            assert not any("secret" in r["pdu"] for r in rows)
            assert sum(r["type"] == "m.room.encrypted" for r in rows) == 2

        # bob's second device logs in later on B: A hears of it (m.device_list_update),
        # alice's client re-queries, shares the room key with it, the phone decrypts
        before = alice.next_batch
        phone_store = tmp_path / "bob-phone"
        phone_store.mkdir()
        phone = nio.AsyncClient(b.client_url, bob.user_id, store_path=str(phone_store))
        clients.append(phone)
        assert isinstance(await phone.login("password of bob_x", device_name="phone"), nio.LoginResponse)
        phone_inbox = Inbox(phone, room_id)
        await _tick(phone)
        assert not phone.should_upload_keys
        await _until([phone, alice],
                     lambda: phone.device_id in alice.device_store[bob.user_id]
                     and bool(alice.device_store[bob.user_id][phone.device_id].curve25519),
                     "bob's phone and its keys at alice")
        changes = await _keys_changes(a.client_url, alice, before, alice.next_batch)
        assert bob.user_id in changes["changed"], changes
        await _send(alice, room_id, "after the phone")
        await _until([alice, bob, phone], lambda: "after the phone" in phone_inbox.texts(), "the message on the phone")
        await _until([alice, bob], lambda: "after the phone" in bob_inbox.texts(), "the message on the laptop")
        # only what was sent before it logged in stays closed to the phone
        assert {e.event_id for e in phone_inbox.undecrypted()} <= set(early)
        # A answers bob's keys from its cache now (no request to B), and it is current
        cached = await a.db_fetch("SELECT keys FROM e2e_remote_device_cache WHERE user_id = $1", bob.user_id)
        assert len(cached) == 1 and phone.device_id in cached[0]["keys"]
        alice.olm.users_for_key_query.add(bob.user_id)
        q = await alice.keys_query()
        assert isinstance(q, nio.KeysQueryResponse) and q.failures == {}, q
        assert set(q.device_keys[bob.user_id]) == {bob.device_id, phone.device_id}
        # the phone logs out: A hears of it, the cache is dropped, the device is gone from queries
        assert isinstance(await phone.logout(), nio.LogoutResponse)
        clients.remove(phone)
        await phone.close()

        async def phone_gone() -> bool:
            return await a.db_fetch("SELECT 1 FROM e2e_remote_device_cache WHERE user_id = $1", bob.user_id) == []

        assert await wait_until(phone_gone, 30)
        alice.olm.users_for_key_query.add(bob.user_id)
        q = await alice.keys_query()
        assert isinstance(q, nio.KeysQueryResponse) and set(q.device_keys[bob.user_id]) == {bob.device_id}, q

        # bob leaves, logs in a tablet while no room is shared (B tells A nothing), comes back:
        # A's cached copy from before must not be served (it was, missing the tablet)
        assert isinstance(await bob.room_leave(room_id), nio.RoomLeaveResponse)
        await _until([bob, alice], lambda: bob.user_id not in alice.rooms[room_id].users, "bob's leave at A")
        tablet_store = tmp_path / "bob-tablet"
        tablet_store.mkdir()
        tablet = nio.AsyncClient(b.client_url, bob.user_id, store_path=str(tablet_store))
        clients.append(tablet)
        assert isinstance(await tablet.login("password of bob_x", device_name="tablet"), nio.LoginResponse)
        await _tick(tablet)
        assert isinstance(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
        await _until([alice, bob], lambda: room_id in bob.invited_rooms, "the second invite")
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await _until([bob, alice], lambda: bob.user_id in alice.rooms[room_id].users, "bob back at A")
        alice.olm.users_for_key_query.add(bob.user_id)
        q = await alice.keys_query()
        assert isinstance(q, nio.KeysQueryResponse) and q.failures == {}, q
        assert set(q.device_keys[bob.user_id]) == {bob.device_id, tablet.device_id}
    finally:
        for c in clients:
            await c.close()
