"""Ed25519 signing keys, JSON signatures and event signatures.

Keys are PyNaCl ``SigningKey``/``VerifyKey`` objects carrying the signedjson
attributes ``alg`` ("ed25519") and ``version`` (the part after ``ed25519:``).
The key file format is Synapse's: one line ``ed25519 <version> <seed b64>``.
Reading and writing files is the caller's job (this package does no I/O).

Signing JSON (spec appendix "Signing JSON"): sign the canonical JSON of the
object without ``signatures`` and ``unsigned``; add the signature under
``signatures[<entity>][<alg>:<version>]``. Events are signed in their
redacted form, so the signature survives redaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing

from .canonical import (
    decode_base64,
    encode_base64,
    encode_canonical_json,
    encode_canonical_json_trusted,
)
from .errors import InvalidSigningKey, SignatureError
from .hashing import add_content_hash
from .redaction import redact
from .room_versions import RoomVersion

__all__ = [
    "SignatureError",
    "InvalidSigningKey",
    "SigningKey",
    "VerifyKey",
    "generate_signing_key",
    "signing_key_from_seed",
    "parse_signing_keys",
    "parse_signing_key",
    "format_signing_key",
    "key_id_of",
    "get_verify_key",
    "verify_key_base64",
    "decode_verify_key",
    "sign_json",
    "verify_json_signature",
    "sign_event",
    "hash_and_sign_event",
    "verify_event_signature",
]


class SigningKey(Protocol):
    """A nacl SigningKey with signedjson's ``alg``/``version`` attributes."""

    alg: str
    version: str

    def sign(self, message: bytes) -> Any: ...

    def encode(self) -> bytes: ...


class VerifyKey(Protocol):
    alg: str
    version: str

    def verify(self, smessage: bytes, signature: bytes) -> Any: ...

    def encode(self) -> bytes: ...


_ALG = "ed25519"
_STRIPPED = frozenset({"signatures", "unsigned"})


# --- keys --------------------------------------------------------------------


def _named(key: Any, version: str) -> Any:
    """A nacl key with the ``alg`` and ``version`` attributes signedjson
    gives its keys (the same objects: keys made here and by signedjson
    are interchangeable). Not through signedjson.key itself: its package
    looks its own version up through importlib.metadata when imported,
    which loads the email, csv and zip machinery (about 0.5 MB resident)
    into a server that needs none of it; the tests check the two agree."""
    key.alg = _ALG
    key.version = version
    return key


def generate_signing_key(version: str) -> SigningKey:
    """A new random ed25519 key with key ID ``ed25519:<version>``."""
    key: SigningKey = _named(nacl.signing.SigningKey.generate(), version)
    return key


def signing_key_from_seed(seed_base64: str, version: str) -> SigningKey:
    try:
        # either base64 alphabet, as signedjson (unpaddedbase64) reads seeds
        urlsafe = "-" in seed_base64 or "_" in seed_base64
        key: SigningKey = _named(nacl.signing.SigningKey(decode_base64(seed_base64, urlsafe=urlsafe)), version)
        return key
    except Exception as e:  # binascii / nacl errors on malformed seeds
        raise InvalidSigningKey(f"bad ed25519 seed for key {version!r}: {e}") from None


def parse_signing_keys(text: str) -> list[SigningKey]:
    """Parse Synapse's signing key file: ``ed25519 <version> <seed>`` per line."""
    keys: list[SigningKey] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise InvalidSigningKey(f"line {lineno}: expected 'ed25519 <key_version> <seed>'")
        alg, version, seed = parts
        if alg != _ALG:
            raise InvalidSigningKey(f"line {lineno}: unsupported algorithm {alg!r}")
        keys.append(signing_key_from_seed(seed, version))
    return keys


def parse_signing_key(text: str) -> SigningKey:
    """The first key of a signing key file."""
    keys = parse_signing_keys(text)
    if not keys:
        raise InvalidSigningKey("no signing key found")
    return keys[0]


def format_signing_key(key: SigningKey) -> str:
    """One line of a signing key file, ``ed25519 <version> <seed>`` (no newline)."""
    return f"{key.alg} {key.version} {encode_base64(key.encode())}"


def key_id_of(key: SigningKey | VerifyKey) -> str:
    return f"{key.alg}:{key.version}"


def get_verify_key(key: SigningKey) -> VerifyKey:
    verify_key: VerifyKey = _named(key.verify_key, key.version)  # type: ignore[attr-defined]
    return verify_key


def verify_key_base64(key: VerifyKey) -> str:
    return encode_base64(key.encode())


