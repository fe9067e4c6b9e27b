"""One running instance: config -> database -> services (wiring.py) ->
routes (routes.py) -> listeners; its startup and its bounded shutdown.

``Services``, ``build_services``, ``build_client_app`` and
``build_federation_app`` stay importable from here."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web

from .api.protocol_errors import MatrixAppRunner
from .config import Config
from .storage.database import Database, redact_url
from .storage.embedded import EmbeddedPostgres, start_embedded
from .storage.migrations import run_migrations
from .protocol.signing import SigningKey
from .keyfile import ensure_signing_key, finish_pending_rotation, load_signing_key, pending_key_path
from .listeners import bind_listener
from .services.identity import check_server_identity
from .storage.server_identity import ServerIdentityStore
from .services.tasks import cancel_and_wait
from .storage.server_keys import ServerKeyStore
from .tls import federation_ssl_context
from .routes import HTTP_HANDLER_ARGS, build_client_app, build_federation_app
from .wiring import Services, build_services

if TYPE_CHECKING:  # imported when metrics are on (prometheus_client: about 1.5 MB resident)
    from .api.metrics import Metrics

__all__ = [
    "HTTP_HANDLER_ARGS", "SHUTDOWN_GRACE_S", "HomeServer", "Services", "build_client_app", "build_federation_app",
    "build_services",
]

log = logging.getLogger(__name__)

# On SIGTERM, in-flight requests get this long to finish before they are
# cancelled; each later step of the shutdown is bounded by about as much.
SHUTDOWN_GRACE_S = 3.0


async def _bounded(name: str, step: Awaitable[None], timeout: float) -> None:
    """Run one shutdown step for at most ``timeout`` seconds (then cancel
    it); its failure is logged, and the shutdown goes on."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.warning("stopping: %s did not finish within %.0f s; cancelled", name, timeout)
        await cancel_and_wait(task, 1.0)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("stopping: %s failed: %r", name, task.exception())


