"""matrix-nio with real end-to-end encryption (Olm and Megolm through
vodozemac): users exchange Megolm-encrypted messages in an
``m.room.encryption`` room and decrypt them; a second device that logs in
later decrypts new messages; a key backup made with real backup crypto
(``m.megolm_backup.v1.curve25519-aes-sha2`` through vodozemac's
PkEncryption) is restored on a fresh device, which then decrypts an old
message. nio has no key-backup API, so the backup goes over raw HTTP.

nio's plain ``sync()`` does not upload, query or claim keys; ``_tick``
does what ``sync_forever`` does around each sync. Waits are bounded by a
number of syncs, never by wall-clock assertions.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import aiohttp
import nio
import pytest
import vodozemac

from .nio_helpers import nio_user

pytestmark = pytest.mark.slow

ROUNDS = 20
LONG_POLL_MS = 2000
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"


async def _login(base_url: str, tmp_path: Path, user_id: str, name: str, device: str) -> nio.AsyncClient:
    store = tmp_path / f"nio-{name}-{device}"
    store.mkdir()
    client = nio.AsyncClient(base_url, user_id, store_path=str(store))
    resp = await client.login(f"password of {name}", device_name=device)
    assert isinstance(resp, nio.LoginResponse), resp
    return client


async def _tick(client: nio.AsyncClient, timeout_ms: int = 0) -> nio.SyncResponse:
    """One sync plus the key work nio's sync_forever does around it."""
    resp = await client.sync(timeout=timeout_ms)
    assert isinstance(resp, nio.SyncResponse), resp
    if client.should_upload_keys:
        up = await client.keys_upload()
        assert isinstance(up, nio.KeysUploadResponse), up
    if client.should_query_keys:
        q = await client.keys_query()
        assert isinstance(q, nio.KeysQueryResponse), q
    if client.should_claim_keys:
        c = await client.keys_claim(client.get_users_for_key_claiming())
        assert isinstance(c, nio.KeysClaimResponse), c
    await client.send_to_device_messages()
    return resp


async def _until(clients: list[nio.AsyncClient], done: Callable[[], bool], what: str) -> None:
    for _ in range(ROUNDS):
        if done():
            return
        for c in clients:
            await _tick(c, LONG_POLL_MS if c is clients[-1] else 0)
    assert done(), f"never saw {what}"


class Inbox:
    """Timeline events of one room as a client saw them (decrypted or not)."""

    def __init__(self, client: nio.AsyncClient, room_id: str) -> None:
        self.events: list[Any] = []
        client.add_event_callback(self._on, (nio.RoomMessageText, nio.MegolmEvent))
        self.room_id = room_id

    def _on(self, room: nio.MatrixRoom, event: Any) -> None:
        if room.room_id == self.room_id:
            self.events.append(event)

    def texts(self) -> list[str]:
        return [e.body for e in self.events if isinstance(e, nio.RoomMessageText)]

    def undecrypted(self) -> list[nio.MegolmEvent]:
        return [e for e in self.events if isinstance(e, nio.MegolmEvent)]


async def _send(client: nio.AsyncClient, room_id: str, body: str) -> str:
    resp = await client.room_send(
        room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
    )
    assert isinstance(resp, nio.RoomSendResponse), resp
    return str(resp.event_id)


async def _encrypted_room(alice: nio.AsyncClient, bob: nio.AsyncClient) -> str:
    created = await alice.room_create(name="Secret beans", invite=[bob.user_id], initial_state=[ENCRYPTION])
    assert isinstance(created, nio.RoomCreateResponse), created
    room_id = str(created.room_id)
    await _until([alice, bob], lambda: room_id in bob.invited_rooms, "the invite")
    assert isinstance(await bob.join(room_id), nio.JoinResponse)
    await _until(
        [bob, alice],
        lambda: all(room_id in c.rooms and c.rooms[room_id].encrypted
                    and {alice.user_id, bob.user_id} <= set(c.rooms[room_id].users) for c in (alice, bob)),
        "an encrypted room with both members",
    )
    return room_id


