"""The local send path in figures that survive a loaded machine (issue #7):
server CPU per send, PostgreSQL backend CPU per send, SQL statements per
send, and where the time goes between a send and another user's long-poll
/sync answer.

    python bench/bench_send_path.py [--n 200] [--rounds 5] [--wakes 30] [--pyspy]
    python bench/bench_send_path.py --baseline /tmp/main-export   # A/B against another checkout

Starts one PostgreSQL and our server (``log_statement = 'all'`` on its
database, ``metrics.sync_timing`` on); one user sends in one room one
message at a time while a second member is joined, then ``--clients``
users send at once, each into a room of its own. With ``--baseline DIR``
a second server runs the code in DIR (e.g. ``git archive main | tar -x -C
DIR``) on its own database, and the rounds alternate between the two, so
both see the same machine load; compare their medians.

CPU is read from /proc (user + system) of each server process and of its
database's backends before and after each round of ``--n`` sends; the
table shows the median round. Wall-clock figures are printed too but mean
little on a shared machine. ``--pyspy`` records this checkout's first send
round with py-spy into bench/.work/pyspy-send-path.txt (summarize it with
bench/pyspy_summary.py). ``--cprofile`` wraps that round in the server's own
cProfile (coffeechat_home/profiling.py) and prints the functions with the
most time of their own per send (C calls, such as asyncpg's parameter
encoding and protocol, count as functions of their own there).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import pct  # noqa: E402
from count_statements import statements  # noqa: E402
from matrix_client import Client, User, q  # noqa: E402
from servers import PROJECT_ROOT, Postgres, ServerProcess, cpu_seconds_of, start_ours  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


@dataclass
class Subject:
    label: str
    db: str
    server: ServerProcess
    client: Client | None = None
    sender: User | None = None
    watcher: User | None = None
    room: str = ""
    cpu: list[float] = field(default_factory=list)  # ms per send, per round
    db_cpu: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    stmts: list[str] = field(default_factory=list)
    commits: float = 0.0  # transactions committed per send (first round)
    wake: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    wake_stmts: list[str] = field(default_factory=list)
    many: list[tuple[User, str]] = field(default_factory=list)  # --clients: (sender, own room)
    many_cpu: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # sends/s of each sequential round (wall clock)
    many_rates: list[float] = field(default_factory=list)  # the same for the --clients rounds
    many_db_cpu: list[float] = field(default_factory=list)
    many_stmts: list[float] = field(default_factory=list)  # per send, per round
    many_commits: list[float] = field(default_factory=list)


async def send_round(s: Subject, pg: Postgres, n: int, spy: bool, cprofile: bool = False) -> None:
    assert s.client is not None and s.sender is not None
    log_path = Path(pg.server.log)
    backends = await pg.backend_pids(s.db)
    log_start = len(log_path.read_text(errors="replace"))
    proc = None
    if spy:
        proc = subprocess.Popen(["py-spy", "record", "--pid", str(s.server.pid), "--format", "raw",
                                 "--rate", os.environ.get("PYSPY_RATE", "200"), "--gil", "-o", str(WORK / "pyspy-send-path.txt")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.5)
    if cprofile:
        os.kill(s.server.pid, signal.SIGUSR1)
    cpu0, db0 = s.server.cpu_seconds(), sum(cpu_seconds_of(backends).values())
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await s.client.send_text(s.sender, s.room, f"message {i}")
        s.lat.append(time.perf_counter() - t0)
    s.rates.append(n / (time.perf_counter() - started))
    cpu1, db1 = s.server.cpu_seconds(), sum(cpu_seconds_of(backends).values())
    if cprofile:
        os.kill(s.server.pid, signal.SIGUSR2)
        await asyncio.sleep(1.0)
        print_cprofile(n)
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    s.cpu.append(1000 * (cpu1 - cpu0) / n)
    s.db_cpu.append(1000 * (db1 - db0) / n)
    if not s.stmts:
        await asyncio.sleep(0.5)
        chunk = log_path.read_text(errors="replace")[log_start:]
        s.stmts = statements(chunk, s.db)
        s.stmts.append(f"__n={n}")
        s.commits = statements_and_commits(chunk, s.db)[1] / n


async def many_round(s: Subject, pg: Postgres, n: int) -> None:
    """Every --clients sender sends n messages into its own room, all at once."""
    assert s.client is not None
    backends = await pg.backend_pids(s.db)
    log_path = Path(pg.server.log)
    log_start = len(log_path.read_text(errors="replace"))
    cpu0, db0 = s.server.cpu_seconds(), sum(cpu_seconds_of(backends).values())

    async def one(user: User, room: str) -> None:
        assert s.client is not None
        for i in range(n):
            await s.client.send_text(user, room, f"many {i}")

    started = time.perf_counter()
    await asyncio.gather(*(one(u, r) for u, r in s.many))
    s.many_rates.append(n * len(s.many) / (time.perf_counter() - started))
    cpu1, db1 = s.server.cpu_seconds(), sum(cpu_seconds_of(backends).values())
    total = n * len(s.many)
    s.many_cpu.append(1000 * (cpu1 - cpu0) / total)
    s.many_db_cpu.append(1000 * (db1 - db0) / total)
    await asyncio.sleep(0.5)
    n_stmts, n_commits = statements_and_commits(log_path.read_text(errors="replace")[log_start:], s.db)
    s.many_stmts.append(n_stmts / total)
    s.many_commits.append(n_commits / total)


LOGGED = re.compile(r"\[(\d+)\] (\S+) LOG:  (?:statement|execute [^:]*): (.*)")


def print_cprofile(n: int) -> None:
    """The server's cProfile of one send round: own time per send."""
    import pstats

    files = sorted((WORK / "cprofile").glob("cprofile-*.prof"), key=lambda f: f.stat().st_mtime)
    if not files:
        print("  (no cProfile written)")
        return
    stats = pstats.Stats(str(files[-1]))
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in rows)
    print(f"  cProfile of a send round: {1000 * total / n:.3f} ms per send in all; most own time per send:")
    for (file, line, func), (_cc, _nc, tt, _ct, _callers) in rows[:25]:
        where = file if file == "~" else "/".join(Path(file).parts[-2:])
        print(f"    {1000 * tt / n:6.3f} ms  {func} ({where}:{line})")


