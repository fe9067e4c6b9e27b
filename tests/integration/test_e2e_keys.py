"""/keys/upload, /keys/query, /keys/claim and /keys/changes with real
ed25519 signatures; bad keys and bad signatures are refused with Matrix
errors and store nothing."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import aiohttp

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer
from .e2e_helpers import DeviceKeys
from .room_helpers import create_room, invite_and_join, q


async def test_upload_device_keys_and_one_time_keys(alice: ApiClient) -> None:
    dev = DeviceKeys(alice)
    r = await dev.upload(device_keys=dev.device_keys(), one_time_keys=dev.one_time_keys(5))
    assert r.status == 200, r
    assert r["one_time_key_counts"] == {"signed_curve25519": 5}
    # an empty upload answers the counts
    r = await alice.post("keys/upload", {})
    assert r.status == 200 and r["one_time_key_counts"] == {"signed_curve25519": 5}
    # the legacy r0 path too
    r = await alice.post("/_matrix/client/r0/keys/upload", {})
    assert r.status == 200 and r["one_time_key_counts"] == {"signed_curve25519": 5}


async def test_query_returns_signed_keys_with_display_name(alice: ApiClient, bob: ApiClient) -> None:
    dev = DeviceKeys(alice)
    keys = dev.device_keys()
    assert (await dev.upload(device_keys=keys)).status == 200
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: []}})
    assert r.status == 200, r
    got = r["device_keys"][alice.user_id][alice.device_id]
    assert got["signatures"] == keys["signatures"] and got["keys"] == keys["keys"]
    assert got["unsigned"]["device_display_name"]
    # a specific device, an unknown device, an unknown local user, a remote user
    r = await bob.post("keys/query", {"device_keys": {
        alice.user_id: ["NOSUCHDEVICE"], "@nobody:test.local": [], "@x:elsewhere.example": [],
    }})
    assert r.status == 200
    assert r["device_keys"][alice.user_id] == {}
    assert r["device_keys"]["@nobody:test.local"] == {}
    assert "elsewhere.example" in r["failures"]


async def test_bad_signature_is_refused_and_nothing_stored(alice: ApiClient, bob: ApiClient) -> None:
    dev = DeviceKeys(alice)
    keys = dev.device_keys()
    sig = keys["signatures"][alice.user_id][f"ed25519:{alice.device_id}"]
    keys["signatures"][alice.user_id][f"ed25519:{alice.device_id}"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    r = await dev.upload(device_keys=keys, one_time_keys=dev.one_time_keys(3))
    assert r.status == 400 and r["errcode"] == "M_INVALID_SIGNATURE", r
    # content changed after signing
    keys = dev.device_keys()
    keys["algorithms"] = ["m.olm.v1.curve25519-aes-sha2"]
    r = await dev.upload(device_keys=keys)
    assert r.status == 400 and r["errcode"] == "M_INVALID_SIGNATURE", r
    # no signature at all
    keys = dev.device_keys()
    del keys["signatures"]
    r = await dev.upload(device_keys=keys)
    assert r.status == 400, r
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: []}})
    assert r["device_keys"][alice.user_id] == {}
    assert (await alice.post("keys/upload", {}))["one_time_key_counts"] == {}


async def test_keys_for_another_user_or_device_are_refused(alice: ApiClient, bob: ApiClient) -> None:
    bob_dev = DeviceKeys(bob)
    r = await alice.post("keys/upload", {"device_keys": bob_dev.device_keys()})
    assert r.status == 400 and r["errcode"] == "M_BAD_JSON", r
    dev = DeviceKeys(alice)
    dev.device_id = "OTHERDEVICE"
    r = await alice.post("keys/upload", {"device_keys": dev.device_keys()})
    assert r.status == 400 and r["errcode"] == "M_BAD_JSON", r


async def test_malformed_key_objects(alice: ApiClient) -> None:
    dev = DeviceKeys(alice)
    bad_bodies = [
        {"one_time_keys": {"no-colon": "abc"}},
        {"one_time_keys": {"signed_curve25519:A": 5}},
        {"one_time_keys": {"signed_curve25519:A": {"nokey": "x"}}},
        {"one_time_keys": "x"},
        {"fallback_keys": {"signed_curve25519:A": {"key": "a"}, "signed_curve25519:B": {"key": "b"}}},
        {"device_keys": {"user_id": alice.user_id}},
        {"device_keys": {**dev.device_keys(), "keys": {}}},
        {"device_keys": {**dev.device_keys(), "keys": {"ed25519:X": 1}}},
        {"one_time_keys": {"signed_curve25519:A": {"key": "x", "n": 10**30}}},
    ]
    for body in bad_bodies:
        r = await alice.post("keys/upload", body)
        assert r.status == 400 and r["errcode"].startswith("M_"), (body, r)
    assert (await alice.post("keys/upload", {}))["one_time_key_counts"] == {}


async def test_reupload_of_a_key_id_with_other_content_is_refused(alice: ApiClient) -> None:
    dev = DeviceKeys(alice)
    otks = dev.one_time_keys(2)
    assert (await dev.upload(one_time_keys=otks)).status == 200
    # the same keys again: accepted, counted once
    r = await dev.upload(one_time_keys=otks)
    assert r.status == 200 and r["one_time_key_counts"] == {"signed_curve25519": 2}
    key_id = next(iter(otks))
    changed = {key_id: {"key": "different"}, **dev.one_time_keys(1)}
    r = await dev.upload(one_time_keys=changed)
    assert r.status == 400 and r["errcode"] == "M_INVALID_PARAM", r
    # nothing of the refused upload was stored
    assert (await alice.post("keys/upload", {}))["one_time_key_counts"] == {"signed_curve25519": 2}


async def test_claim_hands_out_each_key_once_then_the_fallback(alice: ApiClient, bob: ApiClient) -> None:
    dev = DeviceKeys(alice)
    otks = dev.one_time_keys(2)
    fallback = dev.one_time_keys(1, fallback=True)
    r = await dev.upload(device_keys=dev.device_keys(), one_time_keys=otks, fallback_keys=fallback)
    assert r.status == 200
    want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    got = []
    for _ in range(2):
        r = await bob.post("keys/claim", want)
        assert r.status == 200, r
        got.append(r["one_time_keys"][alice.user_id][alice.device_id])
    assert sorted(k for g in got for k in g) == sorted(otks)
    s = await alice.get("sync")
    assert s["device_one_time_keys_count"].get("signed_curve25519", 0) == 0
    assert s["device_unused_fallback_key_types"] == ["signed_curve25519"]
    for _ in range(2):  # the fallback key, as often as needed
        r = await bob.post("keys/claim", want)
        assert r["one_time_keys"][alice.user_id][alice.device_id] == fallback
    s = await alice.get("sync")
    assert s["device_unused_fallback_key_types"] == []
    # unknown device, unknown user, remote user
    r = await bob.post("keys/claim", {"one_time_keys": {
        alice.user_id: {"NOSUCH": "signed_curve25519"}, "@x:elsewhere.example": {"D": "signed_curve25519"},
    }})
    assert r.status == 200 and r["one_time_keys"] == {} and "elsewhere.example" in r["failures"]


async def test_concurrent_claims_of_the_last_key(alice: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    dev = DeviceKeys(alice)
    otks = dev.one_time_keys(3)
    await dev.upload(device_keys=dev.device_keys(), one_time_keys=otks)
    claimers = []
    for i in range(12):
        c = new_client()
        await c.register(f"claimer{i}")
        claimers.append(c)
    want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    results = await asyncio.gather(*(c.post("keys/claim", want) for c in claimers))
    claimed = [k for r in results for k in r["one_time_keys"].get(alice.user_id, {}).get(alice.device_id, {})]
    assert sorted(claimed) == sorted(otks)  # each key exactly once, nobody got a duplicate


async def test_keys_changes_and_sync_device_lists(alice: ApiClient, bob: ApiClient, carol: ApiClient) -> None:
    room = await create_room(alice)
    await invite_and_join(alice, bob, room)
    since = (await alice.get("sync"))["next_batch"]
    bob_dev = DeviceKeys(bob)
    await bob_dev.upload(device_keys=bob_dev.device_keys())
    carol_dev = DeviceKeys(carol)  # shares no room with alice
    await carol_dev.upload(device_keys=carol_dev.device_keys())
    s = await alice.get("sync", params={"since": since})
    assert s["device_lists"]["changed"] == [bob.user_id], s.body
    r = await alice.get("keys/changes", params={"from": since, "to": s["next_batch"]})
    assert r.status == 200 and r["changed"] == [bob.user_id] and r["left"] == []
    # bob leaves: left; carol joins: changed (newly shares a room)
    since = s["next_batch"]
    await invite_and_join(alice, carol, room)
    assert (await bob.post(f"rooms/{q(room)}/leave", {})).status == 200
    s = await alice.get("sync", params={"since": since})
    assert s["device_lists"]["changed"] == [carol.user_id], s.body
    assert s["device_lists"]["left"] == [bob.user_id], s.body
    bad = await alice.get("keys/changes", params={"from": "garbage", "to": since})
    assert bad.status == 400


async def test_device_changes_reach_peers(alice: ApiClient, bob: ApiClient, new_client: Callable[[], ApiClient]) -> None:
    room = await create_room(alice)
    await invite_and_join(alice, bob, room)
    since = (await alice.get("sync"))["next_batch"]
    # a new login of bob's
    second = new_client()
    r = await second.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                                    "password": "correct horse battery"}, token=None)
    assert r.status == 200
    second.token, second.user_id, second.device_id = r["access_token"], r["user_id"], r["device_id"]
    s = await alice.get("sync", params={"since": since, "timeout": "10000"})
    assert bob.user_id in s["device_lists"]["changed"]
    dev = DeviceKeys(second)
    await dev.upload(device_keys=dev.device_keys(), one_time_keys=dev.one_time_keys(2))
    since = s["next_batch"]
    # logout: the device, its keys and its one-time keys go
    assert (await second.post("logout", {})).status == 200
    s = await alice.get("sync", params={"since": since, "timeout": "10000"})
    assert bob.user_id in s["device_lists"]["changed"]
    r = await alice.post("keys/query", {"device_keys": {bob.user_id: []}})
    assert second.device_id not in r["device_keys"][bob.user_id]
    r = await alice.post("keys/claim", {"one_time_keys": {bob.user_id: {second.device_id: "signed_curve25519"}}})
    assert r["one_time_keys"] == {}


async def test_long_poll_wakes_on_peer_key_upload(alice: ApiClient, bob: ApiClient) -> None:
    room = await create_room(alice)
    await invite_and_join(alice, bob, room)
    since = (await alice.get("sync"))["next_batch"]
    waiting = asyncio.ensure_future(alice.get("sync", params={"since": since, "timeout": "30000"}))
    await asyncio.sleep(0.3)
    dev = DeviceKeys(bob)
    await dev.upload(device_keys=dev.device_keys())
    s = await asyncio.wait_for(waiting, 25)
    assert s["device_lists"]["changed"] == [bob.user_id]


async def test_concurrent_claims_on_two_instances(start_server: StartServer, http: aiohttp.ClientSession) -> None:
    """Two server instances on one database: every one-time key is handed
    out exactly once, then everyone gets the fallback key."""
    one, two = await start_server(), await start_server()
    urls = [f"http://127.0.0.1:{hs.client_port}" for hs in (one, two)]
    alice = ApiClient(urls[0], http)
    await alice.register("alice")
    dev = DeviceKeys(alice)
    otks = dev.one_time_keys(10)
    fallback = dev.one_time_keys(1, fallback=True)
    await dev.upload(device_keys=dev.device_keys(), one_time_keys=otks, fallback_keys=fallback)
    claimers = []
    for i in range(24):
        c = ApiClient(urls[i % 2], http)
        await c.register(f"claimer{i}")
        claimers.append(c)
    want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    results = await asyncio.gather(*(c.post("keys/claim", want) for c in claimers))
    got = [r["one_time_keys"][alice.user_id][alice.device_id] for r in results]
    claimed = [k for g in got for k in g if k in otks]
    assert sorted(claimed) == sorted(otks)
    assert sum(1 for g in got if g == fallback) == len(claimers) - len(otks)


def otk_count(body: Any) -> int:
    return int(body["device_one_time_keys_count"].get("signed_curve25519", 0))


async def test_incremental_syncs_follow_key_changes_made_through_another_instance(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """A device's syncs on one instance report the one-time key counts and
    fallback key types as claims and uploads through another instance change
    them, sync after sync (a sync reuses the counts the previous one reported
    only while the stream holds no change of the user's keys)."""
    one, two = await start_server(), await start_server()
    alice = ApiClient(f"http://127.0.0.1:{one.client_port}", http)
    await alice.register("alice")
    bob = ApiClient(f"http://127.0.0.1:{two.client_port}", http)
    await bob.register("bob")
    dev = DeviceKeys(alice)
    fallback = dev.one_time_keys(1, fallback=True)
    r = await dev.upload(device_keys=dev.device_keys(), one_time_keys=dev.one_time_keys(3), fallback_keys=fallback)
    assert r.status == 200, r
    s = await alice.get("sync")
    assert otk_count(s) == 3 and s["device_unused_fallback_key_types"] == ["signed_curve25519"]
    s = await alice.get("sync", params={"since": s["next_batch"]})
    assert otk_count(s) == 3
    want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    for left in (2, 1, 0):
        r = await bob.post("keys/claim", want)
        assert r.status == 200 and r["one_time_keys"][alice.user_id][alice.device_id], r
        s = await alice.get("sync", params={"since": s["next_batch"]})
        assert otk_count(s) == left, s.body
        assert s["device_unused_fallback_key_types"] == ["signed_curve25519"]
    r = await bob.post("keys/claim", want)
    assert r["one_time_keys"][alice.user_id][alice.device_id] == fallback
    s = await alice.get("sync", params={"since": s["next_batch"]})
    assert otk_count(s) == 0 and s["device_unused_fallback_key_types"] == [], s.body
    # new keys, uploaded through the other instance
    dev.api = ApiClient(f"http://127.0.0.1:{two.client_port}", http)
    dev.api.token, dev.api.user_id, dev.api.device_id = alice.token, alice.user_id, alice.device_id
    r = await dev.upload(one_time_keys=dev.one_time_keys(4), fallback_keys=dev.one_time_keys(1, fallback=True))
    assert r.status == 200 and r["one_time_key_counts"] == {"signed_curve25519": 4}, r
    s = await alice.get("sync", params={"since": s["next_batch"]})
    assert otk_count(s) == 4 and s["device_unused_fallback_key_types"] == ["signed_curve25519"], s.body


async def test_a_run_of_syncs_counts_the_keys_once_until_they_change(
    server: HomeServer, alice: ApiClient, bob: ApiClient, new_client: Callable[[], ApiClient]
) -> None:
    """Syncs one after another, each from the previous answer's position,
    count the device's keys once while they do not change; a claim is
    counted at the next sync. A device id that comes back (a login naming
    it after a logout) has no keys, also for a sync from a token of the
    device's earlier session."""
    assert server.services is not None
    reads = server.services.e2e.keys._counts
    dev = DeviceKeys(alice)
    await dev.upload(device_keys=dev.device_keys(), one_time_keys=dev.one_time_keys(2))
    room = await create_room(alice)
    await invite_and_join(alice, bob, room)
    s = await alice.get("sync")
    before = reads.calls
    for i in range(3):
        r = await bob.put(f"rooms/{q(room)}/send/m.room.message/t{i}", {"msgtype": "m.text", "body": f"hi {i}"})
        assert r.status == 200, r
        s = await alice.get("sync", params={"since": s["next_batch"], "timeout": "10000"})
        assert otk_count(s) == 2 and s["rooms"]["join"][room]["timeline"]["events"]
    assert reads.calls == before
    r = await bob.post("keys/claim", {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}})
    assert r["one_time_keys"][alice.user_id][alice.device_id], r
    s = await alice.get("sync", params={"since": s["next_batch"]})
    assert otk_count(s) == 1 and reads.calls == before + 1
    # the device goes with its keys; a login gives its id back
    old_since = s["next_batch"]
    assert (await alice.post("logout", {})).status == 200
    again = new_client()
    r = await again.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                                   "password": "correct horse battery", "device_id": alice.device_id}, token=None)
    assert r.status == 200 and r["device_id"] == alice.device_id, r
    again.token, again.user_id, again.device_id = r["access_token"], r["user_id"], r["device_id"]
    s = await again.get("sync", params={"since": old_since})
    assert otk_count(s) == 0, s.body


