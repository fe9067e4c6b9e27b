"""bench_federation.py's set-up: the plan, the nodes (one homeserver each),
CPU meters, py-spy, and the client helpers every phase uses (register,
join over federation, a long-polling /sync watch, a burst of sends)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp

from common import log
from matrix_client import Client, HttpError, User, q
from servers import Postgres, ServerProcess, cpu_seconds_of
from synapse_env import SYNAPSE_VERSION, ensure_synapse

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "fed"
# the tests' Synapse virtualenv (tests/interop/synapse_peer.py), shared by
# every checkout on the machine: installed once, under the same file lock
SYNAPSE_VENV = Path(os.environ.get(
    "COFFEECHAT_SYNAPSE_VENV", Path.home() / ".cache" / "coffeechat-home" / f"synapse-{SYNAPSE_VERSION}"
))
SENDERS = 10
# every /sync of the bench: big timeline pages, no presence or account data
SYNC_FILTER = {
    "room": {"timeline": {"limit": 1000}, "state": {"lazy_load_members": True}},
    "presence": {"types": []},
    "account_data": {"types": []},
}

T = TypeVar("T")



@dataclass
class Plan:
    members: int = 2000
    messages: int = 2000
    burst: int = 2000
    fanout: int = 2000
    concurrency: int = 8
    register_concurrency: int = 16
    phase_timeout_s: float = 600.0

    @classmethod
    def make(cls, quick: bool, members: int | None = None, messages: int | None = None,
             timeout_s: float | None = None) -> "Plan":
        plan = cls(members=200, messages=200, burst=300, fanout=300, phase_timeout_s=180.0) if quick else cls()
        if members is not None:
            plan.members = members
        if messages is not None:
            plan.messages = messages
        if timeout_s is not None:
            plan.phase_timeout_s = timeout_s
        return plan


@dataclass
class Node:
    """One homeserver of the run: its process, client API and database."""

    server: ServerProcess
    dbname: str
    kind: str  # "ours" | "synapse"
    client: Client | None = None
    users: list[User] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.server.label


async def bounded(items: list[T], fn: Callable[[T], Awaitable[Any]], concurrency: int, timeout_s: float) -> list[Any]:
    """fn over items, at most ``concurrency`` at once, all within ``timeout_s``."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.wait_for(asyncio.gather(*(one(i) for i in items)), timeout_s)


class CpuMeter:
    """CPU seconds of server processes and of their PostgreSQL backends
    (those connected to their own database) between start() and stop()."""

    def __init__(self, pg: Postgres, nodes: list[Node]) -> None:
        self.pg = pg
        self.nodes = nodes
        self.before: dict[str, float] = {}
        self.db_before: dict[str, dict[int, float]] = {}
        self.result: dict[str, tuple[float, float]] = {}

    async def _db(self, node: Node) -> dict[int, float]:
        return cpu_seconds_of(await self.pg.backend_pids(node.dbname))

    async def start(self) -> None:
        for n in self.nodes:
            self.before[n.label] = n.server.cpu_seconds()
            self.db_before[n.label] = await self._db(n)

    async def stop(self) -> dict[str, tuple[float, float]]:
        for n in self.nodes:
            after = await self._db(n)
            old = self.db_before[n.label]
            db = sum(v - old.get(pid, 0.0) for pid, v in after.items())
            self.result[n.label] = (n.server.cpu_seconds() - self.before[n.label], db)
        return self.result


