"""Initial /sync of one user, side by side for two checkouts of our server.

    python bench/bench_initial_sync.py [--rooms 20] [--msgs 20] [--runs 9] [--base /path/to/other/checkout]
                                       [--timeline] [--pglog]

One PostgreSQL (as bench_rooms.py), a database and a server per checkout
(this one, and ``--base`` if given: e.g. ``git archive main | tar -x -C
/tmp/base``), each run under bench/sql_trace.py. Each gets the data set of
bench_rooms.py (a user in ``--rooms`` rooms of ``--msgs`` messages, sent by
the user, and ``--other`` messages in a room of another user), then ``--runs`` initial syncs per server, alternating which goes
first. Per server: wall time (median, first), server CPU per sync (/proc
utime + stime: survives load far better than wall time), statements per
sync, its database backends' CPU, and from the trace the time with no statement in flight (Python) and
the longest chain of statements run one after another. ``--timeline``
prints the median run's statements in start order (ms from the request's
start, duration, connection); ``--explain`` the plans of the last run's
reads, with their arguments. ``--cprofile``: the server's
profile over the runs (its own profiler on the CPU clock, without the trace). ``--pglog``: PostgreSQL's own time per
statement (log_min_duration_statement = 0), summed per sync.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_s  # noqa: E402
from matrix_client import Client, User  # noqa: E402
from servers import PROJECT_ROOT, Postgres, ServerProcess, run_main, start_ours  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
DURATION = re.compile(r"\] (\S+) LOG:  duration: ([0-9.]+) ms(?:  (parse|bind|execute|statement)[^:]*: (.*))?")


class Target:
    def __init__(self, label: str, root: Path, index: int) -> None:
        self.label, self.root, self.index = label, root, index
        self.db = f"isync{index}"
        self.work = WORK / f"isync-{os.getpid()}-{index}"
        self.trace = self.work / "trace.jsonl"
        self.server: ServerProcess | None = None
        self.user: User | None = None
        self.runs: list[dict[str, Any]] = []
        self.url = ""
        self.pg_steps: dict[tuple[str, str], float] = {}


async def fill(c: Client, user: User, rooms: int, msgs: int) -> None:
    room_ids = [await c.create_room(user, name=f"sync room {i}") for i in range(rooms)]

    sends = [(ri, k) for ri in range(rooms) for k in range(msgs)]

    async def filler(w: int) -> None:  # each room's messages in order when rooms >= 10
        for ri, k in sends[w::10] if rooms < 10 else [(ri, k) for ri, k in sends if ri % 10 == w]:
            await c.send_text(user, room_ids[ri], f"history message {k} in room {ri}, some ordinary text")

    await asyncio.gather(*(filler(w) for w in range(10)))


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sync request's window: its statements, the time with none in
    flight, and the depth (statements in a row)."""
    http = [r for r in rows if r["kind"] == "http" and r["what"].startswith("GET /_matrix/client/v3/sync")]
    if not http:
        return {}
    h = http[-1]
    sql = sorted((r for r in rows if r["kind"] == "sql" and h["t0"] <= r["t0"] <= h["t1"]), key=lambda r: r["t0"])
    acq = [r for r in rows if r["kind"] == "acquire" and h["t0"] <= r["t0"] <= h["t1"]]
    busy = 0.0
    end = h["t0"]
    for r in sql:  # union of the statements' intervals, within the request's
        t1 = min(r["t1"], h["t1"])
        if t1 > end:
            busy += t1 - max(r["t0"], end)
            end = t1
    # depth: statements that start after the previous "layer" ended
    depth, layer_end = 0, h["t0"]
    for r in sql:
        if r["t0"] >= layer_end:
            depth += 1
            layer_end = r["t1"]
        else:
            layer_end = max(layer_end, r["t1"])
    return {
        "wall_ms": 1000 * (h["t1"] - h["t0"]), "statements": len(sql), "sql_busy_ms": 1000 * busy,
        "no_sql_ms": 1000 * (h["t1"] - h["t0"] - busy), "depth": depth,
        "acquire_wait_ms": 1000 * sum(r["t1"] - r["t0"] for r in acq),
        "timeline": [(1000 * (r["t0"] - h["t0"]), 1000 * (r["t1"] - r["t0"]), r["conn"], r["what"]) for r in sql],
        "statements_full": [(r.get("query"), r.get("args")) for r in sql],
    }


