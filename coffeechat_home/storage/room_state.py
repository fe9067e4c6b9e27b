"""Room state: state groups, the room's current (resolved) state and the
membership history.

State groups: the state after an event is a *state group*. A group holds
either a full snapshot or a delta on top of its ``prev_group``; after
``SNAPSHOT_EVERY`` deltas a snapshot is written instead, so a lookup walks a
bounded chain. Group ids come from ``state_group_id_seq`` (schema/0011), not
from stream positions: outliers have none, and neither has the resolved
state of a forked room.

Each event with a stream position records two groups: ``state_group``, the
state after the event in its branch of the DAG, and
``current_state_group``, the room's resolved state once it was persisted
(the same group unless the room has several forward extremities). What a
client is told the room's state was at a stream position is the latter.

Writes here are called by the persister only (services/persister.py),
inside its transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import asyncpg
import orjson

from ..protocol.events import Event, StateKey
from ..protocol.room_versions import RoomVersion

SNAPSHOT_EVERY = 64
# user ids kept per membership in a room summary (schema/0024): m.heroes
# has 5 without the user who asks
SUMMARY_HEROES = 6

# the room's state at a stream position (rows written before schema 0011
# have no current_state_group)
_ROOM_GROUP = "COALESCE(current_state_group, state_group)"


@dataclass
class NewStateGroup:
    id: int
    prev_group: int | None
    chain_length: int
    entries: dict[StateKey, str]  # the delta, or the full state for a snapshot


@dataclass
class CurrentStateChange:
    """What the room's current state table must become."""

    changed: dict[StateKey, tuple[str, str | None]]  # key -> (event id, membership)
    removed: list[StateKey]


