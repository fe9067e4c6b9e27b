"""Receiving PDUs over federation: CPU and SQL statements per PDU on the
receiving server (issue #9), without Synapse.

    python bench/bench_receive.py [--k 300] [--origin ours|bench] [--txn 50] [--watch db|sync]
                                  [--statements] [--pyspy]

Starts one PostgreSQL (bench/.work/recv/) and our receiving server ``R``
federating on loopback (as bench_federation.py starts it), and an origin:

- ``--origin ours`` (default): a second of our servers, ``A``. A public room
  on A with 10 senders and one user of R joined over federation; then a
  burst of K messages from the 10 senders (each one at a time, all at
  once), which A's federation sender pushes to R in transactions of
  whatever it has queued (so PDUs per transaction vary with the machine's
  load: it is printed).
- ``--origin bench``: this process is the origin server (its own signing
  key and key server over TLS, as tests/federation/receive_helpers.py's
  ``Origin``). A public room of R's user that 10 users of the origin join
  through ``/send``; then K messages from them, one chain, built and signed
  up front (untimed) and sent in transactions of exactly ``--txn`` PDUs,
  one transaction at a time: the same work for R in every run.

The burst ends when R has stored all K, seen either in R's database
(``--watch db``, the default: only receiving costs R CPU) or by R's user
long-polling ``/sync`` (``--watch sync``, as bench_federation.py's inbound
phase; ``--origin ours`` only).

Printed: R's CPU (utime + stime of its process) per PDU, R's PostgreSQL
backends' CPU per PDU, the transactions R received and PDUs per
transaction, and with ``--statements`` (``log_statement = 'all'`` on R's
database) R's SQL statements per PDU grouped by text. ``--pyspy`` records
R's stacks (GIL holder) during the burst into bench/.work/recv/pyspy-recv.txt
(``python bench/pyspy_summary.py`` reads it). Wall times are printed but mean
little on a shared machine; CPU and statement counts are the figures.

Every process started is stopped by its PID at the end (also on error or
Ctrl-C); every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import re
import ssl
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # this checkout's coffeechat_home (the origin's protocol code)

from common import PySpy, log  # noqa: E402
from matrix_client import Client, User, q  # noqa: E402
from servers import Postgres, ServerProcess, cpu_seconds_of, start_ours_federating  # noqa: E402

WORK = HERE / ".work" / "recv"
SENDERS = 10
STMT = re.compile(r"db=(\S+) LOG:  (?:statement|execute [^:]*): (.*)")



async def wait_for(pred: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(interval)
    raise RuntimeError(f"gave up waiting for {what}")


async def settle(servers: list[ServerProcess], max_s: float = 20.0, idle_share: float = 0.05) -> None:
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        a = sum(s.cpu_seconds() for s in servers)
        await asyncio.sleep(1.0)
        if sum(s.cpu_seconds() for s in servers) - a < idle_share * len(servers):
            return


def statements(log_text: str, db: str) -> list[str]:
    out = []
    for line in log_text.splitlines():
        m = STMT.search(line)
        if m and m.group(1) == db:
            out.append(re.sub(r"\s+", " ", m.group(2)).strip()[:100])
    return out


# --------------------------------------------------------------------------- the origins


class OursOrigin:
    """A second of our servers, A, sending through its federation sender."""

    def __init__(self, pg: Postgres, http: aiohttp.ClientSession) -> None:
        self.pg = pg
        self.http = http
        self.server: ServerProcess | None = None
        self.senders: list[User] = []

    async def start(self) -> list[ServerProcess]:
        url = await self.pg.create_database("a")
        self.server = start_ours_federating(WORK / "A", url, {"COFFEECHAT_LOG_LEVEL": "WARNING"}, label="A")
        return [self.server]

    async def room(self, rc: Client, guest: User, warm: int) -> str:
        assert self.server is not None
        ac = Client(self.http, self.server.base_url)
        self.client = ac
        self.senders = [await ac.register(f"sender{i}") for i in range(SENDERS)]
        room_id = await ac.create_room(self.senders[0], preset="public_chat")
        for u in self.senders[1:]:
            await ac.join(u, room_id)
        await rc.call("POST", f"/join/{q(room_id)}", guest, {}, params={"server_name": self.server.server_name},
                      timeout=120)
        for i in range(warm):
            await ac.send_text(self.senders[i % SENDERS], room_id, f"warm {i}")
        self.room_id = room_id
        return room_id

    async def prepare(self, k: int) -> None:
        pass

    async def burst(self, k: int) -> None:
        async def one(idx: int) -> None:
            for i in range(idx, k, SENDERS):
                await self.client.send_text(self.senders[idx], self.room_id, f"burst {i}")

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(SENDERS))), 300)

    async def stop(self) -> None:
        pass


class BenchOrigin:
    """This process as the origin server: signing key, key server over TLS,
    events built and signed here, sent in transactions of ``txn`` PDUs."""

    def __init__(self, r: ServerProcess, rdb: asyncpg.Connection, txn: int) -> None:
        from coffeechat_home.federation.client import FederationClient
        from coffeechat_home.protocol.signing import generate_signing_key
        from coffeechat_home.services.server_keys import LocalKeys
        from servers import free_port

        self.r = r
        self.rdb = rdb
        self.txn = txn
        self.port = free_port()
        self.name = f"localhost:{self.port}"
        self.key = generate_signing_key("b1")
        self.local = LocalKeys(self.name, self.key)
        self.client = FederationClient(self.name, self.key, allow_private_addresses=["127.0.0.0/8"],
                                       verify_certificates=False)
        self.runner: Any = None
        self.ts = int(time.time() * 1000)
        self.txn_ids = itertools.count()
        self.users = [f"@remote{i}:{self.name}" for i in range(SENDERS)]
        self.head: tuple[str, int] = ("", 0)
        self.state: dict[Any, str] = {}
        self.version = "10"
        self.room_id = ""
        self.ready: list[dict[str, Any]] = []

    async def start(self) -> list[ServerProcess]:
        from aiohttp import web

        from coffeechat_home.api.federation.keys import KeyRoutes
        from coffeechat_home.api.http import json_response

        sys.path.insert(0, str(HERE.parent / "tests" / "federation"))
        from certs import make_certificate

        cert, key = make_certificate(WORK / "origin-tls")
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(cert), str(key))
        app = web.Application()
        KeyRoutes(self.local, None).register_routes(app.router)  # type: ignore[arg-type]

        async def on_send(request: web.Request) -> web.StreamResponse:
            return json_response({"pdus": {}})

        app.router.add_put("/_matrix/federation/v1/send/{txn_id}", on_send)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=tls).start()
        return []

    async def _room_state(self) -> None:
        rows = await self.rdb.fetch("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1",
                                    self.room_id)
        self.state = {(r["type"], r["state_key"]): r["event_id"] for r in rows}
        row = await self.rdb.fetchrow(
            """SELECT e.event_id, e.depth FROM events e JOIN rooms r ON e.event_id = ANY(r.forward_extremities)
               WHERE r.room_id = $1""", self.room_id)
        self.head = (row["event_id"], row["depth"])

    def _build(self, sender: str, template: dict[str, Any]) -> dict[str, Any]:
        from coffeechat_home.protocol.builder import build_event, select_auth_event_ids
        from coffeechat_home.protocol.room_versions import get_room_version

        rv = get_room_version(self.version)
        tpl = {"room_id": self.room_id, "sender": sender, **template}
        self.ts += 1
        ev = build_event(rv, template=tpl, prev_events=[self.head[0]],
                         auth_events=select_auth_event_ids(rv, tpl, self.state), depth=self.head[1] + 1,
                         origin_server_ts=self.ts, server_name=self.name, signing_key=self.key)
        self.head = (ev.event_id, ev.depth)
        if ev.is_state:
            self.state[ev.state_tuple] = ev.event_id
        return dict(ev.pdu)

    async def _send(self, pdus: list[dict[str, Any]]) -> None:
        answer = await self.client.put_json(self.r.server_name, f"/_matrix/federation/v1/send/t{next(self.txn_ids)}",
                                            {"origin": self.name, "origin_server_ts": self.ts, "pdus": pdus,
                                             "edus": []})
        errors = {k: v for k, v in answer.get("pdus", {}).items() if v}
        if errors:
            raise RuntimeError(f"R refused PDUs: {list(errors.items())[:3]}")

    async def room(self, rc: Client, guest: User, warm: int) -> str:
        body = await rc.call("POST", "/createRoom", guest, {"preset": "public_chat", "room_version": self.version})
        self.room_id = body["room_id"]
        await self._room_state()
        for u in self.users:
            await self._send([self._build(u, {"type": "m.room.member", "state_key": u,
                                              "content": {"membership": "join"}})])
        for i in range(warm):
            await self._send([self._msg(i, "warm")])
        return self.room_id

    def _msg(self, i: int, tag: str) -> dict[str, Any]:
        return self._build(self.users[i % SENDERS], {"type": "m.room.message",
                                                     "content": {"msgtype": "m.text", "body": f"{tag} {i}"}})

    async def prepare(self, k: int) -> None:
        self.ready = [self._msg(i, "burst") for i in range(k)]

    async def burst(self, k: int) -> None:
        for i in range(0, k, self.txn):
            await self._send(self.ready[i:i + self.txn])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.client.close()


# --------------------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    pg = Postgres(WORK)
    servers: list[ServerProcess] = []
    pyspy: PySpy | None = None
    origin: OursOrigin | BenchOrigin | None = None
    try:
        pg.start()
        await pg.configure(fsync=True)
        r_url = await pg.create_database("r")
        if args.statements:  # for every connection R opens; counted over the burst only
            admin = await asyncpg.connect(pg.admin_url)
            await admin.execute("ALTER DATABASE r SET log_statement = 'all'")
            await admin.close()
        r = start_ours_federating(WORK / "R", r_url, {"COFFEECHAT_LOG_LEVEL": "WARNING"}, label="R")
        servers.append(r)
        rdb = await asyncpg.connect(r_url)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            origin = OursOrigin(pg, http) if args.origin == "ours" else BenchOrigin(r, rdb, args.txn)
            servers += await origin.start()
            for s in servers:
                s.wait_ready(120)
            rc = Client(http, r.base_url)
            guest = await rc.register("guest")
            warm = 20  # keys fetched, caches warm, the room's first transactions done
            room_id = await origin.room(rc, guest, warm)

            async def count() -> bool:
                n = await rdb.fetchval(
                    "SELECT count(*) FROM events WHERE room_id = $1 AND type = 'm.room.message'", room_id)
                return bool(n >= want)

            want = warm
            await wait_for(count, 60, "the warm-up messages on R")
            await origin.prepare(args.k)
            await settle(servers)
            since = (await rc.sync(guest))["next_batch"] if args.watch == "sync" else None
            log_path = Path(pg.server.log)
            log_start = log_path.stat().st_size if log_path.exists() else 0
            txns_before = int(await rdb.fetchval("SELECT count(*) FROM federation_inbound_txns"))
            db_before = cpu_seconds_of(await pg.backend_pids("r"))
            cpu_before = r.cpu_seconds()
            if args.pyspy:
                pyspy = PySpy(r.pid, WORK / "pyspy-recv.txt", attach_s=0.0, nonblocking=True).start()
            watcher = asyncio.create_task(watch_sync(rc, guest, room_id, since, args.k)) \
                if args.watch == "sync" else None
            t0 = time.perf_counter()
            await origin.burst(args.k)
            send_s = time.perf_counter() - t0
            want = warm + args.k
            if watcher is not None:
                await asyncio.wait_for(watcher, 300)
            else:
                await wait_for(count, 300, "the burst on R", interval=0.05)
            all_s = time.perf_counter() - t0
            cpu = r.cpu_seconds() - cpu_before
            db_after = cpu_seconds_of(await pg.backend_pids("r"))
            db_cpu = sum(v - db_before.get(pid, 0.0) for pid, v in db_after.items())
            if pyspy is not None:
                pyspy.stop()
                pyspy = None
            txns = int(await rdb.fetchval("SELECT count(*) FROM federation_inbound_txns")) - txns_before
            k = args.k
            log(f"R received {k} PDUs in {txns} transactions ({k / max(1, txns):.1f} PDUs each) from "
                f"{args.origin}; sends took {send_s:.1f} s, all on R after {all_s:.1f} s")
            print(f"R CPU per PDU: {1000 * cpu / k:.2f} ms (process), {1000 * db_cpu / k:.2f} ms "
                  f"(its PostgreSQL backends)")
            if args.statements:
                text = log_path.read_text(errors="replace")[log_start:]
                stmts = [s for s in statements(text, "r") if "count(*) FROM events" not in s]  # ours
                print(f"R SQL statements per PDU: {len(stmts) / k:.2f} ({len(stmts)} for {k}; "
                      f"{len(stmts) / max(1, txns):.1f} per transaction)")
                for st, n in collections.Counter(stmts).most_common(args.top):
                    print(f"  {n / k:6.2f}  {st}")
        await rdb.close()
    finally:
        if pyspy is not None:
            pyspy.stop()
        if origin is not None:
            await origin.stop()
        for s in servers:
            s.stop()
        pg.stop()
    return 0


async def watch_sync(c: Client, user: User, room_id: str, since: str | None, want: int) -> None:
    """Long-poll /sync until ``want`` messages of the room were seen."""
    seen = 0
    deadline = time.monotonic() + 300
    filt = '{"room":{"timeline":{"limit":1000},"state":{"lazy_load_members":true}}}'
    while seen < want and time.monotonic() < deadline:
        params = {"timeout": "10000", "filter": filt}
        if since:
            params["since"] = since
        r = await c.call("GET", "/sync", user, params=params, timeout=60)
        since = r["next_batch"]
        room = r.get("rooms", {}).get("join", {}).get(room_id, {})
        seen += sum(1 for e in room.get("timeline", {}).get("events", []) if e.get("type") == "m.room.message")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=300, help="messages in the burst (default %(default)s)")
    p.add_argument("--origin", choices=("ours", "bench"), default="ours")
    p.add_argument("--txn", type=int, default=50, help="--origin bench: PDUs per transaction (default %(default)s)")
    p.add_argument("--watch", choices=("db", "sync"), default="db")
    p.add_argument("--statements", action="store_true", help="count R's SQL statements (log_statement = all)")
    p.add_argument("--pyspy", action="store_true", help="record R's stacks (GIL holder) with py-spy during the burst")
    p.add_argument("--top", type=int, default=25)
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
