"""Prometheus metrics (off by default; ``[metrics]`` in the config), with
the ``prometheus-client`` library: requests by route template (never the
raw path, so no room or user ids in labels) and status, latency
histograms, and the services' own counters read at scrape time."""

from __future__ import annotations

from typing import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ..services.notifier import Notifier
from ..services.passwords import PasswordHasher
from ..services.room_writer import RoomWriter
from ..storage.database import Database

# request latency buckets (seconds); long-polls land in the last ones
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def route_template(request: web.Request) -> str:
    """The route's pattern, e.g. ``/_matrix/client/v3/rooms/{room_id}/send/...``."""
    match = request.match_info
    route = getattr(match, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(match, "http_exception", None) is not None:
        return "unmatched"
    return str(resource.canonical)


class _ServiceCollector(Collector):
    """Reads the plain counters services keep (no prometheus in services)."""

    def __init__(self, db: Database, notifier: Notifier, writer: RoomWriter, passwords: PasswordHasher) -> None:
        self.db = db
        self.notifier = notifier
        self.writer = writer
        self.passwords = passwords

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "coffeechat_events_persisted", "Room events committed by this instance", value=self.writer.events_persisted
        )
        group = self.writer.group_commit
        yield CounterMetricFamily(
            "coffeechat_group_commits", "Transactions that committed several sends together", value=group.batches
        )
        yield CounterMetricFamily(
            "coffeechat_group_commit_writes", "Sends committed in such shared transactions",
            value=group.batched_writes,
        )
        yield CounterMetricFamily(
            "coffeechat_group_commit_fallbacks", "Shared transactions that failed, their sends then run alone",
            value=group.fallbacks,
        )
        yield CounterMetricFamily(
            "coffeechat_group_commit_shared_inserts", "Sends written by a shared transaction's one insert statement",
            value=group.shared_writes,
        )
        yield CounterMetricFamily(
            "coffeechat_sync_wakeups", "Waiting /sync requests woken by a change", value=self.notifier.wakeups
        )
        yield GaugeMetricFamily(
            "coffeechat_sync_waiting", "Long-poll /sync requests waiting now", value=self.notifier.waiting
        )
        yield CounterMetricFamily(
            "coffeechat_db_retries",
            "Units of work retried (serialization failures 40001/40P01, lost connections)",
            value=self.db.retry_count,
        )
        conns = GaugeMetricFamily(
            "coffeechat_db_pool_connections", "Database pool connections", labels=["pool", "state"]
        )
        for pool, (size, idle, maximum) in self.db.pool_usage().items():
            conns.add_metric([pool, "in_use"], size - idle)
            conns.add_metric([pool, "idle"], idle)
            conns.add_metric([pool, "max"], maximum)
        yield conns
        p = self.passwords
        yield GaugeMetricFamily("coffeechat_password_hashes_running", "Password hashes computing now",
                                value=min(p.pending, p.concurrency))
        yield GaugeMetricFamily("coffeechat_password_hashes_queued", "Password hashes waiting for a worker",
                                value=p.queued)
        yield CounterMetricFamily("coffeechat_password_hashes", "Password hashes and checks finished", value=p.done)


class Metrics:
    """One registry per server instance (tests run several in one process)."""

    def __init__(self, db: Database, notifier: Notifier, writer: RoomWriter, passwords: PasswordHasher) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "coffeechat_http_requests", "HTTP requests by route template and status",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "coffeechat_http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route"], buckets=_BUCKETS, registry=self.registry,
        )
        self.registry.register(_ServiceCollector(db, notifier, writer, passwords))

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        route = route_template(request)
        self.requests.labels(request.method, route, str(status)).inc()
        self.latency.labels(request.method, route).observe(seconds)

    async def scrape(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