class StateStore:
    """Reads of state groups and current state. ``db`` is a Database, or a
    connection inside a transaction (both have fetch/fetchrow/fetchval)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def current_state_events(self, room_id: str, room_version: RoomVersion) -> dict[StateKey, Event]:
        rows = await self.db.fetch(
            """SELECT c.type, c.state_key, e.event_id, e.pdu FROM current_state c
               JOIN events e ON e.event_id = c.event_id WHERE c.room_id = $1""",
            room_id,
        )
        return {(r["type"], r["state_key"]): Event(orjson.loads(r["pdu"]), r["event_id"], room_version) for r in rows}

    async def current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        rows = await self.db.fetch("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id)
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def room_head(self, room_id: str) -> tuple[int, int, int] | None:
        """(max depth, the room's current state group, its chain length),
        from the room's newest event with a stream position."""
        row = await self.db.fetchrow(
            """SELECT e.depth, g.id AS grp, g.chain_length FROM events e
               LEFT JOIN state_groups g ON g.id = COALESCE(e.current_state_group, e.state_group)
               WHERE e.room_id = $1 AND e.stream_pos IS NOT NULL
               ORDER BY e.stream_pos DESC LIMIT 1""",
            room_id,
        )
        if row is None or row["grp"] is None:
            return None
        max_depth = await self.db.fetchval(
            "SELECT max(depth) FROM events WHERE room_id = $1 AND NOT outlier", room_id
        )
        return int(max_depth), int(row["grp"]), int(row["chain_length"])

    async def chain_lengths(self, groups: Iterable[int]) -> dict[int, int]:
        ids = sorted(set(groups))
        if not ids:
            return {}
        rows = await self.db.fetch("SELECT id, chain_length FROM state_groups WHERE id = ANY($1::BIGINT[])", ids)
        return {r["id"]: r["chain_length"] for r in rows}

    async def state_ids_for_group(self, group: int) -> dict[StateKey, str]:
        return (await self.state_ids_for_groups([group])).get(group, {})

    async def state_ids_for_groups(
        self, groups: Iterable[int], *, members: Mapping[int, Iterable[str]] | None = None
    ) -> dict[int, dict[StateKey, str]]:
        """The full state of each group, in one query. With ``members``
        (lazy-loaded members), a group's m.room.member entries are only
        those of the users given for it: a big room's other members are
        neither sent nor sorted."""
        wanted = sorted(set(groups))
        if not wanted:
            return {}
        args: list[Any] = [wanted]
        only = ""
        if members is not None:
            pairs = [(g, u) for g in wanted for u in set(members.get(g, ()))]
            only = """AND (e.type <> 'm.room.member'
                           OR (c.root, e.state_key) IN (SELECT * FROM unnest($2::BIGINT[], $3::TEXT[])))"""
            args += [[g for g, _ in pairs], [u for _, u in pairs]]
        rows = await self.db.fetch(
            f"""WITH RECURSIVE chain (root, id, prev_group, n) AS (
                   SELECT id, id, prev_group, 0 FROM state_groups WHERE id = ANY($1::BIGINT[])
                   UNION ALL
                   SELECT c.root, s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group
               )
               SELECT DISTINCT ON (c.root, e.type, e.state_key) c.root, e.type, e.state_key, e.event_id
               FROM state_group_entries e JOIN chain c ON e.state_group = c.id
               WHERE TRUE {only}
               ORDER BY c.root, e.type, e.state_key, c.n""",
            *args,
        )
        out: dict[int, dict[StateKey, str]] = {g: {} for g in wanted}
        for r in rows:
            out[r["root"]][(r["type"], r["state_key"])] = r["event_id"]
        return out

    async def server_view_for_groups(self, groups: Iterable[int], server_name: str) -> dict[int, dict[StateKey, str]]:
        """Of each group's full state, only what decides what a server may
        see: ``m.room.history_visibility`` and the membership events of
        ``server_name``'s users (a user id's server is all after its
        first ``:``)."""
        wanted = sorted(set(groups))
        if not wanted:
            return {}
        rows = await self.db.fetch(
            """WITH RECURSIVE chain (root, id, prev_group, n) AS (
                   SELECT id, id, prev_group, 0 FROM state_groups WHERE id = ANY($1::BIGINT[])
                   UNION ALL
                   SELECT c.root, s.id, s.prev_group, c.n + 1 FROM state_groups s JOIN chain c ON s.id = c.prev_group
               )
               SELECT DISTINCT ON (c.root, e.type, e.state_key) c.root, e.type, e.state_key, e.event_id
               FROM state_group_entries e JOIN chain c ON e.state_group = c.id
               WHERE (e.type = 'm.room.history_visibility' AND e.state_key = '')
                  OR (e.type = 'm.room.member' AND substr(e.state_key, strpos(e.state_key, ':') + 1) = $2)
               ORDER BY c.root, e.type, e.state_key, c.n""",
            wanted, server_name,
        )
        out: dict[int, dict[StateKey, str]] = {g: {} for g in wanted}
        for r in rows:
            out[r["root"]][(r["type"], r["state_key"])] = r["event_id"]
        return out

    async def event_state_group(self, event_id: str) -> int | None:
        """The state group after the event (in its branch of the DAG)."""
        group: int | None = await self.db.fetchval("SELECT state_group FROM events WHERE event_id = $1", event_id)
        return group

    async def state_group_at(self, room_id: str, upto_pos: int) -> int | None:
        """The room's (resolved) state group after its last event at or
        before a stream position."""
        group: int | None = await self.db.fetchval(
            f"""SELECT {_ROOM_GROUP} FROM events WHERE room_id = $1 AND stream_pos <= $2
                ORDER BY stream_pos DESC LIMIT 1""",
            room_id, upto_pos,
        )
        return group

    async def state_groups_at(self, points: Sequence[tuple[str, int]]) -> dict[str, int]:
        """``state_group_at`` for many rooms in one query."""
        if not points:
            return {}
        rows = await self.db.fetch(
            f"""SELECT r.rid, g.grp FROM unnest($1::TEXT[], $2::BIGINT[]) AS r(rid, pos)
                CROSS JOIN LATERAL (
                    SELECT {_ROOM_GROUP} AS grp FROM events WHERE room_id = r.rid AND stream_pos <= r.pos
                    ORDER BY stream_pos DESC LIMIT 1) AS g""",
            [r for r, _ in points], [p for _, p in points],
        )
        return {r["rid"]: r["grp"] for r in rows if r["grp"] is not None}


# -- writes (the persister's transaction) --------------------------------------


async def allocate_state_group_ids(conn: asyncpg.Connection, count: int) -> list[int]:
    ids = await conn.fetchval(
        "SELECT array_agg(nextval('state_group_id_seq')) FROM generate_series(1, $1::INT)", count
    )
    return sorted(ids)


async def insert_state_groups(conn: asyncpg.Connection, room_id: str, groups: Sequence[NewStateGroup]) -> None:
    """The groups and their entries, in one statement."""
    rows = [(g.id, k[0], k[1], eid) for g in groups for k, eid in g.entries.items()]
    await conn.execute(
        """WITH g AS (
               INSERT INTO state_groups (id, room_id, prev_group, chain_length)
               SELECT g, $1, p, c FROM unnest($2::BIGINT[], $3::BIGINT[], $4::INT[]) AS t(g, p, c) RETURNING 1)
           INSERT INTO state_group_entries (state_group, type, state_key, event_id)
           SELECT * FROM unnest($5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::TEXT[])""",
        room_id, [g.id for g in groups], [g.prev_group for g in groups], [g.chain_length for g in groups],
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
    )


async def apply_current_state(
    conn: asyncpg.Connection, room_id: str, change: CurrentStateChange,
    text_order: Callable[[str], str] = lambda expr: expr,
) -> None:
    """The new current state, and the room's summary with it (member
    counts by the difference, heroes again when they may have changed).
    ``text_order``: ``Database.text_order`` (heroes sort by code point)."""
    members: dict[str, str | None] = {k[1]: v[1] for k, v in change.changed.items() if k[0] == "m.room.member"}
    members.update((k[1], None) for k in change.removed if k[0] == "m.room.member")
    heroes: asyncpg.Record | None = None
    if members:
        heroes = await _count_members(conn, room_id, members)
    if change.changed:
        keys = list(change.changed)
        await conn.execute(
            """INSERT INTO current_state (room_id, type, state_key, event_id, membership)
               SELECT $1, * FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
               ON CONFLICT (room_id, type, state_key)
               DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership""",
            room_id,
            [k[0] for k in keys], [k[1] for k in keys],
            [change.changed[k][0] for k in keys], [change.changed[k][1] for k in keys],
        )
    if change.removed:
        await conn.execute(
            """DELETE FROM current_state WHERE room_id = $1
               AND (type, state_key) IN (SELECT * FROM unnest($2::TEXT[], $3::TEXT[]))""",
            room_id, [k[0] for k in change.removed], [k[1] for k in change.removed],
        )
    if members and _heroes_may_change(heroes, members):
        first = " UNION ALL ".join(
            f"""(SELECT '{m}' AS membership, state_key FROM current_state
                 WHERE room_id = $1 AND type = 'm.room.member' AND membership = '{m}'
                 ORDER BY {text_order("state_key")} LIMIT {SUMMARY_HEROES})"""
            for m in ("join", "invite")
        )
        rows = await conn.fetch(first, room_id)
        await conn.execute(
            "UPDATE room_summaries SET heroes_joined = $2::TEXT[], heroes_invited = $3::TEXT[] WHERE room_id = $1",
            room_id,
            sorted(r["state_key"] for r in rows if r["membership"] == "join"),
            sorted(r["state_key"] for r in rows if r["membership"] == "invite"),
        )


async def _count_members(conn: asyncpg.Connection, room_id: str, members: dict[str, str | None]) -> asyncpg.Record:
    """Adds the change in joined and invited members (new memberships
    against those in current_state, read before it is written) to the
    room's summary; returns its heroes as they were."""
    users = list(members)
    row = await conn.fetchrow(
        """WITH new AS (SELECT * FROM unnest($2::TEXT[], $3::TEXT[]) AS t(state_key, membership)),
                old AS (SELECT membership FROM current_state
                        WHERE room_id = $1 AND type = 'm.room.member' AND state_key = ANY($2::TEXT[]))
           INSERT INTO room_summaries (room_id, joined_members, invited_members)
           SELECT $1,
                  (SELECT count(*) FROM new WHERE membership = 'join')
                  - (SELECT count(*) FROM old WHERE membership = 'join'),
                  (SELECT count(*) FROM new WHERE membership = 'invite')
                  - (SELECT count(*) FROM old WHERE membership = 'invite')
           ON CONFLICT (room_id) DO UPDATE SET
               joined_members = room_summaries.joined_members + excluded.joined_members,
               invited_members = room_summaries.invited_members + excluded.invited_members
           RETURNING heroes_joined, heroes_invited""",
        room_id, users, [members[u] for u in users],
    )
    assert row is not None
    return row


def _heroes_may_change(heroes: asyncpg.Record | None, members: dict[str, str | None]) -> bool:
    """Whether the first few joined or invited users (by code point) can
    differ after ``members`` change: one of them changed, or a user enters
    a list that is short or whose last user sorts after them."""
    if heroes is None or heroes["heroes_joined"] is None or heroes["heroes_invited"] is None:
        return True
    lists = {"join": heroes["heroes_joined"], "invite": heroes["heroes_invited"]}
    for user, membership in members.items():
        if any(user in listed for listed in lists.values()):
            return True
        listed = lists.get(membership or "")
        if listed is not None and (len(listed) < SUMMARY_HEROES or user < listed[-1]):
            return True
    return False


async def insert_memberships(conn: asyncpg.Connection, room_id: str, members: Sequence[tuple[Event, int]]) -> None:
    """Membership history rows for membership events with stream positions."""
    await insert_membership_rows(conn, room_id, [
        (e.event_id, e.state_key or "", e.sender, e.membership or "", p) for e, p in members
    ])


async def insert_membership_rows(
    conn: asyncpg.Connection, room_id: str, rows: Sequence[tuple[str, str, str, str, int]]
) -> None:
    """(event id, user id, sender, membership, stream position) rows. An
    event already recorded keeps its first row: an outlier member event that
    entered current state at some position and later joins the DAG with a
    position of its own took effect at the first."""
    await conn.execute(
        """INSERT INTO room_memberships (event_id, user_id, room_id, sender, membership, stream_pos)
           SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[])
           ON CONFLICT (event_id) DO NOTHING""",
        [r[0] for r in rows], [r[1] for r in rows], [room_id] * len(rows),
        [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows],
    )
    joined = [r[1] for r in rows if r[3] == "join"]
    if joined:  # re-joining un-forgets the room
        await conn.execute(
            "DELETE FROM forgotten_rooms WHERE room_id = $1 AND user_id = ANY($2::TEXT[])", room_id, joined
        )

