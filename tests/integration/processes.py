"""Servers as real processes, for fault tests: started with the command a
user runs, killed with SIGKILL, stopped with SIGTERM, always by PID."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

CMD = [sys.executable, "-m", "coffeechat_home"]
# the checkout under test, whatever is installed
ROOT = Path(__file__).resolve().parents[2]

# What every test server runs with (in-process or a process): open
# registration, cheap password hashes, no rate limits, quiet logs.
TEST_SETTINGS = {
    "COFFEECHAT_CLIENT_LISTENER_PORT": "0",
    "COFFEECHAT_REGISTRATION_MODE": "open",
    "COFFEECHAT_SECURITY_PASSWORD_SCRYPT_N": "1024",
    "COFFEECHAT_LIMITS_LOGIN_PER_SECOND": "1000",
    "COFFEECHAT_LIMITS_LOGIN_BURST": "1000",
    "COFFEECHAT_LIMITS_REGISTER_PER_SECOND": "1000",
    "COFFEECHAT_LIMITS_REGISTER_BURST": "1000",
    # CCH_TEST_LOG_LEVEL=INFO shows what test servers do (their stderr goes
    # to their workdir, and into the failure messages of tests that print it)
    "COFFEECHAT_LOG_LEVEL": os.environ.get("CCH_TEST_LOG_LEVEL", "WARNING"),
}


def server_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "COFFEECHAT_SERVER_NAME": "faults.test",
        "COFFEECHAT_DATA_DIR": str(data_dir),
        **TEST_SETTINGS,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        **extra,
    }
    if database_url:
        env["COFFEECHAT_DATABASE_URL"] = database_url
    else:
        env.pop("COFFEECHAT_DATABASE_URL", None)
    return env


class ServerProcess:
    """One ``coffeechat-home serve`` process."""

    def __init__(self, env: dict[str, str], workdir: Path, *args: str) -> None:
        self.env = env
        self.workdir = workdir
        self.args = args or ("serve",)
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.stderr_path = workdir / f"stderr-{id(self)}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 120) -> "ServerProcess":
        with self.stderr_path.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *CMD, *self.args, stdout=asyncio.subprocess.PIPE, stderr=err, env=self.env, cwd=self.workdir
            )
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode()
        assert "listening on" in line, f"stdout: {line!r}; stderr: {self.stderr()[-3000:]}"
        self.port = int(line.split("listening on http://")[1].split("/")[0].rsplit(":", 1)[1])
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    async def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 30)

    async def stop(self) -> int:
        """SIGTERM and wait; returns the exit code (None-safe if never started)."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc is not None and self.proc.returncode is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 60)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise


_txn = itertools.count()


class User:
    """A client of one server, over raw HTTP (it must survive the server
    dying under it: errors are returned, not raised)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.token = ""
        self.user_id = ""

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(
            method, self.base_url + "/_matrix/client/v3/" + path, json=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            return r.status, await r.json(content_type=None)

    async def register(self, name: str, password: str = "a password") -> "User":
        status, body = await self.call(
            "POST", "register", {"username": name, "password": password, "auth": {"type": "m.login.dummy"}}
        )
        assert status == 200, body
        self.token, self.user_id = body["access_token"], body["user_id"]
        return self

    def on(self, base_url: str) -> "User":
        """The same session (token) talking to another instance."""
        other = User(self.session, base_url)
        other.token, other.user_id = self.token, self.user_id
        return other

    async def send(self, room_id: str, body: str, txn: str | None = None) -> tuple[int, Any]:
        txn = txn or f"t{next(_txn)}"
        return await self.call(
            "PUT", f"rooms/{quote(room_id)}/send/m.room.message/{txn}", {"msgtype": "m.text", "body": body}
        )

    async def sync(self, since: str | None = None, timeout_ms: int = 0) -> dict[str, Any]:
        path = f"sync?timeout={timeout_ms}" + (f"&since={since}" if since else "")
        status, body = await self.call("GET", path, timeout=timeout_ms / 1000 + 30)
        assert status == 200, body
        return dict(body)

    async def history(self, room_id: str) -> list[dict[str, Any]]:
        """Every event of the room, oldest first, through /messages."""
        events: list[dict[str, Any]] = []
        token = ""
        while True:
            q = "dir=b&limit=500" + (f"&from={token}" if token else "")
            status, body = await self.call("GET", f"rooms/{quote(room_id)}/messages?{q}")
            assert status == 200, body
            events.extend(body["chunk"])
            if not body.get("end") or not body["chunk"]:
                return events[::-1]
            token = body["end"]


async def message_bodies(user: User, room_id: str) -> list[str]:
    """The bodies of the room's messages the user's ``/messages`` shows, oldest first."""
    return [e["content"].get("body") for e in await user.history(room_id) if e["type"] == "m.room.message"]


async def pages_back(user: User, room_id: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """/messages backwards in pages of ``limit`` until no ``end``: the
    events (oldest first) and the number of pages."""
    events: list[dict[str, Any]] = []
    token = ""
    for pages in range(1, 200):
        q = f"dir=b&limit={limit}" + (f"&from={token}" if token else "")
        status, body = await user.call("GET", f"rooms/{quote(room_id)}/messages?{q}")
        assert status == 200, body
        events.extend(body["chunk"])
        if not body.get("end"):
            return events[::-1], pages
        assert body["chunk"], body
        token = body["end"]
    raise AssertionError("/messages never ended")


def timeline_bodies(sync_body: dict[str, Any], room_id: str) -> list[str]:
    room = sync_body.get("rooms", {}).get("join", {}).get(room_id, {})
    return [e["content"].get("body") for e in room.get("timeline", {}).get("events", [])
            if e.get("type") == "m.room.message"]


async def wait_until(predicate: Any, deadline_s: float, interval: float = 0.1) -> bool:
    """Poll an async predicate until true or until the deadline (a bound on
    a test's wait, not a measurement)."""
    end = time.monotonic() + deadline_s
    while True:
        if await predicate():
            return True
        if time.monotonic() > end:
            return False
        await asyncio.sleep(interval)
