"""Password hashing with scrypt (a memory-hard KDF from the standard library).

Stored form: ``$scrypt$n=<N>,r=<r>,p=<p>$<salt b64>$<hash b64>``. Hashing
runs in worker threads of its own, at most ``concurrency`` at once (one per
core by default): each hash takes 128 * N bytes (32 MiB at the default N),
so a flood of logins or registrations queues instead of growing memory
without bound, and the event loop and the default thread pool stay free for
other requests.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import os
from typing import Any, Callable, TypeVar

T = TypeVar("T")

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
    def __init__(self, scrypt_n: int, concurrency: int = 0) -> None:
        self.scrypt_n = scrypt_n
        self.concurrency = concurrency or os.cpu_count() or 1
        # Threads start on first use; the queue is the executor's own.
        self._pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="password")
        # for metrics: hashes submitted and not finished (running + queued),
        # and all ever finished
        self.pending = 0
        self.done = 0

    @property
    def queued(self) -> int:
        return max(0, self.pending - self.concurrency)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        self.pending += 1
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            self.pending -= 1
            self.done += 1

    async def hash(self, password: str) -> str:
        return await self._run(hash_password_sync, password, self.scrypt_n)

    async def check(self, password: str, stored: str | None) -> bool:
        return await self._run(check_password_sync, password, stored)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
