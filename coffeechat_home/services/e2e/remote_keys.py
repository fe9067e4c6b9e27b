"""Our clients asking other servers for their users' keys (``RemoteKeys``,
for ``/keys/query`` and ``/keys/claim``): one request per server, all in
parallel within the client's ``timeout``; servers that fail are listed in
``failures``. Remote device keys whose self-signature does not verify, and
cross-signing keys not signed as they must be, are dropped. With a cache
(``RemoteDeviceListStore``), the keys of users we share a room with are
answered from the last fetch until their server's device-list update
drops it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

from ...errors import invalid_param
from ...federation.client import FederationClient, FederationError, RemoteError
from ...protocol.e2e_keys import check_cross_signing_key, check_device_keys, cross_signing_public_key, verify_signed_by
from ...protocol.errors import ProtocolError, SignatureError
from ...protocol.identifiers import InvalidIdentifier, parse_user_id
from ...storage.remote_device_lists import RemoteDeviceListStore
from ..accounts import now_ms

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 10_000
MAX_TIMEOUT_MS = 60_000

QUERY_PATH = "/_matrix/federation/v1/user/keys/query"
CLAIM_PATH = "/_matrix/federation/v1/user/keys/claim"
DEVICES_PATH = "/_matrix/federation/v1/user/devices/"


def server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


def valid_user_id(user_id: str) -> bool:
    try:
        parse_user_id(user_id)
    except InvalidIdentifier:
        return False
    return True


# ---------------------------------------------------------------------------
# checks on keys received from another server
# ---------------------------------------------------------------------------

def checked_device_keys(user_id: str, devices: Any) -> dict[str, dict[str, Any]]:
    """The device keys of one remote user that are well formed, for that
    user and device, and self-signed by the device's ed25519 key."""
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(devices, Mapping):
        return out
    for device_id, key in devices.items():
        try:
            check_device_keys(key, user_id, device_id)
        except (ProtocolError, SignatureError) as e:
            log.info("Dropping device keys of %s %s: %s", user_id, device_id, e)
            continue
        out[device_id] = dict(key)
    return out


