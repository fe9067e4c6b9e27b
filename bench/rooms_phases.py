"""bench_rooms.py's phases: sends (1 client, 20 clients in one room, 20
in their own rooms), send -> /sync latency, initial /sync and /messages;
each stores its figures in the target's results."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import psutil

from matrix_client import User
from servers import STATS_SETTLE_S, cpu_seconds_of
from rooms_setup import Plan, Target, pct


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


PHASES: list[tuple[str, Callable[[Target, Plan], Awaitable[None]]]] = [
    ("send", phase_send),
    ("sync_latency", phase_sync_latency),
    ("initial_sync", phase_initial_sync),
    ("messages", phase_messages),
]
