"""Typing notifications and read receipts across two coffeechat-home servers,
measured:

    python bench/bench_ephemeral_federation.py [--rounds 30]

Starts one PostgreSQL (as bench_rooms.py does, fsync on) and two federating
``coffeechat-home serve`` processes on loopback (TLS, as the federation tests
do); B's user joins a room of A's user through A and sends ``--rounds``
messages. Then, ``--rounds`` times, one at a time: A's user starts typing (waited for in B's user's long-polling
/sync), stops typing (waited for too), and sends a read receipt on the next of
B's messages (waited for). Prints the latency from the client request to its
arrival in the other user's sync (p50 / p90 / max per kind), and the CPU
time of each server process per EDU (user + system), which survives a
loaded machine better than the latency does. The path: the EDU is queued in
A's outbox (a receipt in the receipt's own transaction), A's sender, woken
at once, PUTs a ``/send`` transaction to B, B stores the typing or receipt
and wakes the sync.

Every loop is bounded in count and time; everything started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fed_pair import cpu_s, federating_pair, latency_summary  # noqa: E402
from tests.federation.ephemeral_checks import read_by, room_ephemeral, typing_now  # noqa: E402
from tests.integration.processes import User  # noqa: E402


async def timed(request: Any, watcher: User, since: str, room_id: str,
                arrived: Callable[[list[dict[str, Any]]], bool]) -> tuple[str, float]:
    """Run ``request`` and long-poll ``watcher``'s /sync until ``arrived``."""
    started = time.monotonic()
    status, body = await request
    assert status == 200, body
    seen: list[dict[str, Any]] = []
    end = started + 60
    while time.monotonic() < end:
        got = await watcher.sync(since, timeout_ms=30_000)
        since = got["next_batch"]
        seen += room_ephemeral(got, room_id)
        if arrived(seen):
            return since, (time.monotonic() - started) * 1000
    raise SystemExit("an EDU never arrived")


async def run(rounds: int) -> None:
    async with federating_pair("ephemeral") as (a, b):
        servers = [a, b]
        async with aiohttp.ClientSession() as http:
            alice = await User(http, a.client_url).register("alice")
            bob = await User(http, b.client_url).register("bob")
            status, room = await alice.call("POST", "createRoom", {"preset": "public_chat"})
            assert status == 200, room
            room_id = room["room_id"]
            status, body = await bob.call("POST", f"join/{quote(room_id)}?server_name={quote(a.server_name)}", {})
            assert status == 200, body
            # B's messages first (alice reads one per round), all on A before the clock starts
            event_ids = []
            for i in range(rounds + 1):
                status, sent = await bob.send(room_id, f"message {i}")
                assert status == 200, sent
                event_ids.append(sent["event_id"])
            for _ in range(1200):
                if (await alice.call("GET", f"rooms/{quote(room_id)}/event/{quote(event_ids[-1])}"))[0] == 200:
                    break
                await asyncio.sleep(0.05)
            since = (await bob.sync())["next_batch"]
            typing_path = f"rooms/{quote(room_id)}/typing/{quote(alice.user_id)}"
            kinds: dict[str, list[float]] = {"typing on": [], "typing off": [], "receipt": []}
            cpu_before = {s.server_name: 0.0 for s in servers}
            for i, event_id in enumerate(event_ids):  # round 0 warms up, not counted
                if i == 1:
                    cpu_before = {s.server_name: cpu_s(s.process.pid) for s in servers}
                since, on = await timed(alice.call("PUT", typing_path, {"typing": True, "timeout": 30000}),
                                        bob, since, room_id, lambda evs: typing_now(evs) == [alice.user_id])
                since, off = await timed(alice.call("PUT", typing_path, {"typing": False}),
                                         bob, since, room_id, lambda evs: typing_now(evs) == [])
                since, read = await timed(
                    alice.call("POST", f"rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}", {}),
                    bob, since, room_id, lambda evs, e=event_id: alice.user_id in read_by(evs, e))
                if i > 0:
                    kinds["typing on"].append(on)
                    kinds["typing off"].append(off)
                    kinds["receipt"].append(read)
            edus = 3 * rounds
            cpu = {s.server_name: (cpu_s(s.process.pid) - cpu_before[s.server_name]) / edus * 1000 for s in servers}
        print(f"typing and receipts A -> B, {rounds} rounds (3 EDUs each, one at a time)")
        for name, values in kinds.items():
            print(latency_summary(f"{name} -> other user's sync", values))
        print(f"  CPU per EDU: sending server {cpu[a.server_name]:.1f} ms, receiving server {cpu[b.server_name]:.1f} ms "
              "(incl. the client requests and the other user's syncs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(max(1, min(args.rounds, 500))))


if __name__ == "__main__":
    main()
