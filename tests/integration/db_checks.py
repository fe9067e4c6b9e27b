"""Read-only checks of what the server stored, straight from the database:
for tests that must prove nothing was forked or corrupted, beyond what the
API shows."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import orjson

from coffeechat_home.protocol.hashing import compute_event_id
from coffeechat_home.protocol.room_versions import get_room_version

Snapshot = dict[str, list[dict[str, Any]]]


async def assert_linear_history(database_url: str, room_id: str) -> None:
    """The room's DAG, read from the stored PDUs, is a single chain: one
    forward extremity (stored and actual), depths 1..n, every event's
    prev_events exactly the event before it. A room written only by local
    users must look like this however many instances write into it."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT event_id, depth, pdu FROM events WHERE room_id = $1
               AND NOT outlier AND rejected_reason IS NULL AND NOT soft_failed ORDER BY depth, event_id""",
            room_id,
        )
        stored_extremities = await conn.fetchval("SELECT forward_extremities FROM rooms WHERE room_id = $1", room_id)
    finally:
        await conn.close()
    chain = [r["event_id"] for r in rows]
    prevs = {r["event_id"]: orjson.loads(r["pdu"])["prev_events"] for r in rows}
    referenced = {p for ps in prevs.values() for p in ps}
    tips = [e for e in chain if e not in referenced]
    assert tips == [chain[-1]], f"the room's DAG has {len(tips)} forward extremities: {tips}"
    assert list(stored_extremities) == [chain[-1]], stored_extremities
    assert [r["depth"] for r in rows] == list(range(1, len(rows) + 1)), "two events share a depth: a fork"
    forks = [e for before, e in zip(chain, chain[1:]) if prevs[e] != [before]]
    assert not forks, f"{len(forks)} of {len(chain)} events do not follow the event before them"
    assert prevs[chain[0]] == []


async def snapshot(database_url: str) -> Snapshot:
    """Every row of every table of the public schema, as JSON objects."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        ]
        out: Snapshot = {}
        for t in tables:
            rows = await conn.fetch(f'SELECT row_to_json(x)::TEXT AS j FROM "{t}" x')
            out[t] = sorted((json.loads(r["j"]) for r in rows), key=lambda d: json.dumps(d, sort_keys=True))
        return out
    finally:
        await conn.close()


def rows_of_user(snap: Snapshot, user_id: str) -> dict[str, list[dict[str, Any]]]:
    """The rows, per table, whose user_id column names ``user_id``."""
    return {t: [r for r in rows if r.get("user_id") == user_id] for t, rows in snap.items()}


def assert_events_intact(before: Snapshot, after: Snapshot) -> None:
    """Every event stored before is still stored with the same place in its
    room, and its PDU unchanged unless it was redacted since; every stored
    event's id is still the reference hash of its stored PDU."""
    versions = {r["room_id"]: r["room_version"] for r in after["rooms"]}
    now = {r["event_id"]: r for r in after["events"]}
    fixed = ("room_id", "stream_pos", "depth", "type", "state_key", "sender", "origin_server_ts", "outlier")
    for old in before["events"]:
        new = now.get(old["event_id"])
        assert new is not None, f"event {old['event_id']} disappeared"
        assert {k: new[k] for k in fixed} == {k: old[k] for k in fixed}, (old, new)
        if new["redacted_by"] is None:
            assert new["pdu"] == old["pdu"] and new["client"] == old["client"], old["event_id"]
    for ev in after["events"]:
        pdu = orjson.loads(ev["pdu"])
        orjson.loads(ev["client"])
        rv = get_room_version(versions[ev["room_id"]])
        assert compute_event_id(pdu, rv) == ev["event_id"], f"stored PDU of {ev['event_id']} no longer matches its id"


async def assert_forward_extremities(database_url: str, room_id: str) -> None:
    """The room's stored forward extremities are the tips of its DAG: the
    events that are part of it (not outliers, rejected or soft-failed) that
    no such event names as a prev_event. Holds for forked rooms too."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT event_id, pdu FROM events WHERE room_id = $1
               AND NOT outlier AND rejected_reason IS NULL AND NOT soft_failed""",
            room_id,
        )
        stored = await conn.fetchval("SELECT forward_extremities FROM rooms WHERE room_id = $1", room_id)
    finally:
        await conn.close()
    referenced = {p for r in rows for p in orjson.loads(r["pdu"])["prev_events"]}
    tips = {r["event_id"] for r in rows} - referenced
    assert sorted(stored) == sorted(tips), (stored, tips)
    assert len(stored) == len(set(stored)), stored
