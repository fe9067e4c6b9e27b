"""Serialization failures and CPU of the send path, as counts that survive a
loaded machine (no throughput figures):

    python bench/bench_send_conflicts.py [--clients 20] [--sends 2000] [--seq 300]

Starts one PostgreSQL (as bench_rooms.py, SERIALIZABLE for our database)
and our server, registers ``--clients`` users, each in a room of its own.
Then:

* seq: one client sends ``--seq`` messages one at a time (no other
  request meanwhile, as bench_rooms.py's send phase); printed: the
  server's CPU (utime+stime of its process) per message and its PostgreSQL
  backends' CPU per message;
* rooms: with every client holding a long-poll ``/sync`` open, after a
  ``VACUUM ANALYZE`` (what autovacuum does to a live database within
  minutes; ``--no-analyze`` skips it), every client sends into its own
  room, one at a time, ``--sends`` in all; printed: serialization failures in PostgreSQL's log and
  ``xact_rollback`` of our database over the phase, with the failing
  statements and PostgreSQL's reason codes grouped by text (writes to
  different rooms should not conflict: every one of these is a cost).

Every loop is bounded in count and time; everything started is stopped by
its PID (bench/servers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log  # noqa: E402
from matrix_client import Client, User  # noqa: E402
from servers import STATS_SETTLE_S, Postgres, cpu_seconds_of, start_ours  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"
DB = "coffeechat"



def failures_in(text: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Serialization failures of our database in a slice of the log: their
    count, their DETAIL lines and their STATEMENT lines, grouped."""
    details: collections.Counter[str] = collections.Counter()
    stmts: collections.Counter[str] = collections.Counter()
    n = 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "could not serialize access" not in line or f" db={DB} " not in line:
            continue
        n += 1
        for nxt in lines[i + 1: i + 5]:
            m = re.search(r"(DETAIL|STATEMENT):\s+(.*)", nxt)
            if m is None:
                if "ERROR:" in nxt or "LOG:" in nxt:
                    break
                continue
            text_ = re.sub(r"\s+", " ", m.group(2)).strip()
            text_ = re.sub(r"pivot \d+", "pivot <xid>", re.sub(r"'[0-9a-f]{24}'", "'<token>'", text_))
            (details if m.group(1) == "DETAIL" else stmts)[text_[:160]] += 1
    return n, details, stmts


async def rollbacks(pg: Postgres) -> int:
    return (await pg.db_counters(DB))["xact_rollback"]


async def run(args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    pg = Postgres(WORK)
    server = None
    session: aiohttp.ClientSession | None = None
    stop = asyncio.Event()
    pollers: list[asyncio.Task[Any]] = []
    try:
        log("starting PostgreSQL ...")
        pg.start()
        await pg.configure(fsync=args.fsync == "on")
        conn = await asyncpg.connect(pg.admin_url)
        await conn.execute("ALTER SYSTEM SET log_lock_waits = on")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()
        url = await pg.create_database(DB, isolation="serializable")
        server = start_ours(WORK, url, pool=args.pool)
        server.wait_ready(120)
        log(f"server ready at {server.base_url} (pid {server.pid})")
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, limit_per_host=200))
        c = Client(session, server.base_url)
        tag = str(int(time.time()))
        users: list[User] = []
        for i in range(args.clients):
            users.append(await c.register(f"conf{i}_{tag}"))
        rooms = [await c.create_room(u, name=f"room {i}") for i, u in enumerate(users)]
        log_path = Path(pg.server.log)

        async def poller(u: User) -> None:
            since = (await c.sync(u, timeout_ms=0))["next_batch"]
            for _ in range(100_000):  # bounded; ends with the run
                if stop.is_set():
                    return
                since = (await c.sync(u, since=since, timeout_ms=5000, http_timeout=30))["next_batch"]


        async def sends(u: User, room: str, n: int, label: str, deadline: float) -> int:
            done = 0
            for k in range(n):
                if time.monotonic() > deadline:
                    break
                await c.send_text(u, room, f"{label} {k}: the quick brown fox")
                done += 1
            return done

        # warm-up (caches, connections), not counted
        await sends(users[0], rooms[0], 30, "warm", time.monotonic() + 60)

        # seq: one client, one at a time
        spy = pyspy_record(server.pid, WORK / "pyspy-send-seq.txt") if args.pyspy else None
        backends0 = cpu_seconds_of(await pg.backend_pids(DB))
        cpu0 = server.cpu_seconds()
        t0 = time.monotonic()
        n_seq = await sends(users[0], rooms[0], args.seq, "seq", time.monotonic() + 120)
        wall = time.monotonic() - t0
        cpu = server.cpu_seconds() - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        backends1 = cpu_seconds_of(await pg.backend_pids(DB))
        db_cpu = sum(v - backends0.get(p, 0.0) for p, v in backends1.items())
        log(f"seq: {n_seq} sends, server CPU {1000 * cpu / max(1, n_seq):.2f} ms/msg, "
            f"its PostgreSQL backends {1000 * db_cpu / max(1, n_seq):.2f} ms/msg ({wall:.1f} s wall, loaded machine)")

        # rooms: every client in its own room, each with a long-poll open
        pollers = [asyncio.create_task(poller(u)) for u in users]
        await asyncio.sleep(1.0)
        if not args.no_analyze:
            # what autovacuum does to a live database within minutes (the
            # planner then sees small tables as small): our tables analyzed
            conn = await asyncpg.connect(url)
            await conn.execute("VACUUM ANALYZE")
            await conn.close()
        await asyncio.sleep(STATS_SETTLE_S)
        rb0 = await rollbacks(pg)
        start = len(log_path.read_text(errors="replace"))
        cpu0 = server.cpu_seconds()
        per = max(1, args.sends // len(users))
        deadline = time.monotonic() + 300
        counts = await asyncio.gather(*(sends(u, r, per, "rooms", deadline) for u, r in zip(users, rooms)))
        n_rooms = sum(counts)
        cpu = server.cpu_seconds() - cpu0
        await asyncio.sleep(STATS_SETTLE_S)
        rb = await rollbacks(pg) - rb0
        n_fail, details, stmts = failures_in(log_path.read_text(errors="replace")[start:])
        log(f"rooms: {n_rooms} sends by {len(users)} clients in {len(users)} rooms: "
            f"{n_fail} serialization failures logged, {rb} rollbacks (xact_rollback), "
            f"server CPU {1000 * cpu / max(1, n_rooms):.2f} ms/msg")
        for title, counter in (("reasons", details), ("statements", stmts)):
            for text, k in counter.most_common(12):
                print(f"  {title}: {k:5d}  {text}")
        return 0
    finally:
        stop.set()
        for p in pollers:
            p.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        if session is not None:
            await session.close()
        if server is not None:
            server.stop()
        pg.stop()


def pyspy_record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (GIL holder only, i.e. CPU) on our server until SIGINT; read
    the file with bench/pyspy_summary.py. Its sampling costs the server a
    little CPU: compare CPU figures from runs without it."""
    spy = subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "500", "--gil", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    return spy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--sends", type=int, default=2000, help="sends in the many-rooms phase, all clients together")
    p.add_argument("--seq", type=int, default=300, help="sends in the one-client phase")
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--no-analyze", action="store_true",
                   help="skip the VACUUM ANALYZE before the many-rooms phase (a fresh database's planner statistics)")
    p.add_argument("--pyspy", action="store_true",
                   help="record the one-client phase with py-spy into bench/.work/pyspy-send-seq.txt")
    p.add_argument("--fsync", choices=("on", "off"), default="on")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
