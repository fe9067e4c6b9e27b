"""mautrix (a second real client library, with its own Olm/Megolm stack
through python-olm) holding encrypted conversations on our server: two
mautrix clients with their OlmMachine log in, upload device and one-time
keys, create an ``m.room.encryption`` room, exchange Megolm messages and
decrypt them; then a mautrix client and a matrix-nio client decrypt each
other's messages in one room. Also: the same conversation with every call
on the legacy ``/_matrix/client/r0`` paths, and mautrix's own
cross-signing with a recovery key in secret storage.

mautrix is driven one sync at a time (``sync`` then ``handle_sync``, which
is what its ``start()`` loop does) so every wait is a bounded number of
long-polls, never a wall-clock assertion. Its OlmMachine raises on a
failed ``keys/upload``, ``keys/query`` or ``keys/claim`` it is awaited
for; what fails inside its sync handlers is only logged, so each test also
fails on any ERROR record from mautrix's loggers.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Callable

import aiohttp
import mautrix.client as mautrix_client
import mautrix.crypto as mautrix_crypto
import nio
import pytest
from mautrix.api import HTTPAPI
from mautrix.client.state_store.memory import MemoryStateStore
from mautrix.crypto.store.asyncpg import PgCryptoStore
from mautrix.types import (
    DeviceID,
    EncryptionAlgorithm,
    EventType,
    Membership,
    MessageEvent,
    MessageType,
    RoomEncryptionStateEventContent,
    RoomID,
    TextMessageEventContent,
    TrustState,
    UserID,
)
from mautrix.util.async_db import Database

from .test_nio_e2ee import Inbox as NioInbox
from .test_nio_e2ee import _tick as nio_tick
from .nio_helpers import nio_user

pytestmark = pytest.mark.slow

ROUNDS = 20
LONG_POLL_MS = 2000


class _StateStore(MemoryStateStore, mautrix_crypto.StateStore):
    """mautrix's in-memory state store plus the one query its crypto needs."""

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        return [
            room_id for room_id, members in self.members.items()
            if user_id in members and members[user_id].membership in (Membership.JOIN, Membership.INVITE)
            and await self.is_encrypted(room_id)
        ]


class Mautrix:
    """One mautrix device: a Client with an OlmMachine, synced by hand."""

    def __init__(self, client: Any, machine: Any, db: Any) -> None:
        self.client = client
        self.db = db
        self.machine = machine
        self.user_id = str(client.mxid)
        self.device_id = str(client.device_id)
        self.since: str | None = None
        self.texts: dict[str, list[str]] = {}
        client.add_event_handler(EventType.ROOM_MESSAGE, self._on_message)

    async def _on_message(self, evt: MessageEvent) -> None:
        body = getattr(evt.content, "body", None)
        if isinstance(body, str):
            self.texts.setdefault(str(evt.room_id), []).append(body)

    async def tick(self, timeout_ms: int = 0) -> dict[str, Any]:
        data = await self.client.sync(since=self.since, timeout=timeout_ms)
        self.since = data["next_batch"]
        await asyncio.gather(*self.client.handle_sync(data))
        # decrypted events are dispatched in tasks of their own; let them run
        for _ in range(10):
            await asyncio.sleep(0)
        return data

    async def send(self, room_id: str, body: str) -> str:
        content = TextMessageEventContent(msgtype=MessageType.TEXT, body=body)
        return str(await self.client.send_message_event(RoomID(room_id), EventType.ROOM_MESSAGE, content))

    async def close(self) -> None:
        await self.client.api.session.close()
        await self.db.stop()


async def _register(base_url: str, name: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base_url}/_matrix/client/v3/register", json={
            "username": name, "password": f"password of {name}", "auth": {"type": "m.login.dummy"},
            "inhibit_login": True,
        }) as r:
            assert r.status == 200, await r.text()


