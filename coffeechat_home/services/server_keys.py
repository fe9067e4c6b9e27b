"""Signing keys for federation: this server's (published at
``/_matrix/key/v2/server``) and other servers' (fetched, checked, cached in
the database for every instance, with notaries as fallback).

The one question the rest of the server asks:

    await key_store.verify_json_signature(obj, "other.org", "ed25519:abc", valid_at_ts)

raises ``KeyUnavailable`` when no key ``ed25519:abc`` of ``other.org`` valid
at ``valid_at_ts`` can be had, ``SignatureError`` when the signature is bad.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import orjson

from ..federation.client import FederationClient, FederationError
from ..protocol.errors import EventFormatError, InvalidSigningKey, SignatureError
from ..protocol.signing import (
    SigningKey,
    VerifyKey,
    decode_verify_key,
    get_verify_key,
    key_id_of,
    sign_json,
    verify_event_signature,
    verify_json_signature,
    verify_key_base64,
)
from ..protocol.pdu import KeyLookup, signing_requirements
from ..protocol.room_versions import RoomVersion
from ..storage.server_keys import FetchedKey, OldKey, ServerKeyStore, StoredKey

log = logging.getLogger(__name__)

# How long our key response says our keys are good for (Synapse: 1 day).
LOCAL_KEY_VALIDITY_MS = 24 * 3600 * 1000
# Room versions 5+ cap a remote key's usable validity at 7 days from fetch.
MAX_REMOTE_VALIDITY_MS = 7 * 24 * 3600 * 1000
# A key id we do not know makes us fetch the server's keys at most once in
# this time, and a server's keys are fetched at most FETCHES_PER_WINDOW
# times in it however many key ids requests name (forged ones included).
# Per key id, so a key the server has just rotated to is fetched at once.
REFETCH_AFTER_S = 5.0
FETCHES_PER_WINDOW = 3
# remote verify keys kept in memory (each a few hundred bytes)
MAX_KEYS_IN_MEMORY = 10_000


class KeyUnavailable(Exception):
    """No key with that id, valid at that time, could be had for the server."""


def now_ms() -> int:
    return int(time.time() * 1000)


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


@dataclass
class LocalKeys:
    """This server's signing key and its earlier keys (from the database)."""

    server_name: str
    signing_key: SigningKey
    old_keys: list[OldKey] = field(default_factory=list)

    @property
    def key_id(self) -> str:
        return key_id_of(self.signing_key)

    def verify_key_base64(self) -> str:
        return verify_key_base64(get_verify_key(self.signing_key))

    def server_keys_response(self, at_ms: int | None = None) -> dict[str, Any]:
        """The signed answer of ``GET /_matrix/key/v2/server``."""
        at_ms = now_ms() if at_ms is None else at_ms
        doc: dict[str, Any] = {
            "server_name": self.server_name,
            "valid_until_ts": at_ms + LOCAL_KEY_VALIDITY_MS,
            "verify_keys": {self.key_id: {"key": self.verify_key_base64()}},
            "old_verify_keys": {
                k.key_id: {"key": k.verify_key, "expired_ts": k.expired_ts}
                for k in self.old_keys if k.key_id != self.key_id
            },
        }
        return sign_json(doc, self.server_name, self.signing_key)

    def verify_key(self, key_id: str, valid_at_ts: int) -> VerifyKey:
        if key_id == self.key_id:
            return get_verify_key(self.signing_key)
        for k in self.old_keys:
            if k.key_id == key_id:
                if k.expired_ts < valid_at_ts:
                    raise KeyUnavailable(f"our key {key_id} expired at {_ts(k.expired_ts)}")
                return decode_verify_key(key_id, k.verify_key)
        raise KeyUnavailable(f"we have no key {key_id}")


