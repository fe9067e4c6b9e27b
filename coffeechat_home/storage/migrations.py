"""Versioned SQL migrations from ``schema/``.

Files are ``NNNN_name.sql`` (both engines), optionally followed within the
same version by ``NNNN_name.postgres.sql`` or ``NNNN_name.cockroach.sql`` for
the few dialect-specific statements (hash-sharded indexes on CockroachDB).
Statements must be idempotent (``IF NOT EXISTS``), because a crash between a
migration's DDL and its version row re-runs it.

Safe with several instances starting at once: one takes a lease row
(``schema_migration_lease``) with an expiry and applies what is missing; the
others wait until every version is recorded. The holder renews the lease
in the background while it migrates (an index build on a large table can
take longer than any fixed expiry), so another instance does not take over
and repeat the DDL; if a renewal finds the lease taken, the holder stops
before its next statement. A statement that fails on a transient error (a
serialization failure, a lost connection) is run again: statements are
idempotent. No advisory locks (CockroachDB has none) and no DDL mixed with
DML in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ..resources import schema_dir
from .database import Database, DatabaseUnavailable, Engine, is_connection_error

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(postgres|cockroach))?\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> list[str]:
    """Split on ';' at line ends; our migrations keep no ';' inside strings."""
    out: list[str] = []
    buf: list[str] = []
    for line in sql.splitlines():
        stripped = line.strip()
        if stripped.startswith("--") and not buf:
            continue
        buf.append(line)
        if stripped.endswith(";"):
            stmt = "\n".join(buf).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            buf = []
    rest = "\n".join(buf).strip()
    if rest and not all(line.strip().startswith("--") or not line.strip() for line in buf):
        out.append(rest)
    return out


def load_migrations(engine: Engine, directory: Path | None = None) -> list[Migration]:
    by_version: dict[int, tuple[str, list[str]]] = {}
    # the shared file of a version first, then its dialect file
    files = sorted((directory or schema_dir()).glob("*.sql"), key=lambda p: (p.name[:4], p.name.count(".")))
    for p in files:
        m = _FILE_RE.match(p.name)
        if not m:
            raise ValueError(f"unexpected file in schema/: {p.name}")
        version, name, dialect = int(m.group(1)), m.group(2), m.group(3)
        if dialect is not None and dialect != engine.value:
            continue
        entry = by_version.setdefault(version, (name, []))
        if dialect is None and entry[0] != name:
            raise ValueError(f"two migrations share version {version}")
        entry[1].extend(split_statements(p.read_text(encoding="utf-8")))
    return [Migration(v, n, tuple(s)) for v, (n, s) in sorted(by_version.items())]


_BOOTSTRAP = (
    """CREATE TABLE IF NOT EXISTS schema_version (
        version INT PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS schema_migration_lease (
        id INT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )""",
)


async def _bootstrap(db: Database) -> None:
    for stmt in _BOOTSTRAP:
        for attempt in range(20):
            try:
                await db.execute(stmt)
                break
            except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError, asyncpg.DuplicateObjectError):
                # Two starters raced on CREATE TABLE IF NOT EXISTS (PostgreSQL
                # can report the loser as a duplicate pg_type row, or as
                # "type ... already exists"); the table exists now.
                await asyncio.sleep(0.05 * (attempt + 1))


async def applied_versions(db: Database) -> set[int]:
    rows = await db.fetch("SELECT version FROM schema_version")
    return {r["version"] for r in rows}


class MigrationLeaseLost(Exception):
    """Another instance took the migration lease while we held it."""


async def run_migrations(
    db: Database,
    directory: Path | None = None,
    *,
    lease_seconds: int = 120,
    wait_timeout: float = 300.0,
) -> list[int]:
    """Apply missing migrations; returns the versions this call applied."""
    migrations = load_migrations(db.engine, directory)
    wanted = {m.version for m in migrations}
    await _bootstrap(db)
    holder = uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_timeout
    while True:
        done = await applied_versions(db)
        if wanted <= done:
            return []
        got = await db.fetchval(
            """
            INSERT INTO schema_migration_lease (id, holder, expires_at)
            VALUES (1, $1, now() + $2::INT * INTERVAL '1 second')
            ON CONFLICT (id) DO UPDATE
                SET holder = excluded.holder, expires_at = excluded.expires_at
                WHERE schema_migration_lease.expires_at < now()
            RETURNING holder
            """,
            holder,
            lease_seconds,
        )
        if got == holder:
            break
        if loop.time() > deadline:
            raise TimeoutError("timed out waiting for another instance to finish migrations")
        await asyncio.sleep(0.1)
    lost = asyncio.Event()
    renewing = asyncio.create_task(_renew_lease(db, holder, lease_seconds, lost))
    applied: list[int] = []
    try:
        done = await applied_versions(db)
        for m in migrations:
            if m.version in done:
                continue
            log.info("applying migration %04d_%s", m.version, m.name)
            for stmt in m.statements:
                if lost.is_set():
                    raise MigrationLeaseLost(f"lost the migration lease while applying {m.version:04d}_{m.name}")
                await _execute_ddl(db, stmt)
            if lost.is_set():
                raise MigrationLeaseLost(f"lost the migration lease while applying {m.version:04d}_{m.name}")
            await db.execute(
                "INSERT INTO schema_version (version, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                m.version,
                m.name,
            )
            applied.append(m.version)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        await db.execute("DELETE FROM schema_migration_lease WHERE id = 1 AND holder = $1", holder)
    return applied


async def _renew_lease(db: Database, holder: str, lease_seconds: int, lost: asyncio.Event) -> None:
    """Push the lease's expiry forward every quarter of its length until
    cancelled; a failed renewal is tried again at the next tick (the lease
    still has three quarters to run)."""
    while True:
        await asyncio.sleep(lease_seconds / 4)
        try:
            ours = await db.fetchval(
                """UPDATE schema_migration_lease SET expires_at = now() + $2::INT * INTERVAL '1 second'
                   WHERE id = 1 AND holder = $1 RETURNING 1""",
                holder,
                lease_seconds,
            )
        except (DatabaseUnavailable, asyncpg.PostgresError) as e:
            log.warning("could not renew the migration lease (will try again): %s", e)
            continue
        if not ours:
            lost.set()
            return


async def _execute_ddl(db: Database, stmt: str) -> None:
    """Run one migration statement, again after a transient failure (our
    statements are idempotent, so running one twice is safe)."""

    async def attempt() -> None:
        try:
            async with db.pool.acquire() as conn:
                await conn.execute(stmt)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            if isinstance(e, asyncpg.PostgresError) and not is_connection_error(e):
                raise  # retryable SQLSTATEs are handled by db.retrying
            raise DatabaseUnavailable(f"migration statement: {e}", retryable=True) from e

    await db.retrying(attempt, name="migration")
