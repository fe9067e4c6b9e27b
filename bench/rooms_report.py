"""bench_rooms.py's report: the summary lines, the table of ours against
Synapse (medians over the repetitions) and the raw results as JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

import psutil

from servers import ServerProcess
from rooms_setup import IDLE_S, N_CLIENTS, WORK, Plan, Target, median_of_runs


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


def report(targets: list[Target], servers: list[ServerProcess], plan: Plan, meta: dict[str, Any],
           args: argparse.Namespace) -> None:
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
        phases = t.common.get("rss_by_phase") or {}
        if phases:
            print(f"{t.label}: RSS after each phase, MB (peak so far): "
                  + ", ".join(f"{k} {v[0]} ({v[1]})" for k, v in phases.items()))
    floors = meta.get("floor") or []
    if floors:
        # what the machine allows now: the same client against a server that
        # does no Matrix at all, so runs on a slower or busier day compare
        floor = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
        ours = by.get("ours", {})
        print("machine floor (bench/bench_send_floor.py's minimal aiohttp + asyncpg server: token check, JSON, one "
              "INSERT committed with fsync, no Matrix; same client, same PostgreSQL; median of each repetition's "
              "run): " + "; ".join(
                  f"{k.removeprefix('send_').replace('x', ' clients x ', 1) if 'x' in k else '1 client'} "
                  f"{v:.0f} msg/s (ours {fmt((ours.get(k) or {}).get('rate'), '')}, "
                  f"{100 * ((ours.get(k) or {}).get('rate') or 0) / v:.0f} % of it)"
                  for k, v in floor.items()))
    print()
    table = print_table(by, plan)
    out = WORK / f"results-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if plan.quick else ''}.json"
    out.write_text(json.dumps({"meta": meta, "results": by, "runs": {t.label: t.runs for t in targets},
                               "errors": {t.label: t.errors for t in targets}, "table": table},
                              indent=1, default=str))
    print(f"\nraw results: {out}")
