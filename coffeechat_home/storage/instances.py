"""Liveness leases of running instances and named work leases.

Every instance holds a row in ``instance_leases`` that it renews every
second, with an expiry a few seconds ahead on the database's clock. What an
instance holds to coordinate (stream reservations, work leases) names its
``instance_id``; ``reclaim_dead`` deletes what belongs to instances whose
lease has expired, and ``register`` deletes what an earlier process of the
same instance name left behind (DESIGN.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .database import Database
from .stream import DB_NOW_MS

# Expired lease rows are kept this long (for operators' eyes), then deleted.
_KEEP_EXPIRED_MS = 60_000

# $1 instance id, $2 name, $3 ttl (ms), $4 / $5 wake-up address and key (or NULL)
_TAKE_LEASE = f"""INSERT INTO instance_leases (instance_id, instance_name, started_ts, expires_ts, wake_addr, wake_key)
    VALUES ($1, $2, {DB_NOW_MS}, {DB_NOW_MS} + $3, $4, $5)
    ON CONFLICT (instance_id) DO UPDATE
        SET expires_ts = excluded.expires_ts, wake_addr = excluded.wake_addr, wake_key = excluded.wake_key"""


@dataclass(frozen=True)
class ReplacedInstance:
    instance_id: str
    looked_alive: bool  # its lease had not expired yet


class InstanceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def register(
        self, instance_id: str, name: str, ttl_ms: int, wake: tuple[str, str] | None = None
    ) -> list[ReplacedInstance]:
        """Take the lease for ``instance_id``; earlier processes of the same
        name are gone (this one replaces them), so what they held is
        released now rather than when their leases expire. ``wake``: where
        the instance takes wake-ups from the others and their key
        (``wake_targets``)."""

        async def fn(conn: asyncpg.Connection) -> list[ReplacedInstance]:
            rows = await conn.fetch(
                f"""SELECT instance_id, expires_ts > {DB_NOW_MS} AS alive FROM instance_leases
                    WHERE instance_name = $1 AND instance_id <> $2""",
                name, instance_id,
            )
            old = [r["instance_id"] for r in rows]
            if old:
                await _release_held(conn, old)
                await conn.execute("DELETE FROM instance_leases WHERE instance_id = ANY($1::TEXT[])", old)
            await conn.execute(_TAKE_LEASE, instance_id, name, ttl_ms, *(wake or (None, None)))
            return [ReplacedInstance(r["instance_id"], r["alive"]) for r in rows]

        return await self.db.transaction(fn, name="register_instance")

    async def renew(self, instance_id: str, name: str, ttl_ms: int, wake: tuple[str, str] | None = None) -> bool:
        """Push our expiry forward. False if our row was gone (we looked
        dead to a survivor, e.g. through a long database outage) and had to
        be taken again; what we held then was reclaimed."""
        renewed = await self.db.fetchval(
            f"UPDATE instance_leases SET expires_ts = {DB_NOW_MS} + $2 WHERE instance_id = $1 RETURNING 1",
            instance_id, ttl_ms,
        )
        if renewed:
            return True
        await self.db.execute(_TAKE_LEASE, instance_id, name, ttl_ms, *(wake or (None, None)))
        return False

    async def reclaim_dead(self) -> int:
        """Delete reservations and work leases held by instances without a
        live lease, and old expired lease rows; returns the number of
        reservations deleted."""
        live = f"""SELECT instance_id FROM instance_leases WHERE expires_ts > {DB_NOW_MS}"""
        status = await self.db.execute(
            f"""DELETE FROM stream_inflight
                WHERE (instance_id IS NULL AND expires_ts < {DB_NOW_MS})
                   OR (instance_id IS NOT NULL AND instance_id NOT IN ({live}))"""
        )
        await self.db.execute(
            f"DELETE FROM work_leases WHERE expires_ts < {DB_NOW_MS} OR instance_id NOT IN ({live})"
        )
        await self.db.execute(f"DELETE FROM instance_leases WHERE expires_ts < {DB_NOW_MS} - {_KEEP_EXPIRED_MS}")
        return int(status.split()[-1])

    async def deregister(self, instance_id: str) -> None:
        """A clean stop: release everything held and the lease itself."""

        async def fn(conn: asyncpg.Connection) -> None:
            await _release_held(conn, [instance_id])
            await conn.execute("DELETE FROM instance_leases WHERE instance_id = $1", instance_id)

        await self.db.transaction(fn, name="deregister_instance")

    async def wake_targets(self, instance_id: str) -> list[tuple[str, str]]:
        """(address, key) of every other live instance that takes wake-ups."""
        rows = await self.db.fetch(
            f"""SELECT wake_addr, wake_key FROM instance_leases
                WHERE instance_id <> $1 AND expires_ts > {DB_NOW_MS}
                  AND wake_addr IS NOT NULL AND wake_key IS NOT NULL
                ORDER BY instance_id""",
            instance_id,
        )
        return [(r["wake_addr"], r["wake_key"]) for r in rows]

    async def live_instances(self) -> list[tuple[str, str]]:
        rows = await self.db.fetch(
            f"""SELECT instance_id, instance_name FROM instance_leases
                WHERE expires_ts > {DB_NOW_MS} ORDER BY instance_name, instance_id"""
        )
        return [(r["instance_id"], r["instance_name"]) for r in rows]

    # -- work leases -----------------------------------------------------------
    async def acquire_work_lease(self, name: str, instance_id: str, ttl_ms: int) -> bool:
        """Take or renew the lease ``name`` for ``instance_id``; True if we
        hold it now. A lease held by another instance is taken only once it
        expired (its holder stopped renewing it, or died and was reclaimed)."""
        holder = await self.db.fetchval(
            f"""INSERT INTO work_leases (name, instance_id, expires_ts) VALUES ($1, $2, {DB_NOW_MS} + $3)
                ON CONFLICT (name) DO UPDATE
                    SET instance_id = excluded.instance_id, expires_ts = excluded.expires_ts
                    WHERE work_leases.instance_id = excluded.instance_id
                       OR work_leases.expires_ts < {DB_NOW_MS}
                RETURNING instance_id""",
            name, instance_id, ttl_ms,
        )
        return bool(holder == instance_id)

    async def release_work_lease(self, name: str, instance_id: str) -> None:
        await self.db.execute("DELETE FROM work_leases WHERE name = $1 AND instance_id = $2", name, instance_id)

    async def work_lease_holder(self, name: str) -> str | None:
        value = await self.db.fetchval(
            f"SELECT instance_id FROM work_leases WHERE name = $1 AND expires_ts >= {DB_NOW_MS}", name
        )
        return None if value is None else str(value)


async def _release_held(conn: asyncpg.Connection, instance_ids: list[str]) -> None:
    await conn.execute("DELETE FROM stream_inflight WHERE instance_id = ANY($1::TEXT[])", instance_ids)
    await conn.execute("DELETE FROM work_leases WHERE instance_id = ANY($1::TEXT[])", instance_ids)
