"""A send after a pause costs more than a send in a tight loop (issue #7):
what this machine charges for waking idle processes, ours and the floor's.

    python bench/bench_cold_send.py [--n 100] [--rounds 2] [--gaps 0,10,100]

One PostgreSQL (fsync on), our server and bench_send_floor.py's minimal
server (token check, JSON, one INSERT committed: one round trip, no Matrix),
each on a database of its own. One client sends one message at a time into
one room, first back to back, then with a pause of each ``--gaps`` ms
before every send; the table shows the send latency's median per gap and
server, each round. bench_rooms.py's long-poll phase pauses 80 ms before
each probe, so its sends are cold ones: on a VM whose idle vCPUs halt,
every process a request passes through (client, server, PostgreSQL) has to
be woken, and the floor's cold send alone is a large share of the 5 ms
target for send -> another user's long-poll.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_send_floor import start_minimal, wait_port  # noqa: E402
from matrix_client import Client, User  # noqa: E402
from servers import Postgres, start_ours  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work" / "cold-send"


async def median_send_ms(c: Client, user: User, room: str, n: int, gap_s: float) -> float:
    took = []
    for i in range(n):
        if gap_s:
            await asyncio.sleep(gap_s)
        t0 = time.perf_counter()
        await c.send_text(user, room, f"message {i}: the quick brown fox")
        took.append(1000 * (time.perf_counter() - t0))
    return statistics.median(took)


async def run(args: argparse.Namespace) -> None:
    gaps = [int(g) for g in args.gaps.split(",")]
    pg = Postgres(WORK)
    pg.start()
    ours = floor = None
    try:
        settings = await pg.configure(True)
        print(f"PostgreSQL {settings.get('server_version', '')}, fsync on; "
              f"one-row commit {1000 * await pg.commit_latency():.2f} ms")
        ours = start_ours(WORK / "ours", await pg.create_database("ours", "serializable"))
        floor = start_minimal(await pg.create_database("floor"), 1)
        ours.wait_ready(60)
        await wait_port(floor)
        async with aiohttp.ClientSession() as session:
            c = Client(session, ours.base_url)
            user = await c.register("cold")
            room = await c.create_room(user)
            fc = Client(session, floor.base_url)
            fuser, froom = User("@floor:minimal", "token", "D"), "!floor0:minimal"
            await median_send_ms(c, user, room, 50, 0)  # warm-up, both
            await median_send_ms(fc, fuser, froom, 50, 0)
            print(f"{'round':>5} {'pause ms':>8} {'ours p50 ms':>12} {'floor p50 ms':>13}")
            for r in range(args.rounds):
                for gap in gaps:
                    n = args.n if gap < 50 else max(10, args.n // 3)  # bounded: ~n/3 x 100 ms
                    o = await median_send_ms(c, user, room, n, gap / 1000)
                    f = await median_send_ms(fc, fuser, froom, n, gap / 1000)
                    print(f"{r:>5} {gap:>8} {o:>12.2f} {f:>13.2f}", flush=True)
    finally:
        for s in (ours, floor):
            if s is not None:
                s.stop()
        pg.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="sends per point (a third of it for pauses >= 50 ms)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--gaps", default="0,10,100", help="pauses before each send, ms, comma-separated")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
