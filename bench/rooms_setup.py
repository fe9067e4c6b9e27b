"""bench_rooms.py's set-up: the plan, one target per server (its process,
client, users and rooms), the users and rooms every phase uses, the
initial-sync data set, the idle measurement and py-spy. bench_fanout.py
reuses these."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from common import PySpy, log
from matrix_client import Client, User
from servers import STATS_SETTLE_S, Postgres, ServerProcess

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
N_CLIENTS = 20
IDLE_S = 10.0  # the idle measurement after setup


@dataclass
class Plan:
    quick: bool
    warmup: int = 20
    seq_msgs: int = 1000
    seq_secs: float = 25.0
    conc_msgs: int = 2000  # total, over N_CLIENTS clients
    conc_secs: float = 30.0
    lat_samples: int = 100
    lat_secs: float = 40.0
    sync_rooms: int = 100
    sync_msgs: int = 50
    sync_runs: int = 5
    pages_secs: float = 10.0
    pages_max: int = 20000

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True, warmup=10, seq_msgs=300, seq_secs=8, conc_msgs=400, conc_secs=8,
            lat_samples=25, lat_secs=12, sync_rooms=20, sync_msgs=20, sync_runs=3,
            pages_secs=4, pages_max=5000,
        )


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; a miss counts as +inf (slower than any answer)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def median_of_runs(runs: list[Any]) -> Any:
    """The median of each number across repetitions (dicts merged key by key)."""
    present = [r for r in runs if r is not None]
    if not present:
        return None
    if all(isinstance(r, dict) for r in present):
        keys = dict.fromkeys(k for r in present for k in r)
        return {k: median_of_runs([r.get(k) for r in present]) for k in keys}
    if all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in present):
        return statistics.median(present)
    return present[0]



# --------------------------------------------------------------------------- per-server state


@dataclass
class Target:
    server: ServerProcess
    client: Client
    pg: Postgres
    users: list[User] = field(default_factory=list)
    watcher: User | None = None
    syncer: User | None = None
    shared_room: str = ""
    own_rooms: list[str] = field(default_factory=list)
    latency_room: str = ""
    results: dict[str, Any] = field(default_factory=dict)  # the current repetition's
    runs: list[dict[str, Any]] = field(default_factory=list)  # one dict per repetition
    common: dict[str, Any] = field(default_factory=dict)  # measured once (idle CPU, RSS, data set)
    sync_rooms: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pyspy: PySpy | None = None
    dbname: str = ""

    @property
    def label(self) -> str:
        return self.server.label


async def gather_limited(n: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


async def setup(t: Target) -> None:
    c = t.client
    tag = f"{int(time.time())}"
    t.users = await gather_limited(5, [lambda i=i: c.register(f"bench{i}_{tag}") for i in range(N_CLIENTS)])
    t.watcher = await c.register(f"watcher_{tag}")
    t.syncer = await c.register(f"syncer_{tag}")
    u0 = t.users[0]
    t.shared_room = await c.create_room(u0, name="shared")
    await gather_limited(5, [lambda u=u: c.join(u, t.shared_room) for u in t.users[1:]])
    t.own_rooms = await gather_limited(5, [lambda u=u: c.create_room(u, name="own") for u in t.users])
    t.latency_room = await c.create_room(u0, name="latency")
    await c.join(t.watcher, t.latency_room)


async def fill_initial_sync(t: Target, plan: Plan) -> None:
    """The initial-sync data set, the same for both servers: ``sync_rooms``
    rooms of the syncing user with exactly ``sync_msgs`` messages each. Not
    timed and not bounded by time (a server that fills slowly still gets the
    whole set); any failed send stops the run rather than shrink the set."""
    c, s = t.client, t.syncer
    assert s is not None
    fill_start = time.perf_counter()
    t.sync_rooms = await gather_limited(
        5, [lambda i=i: c.create_room(s, name=f"sync room {i}") for i in range(plan.sync_rooms)]
    )

    async def filler(w: int) -> int:
        sent = 0
        for ri in range(w, len(t.sync_rooms), N_CLIENTS):
            for k in range(plan.sync_msgs):
                await c.send_text(s, t.sync_rooms[ri], f"history message {k} in room {ri}, some ordinary text")
                sent += 1
        return sent

    sent = sum(await asyncio.gather(*(filler(w) for w in range(N_CLIENTS))))
    assert sent == plan.sync_rooms * plan.sync_msgs, sent
    t.common["initial_sync_data"] = {
        "rooms": len(t.sync_rooms), "msgs_per_room": plan.sync_msgs, "sent": sent,
        "fill_secs": time.perf_counter() - fill_start,
    }


async def measure_idle(targets: list[Target]) -> None:
    """What each server does while nobody sends anything: its CPU, and its
    database work per second (subtracted from each phase's counters)."""
    await asyncio.sleep(STATS_SETTLE_S)
    n0 = {t.label: await t.pg.db_counters(t.dbname) for t in targets}
    c0 = {t.label: t.server.cpu_seconds() for t in targets}
    t0 = time.perf_counter()
    await asyncio.sleep(IDLE_S)
    idle_wall = time.perf_counter() - t0
    for t in targets:
        t.common["idle_cpu_pct"] = 100 * (t.server.cpu_seconds() - c0[t.label]) / idle_wall
    await asyncio.sleep(STATS_SETTLE_S)
    for t in targets:
        n1 = await t.pg.db_counters(t.dbname)
        span = time.perf_counter() - t0
        t.common["idle_db_per_s"] = {k: (n1[k] - n0[t.label][k]) / span for k in n1}
    log("idle over " + f"{IDLE_S:.0f} s: " + ", ".join(
        f"{t.label} CPU {t.common['idle_cpu_pct']:.1f}%, "
        f"{t.common['idle_db_per_s']['xact_commit']:.1f} commits/s in its database" for t in targets))


# --------------------------------------------------------------------------- py-spy


def pyspy_start(t: Target, phase: str) -> None:
    rate = int(os.environ.get("BENCH_PYSPY_RATE", "200"))
    t.pyspy = PySpy(t.server.pid, WORK / f"pyspy-{phase}.txt", rate=rate).start()


def pyspy_stop(t: Target) -> None:
    if t.pyspy is not None:
        t.pyspy.stop()
        t.pyspy = None
