"""Accounts, devices, access tokens and UIA sessions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncpg

from .database import Database
from .stream_statements import Guard

# Statements deleting device rows in a transaction given; returns the ids
# of the devices deleted.
DeviceDeletion = Callable[[asyncpg.Connection], Awaitable[list[str]]]
# Runs a DeviceDeletion for a user in a transaction of its own choosing
# (the E2E store's: the devices' keys and the device-list change go in the
# same one, storage/e2e_keys.py remove_devices); returns its result.
DeviceRemover = Callable[[str, DeviceDeletion], Awaitable[list[str]]]


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_write_guard(token: str) -> Guard:
    """A guard for ``StreamStore.write_many`` (storage/stream.py): the write
    fails unless ``token`` still exists (a token belongs to one device of
    one user for life) and its user is not deactivated. Inside the write's
    SERIALIZABLE transaction, a logout or deactivation committed on any
    instance before the write is seen, so a write never happens under a
    revoked token. The tokens' hashes are its keys (a group's writes check
    theirs in one statement); the token itself is never written anywhere."""
    return Guard(_TOKENS_LIVE, "BYTEA", (token_hash(token),))


# (token_hash is unique: the count is that of the keys that are live tokens)
_TOKENS_LIVE = (
    "SELECT 1 / (count(*) = cardinality({keys}))::INT FROM access_tokens t JOIN users u ON u.user_id = t.user_id "
    "WHERE t.token_hash = ANY({keys}) AND NOT u.deactivated"
)


@dataclass(frozen=True, slots=True)
class Account:
    user_id: str
    password_hash: str | None
    is_admin: bool
    deactivated: bool


@dataclass(frozen=True, slots=True)
class TokenOwner:
    user_id: str
    device_id: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ip: str | None
    last_seen_ts: int | None


@dataclass(frozen=True, slots=True)
class UserSummary:
    """A user as the admin API shows it."""

    user_id: str
    is_admin: bool
    deactivated: bool
    created_ts: int
    displayname: str | None
    avatar_url: str | None


class UserExists(Exception):
    pass


_SUMMARY = """SELECT u.user_id, u.is_admin, u.deactivated, u.created_ts, p.displayname, p.avatar_url
              FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id"""


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users ---------------------------------------------------------------
    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        now_ms: int,
        *,
        is_admin: bool = False,
        device: tuple[str, str | None, str] | None = None,
        ip: str | None = None,
    ) -> None:
        """Create a user and, optionally, its first device and token
        (device_id, display_name, token) in the same transaction."""

        async def txn(conn: asyncpg.Connection) -> None:
            inserted = await conn.fetchval(
                """INSERT INTO users (user_id, password_hash, is_admin, created_ts)
                   VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO NOTHING RETURNING 1""",
                user_id, password_hash, is_admin, now_ms,
            )
            if not inserted:
                raise UserExists(user_id)
            if device is not None:
                await _add_device_and_token(conn, user_id, device[0], device[1], device[2], now_ms, ip)

        await self.db.transaction(txn, name="create_user")

    async def get_account(self, user_id: str) -> Account | None:
        row = await self.db.fetchrow(
            "SELECT user_id, password_hash, is_admin, deactivated FROM users WHERE user_id = $1", user_id
        )
        if row is None:
            return None
        return Account(row["user_id"], row["password_hash"], row["is_admin"], row["deactivated"])

    # -- administration ------------------------------------------------------
    async def list_users(
        self, offset: int, limit: int, name: str | None, include_deactivated: bool
    ) -> tuple[list[UserSummary], int]:
        """A page of users ordered by user id, and how many match in all."""
        where = """WHERE ($1::TEXT IS NULL OR strpos(lower(u.user_id), lower($1)) > 0
                          OR strpos(lower(coalesce(p.displayname, '')), lower($1)) > 0)
                     AND ($2::BOOL OR NOT u.deactivated)"""
        rows = await self.db.fetch(
            f"{_SUMMARY} {where} ORDER BY u.user_id OFFSET $3 LIMIT $4", name, include_deactivated, offset, limit
        )
        total = await self.db.fetchval(
            f"""SELECT count(*) FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id {where}""",
            name, include_deactivated,
        )
        return [UserSummary(*r) for r in rows], int(total)

    async def user_summary(self, user_id: str) -> UserSummary | None:
        r = await self.db.fetchrow(f"{_SUMMARY} WHERE u.user_id = $1", user_id)
        return UserSummary(*r) if r is not None else None

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self.db.execute("UPDATE users SET is_admin = $2 WHERE user_id = $1", user_id, is_admin)

    async def reactivate(self, user_id: str) -> None:
        await self.db.execute("UPDATE users SET deactivated = false WHERE user_id = $1", user_id)

    async def user_exists(self, user_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id))

    async def set_password(
        self, user_id: str, password_hash: str, *, keep_device: str | None, revoke: bool,
        remover: DeviceRemover | None = None,
    ) -> list[str]:
        """Returns the ids of the devices logged out (when ``revoke``).
        ``remover``: runs the deletion (see DeviceRemover) instead of a
        transaction of its own."""

        async def txn(conn: asyncpg.Connection) -> list[str]:
            await conn.execute("UPDATE users SET password_hash = $2 WHERE user_id = $1", user_id, password_hash)
            if not revoke:
                return []
            # Other sessions are logged out: their devices and tokens go.
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = $1 AND device_id IS DISTINCT FROM $2",
                user_id, keep_device,
            )
            rows = await conn.fetch(
                "DELETE FROM devices WHERE user_id = $1 AND device_id IS DISTINCT FROM $2 RETURNING device_id",
                user_id, keep_device,
            )
            return [r["device_id"] for r in rows]

        return await self._remove(user_id, txn, remover, "set_password")

    async def deactivate(self, user_id: str, remover: DeviceRemover | None = None) -> list[str]:
        """Returns the ids of the devices removed."""

        async def txn(conn: asyncpg.Connection) -> list[str]:
            await conn.execute(
                "UPDATE users SET deactivated = true, password_hash = NULL WHERE user_id = $1", user_id
            )
            await conn.execute("DELETE FROM access_tokens WHERE user_id = $1", user_id)
            rows = await conn.fetch("DELETE FROM devices WHERE user_id = $1 RETURNING device_id", user_id)
            return [r["device_id"] for r in rows]

        return await self._remove(user_id, txn, remover, "deactivate")

    async def _remove(
        self, user_id: str, txn: DeviceDeletion, remover: DeviceRemover | None, name: str
    ) -> list[str]:
        if remover is not None:
            return await remover(user_id, txn)
        return await self.db.transaction(txn, name=name)

    # -- tokens & devices ----------------------------------------------------
    async def login_device(
        self, user_id: str, device_id: str, display_name: str | None, token: str, now_ms: int, ip: str | None
    ) -> None:
        """Create the device if new (keeping an existing one's name), and a token for it."""

        async def txn(conn: asyncpg.Connection) -> None:
            await _add_device_and_token(conn, user_id, device_id, display_name, token, now_ms, ip)

        await self.db.transaction(txn, name="login_device")

    async def owner_of_token(self, token: str) -> TokenOwner | None:
        row = await self.db.fetchrow(
            """SELECT t.user_id, t.device_id, u.is_admin FROM access_tokens t
               JOIN users u ON u.user_id = t.user_id
               WHERE t.token_hash = $1 AND NOT u.deactivated""",
            token_hash(token),
        )
        if row is None:
            return None
        return TokenOwner(row["user_id"], row["device_id"], row["is_admin"])

    async def touch_device(self, user_id: str, device_id: str, ip: str | None, now_ms: int) -> None:
        await self.db.execute(
            "UPDATE devices SET last_seen_ip = $3, last_seen_ts = $4 WHERE user_id = $1 AND device_id = $2",
            user_id, device_id, ip, now_ms,
        )

    async def delete_devices(
        self, user_id: str, device_ids: list[str] | None, remover: DeviceRemover | None = None
    ) -> list[str]:
        """Delete devices (all when None) and every token they hold;
        returns the ids of the devices that existed."""

        async def txn(conn: asyncpg.Connection) -> list[str]:
            if device_ids is None:
                await conn.execute("DELETE FROM access_tokens WHERE user_id = $1", user_id)
                rows = await conn.fetch("DELETE FROM devices WHERE user_id = $1 RETURNING device_id", user_id)
            else:
                await conn.execute(
                    "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = ANY($2::TEXT[])",
                    user_id, device_ids,
                )
                rows = await conn.fetch(
                    "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2::TEXT[]) RETURNING device_id",
                    user_id, device_ids,
                )
            return [r["device_id"] for r in rows]

        return await self._remove(user_id, txn, remover, "delete_devices")

    async def list_devices(self, user_id: str) -> list[Device]:
        rows = await self.db.fetch(
            """SELECT user_id, device_id, display_name, last_seen_ip, last_seen_ts
               FROM devices WHERE user_id = $1""",
            user_id,
        )
        # sorted here: ORDER BY on text is byte-wise on CockroachDB and
        # follows the collation on PostgreSQL
        return sorted((Device(*r) for r in rows), key=lambda d: d.device_id)

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        row = await self.db.fetchrow(
            """SELECT user_id, device_id, display_name, last_seen_ip, last_seen_ts
               FROM devices WHERE user_id = $1 AND device_id = $2""",
            user_id, device_id,
        )
        return Device(*row) if row else None

    async def rename_device(self, user_id: str, device_id: str, display_name: str | None) -> bool:
        status = await self.db.execute(
            "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
            user_id, device_id, display_name,
        )
        return status.endswith(" 1")

    # -- user-interactive auth sessions --------------------------------------
    async def uia_create(self, session_id: str, user_id: str | None, now_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO uia_sessions (session_id, user_id, created_ts) VALUES ($1, $2, $3)",
            session_id, user_id, now_ms,
        )

    async def uia_get(self, session_id: str) -> tuple[str | None, list[str]] | None:
        row = await self.db.fetchrow(
            "SELECT user_id, completed FROM uia_sessions WHERE session_id = $1", session_id
        )
        if row is None:
            return None
        return row["user_id"], json.loads(row["completed"])

    async def uia_complete_stage(self, session_id: str, stage: str) -> None:
        async def txn(conn: asyncpg.Connection) -> None:
            raw = await conn.fetchval("SELECT completed FROM uia_sessions WHERE session_id = $1", session_id)
            if raw is None:
                return
            done = json.loads(raw)
            if stage not in done:
                done.append(stage)
                await conn.execute(
                    "UPDATE uia_sessions SET completed = $2::JSONB WHERE session_id = $1",
                    session_id, json.dumps(done),
                )

        await self.db.transaction(txn, name="uia_complete")

    async def uia_delete(self, session_id: str) -> None:
        await self.db.execute("DELETE FROM uia_sessions WHERE session_id = $1", session_id)


async def _add_device_and_token(
    conn: asyncpg.Connection,
    user_id: str,
    device_id: str,
    display_name: str | None,
    token: str,
    now_ms: int,
    ip: str | None = None,
) -> None:
    # A device nobody named is shown by its id (clients such as matrix-nio
    # expect every device to carry a display_name).
    await conn.execute(
        """INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip)
           VALUES ($1, $2, $3, $4, $4, $5)
           ON CONFLICT (user_id, device_id) DO UPDATE
               SET last_seen_ts = excluded.last_seen_ts, last_seen_ip = excluded.last_seen_ip""",
        user_id, device_id, display_name or device_id, now_ms, ip,
    )
    await conn.execute(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)",
        token_hash(token), user_id, device_id, now_ms,
    )
