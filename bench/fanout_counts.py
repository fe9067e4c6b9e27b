"""bench_federation.py's fan-out phase alone (ours: A -> R1..R5, no Synapse),
with figures for the origin A that survive a loaded machine, counted over
the phase's CPU window only (the phase's own ``CpuMeter``, after its room is
built and the servers settled):

- A's SQL statements per PDU, grouped by text (``log_statement = all`` on
  A's database, set before A connects);
- the transactions R1..R5 received from A (``federation_inbound_txns``) and
  PDUs per transaction: A's sender batches what is queued, so this moves
  with the load, and the cost per PDU moves with it;
- with ``--cprofile``, A's Python function calls per PDU (cProfile started
  and stopped by signals, coffeechat_home/profiling.py).

Runs the checkout it is started from (its bench/ and coffeechat_home), so
an older commit is measured by running this file from its worktree:

    cd /path/to/worktree && python /path/to/this/bench/fanout_counts.py [--k 300] [--cprofile]

Every process started is stopped by its PID at the end (also on error); the
phase's loops are bench_federation's, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pstats
import re
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT / "bench"))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import fed_setup as fs  # noqa: E402
from fed_phases import phase_fanout  # noqa: E402
from matrix_client import Client  # noqa: E402
from servers import Postgres, start_ours_federating  # noqa: E402

STMT = re.compile(r"db=(\S+) LOG:  (?:statement|execute [^:]*): (.*)")
INBOUND = "SELECT count(*) FROM federation_inbound_txns WHERE origin = $1"


class Window:
    """What happens on A between the phase's CpuMeter.start() and stop()."""

    def __init__(self, pg: Postgres, a: fs.Node, rx_urls: list[str], cprofile: bool) -> None:
        self.pg = pg
        self.a = a
        self.rx_urls = rx_urls
        self.cprofile = cprofile
        self.log_path = Path(pg.server.log)
        self.log_start = 0
        self.log_end = 0
        self.txns_before = 0
        self.txns = 0

    async def inbound_txns(self) -> int:
        total = 0
        for url in self.rx_urls:
            conn = await asyncpg.connect(url)
            try:
                total += int(await conn.fetchval(INBOUND, self.a.server.server_name))
            finally:
                await conn.close()
        return total

    async def start(self) -> None:
        self.txns_before = await self.inbound_txns()
        if self.cprofile:
            os.kill(self.a.server.pid, signal.SIGUSR1)
        self.log_start = self.log_path.stat().st_size

    async def stop(self) -> None:
        self.log_end = self.log_path.stat().st_size
        if self.cprofile:
            os.kill(self.a.server.pid, signal.SIGUSR2)
        self.txns = await self.inbound_txns() - self.txns_before

    def statements(self) -> list[str]:
        with self.log_path.open("rb") as f:
            f.seek(self.log_start)
            text = f.read(self.log_end - self.log_start).decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = STMT.search(line)
            if m and m.group(1) == self.a.dbname:
                out.append(re.sub(r"'[0-9a-f]{24}'", "'T'", re.sub(r"\s+", " ", m.group(2)).strip())[:110])
        return out


async def main(args: argparse.Namespace) -> None:
    work = ROOT / "bench" / ".work" / "fanout-counts"
    work.mkdir(parents=True, exist_ok=True)
    prof_dir = work / "cprofile"
    for old in prof_dir.glob("cprofile-*.prof"):
        old.unlink()
    plan = fs.Plan.make(True)
    plan.fanout = args.k
    pg = Postgres(work)
    nodes: list[fs.Node] = []
    urls: dict[str, str] = {}
    try:
        pg.start()
        await pg.configure(fsync=True)
        for name in ("A", "R1", "R2", "R3", "R4", "R5"):
            db = name.lower()
            urls[db] = await pg.create_database(db)
            env = {"COFFEECHAT_LOG_LEVEL": "WARNING", "COFFEECHAT_LOG_FORMAT": "json"}
            if name == "A":
                admin = await asyncpg.connect(pg.admin_url)  # before A connects: for its new connections
                await admin.execute("ALTER DATABASE a SET log_statement = 'all'")
                await admin.close()
                if args.cprofile:
                    env["BENCH_CPROFILE_DIR"] = str(prof_dir)
            nodes.append(fs.Node(start_ours_federating(work / name, urls[db], env, pool=10, label=name), db, "ours"))
        for n in nodes:
            n.server.wait_ready(180)
        a, receivers = nodes[0], nodes[1:]
        window = Window(pg, a, [urls[r.dbname] for r in receivers], args.cprofile)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                         connector=aiohttp.TCPConnector(limit=200)) as http:
            for n in nodes:
                n.client = Client(http, n.server.base_url)
            a.users = await fs.register_users(a, "sender", fs.SENDERS, plan)
            warm = fs.Plan.make(True)  # keys fetched, connections made, destinations known
            warm.fanout = 20
            a.kind = "warm"
            await phase_fanout(warm, pg, a, receivers)
            a.kind = "ours"

            meter_start, meter_stop = fs.CpuMeter.start, fs.CpuMeter.stop

            async def start(self: Any) -> None:
                await window.start()
                await meter_start(self)

            async def stop(self: Any) -> Any:
                result = await meter_stop(self)
                await window.stop()
                return result

            fs.CpuMeter.start, fs.CpuMeter.stop = start, stop  # type: ignore[method-assign]
            try:
                res = await phase_fanout(plan, pg, a, receivers)
            finally:
                fs.CpuMeter.start, fs.CpuMeter.stop = meter_start, meter_stop  # type: ignore[method-assign]
        k = plan.fanout
        stmts = window.statements()
        print(f"A -> R1..R5: {k} PDUs, {window.txns} transactions ({k * len(receivers) / max(1, window.txns):.2f} "
              f"PDUs each), send {res['send_s']:.1f} s, all seen {res['all_seen_s'] or 0:.1f} s")
        print(f"A CPU per PDU {res['origin_cpu_ms_per_pdu']:.2f} ms, per PDU and destination "
              f"{res['origin_cpu_ms_per_pdu_dest']:.3f} ms, its PostgreSQL backends {res['origin_db_cpu_ms_per_pdu']:.2f}"
              f" ms per PDU; receivers {res['receivers_cpu_ms_per_pdu_each']:.2f} ms per PDU each")
        print(f"A statements per PDU: {len(stmts) / k:.2f}, per transaction sent {len(stmts) / max(1, window.txns):.2f}")
        for st, n in collections.Counter(stmts).most_common(args.top):
            print(f"  {n / k:7.3f}  {st}")
        if args.cprofile:
            files = sorted(prof_dir.glob("cprofile-*.prof"))
            for _ in range(50):  # A writes it on SIGUSR2: bounded wait
                if files:
                    break
                await asyncio.sleep(0.1)
                files = sorted(prof_dir.glob("cprofile-*.prof"))
            if files:
                st = pstats.Stats(str(files[-1]))
                calls = sum(v[1] for v in st.stats.values())  # type: ignore[attr-defined]
                print(f"A Python calls per PDU: {calls / k:.0f}, per transaction sent {calls / max(1, window.txns):.0f}")
                st.sort_stats("ncalls").print_stats(args.top)
    finally:
        for n in nodes:
            n.server.stop()
        pg.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=300, help="messages in the fan-out (default %(default)s)")
    p.add_argument("--cprofile", action="store_true", help="A's Python calls per PDU (cProfile)")
    p.add_argument("--top", type=int, default=25, help="statement texts and functions listed")
    asyncio.run(main(p.parse_args()))
