"""SQL of the outbound federation sender (services/federation/sender.py):
per-destination stream positions and backoff, and the events each
destination should get, read from the events stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from ..protocol.server_acl import server_allowed
from .database import Database
from .rooms import RoomStore
from .stream import DB_NOW_MS

# the server part of a user id column (functions on schema/FUNCTIONS.md)
def _server(col: str) -> str:
    return f"substr({col}, strpos({col}, ':') + 1)"


@dataclass
class Destination:
    destination: str
    stream_pos: int
    retry_count: int
    retry_until_ts: int


@dataclass
class OutgoingEvent:
    stream_pos: int
    event_id: str
    room_id: str
    pdu: dict[str, Any]


class FederationQueueStore:
    def __init__(self, db: Database, server_name: str) -> None:
        self.db = db
        self.server_name = server_name

    async def destinations_touched(self, after: int, upto: int) -> list[str]:
        """Servers that may have to get events in (after, upto]: the other
        servers with joined members in rooms where a local or relayed event
        was written, and the servers of users whose membership changed."""
        rows = await self.db.fetch(
            f"""WITH new AS (
                    SELECT e.room_id, e.type, e.state_key, e.stream_pos FROM events e
                    WHERE e.stream_pos > $1 AND e.stream_pos <= $2
                      AND ({_server('e.sender')} = $3
                           OR e.event_id IN (SELECT r.event_id FROM federation_relay r))
                )
                SELECT DISTINCT {_server('c.state_key')} AS d FROM current_state c
                WHERE c.room_id IN (SELECT room_id FROM new)
                  AND c.type = 'm.room.member' AND c.membership = 'join'
                UNION
                SELECT DISTINCT {_server('n.state_key')} AS d FROM new n WHERE n.type = 'm.room.member'
                UNION
                SELECT DISTINCT unnest(p.servers) AS d FROM partial_state_rooms p JOIN new n ON n.room_id = p.room_id
                WHERE p.stream_pos IS NULL OR p.stream_pos > n.stream_pos""",
            after, upto, self.server_name,
        )
        return sorted(r["d"] for r in rows if r["d"] and r["d"] != self.server_name)

    async def ensure_destinations(self, destinations: Sequence[str], stream_pos: int) -> None:
        if destinations:
            await self.db.execute(
                """INSERT INTO federation_destinations (destination, stream_pos)
                   SELECT unnest($1::TEXT[]), $2 ON CONFLICT (destination) DO NOTHING""",
                list(destinations), stream_pos,
            )

    async def get(self, destination: str) -> Destination | None:
        r = await self.db.fetchrow(
            """SELECT destination, stream_pos, retry_count, retry_until_ts FROM federation_destinations
               WHERE destination = $1""",
            destination,
        )
        return None if r is None else Destination(r[0], r[1], r[2], r[3])

    async def due(self, upto: int, limit: int = 100) -> list[str]:
        """Destinations behind ``upto`` whose backoff (if any) has ended."""
        rows = await self.db.fetch(
            f"""SELECT destination FROM federation_destinations
                WHERE stream_pos < $1 AND retry_until_ts <= {DB_NOW_MS}
                ORDER BY destination LIMIT $2""",
            upto, limit,
        )
        return [r[0] for r in rows]

    async def pending(self, destination: str, after: int, upto: int, limit: int) -> list[OutgoingEvent]:
        """Events in (after, upto] for ``destination``: local or relayed,
        not sent by one of its users, in a room where it has a member who
        is joined now and was joined at the event, or a membership event
        about one of its users.

        "Joined at the event": the member's latest membership row before
        the event is a join, or, with no row before it, the member's
        current membership event has no row at all (it came with the
        state of a room we joined over federation: joined before anything
        we have). So a destination catching up late (behind in its
        position, or in backoff, when one of its users joined) is not sent
        what was said in the room before it joined (issue #9). An event
        written while its room's state was partial (schema/0031) also goes
        to the servers the resident named in ``servers_in_room``: most of
        their members were not in our state yet (and enter it at the
        resync's position, after the event)."""
        rows = await self.db.fetch(
            f"""SELECT e.stream_pos, e.event_id, e.room_id, e.pdu FROM events e
                WHERE e.stream_pos > $2 AND e.stream_pos <= $3
                  AND ({_server('e.sender')} = $4
                       OR e.event_id IN (SELECT r.event_id FROM federation_relay r))
                  AND {_server('e.sender')} <> $1
                  AND (EXISTS (
                           SELECT 1 FROM current_state c
                           WHERE c.room_id = e.room_id AND c.type = 'm.room.member' AND c.membership = 'join'
                             AND {_server('c.state_key')} = $1
                             AND COALESCE(
                                   (SELECT m.membership FROM room_memberships m
                                    WHERE m.room_id = e.room_id AND m.user_id = c.state_key
                                      AND m.stream_pos < e.stream_pos
                                    ORDER BY m.stream_pos DESC LIMIT 1),
                                   CASE WHEN EXISTS (SELECT 1 FROM room_memberships f WHERE f.event_id = c.event_id)
                                        THEN 'none' ELSE 'join' END) = 'join')
                       OR (e.type = 'm.room.member' AND {_server('e.state_key')} = $1)
                       OR EXISTS (SELECT 1 FROM partial_state_rooms p
                                  WHERE p.room_id = e.room_id AND $1 = ANY(p.servers)
                                    AND (p.stream_pos IS NULL OR p.stream_pos > e.stream_pos)))
                ORDER BY e.stream_pos LIMIT $5""",
            destination, after, upto, self.server_name, limit,
        )
        return [OutgoingEvent(r[0], r[1], r[2], orjson.loads(r[3])) for r in rows]

    async def advance(self, destination: str, old: int, new: int) -> bool:
        """Compare-and-set of the destination's position; clears backoff."""
        done = await self.db.fetchval(
            """UPDATE federation_destinations SET stream_pos = $3, retry_count = 0, retry_until_ts = 0,
                      last_error = NULL
               WHERE destination = $1 AND stream_pos = $2 RETURNING 1""",
            destination, old, new,
        )
        return bool(done)

    async def failed(self, destination: str, min_interval_ms: int, max_interval_ms: int, error: str) -> int:
        """Record a failed send; returns the new retry count. The wait is
        min_interval * 2^(count-1), capped."""
        row = await self.db.fetchrow(
            "SELECT retry_count FROM federation_destinations WHERE destination = $1", destination
        )
        count = (row[0] if row else 0) + 1
        wait = min(max_interval_ms, min_interval_ms * (2 ** min(count - 1, 30)))
        await self.db.execute(
            f"""UPDATE federation_destinations SET retry_count = $2, retry_until_ts = {DB_NOW_MS} + $3,
                       last_error = $4
                WHERE destination = $1""",
            destination, count, wait, error[:500],
        )
        return count

    async def reset_backoff(self, destination: str) -> bool:
        """The destination talked to us: try it again now."""
        done = await self.db.fetchval(
            """UPDATE federation_destinations SET retry_count = 0, retry_until_ts = 0
               WHERE destination = $1 AND retry_count > 0 RETURNING 1""",
            destination,
        )
        return bool(done)

    async def add_relay(self, event_id: str, room_id: str, ts: int) -> None:
        await self.db.execute(
            """INSERT INTO federation_relay (event_id, room_id, created_ts) VALUES ($1, $2, $3)
               ON CONFLICT (event_id) DO NOTHING""",
            event_id, room_id, ts,
        )

    async def servers_in_room(self, room_id: str) -> list[str]:
        rows = await self.db.fetch(
            f"""SELECT DISTINCT {_server('state_key')} FROM current_state
                WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'""",
            room_id,
        )
        return sorted(r[0] for r in rows)

    async def servers_sharing_a_room(self, user_id: str) -> list[str]:
        """Other servers with a user joined to a room the user is joined to."""
        servers = await RoomStore(self.db).servers_sharing_a_room(user_id)
        return sorted(s for s in servers if s and s != self.server_name)

    async def server_acls(self, room_ids: Sequence[str]) -> dict[str, Any]:
        """The content of each room's current ``m.room.server_acl`` (rooms
        without one are left out), for one batch of outgoing events."""
        rows = await self.db.fetch(
            """SELECT c.room_id, e.pdu FROM current_state c JOIN events e ON e.event_id = c.event_id
               WHERE c.room_id = ANY($1::TEXT[]) AND c.type = 'm.room.server_acl' AND c.state_key = ''""",
            sorted(set(room_ids)),
        )
        out: dict[str, Any] = {}
        for r in rows:
            content = orjson.loads(r[1]).get("content")
            if isinstance(content, dict):
                out[r[0]] = content
        return out

    async def allowed_servers_in_room(self, room_id: str) -> list[str]:
        """``servers_in_room`` without those the room's server ACL denies
        (where room EDUs go)."""
        servers = await self.servers_in_room(room_id)
        acl = (await self.server_acls([room_id])).get(room_id)
        return [s for s in servers if server_allowed(acl, s)]

    async def server_in_room(self, room_id: str, server: str) -> bool:
        found = await self.db.fetchval(
            f"""SELECT 1 FROM current_state WHERE room_id = $1 AND type = 'm.room.member'
                  AND membership = 'join' AND {_server('state_key')} = $2 LIMIT 1""",
            room_id, server,
        )
        return bool(found)

    async def joined_in_rooms(self, room_ids: Sequence[str], user_id: str) -> tuple[set[str], set[str]]:
        """For a restricted join: (the rooms of ``room_ids`` the user is
        joined to, those this server has a joined member in), by current
        state, in one statement."""
        if not room_ids:
            return set(), set()
        rows = await self.db.fetch(
            f"""SELECT r.room_id,
                  EXISTS (SELECT 1 FROM current_state c WHERE c.room_id = r.room_id AND c.type = 'm.room.member'
                          AND c.state_key = $2 AND c.membership = 'join') AS user_in,
                  EXISTS (SELECT 1 FROM current_state c WHERE c.room_id = r.room_id AND c.type = 'm.room.member'
                          AND c.membership = 'join' AND {_server('c.state_key')} = $3) AS host_in
                FROM unnest($1::text[]) AS r(room_id)""",
            list(room_ids), user_id, self.server_name,
        )
        return {r["room_id"] for r in rows if r["user_in"]}, {r["room_id"] for r in rows if r["host_in"]}

    async def scanned_position(self) -> int | None:
        value: int | None = await self.db.fetchval("SELECT stream_pos FROM federation_sender_scan WHERE id = 1")
        return value

    async def set_scanned_position(self, pos: int) -> None:
        await self.db.execute(
            """INSERT INTO federation_sender_scan (id, stream_pos) VALUES (1, $1)
               ON CONFLICT (id) DO UPDATE SET stream_pos = GREATEST(federation_sender_scan.stream_pos, $1)""",
            pos,
        )

    async def backing_off(self, destination: str) -> bool:
        value = await self.db.fetchval(
            f"SELECT retry_until_ts > {DB_NOW_MS} FROM federation_destinations WHERE destination = $1",
            destination,
        )
        return bool(value)
