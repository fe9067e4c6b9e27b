"""Inbound federation: processed transactions (migration 0017) and the
room facts the receiver asks for."""

from __future__ import annotations

from typing import Any

import orjson

from .database import Database


class FederationInboundStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def txn_response(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT response_json FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2", origin, txn_id
        )
        if raw is None:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else None

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
