"""What the stream sequence costs per write, on PostgreSQL (issue 13).

    python bench/bench_nextval.py [--seconds 3] [--fsync on|off]

Every stream write calls ``nextval('stream_seq')`` twice: once for its
reservation's floor (a committed row), once for its position (inside the
write transaction). This measures, on a private PostgreSQL:

- ``SELECT nextval('stream_seq')`` alone: calls/s and time per call, from 1
  and 16 connections (the sequence's own ceiling);
- a minimal stream write (``StreamStore.write`` inserting one row): writes/s
  and time per write, from 1 and 16 concurrent writers;

and prints the share of a write's time the two nextval round trips take.
On CockroachDB each nextval is a write to one key of one range, shared by
the whole cluster: that range's write rate is the ceiling of the
homeserver's stream writes (halved, two calls per write). It cannot be
measured here; see README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coffeechat_home.storage.database import Database  # noqa: E402
from coffeechat_home.storage.migrations import run_migrations  # noqa: E402
from coffeechat_home.storage.stream import StreamStore  # noqa: E402
from servers import Postgres  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


async def rate(workers: int, seconds: float, op: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """(operations per second, mean seconds per operation per worker)."""
    done = [0] * workers
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            await op(n * 10_000_000 + i)
            i += 1
        done[n] = i

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(workers)))
    elapsed = time.perf_counter() - t0
    total = sum(done)
    return total / elapsed, elapsed * workers / max(total, 1)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--fsync", choices=("on", "off"), default="on")
    args = ap.parse_args()
    pg = Postgres(WORK)
    pg.start()
    try:
        settings = await pg.configure(args.fsync == "on")
        url = await pg.create_database("nextval_bench", isolation="serializable")
        db = await Database.connect(url, min_size=2, max_size=40)
        try:
            await run_migrations(db)
            print(f"PostgreSQL settings: {settings}")
            print(f"one-row commit on this disk: {await pg.commit_latency() * 1e6:.0f} us")
            conns = [await asyncpg.connect(url) for _ in range(16)]

            async def nextval(n: int) -> None:
                await conns[n // 10_000_000].fetchval("SELECT nextval('stream_seq')")

            store = StreamStore(db, instance_id="bench", max_concurrent_writes=16)
            ids = itertools.count()

            async def write(n: int) -> None:
                event_id = f"$e{next(ids)}"

                async def fn(conn: asyncpg.Connection, pos: int) -> None:
                    await conn.execute(
                        """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
                           VALUES ($1, '@u:b', '!r:b', '@u:b', 'join', $2)""",
                        event_id, pos,
                    )

                await store.write(fn)

            rows = []
            for name, op in (("nextval alone", nextval), ("stream write", write)):
                for workers in (1, 16):
                    await rate(workers, min(1.0, args.seconds / 3), op)  # warm up
                    per_s, per_op = await rate(workers, args.seconds, op)
                    rows.append((name, workers, per_s, per_op))
                    print(f"{name:14s} {workers:2d} concurrent: {per_s:9.0f}/s  {per_op * 1e6:8.0f} us each")
            nv = {w: p for n, w, _, p in rows if n == "nextval alone"}
            wr = {w: p for n, w, _, p in rows if n == "stream write"}
            for w in (1, 16):
                share = 2 * nv[w] / wr[w]
                print(f"two nextval round trips per write, {w:2d} concurrent: {2 * nv[w] * 1e6:.0f} us "
                      f"= {share:.0%} of a write")
            for c in conns:
                await c.close()
        finally:
            await db.close()
    finally:
        pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
