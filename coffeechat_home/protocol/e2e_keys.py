"""End-to-end encryption key objects: shape checks and signatures.

Pure rules over the JSON clients upload (spec: "End-to-end encryption"):
device keys signed by the device's own ed25519 key, one-time and fallback
keys named ``<algorithm>:<key_id>``, cross-signing keys (master,
self-signing, user-signing) and the signatures that link them. Every
failure raises ``KeyObjectError`` (bad shape) or ``SignatureError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .canonical import check_canonical_json_values
from .errors import CanonicalJSONError, InvalidSigningKey, ProtocolError, SignatureError
from .signing import decode_verify_key, verify_json_signature

__all__ = [
    "KeyObjectError",
    "CROSS_SIGNING_USAGES",
    "split_key_id",
    "check_device_keys",
    "check_one_time_keys",
    "check_cross_signing_key",
    "cross_signing_public_key",
    "verify_signed_by",
    "signatures_by",
]

MAX_ID_LENGTH = 255
CROSS_SIGNING_USAGES = {"master": "master", "self_signing": "self_signing", "user_signing": "user_signing"}


class KeyObjectError(ProtocolError):
    """A key object with a missing field, a wrong type or a bad key id."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise KeyObjectError(msg)


def _check_values(obj: Any, what: str) -> None:
    try:
        check_canonical_json_values(obj)
    except CanonicalJSONError as e:
        raise KeyObjectError(f"{what}: {e}") from None


def split_key_id(key_id: Any) -> tuple[str, str]:
    """``<algorithm>:<id>`` -> (algorithm, id)."""
    _require(isinstance(key_id, str) and 0 < len(key_id) <= MAX_ID_LENGTH, f"bad key id {key_id!r}")
    algorithm, sep, ident = key_id.partition(":")
    _require(bool(sep and algorithm and ident), f"key id {key_id!r} is not <algorithm>:<id>")
    return algorithm, ident


def _check_key_map(keys: Any, what: str) -> None:
    _require(isinstance(keys, Mapping) and len(keys) > 0, f"{what}.keys must be a non-empty object")
    for key_id, value in keys.items():
        split_key_id(key_id)
        _require(isinstance(value, str) and value != "", f"{what}.keys[{key_id!r}] must be a string")


def _check_signatures_shape(obj: Mapping[str, Any], what: str) -> None:
    sigs = obj.get("signatures")
    if sigs is None:
        return
    _require(isinstance(sigs, Mapping), f"{what}.signatures must be an object")
    for signer, by_key in sigs.items():
        _require(isinstance(by_key, Mapping), f"{what}.signatures[{signer!r}] must be an object")
        for key_id, sig in by_key.items():
            split_key_id(key_id)
            _require(isinstance(sig, str), f"{what}.signatures[{signer!r}][{key_id!r}] must be a string")


def verify_signed_by(obj: Mapping[str, Any], signer: str, key_id: str, public_key_b64: str) -> None:
    """Raise SignatureError unless ``signer`` signed ``obj`` with the
    ed25519 key ``key_id`` (``ed25519:<id>``) whose public half is given."""
    try:
        verify_key = decode_verify_key(key_id, public_key_b64)
    except InvalidSigningKey as e:
        raise SignatureError(str(e)) from None
    verify_json_signature(obj, signer, verify_key, key_id)


def check_device_keys(obj: Any, user_id: str, device_id: str) -> None:
    """A device_keys object for this user's device, self-signed with the
    device's own ed25519 key."""
    _require(isinstance(obj, Mapping), "device_keys must be an object")
    _check_values(obj, "device_keys")
    _require(obj.get("user_id") == user_id, "device_keys.user_id must be the uploading user")
    _require(obj.get("device_id") == device_id, "device_keys.device_id must be the uploading device")
    algorithms = obj.get("algorithms")
    _require(
        isinstance(algorithms, list) and all(isinstance(a, str) for a in algorithms),
        "device_keys.algorithms must be a list of strings",
    )
    _check_key_map(obj.get("keys"), "device_keys")
    _check_signatures_shape(obj, "device_keys")
    key_id = f"ed25519:{device_id}"
    public = obj["keys"].get(key_id)
    _require(isinstance(public, str), f"device_keys.keys must hold {key_id}")
    verify_signed_by(obj, user_id, key_id, public)


def check_one_time_keys(keys: Any, what: str) -> dict[str, tuple[str, Any]]:
    """One-time or fallback keys: ``{"<alg>:<id>": key}`` where a key is a
    string (curve25519) or an object with a ``key`` string. Returns
    ``{key_id: (algorithm, key)}``."""
    _require(isinstance(keys, Mapping), f"{what} must be an object")
    _check_values(keys, what)
    out: dict[str, tuple[str, Any]] = {}
    for full_id, key in keys.items():
        algorithm, _ = split_key_id(full_id)
        if isinstance(key, Mapping):
            _require(isinstance(key.get("key"), str), f"{what}[{full_id!r}].key must be a string")
            _check_signatures_shape(key, f"{what}[{full_id!r}]")
            fallback = key.get("fallback")
            _require(fallback is None or isinstance(fallback, bool), f"{what}[{full_id!r}].fallback must be a boolean")
        else:
            _require(isinstance(key, str) and key != "", f"{what}[{full_id!r}] must be a string or an object")
        out[full_id] = (algorithm, key)
    return out


def cross_signing_public_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(key id ``ed25519:<public>``, public key) of a cross-signing key."""
    keys = obj.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        raise KeyObjectError("a cross-signing key must hold exactly one key")
    (key_id, public), = keys.items()
    algorithm, ident = split_key_id(key_id)
    _require(algorithm == "ed25519" and ident == public, f"cross-signing key id {key_id!r} must be ed25519:<key>")
    return key_id, public


def check_cross_signing_key(obj: Any, user_id: str, usage: str) -> tuple[str, str]:
    """Shape of a cross-signing key of ``usage`` for ``user_id``; returns
    (key id, public key). Signatures are checked by the caller."""
    _require(isinstance(obj, Mapping), f"{usage} key must be an object")
    _check_values(obj, f"{usage} key")
    _require(obj.get("user_id") == user_id, f"{usage} key: user_id must be the uploading user")
    usages = obj.get("usage")
    _require(
        isinstance(usages, list) and usage in usages and all(isinstance(u, str) for u in usages),
        f"{usage} key: usage must include {usage!r}",
    )
    _check_key_map(obj.get("keys"), f"{usage} key")
    _check_signatures_shape(obj, f"{usage} key")
    return cross_signing_public_key(obj)


def signatures_by(obj: Mapping[str, Any], signer: str) -> dict[str, str]:
    """``{key_id: signature}`` that ``signer`` put on ``obj``."""
    sigs = obj.get("signatures")
    if not isinstance(sigs, Mapping):
        return {}
    mine = sigs.get(signer)
    if not isinstance(mine, Mapping):
        return {}
    return {k: v for k, v in mine.items() if isinstance(k, str) and isinstance(v, str)}