def decode_verify_key(key_id: str, key_base64: str) -> VerifyKey:
    """A VerifyKey from ``ed25519:<version>`` and its unpadded base64 bytes."""
    if not key_id.startswith(_ALG + ":"):
        raise InvalidSigningKey(f"unsupported key algorithm in {key_id!r}")
    try:
        verify_key: VerifyKey = _named(nacl.signing.VerifyKey(decode_base64(key_base64)), key_id[len(_ALG) + 1:])
        return verify_key
    except Exception as e:
        raise InvalidSigningKey(f"bad verify key {key_id!r}: {e}") from None


# --- JSON signatures -------------------------------------------------------------


def _signing_payload(obj: Mapping[str, Any], trusted: bool) -> bytes:
    payload = {k: v for k, v in obj.items() if k not in _STRIPPED}
    return encode_canonical_json_trusted(payload) if trusted else encode_canonical_json(payload)


def _with_signature(
    obj: Mapping[str, Any], server_name: str, key_id: str, signature: str
) -> dict[str, Any]:
    out = dict(obj)
    old = obj.get("signatures")
    sigs: dict[str, Any] = (
        {k: dict(v) if isinstance(v, Mapping) else {} for k, v in old.items()}
        if isinstance(old, Mapping)
        else {}
    )
    sigs.setdefault(server_name, {})[key_id] = signature
    out["signatures"] = sigs
    return out


def _sign_bytes(payload: bytes, key: SigningKey) -> str:
    return encode_base64(key.sign(payload).signature)


def sign_json(obj: Mapping[str, Any], server_name: str, signing_key: SigningKey) -> dict[str, Any]:
    """Return a copy of ``obj`` signed by ``server_name`` (input not mutated)."""
    sig = _sign_bytes(_signing_payload(obj, trusted=False), signing_key)
    return _with_signature(obj, server_name, key_id_of(signing_key), sig)


def _verify(
    obj: Mapping[str, Any], server_name: str, verify_key: VerifyKey, key_id: str | None, trusted: bool
) -> None:
    key_id = key_id or key_id_of(verify_key)
    sigs = obj.get("signatures")
    if not isinstance(sigs, Mapping) or not isinstance(sigs.get(server_name), Mapping):
        raise SignatureError(f"no signatures from {server_name}")
    sig_b64 = sigs[server_name].get(key_id)
    if sig_b64 is None:
        raise SignatureError(f"no signature from {server_name} with key {key_id}")
    if not isinstance(sig_b64, str):
        raise SignatureError(f"signature from {server_name} with key {key_id} is not a string")
    try:
        sig = decode_base64(sig_b64)
    except ValueError:
        raise SignatureError(f"signature from {server_name} {key_id} is not valid base64") from None
    try:
        verify_key.verify(_signing_payload(obj, trusted), sig)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise SignatureError(f"bad signature from {server_name} with key {key_id}") from None


def verify_json_signature(
    obj: Mapping[str, Any], server_name: str, verify_key: VerifyKey, key_id: str | None = None
) -> None:
    """Raise ``SignatureError`` unless ``server_name`` signed ``obj`` with this key.

    ``key_id`` defaults to the key's own ``alg:version``.
    """
    _verify(obj, server_name, verify_key, key_id, trusted=False)


# --- event signatures ----------------------------------------------------------


def sign_event(
    pdu: Mapping[str, Any], server_name: str, signing_key: SigningKey, room_version: RoomVersion
) -> dict[str, Any]:
    """Return a copy of ``pdu`` with a signature over its redacted form added.

    The PDU should already carry its content hash (see ``hash_and_sign_event``).
    """
    payload = _signing_payload(redact(pdu, room_version), trusted=True)
    sig = _sign_bytes(payload, signing_key)
    return _with_signature(pdu, server_name, key_id_of(signing_key), sig)


def hash_and_sign_event(
    pdu: Mapping[str, Any], server_name: str, signing_key: SigningKey, room_version: RoomVersion
) -> dict[str, Any]:
    """Add the content hash, then sign (the spec's order)."""
    return sign_event(add_content_hash(pdu), server_name, signing_key, room_version)


def verify_event_signature(
    pdu: Mapping[str, Any],
    server_name: str,
    verify_key: VerifyKey,
    room_version: RoomVersion,
    key_id: str | None = None,
) -> None:
    """Raise ``SignatureError`` unless ``server_name`` signed the redacted PDU."""
    _verify(redact(pdu, room_version), server_name, verify_key, key_id, trusted=True)
