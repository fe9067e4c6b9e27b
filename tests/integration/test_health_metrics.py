"""GET /health and the Prometheus metrics (issue 11): scraped after real
traffic and parsed with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from coffeechat_home.app import HomeServer

from ..helpers import ApiClient
from .conftest import StartServer


class DatabaseLink:
    """A TCP door to the test PostgreSQL's Unix socket that the test can
    cut: the server then meets a database that does not answer."""

    def __init__(self, database_url: str) -> None:
        parts = urllib.parse.urlsplit(database_url)
        host_dir = urllib.parse.parse_qs(parts.query)["host"][0]
        self.socket_path = str(next(Path(host_dir).glob(".s.PGSQL.*[0-9]")))
        self.database = parts.path.lstrip("/")
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"postgresql://postgres@127.0.0.1:{port}/{self.database}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        self.writers += [writer, up_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


async def test_health_ok_then_503_when_the_database_is_gone(
    database_url: str, start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    link = DatabaseLink(database_url)
    hs = await start_server(COFFEECHAT_DATABASE_URL=await link.start())
    url = f"http://127.0.0.1:{hs.client_port}/health"
    async with http.get(url) as r:
        assert r.status == 200 and await r.text() == "OK"
    await link.cut()
    async with http.get(url) as r:
        body = await r.json()
        assert r.status == 503 and body["errcode"] == "M_UNKNOWN" and "database" in body["error"]


async def _scrape(http: aiohttp.ClientSession, url: str) -> dict[str, list[Any]]:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def test_metrics_after_real_traffic(
    start_server: StartServer, http: aiohttp.ClientSession, new_client: Any
) -> None:
    hs = await start_server(COFFEECHAT_METRICS_ENABLED="true")
    base = f"http://127.0.0.1:{hs.client_port}"
    alice, bob = ApiClient(base, http), ApiClient(base, http)
    await alice.register("alice")
    await bob.register("bob")
    before = await _scrape(http, base + "/metrics")
    room = (await alice.post("createRoom", {"preset": "public_chat"}))["room_id"]
    await bob.post(f"join/{room}", {})
    since = (await bob.get("sync"))["next_batch"]
    waiting = asyncio.create_task(bob.get(f"sync?since={since}&timeout=30000"))
    assert await _wait_for(lambda: hs.services is not None and hs.services.notifier.waiting > 0)
    for i in range(3):
        r = await alice.put(f"rooms/{room}/send/m.room.message/t{i}", {"msgtype": "m.text", "body": f"m{i}"})
        assert r.status == 200
    assert (await waiting).status == 200
    await alice.get("rooms/!nope:test.local/messages")  # an error response
    after = await _scrape(http, base + "/metrics")

    send = "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}"
    assert _value(after, "coffeechat_http_requests_total", method="PUT", route=send, status="200") == 3
    assert _value(after, "coffeechat_http_request_duration_seconds_count", method="PUT", route=send) == 3
    assert _value(after, "coffeechat_http_requests_total", status="403") + _value(
        after, "coffeechat_http_requests_total", status="404") >= 1
    routes = {s.labels["route"] for s in after["coffeechat_http_requests_total"]}
    assert not any("!" in r or "@" in r for r in routes), routes  # templates, no ids
    assert _value(after, "coffeechat_events_persisted_total") >= _value(before, "coffeechat_events_persisted_total") + 3
    assert _value(after, "coffeechat_sync_wakeups_total") > _value(before, "coffeechat_sync_wakeups_total")
    for family in ("coffeechat_group_commits_total", "coffeechat_group_commit_writes_total",
                   "coffeechat_group_commit_shared_inserts_total", "coffeechat_group_commit_fallbacks_total"):
        assert family in after, family
    assert _value(after, "coffeechat_password_hashes_total") >= 2
    assert _value(after, "coffeechat_db_pool_connections", pool="transaction", state="max") == 8
    assert "coffeechat_db_retries_total" in after and "coffeechat_sync_waiting" in after
    assert "coffeechat_password_hashes_queued" in after


async def _wait_for(predicate: Any, deadline_s: float = 30) -> bool:
    for _ in range(int(deadline_s / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_metrics_off_by_default_and_on_a_separate_listener(
    server: HomeServer, start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"http://127.0.0.1:{server.client_port}/metrics") as r:
        assert r.status == 404 and (await r.json())["errcode"] == "M_UNRECOGNIZED"
    hs = await start_server(COFFEECHAT_METRICS_ENABLED="true", COFFEECHAT_METRICS_SEPARATE_LISTENER="true",
                            COFFEECHAT_METRICS_PORT="0", COFFEECHAT_METRICS_PATH="/_metrics")
    assert hs.metrics_port is not None
    async with http.get(f"http://127.0.0.1:{hs.client_port}/_metrics") as r:
        assert r.status == 404
    samples = await _scrape(http, f"http://127.0.0.1:{hs.metrics_port}/_metrics")
    assert "coffeechat_events_persisted_total" in samples
