"""User profiles: displayname, avatar_url and extended fields (m.tz, custom).

Rows are created lazily: a user in ``users`` without a profile row has the
profile {"displayname": <localpart>}, which is what registration promises.
"""

from __future__ import annotations

from typing import Any, Callable

import asyncpg
import orjson

from .database import Database


class NoSuchUser(Exception):
    pass


def localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]


def _profile(user_id: str, has_row: bool, displayname: str | None, avatar_url: str | None, fields: str | None) -> dict[str, Any]:
    if not has_row:
        return {"displayname": localpart(user_id)}
    out: dict[str, Any] = orjson.loads(fields) if fields else {}
    if displayname is not None:
        out["displayname"] = displayname
    if avatar_url is not None:
        out["avatar_url"] = avatar_url
    return out


_SELECT = """SELECT p.user_id IS NOT NULL AS has_row, p.displayname, p.avatar_url, p.fields
             FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id WHERE u.user_id = $1"""


class ProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str) -> dict[str, Any] | None:
        """The user's profile, or None when there is no such local user."""
        r = await self.db.fetchrow(_SELECT, user_id)
        if r is None:
            return None
        return _profile(user_id, r["has_row"], r["displayname"], r["avatar_url"], r["fields"])

    async def update(
        self, user_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read-modify-write the profile in one transaction; ``change`` gets
        a copy of the profile and returns the new one (it may raise to abort,
        and must be pure: the transaction may be retried). Returns (old, new)."""

        async def txn(conn: asyncpg.Connection) -> tuple[dict[str, Any], dict[str, Any]]:
            r = await conn.fetchrow(_SELECT, user_id)
            if r is None:
                raise NoSuchUser(user_id)
            old = _profile(user_id, r["has_row"], r["displayname"], r["avatar_url"], r["fields"])
            new = change(dict(old))
            rest = {k: v for k, v in new.items() if k not in ("displayname", "avatar_url")}
            await conn.execute(
                """INSERT INTO profiles (user_id, displayname, avatar_url, fields) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname,
                       avatar_url = excluded.avatar_url, fields = excluded.fields""",
                user_id, new.get("displayname"), new.get("avatar_url"), orjson.dumps(rest).decode(),
            )
            return old, new

        return await self.db.transaction(txn, name="update_profile")
