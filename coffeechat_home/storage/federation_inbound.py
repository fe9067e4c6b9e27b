"""Inbound federation: processed transactions (migration 0017) and the
room facts the receiver asks for."""

from __future__ import annotations

from typing import Any, Iterable

import asyncpg
import orjson

from ..protocol.events import Event
from ..protocol.room_versions import RoomVersion
from .database import Database
from .event_writes import RowInsert
from .events import (
    BATCH_LOOKUP_SQL,
    BatchLookup,
    RoomRow,
    batch_lookup_args,
    parse_batch_lookup,
    room_row,
    room_row_columns,
)
from .room_state import insert_memberships
from .stream import StreamStore


class FederationInboundStore:
    def __init__(self, db: Database, stream: StreamStore) -> None:
        self.db = db
        self.stream = stream

    async def record_outlier_membership(self, event: Event, stripped_state: list[Any] | None) -> int:
        """A membership row (with a stream position, so /sync shows it) for
        an outlier membership event of one of our users in a room we are
        not in (an invite, its rejection); the invite's stripped state."""

        async def write(conn: asyncpg.Connection, pos: int) -> None:
            await insert_memberships(conn, event.room_id, [(event, pos)])
            if stripped_state is not None:
                await conn.execute(
                    """INSERT INTO remote_invite_state (event_id, room_id, state_json) VALUES ($1, $2, $3)
                       ON CONFLICT (event_id) DO NOTHING""",
                    event.event_id, event.room_id, orjson.dumps(stripped_state).decode(),
                )

        _, pos = await self.stream.write(write, name="remote_membership")
        return pos

    async def invite_state(self, event_id: str) -> list[Any] | None:
        raw = await self.db.fetchval("SELECT state_json FROM remote_invite_state WHERE event_id = $1", event_id)
        value = orjson.loads(raw) if raw is not None else None
        return value if isinstance(value, list) else None

    async def pending_invite(self, room_id: str, user_id: str) -> tuple[str, str] | None:
        """(event id, sender) of the user's latest membership in the room
        when it is an invite."""
        row = await self.db.fetchrow(
            """SELECT event_id, sender, membership FROM room_memberships
               WHERE room_id = $1 AND user_id = $2 ORDER BY stream_pos DESC LIMIT 1""",
            room_id, user_id,
        )
        if row is None or row["membership"] != "invite":
            return None
        return str(row["event_id"]), str(row["sender"])

    async def txn_response(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT response_json FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2", origin, txn_id
        )
        return _response(raw)

    async def txn_response_and_room(
        self, origin: str, txn_id: str, room_id: str
    ) -> tuple[dict[str, Any] | None, RoomRow | None]:
        """``txn_response`` and the room's (version, forward extremities,
        partial) (``EventStore.room_for_receipt``) in one round trip."""
        row = await self.db.fetchrow(
            f"""SELECT t.response_json, {room_row_columns('r')}
               FROM (SELECT 1) AS one
               LEFT JOIN federation_inbound_txns AS t ON t.origin = $1 AND t.txn_id = $2
               LEFT JOIN rooms AS r ON r.room_id = $3""",
            origin, txn_id, room_id,
        )
        assert row is not None
        return _response(row["response_json"]), room_row(row)

    async def txn_response_room_and_lookup(
        self, origin: str, txn_id: str, room_id: str, room_version: RoomVersion,
        info_ids: Iterable[str], event_ids: Iterable[str], successor_ids: Iterable[str],
    ) -> tuple[dict[str, Any] | None, RoomRow | None, BatchLookup]:
        """``txn_response_and_room`` and ``EventStore.batch_lookup`` (for a
        room whose version the caller knows) in one round trip."""
        rows = await self.db.fetch(
            f"""WITH hdr AS (
                   SELECT t.response_json, {room_row_columns('r')}
                   FROM (SELECT 1) AS one
                   LEFT JOIN federation_inbound_txns AS t ON t.origin = $4 AND t.txn_id = $5
                   LEFT JOIN rooms AS r ON r.room_id = $6)
                SELECT hdr.response_json, hdr.room_version, hdr.forward_extremities, hdr.partial, l.*
                FROM hdr LEFT JOIN ({BATCH_LOOKUP_SQL}) AS l ON TRUE""",
            *batch_lookup_args(info_ids, event_ids, successor_ids), origin, txn_id, room_id,
        )
        return _response(rows[0]["response_json"]), room_row(rows[0]), parse_batch_lookup(rows, room_version)

    @staticmethod
    def txn_response_row(origin: str, txn_id: str, response: dict[str, Any], now_ms: int) -> RowInsert:
        """``save_txn_response``'s row for the persister to write with the
        transaction's events (``Persister.persist(also=)``: it commits
        exactly when they do; its values are bind parameters)."""
        return RowInsert(
            "federation_inbound_txns",
            (("origin", "TEXT"), ("txn_id", "TEXT"), ("response_json", "TEXT"), ("received_ts", "BIGINT")),
            (origin, txn_id, orjson.dumps(response).decode(), now_ms),
            "ON CONFLICT (origin, txn_id) DO NOTHING",
        )

    async def save_txn_response(self, origin: str, txn_id: str, response: dict[str, Any], now_ms: int) -> None:
        await self.db.execute(
            """INSERT INTO federation_inbound_txns (origin, txn_id, response_json, received_ts)
               VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING""",
            origin, txn_id, orjson.dumps(response).decode(), now_ms,
        )

    async def has_joined_member_of(self, room_id: str, server_name: str) -> bool:
        """A user of ``server_name`` is joined in the room's current state."""
        value = await self.db.fetchval(
            """SELECT 1 FROM current_state
               WHERE room_id = $1 AND type = 'm.room.member' AND membership = 'join'
                 AND substr(state_key, strpos(state_key, ':') + 1) = $2
               LIMIT 1""",
            room_id, server_name,
        )
        return value is not None


def _response(raw: str | None) -> dict[str, Any] | None:
    """A stored answer to a transaction (None: none stored)."""
    if raw is None:
        return None
    value = orjson.loads(raw)
    return value if isinstance(value, dict) else None