async def settle(nodes: list[Node], max_s: float = 20.0, idle_share: float = 0.05) -> None:
    """Wait (bounded) until the servers' processes use less than
    ``idle_share`` of a core over a second: background work of the previous
    step (e.g. Synapse's partial-state resync) does not land in the next one."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        a = sum(n.server.cpu_seconds() for n in nodes)
        await asyncio.sleep(1.0)
        if sum(n.server.cpu_seconds() for n in nodes) - a < idle_share * len(nodes):
            return



# --------------------------------------------------------------------------- client helpers


async def join_remote(node: Node, user: User, room_id: str, via: str) -> None:
    assert node.client is not None
    await node.client.call("POST", f"/join/{q(room_id)}", user, {}, params={"server_name": via}, timeout=300)


async def sync_token(node: Node, user: User) -> str:
    assert node.client is not None
    r = await node.client.sync(user, filter_json=SYNC_FILTER)
    return str(r["next_batch"])


class Watch:
    """One user's long-polling /sync, counting the messages of one room whose
    body starts with ``tag``; a limited timeline is filled from /messages."""

    def __init__(self, node: Node, user: User, room_id: str, tag: str, since: str) -> None:
        self.node = node
        self.user = user
        self.room_id = room_id
        self.tag = tag
        self.since = since
        self.seen: set[str] = set()
        self.limited = 0
        self.errors = 0
        self.done_at: float | None = None

    def _take(self, events: list[dict[str, Any]]) -> bool:
        """Counts tagged messages; False when an event from before the burst
        (anything but a message) is met: older pages have nothing to count."""
        before_burst = False
        for e in events:
            if e.get("type") != "m.room.message":
                before_burst = True
                continue
            body = e.get("content", {}).get("body", "")
            if isinstance(body, str) and body.startswith(self.tag + " "):
                self.seen.add(body)
        return not before_burst

    async def _fill_gap(self, prev_batch: str, deadline: float) -> None:
        """A limited timeline (a gap, or more than the filter's limit): page
        /messages backwards from it (bounded: 20 pages) until the events
        from before the burst."""
        assert self.node.client is not None
        token: str | None = prev_batch
        for _ in range(20):
            left = deadline - time.monotonic()
            if not token or left <= 0:
                return
            r, _ = await self.node.client.call_sized(
                "GET", f"/rooms/{q(self.room_id)}/messages", self.user,
                params={"dir": "b", "limit": "500", "from": token}, timeout=left,
            )
            chunk = r.get("chunk", [])
            if not chunk or not self._take(chunk):
                return
            token = r.get("end")

    async def run(self, want: int, deadline: float) -> None:
        assert self.node.client is not None
        while len(self.seen) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                r = await self.node.client.sync(self.user, self.since, timeout_ms=int(min(10.0, left) * 1000),
                                                filter_json=SYNC_FILTER, http_timeout=left + 15)
                self.since = r["next_batch"]
                room = r.get("rooms", {}).get("join", {}).get(self.room_id)
                if not room:
                    continue
                tl = room.get("timeline", {})
                self._take(tl.get("events", []))
                if tl.get("limited") and tl.get("prev_batch"):
                    self.limited += 1
                    await self._fill_gap(tl["prev_batch"], deadline)
            except (HttpError, aiohttp.ClientError, asyncio.TimeoutError) as e:
                self.errors += 1
                log(f"{self.node.label}: /sync or /messages failed: {str(e)[:200]}")
                if time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
        if len(self.seen) >= want:
            self.done_at = time.perf_counter()


async def send_burst(node: Node, senders: list[User], room_id: str, tag: str, k: int, timeout_s: float) -> float:
    """k messages from ``senders``, each sending its share one at a time,
    all senders at once; returns when every send has answered."""
    assert node.client is not None
    client = node.client

    async def one(idx: int) -> None:
        for i in range(idx, k, len(senders)):
            await client.send_text(senders[idx], room_id, f"{tag} {i}")

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(senders)))), timeout_s)
    return time.perf_counter() - t0


async def register_users(node: Node, prefix: str, n: int, plan: Plan) -> list[User]:
    assert node.client is not None
    client = node.client
    return await bounded(list(range(n)), lambda i: client.register(f"{prefix}{i}"), plan.register_concurrency,
                         plan.phase_timeout_s)


def fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def synapse_python() -> tuple[Path, str]:
    SYNAPSE_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(SYNAPSE_VENV.parent / "synapse-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python, version = ensure_synapse(SYNAPSE_VENV, log=log)
    return python, version.split()[0]
