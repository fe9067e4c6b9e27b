"""Long admin operations as jobs whose state lives in the database: any
instance reports them, and one whose instance died (its liveness row
expired) is claimed again by a live instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .database import Database
from .stream import DB_NOW_MS

FINISHED = ("complete", "failed")


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    kind: str
    room_id: str
    params: dict[str, Any]
    status: str
    result: dict[str, Any]
    error: str | None
    created_ts: int


_COLUMNS = "job_id, kind, room_id, params, status, result, error, created_ts"


def _job(r: Any) -> Job:
    return Job(r["job_id"], r["kind"], r["room_id"], orjson.loads(r["params"]), r["status"],
               orjson.loads(r["result"]), r["error"], r["created_ts"])


class AdminJobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, job_id: str, kind: str, room_id: str, params: dict[str, Any], status: str,
                     now_ms: int) -> None:
        await self.db.execute(
            """INSERT INTO admin_jobs (job_id, kind, room_id, params, status, created_ts, updated_ts)
               VALUES ($1, $2, $3, $4::JSONB, $5, $6, $6)""",
            job_id, kind, room_id, orjson.dumps(params).decode(), status, now_ms,
        )

    async def get(self, job_id: str) -> Job | None:
        r = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM admin_jobs WHERE job_id = $1", job_id)
        return _job(r) if r is not None else None

    async def for_room(self, room_id: str, kind: str) -> list[Job]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM admin_jobs WHERE room_id = $1 AND kind = $2 ORDER BY created_ts, job_id",
            room_id, kind,
        )
        return [_job(r) for r in rows]

    async def claim(self, instance_id: str) -> Job | None:
        """Take one unfinished job nobody else live holds (unclaimed, held by
        an instance whose liveness lease expired, or left by this instance's
        own runner after an error: it runs one job at a time)."""
        unheld = f"""status NOT IN ('complete', 'failed') AND (instance_id IS NULL OR instance_id = $1 OR instance_id NOT IN
                        (SELECT instance_id FROM instance_leases WHERE expires_ts > {DB_NOW_MS}))"""
        r = await self.db.fetchrow(
            f"""UPDATE admin_jobs SET instance_id = $1
                WHERE job_id = (SELECT job_id FROM admin_jobs WHERE {unheld} ORDER BY created_ts LIMIT 1)
                  AND {unheld}
                RETURNING {_COLUMNS}""",
            instance_id,
        )
        return _job(r) if r is not None else None

    async def update(self, job_id: str, status: str, result: dict[str, Any], now_ms: int,
                     error: str | None = None) -> None:
        await self.db.execute(
            """UPDATE admin_jobs SET status = $2, result = $3::JSONB, error = $4, updated_ts = $5,
                   instance_id = CASE WHEN $2 IN ('complete', 'failed') THEN NULL ELSE instance_id END
               WHERE job_id = $1""",
            job_id, status, orjson.dumps(result).decode(), error, now_ms,
        )
