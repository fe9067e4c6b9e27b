"""When we fetch a remote server's keys: a key id we have never seen (the
server has just rotated its key) is fetched at once even right after an
earlier fetch; key ids a flood of requests names (forged or not) cost at
most a few fetches of that server's keys per window."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from coffeechat_home.federation.client import FederationClient
from coffeechat_home.protocol.builder import build_event
from coffeechat_home.protocol.errors import SignatureError
from coffeechat_home.protocol.pdu import check_received_pdu
from coffeechat_home.protocol.room_versions import get_room_version
from coffeechat_home.protocol.signing import generate_signing_key, key_id_of, sign_json
from coffeechat_home.services.server_keys import FETCHES_PER_WINDOW, KeyStore, KeyUnavailable, LocalKeys
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.server_keys import ServerKeyStore, StoredKey

from .certs import make_certificate
from .peers import free_port
from .test_signed_bodies import db, serve  # noqa: F401  (the fixture)


async def test_a_rotated_key_is_fetched_at_once_and_floods_are_bounded(db: Database, tmp_path: Path) -> None:  # noqa: F811
    cert, key = make_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    port = free_port()
    remote = f"localhost:{port}"
    keys = {"current": generate_signing_key("k1")}
    hits: list[str] = []

    # the remote server's key server, publishing whichever key is current
    async def server_keys(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        local = LocalKeys(remote, keys["current"])
        return web.json_response(local.server_keys_response())

    app = web.Application()
    app.router.add_get("/_matrix/key/v2/server", server_keys)
    app.router.add_get("/_matrix/key/v2/server/{key_id}", server_keys)
    runner = await serve(app, port, tls)
    client = FederationClient("verifier.test", generate_signing_key("v"), allow_private_addresses=["127.0.0.0/8"],
                              verify_certificates=False)
    store = KeyStore(ServerKeyStore(db), LocalKeys("verifier.test", generate_signing_key("v")), client, [])
    try:
        first = sign_json({"n": 1}, remote, keys["current"])
        await store.verify_json_signature(first, remote, key_id_of(keys["current"]), _now())
        assert len(hits) == 1
        # the remote rotates; a request signed with the new key arrives at once
        keys["current"] = generate_signing_key("k2")
        second = sign_json({"n": 2}, remote, keys["current"])
        await store.verify_json_signature(second, remote, key_id_of(keys["current"]), _now())
        assert len(hits) == 2
        # a flood of key ids the remote never had: a bounded number of fetches
        for i in range(20):
            with pytest.raises(KeyUnavailable):
                await store.get_verify_key(remote, f"ed25519:forged{i}", _now())
        assert len(hits) <= FETCHES_PER_WINDOW, hits
        # and the same unknown key id again is not fetched again
        before = len(hits)
        with pytest.raises(KeyUnavailable):
            await store.get_verify_key(remote, "ed25519:forged0", _now())
        assert len(hits) == before
    finally:
        await client.close()
        await runner.cleanup()


def _now() -> int:
    import time

    return int(time.time() * 1000)


class _CountingKeyStore(ServerKeyStore):
    """The real store (real database), counting its key reads."""

    reads = 0

    async def get_key(self, server_name: str, key_id: str) -> StoredKey | None:
        self.reads += 1
        return await super().get_key(server_name, key_id)


async def test_a_batch_of_pdus_reads_each_key_once(db: Database, tmp_path: Path) -> None:  # noqa: F811
    """A send_join answer's thousands of PDUs: their signers' keys are read
    (or fetched) once per (server, key id), not once per PDU; each PDU's
    own time still decides (one signed after the key's validity fails), as
    do our own keys."""
    cert, key = make_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    port = free_port()
    remote = f"localhost:{port}"
    remote_key = generate_signing_key("k1")
    hits: list[str] = []

    async def server_keys(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return web.json_response(LocalKeys(remote, remote_key).server_keys_response())

    app = web.Application()
    app.router.add_get("/_matrix/key/v2/server", server_keys)
    app.router.add_get("/_matrix/key/v2/server/{key_id}", server_keys)
    runner = await serve(app, port, tls)
    ours_key = generate_signing_key("v")
    client = FederationClient("verifier.test", ours_key, allow_private_addresses=["127.0.0.0/8"],
                              verify_certificates=False)
    counting = _CountingKeyStore(db)
    store = KeyStore(counting, LocalKeys("verifier.test", ours_key), client, [])
    rv = get_room_version("11")

    def pdu(server: str, signing_key: Any, ts: int) -> dict[str, Any]:
        return dict(build_event(
            rv, template={"type": "m.room.message", "room_id": f"!room:{remote}", "sender": f"@u:{server}",
                          "content": {"body": str(ts)}},
            prev_events=[], auth_events=[], depth=1, origin_server_ts=ts, server_name=server,
            signing_key=signing_key,
        ).pdu)

    try:
        now = _now()
        batch = [pdu(remote, remote_key, now - i) for i in range(300)]
        batch.append(pdu("verifier.test", ours_key, now))
        late = pdu(remote, remote_key, now + 30 * 24 * 3600 * 1000)  # after the key's validity
        batch.append(late)
        lookups = await store.key_lookups_for_pdus(batch, rv)
        assert len(lookups) == len(batch)
        assert counting.reads <= 6, counting.reads  # a few per key, not one per PDU
        assert len(hits) <= 2, hits
        for p, lookup in zip(batch[:-1], lookups[:-1]):
            check_received_pdu(p, rv, lookup)
        with pytest.raises(SignatureError):
            check_received_pdu(late, rv, lookups[-1])
        # the same batch with the late PDU left out: no read at all (the
        # key store holds the usable key in memory since the first batch)
        counting.reads = 0
        lookups = await store.key_lookups_for_pdus(batch[:-1], rv)
        assert counting.reads == 0
        check_received_pdu(batch[0], rv, lookups[0])
    finally:
        await client.close()
        await runner.cleanup()