class _LegacyPaths(HTTPAPI):
    """mautrix's HTTP layer calling ``/_matrix/client/r0/...`` wherever it
    would call ``v3`` (what older clients still do), recording each path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paths: list[str] = []

    def _full_path(self, path: Any) -> str:
        full = str(super()._full_path(path)).replace("/_matrix/client/v3/", "/_matrix/client/r0/")
        self.paths.append(full)
        return full


async def mautrix_user(base_url: str, tmp_path: Path, name: str, *, legacy: bool = False) -> Mautrix:
    """Register over HTTP, then log in a mautrix device (``mautrix_login``)."""
    await _register(base_url, name)
    return await mautrix_login(base_url, tmp_path, name, legacy=legacy)


async def mautrix_login(base_url: str, tmp_path: Path, name: str, *, legacy: bool = False) -> Mautrix:
    """Log in, load an Olm account (mautrix's SQL crypto store on SQLite)
    and upload its keys the way mautrix's crypto helper does at start-up.
    ``legacy``: every v3 call goes to the r0 path instead."""
    state_store = _StateStore()
    api = (_LegacyPaths if legacy else HTTPAPI)(base_url=base_url, default_retry_count=0)
    client = mautrix_client.Client(api=api, state_store=state_store)
    await client.login(identifier=name, password=f"password of {name}", device_name=f"{name}'s mautrix")
    assert client.mxid and client.device_id
    db = Database.create(f"sqlite://{tmp_path / f'mautrix-{client.device_id}.db'}",
                         upgrade_table=PgCryptoStore.upgrade_table)
    await db.start()
    crypto_store = PgCryptoStore(account_id=f"{client.mxid}/{client.device_id}", pickle_key="test pickle key", db=db)
    await crypto_store.open()
    await crypto_store.put_device_id(client.device_id)
    machine = mautrix_crypto.OlmMachine(client, crypto_store, state_store)
    client.crypto = machine
    await machine.load()
    await machine.share_keys()  # raises on a failed keys/upload
    return Mautrix(client, machine, db)


def _joined(m: Mautrix, room_id: str, user_id: str) -> bool:
    member = m.client.state_store.members.get(RoomID(room_id), {}).get(UserID(user_id))
    return member is not None and member.membership == Membership.JOIN


async def _until(ticks: list[Callable[[int], Any]], done: Callable[[], bool], what: str) -> None:
    for _ in range(ROUNDS):
        if done():
            return
        for i, tick in enumerate(ticks):
            await tick(LONG_POLL_MS if i == len(ticks) - 1 else 0)
    assert done(), f"never saw {what}"


ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


def _no_client_errors(caplog: pytest.LogCaptureFixture) -> None:
    """mautrix logs (rather than raises) what fails inside its sync handlers."""
    errors = [r.getMessage() for r in caplog.records if r.name.startswith("mau") and r.levelno >= logging.ERROR]
    assert not errors, errors


async def _conversation(alice: Mautrix, bob: Mautrix) -> None:
    # the keys are on the server: each sees the other's device keys
    keys = await alice.client.query_keys([bob.user_id])
    assert bob.device_id in keys.device_keys[bob.user_id]
    for m in (alice, bob):
        await m.tick()
        assert m.machine.account.shared

    room_id = str(await alice.client.create_room(
        name="Secret beans", invitees=[UserID(bob.user_id)], initial_state=[ENCRYPTION],
    ))
    await bob.tick()
    await bob.client.join_room(RoomID(room_id))
    await _until([bob.tick, alice.tick], lambda: _joined(alice, room_id, bob.user_id), "bob's join at alice")
    enc = await alice.client.state_store.get_encryption_info(RoomID(room_id))
    assert isinstance(enc, RoomEncryptionStateEventContent) and enc.algorithm == EncryptionAlgorithm.MEGOLM_V1

    await alice.send(room_id, "a secret from alice")
    await _until([alice.tick, bob.tick], lambda: "a secret from alice" in bob.texts.get(room_id, []),
                 "alice's message at bob")
    await bob.send(room_id, "a secret reply from bob")
    await _until([bob.tick, alice.tick], lambda: "a secret reply from bob" in alice.texts.get(room_id, []),
                 "bob's reply at alice")
    await alice.send(room_id, "and one more")
    await _until([alice.tick, bob.tick], lambda: "and one more" in bob.texts.get(room_id, []),
                 "alice's second message at bob")
    # each decrypts its own messages too, each exactly once and in order
    assert bob.texts[room_id] == ["a secret from alice", "a secret reply from bob", "and one more"]
    assert alice.texts[room_id][:2] == ["a secret from alice", "a secret reply from bob"]


LEGACY_CALLS = {
    "login", "keys/upload", "keys/query", "keys/claim", "sync", "createRoom", "join", "joined_members",
    "sendToDevice", "send",
}


@pytest.mark.parametrize("legacy", [False, True], ids=["v3", "r0"])
async def test_two_mautrix_clients_exchange_megolm_messages(
    base_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, legacy: bool,
) -> None:
    """r0: the same encrypted conversation with every v3 call on its legacy
    r0 alias (what older clients call)."""
    alice = await mautrix_user(base_url, tmp_path, "alice", legacy=legacy)
    bob = await mautrix_user(base_url, tmp_path, "bob", legacy=legacy)
    try:
        await _conversation(alice, bob)
    finally:
        for m in (alice, bob):
            await m.close()
    _no_client_errors(caplog)
    if legacy:
        paths = alice.client.api.paths + bob.client.api.paths
        assert not [p for p in paths if "/_matrix/client/v3/" in p]
        called = {name for name in LEGACY_CALLS for p in paths
                  if p.startswith("/_matrix/client/r0/") and (f"/{name}/" in p + "/" or p.endswith(f"/{name}"))}
        assert called == LEGACY_CALLS, LEGACY_CALLS - called


async def test_mautrix_cross_signing_and_recovery_key(base_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """mautrix's own cross-signing: generate_recovery_key puts the private
    keys in secret storage (account data), uploads master / self-signing /
    user-signing keys and signs the device; a second device restores them
    with the recovery key and signs itself; another user then sees both
    devices cross-signed through keys/query."""
    laptop = await mautrix_user(base_url, tmp_path, "alice")
    bob = await mautrix_user(base_url, tmp_path, "bob")
    clients = [laptop, bob]
    try:
        recovery_key = await laptop.machine.generate_recovery_key()
        phone = await mautrix_login(base_url, tmp_path, "alice")
        clients.append(phone)
        alice = UserID(laptop.user_id)

        devices = await bob.machine._fetch_keys([alice], include_untracked=True)
        assert set(devices[alice]) == {laptop.device_id, phone.device_id}
        assert await bob.machine.resolve_trust(devices[alice][DeviceID(laptop.device_id)]) == TrustState.CROSS_SIGNED_TOFU
        assert await bob.machine.resolve_trust(devices[alice][DeviceID(phone.device_id)]) == TrustState.UNVERIFIED

        await phone.machine.verify_with_recovery_key(recovery_key)
        devices = await bob.machine._fetch_keys([alice], include_untracked=True)
        for device_id in (laptop.device_id, phone.device_id):
            assert await bob.machine.resolve_trust(devices[alice][DeviceID(device_id)]) == TrustState.CROSS_SIGNED_TOFU
        own = await phone.machine.get_own_cross_signing_public_keys()
        assert own is not None and own == laptop.machine._cross_signing_public_keys
    finally:
        for m in clients:
            await m.close()
    _no_client_errors(caplog)


async def test_mautrix_and_nio_decrypt_each_other(
    base_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    alice = await mautrix_user(base_url, tmp_path, "alice")
    bob = await nio_user(base_url, tmp_path, "bob")
    try:
        await alice.tick()
        await nio_tick(bob)
        assert not bob.should_upload_keys

        room_id = str(await alice.client.create_room(
            name="Mixed company", invitees=[UserID(bob.user_id)], initial_state=[ENCRYPTION],
        ))

        async def bob_tick(timeout_ms: int = 0) -> None:
            await nio_tick(bob, timeout_ms)

        await _until([alice.tick, bob_tick], lambda: room_id in bob.invited_rooms, "the invite at nio")
        assert isinstance(await bob.join(room_id), nio.JoinResponse)
        await _until(
            [alice.tick, bob_tick],
            lambda: room_id in bob.rooms and bob.rooms[room_id].encrypted
            and alice.user_id in bob.rooms[room_id].users,
            "the encrypted room at nio",
        )
        bob_inbox = NioInbox(bob, room_id)

        await alice.send(room_id, "from mautrix to nio")
        await _until([alice.tick, bob_tick], lambda: "from mautrix to nio" in bob_inbox.texts(),
                     "mautrix's message decrypted by nio")
        resp = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from nio to mautrix"},
                                   ignore_unverified_devices=True)
        assert isinstance(resp, nio.RoomSendResponse), resp
        await _until([bob_tick, alice.tick], lambda: "from nio to mautrix" in alice.texts.get(room_id, []),
                     "nio's message decrypted by mautrix")
        assert not bob_inbox.undecrypted()
    finally:
        await alice.close()
        await bob.close()
    _no_client_errors(caplog)
