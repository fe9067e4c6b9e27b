"""Two coffeechat-home servers on loopback over TLS: key fetching and
caching, X-Matrix request verification, notary answers, key rotation, and
client profile/alias reads that go to the other server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest

from coffeechat_home.federation.client import FederationClient
from coffeechat_home.protocol.request_auth import format_header, parse_header, sign_request
from coffeechat_home.protocol.errors import SignatureError
from coffeechat_home.protocol.pdu import check_received_pdu
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.signing import (
    decode_verify_key, generate_signing_key, hash_and_sign_event, verify_json_signature,
)
from coffeechat_home.services.server_keys import KeyStore, KeyUnavailable, LocalKeys
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.server_keys import ServerKeyStore

from ..integration.processes import User
from ..pg import PostgresForTests
from .peers import LOOPBACK, FederatingServer, federating_servers, new_database, signed_federation_get

pytestmark = pytest.mark.federation



@pytest.fixture
async def pair(pg: PostgresForTests, pg_template: str, tmp_path: Path) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    async with federating_servers(pg, pg_template, tmp_path, "fed", 2) as servers:
        yield servers[0], servers[1]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


PROFILE = "/_matrix/federation/v1/query/profile?user_id="


async def test_signed_requests_verified_and_keys_cached(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice = await User(http, a.client_url).register("alice")
    status, _ = await alice.call("PUT", f"profile/{quote(alice.user_id)}/displayname", {"displayname": "Alice A"})
    assert status == 200
    path = PROFILE + quote(alice.user_id)
    b_key = b.signing_key()

    # a request signed by B's key: A fetches B's key from B and accepts it
    status, body = await signed_federation_get(http, a.fed_url, path, origin=b.server_name,
                                               destination=a.server_name, key=b_key)
    assert (status, body) == (200, {"displayname": "Alice A"}), body
    rows = await a.db_fetch("SELECT key_id, valid_until_ts FROM remote_server_keys WHERE server_name = $1",
                            b.server_name)
    assert [r["key_id"] for r in rows] == [f"ed25519:{b_key.version}"]
    assert rows[0]["valid_until_ts"] > time.time() * 1000

    good = sign_request("GET", path, b.server_name, a.server_name, b_key)
    parsed = parse_header(good)
    bad_cases = {
        "missing header": "",
        "bad signature": format_header(parsed.__class__(parsed.origin, parsed.destination, parsed.key_id,
                                                        parsed.signature[:-4] + "AAAA")),
        "wrong destination": sign_request("GET", path, b.server_name, b.server_name, b_key),
        "signed for another path": sign_request("GET", path + "x", b.server_name, a.server_name, b_key),
        "unknown key": sign_request("GET", path, b.server_name, a.server_name, generate_signing_key("nope")),
        "key of another server": sign_request("GET", path, b.server_name, a.server_name,
                                              generate_signing_key(b_key.version)),
        "not X-Matrix": "Bearer abc",
    }
    for case, header in bad_cases.items():
        status, body = await signed_federation_get(http, a.fed_url, path, origin=b.server_name,
                                                   destination=a.server_name, key=b_key, authorization=header)
        assert status == 401, (case, body)
        assert body["errcode"] == "M_UNAUTHORIZED", (case, body)

    # unknown federation routes, and the unauthenticated version route
    status, body = await signed_federation_get(http, a.fed_url, "/_matrix/federation/v1/nope", origin=b.server_name,
                                               destination=a.server_name, key=b_key)
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
    async with http.get(a.fed_url + "/_matrix/federation/v1/version", ssl=False) as r:
        assert r.status == 200 and (await r.json())["server"]["name"] == "coffeechat-home"
    # delegation served (federation on), on both listeners
    for url in (a.client_url, a.fed_url):
        async with http.get(url + "/.well-known/matrix/server", ssl=False) as r:
            assert (r.status, await r.json()) == (200, {"m.server": f"localhost:{a.fed_port}"})


async def test_profile_and_alias_across_servers(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    alice = await User(http, a.client_url).register("alice")
    bob = await User(http, b.client_url).register("bob")
    await bob.call("PUT", f"profile/{quote(bob.user_id)}/displayname", {"displayname": "Bob B"})
    status, room = await bob.call("POST", "createRoom", {})
    assert status == 200, room
    alias = f"#lobby:{b.server_name}"
    status, _ = await bob.call("PUT", f"directory/room/{quote(alias)}", {"room_id": room["room_id"]})
    assert status == 200

    # A asks B (signed by A); B fetches A's key from A to check it
    status, body = await alice.call("GET", f"profile/{quote(bob.user_id)}")
    assert (status, body) == (200, {"displayname": "Bob B"})
    status, body = await alice.call("GET", f"profile/{quote(bob.user_id)}/displayname")
    assert (status, body) == (200, {"displayname": "Bob B"})
    status, body = await alice.call("GET", f"profile/{quote(bob.user_id)}/avatar_url")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await alice.call("GET", f"profile/{quote('@nobody:' + b.server_name)}")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    a_key = a.signing_key()
    rows = await b.db_fetch("SELECT key_id FROM remote_server_keys WHERE server_name = $1", a.server_name)
    assert [r["key_id"] for r in rows] == [f"ed25519:{a_key.version}"]

    status, body = await alice.call("GET", f"directory/room/{quote(alias)}")
    assert status == 200, body
    assert body["room_id"] == room["room_id"] and b.server_name in body["servers"]
    status, body = await alice.call("GET", f"directory/room/{quote('#none:' + b.server_name)}")
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"

    # a server that is not there: 502, not a 500
    gone = f"localhost:{a.fed_port + 1 if a.fed_port < 65000 else 1025}"
    status, body = await alice.call("GET", f"profile/{quote('@x:' + gone)}")
    assert status == 502 and body["errcode"] == "M_UNKNOWN", body


async def test_key_server_notary_and_rotation(
    pair: tuple[FederatingServer, FederatingServer], http: aiohttp.ClientSession,
    pg: PostgresForTests, pg_template: str,
) -> None:
    a, b = pair
    async with http.get(b.fed_url + "/_matrix/key/v2/server", ssl=False) as r:
        own = await r.json()
    b_key_id = f"ed25519:{b.signing_key().version}"
    assert own["server_name"] == b.server_name and list(own["verify_keys"]) == [b_key_id]
    assert own["old_verify_keys"] == {}
    assert own["valid_until_ts"] > time.time() * 1000
    b_verify = decode_verify_key(b_key_id, own["verify_keys"][b_key_id]["key"])
    verify_json_signature(own, b.server_name, b_verify, b_key_id)

    # A as notary for B: B's own response, countersigned by A
    async with http.post(a.fed_url + "/_matrix/key/v2/query", ssl=False,
                         json={"server_keys": {b.server_name: {}}}) as r:
        assert r.status == 200
        answer = await r.json()
    [doc] = answer["server_keys"]
    assert doc["verify_keys"] == own["verify_keys"]
    verify_json_signature(doc, b.server_name, b_verify, b_key_id)
    async with http.get(a.fed_url + "/_matrix/key/v2/server", ssl=False) as r:
        a_own = await r.json()
    [(a_key_id, a_entry)] = a_own["verify_keys"].items()
    verify_json_signature(doc, a.server_name, decode_verify_key(a_key_id, a_entry["key"]), a_key_id)
    async with http.get(a.fed_url + f"/_matrix/key/v2/query/{b.server_name}", ssl=False) as r:
        assert [d["verify_keys"] for d in (await r.json())["server_keys"]] == [own["verify_keys"]]
    async with http.post(a.fed_url + "/_matrix/key/v2/query", ssl=False, json={"server_keys": "x"}) as r:
        assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON"

    # an object B signed before the rotation
    before = {"what": "signed before rotation"}
    from coffeechat_home.protocol.signing import sign_json

    old_key = b.signing_key()
    signed_before = sign_json(before, b.server_name, old_key)
    t_before = int(time.time() * 1000)

    await b.stop()
    code, out = await b.run_command("rotate-signing-key")
    assert code == 0, out
    await b.start()
    new_key = b.signing_key()
    new_key_id = f"ed25519:{new_key.version}"
    assert new_key_id != b_key_id
    async with http.get(b.fed_url + "/_matrix/key/v2/server", ssl=False) as r:
        rotated = await r.json()
    assert list(rotated["verify_keys"]) == [new_key_id]
    assert rotated["old_verify_keys"][b_key_id]["key"] == own["verify_keys"][b_key_id]["key"]
    expired_ts = rotated["old_verify_keys"][b_key_id]["expired_ts"]
    assert t_before <= expired_ts <= time.time() * 1000

    # a fresh key store (its own empty cache) checks old and new signatures
    url = await new_database(pg, pg_template)
    db = await Database.connect(url, min_size=1, max_size=2)
    client = FederationClient("verifier.test", generate_signing_key("v"), allow_private_addresses=LOOPBACK.split(","),
                              verify_certificates=False)
    try:
        store = KeyStore(ServerKeyStore(db), LocalKeys("verifier.test", generate_signing_key("v")), client, [])
        await store.verify_json_signature(signed_before, b.server_name, b_key_id, t_before)
        with pytest.raises(KeyUnavailable):
            await store.verify_json_signature(signed_before, b.server_name, b_key_id, expired_ts + 1)
        signed_after = sign_json({"what": "after"}, b.server_name, new_key)
        await store.verify_json_signature(signed_after, b.server_name, new_key_id, int(time.time() * 1000))
        # events: signed by the old key before the rotation, checked at their origin_server_ts
        rv = get_room_version("11")
        pdu = hash_and_sign_event({
            "type": "m.room.message", "room_id": "!r:" + b.server_name, "sender": "@u:" + b.server_name,
            "content": {"body": "hi"}, "origin_server_ts": t_before, "depth": 3, "prev_events": [],
            "auth_events": [],
        }, b.server_name, old_key, rv)
        await store.verify_event_signature(pdu, b.server_name, rv, t_before)
        with pytest.raises(KeyUnavailable):
            await store.verify_event_signature(pdu, b.server_name, rv, expired_ts + 1)
        received = check_received_pdu(pdu, rv, await store.key_lookup_for_pdu(pdu, rv))
        assert not received.redacted
        tampered = dict(pdu, content={"body": "changed"}, origin_server_ts=t_before + 1)
        with pytest.raises(SignatureError):
            await store.verify_event_signature(tampered, b.server_name, rv, t_before)
    finally:
        await client.close()
        await db.close()

    # A, which cached B's old key as current, learns the new one on demand
    alice = await User(http, a.client_url).register("alice")
    path = PROFILE + quote(alice.user_id)
    status, body = await signed_federation_get(http, a.fed_url, path, origin=b.server_name,
                                               destination=a.server_name, key=new_key)
    assert status == 200, body


async def test_dev_mode_makes_a_self_signed_certificate(
    pg: PostgresForTests, pg_template: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server = FederatingServer(await new_database(pg, pg_template), tmp_path / "dev", COFFEECHAT_DEV_MODE="true")
    for name in ("COFFEECHAT_FEDERATION_LISTENER_TLS_CERTIFICATE_PATH", "COFFEECHAT_FEDERATION_LISTENER_TLS_PRIVATE_KEY_PATH"):
        del server.env[name]
    try:
        await server.start()
        async with http.get(server.fed_url + "/_matrix/key/v2/server", ssl=False) as r:
            assert r.status == 200 and (await r.json())["server_name"] == server.server_name
        assert (server.data_dir / "federation-selfsigned.crt").exists()
    finally:
        await server.stop()
