"""bench_federation.py's report: the table of ours against Synapse."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from fed_setup import Node, Plan


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
        for side, r in (("ours", o), ("Synapse", s)):
            if "error" in r:
                print(f"   {side}: join FAILED: {r['error']}")
    for n, r in enumerate(results.get("rejoins", [])):
        o = r.get("ours", {})
        print(f"   rejoin {n + 1} by a fresh R1 ({r.get('git')}): "
              + ", ".join(f"{k}={cell(o.get(k), 3)}" for k in (
                  "join_s", "sync_s", "members_s", "members_seen", "joiner_cpu_s", "joiner_db_cpu_s",
                  "resident_send_join_s", "joiner_send_join_s", "joiner_check_s", "joiner_persist_s")))
        if "error" in o:
            print(f"   rejoin {n + 1}: join FAILED: {o['error']}")
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