async def explain(url: str, statements: list[tuple[str | None, Any]]) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each read of a sync, with its own
    arguments, on a READ COMMITTED session as the server's lone reads."""
    import asyncpg

    conn = await asyncpg.connect(url, server_settings={"default_transaction_isolation": "read committed"})
    try:
        for query, args in statements:
            if not query or args is None or not query.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            try:
                plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + query, *args)
            except Exception as e:  # an argument that did not survive JSON (a repr)
                print(f"\n-- {' '.join(query.split())[:100]}\n   (not explained: {e})")
                continue
            print(f"\n-- {' '.join(query.split())[:160]}")
            for row in plan:
                print("   " + row[0])
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> int:
    targets = [Target("this checkout", PROJECT_ROOT, 0)]
    if args.base:
        targets.append(Target(f"base {args.base}", Path(args.base).resolve(), 1))
    pg = Postgres(WORK)
    try:
        pg.start()
        await pg.configure(fsync=True, statement_log_prefix=True)
        for t in targets:
            url = await pg.create_database(t.db, isolation="serializable")
            t.url = url
            if args.pglog:
                conn_url = pg.admin_url
                import asyncpg

                conn = await asyncpg.connect(conn_url)
                try:
                    await conn.execute(f'ALTER DATABASE "{t.db}" SET log_min_duration_statement = 0')
                finally:
                    await conn.close()
            t.work.mkdir(parents=True, exist_ok=True)
            if args.cprofile:  # the server's own profiler (coffeechat_home/profiling.py), no trace
                t.server = start_ours(t.work, url, {"BENCH_CPROFILE_DIR": str(t.work / "prof"), "BENCH_CPROFILE_TIMER": "cpu"}, pool=args.pool,
                                      root=t.root)
            else:
                t.server = start_ours(t.work, url, {"BENCH_SQL_TRACE": str(t.trace)}, pool=args.pool, root=t.root,
                                      wrapper=HERE / "sql_trace.py")
        for t in targets:
            assert t.server is not None
            t.server.wait_ready(120)
        async with aiohttp.ClientSession() as session:
            for t in targets:
                assert t.server is not None
                c = Client(session, t.server.base_url)
                t.user = await c.register(f"syncer{t.index}")
                await fill(c, t.user, args.rooms, args.msgs)
                if args.other:  # the rest of a server's data (bench_rooms.py sends ~1,200 other messages)
                    other = await c.register(f"other{t.index}")
                    await fill(c, other, 1, args.other)
            await asyncio.sleep(1.0)
            if args.cprofile:
                for t in targets:
                    assert t.server is not None
                    os.kill(t.server.pid, signal.SIGUSR1)
            for rep in range(args.runs):
                for t in (targets if rep % 2 == 0 else targets[::-1]):
                    assert t.server is not None and t.user is not None
                    c = Client(session, t.server.base_url)
                    log_start = Path(pg.server.log).stat().st_size if args.pglog else 0
                    if not args.cprofile:
                        os.kill(t.server.pid, signal.SIGUSR1)
                    backends = await pg.backend_pids(t.db)
                    cpu0, db0 = cpu_s(t.server.pid), cpu_s(*backends)
                    t0 = time.perf_counter()
                    body, size = await c.call_sized("GET", "/sync", t.user, params={"timeout": "0"}, timeout=120)
                    wall = time.perf_counter() - t0
                    cpu, db_cpu = cpu_s(t.server.pid) - cpu0, cpu_s(*backends) - db0
                    rows = []
                    if not args.cprofile:
                        os.kill(t.server.pid, signal.SIGUSR2)
                        deadline = time.monotonic() + 10
                        while time.monotonic() < deadline and not t.trace.exists():
                            await asyncio.sleep(0.05)
                        await asyncio.sleep(0.1)
                        rows = [json.loads(line) for line in t.trace.read_text().splitlines() if line]
                        t.trace.unlink()
                    joined = len(body.get("rooms", {}).get("join", {}))
                    assert joined == args.rooms, (t.label, joined)
                    run_ = {"client_ms": 1000 * wall, "cpu_ms": 1000 * cpu, "db_cpu_ms": 1000 * db_cpu, "bytes": size,
                            **analyse(rows)}
                    if args.pglog:
                        await asyncio.sleep(0.3)
                        with open(pg.server.log, errors="replace") as f:
                            f.seek(log_start)
                            text = f.read()
                        with open(t.work / "pg-during-syncs.log", "a") as keep:
                            keep.write(text)
                        found = [m for m in DURATION.finditer(text) if m.group(1) == t.db]
                        run_["pg_ms"] = sum(float(m.group(2)) for m in found)
                        for m in found:
                            step = m.group(3) or "?"
                            run_[f"pg_{step}_ms"] = run_.get(f"pg_{step}_ms", 0.0) + float(m.group(2))
                            key = (step, " ".join((m.group(4) or "").split())[:90])
                            t.pg_steps[key] = t.pg_steps.get(key, 0.0) + float(m.group(2))
                    t.runs.append(run_)
                    await asyncio.sleep(0.3)
            if args.cprofile:
                for t in targets:
                    assert t.server is not None
                    os.kill(t.server.pid, signal.SIGUSR2)
                await asyncio.sleep(2.0)
        for t in targets:
            print(f"\n== {t.label}: initial /sync, {args.rooms} rooms x {args.msgs} msgs, {len(t.runs)} runs")
            keys = ["client_ms", "wall_ms", "cpu_ms", "db_cpu_ms", "statements", "depth", "sql_busy_ms", "no_sql_ms",
                    "acquire_wait_ms", "bytes"] + (
                [f"pg_{s}ms" for s in ("", "parse_", "bind_", "execute_", "statement_")] if args.pglog else [])
            for k in keys:
                vals = [r[k] for r in t.runs if k in r]
                if vals:
                    print(f"  {k:16s} median {statistics.median(vals):9.2f}  first {vals[0]:9.2f}  "
                          f"min {min(vals):9.2f}")
            if args.timeline and t.runs:
                med = sorted(t.runs, key=lambda r: r["client_ms"])[len(t.runs) // 2]
                print(f"  timeline of the median run ({med['client_ms']:.1f} ms at the client):")
                for start, dur, conn, what in med.get("timeline", []):
                    print(f"    {start:7.2f} +{dur:6.2f}  c{conn:05d}  {what}")
            prof = t.work / "prof" / "cprofile-1.prof"
            if args.cprofile and prof.exists():
                import io
                import pstats

                text = io.StringIO()
                st = pstats.Stats(str(prof), stream=text)
                st.sort_stats("tottime").print_stats(35)
                st.sort_stats("cumulative").print_stats(60)
                print(text.getvalue())
            if t.pg_steps:
                print("  PostgreSQL's time per sync by step and statement (the largest):")
                for (step, text), ms in sorted(t.pg_steps.items(), key=lambda kv: -kv[1])[:30]:
                    print(f"    {ms / len(t.runs):7.3f} ms  {step:9s} {text}")
            if args.explain and t.runs:
                await explain(t.url, t.runs[-1].get("statements_full", []))
    finally:
        for t in targets:
            if t.server is not None:
                t.server.stop()
        pg.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--msgs", type=int, default=20)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--other", type=int, default=1000, help="messages in another user's room")
    p.add_argument("--base", help="another checkout to compare with (run the same way)")
    p.add_argument("--timeline", action="store_true")
    p.add_argument("--pglog", action="store_true")
    p.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the last run's statements")
    p.add_argument("--cprofile", action="store_true", help="cProfile the server over the runs (no trace)")
    return run_main(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