async def _stored_type(base_url: str, client: nio.AsyncClient, room_id: str, event_id: str) -> str:
    """The event as the server stores it (ciphertext only)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{base_url}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/event/{quote(event_id, safe='')}",
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as r:
            body = await r.json()
    assert "secret" not in json.dumps(body)
    return str(body["type"])


async def test_two_users_exchange_megolm_messages(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    try:
        for c in (alice, bob):
            await _tick(c)
            assert not c.should_upload_keys
        room_id = await _encrypted_room(alice, bob)
        bob_inbox, alice_inbox = Inbox(bob, room_id), Inbox(alice, room_id)

        e1 = await _send(alice, room_id, "a secret from alice")
        assert await _stored_type(base_url, alice, room_id, e1) == "m.room.encrypted"
        await _until([alice, bob], lambda: "a secret from alice" in bob_inbox.texts(), "alice's message at bob")
        await _send(bob, room_id, "a secret reply from bob")
        await _until([bob, alice], lambda: "a secret reply from bob" in alice_inbox.texts(), "bob's reply")
        assert not bob_inbox.undecrypted() and not alice_inbox.undecrypted()
    finally:
        for c in (alice, bob):
            await c.close()


async def test_second_device_decrypts_new_messages(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    clients = [alice, bob]
    try:
        for c in clients:
            await _tick(c)
        room_id = await _encrypted_room(alice, bob)
        await _send(alice, room_id, "before the phone")
        bob_inbox = Inbox(bob, room_id)
        await _until([alice, bob], lambda: "before the phone" in bob_inbox.texts(), "the first message")

        phone = await _login(base_url, tmp_path, bob.user_id, "bob", "phone")
        clients.append(phone)
        phone_inbox = Inbox(phone, room_id)
        await _tick(phone)
        assert not phone.should_upload_keys
        # alice learns of the new device through device_lists.changed
        await _until(
            [phone, alice], lambda: phone.device_id in alice.device_store[bob.user_id], "bob's phone at alice"
        )
        await _send(alice, room_id, "after the phone")
        await _until([alice, bob, phone], lambda: "after the phone" in phone_inbox.texts(), "the message on the phone")
        await _until([alice, bob], lambda: "after the phone" in bob_inbox.texts(), "the message on the laptop")
    finally:
        for c in clients:
            await c.close()


def _unpadded(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


async def test_key_backup_round_trip(base_url: str, tmp_path: Path) -> None:
    alice = await nio_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    clients = [alice, bob]
    headers = {"Authorization": f"Bearer {alice.access_token}"}
    api = f"{base_url}/_matrix/client/v3"
    try:
        for c in clients:
            await _tick(c)
        room_id = await _encrypted_room(alice, bob)
        event_id = await _send(alice, room_id, "backed-up secret")

        # alice backs up her Megolm session, encrypted to the backup key
        recovery = vodozemac.PkDecryption()
        sender_key = alice.olm.account.identity_keys["curve25519"]
        signing_key = alice.olm.account.identity_keys["ed25519"]
        sessions = [s for s in alice.olm.inbound_group_store if s.room_id == room_id]
        assert len(sessions) == 1
        session = sessions[0]
        plain = {
            "algorithm": "m.megolm.v1.aes-sha2", "sender_key": sender_key,
            "sender_claimed_keys": {"ed25519": signing_key}, "forwarding_curve25519_key_chain": [],
            "session_key": session.export_session(session.first_known_index),
        }
        message = vodozemac.PkEncryption.from_key(recovery.public_key).encrypt(json.dumps(plain).encode())
        session_data = {"ciphertext": _unpadded(message.ciphertext), "mac": _unpadded(message.mac),
                        "ephemeral": _unpadded(message.ephemeral_key)}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{api}/room_keys/version", headers=headers, json={
                "algorithm": BACKUP_ALGORITHM, "auth_data": {"public_key": recovery.public_key.to_base64()},
            }) as r:
                assert r.status == 200
                version = (await r.json())["version"]
            path = f"{api}/room_keys/keys/{quote(room_id, safe='')}/{quote(session.id, safe='')}"
            async with http.put(
                path, params={"version": version}, headers=headers,
                json={"first_message_index": session.first_known_index, "forwarded_count": 0,
                      "is_verified": True, "session_data": session_data},
            ) as r:
                assert r.status == 200 and (await r.json())["count"] == 1

            # a fresh device of alice's has the message but not the key ...
            laptop2 = await _login(base_url, tmp_path, alice.user_id, "alice", "new laptop")
            clients.append(laptop2)
            first = await _tick(laptop2)
            events = [e for e in first.rooms.join[room_id].timeline.events if e.event_id == event_id]
            assert len(events) == 1 and isinstance(events[0], nio.MegolmEvent)
            # ... until it restores the backup with the recovery key
            headers2 = {"Authorization": f"Bearer {laptop2.access_token}"}
            async with http.get(f"{api}/room_keys/version", headers=headers2) as r:
                info = await r.json()
            async with http.get(f"{api}/room_keys/keys", params={"version": info["version"]}, headers=headers2) as r:
                backup = await r.json()
        stored = backup["rooms"][room_id]["sessions"][session.id]
        data = stored["session_data"]
        restored_message = vodozemac.Message.from_base64(data["ciphertext"], data["mac"], data["ephemeral"])
        restored = json.loads(recovery.decrypt(restored_message))
        assert restored["session_key"] == plain["session_key"]
        laptop2.olm.inbound_group_store.add(nio.crypto.InboundGroupSession.import_session(
            restored["session_key"], restored["sender_claimed_keys"]["ed25519"], restored["sender_key"], room_id,
        ))
        decrypted = laptop2.decrypt_event(events[0])
        assert isinstance(decrypted, nio.RoomMessageText) and decrypted.body == "backed-up secret"
    finally:
        for c in clients:
            await c.close()
