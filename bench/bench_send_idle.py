"""What idle costs a send on this machine (issue #7): the same sequential
send, back to back and after a pause of 5, 20 and 80 ms before each.

    python bench/bench_send_idle.py [--n 60]

bench_rooms.py's send -> long-poll phase sleeps 80 ms before each sample (so
that the long-poll is parked on the server), so every sample starts from an
idle machine. On a VM, each hop between client, server and PostgreSQL after
a pause wakes a halted vCPU (this guest: the ``haltpoll`` cpuidle driver); a
send pays that several times. This prints the send p50 per pause, twice, for
one server of ours and for bench_send_floor.py's minimal server (token
check, JSON, one INSERT committed: one round trip, no Matrix), each on a
database of its own on one PostgreSQL (fsync on): the code is the same in
every row, so the difference is the machine's, and the floor shows what it
charges a send that does almost nothing.
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
from servers import Postgres, run_main, start_ours  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work" / "send-idle"
PAUSES_MS = (0, 5, 20, 80, 0, 80)


async def run(args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    pg = Postgres(WORK)
    server = floor = None
    try:
        pg.start()
        await pg.configure(fsync=True)
        print(f"one-row fsync'ed commit: {1000 * await pg.commit_latency():.2f} ms")
        server = start_ours(WORK, await pg.create_database("idle", isolation="serializable"))
        floor = start_minimal(await pg.create_database("floor"), 1)
        server.wait_ready(120)
        await wait_port(floor)
        async with aiohttp.ClientSession() as session:
            c = Client(session, server.base_url)
            user = await c.register(f"idle{int(time.time())}")
            room = await c.create_room(user, name="idle")
            fc = Client(session, floor.base_url)
            fuser, froom = User("@floor:minimal", "token", "D"), "!floor0:minimal"
            for i in range(300):  # warm-up (the first hundreds run slower)
                await c.send_text(user, room, f"warm-up {i}")
                await fc.send_text(fuser, froom, f"warm-up {i}")
            print("idle before each send: send p50 / p95, ms, ours | the floor's")
            for pause in PAUSES_MS:
                ours = await _sends(c, user, room, args.n, pause)
                theirs = await _sends(fc, fuser, froom, args.n, pause)
                print(f"{pause:3d} ms: {ours} | {theirs}", flush=True)
    finally:
        for s in (server, floor):
            if s is not None:
                s.stop()
        pg.stop()
    return 0


async def _sends(c: Client, user: User, room: str, n: int, pause_ms: int) -> str:
    took = []
    for i in range(n):
        if pause_ms:
            await asyncio.sleep(pause_ms / 1000)
        t0 = time.perf_counter()
        await c.send_text(user, room, f"message {i}")
        took.append(time.perf_counter() - t0)
    return f"{1000 * statistics.median(took):.2f} / {1000 * sorted(took)[int(0.95 * len(took))]:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="sends per pause")
    return run_main(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