def parse_key_response(doc: Any, expect_server: str | None, fetched_ms: int) -> tuple[str, list[FetchedKey]]:
    """Check a server-keys document (its shape and its self-signatures by
    every key in ``verify_keys``); returns (server_name, keys). Validity is
    capped at 7 days from ``fetched_ms``."""
    if not isinstance(doc, Mapping):
        raise KeyUnavailable("key response is not a JSON object")
    server = doc.get("server_name")
    if not isinstance(server, str) or (expect_server is not None and server != expect_server):
        raise KeyUnavailable(f"key response is for {server!r}, not {expect_server!r}")
    valid_until = doc.get("valid_until_ts")
    verify_keys = doc.get("verify_keys")
    old = doc.get("old_verify_keys", {})
    if not isinstance(valid_until, int) or isinstance(valid_until, bool) or not isinstance(verify_keys, Mapping) \
            or not isinstance(old, Mapping):
        raise KeyUnavailable(f"key response of {server} is malformed")
    valid_until = min(valid_until, fetched_ms + MAX_REMOTE_VALIDITY_MS)
    keys: list[FetchedKey] = []
    for key_id, entry in verify_keys.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str):
            raise KeyUnavailable(f"key {key_id} of {server} is malformed")
        try:
            vk = decode_verify_key(key_id, entry["key"])
        except InvalidSigningKey:
            continue  # an algorithm we do not know: not usable, not fatal
        try:
            verify_json_signature(doc, server, vk, key_id)
        except SignatureError as e:
            raise KeyUnavailable(f"key response of {server} is not signed by its key {key_id}: {e}") from None
        keys.append(FetchedKey(key_id, entry["key"], valid_until, None))
    if not keys:
        raise KeyUnavailable(f"key response of {server} has no usable ed25519 key")
    for key_id, entry in old.items():
        if key_id in verify_keys or not isinstance(entry, Mapping) or not isinstance(entry.get("key"), str):
            continue
        expired = entry.get("expired_ts")
        if not isinstance(expired, int) or isinstance(expired, bool):
            continue
        try:
            decode_verify_key(key_id, entry["key"])
        except InvalidSigningKey:
            continue
        keys.append(FetchedKey(key_id, entry["key"], expired, expired))
    return server, keys


