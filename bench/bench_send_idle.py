"""What idle costs a send on this machine (issue #7): the same sequential
send, back to back and after a pause of 5, 20 and 80 ms before each.

    python bench/bench_send_idle.py [--n 60]

bench_rooms.py's send -> long-poll phase sleeps 80 ms before each sample (so
that the long-poll is parked on the server), so every sample starts from an
idle machine. On a VM, each hop between client, server and PostgreSQL after
a pause wakes a halted vCPU (this guest: the ``haltpoll`` cpuidle driver); a
send pays that several times. This prints the send p50 per pause, twice, for
one server of ours on one PostgreSQL (fsync on): the code is the same in
every row, so the difference is the machine's.
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

from matrix_client import Client  # noqa: E402
from servers import Postgres, run_main, start_ours  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work" / "send-idle"
PAUSES_MS = (0, 5, 20, 80, 0, 80)


async def run(args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    pg = Postgres(WORK)
    server = None
    try:
        pg.start()
        await pg.configure(fsync=True)
        print(f"one-row fsync'ed commit: {1000 * await pg.commit_latency():.2f} ms")
        server = start_ours(WORK, await pg.create_database("idle", isolation="serializable"))
        server.wait_ready(120)
        async with aiohttp.ClientSession() as session:
            c = Client(session, server.base_url)
            user = await c.register(f"idle{int(time.time())}")
            room = await c.create_room(user, name="idle")
            for i in range(300):  # warm-up (the first hundreds run slower)
                await c.send_text(user, room, f"warm-up {i}")
            for pause in PAUSES_MS:
                took = []
                for i in range(args.n):
                    if pause:
                        await asyncio.sleep(pause / 1000)
                    t0 = time.perf_counter()
                    await c.send_text(user, room, f"message {i}")
                    took.append(time.perf_counter() - t0)
                print(f"{pause:3d} ms idle before each send: p50 {1000 * statistics.median(took):.2f} ms, "
                      f"p95 {1000 * sorted(took)[int(0.95 * len(took))]:.2f} ms")
    finally:
        if server is not None:
            server.stop()
        pg.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="sends per pause")
    return run_main(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
