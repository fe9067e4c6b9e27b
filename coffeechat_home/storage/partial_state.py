"""Rooms joined with a partial state (schema/0031): the row written with
the join, the resync's reads, and the resync's one transaction that
completes the room's state (services/federation/partial_state.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import asyncpg
import orjson

from ..protocol.events import StateKey
from .database import Database
from .room_state import CurrentStateChange, apply_current_state, insert_membership_rows
from .stream import DB_NOW_MS, StreamTable, register_stream_table

# a room's resync commit is a stream position: /sync builds the room whole
register_stream_table(StreamTable("partial_state_rooms", "room_id", "stream_pos IS NOT NULL"))


@dataclass
class PartialRoom:
    room_id: str
    join_event_id: str
    servers: list[str]
    attempts: int


async def record_partial_room(conn: asyncpg.Connection, room_id: str, join_event_id: str,
                              servers: Sequence[str], started_ts: int) -> None:
    """Inside the join's transaction: the room is partial from its commit on."""
    await conn.execute(
        """INSERT INTO partial_state_rooms (room_id, join_event_id, servers, started_ts)
           VALUES ($1, $2, $3::TEXT[], $4)
           ON CONFLICT (room_id) DO UPDATE SET join_event_id = excluded.join_event_id,
               servers = excluded.servers, started_ts = excluded.started_ts, attempts = 0,
               retry_until_ts = 0, last_error = NULL, stream_pos = NULL""",
        room_id, join_event_id, list(servers), started_ts,
    )


class PartialStateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def partial_rooms(self, room_ids: Iterable[str]) -> set[str]:
        """Those of ``room_ids`` whose state is partial now."""
        ids = sorted(set(room_ids))
        if not ids:
            return set()
        rows = await self.db.fetch(
            "SELECT room_id FROM partial_state_rooms WHERE room_id = ANY($1::TEXT[]) AND stream_pos IS NULL", ids
        )
        return {r[0] for r in rows}

    async def sync_view(self, room_ids: Iterable[str]) -> dict[str, int | None]:
        """For /sync: of ``room_ids``, those ever joined partially, with the
        position their resync committed at (None: still partial)."""
        ids = sorted(set(room_ids))
        if not ids:
            return {}
        rows = await self.db.fetch(
            "SELECT room_id, stream_pos FROM partial_state_rooms WHERE room_id = ANY($1::TEXT[])", ids
        )
        return {r[0]: r[1] for r in rows}

    async def is_partial(self, room_id: str) -> bool:
        return bool(await self.db.fetchval(
            "SELECT 1 FROM partial_state_rooms WHERE room_id = $1 AND stream_pos IS NULL", room_id))

    async def due(self, limit: int = 50) -> list[PartialRoom]:
        """Partial rooms whose resync may run now (not backing off)."""
        rows = await self.db.fetch(
            f"""SELECT room_id, join_event_id, servers, attempts FROM partial_state_rooms
                WHERE stream_pos IS NULL AND retry_until_ts <= {DB_NOW_MS}
                ORDER BY started_ts LIMIT $1""",
            limit,
        )
        return [PartialRoom(r[0], r[1], list(r[2]), r[3]) for r in rows]

    async def get(self, room_id: str) -> PartialRoom | None:
        r = await self.db.fetchrow(
            """SELECT room_id, join_event_id, servers, attempts FROM partial_state_rooms
               WHERE room_id = $1 AND stream_pos IS NULL""",
            room_id,
        )
        return None if r is None else PartialRoom(r[0], r[1], list(r[2]), r[3])

    async def received_while_partial(self, room_id: str, join_event_id: str, server_name: str,
                                     limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Events of other servers that entered the room's timeline between
        our partial join and its resync (event id, PDU), oldest first."""
        rows = await self.db.fetch(
            """SELECT e.event_id, e.pdu FROM events e, events j, partial_state_rooms p
               WHERE j.event_id = $2 AND p.room_id = $1 AND e.room_id = $1
                 AND e.stream_pos > j.stream_pos AND (p.stream_pos IS NULL OR e.stream_pos < p.stream_pos)
                 AND substr(e.sender, strpos(e.sender, ':') + 1) <> $3
               ORDER BY e.stream_pos LIMIT $4""",
            room_id, join_event_id, server_name, limit,
        )
        return [(r[0], orjson.loads(r[1])) for r in rows]

    async def reject_late(self, room_id: str, event_ids: Sequence[str], reason: str) -> list[str]:
        """Events received while the room was partial that fail the auth
        rules on the whole state before them: rejected now, as they would
        have been on receipt, and out of the timeline (no stream position:
        /messages, /sync, /context and GET /event no longer show them).
        Only events that are not state (a rejected state event would also
        have to leave the state groups it entered: not done). Returns the
        ids it rejected."""
        rows = await self.db.fetch(
            """UPDATE events SET rejected_reason = $3, stream_pos = NULL
               WHERE room_id = $1 AND event_id = ANY($2::TEXT[]) AND state_key IS NULL
                 AND rejected_reason IS NULL
               RETURNING event_id""",
            room_id, list(event_ids), reason,
        )
        return [r[0] for r in rows]

    async def failed(self, room_id: str, wait_ms: int, error: str) -> None:
        await self.db.execute(
            f"""UPDATE partial_state_rooms SET attempts = attempts + 1, retry_until_ts = {DB_NOW_MS} + $2,
                       last_error = $3
                WHERE room_id = $1 AND stream_pos IS NULL""",
            room_id, wait_ms, error[:500],
        )


async def complete_state(
    conn: asyncpg.Connection, position: int, room_id: str, join_event_id: str,
    full: Mapping[StateKey, tuple[str, str | None]], senders: Mapping[str, str], text_order: Any,
) -> int:
    """The resync's transaction (at stream ``position``): the state entries of
    ``full`` (the state after the join: key -> (event id, membership);
    ``senders``: event id -> sender, for the member events) that
    the room's state lacks are added

    * to every snapshot state group of the room (``prev_group`` NULL): the
      groups of the join and of everything after it are deltas on those, so
      the state at each event becomes the full state, and what changed while
      the room was partial (a delta or a later snapshot's own entry) still
      wins (ON CONFLICT DO NOTHING);
    * to the current state (with the room summary's counts), and the
      members' history rows at ``position`` (the write that made them
      current, as the persister records such members: device-list tracking
      and the federation sender read them).

    Then the room stops being partial. Returns how many keys current state
    gained; 0 with nothing done when the room is no longer partial."""
    still = await conn.fetchval(
        "SELECT 1 FROM partial_state_rooms WHERE room_id = $1 AND join_event_id = $2 AND stream_pos IS NULL "
        "FOR UPDATE",
        room_id, join_event_id,
    )
    if not still:
        return 0
    await conn.execute("SELECT 1 FROM rooms WHERE room_id = $1 FOR UPDATE", room_id)  # against the persister
    keys = list(full)
    types, state_keys, ids = [k[0] for k in keys], [k[1] for k in keys], [full[k][0] for k in keys]
    await conn.execute(
        """INSERT INTO state_group_entries (state_group, type, state_key, event_id)
           SELECT g.id, t.type, t.state_key, t.event_id
           FROM state_groups g CROSS JOIN unnest($2::TEXT[], $3::TEXT[], $4::TEXT[]) AS t(type, state_key, event_id)
           WHERE g.room_id = $1 AND g.prev_group IS NULL
           ON CONFLICT (state_group, type, state_key) DO NOTHING""",
        room_id, types, state_keys, ids,
    )
    rows = await conn.fetch("SELECT type, state_key FROM current_state WHERE room_id = $1", room_id)
    have = {(r[0], r[1]) for r in rows}
    missing = {k: full[k] for k in keys if k not in have}
    if missing:
        await apply_current_state(conn, room_id, CurrentStateChange(changed=missing, removed=[]), text_order)
        members = [(eid, k[1], m) for k, (eid, m) in missing.items() if k[0] == "m.room.member" and m]
        if members:
            await insert_membership_rows(conn, room_id, [
                (eid, user_id, senders.get(eid, user_id), m, position) for eid, user_id, m in members])
    await conn.execute(
        "UPDATE partial_state_rooms SET stream_pos = $2, last_error = NULL WHERE room_id = $1", room_id, position
    )
    return len(missing)
