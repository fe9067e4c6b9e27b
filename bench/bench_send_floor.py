"""The floor of a sequential send on this machine (issue #7): what one client
sending one message at a time gets from the smallest aiohttp + asyncpg
server that stores a message durably, next to ours, with the same client,
the same PostgreSQL (fsync on) and the same load.

    python bench/bench_send_floor.py [--n 400] [--rounds 3]

The minimal server (run as ``python bench/bench_send_floor.py --serve``)
answers the client-server send route: reads the bearer token and the JSON
body, then one INSERT committed with fsync (one round trip: an autocommit
statement), or with ``--round-trips 3`` BEGIN, INSERT, COMMIT (three, as a
send of ours has: reservation + BEGIN, the write, release + COMMIT), and
answers ``{"event_id": ...}``. No auth, signing, hashing, stream positions.

Prints per message, median round: client CPU, server CPU, PostgreSQL
backend CPU (all from /proc), and the wall-clock rate (meaningful only on a
quiet machine). The sum of the three CPU figures is what a sequential send
costs the machine; on 2 cores one client cannot overlap them much, so
1000 / (sum + commit wait) ms is about the best sequential rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_client import Client, User  # noqa: E402
from servers import Postgres, ServerProcess, cpu_seconds_of, free_port, start_ours  # noqa: E402

WORK = Path(__file__).resolve().parent / ".work"


def serve(port: int, url: str, round_trips: int) -> None:
    import asyncpg
    import orjson
    import uvloop
    from aiohttp import web

    async def main() -> None:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS floor_events (event_id TEXT PRIMARY KEY, room_id TEXT, body TEXT)")

        async def send(request: web.Request) -> web.Response:
            if not request.headers.get("Authorization", "").startswith("Bearer "):
                return web.json_response({"errcode": "M_MISSING_TOKEN", "error": "no token"}, status=401)
            body = orjson.loads(await request.read())
            event_id = "$" + secrets.token_urlsafe(32)
            args = (event_id, request.match_info["room"], orjson.dumps(body).decode())
            insert = "INSERT INTO floor_events (event_id, room_id, body) VALUES ($1, $2, $3)"
            async with pool.acquire() as conn:
                if round_trips == 1:
                    await conn.execute(insert, *args)
                else:
                    await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    await conn.execute(insert, *args)
                    await conn.execute("COMMIT")
            return web.Response(body=orjson.dumps({"event_id": event_id}), content_type="application/json")

        app = web.Application()
        app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", send)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def start_minimal(url: str, round_trips: int) -> ServerProcess:
    port = free_port()
    s = ServerProcess(f"minimal ({round_trips} round trip{'s' if round_trips > 1 else ''})",
                      f"http://127.0.0.1:{port}", "minimal")
    s.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), url, str(round_trips)])
    s.version = "bench/bench_send_floor.py"
    return s


async def floor_rates(client: Client, n_seq: int, n_conc: int, secs: float, clients: int) -> dict[str, float]:
    """Sends/s the minimal server answers to ``client``: one sender one
    message at a time (``n_seq`` messages or ``secs``), then ``clients``
    senders at once, each into a room of its own (``n_conc`` in all, or
    ``secs``): what the machine allows at the moment, for bench_rooms.py's
    send phases."""
    user = User("@floor:minimal", "token", "D")
    out: dict[str, float] = {}
    for name, senders, n in (("send_1", 1, n_seq), (f"send_{clients}x{clients}", clients, n_conc)):
        per = max(1, n // senders)
        deadline = time.perf_counter() + secs
        sent = 0

        async def one(room: str, per: int, deadline: float) -> None:
            nonlocal sent
            for i in range(per):
                if time.perf_counter() > deadline:
                    return
                await client.send_text(user, room, f"message {i}: the quick brown fox")
                sent += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(f"!floor{k}:minimal", per, deadline) for k in range(senders)))
        out[name] = sent / (time.perf_counter() - t0)
    return out


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(args: argparse.Namespace) -> int:
    pg = Postgres(WORK)
    servers: list[tuple[ServerProcess, str]] = []
    try:
        pg.start()
        await pg.configure(fsync=True)
        for label in ("ours", "min1", "min3"):
            url = await pg.create_database(f"floor_{label}", isolation="serializable")
            if label == "ours":
                servers.append((start_ours(WORK / "floor-ours", url), f"floor_{label}"))
            else:
                servers.append((start_minimal(url, 1 if label == "min1" else 3), f"floor_{label}"))
        print(f"commit latency (one INSERT, fsync): {1000 * await pg.commit_latency():.2f} ms")
        results: dict[str, dict[str, list[float]]] = {}
        async with aiohttp.ClientSession() as session:
            users: list[tuple[Client, User, str]] = []
            for s, _ in servers:
                s.wait_ready(120) if s.server_name != "minimal" else await wait_port(s)
                c = Client(session, s.base_url)
                if s.server_name == "minimal":
                    user, room = User("@floor:minimal", "token", "D"), "!room:minimal"
                else:
                    user = await c.register(f"floor{int(time.time())}")
                    room = await c.create_room(user, name="floor")
                for i in range(50):
                    await c.send_text(user, room, f"warm {i}")
                users.append((c, user, room))
            for r in range(args.rounds):
                for (s, db), (c, user, room) in (zip(servers, users) if r % 2 == 0
                                                 else reversed(list(zip(servers, users)))):
                    backends = await pg.backend_pids(db)
                    d0, s0, c0 = sum(cpu_seconds_of(backends).values()), s.cpu_seconds(), own_cpu()
                    t0 = time.perf_counter()
                    for i in range(args.n):
                        await c.send_text(user, room, f"message {i}: the quick brown fox")
                    wall = time.perf_counter() - t0
                    d1, s1, c1 = sum(cpu_seconds_of(backends).values()), s.cpu_seconds(), own_cpu()
                    row = results.setdefault(s.label, {"client": [], "server": [], "db": [], "rate": []})
                    row["client"].append(1000 * (c1 - c0) / args.n)
                    row["server"].append(1000 * (s1 - s0) / args.n)
                    row["db"].append(1000 * (d1 - d0) / args.n)
                    row["rate"].append(args.n / wall)
        print(f"{'':28s} {'client':>8s} {'server':>8s} {'PG':>8s} {'sum':>8s}  ms CPU per message; msg/s (load-dependent)")
        for label, row in results.items():
            med = {k: statistics.median(v) for k, v in row.items()}
            total = med["client"] + med["server"] + med["db"]
            print(f"{label:28s} {med['client']:8.3f} {med['server']:8.3f} {med['db']:8.3f} {total:8.3f}  "
                  f"{med['rate']:7.1f}/s (rounds: {', '.join(f'{x:.0f}' for x in row['rate'])})")
        # the machine's speed moves from minute to minute: each round's rate
        # against the minimal server's in the same round (they run back to back)
        ours = results.get(servers[0][0].label, {}).get("rate", [])
        floor = results.get("minimal (1 round trip)", {}).get("rate", [])
        if ours and floor:
            shares = [a / b for a, b in zip(ours, floor) if b]
            print(f"{servers[0][0].label} / minimal (1 round trip), per round: "
                  f"median {100 * statistics.median(shares):.0f} % (rounds: "
                  f"{', '.join(f'{100 * x:.0f} %' for x in shares)})")
    finally:
        for s, _ in servers:
            s.stop()
        pg.stop()
    return 0


async def wait_port(s: ServerProcess) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.put(s.base_url + "/_matrix/client/v3/rooms/x/send/t/1", json={},
                                       headers={"Authorization": "Bearer t"}) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{s.label} did not start")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="sends per round")
    p.add_argument("--rounds", type=int, default=3)
    args: Any = p.parse_args()
    return asyncio.run(run(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