def statements_and_commits(log_text: str, db: str) -> tuple[int, int]:
    """Statements (round trips) logged for ``db``, and the transactions they
    committed: each COMMIT, and each statement run outside BEGIN..COMMIT (a
    lone statement commits as it ends). Followed per backend."""
    in_txn: dict[str, bool] = {}
    stmts = commits = 0
    for line in log_text.splitlines():
        m = LOGGED.search(line)
        if not m or m.group(2) != db:
            continue
        stmts += 1
        pid = m.group(1)
        for part in m.group(3).split(";"):
            word = part.strip().split(" ", 1)[0].upper()
            if not word:
                continue
            if word in ("BEGIN", "START"):
                in_txn[pid] = True
            elif word in ("COMMIT", "END", "ROLLBACK"):
                commits += word != "ROLLBACK"
                in_txn[pid] = False
            elif not in_txn.get(pid, False):
                commits += 1
    return stmts, commits


async def wake_round(s: Subject, pg: Postgres, session: aiohttp.ClientSession, wakes: int) -> None:
    """Send while the other member long-polls: the server's timing marks
    (monotonic clock, the same across processes) against the send's start,
    and the statements of the send and of the long-poll it wakes."""
    assert s.client is not None and s.sender is not None and s.watcher is not None
    c = s.client
    since = (await c.sync(s.watcher, timeout_ms=0))["next_batch"]
    log_path = Path(pg.server.log)
    log_start = len(log_path.read_text(errors="replace"))
    for i in range(wakes):
        params = {"timeout": "10000", "since": since}
        poll = asyncio.ensure_future(
            session.get(c.base + "/sync", params=params, headers={"Authorization": f"Bearer {s.watcher.token}"})
        )
        await asyncio.sleep(0.1)  # parked on the server
        t0 = time.monotonic()
        async with session.put(
            c.base + f"/rooms/{q(s.room)}/send/m.room.message/wake{time.monotonic_ns()}",
            json={"msgtype": "m.text", "body": f"wake {i}"},
            headers={"Authorization": f"Bearer {s.sender.token}"},
        ) as r:
            await r.read()
            t_sent = time.monotonic()
        resp = await poll
        body = await resp.json()
        t_recv = time.monotonic()
        since = body["next_batch"]
        marks: dict[str, float] = {}
        for kv in resp.headers.get("X-Coffeechat-Timing", "").split(";"):
            if "=" in kv:
                k, v = kv.split("=", 1)
                marks[k] = float(v) / 1e6  # whole microseconds
        resp.release()
        s.wake["send answered"].append(t_sent - t0)
        for k in ("poked", "read", "woken", "resumed", "built", "ready"):
            if k in marks:
                s.wake[k].append(marks[k] - t0)
        s.wake["client has it"].append(t_recv - t0)
    await asyncio.sleep(0.5)
    s.wake_stmts = statements(log_path.read_text(errors="replace")[log_start:], s.db)


