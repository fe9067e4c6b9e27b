"""Registration tokens made by admins, with optional use limits and expiry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from .database import Database


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    completed: int
    expiry_time: int | None

    def to_json(self) -> dict[str, Any]:
        # "pending" is kept for Synapse's shape; uses count once completed
        return {"token": self.token, "uses_allowed": self.uses_allowed, "pending": 0,
                "completed": self.completed, "expiry_time": self.expiry_time}


def _token(r: asyncpg.Record) -> RegistrationToken:
    return RegistrationToken(r["token"], r["uses_allowed"], r["completed"], r["expiry_time"])


_COLUMNS = "token, uses_allowed, completed, expiry_time"


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, token: str, uses_allowed: int | None, expiry_time: int | None, now_ms: int) -> bool:
        inserted = await self.db.fetchval(
            """INSERT INTO registration_tokens (token, uses_allowed, expiry_time, created_ts)
               VALUES ($1, $2, $3, $4) ON CONFLICT (token) DO NOTHING RETURNING 1""",
            token, uses_allowed, expiry_time, now_ms,
        )
        return bool(inserted)

    async def get(self, token: str) -> RegistrationToken | None:
        r = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = $1", token)
        return _token(r) if r is not None else None

    async def list(self) -> list[RegistrationToken]:
        rows = await self.db.fetch(f"SELECT {_COLUMNS} FROM registration_tokens ORDER BY created_ts, token")
        return [_token(r) for r in rows]

    async def update(
        self, token: str, *, uses_allowed: int | None, set_uses: bool, expiry_time: int | None, set_expiry: bool
    ) -> RegistrationToken | None:
        r = await self.db.fetchrow(
            f"""UPDATE registration_tokens
                SET uses_allowed = CASE WHEN $2::BOOL THEN $3::INT ELSE uses_allowed END,
                    expiry_time = CASE WHEN $4::BOOL THEN $5::BIGINT ELSE expiry_time END
                WHERE token = $1 RETURNING {_COLUMNS}""",
            token, set_uses, uses_allowed, set_expiry, expiry_time,
        )
        return _token(r) if r is not None else None

    async def delete(self, token: str) -> bool:
        status = await self.db.execute("DELETE FROM registration_tokens WHERE token = $1", token)
        return status.endswith(" 1")

    async def use(self, token: str, now_ms: int) -> bool:
        """Count one use if the token is valid now (not expired, uses left)."""
        used = await self.db.fetchval(
            """UPDATE registration_tokens SET completed = completed + 1
               WHERE token = $1 AND (uses_allowed IS NULL OR completed < uses_allowed)
                 AND (expiry_time IS NULL OR expiry_time > $2)
               RETURNING 1""",
            token, now_ms,
        )
        return bool(used)
