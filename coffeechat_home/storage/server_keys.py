"""Signing keys: other servers' verify keys (cached, shared by every
instance) and this server's own earlier keys."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .database import Database


@dataclass(frozen=True)
class StoredKey:
    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int
    expired_ts: int | None
    response_json: str


@dataclass(frozen=True)
class FetchedKey:
    key_id: str
    verify_key: str
    valid_until_ts: int
    expired_ts: int | None


@dataclass(frozen=True)
class OldKey:
    key_id: str
    verify_key: str
    expired_ts: int


def _stored(row: asyncpg.Record) -> StoredKey:
    return StoredKey(
        row["server_name"], row["key_id"], row["verify_key"], int(row["valid_until_ts"]),
        None if row["expired_ts"] is None else int(row["expired_ts"]), row["response_json"],
    )


class ServerKeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_key(self, server_name: str, key_id: str) -> StoredKey | None:
        row = await self.db.fetchrow(
            """SELECT server_name, key_id, verify_key, valid_until_ts, expired_ts, response_json
               FROM remote_server_keys WHERE server_name = $1 AND key_id = $2""",
            server_name, key_id,
        )
        return None if row is None else _stored(row)

    async def get_server_keys(self, server_name: str) -> list[StoredKey]:
        rows = await self.db.fetch(
            """SELECT server_name, key_id, verify_key, valid_until_ts, expired_ts, response_json
               FROM remote_server_keys WHERE server_name = $1 ORDER BY key_id""",
            server_name,
        )
        return [_stored(r) for r in rows]

    async def store_keys(self, server_name: str, keys: list[FetchedKey], response_json: str, now_ms: int) -> None:
        """Record keys from one verified key response. A key already held
        with a longer validity keeps it (an older response read later, e.g.
        from a notary, never shortens what we know)."""
        if not keys:
            return

        async def txn(conn: asyncpg.Connection) -> None:
            await conn.executemany(
                """INSERT INTO remote_server_keys
                     (server_name, key_id, verify_key, valid_until_ts, expired_ts, fetched_ts, response_json)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (server_name, key_id) DO UPDATE SET
                     verify_key = excluded.verify_key, valid_until_ts = excluded.valid_until_ts,
                     expired_ts = excluded.expired_ts, fetched_ts = excluded.fetched_ts,
                     response_json = excluded.response_json
                   WHERE excluded.valid_until_ts >= remote_server_keys.valid_until_ts""",
                [(server_name, k.key_id, k.verify_key, k.valid_until_ts, k.expired_ts, now_ms, response_json)
                 for k in keys],
            )

        await self.db.transaction(txn, name="store_server_keys")

    # -- this server's own earlier keys ----------------------------------------
    async def old_local_keys(self) -> list[OldKey]:
        rows = await self.db.fetch("SELECT key_id, verify_key, expired_ts FROM old_signing_keys ORDER BY key_id")
        return [OldKey(r["key_id"], r["verify_key"], int(r["expired_ts"])) for r in rows]

    async def retire_local_key(self, old: OldKey, new_key_id: str) -> None:
        """Record ``old`` as an earlier key and ``new_key_id`` as the key this
        database is set up with, in one transaction."""

        async def txn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                """INSERT INTO old_signing_keys (key_id, verify_key, expired_ts) VALUES ($1, $2, $3)
                   ON CONFLICT (key_id) DO NOTHING""",
                old.key_id, old.verify_key, old.expired_ts,
            )
            await conn.execute("UPDATE server_identity SET signing_key_id = $1 WHERE id = 1", new_key_id)

        await self.db.transaction(txn, name="retire_signing_key")
