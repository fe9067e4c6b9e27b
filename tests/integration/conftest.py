"""Integration fixtures: one PostgreSQL per run, a fresh database per test
(cloned from a migrated template), and the homeserver on a real socket."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from coffeechat_home.app import HomeServer
from coffeechat_home.config import Config, load_config
from coffeechat_home.storage.database import Database
from coffeechat_home.storage.migrations import run_migrations

from ..helpers import ApiClient
from ..pg import PostgresForTests
from .processes import TEST_SETTINGS

TEMPLATE = "cch_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresForTests]:
    server = PostgresForTests()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def pg_template(pg: PostgresForTests) -> str:
    await pg.configure()
    url = await pg.create_database(TEMPLATE)
    db = await Database.connect(url, min_size=1, max_size=2)
    try:
        await run_migrations(db)
    finally:
        await db.close()
    return TEMPLATE


@pytest.fixture
async def database_url(pg: PostgresForTests, pg_template: str) -> AsyncIterator[str]:
    name = f"cch_t{os.getpid()}_{next(_counter)}"
    url = await pg.create_database(name, template=pg_template)
    yield url
    await pg.drop_database(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A small pool on the test's own migrated database (for store-level tests)."""
    database = await Database.connect(database_url, min_size=1, max_size=4)
    try:
        yield database
    finally:
        await database.close()


def make_config(database_url: str, tmp_path: Path, **env: str) -> Config:
    base = {
        "COFFEECHAT_SERVER_NAME": "test.local",
        "COFFEECHAT_DATA_DIR": str(tmp_path),
        "COFFEECHAT_DATABASE_URL": database_url,
        "COFFEECHAT_DATABASE_POOL_MIN_SIZE": "1",
        "COFFEECHAT_DATABASE_POOL_MAX_SIZE": "8",
        **TEST_SETTINGS,
    }
    base.update(env)
    return load_config(None, base)


StartServer = Callable[..., Awaitable[HomeServer]]


@pytest.fixture
async def start_server(database_url: str, tmp_path: Path) -> AsyncIterator[StartServer]:
    servers: list[HomeServer] = []

    async def start(**env: str) -> HomeServer:
        hs = HomeServer(make_config(database_url, tmp_path, **env))
        await hs.start()
        servers.append(hs)
        return hs

    yield start
    for hs in servers:
        await hs.stop()


@pytest.fixture
async def server(start_server: StartServer) -> HomeServer:
    return await start_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def base_url(server: HomeServer) -> str:
    return f"http://127.0.0.1:{server.client_port}"


@pytest.fixture
def api(base_url: str, http: aiohttp.ClientSession) -> ApiClient:
    return ApiClient(base_url, http)


@pytest.fixture
def new_client(base_url: str, http: aiohttp.ClientSession) -> Callable[[], ApiClient]:
    return lambda: ApiClient(base_url, http)


# Three registered users, for tests that need people in rooms.
@pytest.fixture
async def alice(api: ApiClient) -> ApiClient:
    await api.register("alice")
    return api


@pytest.fixture
async def bob(new_client: Callable[[], ApiClient]) -> ApiClient:
    c = new_client()
    await c.register("bob")
    return c


@pytest.fixture
async def carol(new_client: Callable[[], ApiClient]) -> ApiClient:
    c = new_client()
    await c.register("carol")
    return c
