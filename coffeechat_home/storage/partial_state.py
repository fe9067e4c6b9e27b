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
from .room_state import (
    CurrentStateChange,
    NewStateGroup,
    allocate_state_group_ids,
    apply_current_state,
    insert_membership_rows,
    insert_state_groups,
)
from .stream import DB_NOW_MS, StreamTable, register_stream_table

# a room's resync commit is a stream position: /sync builds the room whole
register_stream_table(StreamTable("partial_state_rooms", "room_id", "stream_pos IS NOT NULL"))
# so is a correction of its state after the resync (rewrite_state, schema/0040)
register_stream_table(StreamTable("room_state_resets", "room_id"))


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
    def __init__(self, db: Database | asyncpg.Connection) -> None:
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

    async def sync_view(self, room_ids: Iterable[str]) -> dict[str, tuple[int | None, int | None]]:
        """For /sync: of ``room_ids``, those ever joined partially, with the
        position their resync committed at (None: still partial) and the
        position of the last correction of their state after it
        (rewrite_state; None: none)."""
        ids = sorted(set(room_ids))
        if not ids:
            return {}
        return await self._view("WHERE p.room_id = ANY($1::TEXT[])", ids)

    async def all_rows(self) -> dict[str, tuple[int | None, int | None]]:
        """``sync_view`` of every room ever joined partially:
        ``PartialRoomsView``'s first read."""
        return await self._view("")

    async def rows_changed(self, after: int, upto: int, rooms: Iterable[str]) -> dict[str, tuple[int | None, int | None]]:
        """``sync_view`` of the rooms whose rows may have changed in (after,
        upto]: a row is written (or written again, partial once more) in
        the transaction of our user's join, which has a membership row at a
        position there; ``rooms``: those the stream shows resynced or
        corrected (their positions are stream positions)."""
        return await self._view(
            """WHERE p.room_id = ANY($3::TEXT[]) OR p.room_id IN (
                   SELECT room_id FROM room_memberships WHERE stream_pos > $1 AND stream_pos <= $2)""",
            after, upto, sorted(set(rooms)),
        )

    async def _view(self, where: str, *args: Any) -> dict[str, tuple[int | None, int | None]]:
        """room -> (resync position, last correction position) of the rows
        ``where`` (a constant of this class's) selects."""
        rows = await self.db.fetch(
            f"""SELECT p.room_id, p.stream_pos, r.stream_pos FROM partial_state_rooms p
                LEFT JOIN room_state_resets r ON r.room_id = p.room_id {where}""",
            *args,
        )
        return {r[0]: (r[1], r[2]) for r in rows}

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
        /messages, /sync, /context and GET /event no longer show them) and
        the forward extremities (``release_extremities``). Inside a
        transaction (a store on its connection).
        Only events that are not state (a state event also leaves the state
        groups it entered: ``rewrite_state``). Returns the ids it
        rejected."""
        extremities = await self.db.fetchval(
            "SELECT forward_extremities FROM rooms WHERE room_id = $1 FOR UPDATE", room_id)
        rows = await self.db.fetch(
            """UPDATE events SET rejected_reason = $3, stream_pos = NULL
               WHERE room_id = $1 AND event_id = ANY($2::TEXT[]) AND state_key IS NULL
                 AND rejected_reason IS NULL
               RETURNING event_id""",
            room_id, list(event_ids), reason,
        )
        rejected = [r[0] for r in rows]
        if rejected:
            await release_extremities(self.db, room_id, rejected, list(extremities or []))
        return rejected

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
) -> int | None:
    """The resync's transaction (at stream ``position``): the state entries of
    ``full`` (the state after the join: key -> (event id, membership);
    ``senders``: event id -> sender, for the member events) that
    the room's state lacks are added

    * to the snapshot state groups (``prev_group`` NULL) of the room whose
      member entry for the joiner is the join or a later membership of his
      (at a stream position from the join's on): the state at the join and
      at what came after it, partial, is made of them and deltas on them,
      so it becomes the full state, and what changed while the room was
      partial (a delta or a later snapshot's own entry) still wins (ON
      CONFLICT DO NOTHING). Not to other groups: history from before the
      join (backfilled while the room was partial) and an event that did
      not see the join (its state came whole from another server) have no
      partial state, and the state after the join would make the joiner,
      and everyone who was in the room then, members of it there (a user
      who joins a room with ``joined`` history would see what was said
      before he came);
    * to the current state (with the room summary's counts), and the
      members' history rows at ``position`` (the write that made them
      current, as the persister records such members: device-list tracking
      and the federation sender read them).

    Then the room stops being partial. Returns how many keys current state
    gained; None with nothing done when the room is no longer partial."""
    still = await conn.fetchval(
        "SELECT 1 FROM partial_state_rooms WHERE room_id = $1 AND join_event_id = $2 AND stream_pos IS NULL "
        "FOR UPDATE",
        room_id, join_event_id,
    )
    if not still:
        return None
    await conn.execute("SELECT 1 FROM rooms WHERE room_id = $1 FOR UPDATE", room_id)  # against the persister
    keys = list(full)
    types, state_keys, ids = [k[0] for k in keys], [k[1] for k in keys], [full[k][0] for k in keys]
    await conn.execute(
        """INSERT INTO state_group_entries (state_group, type, state_key, event_id)
           SELECT g.id, t.type, t.state_key, t.event_id
           FROM events j, state_groups g
           CROSS JOIN unnest($2::TEXT[], $3::TEXT[], $4::TEXT[]) AS t(type, state_key, event_id)
           WHERE j.event_id = $5 AND g.room_id = $1 AND g.prev_group IS NULL AND EXISTS (
               SELECT 1 FROM state_group_entries m JOIN events me ON me.event_id = m.event_id
               WHERE m.state_group = g.id AND m.type = 'm.room.member' AND m.state_key = j.state_key
                 AND me.stream_pos >= j.stream_pos)
           ON CONFLICT (state_group, type, state_key) DO NOTHING""",
        room_id, types, state_keys, ids, join_event_id,
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



@dataclass
class WindowEvent:
    """An event of the room's timeline from our partial join on (the
    partial-state replay, services/federation/state_replay.py)."""

    event_id: str
    stream_pos: int
    state_group: int
    current_state_group: int
    pdu: dict[str, Any]


@dataclass
class GroupPatch:
    """A state group rewritten in place: ``entries`` become its own entries
    (``replace``: instead of all it had, else upserted beside them, with
    ``delete`` dropped); ``snapshot``: it becomes a full snapshot."""

    group: int
    entries: dict[StateKey, str]
    delete: list[StateKey]
    replace: bool
    snapshot: bool


@dataclass
class StateRewrite:
    """What the replay found (storage: ``rewrite_state``)."""

    extremities: list[str]  # the room's forward extremities the replay read (the write's guard)
    rejected: list[str]  # events rejected now
    reason: str
    patches: list[GroupPatch]
    new_groups: list[NewStateGroup]  # ids allocated in the write: placeholders -1, -2, ... here
    event_groups: dict[str, tuple[int, int]]  # event id -> (state_group, current_state_group), placeholders too
    current: CurrentStateChange
    member_senders: dict[str, str]  # member event id -> sender, for the members entering current state


async def release_extremities(db: Database | asyncpg.Connection, room_id: str, rejected: Sequence[str],
                              extremities: Sequence[str]) -> None:
    """After ``rejected`` were rejected (in the same transaction): they are
    no forward extremities (``extremities``: the room's, as read), and
    their prev events that no accepted event names any more become ones,
    as the persister counts successors."""
    again = await db.fetch(
        """SELECT DISTINCT p.prev_event_id FROM event_edges p JOIN events e ON e.event_id = p.prev_event_id
           WHERE p.event_id = ANY($1::TEXT[]) AND NOT e.outlier AND e.rejected_reason IS NULL
             AND NOT e.soft_failed
             AND NOT EXISTS (SELECT 1 FROM event_edges o JOIN events s ON s.event_id = o.event_id
                             WHERE o.prev_event_id = p.prev_event_id
                               AND NOT s.outlier AND s.rejected_reason IS NULL AND NOT s.soft_failed)""",
        sorted(set(rejected)),
    )
    kept = [x for x in extremities if x not in set(rejected)]
    kept += sorted(r[0] for r in again if r[0] not in kept)
    if kept and kept != list(extremities):
        await db.execute("UPDATE rooms SET forward_extremities = $2::TEXT[] WHERE room_id = $1", room_id, kept)


class ExtremitiesMoved(Exception):
    """The room changed between the replay's reads and its write."""


class PartialStateWindow:
    def __init__(self, db: Database | asyncpg.Connection) -> None:
        self.db = db

    async def since_join(self, room_id: str, join_event_id: str, limit: int) -> list[WindowEvent] | None:
        """The room's timeline events from our join on (the join first),
        None when there are more than ``limit``."""
        rows = await self.db.fetch(
            """SELECT e.event_id, e.stream_pos, e.state_group, COALESCE(e.current_state_group, e.state_group),
                      e.pdu
               FROM events e, events j
               WHERE j.event_id = $2 AND e.room_id = $1 AND e.stream_pos >= j.stream_pos
                 AND e.state_group IS NOT NULL
               ORDER BY e.stream_pos LIMIT $3""",
            room_id, join_event_id, limit + 1,
        )
        if len(rows) > limit:
            return None
        return [WindowEvent(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    async def group_prevs(self, groups: Iterable[int]) -> dict[int, tuple[int | None, int]]:
        """group -> (its prev group, its chain length)."""
        rows = await self.db.fetch(
            "SELECT id, prev_group, chain_length FROM state_groups WHERE id = ANY($1::BIGINT[])", sorted(set(groups)))
        return {r[0]: (r[1], r[2]) for r in rows}

    async def group_children(self, room_id: str, groups: Iterable[int]) -> dict[int, int]:
        """The room's groups that are deltas on one of ``groups``: group -> prev group."""
        rows = await self.db.fetch(
            "SELECT id, prev_group FROM state_groups WHERE room_id = $1 AND prev_group = ANY($2::BIGINT[])",
            room_id, sorted(set(groups)))
        return {r[0]: r[1] for r in rows}

    async def groups_used_elsewhere(self, room_id: str, groups: Iterable[int], event_ids: Sequence[str]) -> set[int]:
        """Those of ``groups`` that an event of the room other than
        ``event_ids`` records (its state group or the room's at it)."""
        ids = sorted(set(groups))
        rows = await self.db.fetch(
            """SELECT state_group, current_state_group FROM events
               WHERE room_id = $1 AND (state_group = ANY($2::BIGINT[]) OR current_state_group = ANY($2::BIGINT[]))
                 AND NOT (event_id = ANY($3::TEXT[]))""",
            room_id, ids, list(event_ids),
        )
        wanted = set(ids)
        return {g for r in rows for g in (r[0], r[1]) if g in wanted}


async def rewrite_state(conn: asyncpg.Connection, position: int, room_id: str, plan: StateRewrite,
                        text_order: Any) -> None:
    """The partial-state replay's write (at stream ``position``): events
    received while the room was partial that fail the auth rules on the
    whole state before them are rejected and leave the timeline (and stop
    being forward extremities; their prev events that no accepted event
    names any more become ones, as the persister counts successors); the state groups of the events from the join on
    are rewritten in place or replaced by new ones, so the state at each is
    the state without those events; the current state becomes the
    replay's (summary and membership rows with it); when the state changed,
    the room's row in ``room_state_resets`` moves to ``position``: /sync
    shows the room whole again from there. Raises ExtremitiesMoved (nothing written) when the
    room's forward extremities are no longer those the replay read."""
    extremities = list(await conn.fetchval(
        "SELECT forward_extremities FROM rooms WHERE room_id = $1 FOR UPDATE", room_id) or [])
    if extremities != plan.extremities:
        raise ExtremitiesMoved(room_id)
    if plan.rejected:
        await conn.execute(
            """UPDATE events SET rejected_reason = $3, stream_pos = NULL
               WHERE room_id = $1 AND event_id = ANY($2::TEXT[]) AND rejected_reason IS NULL""",
            room_id, plan.rejected, plan.reason,
        )
        await conn.execute("DELETE FROM room_memberships WHERE event_id = ANY($1::TEXT[])", plan.rejected)
        await release_extremities(conn, room_id, plan.rejected, extremities)
    for patch in plan.patches:
        g = patch.group
        if patch.replace or patch.snapshot:
            await conn.execute("DELETE FROM state_group_entries WHERE state_group = $1", g)
        elif patch.delete:
            await conn.execute(
                """DELETE FROM state_group_entries WHERE state_group = $1
                   AND (type, state_key) IN (SELECT * FROM unnest($2::TEXT[], $3::TEXT[]))""",
                g, [k[0] for k in patch.delete], [k[1] for k in patch.delete])
        if patch.entries:
            keys = list(patch.entries)
            await conn.execute(
                """INSERT INTO state_group_entries (state_group, type, state_key, event_id)
                   SELECT $1, * FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[])
                   ON CONFLICT (state_group, type, state_key) DO UPDATE SET event_id = excluded.event_id""",
                g, [k[0] for k in keys], [k[1] for k in keys], [patch.entries[k] for k in keys])
        if patch.snapshot:
            await conn.execute("UPDATE state_groups SET prev_group = NULL, chain_length = 0 WHERE id = $1", g)
    if plan.new_groups:
        ids = await allocate_state_group_ids(conn, len(plan.new_groups))
        real = {-(i + 1): gid for i, gid in enumerate(ids)}

        def resolved(group: int) -> int:
            return real.get(group, group)
        groups = [NewStateGroup(resolved(n.id), None if n.prev_group is None else resolved(n.prev_group),
                                n.chain_length, n.entries) for n in plan.new_groups]
        await insert_state_groups(conn, room_id, groups)
        event_ids = list(plan.event_groups)
        await conn.execute(
            """UPDATE events SET state_group = t.sg, current_state_group = t.csg
               FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS t(eid, sg, csg)
               WHERE events.event_id = t.eid""",
            event_ids, [resolved(plan.event_groups[e][0]) for e in event_ids],
            [resolved(plan.event_groups[e][1]) for e in event_ids],
        )
    change = plan.current
    if change.changed or change.removed:
        await apply_current_state(conn, room_id, change, text_order)
        members = [(eid, k[1], m) for k, (eid, m) in change.changed.items() if k[0] == "m.room.member" and m]
        if members:
            await insert_membership_rows(conn, room_id, [
                (eid, user_id, plan.member_senders.get(eid, user_id), m, position) for eid, user_id, m in members])
    if plan.patches or plan.new_groups or change.changed or change.removed:
        await conn.execute(
            """INSERT INTO room_state_resets (room_id, stream_pos, events_rejected) VALUES ($1, $2, $3)
               ON CONFLICT (room_id) DO UPDATE SET stream_pos = excluded.stream_pos,
                   events_rejected = room_state_resets.events_rejected + excluded.events_rejected""",
            room_id, position, len(plan.rejected),
        )