class KeyStore:
    """Other servers' verify keys: database cache first, then the server
    itself, then each trusted notary."""

    def __init__(self, store: ServerKeyStore, local: LocalKeys, client: FederationClient,
                 trusted_key_servers: list[str]) -> None:
        self.store = store
        self.local = local
        self.client = client
        self.trusted_key_servers = [s for s in trusted_key_servers if s != local.server_name]
        self._inflight: dict[str, asyncio.Future[None]] = {}
        # (server, key id or "" for "any") -> when last fetched for it
        self._last_fetch: dict[tuple[str, str], float] = {}
        self._fetch_times: dict[str, list[float]] = {}
        # (server, key id) -> (valid until, the decoded key): rows of
        # remote_server_keys only ever gain validity (store_keys keeps the
        # later valid_until_ts) and are never deleted, so a key the database
        # held usable until a time stays usable until then: reading it from
        # memory answers as the database would, without a round trip per PDU
        self._usable_keys: dict[tuple[str, str], tuple[int, VerifyKey]] = {}

    def _may_fetch(self, server_name: str, key_id: str = "") -> bool:
        if server_name in self._inflight:
            return True  # share the fetch under way
        now = time.monotonic()
        last = self._last_fetch.get((server_name, key_id))
        if last is not None and now - last <= REFETCH_AFTER_S:
            return False
        recent = [t for t in self._fetch_times.get(server_name, ()) if now - t <= REFETCH_AFTER_S]
        self._fetch_times[server_name] = recent
        return len(recent) < FETCHES_PER_WINDOW

    def _fetched(self, server_name: str, key_id: str = "") -> None:
        now = time.monotonic()
        self._last_fetch[(server_name, key_id)] = now
        self._fetch_times.setdefault(server_name, []).append(now)

    async def verify_json_signature(self, obj: Mapping[str, Any], server_name: str, key_id: str,
                                    valid_at_ts: int) -> None:
        """Raise unless ``server_name`` signed ``obj`` with key ``key_id``
        and that key was valid at ``valid_at_ts``."""
        key = await self.get_verify_key(server_name, key_id, valid_at_ts)
        verify_json_signature(obj, server_name, key, key_id)

    async def verify_event_signature(self, pdu: Mapping[str, Any], server_name: str, room_version: RoomVersion,
                                     valid_at_ts: int) -> None:
        """Raise unless ``server_name`` signed the (redacted) PDU with one
        of its ed25519 keys valid at ``valid_at_ts`` (room v5+: the event's
        ``origin_server_ts``). ``SignatureError`` for a bad or missing
        signature, ``KeyUnavailable`` when no key could be had."""
        sigs = pdu.get("signatures")
        by_server = sigs.get(server_name) if isinstance(sigs, Mapping) else None
        if not isinstance(by_server, Mapping) or not by_server:
            raise SignatureError(f"event not signed by {server_name}")
        errors: list[str] = []
        for key_id in sorted(k for k in by_server if isinstance(k, str) and k.startswith("ed25519:")):
            try:
                key = await self.get_verify_key(server_name, key_id, valid_at_ts)
            except (KeyUnavailable, InvalidSigningKey) as e:
                errors.append(str(e))
                continue
            verify_event_signature(pdu, server_name, key, room_version, key_id)
            return
        raise KeyUnavailable("; ".join(errors) or f"no ed25519 signature by {server_name}")

    async def key_lookup_for_pdu(self, pdu: Mapping[str, Any], room_version: RoomVersion) -> KeyLookup:
        """The keys ``protocol.pdu.check_received_pdu`` needs for ``pdu``
        (those its required signatures name, valid at its
        ``origin_server_ts``), fetched now, as its ``verify_keys`` lookup."""
        ts = pdu.get("origin_server_ts")
        valid_at = ts if isinstance(ts, int) and not isinstance(ts, bool) else now_ms()
        found: dict[tuple[str, str], VerifyKey] = {}
        for server, key_ids in signing_requirements(pdu, room_version).items():
            for key_id in key_ids:
                try:
                    found[(server, key_id)] = await self.get_verify_key(server, key_id, valid_at)
                except (KeyUnavailable, InvalidSigningKey) as e:
                    log.info("PDU key %s of %s: %s", key_id, server, e)
        return lambda server, key_id: found.get((server, key_id))

    async def key_lookups_for_pdus(
        self, pdus: Sequence[Mapping[str, Any]], room_version: RoomVersion
    ) -> list[KeyLookup]:
        """``key_lookup_for_pdu`` for each PDU of a batch (a send_join
        answer of thousands): each (server, key id) the batch names is read,
        or fetched, once, asked valid at the latest ``origin_server_ts``
        that needs it (then valid at every earlier one too); when it is not,
        at the earliest, and each PDU's time is then compared in memory with
        the stored key's validity. A PDU too malformed to name its signers
        gets an empty lookup (its checks refuse it)."""
        times: list[int] = []
        reqs: list[dict[str, list[str]]] = []
        spans: dict[tuple[str, str], tuple[int, int]] = {}  # earliest, latest
        for pdu in pdus:
            ts = pdu.get("origin_server_ts")
            valid_at = ts if isinstance(ts, int) and not isinstance(ts, bool) else now_ms()
            try:
                need = signing_requirements(pdu, room_version)
            except EventFormatError:
                need = {}
            times.append(valid_at)
            reqs.append(need)
            for server, key_ids in need.items():
                for key_id in key_ids:
                    lo, hi = spans.get((server, key_id), (valid_at, valid_at))
                    spans[(server, key_id)] = (min(lo, valid_at), max(hi, valid_at))
        # (server, key id) -> the key and the last time it is valid at (None: any)
        keys: dict[tuple[str, str], tuple[VerifyKey, int | None]] = {}
        for (server, key_id), (earliest, latest) in spans.items():
            if server == self.local.server_name:
                continue  # in memory: asked per PDU below
            try:
                keys[(server, key_id)] = (await self.get_verify_key(server, key_id, latest), None)
                continue
            except (KeyUnavailable, InvalidSigningKey) as e:
                log.info("PDU key %s of %s at %s: %s", key_id, server, latest, e)
            try:
                key = await self.get_verify_key(server, key_id, earliest)
            except (KeyUnavailable, InvalidSigningKey):
                continue
            stored = await self.store.get_key(server, key_id)
            if stored is not None:
                keys[(server, key_id)] = (key, stored.valid_until_ts)
        out: list[KeyLookup] = []
        for valid_at, need in zip(times, reqs):
            found: dict[tuple[str, str], VerifyKey] = {}
            for server, key_ids in need.items():
                for key_id in key_ids:
                    if server == self.local.server_name:
                        try:
                            found[(server, key_id)] = self.local.verify_key(key_id, valid_at)
                        except KeyUnavailable:
                            pass
                        continue
                    held = keys.get((server, key_id))
                    if held is not None and (held[1] is None or held[1] >= valid_at):
                        found[(server, key_id)] = held[0]
            out.append(_lookup_in(found))
        return out

    async def get_verify_key(self, server_name: str, key_id: str, valid_at_ts: int) -> VerifyKey:
        if server_name == self.local.server_name:
            return self.local.verify_key(key_id, valid_at_ts)
        held = self._usable_keys.get((server_name, key_id))
        if held is not None and held[0] >= valid_at_ts:
            return held[1]
        cached = await self.store.get_key(server_name, key_id)
        if cached is not None and _usable(cached, valid_at_ts):
            return self._remember(cached)
        if cached is not None and cached.expired_ts is not None:
            raise KeyUnavailable(f"key {key_id} of {server_name} expired at {_ts(cached.expired_ts)}")
        if self._may_fetch(server_name, key_id):
            await self._fetch_once(server_name, key_id, valid_at_ts)
            cached = await self.store.get_key(server_name, key_id)
        if cached is not None and _usable(cached, valid_at_ts):
            return self._remember(cached)
        if cached is None:
            raise KeyUnavailable(f"no key {key_id} of {server_name} could be found")
        raise KeyUnavailable(f"key {key_id} of {server_name} is valid only until {_ts(cached.valid_until_ts)}")

    def _remember(self, key: StoredKey) -> VerifyKey:
        verify_key = decode_verify_key(key.key_id, key.verify_key)
        held = self._usable_keys.get((key.server_name, key.key_id))
        if held is None or held[0] < key.valid_until_ts:
            if len(self._usable_keys) >= MAX_KEYS_IN_MEMORY:
                self._usable_keys.clear()  # a bound, not an LRU: the database still has them all
            self._usable_keys[(key.server_name, key.key_id)] = (key.valid_until_ts, verify_key)
        return verify_key

    async def _fetch_once(self, server_name: str, key_id: str, valid_at_ts: int) -> None:
        """One fetch per server at a time; concurrent askers share it."""
        pending = self._inflight.get(server_name)
        if pending is not None:
            await asyncio.shield(pending)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[server_name] = fut
        try:
            await self._fetch(server_name, key_id, valid_at_ts)
        finally:
            self._fetched(server_name, key_id)
            fut.set_result(None)
            del self._inflight[server_name]

    async def _fetch(self, server_name: str, key_id: str, valid_at_ts: int) -> None:
        try:
            await self.fetch_direct(server_name)
            cached = await self.store.get_key(server_name, key_id)
            if cached is not None and _usable(cached, valid_at_ts):
                return
        except (FederationError, KeyUnavailable) as e:
            log.info("keys of %s from itself: %s", server_name, e)
        for notary in self.trusted_key_servers:
            try:
                await self.fetch_from_notary(notary, server_name, key_id, valid_at_ts)
                cached = await self.store.get_key(server_name, key_id)
                if cached is not None and _usable(cached, valid_at_ts):
                    return
            except (FederationError, KeyUnavailable, SignatureError) as e:
                log.info("keys of %s from notary %s: %s", server_name, notary, e)

    async def fetch_direct(self, server_name: str) -> list[FetchedKey]:
        """``GET /_matrix/key/v2/server`` from the server itself; stores
        and returns its keys."""
        doc = await self.client.get_json(server_name, "/_matrix/key/v2/server", signed=False)
        fetched = now_ms()
        _, keys = parse_key_response(doc, server_name, fetched)
        await self.store.store_keys(server_name, keys, orjson.dumps(doc).decode(), fetched)
        return keys

    async def fetch_from_notary(self, notary: str, server_name: str, key_id: str, valid_at_ts: int) -> None:
        body = {"server_keys": {server_name: {key_id: {"minimum_valid_until_ts": valid_at_ts}}}}
        answer = await self.client.post_json(notary, "/_matrix/key/v2/query", body)
        docs = answer.get("server_keys") if isinstance(answer, Mapping) else None
        if not isinstance(docs, list):
            raise KeyUnavailable(f"notary {notary} answered without server_keys")
        fetched = now_ms()
        for doc in docs:
            if not isinstance(doc, Mapping) or doc.get("server_name") != server_name:
                continue
            _, keys = parse_key_response(doc, server_name, fetched)
            # the notary vouches for it: its own signature, checked with its
            # key (fetched from the notary itself, never through a notary)
            notary_sigs = doc.get("signatures", {}).get(notary)
            if not isinstance(notary_sigs, Mapping) or not notary_sigs:
                raise KeyUnavailable(f"notary {notary}'s answer for {server_name} is not signed by {notary}")
            checked = False
            for notary_key_id in notary_sigs:
                try:
                    await self._verify_notary(doc, notary, str(notary_key_id))
                    checked = True
                    break
                except (KeyUnavailable, InvalidSigningKey):
                    continue
            if not checked:
                raise KeyUnavailable(f"no key of notary {notary} could check its answer for {server_name}")
            await self.store.store_keys(server_name, keys, orjson.dumps(doc).decode(), fetched)

    async def _verify_notary(self, doc: Mapping[str, Any], notary: str, key_id: str) -> None:
        cached = await self.store.get_key(notary, key_id)
        if cached is None or not _usable(cached, now_ms()):
            await self.fetch_direct(notary)
            cached = await self.store.get_key(notary, key_id)
        if cached is None or not _usable(cached, now_ms()):
            raise KeyUnavailable(f"no key {key_id} of notary {notary}")
        verify_json_signature(doc, notary, decode_verify_key(key_id, cached.verify_key), key_id)

    # -- notary answers -------------------------------------------------------------
    async def notary_answer(self, queries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``server_keys`` for ``POST /_matrix/key/v2/query``: for each
        server asked, the key responses we hold (fetching from the server
        when we hold none valid long enough), each countersigned by us."""
        out: list[dict[str, Any]] = []
        for server_name, key_criteria in queries.items():
            min_valid = _min_valid(key_criteria)
            if server_name == self.local.server_name:
                out.append(self.local.server_keys_response())
                continue
            held = await self.store.get_server_keys(server_name)
            wanted = set(key_criteria) if key_criteria else None
            if not any(_usable(k, min_valid) for k in held if wanted is None or k.key_id in wanted) \
                    and self._may_fetch(server_name):
                self._fetched(server_name)
                try:
                    await self.fetch_direct(server_name)
                    held = await self.store.get_server_keys(server_name)
                except (FederationError, KeyUnavailable) as e:
                    log.info("notary query: keys of %s: %s", server_name, e)
            seen: set[str] = set()
            for k in held:
                if (wanted is not None and k.key_id not in wanted) or k.response_json in seen:
                    continue
                seen.add(k.response_json)
                doc = orjson.loads(k.response_json)
                out.append(sign_json(doc, self.local.server_name, self.local.signing_key))
        return out


def _lookup_in(found: Mapping[tuple[str, str], VerifyKey]) -> KeyLookup:
    return lambda server, key_id: found.get((server, key_id))


def _usable(key: StoredKey, valid_at_ts: int) -> bool:
    return key.valid_until_ts >= valid_at_ts


def _min_valid(criteria: Mapping[str, Any]) -> int:
    best = 0
    for c in criteria.values() if isinstance(criteria, Mapping) else ():
        v = c.get("minimum_valid_until_ts") if isinstance(c, Mapping) else None
        if isinstance(v, int) and not isinstance(v, bool):
            best = max(best, v)
    return best

