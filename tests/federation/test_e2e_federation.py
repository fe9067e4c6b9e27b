"""End-to-end encryption across two coffeechat-home servers on loopback
over TLS: a client's /keys/query and /keys/claim for a user of the other
server (one-time key handed out once, then the fallback key), the
federation routes answered only for our own users, GET /user/devices, and
the EDU handlers and builders fed with real data from the other server
(the handlers run in this process against one server's database, the
resync goes to the other server over federation)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, AsyncIterator, Mapping
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from coffeechat_home.errors import MatrixError
from coffeechat_home.federation.client import FederationClient, RemoteError
from coffeechat_home.services.accounts import Requester
from coffeechat_home.services.e2e.federation import E2EFederation
from coffeechat_home.services.e2e.remote_keys import RemoteKeys, checked_device_keys
from coffeechat_home.services.e2e.to_device import ToDeviceService
from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.accounts import AccountStore
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.edu_outbox import OutboundEdu
from coffeechat_home.storage.e2e_keys import E2EKeyStore
from coffeechat_home.storage.remote_device_lists import RemoteDeviceListStore
from coffeechat_home.storage.stream import StreamStore
from coffeechat_home.storage.to_device import ToDeviceStore

from ..conftest import HAVE_SPEC
from ..helpers import ApiClient
from ..spec_validation import validate_response
from ..integration.e2e_helpers import CrossSigningKey, DeviceKeys
from ..pg import PostgresForTests
from .peers import FederatingServer, federating_servers

pytestmark = pytest.mark.federation

LOOPBACK = ["127.0.0.0/8"]


@pytest.fixture
async def pair(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "fe2e", 2) as servers:
        yield servers[0], servers[1]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def user_with_keys(http: aiohttp.ClientSession, server: FederatingServer, name: str,
                         one_time: int = 1) -> tuple[ApiClient, DeviceKeys, dict[str, CrossSigningKey]]:
    api = ApiClient(server.client_url, http)
    await api.register(name)
    dev = DeviceKeys(api)
    r = await dev.upload(device_keys=dev.device_keys(), one_time_keys=dev.one_time_keys(one_time),
                         fallback_keys=dev.one_time_keys(1, fallback=True))
    assert r.status == 200, r
    assert api.user_id is not None
    cs = {u: CrossSigningKey(api.user_id, u) for u in ("master", "self_signing", "user_signing")}
    r = await api.post("keys/device_signing/upload", {
        "master_key": cs["master"].unsigned(),
        "self_signing_key": cs["master"].sign(cs["self_signing"].unsigned()),
        "user_signing_key": cs["master"].sign(cs["user_signing"].unsigned()),
    })
    assert r.status == 200, r
    return api, dev, cs


def client_of(server: FederatingServer) -> FederationClient:
    """A federation client signing as ``server`` (its real key)."""
    return FederationClient(server.server_name, server.signing_key(), allow_private_addresses=LOOPBACK,
                            verify_certificates=False)


async def test_keys_query_and_claim_across_servers(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice, alice_dev, alice_cs = await user_with_keys(http, a, "alice")
    bob = ApiClient(b.client_url, http)
    await bob.register("bob")
    assert alice.user_id and alice.device_id

    # bob (on B) queries alice (on A): B asks A over federation
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: []}, "timeout": 20000})
    assert r.status == 200, r
    assert r["failures"] == {}
    got = r["device_keys"][alice.user_id][alice.device_id]
    uploaded = alice_dev.device_keys()
    assert got["keys"] == uploaded["keys"] and got["signatures"] == uploaded["signatures"]
    assert r["master_keys"][alice.user_id]["keys"] == alice_cs["master"].unsigned()["keys"]
    assert r["self_signing_keys"][alice.user_id]["keys"] == alice_cs["self_signing"].unsigned()["keys"]
    assert alice.user_id not in r.body.get("user_signing_keys", {})
    # asking for one device only, and for an unknown one
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: ["NOPE"]}})
    assert r.status == 200 and r["device_keys"] == {alice.user_id: {}}, r

    # claims: the one-time key once, then the fallback key (again and again)
    want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    first = await bob.post("keys/claim", want)
    assert first.status == 200 and first["failures"] == {}, first
    (key_id, key), = first["one_time_keys"][alice.user_id][alice.device_id].items()
    assert "fallback" not in key and key_id.startswith("signed_curve25519:")
    for _ in range(2):
        again = await bob.post("keys/claim", want)
        assert again.status == 200, again
        (key_id2, key2), = again["one_time_keys"][alice.user_id][alice.device_id].items()
        assert key_id2 != key_id and key2.get("fallback") is True
    counts = (await alice.post("keys/upload", {}))["one_time_key_counts"]
    assert counts.get("signed_curve25519", 0) == 0

    # an unreachable server (nothing listens on loopback port 1) is a failure, the rest answers
    gone = "@carol:localhost:1"
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: [], gone: []}, "timeout": 5000})
    assert r.status == 200, r
    assert set(r["failures"]) == {"localhost:1"} and alice.device_id in r["device_keys"][alice.user_id]
    r = await bob.post("keys/claim", {"one_time_keys": {gone: {"D": "signed_curve25519"}}, "timeout": 5000})
    assert r.status == 200 and set(r["failures"]) == {"localhost:1"}, r
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: [], "@x:bad host": []}})
    assert r.status == 200 and r["failures"] == {} and "@x:bad host" not in r["device_keys"], r
    r = await bob.post("keys/query", {"device_keys": {alice.user_id: []}, "timeout": "soon"})
    assert r.status == 400 and r["errcode"] == "M_BAD_JSON", r


async def test_federation_routes_only_for_our_users(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice, alice_dev, alice_cs = await user_with_keys(http, a, "alice")
    assert alice.user_id and alice.device_id
    client = client_of(b)  # B's real key; A fetches it from B to check the requests
    try:
        path = "/_matrix/federation/v1/user/devices/" + quote(alice.user_id, safe="")
        answer = await client.get_json(a.server_name, path)
        assert answer["user_id"] == alice.user_id and isinstance(answer["stream_id"], int)
        assert answer["stream_id"] > 0
        (device,) = answer["devices"]
        assert device["device_id"] == alice.device_id
        assert device["keys"]["signatures"] == alice_dev.device_keys()["signatures"]
        assert answer["master_key"]["keys"] == alice_cs["master"].unsigned()["keys"]
        assert answer["self_signing_key"]["keys"] == alice_cs["self_signing"].unsigned()["keys"]
        assert "user_signing_key" not in answer
        if HAVE_SPEC:
            validate_response("GET", path, 200, answer, api="server-server")

        query_path = "/_matrix/federation/v1/user/keys/query"
        answer = await client.post_json(a.server_name, query_path, {"device_keys": {alice.user_id: []}})
        assert set(answer) == {"device_keys", "master_keys", "self_signing_keys"}
        assert list(answer["device_keys"][alice.user_id]) == [alice.device_id]
        if HAVE_SPEC:
            validate_response("POST", query_path, 200, answer, api="server-server")
        claim_path = "/_matrix/federation/v1/user/keys/claim"
        want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
        first = await client.post_json(a.server_name, claim_path, want)
        second = await client.post_json(a.server_name, claim_path, want)
        (k1, v1), = first["one_time_keys"][alice.user_id][alice.device_id].items()
        (k2, v2), = second["one_time_keys"][alice.user_id][alice.device_id].items()
        assert k1 != k2 and "fallback" not in v1 and v2["fallback"] is True
        if HAVE_SPEC:
            validate_response("POST", claim_path, 200, first, api="server-server")

        # users of other servers, and local users that do not exist
        stranger = f"@stranger:{b.server_name}"
        refused = [
            ("GET", "/_matrix/federation/v1/user/devices/" + quote(stranger, safe=""), None, 400),
            ("POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": {stranger: []}}, 400),
            ("POST", "/_matrix/federation/v1/user/keys/claim",
             {"one_time_keys": {stranger: {"D": "signed_curve25519"}}}, 400),
            ("POST", "/_matrix/federation/v1/user/keys/query", {"device_keys": "x"}, 400),
            ("GET", "/_matrix/federation/v1/user/devices/" + quote(f"@nobody:{a.server_name}", safe=""),
             None, 404),
        ]
        for method, p, body, status in refused:
            with pytest.raises(RemoteError) as e:
                await client.request_json(method, a.server_name, p, body=body)
            assert e.value.status == status, (p, e.value)
            assert e.value.errcode in ("M_INVALID_PARAM", "M_BAD_JSON", "M_NOT_FOUND"), (p, e.value)
    finally:
        await client.close()
    # unsigned: refused before anything is looked at
    async with http.post(a.fed_url + "/_matrix/federation/v1/user/keys/query", ssl=False,
                         json={"device_keys": {alice.user_id: []}}) as resp:
        assert resp.status == 401 and (await resp.json())["errcode"] == "M_UNAUTHORIZED"


def test_remote_device_keys_checked_before_served() -> None:
    """A device key whose self-signature fails, or that names another user
    or device, is dropped from what another server answered."""
    from signedjson.key import encode_verify_key_base64, generate_signing_key
    from signedjson.sign import sign_json

    key = generate_signing_key("DEV")
    good = sign_json({"user_id": "@u:remote", "device_id": "DEV", "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                      "keys": {"ed25519:DEV": encode_verify_key_base64(key.verify_key), "curve25519:DEV": "abc"}},
                     "@u:remote", key)
    tampered = copy.deepcopy(good)
    tampered["keys"]["curve25519:DEV"] = "abd"
    assert checked_device_keys("@u:remote", {"DEV": good}) == {"DEV": good}
    assert checked_device_keys("@u:remote", {"DEV": tampered}) == {}
    assert checked_device_keys("@u:remote", {"OTHER": good}) == {}
    assert checked_device_keys("@v:remote", {"DEV": good}) == {}
    assert checked_device_keys("@u:remote", "junk") == {}


async def in_process(server: FederatingServer, remote: bool = True) -> tuple[E2EFederation, Database, FederationClient]:
    """E2EFederation of ``server`` run in this process on its database, its
    outbound requests signed with its key."""
    db = await Database.connect(server.database_url, min_size=1, max_size=3)
    stream = StreamStore(db)
    client = client_of(server)
    fed = E2EFederation(
        db, E2EKeyStore(db, stream), ToDeviceStore(db, stream), RemoteDeviceListStore(db, stream), Notifier(stream),
        server.server_name, AccountStore(db).user_exists, RemoteKeys(client) if remote else None,
    )
    return fed, db, client


async def test_edus_built_on_one_server_applied_on_the_other(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice = ApiClient(a.client_url, http)
    await alice.register("alice")
    bob, bob_dev, bob_cs = await user_with_keys(http, b, "bob")
    assert alice.user_id and alice.device_id and bob.user_id and bob.device_id
    on_a, db_a, client_a = await in_process(a)
    on_b, db_b, client_b = await in_process(b)
    try:
        # -- m.device_list_update: B builds it for bob's device, A applies it
        (edu,) = await on_b.device_list_edus(bob.user_id, [bob.device_id], [a.server_name, b.server_name])
        assert (edu.destination, edu.edu_type) == (a.server_name, "m.device_list_update")
        content = edu.content
        assert content["keys"]["keys"] == bob_dev.device_keys()["keys"] and content["prev_id"]
        # A never saw bob's earlier ids: a gap, so A resyncs through GET /user/devices on B
        assert await on_a.on_device_list_update(b.server_name, content) == "resynced"
        seen = await on_a.remote_lists.seen_ids(bob.user_id)
        assert content["stream_id"] in seen
        assert await on_a.on_device_list_update(b.server_name, content) == "duplicate"
        # bob logs in a second device: the next update names the last one as prev_id
        second = ApiClient(b.client_url, http)
        r = await second.post("login", {"type": "m.login.password", "identifier": {"type": "m.id.user",
                              "user": "bob"}, "password": "correct horse battery"}, token=None)
        assert r.status == 200, r
        (edu2,) = await on_b.device_list_edus(bob.user_id, [r["device_id"]], [a.server_name])
        assert edu2.content["prev_id"] == [content["stream_id"]]
        assert "keys" not in edu2.content and "deleted" not in edu2.content
        assert await on_a.on_device_list_update(b.server_name, edu2.content) == "applied"
        # an update after one A missed: resync again
        missed = dict(edu2.content, stream_id=edu2.content["stream_id"] + 10,
                      prev_id=[edu2.content["stream_id"] + 5])
        assert await on_a.on_device_list_update(b.server_name, missed) == "resynced"
        changes = await a.db_fetch("SELECT count(*) AS n FROM device_list_changes WHERE user_id = $1", bob.user_id)
        assert changes[0]["n"] == 3
        # a user of another server than the origin, and malformed updates
        for bad in ({**content, "user_id": alice.user_id}, {**content, "stream_id": "1"},
                    {**content, "prev_id": ["x"]}, "junk"):
            with pytest.raises(MatrixError):
                await on_a.on_device_list_update(b.server_name, bad)
        # without a way to resync (federation off) the user is still marked changed
        offline, db_off, client_off = await in_process(a, remote=False)
        try:
            assert await offline.on_device_list_update(
                b.server_name, dict(content, user_id=f"@zed:{b.server_name}")) == "resync_failed"
        finally:
            await db_off.close()
            await client_off.close()

        # -- m.direct_to_device: bob's message to alice, stored once by message_id
        payload = {"algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": {"x": {"type": 0, "body": "opaque"}}}
        # bob's /sendToDevice on B (its service run here on B's database):
        # remote recipients go to the EDU builder a federation sender plugs in
        sending = ToDeviceService(ToDeviceStore(db_b, StreamStore(db_b)), Notifier(StreamStore(db_b)), b.server_name)
        bob_req = Requester(bob.user_id, bob.device_id, False, "")
        messages = {alice.user_id: {alice.device_id: payload}, bob.user_id: {bob.device_id: {"note": "to self"}}}
        with pytest.raises(MatrixError) as refused:  # no sender plugged in: refused as before
            await sending.send(bob_req, "m.room.encrypted", "txn-0", messages)
        assert refused.value.errcode == "M_UNRECOGNIZED"
        edus: list[OutboundEdu] = []

        def build(sender: str, event_type: str, message_id: str, remote: Mapping[str, Any]) -> list[OutboundEdu]:
            # kept here rather than queued in B's outbox (B's own sender would deliver them)
            edus.extend(on_b.to_device_edus(sender, event_type, message_id, remote))
            return []

        sending.remote_edus = build
        for _ in range(2):  # a retried request (same txn id) builds the same EDU (same message_id)
            await sending.send(bob_req, "m.room.encrypted", "txn-1", messages)
        assert [(e.destination, e.edu_type) for e in edus] == [(a.server_name, "m.direct_to_device")] * 2
        assert edus[0] == edus[1]
        # a big send is split into EDUs of about 64 KiB, each with its own message_id
        big = {alice.user_id: {f"D{i}": {"ciphertext": "x" * 1000} for i in range(150)}}
        parts = on_b.to_device_edus(bob.user_id, "m.room.encrypted", "mid", big)
        assert [p.content["message_id"] for p in parts] == ["mid", "mid.1", "mid.2"]
        assert sorted(d for p in parts for d in p.content["messages"][alice.user_id]) == sorted(big[alice.user_id])
        assert all(len(orjson.dumps(p.content)) < 70_000 for p in parts)
        assert on_b.to_device_edus(bob.user_id, "m.x", "m2", {"@no:bad server": {"D": {}}, "@x": {"D": {}}}) == []
        assert edus[0].content["messages"] == {alice.user_id: {alice.device_id: payload}}
        bob_sync = await bob.get("sync", params={"timeout": "0"})
        assert [e["content"] for e in bob_sync["to_device"]["events"]] == [{"note": "to self"}]
        assert await on_a.on_direct_to_device(b.server_name, edus[0].content) == 1
        assert await on_a.on_direct_to_device(b.server_name, edus[0].content) == 0  # same message_id
        with pytest.raises(MatrixError):  # the sender is not a user of the origin
            await on_a.on_direct_to_device(a.server_name + "x", edus[0].content)
        r = await alice.get("sync", params={"timeout": "0"})
        events = r["to_device"]["events"]
        assert events == [{"sender": bob.user_id, "type": "m.room.encrypted", "content": payload}], events

        # -- m.signing_key_update: bob's cross-signing keys as B sends them
        (sku,) = await on_b.signing_key_edus(bob.user_id, [a.server_name])
        assert "user_signing_key" not in sku.content
        assert await on_a.on_signing_key_update(b.server_name, sku.content) is True
        forged = copy.deepcopy(sku.content)
        forged["self_signing_key"] = CrossSigningKey(bob.user_id, "master").sign(
            bob_cs["self_signing"].unsigned())
        with pytest.raises(MatrixError):
            await on_a.on_signing_key_update(b.server_name, forged)
        with pytest.raises(MatrixError):
            await on_a.on_signing_key_update(a.server_name, sku.content)
    finally:
        for d in (db_a, db_b):
            await d.close()
        for c in (client_a, client_b):
            await c.close()
