"""Password hashing with scrypt (a memory-hard KDF from the standard library).

Stored form: ``$scrypt$n=<N>,r=<r>,p=<p>$<salt b64>$<hash b64>``. Hashing
runs in a worker thread so the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

_R = 8
_P = 1
_DKLEN = 32


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def hash_password_sync(password: str, n: int) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=_R, p=_P, dklen=_DKLEN, maxmem=256 * 1024 * 1024
    )
    return f"$scrypt$n={n},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def check_password_sync(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("$scrypt$"):
        return False
    try:
        _, _, params, salt_b64, hash_b64 = stored.split("$")
        values = dict(kv.split("=") for kv in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        expected = _unb64(hash_b64)
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=_unb64(salt_b64), n=n, r=r, p=p,
            dklen=len(expected), maxmem=256 * 1024 * 1024,
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(digest, expected)


class PasswordHasher:
    def __init__(self, scrypt_n: int) -> None:
        self.scrypt_n = scrypt_n

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(hash_password_sync, password, self.scrypt_n)

    async def check(self, password: str, stored: str | None) -> bool:
        return await asyncio.to_thread(check_password_sync, password, stored)