def checked_cross_signing(user_id: str, master: Any, self_signing: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(master, self-signing) keys of a remote user that pass: shapes, the
    user, and the self-signing key signed by the master key."""
    good_master: dict[str, Any] | None = None
    if master is not None:
        try:
            check_cross_signing_key(master, user_id, "master")
            good_master = dict(master)
        except ProtocolError as e:
            log.info("Dropping master key of %s: %s", user_id, e)
    good_ssk: dict[str, Any] | None = None
    if self_signing is not None and good_master is not None:
        try:
            check_cross_signing_key(self_signing, user_id, "self_signing")
            key_id, public = cross_signing_public_key(good_master)
            verify_signed_by(self_signing, user_id, key_id, public)
            good_ssk = dict(self_signing)
        except (ProtocolError, SignatureError) as e:
            log.info("Dropping self-signing key of %s: %s", user_id, e)
    return good_master, good_ssk


def _failure(e: BaseException) -> dict[str, Any]:
    if isinstance(e, RemoteError):
        return {"status": e.status, "errcode": e.errcode or "M_UNKNOWN", "message": str(e)}
    if isinstance(e, asyncio.TimeoutError):
        return {"status": 503, "message": "Timed out"}
    return {"status": 503, "message": str(e) or type(e).__name__}


def request_timeout_s(body: Mapping[str, Any]) -> float:
    timeout = body.get("timeout", DEFAULT_TIMEOUT_MS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise invalid_param("timeout must be a non-negative integer (milliseconds)")
    return max(1, min(timeout, MAX_TIMEOUT_MS)) / 1000


# ---------------------------------------------------------------------------
# our clients asking other servers
# ---------------------------------------------------------------------------

class RemoteKeys:
    """Other servers' users' keys. With a ``cache`` (``server_name`` and
    ``position``: a safe stream position read now), the keys of users we share a room with
    (so their device-list updates reach us and drop the cache) are
    answered from the last fetch until a change is recorded."""

    def __init__(
        self,
        client: FederationClient,
        cache: RemoteDeviceListStore | None = None,
        server_name: str = "",
        position: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.client = client
        self.cache = cache
        self.server_name = server_name
        self.position = position
        self.cache_hits = 0
        self.fetched = 0

    async def _each_server(
        self,
        by_server: Mapping[str, Any],
        ask: Callable[[str, Any], Awaitable[dict[str, Any]]],
        timeout_s: float,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        servers = sorted(by_server)

        async def one(server: str) -> dict[str, Any]:
            return await asyncio.wait_for(ask(server, by_server[server]), timeout_s)

        results = await asyncio.gather(*(one(s) for s in servers), return_exceptions=True)
        answers: dict[str, dict[str, Any]] = {}
        failures: dict[str, dict[str, Any]] = {}
        for server, result in zip(servers, results):
            if isinstance(result, (FederationError, asyncio.TimeoutError, ValueError)):
                failures[server] = _failure(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers[server] = result
        return answers, failures

    async def query(
        self, wanted: Mapping[str, list[str]], timeout_s: float
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Remote users' keys: ({device_keys, master_keys, self_signing_keys}, failures)."""
        wanted = {u: list(d) for u, d in wanted.items() if valid_user_id(u)}  # nobody has keys for a malformed id
        out: dict[str, dict[str, Any]] = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        if self.cache is None or self.position is None or not wanted:
            fetched, failures = await self._fetch(wanted, timeout_s)
            _add_user_keys(out, wanted, fetched)
            return out, failures
        before = await self.position()
        tracked = await self.cache.tracked(wanted, self.server_name)
        untracked = [u for u in wanted if u not in tracked]
        if untracked:  # no update would tell us of their changes: never trust an old copy
            await self.cache.drop_cached(untracked)
        cached = await self.cache.cached(tracked, self.server_name) if tracked else {}
        self.cache_hits += len(cached)
        # users we track are fetched whole (all devices) to be cached whole
        to_fetch = {u: ([] if u in tracked else d) for u, d in wanted.items() if u not in cached}
        fetched, failures = await self._fetch(to_fetch, timeout_s) if to_fetch else ({}, {})
        await self.cache.put_cached({u: k for u, k in fetched.items() if u in tracked}, before, now_ms())
        _add_user_keys(out, wanted, {**cached, **fetched})
        return out, failures

    async def _fetch(
        self, wanted: Mapping[str, list[str]], timeout_s: float
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Ask the users' servers: ({user: {device_keys, master_key?,
        self_signing_key?}} for the users of servers that answered, failures)."""
        by_server: dict[str, dict[str, list[str]]] = {}
        for user_id, devices in wanted.items():
            by_server.setdefault(server_of(user_id), {})[user_id] = list(devices)
        self.fetched += len(wanted)

        async def ask(server: str, users: dict[str, list[str]]) -> dict[str, Any]:
            answer = await self.client.post_json(server, QUERY_PATH, {"device_keys": users}, timeout_s=timeout_s)
            if not isinstance(answer, Mapping):
                raise ValueError(f"{server} answered the key query with something that is not an object")
            return dict(answer)

        answers, failures = await self._each_server(by_server, ask, timeout_s)
        out: dict[str, dict[str, Any]] = {}
        for server, answer in answers.items():
            device_keys = answer.get("device_keys")
            device_keys = device_keys if isinstance(device_keys, Mapping) else {}
            masters = answer.get("master_keys")
            masters = masters if isinstance(masters, Mapping) else {}
            ssks = answer.get("self_signing_keys")
            ssks = ssks if isinstance(ssks, Mapping) else {}
            for user_id in by_server[server]:
                user: dict[str, Any] = {"device_keys": checked_device_keys(user_id, device_keys.get(user_id))}
                master, ssk = checked_cross_signing(user_id, masters.get(user_id), ssks.get(user_id))
                if master is not None:
                    user["master_key"] = master
                if ssk is not None:
                    user["self_signing_key"] = ssk
                out[user_id] = user
        return out, failures

    async def claim(
        self, wanted: Mapping[str, Mapping[str, str]], timeout_s: float
    ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
        """Claim remote users' one-time keys: (one_time_keys, failures)."""
        by_server: dict[str, dict[str, dict[str, str]]] = {}
        for user_id, devices in wanted.items():
            if valid_user_id(user_id):
                by_server.setdefault(server_of(user_id), {})[user_id] = dict(devices)

        async def ask(server: str, users: dict[str, dict[str, str]]) -> dict[str, Any]:
            answer = await self.client.post_json(server, CLAIM_PATH, {"one_time_keys": users}, timeout_s=timeout_s)
            if not isinstance(answer, Mapping):
                raise ValueError(f"{server} answered the key claim with something that is not an object")
            return dict(answer)

        answers, failures = await self._each_server(by_server, ask, timeout_s)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for server, answer in answers.items():
            keys = answer.get("one_time_keys")
            keys = keys if isinstance(keys, Mapping) else {}
            for user_id, devices in by_server[server].items():
                got = keys.get(user_id)
                if not isinstance(got, Mapping):
                    continue
                for device_id, algorithm in devices.items():
                    claimed = got.get(device_id)
                    if not isinstance(claimed, Mapping):
                        continue
                    # one key of the algorithm asked for, as our own claim answers
                    picked = {k: v for k, v in claimed.items()
                              if isinstance(k, str) and k.startswith(algorithm + ":")
                              and (isinstance(v, str) or isinstance(v, Mapping))}
                    if picked:
                        key_id = sorted(picked)[0]
                        out.setdefault(user_id, {}).setdefault(device_id, {})[key_id] = picked[key_id]
        return out, failures

    async def user_devices(self, user_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        answer = await self.client.get_json(server_of(user_id), DEVICES_PATH + quote(user_id, safe=""),
                                            timeout_s=timeout_s)
        if not isinstance(answer, Mapping) or answer.get("user_id") != user_id:
            raise ValueError(f"Bad user/devices answer for {user_id}")
        stream_id = answer.get("stream_id")
        if isinstance(stream_id, bool) or not isinstance(stream_id, int):
            raise ValueError(f"user/devices answer for {user_id} without an integer stream_id")
        return dict(answer)


def _add_user_keys(out: dict[str, dict[str, Any]], wanted: Mapping[str, list[str]],
                   users: Mapping[str, Mapping[str, Any]]) -> None:
    for user_id, user in users.items():
        if user_id not in wanted:
            continue
        keys = dict(user.get("device_keys") or {})
        if wanted[user_id]:
            keys = {d: k for d, k in keys.items() if d in wanted[user_id]}
        out["device_keys"][user_id] = keys
        if "master_key" in user:
            out["master_keys"][user_id] = user["master_key"]
        if "self_signing_key" in user:
            out["self_signing_keys"][user_id] = user["self_signing_key"]
