"""End-to-end encryption support (the server relays and stores, it never
decrypts): device and one-time keys, device lists, cross-signing,
to-device messages and key backup. ``build_e2e`` wires them for app.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...storage.database import Database
from ...storage.e2e_keys import E2EKeyStore
from ...storage.key_backup import KeyBackupStore
from ...storage.remote_device_lists import RemoteDeviceListStore
from ...storage.rooms import RoomStore
from ...storage.stream import StreamStore
from ...storage.to_device import ToDeviceStore
from ..accounts import AccountService, Requester
from ..notifier import Notifier
from .cross_signing import CrossSigningService
from .device_lists import DeviceListService
from .federation import E2EFederation
from .key_backup import KeyBackupService
from .keys import KeyService
from .to_device import ToDeviceService


@dataclass
class E2E:
    keys: KeyService
    device_lists: DeviceListService
    cross_signing: CrossSigningService
    to_device: ToDeviceService
    backup: KeyBackupService
    federation: E2EFederation

    async def sync_upto(self, requester: Requester, since: int | None, upto: int) -> int:
        """How far a /sync response may go (to-device batches)."""
        return await self.to_device.sync_upto(requester, since, upto)

    async def sync_part(self, requester: Requester, since: int | None, upto: int) -> tuple[dict[str, Any], bool]:
        """The top-level E2EE fields of a /sync response, and whether they
        carry news (key counts alone do not end a long-poll)."""
        # one after the other: the last two usually return at once (nothing
        # of their kind changed), and the first is read with other syncs'
        body = await self.keys.counts_for_sync(requester, since, upto)
        events = await self.to_device.events_for_sync(requester, since, upto)
        changed, left = (
            await self.device_lists.changes(requester.user_id, since, upto) if since is not None else ([], [])
        )
        body["to_device"] = {"events": events}
        if since is not None:
            body["device_lists"] = {"changed": changed, "left": left}
        return body, bool(events or changed or left)


def build_e2e(
    db: Database, stream: StreamStore, notifier: Notifier, rooms: RoomStore, accounts: AccountService,
    server_name: str,
) -> E2E:
    store = E2EKeyStore(db, stream)
    device_lists = DeviceListService(store, rooms, notifier)
    cross_signing = CrossSigningService(store, notifier)
    cross_signing.local_change = device_lists.local_change
    accounts.device_added_hooks.append(device_lists.device_added)
    # device rows go with their keys and the device-list change, in one transaction
    accounts.device_remover = store.remove_devices
    accounts.devices_removed_hooks.append(device_lists.devices_gone)
    to_device_store = ToDeviceStore(db, stream)
    return E2E(
        keys=KeyService(store, device_lists, cross_signing, server_name, notifier),
        device_lists=device_lists,
        cross_signing=cross_signing,
        to_device=ToDeviceService(to_device_store, notifier, server_name),
        backup=KeyBackupService(KeyBackupStore(db)),
        federation=E2EFederation(db, store, to_device_store, RemoteDeviceListStore(db, stream), notifier,
                                 server_name, accounts.store.user_exists),
    )
