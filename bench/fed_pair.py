"""Two federating coffeechat-home servers on one PostgreSQL, for the small
federation benchmarks (to-device, typing and receipts).

``federating_pair(prefix)`` starts one PostgreSQL (fsync on, as bench_rooms.py
does) and two ``coffeechat-home serve`` processes on loopback (TLS, as the
federation tests do), yields them, and stops everything by PID afterwards.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import Postgres  # noqa: E402
from tests.federation.peers import FederatingServer  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def latency_summary(name: str, values: list[float]) -> str:
    """p50 / p90 (nearest rank) / max of latencies in ms, on one line."""
    values = sorted(values)
    p90 = values[min(len(values), math.ceil(len(values) * 0.9)) - 1]
    return f"  {name}: p50 {statistics.median(values):.0f} ms, p90 {p90:.0f} ms, max {values[-1]:.0f} ms"


@asynccontextmanager
async def federating_pair(prefix: str) -> AsyncIterator[tuple[FederatingServer, FederatingServer]]:
    pg = Postgres(WORK)
    pg.start()
    servers: list[FederatingServer] = []
    try:
        await pg.configure(fsync=True)
        for name in ("a", "b"):
            url = await pg.create_database(f"{prefix}_{name}", isolation="serializable")
            servers.append(await FederatingServer(url, WORK / f"{prefix}-{name}").start())
        yield servers[0], servers[1]
    finally:
        for s in servers:
            await s.stop()
        pg.stop()
