"""Device keys and one-time keys: /keys/upload, /keys/query, /keys/claim
and /keys/changes. Users on other servers are asked through federation
(``remote``, set when the federation listener is on; without it their
servers are reported in ``failures``)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Mapping

import orjson

from ...errors import MatrixError, bad_json
from ...protocol.e2e_keys import KeyObjectError, check_device_keys, check_one_time_keys
from ...protocol.errors import SignatureError
from ...storage.e2e_keys import E2EKeyStore, KeyUpload, OneTimeKeyConflict
from ..accounts import Requester
from ..fanout import Batcher
from ..notifier import CHANGED_KEYS_SPAN, Notifier
from .cross_signing import CrossSigningService
from .device_lists import DeviceListService

if TYPE_CHECKING:
    from .remote_keys import RemoteKeys

MAX_KEYS_PER_UPLOAD = 1000  # one-time keys in one request
MAX_QUERIED_DEVICES = 10_000  # (user, device) pairs in one query or claim

# Key counts a device's last sync reported, kept for its next sync: at most
# this many devices, each for at most this long (longer than the longest
# long-poll, 300 s, so a client's loop of long-polls keeps them).
COUNTS_CACHED = 20_000
COUNTS_TTL_S = 600.0

FEDERATION_FAILURE = {"errcode": "M_UNRECOGNIZED", "error": "Federation is not supported by this server yet"}


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class KeyService:
    def __init__(
        self,
        store: E2EKeyStore,
        device_lists: DeviceListService,
        cross_signing: CrossSigningService,
        server_name: str,
        notifier: Notifier | None = None,
    ) -> None:
        self.store = store
        self.device_lists = device_lists
        self._counts = Batcher(store.key_counts_many)
        self.notifier = notifier
        # (user, device) -> (a position, expiry, counts, fallback key types):
        # the counts are exact as of the position (read once it was reached)
        self._known: OrderedDict[tuple[str, str], tuple[int, float, dict[str, int], list[str]]] = OrderedDict()
        self.cross_signing = cross_signing
        self.server_name = server_name
        self.remote: RemoteKeys | None = None

    def _remote_unsupported(self, user_ids: Any) -> dict[str, Any]:
        return {s: FEDERATION_FAILURE for s in {server_of(u) for u in user_ids} if s != self.server_name}

    # -- upload ------------------------------------------------------------
    async def upload(self, requester: Requester, body: Mapping[str, Any]) -> dict[str, int]:
        user_id, device_id = requester.user_id, requester.device_id
        device_keys = body.get("device_keys")
        try:
            if device_keys is not None:
                check_device_keys(device_keys, user_id, device_id)
            one_time = check_one_time_keys(body.get("one_time_keys") or {}, "one_time_keys")
            fallback_raw = body.get("fallback_keys")
            fallback = check_one_time_keys(fallback_raw, "fallback_keys") if fallback_raw is not None else None
        except SignatureError as e:
            raise MatrixError(400, "M_INVALID_SIGNATURE", f"device_keys: {e}") from None
        except KeyObjectError as e:
            raise bad_json(str(e)) from None
        if len(one_time) > MAX_KEYS_PER_UPLOAD:
            raise MatrixError(400, "M_TOO_LARGE", f"At most {MAX_KEYS_PER_UPLOAD} one-time keys per upload")
        if fallback is not None and len({alg for alg, _ in fallback.values()}) != len(fallback):
            raise bad_json("fallback_keys: at most one key per algorithm")
        upload = KeyUpload(dict(device_keys) if device_keys is not None else None, one_time, fallback)
        try:
            counts, changed = await self.store.upload(user_id, device_id, upload)
        except OneTimeKeyConflict as e:
            raise MatrixError(
                400, "M_INVALID_PARAM", f"Key {e.key_id} already exists with different content"
            ) from None
        if changed:
            self.device_lists.notifier.poke()
        if upload.device_keys is not None:
            # what the upload's transaction left to announce to other
            # servers (nothing if unchanged; after a crash the sender's
            # sweep announces it)
            await self.device_lists.local_change(user_id, [device_id], "changed")
        return counts

    # -- query -------------------------------------------------------------
    async def query(
        self, requester: Requester, wanted: Mapping[str, list[str]], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        _check_size(wanted)
        local = {u: list(d) for u, d in wanted.items() if server_of(u) == self.server_name}
        remote = {u: list(d) for u, d in wanted.items() if server_of(u) != self.server_name}
        remote_answer: dict[str, dict[str, Any]] = {}
        if remote and self.remote is not None:
            remote_task = asyncio.ensure_future(self.remote.query(remote, timeout_s))
            try:
                found = await self.store.device_keys_for(local)
            finally:
                remote_answer, failures = await remote_task
        else:
            failures = self._remote_unsupported(remote)
            found = await self.store.device_keys_for(local)
        extra = await self.store.signatures_on(
            (u, d) for u, devices in found.items() for d in devices
        )
        device_keys: dict[str, dict[str, Any]] = {}
        for user_id, devices in found.items():
            out = device_keys[user_id] = {}
            for device_id, (key_json, display_name) in devices.items():
                key = orjson.loads(key_json)
                self.cross_signing.merge_signatures(key, extra.get((user_id, device_id), []), requester, user_id)
                if display_name is not None:
                    key.setdefault("unsigned", {})["device_display_name"] = display_name
                out[device_id] = key
        result: dict[str, Any] = {"device_keys": device_keys, "failures": failures}
        result.update(await self.cross_signing.keys_for_query(requester, list(local)))
        for section, keys in remote_answer.items():
            result.setdefault(section, {}).update(keys)
        return result

    # -- claim -------------------------------------------------------------
    async def claim(self, wanted: Mapping[str, Mapping[str, str]], timeout_s: float = 10.0) -> dict[str, Any]:
        _check_size(wanted)
        requests = [
            (user_id, device_id, algorithm)
            for user_id, devices in wanted.items() if server_of(user_id) == self.server_name
            for device_id, algorithm in devices.items()
        ]
        remote = {u: d for u, d in wanted.items() if server_of(u) != self.server_name}
        one_time_keys: dict[str, dict[str, dict[str, Any]]] = {}
        failures: dict[str, Any] = {}
        if remote and self.remote is not None:
            remote_task = asyncio.ensure_future(self.remote.claim(remote, timeout_s))
            try:
                claimed = await self.store.claim(requests)
            finally:
                one_time_keys, failures = await remote_task
        else:
            failures = self._remote_unsupported(remote)
            claimed = await self.store.claim(requests)
        for key in claimed:
            one_time_keys.setdefault(key.user_id, {}).setdefault(key.device_id, {})[key.key_id] = key.key
        return {"one_time_keys": one_time_keys, "failures": failures}

    # -- changes -------------------------------------------------------------
    async def changes(self, requester: Requester, since: int, upto: int) -> dict[str, list[str]]:
        changed, left = await self.device_lists.changes(requester.user_id, since, upto)
        return {"changed": changed, "left": left}

    # -- /sync ------------------------------------------------------------------
    async def counts_for_sync(self, requester: Requester, since: int | None, upto: int) -> dict[str, Any]:
        """The device's one-time key counts and unused fallback key types as
        of ``upto``: what its previous sync reported when none of the user's
        keys changed in (since, upto] (``e2e_key_count_changes``: uploads,
        claims on any instance, removed devices), else read (together for
        the syncs woken together)."""
        key = (requester.user_id, requester.device_id)
        now = time.monotonic()
        hit = self._known.get(key)
        unchanged = False
        if hit is not None and since is not None and since <= hit[0] <= upto and hit[1] > now:
            changes = await self._changes(since, upto)
            unchanged = changes is not None and requester.user_id not in changes.get("e2e_key_count_changes", ())
        if hit is not None and unchanged:
            counts, fallback, expires = hit[2], hit[3], hit[1]
        else:
            found_counts, found_fallback = await self._counts.get(key)
            # (read after upto was reached: every change at or below it is in them)
            counts, fallback, expires = dict(found_counts), list(found_fallback), now + COUNTS_TTL_S
        self._remember(key, upto, expires, counts, fallback)
        return {"device_one_time_keys_count": dict(counts), "device_unused_fallback_key_types": list(fallback)}

    async def _changes(self, since: int, upto: int) -> Mapping[str, set[str]] | None:
        if self.notifier is None or upto - since > CHANGED_KEYS_SPAN:
            return None
        return await self.notifier.changes(since, upto)

    def _remember(self, key: tuple[str, str], pos: int, expires: float, counts: dict[str, int],
                  fallback: list[str]) -> None:
        known = self._known.get(key)
        if known is not None and known[0] > pos:
            return  # a later sync's counts
        self._known[key] = (pos, expires, counts, fallback)
        self._known.move_to_end(key)
        while len(self._known) > COUNTS_CACHED:
            self._known.popitem(last=False)


def _check_size(wanted: Mapping[str, Any]) -> None:
    total = sum(max(1, len(devices)) for devices in wanted.values())
    if total > MAX_QUERIED_DEVICES:
        raise MatrixError(400, "M_TOO_LARGE", f"At most {MAX_QUERIED_DEVICES} devices per request")
