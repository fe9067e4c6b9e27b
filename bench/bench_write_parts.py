"""Database CPU per part of a local send's write, measured on the
PostgreSQL backend itself (/proc/<pid>/schedstat: nanoseconds on CPU, which
survives a loaded machine better than wall time):

    python bench/bench_write_parts.py [--n 400] [--rounds 4] [--plans generic|auto] [--fsync on|off]

One PostgreSQL in bench/.work, our migrations, one room, a connection of
the write pool (the sessions the server's writes use). Each send is the
send path's two statements as the server runs them: the stream reservation
(``RESERVE_SQL``, committed alone) and the one-statement write
(``insert_events`` on a ``SingleStatement``: the event, its edges, its
transaction id, the room's head, the position, the reservation's deletion,
committed as it ends). ``--plans auto`` sets PostgreSQL's default plan
choice on that connection instead of the pool's generic plans, to show
what planning each execution costs. No HTTP and no server process: for the
server's own CPU see bench_send_path.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import cpu_s  # noqa: E402
from servers import Postgres  # noqa: E402

from coffeechat_home.protocol.builder import build_event  # noqa: E402
from coffeechat_home.protocol.room_versions import get_room_version  # noqa: E402
from coffeechat_home.protocol.signing import generate_signing_key  # noqa: E402
from coffeechat_home.storage.database import Database  # noqa: E402
from coffeechat_home.storage.event_writes import StoredEvent, insert_events  # noqa: E402
from coffeechat_home.storage.migrations import run_migrations  # noqa: E402
from coffeechat_home.storage.stream import RESERVE_SQL, SingleStatement  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"
PARTS = ("reservation (committed alone)", "the write (one statement, commits)")


async def run(args: argparse.Namespace) -> int:
    pg = Postgres(WORK)
    db = None
    try:
        pg.start()
        await pg.configure(fsync=args.fsync == "on")
        url = await pg.create_database("parts", isolation="serializable")
        db = await Database.connect(url, min_size=1, max_size=1)
        await run_migrations(db)
        rv = get_room_version("10")
        key = generate_signing_key("bench")
        await db.execute(
            """INSERT INTO rooms (room_id, room_version, creator, created_ts, forward_extremities)
               VALUES ('!r:bench', '10', '@u:bench', 0, ARRAY['$start'])"""
        )
        extremities = ["$start"]
        per_round: dict[str, list[float]] = {p: [] for p in PARTS}
        async with db.pool.acquire() as conn:
            if args.plans == "auto":
                await conn.execute("SET plan_cache_mode = auto")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            n = 0
            for _ in range(args.rounds):
                acc = [0.0] * len(PARTS)
                for _ in range(args.n):
                    n += 1
                    content = {"msgtype": "m.text", "body": f"message {n}"}
                    ev = build_event(
                        rv, template={"type": "m.room.message", "sender": "@u:bench", "room_id": "!r:bench",
                                      "content": content},
                        prev_events=extremities, auth_events=["$create", "$power", "$member"], depth=n,
                        origin_server_ts=n, server_name="bench", signing_key=key,
                    )
                    token = secrets.token_hex(12)
                    items = [StoredEvent(ev, 1, json.dumps(ev.pdu), json.dumps(content), 1, 1,
                                         txn=("@u:bench", "D", f"t{n}", "send"))]
                    marks = [cpu_s(pid)]
                    await conn.execute(RESERVE_SQL, token, "bench")
                    marks.append(cpu_s(pid))
                    await insert_events(SingleStatement(conn, token), "!r:bench", items,
                                        expected_extremities=extremities, new_extremities=[ev.event_id],
                                        allocate=1)
                    marks.append(cpu_s(pid))
                    for k in range(len(PARTS)):
                        acc[k] += marks[k + 1] - marks[k]
                    extremities = [ev.event_id]
                for k, part in enumerate(PARTS):
                    per_round[part].append(1e6 * acc[k] / args.n)
        print(f"PostgreSQL backend CPU per send (plans {args.plans}, fsync {args.fsync}), "
              f"median of {args.rounds} rounds of {args.n}:")
        for part, xs in per_round.items():
            print(f"  {part:36s} {statistics.median(xs):6.0f} us   (rounds: {', '.join(f'{x:.0f}' for x in xs)})")
        total = [sum(per_round[p][r] for p in PARTS) for r in range(args.rounds)]
        print(f"  {'total':36s} {statistics.median(total):6.0f} us")
    finally:
        if db is not None:
            await db.close()
        pg.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--plans", choices=("generic", "auto"), default="generic")
    p.add_argument("--fsync", choices=("on", "off"), default="on")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