async def test_what_stock_clients_call_at_login(alice: ApiClient) -> None:
    """The E2EE calls Element, Hydrogen, matrix-js-sdk and nio make while
    loading a session, on both prefixes: none fails the session load."""
    dev = DeviceKeys(alice)
    for prefix in ("/_matrix/client/v3", "/_matrix/client/r0"):
        r = await alice.post(f"{prefix}/keys/upload", {"device_keys": dev.device_keys(),
                                                       "one_time_keys": dev.one_time_keys(1)})
        assert r.status == 200 and "one_time_key_counts" in r.body, r
        r = await alice.post(f"{prefix}/keys/query", {"device_keys": {alice.user_id: []}, "timeout": 10000})
        assert r.status == 200 and alice.device_id in r["device_keys"][alice.user_id]
        r = await alice.get(f"{prefix}/room_keys/version")
        assert r.status == 404 and r["errcode"] == "M_NOT_FOUND"  # "no backup yet", which clients expect
        r = await alice.get(f"{prefix}/sync")
        assert r.status == 200 and "device_one_time_keys_count" in r.body
    # optional features answer M_UNRECOGNIZED (clients treat that as "not supported")
    for path in ("/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
                 "/_matrix/client/v1/dehydrated_device"):
        r = await alice.get(path, validate=False)
        assert r.status == 404 and r["errcode"] == "M_UNRECOGNIZED", r