class HomeServer:
    """One running instance: database, services and listeners."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.db: Database | None = None
        self.embedded: EmbeddedPostgres | None = None
        self.services: Services | None = None
        self.runners: list[web.AppRunner] = []
        self.client_port: int | None = None
        self.database_description = ""
        self.metrics_port: int | None = None
        self.federation_port: int | None = None
        self._client_sockets: list[socket.socket] = []
        self._federation_sockets: list[socket.socket] = []
        self._metrics_sockets: list[socket.socket] = []

    async def open_database(self) -> Database:
        cfg = self.config
        if cfg.database.url:
            url = cfg.database.url
            self.database_description = redact_url(url)
        else:
            self.embedded, url = await start_embedded(cfg.data_path)
            self.database_description = f"embedded PostgreSQL in {self.embedded.pgdata}"
        try:
            self.db = await Database.connect(
                url, min_size=cfg.database.pool_min_size, max_size=cfg.database.pool_max_size
            )
        except Exception:
            self._stop_embedded()
            raise
        self.database_description += f" ({self.db.engine.value})"
        return self.db

    async def prepare(self) -> tuple[Database, SigningKey]:
        """Database open and migrated, signing key loaded (generated on a
        first start), and checked against the identity the database was set
        up with (recorded on its first start). Every command that writes
        homeserver data goes through here."""
        db = await self.open_database()
        await run_migrations(db)
        ensure_signing_key(self.config.signing_key_file)
        signing_key = load_signing_key(self.config.signing_key_file)
        if pending_key_path(self.config.signing_key_file).exists():  # a rotation that stopped half-way
            _, recorded = await ServerIdentityStore(db).record_or_get(
                self.config.server_name, f"{signing_key.alg}:{signing_key.version}", 0
            )
            finish_pending_rotation(self.config.signing_key_file, recorded)
            signing_key = load_signing_key(self.config.signing_key_file)
        await check_server_identity(
            ServerIdentityStore(db), self.config.server_name, f"{signing_key.alg}:{signing_key.version}"
        )
        return db, signing_key

    async def start(self) -> None:
        listener = self.config.client_listener
        # first: a busy port must fail before anything is created
        self._client_sockets = bind_listener(listener.host, listener.port, "client_listener")
        m = self.config.metrics
        fed = self.config.federation_listener
        try:
            if fed.enabled:
                self._federation_sockets = bind_listener(fed.host, fed.port, "federation_listener")
            if m.enabled and m.separate_listener:
                self._metrics_sockets = bind_listener(m.host, m.port, "metrics")
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        db, signing_key = await self.prepare()
        self.services = build_services(self.config, db, signing_key)
        # first: releases what a crashed process of this name left behind
        await self.services.liveness.start()
        await self.services.notifier.start()
        await self.services.conversation.start()
        # takes up admin jobs, also those an instance that died left unfinished
        await self.services.jobs.start()
        await self.services.e2e.device_lists.remove_orphaned_keys()
        self.services.local_keys.old_keys = await ServerKeyStore(db).old_local_keys()
        s = self.services
        metrics: Metrics | None = None
        if self.config.metrics.enabled:
            from .api.metrics import Metrics

            metrics = Metrics(db, s.notifier, s.writer, s.passwords)
        app = build_client_app(self.config, s, metrics)
        self.client_port = await self._serve_app(app, self._client_sockets)
        if self._federation_sockets:
            ssl_context = federation_ssl_context(self.config)
            self.federation_port = await self._serve_app(
                build_federation_app(self.config, s, metrics), self._federation_sockets, ssl_context
            )
        if s.federation_sender is not None:
            await s.federation_sender.start()
        if s.partial_state is not None:
            await s.partial_state.start()
        if metrics is not None and self._metrics_sockets:
            metrics_app = web.Application()
            metrics_app.router.add_get(self.config.metrics.path, metrics.scrape)
            self.metrics_port = await self._serve_app(metrics_app, self._metrics_sockets)

    async def _serve_app(
        self, app: web.Application, sockets: list[socket.socket], ssl_context: ssl.SSLContext | None = None
    ) -> int:
        runner = MatrixAppRunner(app, access_log=None, handler_cancellation=True,
                                 shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        self.runners.append(runner)
        for sock in sockets:
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving and release what this instance holds. Every step is
        bounded (SHUTDOWN_GRACE_S): a request waiting on an unreachable
        server, a task that ignores its cancellation or a database that is
        gone delays the exit by seconds, never indefinitely."""
        if self.services is not None:
            # open long-polls answer now rather than hold the shutdown up
            self.services.notifier.release_waiters()
        for runner in reversed(self.runners):
            # in-flight requests: SHUTDOWN_GRACE_S to finish, then cancelled
            await _bounded("the HTTP listener", runner.cleanup(), 2 * SHUTDOWN_GRACE_S + 1)
        self.runners.clear()
        for sock in self._client_sockets + self._metrics_sockets + self._federation_sockets:
            sock.close()
        self._client_sockets = []
        self._metrics_sockets = []
        self._federation_sockets = []
        if self.services is not None:
            s = self.services
            steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
            if s.federation_sender is not None:
                steps.append(("the federation sender", s.federation_sender.stop))
            if s.partial_state is not None:
                steps.append(("the partial-state resync", s.partial_state.stop))
            steps += [
                ("the federation client", s.federation_client.close),
                ("the admin jobs", s.jobs.stop),
                ("the conversation services", s.conversation.stop),
                ("the notifier", s.notifier.stop),
                ("the instance lease", s.liveness.stop),
            ]
            for name, step in steps:
                await _bounded(name, step(), 2 * SHUTDOWN_GRACE_S)
            s.passwords.close()
        if self.db is not None:
            await self.db.close(timeout=SHUTDOWN_GRACE_S)
            self.db = None
        self._stop_embedded()

    def _stop_embedded(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
