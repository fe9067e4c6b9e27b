"""A flood of logins costs bounded memory (issue 7): password hashes (32 MiB
of scrypt work area each at the default cost) run at most
``security.password_hash_concurrency`` at once; the rest wait their turn,
and other requests are served meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from .processes import ServerProcess, User, server_env

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_login_flood_has_bounded_memory(database_url: str, tmp_path: Path) -> None:
    env = server_env(
        database_url, tmp_path,
        COFFEECHAT_SECURITY_PASSWORD_SCRYPT_N="32768",  # the default cost: 32 MiB per hash
        COFFEECHAT_SECURITY_PASSWORD_HASH_CONCURRENCY="2",
    )
    server = await ServerProcess(env, tmp_path).start()
    try:
        async with aiohttp.ClientSession() as s:
            await User(s, server.url).register("flood", "right password")
            before_kib = _status_kib(server.pid, "VmRSS")

            async def login(i: int) -> int:
                status, _ = await User(s, server.url).call(
                    "POST", "login",
                    {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "flood"},
                     "password": "right password" if i % 2 else "wrong password"},
                    timeout=120,
                )
                return status

            flood = [asyncio.create_task(login(i)) for i in range(20)]
            await asyncio.sleep(0.2)
            # other requests are served while the hashes queue
            status, versions = await User(s, server.url).call("GET", "../versions")
            assert status == 200 and "versions" in versions
            statuses = await asyncio.gather(*flood)
            assert statuses == [403 if i % 2 == 0 else 200 for i in range(20)]
            peak_kib = _status_kib(server.pid, "VmHWM")
        # two 32 MiB work areas at once, plus slack for 20 requests in flight;
        # unbounded (one thread per hash, up to the default pool's size) it
        # grew by 190 MiB and more
        grown = (peak_kib - before_kib) * 1024
        assert grown <= 2 * 32 * MIB + 40 * MIB, f"peak RSS grew by {grown / MIB:.0f} MiB during the flood"
    finally:
        await server.stop()
