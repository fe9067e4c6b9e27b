"""Cross-signing: master, self-signing and user-signing keys
(/keys/device_signing/upload), signatures on devices and keys
(/keys/signatures/upload), and what /keys/query shows of them.

Who may sign what (as Synapse does): a user's self-signing key signs their
own devices; their devices (or the master key) sign their master key; their
user-signing key signs other users' master keys. A signature by a
user-signing key is shown only to its signer.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from ...errors import MatrixError, bad_json, forbidden, missing_param
from ...protocol.e2e_keys import (
    KeyObjectError,
    check_cross_signing_key,
    cross_signing_public_key,
    signatures_by,
    verify_signed_by,
)
from ...protocol.errors import SignatureError
from ...storage.e2e_keys import E2EKeyStore
from ..accounts import Requester
from ..notifier import Notifier
from .device_lists import LocalChangeHook

KEY_TYPES = (("master_key", "master"), ("self_signing_key", "self_signing"), ("user_signing_key", "user_signing"))
_STRIPPED = ("signatures", "unsigned")


def _stripped(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in _STRIPPED}


def _failure(errcode: str, error: str) -> dict[str, str]:
    return {"errcode": errcode, "error": error}


class CrossSigningService:
    def __init__(self, store: E2EKeyStore, notifier: Notifier) -> None:
        self.store = store
        self.notifier = notifier
        # DeviceListService.local_change (set by build_e2e): other servers learn of the change
        self.local_change: LocalChangeHook | None = None

    # -- /keys/device_signing/upload ------------------------------------------
    def parse_upload(self, user_id: str, body: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """key type -> key object, shapes checked (M_BAD_JSON)."""
        keys: dict[str, dict[str, Any]] = {}
        for field, usage in KEY_TYPES:
            if body.get(field) is not None:
                try:
                    check_cross_signing_key(body[field], user_id, usage)
                except KeyObjectError as e:
                    raise bad_json(str(e)) from None
                keys[usage] = dict(body[field])
        return keys

    async def needs_auth(self, user_id: str, keys: Mapping[str, Mapping[str, Any]]) -> bool:
        """UIA is needed when a master key exists and the upload changes
        any key (uploading the same keys again is idempotent)."""
        stored = (await self.store.cross_signing_keys([user_id])).get(user_id, {})
        if "master" not in stored:
            return False
        return any(stored.get(t) != k for t, k in keys.items())

    async def upload_keys(self, user_id: str, keys: dict[str, dict[str, Any]]) -> None:
        stored = (await self.store.cross_signing_keys([user_id])).get(user_id, {})
        master = keys.get("master") or stored.get("master")
        if master is None:
            raise missing_param("No master signing key is available")
        _, master_public = cross_signing_public_key(master)
        master_key_id = f"ed25519:{master_public}"
        devices = await self.store.device_keys_for({user_id: []})
        for usage, key in keys.items():
            _, public = cross_signing_public_key(key)
            if public in devices.get(user_id, {}) or await self.store.device_exists(user_id, public):
                raise forbidden(f"The {usage} key's public key is one of the user's device ids")
            if usage == "master":
                continue
            try:
                verify_signed_by(key, user_id, master_key_id, master_public)
            except SignatureError as e:
                raise MatrixError(400, "M_INVALID_SIGNATURE", f"{usage} key: {e}") from None
        changed = {t: k for t, k in keys.items() if stored.get(t) != k}
        if changed:
            await self.store.put_cross_signing_keys(user_id, changed)
            self.notifier.poke()
        # what the change's transaction left to announce (after a crash: the sender's sweep)
        if self.local_change is not None and ("master" in keys or "self_signing" in keys):
            await self.local_change(user_id, [], "cross_signing")

    # -- /keys/signatures/upload -----------------------------------------------
    async def upload_signatures(
        self, requester: Requester, body: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, dict[str, dict[str, str]]]:
        """Verify and store signatures; returns per-key failures."""
        signer = requester.user_id
        mine = (await self.store.cross_signing_keys([signer])).get(signer, {})
        own_devices = (await self.store.device_keys_for({signer: []})).get(signer, {})
        failures: dict[str, dict[str, dict[str, str]]] = {}
        rows: list[tuple[str, str, str, str, str]] = []
        for target_user, objects in body.items():
            targets = await self._targets(target_user)
            for key_id, signed in objects.items():
                try:
                    rows.extend(self._check_signed(signer, mine, own_devices, target_user, key_id, signed, targets))
                except MatrixError as e:
                    failures.setdefault(target_user, {})[key_id] = _failure(e.errcode, e.error)
        # the signer's own keys, as other servers show them: announced to them
        own = [r for r in rows if r[0] == signer and r[2] == signer]
        master_id = cross_signing_public_key(mine["master"])[1] if "master" in mine else None
        devices = sorted({r[1] for r in own if r[1] != master_id})
        announcements: list[tuple[str, list[str]]] = [("changed", devices)] if devices else []
        if any(r[1] == master_id for r in own):
            announcements.append(("cross_signing", []))
        await self.store.add_signatures(rows, (signer, announcements) if announcements else None)
        if rows:
            self.notifier.poke()
            if self.local_change is not None:
                if devices:
                    await self.local_change(signer, devices, "changed")
                if any(r[1] == master_id for r in own):
                    await self.local_change(signer, [], "cross_signing")
        return failures

    async def _targets(self, user_id: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """key id -> (kind, stored object) for what may be signed of a user:
        devices with keys (kind 'device') and the master key ('master')."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for device_id, (key_json, _) in (await self.store.device_keys_for({user_id: []})).get(user_id, {}).items():
            out[device_id] = ("device", orjson.loads(key_json))
        master = (await self.store.cross_signing_keys([user_id])).get(user_id, {}).get("master")
        if master is not None:
            out[cross_signing_public_key(master)[1]] = ("master", master)
        return out

    def _check_signed(
        self,
        signer: str,
        mine: Mapping[str, dict[str, Any]],
        own_devices: Mapping[str, tuple[str, str | None]],
        target_user: str,
        key_id: str,
        signed: Any,
        targets: Mapping[str, tuple[str, dict[str, Any]]],
    ) -> list[tuple[str, str, str, str, str]]:
        if not isinstance(signed, Mapping):
            raise MatrixError(400, "M_BAD_JSON", "The signed object must be an object")
        if key_id not in targets:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown device or key")
        kind, stored = targets[key_id]
        if _stripped(signed) != _stripped(stored):
            raise MatrixError(400, "M_INVALID_SIGNATURE", "The signed object does not match the stored key")
        allowed = self._allowed_signers(signer, mine, own_devices, target_user, kind)
        known = signatures_by(stored, signer)
        new = {k: v for k, v in signatures_by(signed, signer).items() if known.get(k) != v}
        if not new:
            raise MatrixError(400, "M_INVALID_SIGNATURE", f"No new signature by {signer}")
        rows = []
        for sig_key_id, signature in new.items():
            public = allowed.get(sig_key_id)
            if public is None:
                raise MatrixError(400, "M_INVALID_SIGNATURE", f"{sig_key_id} may not sign this key")
            try:
                verify_signed_by({**stored, "signatures": {signer: {sig_key_id: signature}}}, signer,
                                 sig_key_id, public)
            except SignatureError as e:
                raise MatrixError(400, "M_INVALID_SIGNATURE", str(e)) from None
            rows.append((target_user, key_id, signer, sig_key_id, signature))
        return rows

    @staticmethod
    def _allowed_signers(
        signer: str,
        mine: Mapping[str, dict[str, Any]],
        own_devices: Mapping[str, tuple[str, str | None]],
        target_user: str,
        kind: str,
    ) -> dict[str, str]:
        """key id -> public key of the signer's keys allowed to sign this."""
        def public_of(usage: str) -> dict[str, str]:
            key = mine.get(usage)
            if key is None:
                return {}
            kid, public = cross_signing_public_key(key)
            return {kid: public}

        if target_user != signer:
            return public_of("user_signing") if kind == "master" else {}
        if kind == "device":
            return public_of("self_signing")
        allowed = public_of("master")
        for device_id, (key_json, _) in own_devices.items():
            public = orjson.loads(key_json).get("keys", {}).get(f"ed25519:{device_id}")
            if isinstance(public, str):
                allowed[f"ed25519:{device_id}"] = public
        return allowed

    # -- /keys/query ---------------------------------------------------------------
    @staticmethod
    def merge_signatures(
        key: dict[str, Any], extra: list[tuple[str, str, str]], requester: Requester, owner: str
    ) -> None:
        """Add stored signatures the requester may see to a key object."""
        for signer, sig_key_id, signature in extra:
            if signer == owner or signer == requester.user_id:
                sigs = key.setdefault("signatures", {})
                sigs.setdefault(signer, {})[sig_key_id] = signature

    async def keys_for_query(self, requester: Requester, user_ids: list[str]) -> dict[str, Any]:
        stored = await self.store.cross_signing_keys(user_ids)
        masters = {u: cross_signing_public_key(k["master"])[1] for u, k in stored.items() if "master" in k}
        extra = await self.store.signatures_on(masters.items())
        out: dict[str, dict[str, Any]] = {"master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {}}
        for user_id, keys in stored.items():
            if "master" in keys:
                master = dict(keys["master"])
                self.merge_signatures(master, extra.get((user_id, masters[user_id]), []), requester, user_id)
                out["master_keys"][user_id] = master
            if "self_signing" in keys:
                out["self_signing_keys"][user_id] = keys["self_signing"]
            if "user_signing" in keys and user_id == requester.user_id:
                out["user_signing_keys"][user_id] = keys["user_signing"]
        return out
