"""E2EE keys across federation with Synapse, both ways, driven by real
matrix-nio[e2e] clients (keys made and checked by vodozemac): a client of
ours queries a Synapse user's device keys and claims a one-time key through
our server (which asks Synapse over federation), then builds an Olm session
with it; a Synapse client does the same with one of our users (Synapse asks
us). Delivering the Olm-encrypted to-device message itself waits for the
transaction sender (m.direct_to_device EDUs are built but not sent yet)."""

from __future__ import annotations

import itertools
from pathlib import Path

import aiohttp
import nio
from nio.crypto import InboundSession, OutboundSession
import pytest

from ..federation.peers import FederatingServer
from .synapse_peer import SynapsePeer
from .test_synapse_federation import peers, register_on_synapse  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.synapse, pytest.mark.slow]

_n = itertools.count()
PASSWORD = "a password"


async def nio_client(base_url: str, user_id: str, store: Path) -> nio.AsyncClient:
    store.mkdir()
    client = nio.AsyncClient(base_url, user_id, store_path=str(store))
    resp = await client.login(PASSWORD, device_name="nio")
    assert isinstance(resp, nio.LoginResponse), resp
    up = await client.keys_upload()
    assert isinstance(up, nio.KeysUploadResponse), up
    assert up.signed_curve25519_count > 0
    return client


async def olm_session_with(client: nio.AsyncClient, other: nio.AsyncClient) -> None:
    """``client`` queries ``other``'s device keys through its own server,
    claims a one-time key of that device and opens an Olm session."""
    client.olm.users_for_key_query.add(other.user_id)
    q = await client.keys_query()
    assert isinstance(q, nio.KeysQueryResponse), q
    assert q.failures == {}, q.failures
    device = client.device_store[other.user_id][other.device_id]
    assert device.ed25519 == other.olm.account.identity_keys["ed25519"]
    assert device.curve25519 == other.olm.account.identity_keys["curve25519"]
    assert not client.olm.session_store.get(device.curve25519)
    c = await client.keys_claim({other.user_id: [other.device_id]})
    assert isinstance(c, nio.KeysClaimResponse), c
    assert c.failures == {}, c.failures
    (key_id, key), = c.one_time_keys[other.user_id][other.device_id].items()
    assert key_id.startswith("signed_curve25519:")
    # nio checked the key's signature by the device and made the session;
    # its first message opens the session on the other device (handed over
    # here: to-device delivery across servers waits for the sender)
    session = client.olm.session_store.get(device.curve25519)
    assert isinstance(session, OutboundSession), session
    message = session.encrypt("hello across servers")
    inbound = InboundSession(other.olm.account, message, client.olm.account.identity_keys["curve25519"])
    assert inbound.decrypt(message) == "hello across servers"
    # the one-time key is gone from the owner's server
    again = await client.keys_claim({other.user_id: [other.device_id]})
    assert isinstance(again, nio.KeysClaimResponse), again
    claimed = again.one_time_keys.get(other.user_id, {}).get(other.device_id, {})
    assert key_id not in claimed


async def test_keys_query_claim_and_olm_session_with_synapse(
    peers: tuple[FederatingServer, SynapsePeer], tmp_path: Path,  # noqa: F811
) -> None:
    ours, syn = peers
    async with aiohttp.ClientSession() as http:
        from ..integration.processes import User

        alice_id = (await User(http, ours.client_url).register("alice", PASSWORD)).user_id
        bob_id = (await register_on_synapse(http, syn, "bob")).user_id
    alice = await nio_client(ours.client_url, alice_id, tmp_path / "nio-alice")
    bob = await nio_client(syn.client_url, bob_id, tmp_path / "nio-bob")
    try:
        # ours -> Synapse: our server asks Synapse's /user/keys/query and /user/keys/claim
        await olm_session_with(alice, bob)
        # Synapse -> ours: Synapse asks our /user/keys/query and /user/keys/claim
        await olm_session_with(bob, alice)
    finally:
        await alice.close()
        await bob.close()
