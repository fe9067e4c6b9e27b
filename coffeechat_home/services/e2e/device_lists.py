"""Device lists: who must refresh whose devices, for /sync and
/keys/changes, and recording device changes from logins and logouts.

A user's device change reaches every user sharing a room with them
(``changed``); users who stop sharing every room appear in ``left``, and
users who start sharing a room appear in ``changed`` (the client has not
tracked their devices so far).
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, Literal

from ...crash_points import crash_point
from ...storage.e2e_keys import E2EKeyStore
from ...storage.rooms import RoomStore
from ..notifier import CHANGED_KEYS_SPAN, Notifier


log = logging.getLogger(__name__)

# "changed": new devices or new keys/signatures of them; "deleted"; "cross_signing": new master/self-signing keys
ChangeKind = Literal["changed", "deleted", "cross_signing"]
LocalChangeHook = Callable[[str, list[str], ChangeKind], Awaitable[None]]


class DeviceListService:
    def __init__(self, keys: E2EKeyStore, rooms: RoomStore, notifier: Notifier) -> None:
        self.keys = keys
        self.rooms = rooms
        self.notifier = notifier
        # after a change of our user's devices committed (e.g. the EDUs to
        # the other servers sharing a room with them)
        self.local_change_hooks: list[LocalChangeHook] = []

    async def local_change(self, user_id: str, device_ids: list[str], kind: ChangeKind) -> None:
        crash_point("device_list_committed")
        for hook in self.local_change_hooks:
            try:
                await hook(user_id, device_ids, kind)
            except Exception:  # the change is committed: never fail the request for this
                log.exception("device-list change hook for %s", user_id)

    async def changes(self, user_id: str, since: int, upto: int) -> tuple[list[str], list[str]]:
        """(changed, left) user ids for the stream range (since, upto]."""
        if upto <= since:
            return [], []
        if upto - since <= CHANGED_KEYS_SPAN:
            # no device changed and nobody's membership changed: nothing to say
            changes = await self.notifier.changes(since, upto)
            if not changes.get("device_list_changes") and not changes.get("room_memberships"):
                return [], []
        sharing_now = await self.rooms.users_sharing_a_room_at(user_id, upto)
        changed = await self.keys.users_with_changes(sharing_now, since, upto)
        left: set[str] = set()
        if await self.rooms.memberships_changed_near(user_id, since, upto):
            sharing_then = await self.rooms.users_sharing_a_room_at(user_id, since)
            changed |= sharing_now - sharing_then
            left = sharing_then - sharing_now
        left.discard(user_id)
        return sorted(changed), sorted(left)

    # -- hooks for the account service ---------------------------------------
    async def device_added(self, user_id: str, device_id: str) -> None:
        await self.keys.device_added(user_id, device_id)
        self.notifier.poke()
        await self.local_change(user_id, [device_id], "changed")

    async def remove_orphaned_keys(self) -> int:
        """At start: devices deleted by a process that died before their
        keys went are removed now, with the device-list change their users'
        peers need (else they keep encrypting to a device that is gone).
        Returns how many devices."""
        orphans = await self.keys.keys_without_device()
        for user_id, device_ids in orphans.items():
            log.info("removing the keys of %d deleted device(s) of %s", len(device_ids), user_id)
            await self.devices_removed(user_id, device_ids)
        return sum(len(ids) for ids in orphans.values())

    async def devices_removed(self, user_id: str, device_ids: list[str]) -> None:
        """Keys, signatures and pending to-device messages of the removed
        devices go; a device-list change for the user."""
        if not device_ids:
            return
        await self.keys.devices_removed(user_id, device_ids)
        await self.devices_gone(user_id, device_ids)

    async def devices_gone(self, user_id: str, device_ids: list[str]) -> None:
        """After the commit of a removal (storage/e2e_keys.py
        remove_devices, the account service's device remover): wake the
        streams and run the change hooks."""
        self.notifier.poke()
        await self.local_change(user_id, device_ids, "deleted")