def report(s: Subject, n: int) -> None:
    print(f"\n== {s.label} ({s.server.version})")
    print(f"  server CPU per send, median round: {statistics.median(s.cpu):.3f} ms "
          f"(rounds: {', '.join(f'{x:.2f}' for x in s.cpu)})")
    print(f"  PG backends CPU per send:           {statistics.median(s.db_cpu):.3f} ms "
          f"(rounds: {', '.join(f'{x:.2f}' for x in s.db_cpu)})")
    rounds = int(s.stmts[-1].split("=")[1]) if s.stmts else n
    body = s.stmts[:-1]
    if body:
        print(f"  statements per send: {len(body) / rounds:.2f}, transactions committed per send: {s.commits:.2f}")
    groups = collections.Counter(
        t if not t.startswith("WITH d AS (DELETE FROM stream_inflight") else t[:45] for t in body
    )
    for text, k in groups.most_common(8):  # nothing without the statement log
        print(f"    {k / rounds:5.2f}  {text}")
    print(f"  send latency p50 {1000 * pct(s.lat, 0.5):.2f} ms, p95 {1000 * pct(s.lat, 0.95):.2f} ms; "
          f"sends/s median round {statistics.median(s.rates):.0f} "
          f"(rounds: {', '.join(f'{x:.0f}' for x in s.rates)}) (load-dependent)")
    if s.many_cpu:
        print(f"  {len(s.many)} clients each in its own room: server CPU per send "
              f"{statistics.median(s.many_cpu):.3f} ms (rounds: {', '.join(f'{x:.2f}' for x in s.many_cpu)}), "
              f"PG backends {statistics.median(s.many_db_cpu):.3f} ms, "
              f"statements {statistics.median(s.many_stmts):.2f}, commits {statistics.median(s.many_commits):.2f}; "
              f"sends/s median round {statistics.median(s.many_rates):.0f} "
              f"(rounds: {', '.join(f'{x:.0f}' for x in s.many_rates)}) (load-dependent)")
    if s.wake:
        wakes = len(s.wake["client has it"])
        if s.wake_stmts:
            print(f"  send + the long-poll /sync it wakes: {len(s.wake_stmts) / wakes:.2f} statements")
        groups = collections.Counter(
            t if not t.startswith("WITH d AS (DELETE FROM stream_inflight") else t[:45] for t in s.wake_stmts
        )
        for text, k in groups.most_common(int(os.environ.get("BENCH_TOP_STATEMENTS", "8"))):
            print(f"    {k / wakes:5.2f}  {text}")
        print("  send -> the other member's long-poll, ms after the send started (p50 / p95):")
        for k, xs in sorted(s.wake.items(), key=lambda kv: statistics.median(kv[1])):
            print(f"    {k:15s} {1000 * statistics.median(xs):7.2f} / {1000 * pct(xs, 0.95):7.2f}")


async def run(args: argparse.Namespace) -> int:
    pg = Postgres(WORK)
    subjects: list[Subject] = []
    try:
        pg.start()
        await pg.configure(fsync=True, statement_log_prefix=True)
        roots = [("this", PROJECT_ROOT)] + ([("baseline", Path(args.baseline))] if args.baseline else [])
        for label, root in roots:
            db = f"send_{label}"
            url = await pg.create_database(db, isolation="serializable")
            if not args.no_statement_log:
                await pg.log_all_statements(db)
            env = {"COFFEECHAT_METRICS_SYNC_TIMING": "true"}
            if args.cprofile and label == "this":
                env["BENCH_CPROFILE_DIR"] = str(WORK / "cprofile")
                (WORK / "cprofile").mkdir(parents=True, exist_ok=True)
            server = start_ours(WORK / label, url, env, pool=args.pool, root=root)
            subjects.append(Subject(label, db, server))
        async with aiohttp.ClientSession() as session:
            for s in subjects:
                s.server.wait_ready(120)
                c = s.client = Client(session, s.server.base_url)
                stamp = int(time.time())
                s.sender = await c.register(f"sender{stamp}")
                s.watcher = await c.register(f"watcher{stamp}")
                s.room = await c.create_room(s.sender, name="send path")
                await c.join(s.watcher, s.room)
                for i in range(50):  # first-use costs out of the way
                    await c.send_text(s.sender, s.room, f"warm {i}")
                for k in range(args.clients):
                    user = await c.register(f"many{k}x{stamp}")
                    s.many.append((user, await c.create_room(user, name=f"own room {k}")))
            await asyncio.sleep(1.0)
            for r in range(args.rounds):
                order = subjects if r % 2 == 0 else subjects[::-1]
                for s in order:
                    first = r == 0 and s.label == "this"
                    await send_round(s, pg, args.n, args.pyspy and first, args.cprofile and first)
                    if args.clients:
                        await many_round(s, pg, max(1, args.n // args.clients))
            for s in subjects:
                if args.wakes:
                    await wake_round(s, pg, session, args.wakes)
        for s in subjects:
            report(s, args.n)
    finally:
        for s in subjects:
            s.server.stop()
        pg.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="sends per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--wakes", type=int, default=30)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--clients", type=int, default=20,
                   help="also, per round, this many senders each in its own room at once (0: not)")
    p.add_argument("--baseline", help="another checkout to run side by side (alternating rounds)")
    p.add_argument("--pyspy", action="store_true")
    p.add_argument("--no-statement-log", action="store_true",
                   help="leave log_statement off (it costs PostgreSQL CPU and time on every statement): "
                        "timings as in bench_rooms.py, no statement counts")
    p.add_argument("--cprofile", action="store_true", help="the server's cProfile of the first send round")
    args: Any = p.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
