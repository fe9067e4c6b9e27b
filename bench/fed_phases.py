"""bench_federation.py's phases: the join of a big room (and rejoins), an
inbound burst, and a fan-out to five servers; each returns its figures."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

from common import PySpy, log
from fed_setup import (
    SENDERS,
    SYNC_FILTER,
    WORK,
    CpuMeter,
    Node,
    Plan,
    Watch,
    bounded,
    fmt,
    join_remote,
    register_users,
    send_burst,
    settle,
    sync_token,
)
from matrix_client import Client, HttpError, User, q
from servers import Postgres, start_ours_federating


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
        profile = PySpy(j.server.pid, WORK / f"pyspy-join-{j.kind}.txt", rate=250, attach_s=1.0) if pyspy and j.kind == "ours" else None
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
        profile = (PySpy(rx.server.pid, WORK / f"pyspy-inbound-from-{sender.kind}.txt", rate=250,
                         attach_s=1.0)
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
