"""Throughput and send -> long-poll latency as the load grows, for one and
two instances on one database (issue 7: "report the curve and where the
time goes").

    python bench/bench_scaling.py [--clients 1,2,5,10,20,40] [--seconds 8] [--instances 1,2]
    python bench/bench_scaling.py --quick      # 1, 5 and 20 clients, 4 s each

Starts one PostgreSQL (fsync on, as bench_rooms.py) and real
``coffeechat-home serve`` processes on it, one database per instance count.
Every client is a user of its own, sending one message at a time into a
room of its own (users alternate between the instances). A watcher, another
user in the first client's room, long-polls /sync on the last instance, so
with two instances each of its samples crosses instances (a write on one,
the long-poll on the other, which learns of it from its position poll).

For each point it prints messages acknowledged per second, the send
round-trip p50/p95, the send -> watcher's long-poll p50/p95 (the first
client's messages), and where the time goes: CPU per message of the
server process(es), of PostgreSQL (postmaster and every backend) and of
this process (the load: every client and the watcher), how many of the
machine's cores those kept busy, and the whole machine's busy, idle and
stolen (by the hypervisor) core-seconds per second from /proc/stat. On a
machine whose cores are all busy the rate is the cores divided by the CPU
per message, whatever the number of instances; idle cores under load mean
a wait (round trips in a row), not a lack of CPU. Every loop is bounded in count and time; everything started is
stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import pct  # noqa: E402
from bench.servers import Postgres, running_postgres  # noqa: E402
from tests.integration.processes import ServerProcess, User, server_env  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"
_databases = itertools.count(1)
MAX_SENDS_PER_CLIENT = 20_000  # a bound on each client's loop besides the time


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def machine_cpu_s() -> tuple[float, float, float]:
    """Seconds of every core since boot from /proc/stat: (busy: user,
    nice, system, irq, softirq; idle: idle and iowait; steal: taken by the
    hypervisor for others)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, (idle + iowait) / hz, steal / hz


@dataclass
class Point:
    instances: int
    clients: int
    acked: int = 0
    wall_s: float = 0.0
    send_ms: list[float] = field(default_factory=list)
    seen_ms: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    pg_cpu_s: float = 0.0
    load_cpu_s: float = 0.0
    machine: tuple[float, float, float] = (0.0, 0.0, 0.0)  # busy, idle, steal seconds (all cores)

    def row(self) -> str:
        n = max(self.acked, 1)
        per = [1000 * c / n for c in (self.server_cpu_s, self.pg_cpu_s, self.load_cpu_s)]
        busy = (self.server_cpu_s + self.pg_cpu_s + self.load_cpu_s) / self.wall_s if self.wall_s else 0.0
        return (f"| {self.instances} | {self.clients} | {self.acked / self.wall_s:.0f} | "
                f"{pct(self.send_ms, 0.5):.1f} / {pct(self.send_ms, 0.95):.1f} | "
                f"{pct(self.seen_ms, 0.5):.1f} / {pct(self.seen_ms, 0.95):.1f} ({len(self.seen_ms)}) | "
                f"{per[0]:.2f} | {per[1]:.2f} | {per[2]:.2f} | {sum(per):.2f} | {busy:.2f} | "
                f"{self.machine[0] / self.wall_s:.2f} / {self.machine[1] / self.wall_s:.2f} / "
                f"{self.machine[2] / self.wall_s:.2f} | {self.errors or 'none'} |")


async def watch(watcher: User, room_id: str, sent: dict[str, float], point: Point, stop: asyncio.Event) -> None:
    """Long-poll until stopped; the arrival time of every watched body."""
    since = (await watcher.sync())["next_batch"]
    while not stop.is_set():
        body = await watcher.sync(since, timeout_ms=2_000)
        now = time.perf_counter()
        since = body["next_batch"]
        events = body.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
        for e in events:
            t0 = sent.pop(str(e.get("content", {}).get("body")), None)
            if t0 is not None:
                point.seen_ms.append(1000 * (now - t0))


