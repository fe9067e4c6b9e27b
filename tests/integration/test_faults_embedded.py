"""The embedded PostgreSQL after a crash of the server that started it
(issue 7): the restarted server re-attaches to it, and from then on a clean
stop stops it again, however many crashes came before."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest

from coffeechat_home.storage.embedded import drop_dead_handles

from .processes import ServerProcess, User, server_env

pytestmark = pytest.mark.slow


def _postgres_of(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(cmd):
            found.append(proc)
    return found


async def _gone(pgdata: Path, timeout: float = 30) -> bool:
    for _ in range(int(timeout * 10)):
        if not _postgres_of(pgdata):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_clean_stops_after_crashes_stop_the_embedded_database(tmp_path: Path) -> None:
    env = server_env("", tmp_path, COFFEECHAT_DEV_MODE="true")
    pgdata = (tmp_path / "postgres").resolve()
    server = ServerProcess(env, tmp_path)
    try:
        async with aiohttp.ClientSession() as s:
            await server.start()
            await User(s, server.url).register("before")
            for _crash in range(2):
                await server.kill9()
                assert _postgres_of(pgdata), "PostgreSQL should outlive a kill -9 of the server"
                await server.start()  # re-attaches to the running PostgreSQL
                status, _ = await User(s, server.url).call(
                    "POST", "login", {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "before"},
                                      "password": "a password"},
                )
                assert status == 200, "the data written before the crash is there"
            # two clean stop/start cycles: each stop stops PostgreSQL
            for cycle in range(2):
                assert await server.stop() == 0
                assert await _gone(pgdata), f"PostgreSQL left running after clean stop {cycle + 1}"
                await server.start()
                await User(s, server.url).register(f"after{cycle}")
    finally:
        await server.stop()
        for proc in _postgres_of(pgdata):  # never leave one behind, even on failure
            proc.kill()
    assert not _postgres_of(pgdata)


def test_drop_dead_handles_keeps_live_processes(tmp_path: Path) -> None:
    dead = psutil.Popen(["true"])
    dead.wait()
    # a live server stand-in: a Python process (not this one, whose title a
    # test runner such as pytest-xdist may have rewritten)
    live = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / ".handle_pids.json"
        path.write_text(json.dumps([dead.pid, live.pid]))
        assert drop_dead_handles(path) == [dead.pid]
        assert json.loads(path.read_text()) == [live.pid]
        assert drop_dead_handles(path) == []
    finally:
        live.kill()
        live.wait()
    path.write_text("[1, 2")  # torn write
    assert drop_dead_handles(path) == []
    assert json.loads(path.read_text()) == []
    assert drop_dead_handles(tmp_path / "missing.json") == []
