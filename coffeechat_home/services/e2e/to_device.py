"""To-device messages: PUT /sendToDevice and the ``to_device`` section of
/sync (delivered once acknowledged, at most ``SYNC_BATCH`` a response)."""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

import orjson

from ...errors import MatrixError, bad_json
from ...protocol.canonical import check_canonical_json_values
from ...protocol.errors import CanonicalJSONError
from ...storage.edu_outbox import OutboundEdu
from ...storage.to_device import ToDeviceStore
from ..accounts import Requester, now_ms
from ..fanout import Batcher
from ..notifier import CHANGED_KEYS_SPAN, Notifier

SYNC_BATCH = 100  # messages per /sync response, about
ACKED_CACHED = 100_000  # devices whose last acknowledgement is remembered
MAX_RECIPIENTS = 10_000  # (user, device) entries in one send
FEDERATION_ERROR = "Sending to-device messages to other servers is not supported yet"


# (sender, type, message_id, {user: {device: content}}) -> the EDUs to queue
RemoteEdus = Callable[[str, str, str, Mapping[str, Mapping[str, Any]]], list[OutboundEdu]]


def message_id_for(user_id: str, device_id: str, txn_id: str) -> str:
    """The ``message_id`` of the m.direct_to_device EDUs of one send: the
    same for a retried request, so receivers store it once."""
    digest = hashlib.sha256(f"{user_id}\0{device_id}\0{txn_id}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


class ToDeviceService:
    def __init__(self, store: ToDeviceStore, notifier: Notifier, server_name: str) -> None:
        self.store = store
        self.notifier = notifier
        self.server_name = server_name
        # the acknowledgements of syncs woken together go in one statement
        self._acks: Batcher[tuple[str, str, int], None] = Batcher(self._acknowledge_many)
        # (user, device) -> the highest position acknowledged through this
        # process: a long-poll's wake-up asks again with the since it
        # acknowledged before waiting, which deletes nothing more
        self._acked: OrderedDict[tuple[str, str], int] = OrderedDict()
        # Messages to other servers' users: remote_edus (set with the
        # federation sender: E2EFederation.to_device_edus) builds the
        # m.direct_to_device EDUs, queued in the federation outbox in the
        # same transaction as the send; then wake(destinations). Unset,
        # they are refused with M_UNRECOGNIZED.
        self.remote_edus: RemoteEdus | None = None
        self.wake: Callable[[Iterable[str]], None] = lambda destinations: None

    async def _acknowledge_many(self, acks: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], None]:
        await self.store.acknowledge_many(acks)
        return dict.fromkeys(acks)

    async def send(
        self, requester: Requester, event_type: str, txn_id: str, messages: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Queue the messages once per (device, txn id); a repeated txn id
        is accepted and stores nothing."""
        flat: list[tuple[str, str, dict[str, Any]]] = []
        remote: dict[str, dict[str, Any]] = {}
        for user_id, devices in messages.items():
            if user_id.split(":", 1)[-1] != self.server_name:
                if self.remote_edus is None:
                    raise MatrixError(400, "M_UNRECOGNIZED", FEDERATION_ERROR)
                remote[user_id] = dict(devices)
                continue
            for device_id, content in devices.items():
                flat.append((user_id, device_id, content))
        if len(flat) + sum(len(d) for d in remote.values()) > MAX_RECIPIENTS:
            raise MatrixError(413, "M_TOO_LARGE", f"At most {MAX_RECIPIENTS} recipient devices per request")
        try:
            check_canonical_json_values(messages)
        except CanonicalJSONError as e:
            raise bad_json(f"messages: {e}") from None
        sender = (requester.user_id, requester.device_id)
        edus = (self.remote_edus(requester.user_id, event_type, message_id_for(*sender, txn_id), remote)
                if remote and self.remote_edus is not None else [])
        # queued with the transaction id: a repeated request queues nothing
        if await self.store.send(sender, txn_id, event_type, flat, now_ms(), edus):
            self.notifier.poke()
            if edus:
                self.wake({e.destination for e in edus})

    # -- /sync ---------------------------------------------------------------
    async def sync_upto(self, requester: Requester, since: int | None, upto: int) -> int:
        """Forget what the device acknowledged (everything up to ``since``)
        and say how far this response may go so that it carries about
        SYNC_BATCH messages; the rest come in the next one."""
        user_id, device_id = requester.user_id, requester.device_id
        if since is not None:
            await self._acknowledge(user_id, device_id, since)
            changes = await self._changes(since, upto)
            if changes is not None and user_id not in changes.get("to_device_messages", ()):
                return upto  # nothing for the user's devices in (since, upto]
        return await self.store.batch_end(user_id, device_id, since if since is not None else -1, upto, SYNC_BATCH)

    async def _acknowledge(self, user_id: str, device_id: str, since: int) -> None:
        key = (user_id, device_id)
        acked = self._acked.get(key, -1)
        if acked >= since:
            return  # done already: everything up to since is gone
        changes = await self._changes(acked, since) if acked >= 0 else None
        if changes is None or user_id in changes.get("to_device_messages", ()):
            await self._acks.get((user_id, device_id, since))
        # (else nothing came for the user's devices in (acked, since]: nothing to forget)
        if self._acked.get(key, -1) < since:
            self._acked[key] = since
        self._acked.move_to_end(key)
        while len(self._acked) > ACKED_CACHED:
            self._acked.popitem(last=False)

    async def _changes(self, since: int, upto: int) -> Mapping[str, set[str]] | None:
        if upto - since > CHANGED_KEYS_SPAN:
            return None
        return await self.notifier.changes(since, upto)

    async def events_for_sync(self, requester: Requester, since: int | None, upto: int) -> list[Any]:
        if since is not None:
            changes = await self._changes(since, upto)
            if changes is not None and requester.user_id not in changes.get("to_device_messages", ()):
                return []
        pending = await self.store.pending(
            requester.user_id, requester.device_id, since if since is not None else -1, upto
        )
        return [
            {"sender": m.sender, "type": m.type, "content": orjson.Fragment(m.content.encode())} for m in pending
        ]
