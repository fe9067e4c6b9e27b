"""Filters uploaded by clients. Immutable; the id is derived from the
user and the filter's canonical JSON, so re-uploading a filter (clients do
so at every start) gives the same id and no new row."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson

from .database import Database


def filter_id_for(user_id: str, canonical: bytes) -> str:
    digest = hashlib.sha256(user_id.encode("utf-8") + b"\0" + canonical).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode("ascii")


class FilterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, user_id: str, filter_json: dict[str, Any], now_ms: int) -> str:
        canonical = orjson.dumps(filter_json, option=orjson.OPT_SORT_KEYS)
        filter_id = filter_id_for(user_id, canonical)
        await self.db.execute(
            """INSERT INTO user_filters (user_id, filter_id, filter, created_ts) VALUES ($1, $2, $3, $4)
               ON CONFLICT (user_id, filter_id) DO NOTHING""",
            user_id, filter_id, canonical.decode(), now_ms,
        )
        return filter_id

    async def get_filter(self, user_id: str, filter_id: str) -> dict[str, Any] | None:
        raw = await self.db.fetchval(
            "SELECT filter FROM user_filters WHERE user_id = $1 AND filter_id = $2", user_id, filter_id
        )
        return orjson.loads(raw) if raw is not None else None
