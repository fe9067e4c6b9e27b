"""The server name and signing key id this database was set up with."""

from __future__ import annotations

import asyncpg

from .database import Database


class ServerIdentityStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_or_get(self, server_name: str, signing_key_id: str, now_ms: int) -> tuple[str, str]:
        """Record (server_name, signing_key_id) if nothing is recorded yet;
        returns what is recorded (the given pair on a first start)."""

        async def txn(conn: asyncpg.Connection) -> tuple[str, str]:
            await conn.execute(
                """INSERT INTO server_identity (id, server_name, signing_key_id, created_ts)
                   VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING""",
                server_name, signing_key_id, now_ms,
            )
            row = await conn.fetchrow("SELECT server_name, signing_key_id FROM server_identity WHERE id = 1")
            assert row is not None
            return str(row["server_name"]), str(row["signing_key_id"])

        return await self.db.transaction(txn, name="server_identity")
