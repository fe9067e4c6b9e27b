"""To-device messages across two coffeechat-home servers, measured:

    python bench/bench_to_device_federation.py [--messages 50]

Starts one PostgreSQL (as bench_rooms.py does, fsync on) and two federating
``coffeechat-home serve`` processes on loopback (TLS, as the federation tests
do), a user on each, and sends ``--messages`` to-device messages one at a
time from A's user to B's user, each waited for in B's long-polling /sync.
Prints the latency from the ``PUT /sendToDevice`` to its arrival in the
recipient's sync (p50 / p90 / max), and the CPU time of each server process
per message (user + system, from psutil), which survives a loaded machine
better than the latency does. The path: the message is queued in A's EDU
outbox with the send's transaction, A's sender (woken at once) PUTs a
``/send`` transaction with one ``m.direct_to_device`` EDU to B, B stores it
for the device and wakes the sync.

Every loop is bounded in count and time; everything started is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fed_pair import cpu_s, federating_pair, latency_summary  # noqa: E402
from tests.integration.processes import User  # noqa: E402


async def run(messages: int) -> None:
    async with federating_pair("todev") as (a, b):
        servers = [a, b]
        async with aiohttp.ClientSession() as http:
            alice = await User(http, a.client_url).register("alice")
            bob = await User(http, b.client_url).register("bob")
            status, devices = await bob.call("GET", "devices")
            assert status == 200, devices
            device = devices["devices"][0]["device_id"]
            since = (await bob.sync())["next_batch"]
            # one warm-up message (key fetches, connections), not counted
            latencies: list[float] = []
            cpu_before = {s.server_name: 0.0 for s in servers}
            for i in range(messages + 1):
                if i == 1:
                    cpu_before = {s.server_name: cpu_s(s.process.pid) for s in servers}
                started = time.monotonic()
                status, body = await alice.call("PUT", f"sendToDevice/m.bench/t{i}",
                                                {"messages": {bob.user_id: {device: {"i": i}}}})
                assert status == 200, body
                end = started + 60
                arrived = False
                while not arrived and time.monotonic() < end:
                    got = await bob.sync(since, timeout_ms=30_000)
                    since = got["next_batch"]
                    arrived = any(e["content"].get("i") == i for e in got.get("to_device", {}).get("events", []))
                if not arrived:
                    raise SystemExit(f"message {i} never arrived")
                if i > 0:
                    latencies.append((time.monotonic() - started) * 1000)
            cpu = {s.server_name: (cpu_s(s.process.pid) - cpu_before[s.server_name]) / messages * 1000
                   for s in servers}
        print(f"to-device A -> B, {messages} messages one at a time")
        print(latency_summary("send -> recipient's sync", latencies))
        print(f"  CPU per message: sending server {cpu[a.server_name]:.1f} ms, "
              f"receiving server {cpu[b.server_name]:.1f} ms (incl. the recipient's syncs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(max(1, min(args.messages, 1000))))


if __name__ == "__main__":
    main()
