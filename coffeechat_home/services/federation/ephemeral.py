"""Typing notifications, read receipts and presence across servers.

Outbound: when a local user starts or stops typing, sends a public read
receipt (``m.read``; ``m.read.private`` never leaves the server) or
changes presence, the EDU is built once and queued for every other server
with a joined member in the room (presence: every server sharing a room
with the user) in the sender's persisted EDU outbox. A newer EDU of the
same kind replaces a queued one (typing per room and user, receipts per
room, type, user and thread, presence per user). Typing EDUs expire with
the typing they announce, so a destination that comes back after a long
backoff does not get stale typing.

Inbound: ``m.presence`` EDUs (``m.typing`` and ``m.receipt`` are handled in
receiver.py) for users of the origin server who share a room with one of
our users; ignored when presence is off.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Mapping

from ...protocol.edus import presence_edu, receipt_edu, typing_edu
from ...protocol.identifiers import InvalidIdentifier, parse_user_id
from ...storage.edu_outbox import EduOutboxStore, OutboundEdu
from ...storage.presence import PresenceStore
from ...storage.rooms import RoomStore
from ..notifier import Notifier
from ..presence import STATES, PresenceService, presence_content
from ..receipts import ReceiptService
from ..typing import TypingService
from .receiver import FederationReceiver

log = logging.getLogger(__name__)

# How long a stop-typing EDU is worth delivering: receivers time typing out
# on their own (Synapse and we after 60 s).
STOP_TYPING_TTL_MS = 60_000
MAX_PRESENCE_PUSH = 100  # entries of one inbound m.presence EDU we look at


def _now_ms() -> int:
    return int(time.time() * 1000)


def _server_of(user_id: str) -> str | None:
    try:
        return parse_user_id(user_id).server_name
    except InvalidIdentifier:
        return None


class EphemeralFederation:
    def __init__(
        self,
        server_name: str,
        outbox: EduOutboxStore,
        wake: Callable[[str], None],
        servers_in_room: Callable[[str], Awaitable[list[str]]],
        rooms: RoomStore,
        presence: PresenceStore,
        notifier: Notifier,
        *,
        presence_enabled: bool = True,
    ) -> None:
        self.server_name = server_name
        self.outbox = outbox
        self.wake = wake
        self.servers_in_room = servers_in_room
        self.rooms = rooms
        self.presence = presence
        self.notifier = notifier
        self.presence_enabled = presence_enabled

    def _local(self, user_id: str) -> bool:
        return _server_of(user_id) == self.server_name

    async def _room_destinations(self, room_id: str) -> list[str]:
        return [s for s in await self.servers_in_room(room_id) if s != self.server_name]

    # -- outbound ----------------------------------------------------------------
    async def _enqueue(self, edus: list[OutboundEdu]) -> None:
        for destination in await self.outbox.enqueue(edus, _now_ms()):
            self.wake(destination)

    def woken(self, edus: list[OutboundEdu]) -> None:
        """After a transaction that queued ``edus`` committed."""
        for destination in sorted({e.destination for e in edus}):
            self.wake(destination)

    async def typing_changed(self, user_id: str, room_id: str, typing: bool, expires_ts: int | None) -> None:
        """A local user started (until ``expires_ts``) or stopped typing.
        A newer typing EDU of the user in the room replaces a queued one."""
        if not self._local(user_id):
            return
        content = typing_edu(room_id, user_id, typing)
        expires = expires_ts if typing and expires_ts is not None else _now_ms() + STOP_TYPING_TTL_MS
        key = f"{room_id} {user_id}"
        await self._enqueue([OutboundEdu(d, "m.typing", content, key, expires)
                             for d in await self._room_destinations(room_id)])

    async def receipt_edus(
        self, user_id: str, room_id: str, receipt_type: str, event_id: str, ts: int, thread_id: str | None
    ) -> list[OutboundEdu]:
        """The EDUs a local user's receipt makes, to be queued in the
        transaction that stores it (so it is queued exactly when stored);
        none for private receipts. A newer receipt of the user in the room
        and thread replaces a queued one."""
        if receipt_type != "m.read" or not self._local(user_id):
            return []
        content = receipt_edu(room_id, receipt_type, user_id, event_id, ts, thread_id)
        key = f"{room_id} {receipt_type} {user_id} {thread_id or ''}"
        return [OutboundEdu(d, "m.receipt", content, key) for d in await self._room_destinations(room_id)]

    async def presence_changed(self, user_id: str) -> None:
        """A local user's presence state or status message changed."""
        if not self.presence_enabled or not self._local(user_id):
            return
        destinations = sorted(await self.rooms.servers_sharing_a_room(user_id) - {self.server_name})
        state = await self.presence.get(user_id) if destinations else None
        if state is None:
            return
        content = presence_edu(user_id, presence_content(state, _now_ms()))
        await self._enqueue([OutboundEdu(d, "m.presence", content, user_id) for d in destinations])

    # -- inbound ------------------------------------------------------------------
    async def on_presence_edu(self, origin: str, content: Any) -> None:
        """``m.presence`` from ``origin``: states of its users who share a
        room with one of ours."""
        if not self.presence_enabled or not isinstance(content, Mapping):
            return
        push = content.get("push")
        if not isinstance(push, list):
            return
        changed = False
        now = _now_ms()
        for item in push[:MAX_PRESENCE_PUSH]:
            if not isinstance(item, Mapping):
                continue
            user_id, state = item.get("user_id"), item.get("presence")
            if not isinstance(user_id, str) or _server_of(user_id) != origin or state not in STATES:
                continue
            status_msg = item.get("status_msg")
            if not isinstance(status_msg, str):
                status_msg = None
            ago = item.get("last_active_ago")
            ago = ago if isinstance(ago, int) and not isinstance(ago, bool) and 0 <= ago <= now else 0
            if self.server_name not in await self.rooms.servers_sharing_a_room(user_id):
                continue  # nobody here may see it
            current = await self.presence.get(user_id)
            if current is not None and (current.state, current.status_msg) == (state, status_msg):
                await self.presence.touch(user_id, now - ago)
                continue
            await self.presence.set(user_id, str(state), status_msg, now - ago)
            changed = True
        if changed:
            self.notifier.poke()

    def connect(self, typing: TypingService, receipts: ReceiptService, presence: PresenceService,
                receiver: FederationReceiver) -> None:
        """Plug into the local services (outbound) and the receiver's EDU
        registry (inbound ``m.presence``)."""
        typing.remote = self.typing_changed
        receipts.remote = self
        presence.remote = self.presence_changed
        receiver.edu_handlers["m.presence"] = self.on_presence_edu
