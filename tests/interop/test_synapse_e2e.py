"""E2EE keys across federation with Synapse, both ways, driven by real
matrix-nio[e2e] clients (keys made and checked by vodozemac): a client of
ours queries a Synapse user's device keys and claims a one-time key through
our server (which asks Synapse over federation), then builds an Olm session
with it; a Synapse client does the same with one of our users (Synapse asks
us). Then fresh users on each side hold a Megolm conversation in an
encrypted room both ways, and a device logging in later on each side is
learnt of by the other server and decrypts new messages."""

from __future__ import annotations

import itertools
from pathlib import Path

import aiohttp
import nio
from nio.crypto import InboundSession, OutboundSession
import pytest

from ..federation.peers import FederatingServer
from ..integration.processes import User
from .test_nio_e2ee import ENCRYPTION, Inbox, _send, _tick, _until
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
    await megolm_with_synapse(ours, syn, tmp_path)


async def _login(base_url: str, user_id: str, store: Path, device: str) -> nio.AsyncClient:
    store.mkdir()
    client = nio.AsyncClient(base_url, user_id, store_path=str(store))
    resp = await client.login(PASSWORD, device_name=device)
    assert isinstance(resp, nio.LoginResponse), resp
    return client


async def megolm_with_synapse(ours: FederatingServer, syn: SynapsePeer, tmp_path: Path) -> None:
    """Fresh nio users (carol on ours, dave on Synapse) in an encrypted room
    of ours: Megolm messages both ways (room keys as Olm to-device messages,
    our m.direct_to_device EDUs to Synapse and Synapse's to us); then a new
    device on each side: Synapse's m.device_list_update reaches us (and our
    key cache), ours reaches Synapse; each new device decrypts a new message."""
    async with aiohttp.ClientSession() as http:
        carol_id = (await User(http, ours.client_url).register("carol", PASSWORD)).user_id
        dave_id = (await register_on_synapse(http, syn, "dave")).user_id
    carol = await _login(ours.client_url, carol_id, tmp_path / "nio-carol", "laptop")
    dave = await _login(syn.client_url, dave_id, tmp_path / "nio-dave", "laptop")
    clients = [carol, dave]
    try:
        for c in clients:
            await _tick(c)
        created = await carol.room_create(name="Beans with Synapse", invite=[dave_id], initial_state=[ENCRYPTION])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = str(created.room_id)
        await _until([carol, dave], lambda: room_id in dave.invited_rooms, "the invite at Synapse")
        assert isinstance(await dave.join(room_id), nio.JoinResponse)
        await _until([dave, carol],
                     lambda: all(room_id in c.rooms and c.rooms[room_id].encrypted
                                 and {carol_id, dave_id} <= set(c.rooms[room_id].users) for c in (carol, dave)),
                     "an encrypted room with both members on both servers")
        carol_inbox, dave_inbox = Inbox(carol, room_id), Inbox(dave, room_id)
        early = [await _send(carol, room_id, "a secret from coffeechat")]
        await _until([carol, dave], lambda: "a secret from coffeechat" in dave_inbox.texts(), "carol's message")
        early.append(await _send(dave, room_id, "a secret from Synapse"))
        await _until([dave, carol], lambda: "a secret from Synapse" in carol_inbox.texts(), "dave's message")
        assert not carol_inbox.undecrypted() and not dave_inbox.undecrypted()

        # a second device on each side, logging in later
        dave_phone = await _login(syn.client_url, dave_id, tmp_path / "nio-dave-phone", "phone")
        carol_phone = await _login(ours.client_url, carol_id, tmp_path / "nio-carol-phone", "phone")
        clients += [dave_phone, carol_phone]
        inboxes = {c: Inbox(c, room_id) for c in (dave_phone, carol_phone)}
        for c in (dave_phone, carol_phone):
            await _tick(c)
        await _until([dave_phone, carol_phone, dave, carol],
                     lambda: dave_phone.device_id in carol.device_store[dave_id]
                     and carol_phone.device_id in dave.device_store[carol_id],
                     "each new device at the other side")
        await _send(carol, room_id, "for dave's phone")
        await _send(dave, room_id, "for carol's phone")
        await _until([carol, dave, dave_phone, carol_phone],
                     lambda: "for dave's phone" in inboxes[dave_phone].texts()
                     and "for carol's phone" in inboxes[carol_phone].texts(),
                     "the new messages on the new devices")
        for inbox in inboxes.values():
            assert {e.event_id for e in inbox.undecrypted()} <= set(early)
        # our server's cache of dave's keys is current (it knows the phone)
        carol.olm.users_for_key_query.add(dave_id)
        q = await carol.keys_query()
        assert isinstance(q, nio.KeysQueryResponse) and q.failures == {}, q
        assert set(q.device_keys[dave_id]) == {dave.device_id, dave_phone.device_id}
        cached = await ours.db_fetch("SELECT keys::TEXT AS k FROM e2e_remote_device_cache WHERE user_id = $1",
                                     dave_id)
        assert len(cached) == 1 and dave_phone.device_id in cached[0]["k"]
    finally:
        for c in clients:
            await c.close()
