"""Count the SQL statements (~ database round trips) each server makes per
request: a diagnostic for the hot paths, separate from the timed benchmark.

    python bench/count_statements.py [--n 20] [--only ours|synapse]

Starts the same PostgreSQL and servers as bench_rooms.py with
``log_statement = 'all'`` on each server's database, sends N messages one at
a time, reads N /messages pages and one initial /sync, and prints the
statements per request grouped by their text. Then the initial /sync of a
user in ``--sync-rooms`` rooms (default 20) of 20 messages each, as in
bench_rooms.py: its statements, and the server's CPU per sync (/proc utime
+ stime: load on the machine inflates it far less than wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_client import Client  # noqa: E402
from servers import Postgres, start_ours, start_synapse  # noqa: E402
from synapse_env import ensure_synapse  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"
STMT = re.compile(r"\] (\S+) LOG:  (?:statement|execute [^:]*): (.*)")


def statements(log_text: str, db: str) -> list[str]:
    out = []
    for line in log_text.splitlines():
        m = STMT.search(line)
        if m and m.group(1) == db:
            text = re.sub(r"\s+", " ", m.group(2)).strip()
            out.append(text[:110])
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(label: str, base_url: str, db: str, pg: Postgres, n: int, pid: int = 0,
                  sync_rooms: int = 20) -> None:
    log_path = Path(pg.server.log)
    async with aiohttp.ClientSession() as session:
        c = Client(session, base_url)
        u = await c.register(f"counter{int(time.time())}")
        room = await c.create_room(u, name="count")
        for i in range(5):
            await c.send_text(u, room, f"warm {i}")
        for i in range(25):
            await c.send_text(u, room, f"fill {i}")
        await asyncio.sleep(1.0)

        async def section(name: str, reps: int, op) -> None:
            start = len(log_path.read_text(errors="replace"))
            for i in range(reps):
                await op(i)
            await asyncio.sleep(0.5)
            stmts = statements(log_path.read_text(errors="replace")[start:], db)
            groups = collections.Counter(stmts)
            print(f"\n{label}: {name}: {len(stmts) / reps:.1f} statements per request ({reps} requests)")
            for text, k in groups.most_common(25):
                print(f"  {k / reps:5.2f}  {text}")

        await section("send (PUT /send, one at a time)", n, lambda i: c.send_text(u, room, f"count {i}"))
        token: list[str | None] = [None]

        async def page(i: int) -> None:
            body, _size = await c.messages(u, room, token[0], limit=20)
            token[0] = body.get("end") if body.get("chunk") else None

        await section("/messages page (limit 20, dir=b)", n, page)
        watcher = await c.register(f"watcher{int(time.time())}")
        await c.join(watcher, room)
        since: list[str] = [(await c.sync(watcher))["next_batch"]]

        async def woken(i: int) -> None:
            poll = asyncio.create_task(c.sync(watcher, since[0], timeout_ms=10000))
            await asyncio.sleep(0.1)  # parked on the server
            await c.send_text(u, room, f"wake {i}")
            since[0] = (await poll)["next_batch"]

        await section("send + the other member's long-poll /sync it wakes", n, woken)
        await section("initial /sync (1 room)", 1, lambda i: c.sync(u))
        if not sync_rooms:
            return
        for r in range(sync_rooms):
            rid = await c.create_room(u, name=f"sync {r}")
            for i in range(20):
                await c.send_text(u, rid, f"sync {r} message {i}")
        reader = await c.register(f"reader{int(time.time())}")
        for rid in [rid for rid in (await c.sync(u)).get("rooms", {}).get("join", {}) if rid != room][:sync_rooms]:
            await c.join(reader, rid)
        await c.sync(reader)  # warm
        await asyncio.sleep(1.0)
        reps = 5
        cpu0 = _cpu_s(pid) if pid else 0.0
        await section(f"initial /sync ({sync_rooms} rooms x 20 messages)", reps, lambda i: c.sync(reader))
        if pid:
            print(f"  server CPU per initial sync: {1000 * (_cpu_s(pid) - cpu0) / reps:.1f} ms "
                  "(includes the 0.5 s settle: idle polls)")


async def run(args: argparse.Namespace) -> int:
    pg = Postgres(WORK)
    servers = []
    try:
        pg.start()
        await pg.configure(fsync=True, statement_log_prefix=True)
        targets = []
        if args.only in (None, "ours"):
            url = await pg.create_database("coffeechat", isolation="serializable")
            await pg.log_all_statements("coffeechat")
            s = start_ours(WORK, url, pool=args.pool)
            servers.append(s)
            targets.append((s, "coffeechat"))
        if args.only in (None, "synapse"):
            py, version = ensure_synapse(WORK / "synapse-venv")
            await pg.create_database("synapse")
            await pg.log_all_statements("synapse")
            s = start_synapse(WORK, py, version.split()[0], pg.socket_dir, "synapse", pool=args.pool)
            servers.append(s)
            targets.append((s, "synapse"))
        for s, _db in targets:
            s.wait_ready(120)
        for s, db in targets:
            await measure(s.label, s.base_url, db, pg, args.n, s.pid, args.sync_rooms)
    finally:
        for s in servers:
            s.stop()
        pg.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--sync-rooms", type=int, default=20, help="rooms of the big initial sync (0: none)")
    p.add_argument("--only", choices=("ours", "synapse"))
    p.add_argument("--pool", type=int, default=10, help="database connections per server (both the same)")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
