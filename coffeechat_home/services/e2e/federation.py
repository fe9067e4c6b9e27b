"""End-to-end encryption over federation, our side of it.

- Serving other servers (our users only): ``POST /user/keys/query``,
  ``POST /user/keys/claim`` and ``GET /user/devices/{userId}``
  (``E2EFederation.serve_*``).
- Inbound EDUs (the origin already verified by the caller):
  ``on_device_list_update``, ``on_direct_to_device``,
  ``on_signing_key_update``.
- Outbound EDUs of our users: ``to_device_edus`` (queued by the to-device
  service with the send), ``device_list_edus`` and ``signing_key_edus``:
  a change of our user's devices writes a ``device_list_outbound`` row in
  its transaction; ``local_change`` (after the commit) or the sender's
  sweep (``announce_pending``, after a crash) turn it into outbox EDUs.
- Asking other servers for their users' keys: ``remote_keys.RemoteKeys``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Iterable, Mapping

import asyncpg
import orjson

from ...errors import MatrixError, bad_json, invalid_param, not_found
from ...federation.client import FederationError
from ...protocol.e2e_keys import KeyObjectError, check_cross_signing_key, cross_signing_public_key
from ...storage.database import Database
from ...storage.edu_outbox import EduOutboxStore, OutboundEdu, enqueue_edus
from ...storage.e2e_keys import E2EKeyStore, PendingAnnouncement, device_list_positions
from ...storage.remote_device_lists import RemoteDeviceListStore
from ...storage.to_device import ToDeviceStore
from ..accounts import now_ms
from ..notifier import Notifier
from .remote_keys import RemoteKeys, checked_cross_signing, server_of, valid_user_id

log = logging.getLogger(__name__)

MAX_EDU_RECIPIENTS = 10_000
ANNOUNCE_BATCH = 100  # device-list changes announced per sweep
MAX_TO_DEVICE_EDU_BYTES = 64 * 1024  # an outbound m.direct_to_device EDU's messages, about


# ---------------------------------------------------------------------------
# serving other servers, inbound and outbound EDUs
# ---------------------------------------------------------------------------

class E2EFederation:
    def __init__(
        self,
        db: Database,
        keys: E2EKeyStore,
        to_device: ToDeviceStore,
        remote_lists: RemoteDeviceListStore,
        notifier: Notifier,
        server_name: str,
        user_exists: Callable[[str], Awaitable[bool]],
        remote: RemoteKeys | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.to_device = to_device
        self.remote_lists = remote_lists
        self.notifier = notifier
        self.server_name = server_name
        self.user_exists = user_exists
        self.remote = remote
        # the federation sender's outbox and wake-up, and the servers that
        # share a room with a user (set when federating)
        self.outbox: EduOutboxStore | None = None
        self.wake: Callable[[Iterable[str]], None] = lambda destinations: None
        self.servers_sharing: Callable[[str], Awaitable[list[str]]] | None = None
        self.edus_queued = 0

    def attach_sender(self, outbox: EduOutboxStore | None, wake: Callable[[Iterable[str]], None],
                      servers_sharing: Callable[[str], Awaitable[list[str]]]) -> None:
        self.outbox = outbox
        self.wake = wake
        self.servers_sharing = servers_sharing

    async def local_change(self, user_id: str, device_ids: list[str], kind: str) -> None:
        """After a change of our user's devices ("changed", "deleted") or
        cross-signing keys ("cross_signing") committed: announce what the
        change's transaction left to announce (``device_list_outbound``
        rows) for that user. A crash before this runs loses nothing: the
        federation sender's sweep calls ``announce_pending``."""
        if self.outbox is None or self.servers_sharing is None or not self._is_mine(user_id):
            return
        await self._announce(await self.keys.pending_announcements(user_id))

    async def announce_pending(self) -> int:
        """The sweep: announce every change left to announce (bounded per
        call; the next sweep goes on). Returns how many were handled."""
        if self.outbox is None or self.servers_sharing is None:
            return 0
        pending = await self.keys.pending_announcements(None, ANNOUNCE_BATCH)
        await self._announce(pending)
        return len(pending)

    async def _announce(self, pending: list[PendingAnnouncement]) -> None:
        """Each row's EDUs queued in the transaction that deletes the row:
        only the one that deletes it queues them (a post-commit step and a
        sweep racing each other queue them once)."""
        assert self.outbox is not None and self.servers_sharing is not None
        for row in pending:
            edus: list[OutboundEdu] = []
            if self._is_mine(row.user_id):
                destinations = await self.servers_sharing(row.user_id)
                if destinations:
                    if row.kind == "cross_signing":
                        edus = await self.signing_key_edus(row.user_id, destinations)
                    else:
                        edus = await self.device_list_edus(row.user_id, row.device_ids, destinations,
                                                           deleted=row.kind == "deleted", at=row.stream_pos)

            async def txn(conn: asyncpg.Connection, row: PendingAnnouncement = row,
                          edus: list[OutboundEdu] = edus) -> bool:
                deleted = await conn.fetchval(
                    """DELETE FROM device_list_outbound WHERE user_id = $1 AND stream_pos = $2 AND kind = $3
                       RETURNING 1""",
                    row.user_id, row.stream_pos, row.kind,
                )
                if deleted is None:
                    return False
                await enqueue_edus(conn, edus, now_ms())
                return True

            if await self.db.transaction(txn, name="device_list_announce") and edus:
                self.wake(sorted({e.destination for e in edus}))
                self.edus_queued += len(edus)

    def _is_mine(self, user_id: str) -> bool:
        return server_of(user_id) == self.server_name

    # -- serving: /user/keys/query, /user/keys/claim, /user/devices ----------
    async def _local_device_keys(self, wanted: Mapping[str, list[str]]) -> dict[str, dict[str, Any]]:
        """Device keys of our users, with the owner's own signatures (a
        signature by another user's user-signing key is never shown to
        other servers)."""
        found = await self.keys.device_keys_for({u: list(d) for u, d in wanted.items()})
        extra = await self.keys.signatures_on((u, d) for u, devices in found.items() for d in devices)
        out: dict[str, dict[str, Any]] = {}
        for user_id, devices in found.items():
            mine = out[user_id] = {}
            for device_id, (key_json, display_name) in devices.items():
                key = orjson.loads(key_json)
                _merge_own(key, extra.get((user_id, device_id), []), user_id)
                if display_name is not None:
                    key.setdefault("unsigned", {})["device_display_name"] = display_name
                mine[device_id] = key
        return out

    async def _cross_signing(self, user_ids: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(master keys, self-signing keys) of our users; never user-signing keys."""
        stored = await self.keys.cross_signing_keys(user_ids)
        masters = {u: cross_signing_public_key(k["master"])[1] for u, k in stored.items() if "master" in k}
        extra = await self.keys.signatures_on(masters.items())
        master_keys: dict[str, Any] = {}
        ssks: dict[str, Any] = {}
        for user_id, keys in stored.items():
            if "master" in keys:
                master = dict(keys["master"])
                _merge_own(master, extra.get((user_id, masters[user_id]), []), user_id)
                master_keys[user_id] = master
            if "self_signing" in keys:
                ssks[user_id] = keys["self_signing"]
        return master_keys, ssks

    def _only_mine(self, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            if not self._is_mine(user_id):
                raise invalid_param(f"{user_id} is not a user of this server")

    async def serve_query(self, origin: str, body: Any) -> dict[str, Any]:
        wanted = body.get("device_keys") if isinstance(body, Mapping) else None
        if not isinstance(wanted, Mapping) or not all(
            isinstance(d, list) and all(isinstance(x, str) for x in d) for d in wanted.values()
        ):
            raise bad_json("device_keys must map user ids to lists of device ids")
        self._only_mine(wanted)
        _check_size(sum(max(1, len(d)) for d in wanted.values()))
        master_keys, ssks = await self._cross_signing(list(wanted))
        return {
            "device_keys": await self._local_device_keys(wanted),
            "master_keys": master_keys,
            "self_signing_keys": ssks,
        }

    async def serve_claim(self, origin: str, body: Any) -> dict[str, Any]:
        wanted = body.get("one_time_keys") if isinstance(body, Mapping) else None
        if not isinstance(wanted, Mapping) or not all(
            isinstance(d, Mapping) and all(isinstance(a, str) for a in d.values()) for d in wanted.values()
        ):
            raise bad_json("one_time_keys must map user ids to objects of device id -> algorithm")
        self._only_mine(wanted)
        _check_size(sum(len(d) for d in wanted.values()))
        requests = [(u, d, alg) for u, devices in wanted.items() for d, alg in devices.items()]
        one_time_keys: dict[str, dict[str, dict[str, Any]]] = {}
        for key in await self.keys.claim(requests):
            one_time_keys.setdefault(key.user_id, {}).setdefault(key.device_id, {})[key.key_id] = key.key
        return {"one_time_keys": one_time_keys}

    async def serve_user_devices(self, origin: str, user_id: str) -> dict[str, Any]:
        self._only_mine([user_id])
        if not await self.user_exists(user_id):
            raise not_found(f"{user_id} does not exist")
        positions = await device_list_positions(self.db, user_id, 1)
        keys = (await self._local_device_keys({user_id: []})).get(user_id, {})
        devices = []
        for device_id, key in sorted(keys.items()):
            entry: dict[str, Any] = {"device_id": device_id, "keys": key}
            display_name = key.get("unsigned", {}).get("device_display_name")
            if display_name is not None:
                entry["device_display_name"] = display_name
            devices.append(entry)
        out: dict[str, Any] = {"user_id": user_id, "stream_id": positions[0] if positions else 0,
                               "devices": devices}
        master_keys, ssks = await self._cross_signing([user_id])
        if user_id in master_keys:
            out["master_key"] = master_keys[user_id]
        if user_id in ssks:
            out["self_signing_key"] = ssks[user_id]
        return out

    # -- inbound EDUs (origin verified by the caller) -------------------------------
    async def on_direct_to_device(self, origin: str, content: Any) -> int:
        """Store an ``m.direct_to_device`` EDU's messages for our users'
        devices, once per (sender, message_id); returns how many messages
        were addressed to our users (0 for a repeat or nothing of ours;
        devices that do not exist get nothing)."""
        if not isinstance(content, Mapping):
            raise bad_json("m.direct_to_device content must be an object")
        sender, event_type, message_id = content.get("sender"), content.get("type"), content.get("message_id")
        messages = content.get("messages")
        if not all(isinstance(v, str) and v for v in (sender, event_type, message_id)):
            raise bad_json("m.direct_to_device needs sender, type and message_id strings")
        assert isinstance(sender, str) and isinstance(event_type, str) and isinstance(message_id, str)
        if server_of(sender) != origin:
            raise bad_json(f"The sender {sender} is not a user of {origin}")
        if not isinstance(messages, Mapping):
            raise bad_json("m.direct_to_device messages must be an object")
        flat: list[tuple[str, str, dict[str, Any]]] = []
        for user_id, devices in messages.items():
            if not self._is_mine(user_id) or not isinstance(devices, Mapping):
                continue
            for device_id, message in devices.items():
                if isinstance(device_id, str) and isinstance(message, Mapping):
                    flat.append((user_id, device_id, dict(message)))
        if not flat:
            return 0
        if len(flat) > MAX_EDU_RECIPIENTS:
            raise bad_json(f"At most {MAX_EDU_RECIPIENTS} recipient devices per EDU")
        # remote senders have no device of ours: the transaction id is
        # the message id, kept per sending user under an empty device id
        if await self.to_device.send((sender, ""), message_id, event_type, flat, now_ms()):
            self.notifier.poke()
            return len(flat)
        return 0

    async def on_device_list_update(self, origin: str, content: Any) -> str:
        """Apply an ``m.device_list_update`` EDU: in order by ``prev_id``
        ("applied"), a repeat ("duplicate"), or a gap that triggers a resync
        through ``GET /user/devices`` ("resynced", or "resync_failed"); in
        each case but a repeat the user is marked changed for our users."""
        if not isinstance(content, Mapping):
            raise bad_json("m.device_list_update content must be an object")
        user_id, stream_id = content.get("user_id"), content.get("stream_id")
        prev_ids = content.get("prev_id") or []
        if not isinstance(user_id, str) or server_of(user_id) != origin:
            raise bad_json(f"m.device_list_update user_id must be a user of {origin}")
        if isinstance(stream_id, bool) or not isinstance(stream_id, int):
            raise bad_json("m.device_list_update stream_id must be an integer")
        if not isinstance(prev_ids, list) or not all(isinstance(p, int) and not isinstance(p, bool)
                                                     for p in prev_ids):
            raise bad_json("m.device_list_update prev_id must be a list of integers")
        seen = await self.remote_lists.seen_ids(user_id)
        if stream_id in seen:
            return "duplicate"
        if all(p in seen for p in prev_ids):
            await self.remote_lists.record(user_id, [stream_id])
            self.notifier.poke()
            return "applied"
        return await self.resync(user_id, also_seen=stream_id)

    async def resync(self, user_id: str, also_seen: int | None = None) -> str:
        """Fetch a remote user's whole device list; its ``stream_id`` (and
        the update that revealed the gap) become the ids we have seen."""
        if self.remote is None:
            await self.remote_lists.mark_changed(user_id)
            self.notifier.poke()
            return "resync_failed"
        try:
            answer = await self.remote.user_devices(user_id)
        except (FederationError, ValueError, asyncio.TimeoutError) as e:
            log.info("Device-list resync of %s failed: %s", user_id, e)
            await self.remote_lists.mark_changed(user_id)
            self.notifier.poke()
            return "resync_failed"
        ids = [int(answer["stream_id"])]
        if also_seen is not None and also_seen <= ids[0]:
            ids.append(also_seen)
        await self.remote_lists.record(user_id, ids, replace=True)
        self.notifier.poke()
        return "resynced"

    async def on_signing_key_update(self, origin: str, content: Any) -> bool:
        """An ``m.signing_key_update`` EDU: checked keys of a user of the
        origin mark that user changed; True when the keys passed."""
        if not isinstance(content, Mapping):
            raise bad_json("m.signing_key_update content must be an object")
        user_id = content.get("user_id")
        if not isinstance(user_id, str) or server_of(user_id) != origin:
            raise bad_json(f"m.signing_key_update user_id must be a user of {origin}")
        master, ssk = content.get("master_key"), content.get("self_signing_key")
        good_master, good_ssk = checked_cross_signing(user_id, master, ssk)
        if (master is not None and good_master is None) or (ssk is not None and master is not None
                                                             and good_ssk is None):
            raise bad_json("m.signing_key_update keys are malformed or not signed by the master key")
        if master is None and ssk is not None:
            try:
                check_cross_signing_key(ssk, user_id, "self_signing")
            except KeyObjectError as e:
                raise bad_json(str(e)) from None
        await self.remote_lists.mark_changed(user_id)
        self.notifier.poke()
        return True

    # -- outbound EDUs of our users ---------------------------------------------------
    def to_device_edus(
        self, sender: str, event_type: str, message_id: str, messages: Mapping[str, Mapping[str, Any]]
    ) -> list[OutboundEdu]:
        """``m.direct_to_device`` EDUs for each server of the remote
        recipients (our own users' messages are stored locally instead):
        one per server, split into parts of about ``MAX_TO_DEVICE_EDU_BYTES``
        (a receiver's body limit must never block the queue); a part's
        ``message_id`` is ``message_id`` then ``message_id.1``, ``.2``...
        (receivers dedupe by it; a retried request gives the same ids)."""
        by_server: dict[str, list[tuple[str, str, Any]]] = {}
        for user_id, devices in messages.items():
            server = server_of(user_id)
            if server and server != self.server_name and valid_user_id(user_id):  # no queue for a junk name
                by_server.setdefault(server, []).extend((user_id, d, c) for d, c in devices.items())
        edus: list[OutboundEdu] = []
        for server, entries in sorted(by_server.items()):
            parts: list[dict[str, dict[str, Any]]] = [{}]
            size = 0
            for user_id, device_id, content in entries:
                n = len(orjson.dumps(content)) + len(user_id) + len(device_id)
                if size and size + n > MAX_TO_DEVICE_EDU_BYTES:
                    parts.append({})
                    size = 0
                parts[-1].setdefault(user_id, {})[device_id] = content
                size += n
            for i, msgs in enumerate(parts):
                edus.append(OutboundEdu(server, "m.direct_to_device", {
                    "sender": sender, "type": event_type, "message_id": message_id if i == 0 else f"{message_id}.{i}",
                    "messages": msgs,
                }))
        return edus

    async def device_list_edus(
        self, user_id: str, device_ids: Iterable[str], destinations: Iterable[str], *, deleted: bool = False,
        at: int | None = None,
    ) -> list[OutboundEdu]:
        """``m.device_list_update`` EDUs for a change of our user's devices:
        ``stream_id`` is the change's device-list position ``at`` (default:
        the user's newest) and ``prev_id`` the one before (what a receiver
        must have seen)."""
        if at is not None:
            previous = await self.keys.previous_position(user_id, at)
            positions = [at] + ([previous] if previous is not None else [])
        else:
            positions = await device_list_positions(self.db, user_id, 2)
        if not positions:
            return []
        keys = {} if deleted else (await self._local_device_keys({user_id: list(device_ids)})).get(user_id, {})
        edus: list[OutboundEdu] = []
        for device_id in sorted(set(device_ids)):
            content: dict[str, Any] = {
                "user_id": user_id, "device_id": device_id, "stream_id": positions[0],
                "prev_id": positions[1:],
            }
            if deleted:
                content["deleted"] = True
            elif device_id in keys:  # a new device has no keys until it uploads them
                key = keys[device_id]
                content["keys"] = key
                display_name = key.get("unsigned", {}).get("device_display_name")
                if display_name is not None:
                    content["device_display_name"] = display_name
            edus.extend(OutboundEdu(d, "m.device_list_update", content) for d in sorted(set(destinations))
                        if d != self.server_name)
        return edus

    async def signing_key_edus(self, user_id: str, destinations: Iterable[str]) -> list[OutboundEdu]:
        master_keys, ssks = await self._cross_signing([user_id])
        content: dict[str, Any] = {"user_id": user_id}
        if user_id in master_keys:
            content["master_key"] = master_keys[user_id]
        if user_id in ssks:
            content["self_signing_key"] = ssks[user_id]
        return [OutboundEdu(d, "m.signing_key_update", content) for d in sorted(set(destinations))
                if d != self.server_name]


def _merge_own(key: dict[str, Any], extra: list[tuple[str, str, str]], owner: str) -> None:
    for signer, sig_key_id, signature in extra:
        if signer == owner:
            key.setdefault("signatures", {}).setdefault(signer, {})[sig_key_id] = signature


def _check_size(n: int) -> None:
    from .keys import MAX_QUERIED_DEVICES

    if n > MAX_QUERIED_DEVICES:
        raise MatrixError(400, "M_TOO_LARGE", f"At most {MAX_QUERIED_DEVICES} devices per request")
