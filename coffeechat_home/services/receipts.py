"""Receipts and read markers: POST /receipt, POST /read_markers and the
m.receipt ephemeral events of /sync."""

from __future__ import annotations

import time
from typing import Any, Iterable, Protocol

from ..errors import forbidden, invalid_param, not_found
from ..storage.edu_outbox import OutboundEdu
from ..storage.receipts import UNTHREADED, EventPlace, Receipt, ReceiptStore
from ..storage.rooms import RoomStore
from .account_data import AccountDataService
from .notifier import Notifier

READ = "m.read"
READ_PRIVATE = "m.read.private"
FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)
MAIN_THREAD = "main"


class RemoteReceipts(Protocol):
    """Other servers in the room (services/federation/ephemeral.py)."""

    async def receipt_edus(
        self, user_id: str, room_id: str, receipt_type: str, event_id: str, ts: int, thread_id: str | None
    ) -> list[OutboundEdu]: ...

    def woken(self, edus: list[OutboundEdu]) -> None: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


class ReceiptService:
    def __init__(
        self, store: ReceiptStore, rooms: RoomStore, account_data: AccountDataService, notifier: Notifier
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.account_data = account_data
        self.notifier = notifier
        # set by app.py when federating: public receipts of local users go to other servers
        self.remote: RemoteReceipts | None = None

    async def _require_joined(self, user_id: str, room_id: str) -> None:
        if not await self.rooms.is_joined(room_id, user_id):
            raise forbidden("You are not joined to this room")

    async def _event_in_room(self, room_id: str, event_id: str) -> EventPlace:
        place = await self.store.event_place(event_id)
        if place is None or place.room_id != room_id:
            raise not_found(f"Event {event_id} not found in this room")
        return place

    async def send_receipt(
        self, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: str | None
    ) -> None:
        if receipt_type not in RECEIPT_TYPES:
            raise invalid_param(f"Receipt type must be one of {', '.join(RECEIPT_TYPES)}")
        if thread_id is not None and receipt_type == FULLY_READ:
            raise invalid_param(f"thread_id is not compatible with {FULLY_READ}")
        await self._require_joined(user_id, room_id)
        place = await self._event_in_room(room_id, event_id)
        if thread_id is not None and not _in_thread(event_id, place, thread_id):
            raise invalid_param(f"event_id {event_id} is not related to thread {thread_id}")
        if receipt_type == FULLY_READ:
            await self._set_fully_read(user_id, room_id, event_id, place)
        else:
            await self._put(user_id, room_id, receipt_type, event_id, thread_id)

    async def set_read_markers(self, user_id: str, room_id: str, markers: dict[str, str]) -> None:
        """``markers`` maps m.fully_read / m.read / m.read.private to event ids."""
        await self._require_joined(user_id, room_id)
        places = {k: await self._event_in_room(room_id, v) for k, v in markers.items() if k in RECEIPT_TYPES}
        if FULLY_READ in places:
            await self._set_fully_read(user_id, room_id, markers[FULLY_READ], places[FULLY_READ])
        for receipt_type in (READ, READ_PRIVATE):
            if receipt_type in places:
                await self._put(user_id, room_id, receipt_type, markers[receipt_type], None)

    async def _put(self, user_id: str, room_id: str, receipt_type: str, event_id: str, thread_id: str | None) -> None:
        receipt = Receipt(room_id, receipt_type, user_id, thread_id or UNTHREADED, event_id, _now_ms())
        outbound: list[OutboundEdu] = []
        if self.remote is not None:  # queued in the receipt's own transaction
            outbound = await self.remote.receipt_edus(user_id, room_id, receipt_type, event_id, receipt.ts, thread_id)
        if await self.store.put(receipt, outbound) is None:
            return
        self.notifier.poke()
        if outbound and self.remote is not None:
            self.remote.woken(outbound)

    async def _set_fully_read(self, user_id: str, room_id: str, event_id: str, place: EventPlace) -> None:
        """Move the read marker, never backwards (as Synapse does)."""
        current = await self.account_data.store.get(user_id, room_id, FULLY_READ) or {}
        old_id = current.get("event_id")
        if old_id == event_id:
            return
        if isinstance(old_id, str):
            old = await self.store.event_place(old_id)
            if old is not None and old.stream_pos is not None and place.stream_pos is not None:
                if old.stream_pos >= place.stream_pos:
                    return
        await self.account_data.put(user_id, room_id, FULLY_READ, {"event_id": event_id})

    async def receipts_for_sync(
        self, room_ids: Iterable[str], since: int | None, upto: int, user_id: str
    ) -> dict[str, dict[str, Any]]:
        """The content of each room's m.receipt ephemeral event for receipts
        changed in (since, upto] (all latest receipts when ``since`` is
        None); rooms without changes are absent."""
        out: dict[str, dict[str, Any]] = {}
        for r in await self.store.changes(room_ids, since, upto, user_id):
            entry: dict[str, Any] = {"ts": r.ts}
            if r.thread_id != UNTHREADED:
                entry["thread_id"] = r.thread_id
            out.setdefault(r.room_id, {}).setdefault(r.event_id, {}).setdefault(r.receipt_type, {})[r.user_id] = entry
        return out


def _in_thread(event_id: str, place: EventPlace, thread_id: str) -> bool:
    """Whether a receipt on the event may carry this thread id: thread
    roots and unthreaded events are in the main timeline."""
    if thread_id == MAIN_THREAD:
        return place.thread_id is None
    return event_id == thread_id or place.thread_id == thread_id