async def sender(user: User, room_id: str, n: int, point: Point, sent: dict[str, float] | None,
                 end: float) -> None:
    for i in range(MAX_SENDS_PER_CLIENT):
        if time.perf_counter() >= end:
            return
        body = f"load {n} {i}"
        t0 = time.perf_counter()
        if sent is not None:
            sent[body] = t0
        status, _ = await user.send(room_id, body, txn=f"s{point.instances}-{point.clients}-{n}-{i}")
        if status == 200:
            point.acked += 1
            point.send_ms.append(1000 * (time.perf_counter() - t0))
        else:
            point.errors[status] = point.errors.get(status, 0) + 1
            await asyncio.sleep(0.02)


async def curve(pg: Postgres, instances: int, clients: list[int], seconds: float) -> list[Point]:
    url = await pg.create_database(f"scaling_{instances}_{next(_databases)}", "serializable")
    servers = [ServerProcess(server_env(url, WORK, COFFEECHAT_INSTANCE_NAME=f"s{i}"), WORK) for i in range(instances)]
    points: list[Point] = []
    try:
        for sp in servers:
            await sp.start()
        procs = [psutil.Process(sp.pid) for sp in servers]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
            users = [await User(s, servers[i % instances].url).register(f"c{i}") for i in range(max(clients))]
            rooms = []
            for u in users:
                status, body = await u.call("POST", "createRoom", {"preset": "public_chat"})
                assert status == 200, body
                rooms.append(str(body["room_id"]))
            watcher = await User(s, servers[-1].url).register("watcher")
            status, body = await watcher.call("POST", f"rooms/{rooms[0]}/join", {})
            assert status == 200, body
            for k in clients:
                point = Point(instances, k)
                sent: dict[str, float] = {}
                stop = asyncio.Event()
                watching = asyncio.create_task(watch(watcher, rooms[0], sent, point, stop))
                await asyncio.sleep(0.3)  # the watcher's first long-poll is parked
                cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
                pg0, own0, m0 = pg.backend_cpu_seconds(), own_cpu_s(), machine_cpu_s()
                t0 = time.perf_counter()
                end = t0 + seconds
                await asyncio.gather(*(sender(users[i], rooms[i], i, point, sent if i == 0 else None, end)
                                       for i in range(k)))
                point.wall_s = time.perf_counter() - t0
                point.server_cpu_s = sum(sum(p.cpu_times()[:2]) - c for p, c in zip(procs, cpu0))
                point.pg_cpu_s = pg.backend_cpu_seconds() - pg0
                point.load_cpu_s = own_cpu_s() - own0
                m1 = machine_cpu_s()
                point.machine = (m1[0] - m0[0], m1[1] - m0[1], m1[2] - m0[2])
                await asyncio.sleep(0.5)  # the last messages reach the watcher
                stop.set()
                await asyncio.wait_for(watching, 10)
                points.append(point)
                log(point.row())
    finally:
        for sp in servers:
            await sp.stop()
    return points


async def run(args: argparse.Namespace) -> int:
    async with running_postgres(WORK) as pg:
        commit_ms = await pg.commit_latency()
        points = [p for n in args.instances for p in await curve(pg, n, args.clients, args.seconds)]
    print(f"\n## Scaling on {os.cpu_count()} cores (one PostgreSQL, fsync on; a one-row commit: {1000 * commit_ms:.2f} ms), "
          f"{args.seconds:g} s per point")
    print("| instances | clients | msg/s | send p50 / p95 ms | send -> long-poll p50 / p95 ms (samples) | "
          "server CPU ms/msg | PostgreSQL | load | total | cores busy (these) | machine busy / idle / steal | "
          "errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        print(p.row())
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,2,5,10,20,40", help="comma-separated client counts")
    p.add_argument("--instances", default="1,2", help="comma-separated instance counts")
    p.add_argument("--seconds", type=float, default=8.0, help="load per point")
    p.add_argument("--quick", action="store_true", help="1, 5 and 20 clients, 4 s each")
    args = p.parse_args()
    if args.quick:
        args.clients, args.seconds = "1,5,20", 4.0
    args.clients = sorted({int(x) for x in args.clients.split(",")})
    args.instances = [int(x) for x in args.instances.split(",")]
    if min(args.clients) < 1 or max(args.clients) > 200 or not 0 < args.seconds <= 120:
        p.error("clients must be 1..200 and seconds 0..120")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
