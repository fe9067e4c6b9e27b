"""Stopping a server (SIGTERM, as an operator or a process manager does)
while clients hold long-poll /sync requests open: the server answers them
at once and exits, instead of waiting for each long-poll's timeout (or
aiohttp's 60 s shutdown grace) and then cutting them off. A request that
cannot finish (a body that never arrives) is cancelled after a short grace,
and background loops stop even when stopped just after a wake-up (Python
3.11's ``asyncio.wait_for`` swallowed that cancellation: a rare hang of the
process on SIGTERM)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from coffeechat_home.services.admin.jobs import JobRunner
from coffeechat_home.services.notifier import Notifier
from coffeechat_home.storage.admin_jobs import AdminJobStore
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.stream import StreamStore

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
            # and a request whose body never comes: its handler waits on the
            # body until the shutdown grace cancels it (aiohttp's default
            # grace is 60 s, twice)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /_matrix/client/v3/register HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            await writer.drain()
            assert server.proc is not None
            server.proc.terminate()
            # bounds, not measurements: well under the long-polls' timeout
            code = await asyncio.wait_for(server.proc.wait(), 20)
            assert code == 0, server.stderr()[-2000:]
            answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
            # each client got a normal answer it can resume from elsewhere
            for body in answers:
                assert isinstance(body["next_batch"], str) and body["next_batch"]
            writer.close()
    finally:
        await server.stop()


async def test_loops_stop_when_cancelled_right_after_a_wake_up(db: Database) -> None:
    """The notifier's poll loop and the admin job runner wait on an event
    with a timeout; a poke just before ``stop()`` used to leave the loop
    running and ``stop()`` waiting on it forever."""
    for yields in range(4):  # the cancel lands 0..3 loop iterations after the poke
        notifier = Notifier(StreamStore(db, instance_id="t"))
        await notifier.start()
        runner = JobRunner(AdminJobStore(db), "t", poll_interval=0.05)
        await runner.start()
        await asyncio.sleep(0.05)  # both loops are waiting on their event
        notifier.poke()
        runner.poke()
        for _ in range(yields):
            await asyncio.sleep(0)
        stopped = asyncio.ensure_future(asyncio.gather(notifier.stop(), runner.stop()))
        done, _ = await asyncio.wait({stopped}, timeout=10)  # a bound, not a measurement
        assert done, f"stop() did not return ({yields} yields after the poke)"
        assert notifier._task is None and runner._task is None
