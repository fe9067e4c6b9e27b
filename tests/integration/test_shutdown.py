"""Stopping a server (SIGTERM, as an operator or a process manager does)
while clients hold long-poll /sync requests open: the server answers them
at once and exits, instead of waiting for each long-poll's timeout (or
aiohttp's 60 s shutdown grace) and then cutting them off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from .processes import ServerProcess, User, server_env, wait_until


async def test_sigterm_answers_open_long_polls_and_exits_promptly(database_url: str, tmp_path: Path) -> None:
    env = server_env(database_url, tmp_path, COFFEECHAT_METRICS_ENABLED="true")
    server = await ServerProcess(env, tmp_path).start()
    try:
        async with aiohttp.ClientSession() as s:
            users = [await User(s, server.url).register(f"poller{i}") for i in range(3)]
            sinces = [(await u.sync())["next_batch"] for u in users]
            # long-polls of two minutes: far past any shutdown grace period
            polls = [asyncio.create_task(u.sync(since, timeout_ms=120_000)) for u, since in zip(users, sinces)]

            async def waiting() -> bool:
                async with s.get(server.url + "/metrics") as r:
                    return "coffeechat_sync_waiting 3.0" in await r.text()

            assert await wait_until(waiting, 20), "the three long-polls never waited"
            assert server.proc is not None
            server.proc.terminate()
            # bounds, not measurements: well under the long-polls' timeout
            code = await asyncio.wait_for(server.proc.wait(), 20)
            assert code == 0, server.stderr()[-2000:]
            answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
            # each client got a normal answer it can resume from elsewhere
            for body in answers:
                assert isinstance(body["next_batch"], str) and body["next_batch"]
    finally:
        await server.stop()
