"""Wiring: config -> database -> services -> routes -> listeners."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from .api.auth import TokenAuth
from .api.client.account import AccountRoutes
from .api.client.discovery import DiscoveryRoutes
from .api.protocol_errors import MatrixAppRunner
from .api.middleware import make_matrix_middleware
from .api.ratelimit import RateLimiter
from .config import Config
from .services.accounts import AccountService
from .services.passwords import PasswordHasher
from .storage.accounts import AccountStore
from .storage.database import Database, redact_url
from .storage.embedded import EmbeddedPostgres, start_embedded
from .storage.migrations import run_migrations
from .storage.rooms import RoomStore
from .storage.stream import StreamStore
from .services.notifier import Notifier
from .services.history import HistoryService
from .storage.backfill import BackfillStore
from .services.membership import MembershipService
from .services.persister import Persister
from .services.room_writer import RoomWriter
from .services.rooms import RoomService
from .storage.events import EventStore
from .protocol.signing import SigningKey
from .keyfile import ensure_signing_key, finish_pending_rotation, load_signing_key, pending_key_path
from .listeners import bind_listener
from .api.health import HealthRoutes
from .services.health import HealthService
from .api.admin.tokens import TokenAdminRoutes
from .api.admin.users import UserAdminRoutes
from .services.admin.tokens import RegistrationTokenService
from .services.admin.users import UserAdminService
from .storage.registration_tokens import RegistrationTokenStore
from .api.admin.rooms import RoomAdminRoutes
from .api.admin.room_dag import RoomDagAdminRoutes
from .api.web import WebRoutes
from .services.admin.room_dag import RoomDagService
from .storage.room_dag import RoomDagStore
from .services.admin.jobs import JobRunner
from .services.admin.rooms import RoomAdminService
from .storage.admin_jobs import AdminJobStore
from .storage.room_admin import RoomAdminStore
from .storage.room_purge import RoomPurgeStore
from .services.identity import check_server_identity
from .storage.server_identity import ServerIdentityStore
from .api.client.rooms import RoomRoutes
from .api.client.sync import SyncRoutes
from .api.client.directory import DirectoryRoutes
from .services.directory import DirectoryService
from .api.client.hierarchy import HierarchyRoutes
from .api.federation.hierarchy import HierarchyFederationRoutes
from .services.hierarchy import HierarchyService
from .storage.hierarchy import HierarchyStore
from .services.relations import RelationsService
from .services.upgrade import UpgradeService
from .services.sync import SyncService
from .services.instances import InstanceLiveness, new_instance_id
from .services.tasks import cancel_and_wait
from .storage.instances import InstanceStore
# conversation features
from .api.client.conversation import register_conversation_routes
from .services.conversation import Conversation, build_conversation
# media repository
from .api.admin.media import MediaAdminRoutes
from .api.client.media import MediaRoutes
from .services.media import MediaService, build_media
from .services.media.remote import RemoteMedia
# end-to-end encryption
from .api.client.e2e import register_e2e_routes
from .services.e2e import E2E, build_e2e
# federation: keys, outbound client, inbound authentication
from .api.federation.auth import FederationAuth
from .api.federation.e2e import E2EFederationRoutes
from .services.e2e.remote_keys import RemoteKeys
from .api.federation.keys import KeyRoutes
from .api.federation.media import FederationMediaRoutes
from .api.federation.rooms import ResidentRoutes
from .api.federation.routes import FederationRoutes
from .api.federation.invites import InviteRoutes
from .api.federation.transactions import TransactionRoutes
from .services.federation.invites_out import OutboundInvites
from .services.federation.backfill import Backfiller
from .services.federation.resident import ResidentService
from .services.federation.server_acl import ServerAcls
from .services.federation.sender import FederationSender
from .services.federation.ephemeral import EphemeralFederation
from .storage.edu_outbox import EduOutboxStore
from .storage.federation_queue import FederationQueueStore
from .federation.client import FederationClient
from .services.federation.invites import InviteReceiver
from .services.federation.receiver import FederationReceiver
from .services.federation.remote_rooms import RemoteRooms
from .services.federation.partial_state import PartialStateResync
from .services.federation.partial_view import PartialRoomsView
from .storage.partial_state import PartialStateStore
from .storage.federation_inbound import FederationInboundStore
from .services.remote_queries import RemoteQueries
from .services.server_keys import KeyStore, LocalKeys
from .storage.server_keys import ServerKeyStore
from .tls import delegated_server_name, federation_ssl_context

if TYPE_CHECKING:  # imported when metrics are on (prometheus_client: about 1.5 MB resident)
    from .api.metrics import Metrics

log = logging.getLogger(__name__)

# Long access tokens and query strings must not hit aiohttp's 8 KiB limits.
HTTP_HANDLER_ARGS = {"max_line_size": 65536, "max_field_size": 65536}


@dataclass
class Services:
    """Everything routes may call, built once per instance. Dependencies
    are passed explicitly to each service's constructor."""

    config: Config
    db: Database
    stream: StreamStore
    notifier: Notifier
    accounts: AccountService
    auth: TokenAuth
    rooms: RoomStore
    events: EventStore
    persister: Persister
    writer: RoomWriter
    room_service: RoomService
    membership: MembershipService
    history: HistoryService
    sync: SyncService
    # conversation features: account data, receipts, typing, presence,
    # profiles, filters, push rules, user directory
    conversation: Conversation
    liveness: InstanceLiveness
    passwords: PasswordHasher
    media: MediaService
    # end-to-end encryption: keys, device lists, to-device, key backup
    e2e: E2E
    # server administration (admin API and commands)
    user_admin: UserAdminService
    token_admin: RegistrationTokenService
    jobs: JobRunner
    room_admin: RoomAdminService
    # federation
    local_keys: LocalKeys
    key_store: KeyStore
    federation_client: FederationClient
    resident: ResidentService
    federation_sender: FederationSender | None
    remote_queries: RemoteQueries
    directory: DirectoryService
    hierarchy: HierarchyService
    room_dag: RoomDagService
    receiver: FederationReceiver
    invites: InviteReceiver
    partial_state: PartialStateResync | None = None  # resync of rooms joined with a partial state


def build_services(config: Config, db: Database, signing_key: SigningKey) -> Services:
    passwords = PasswordHasher(config.security.password_scrypt_n, config.security.password_hash_concurrency)
    accounts = AccountService(
        AccountStore(db),
        passwords,
        config.server_name,
        registration_mode=config.registration.mode,
        registration_tokens=config.registration.tokens,
        token_store=RegistrationTokenStore(db),
    )
    instance_id = new_instance_id(config.instance_name)
    stream = StreamStore(db, instance_id=instance_id)
    notifier = Notifier(stream)
    rooms = RoomStore(db)
    notifier.peer_rooms = rooms.rooms_of_users
    # conversation features
    conversation = build_conversation(config, db, stream, notifier, rooms)
    events = EventStore(db)
    persister = Persister(stream, events, notifier)
    writer = RoomWriter(persister, config.server_name, signing_key, group_commit=config.database.group_commit)
    room_service = RoomService(
        writer, events, rooms, config.server_name, conversation.profiles.member_fields, accounts.store.user_exists
    )
    membership = MembershipService(room_service, rooms, accounts.store, config.server_name)
    accounts.deactivation_hooks.append(membership.leave_all)
    conversation.profiles.on_profile_change.append(membership.profile_changed)
    e2e = build_e2e(db, stream, notifier, rooms, accounts, config.server_name)
    sync_sources = conversation.sync_sources()
    sync_sources.extra_global.append(e2e.sync_part)
    sync_sources.limit_upto = e2e.sync_upto
    sync_sources.wake_on_room_peers = True
    jobs = JobRunner(AdminJobStore(db), instance_id)
    room_admin = RoomAdminService(
        RoomAdminStore(db), RoomPurgeStore(db), AdminJobStore(db), jobs, membership, config.server_name
    )
    fed = config.federation
    federation_client = FederationClient(
        config.server_name, signing_key,
        allow_private_addresses=fed.allow_private_addresses,
        verify_certificates=fed.verify_peer_certificates,
        timeout_s=fed.request_timeout_s,
        max_response_bytes=fed.max_response_bytes,
    )
    local_keys = LocalKeys(config.server_name, signing_key)  # old keys: loaded at start
    key_store = KeyStore(ServerKeyStore(db), local_keys, federation_client, fed.trusted_key_servers)
    remote_queries = RemoteQueries(federation_client)
    inbound = FederationInboundStore(db, stream)
    if config.federation_listener.enabled:
        remote_rooms = RemoteRooms(config.server_name, signing_key, events, persister, key_store, federation_client,
                                   inbound)
        membership.reject_remote_invite = remote_rooms.reject_invite
        membership.pending_invite = inbound.pending_invite
        membership.local_joined = lambda room_id: inbound.has_joined_member_of(room_id, config.server_name)
        membership.remote_join = remote_rooms.join
        membership.remote_alias = remote_queries.room_alias
        membership.remote_leave = remote_rooms.leave
        membership.remote_knock = remote_rooms.knock
        membership.remote_servers = lambda room_id, via: RemoteRooms.candidate_servers(
            room_id, via, config.server_name)
    # with federation off, other servers could not check our signatures (no
    # key server): their users and aliases are simply not found
    federating = config.federation_listener.enabled
    if federating:
        conversation.profiles.remote_lookup = remote_queries.profile
        e2e.keys.remote = e2e.federation.remote = RemoteKeys(
            federation_client, e2e.federation.remote_lists, config.server_name, stream.current_position)
    directory = DirectoryService(rooms, writer, config.server_name,
                                 remote_queries.room_alias if federating else None)
    if federating:  # /publicRooms?server= of another server
        directory.remote_public_rooms = lambda server, limit, since, search: remote_queries.public_rooms(
            server, limit=limit, since=since, search=search)
    media = build_media(config, db)
    if federating:  # other servers' media, fetched on first use and cached
        media.remote = RemoteMedia(federation_client, media.store, media.files, config.media, media.release_bodies)
    queue = FederationQueueStore(db, config.server_name)
    if federating:
        room_service.remote_invites = OutboundInvites(federation_client, key_store, config.server_name)
    resident = ResidentService(events, persister, writer, queue, key_store, config.server_name, signing_key)
    sender = FederationSender(
        queue, federation_client, notifier, InstanceStore(db), instance_id, outbox=EduOutboxStore(db),
        retry_min_ms=fed.destination_min_retry_ms, retry_max_ms=fed.destination_max_retry_ms,
    ) if federating else None
    if sender is not None:  # E2EE EDUs to other servers go through the sender's outbox
        persister.after_persist.append(sender.events_committed)  # (and a scan after writes maybe ours to send)
        e2e.federation.attach_sender(sender.outbox, sender.wake_all, queue.servers_sharing_a_room)
        e2e.device_lists.local_change_hooks.append(e2e.federation.local_change)
        e2e.federation.keys.announce_remote = True  # device changes write what to announce, in their transaction
        sender.sweep_hooks.append(e2e.federation.announce_pending)  # what a crash left unannounced
        e2e.to_device.remote_edus = e2e.federation.to_device_edus
        e2e.to_device.wake = sender.wake_all
    services = Services(
        config=config,
        db=db,
        stream=stream,
        notifier=notifier,
        accounts=accounts,
        auth=TokenAuth(accounts),
        rooms=rooms,
        events=events,
        persister=persister,
        writer=writer,
        room_service=room_service,
        membership=membership,
        history=(history := HistoryService(events, rooms, stream)),
        sync=SyncService(events, rooms, notifier, sync_sources, history),
        conversation=conversation,
        liveness=InstanceLiveness(InstanceStore(db), stream, notifier, config.instance_name, instance_id),
        passwords=passwords,
        media=media,
        e2e=e2e,
        user_admin=UserAdminService(accounts, conversation.profiles),
        token_admin=RegistrationTokenService(RegistrationTokenStore(db)),
        jobs=jobs,
        room_admin=room_admin,
        local_keys=local_keys,
        key_store=key_store,
        federation_client=federation_client,
        resident=resident,
        federation_sender=sender,
        remote_queries=remote_queries,
        directory=directory,
        # spaces: children we are not in are asked of their via servers
        hierarchy=HierarchyService(HierarchyStore(db, config.server_name), config.server_name,
                                   remote_queries.hierarchy if federating else None),
        room_dag=RoomDagService(RoomDagStore(db)),
        receiver=FederationReceiver(
            config.server_name, events, persister, key_store, federation_client, inbound,
            conversation.typing, conversation.receipts,
        ),
        invites=InviteReceiver(
            config.server_name, signing_key, events, persister, key_store, inbound, notifier,
            accounts.store.user_exists,
        ),
    )
    services.sync.remote_invite_state = inbound.invite_state
    # unread counts leave out what the user may not see by the state at each event
    conversation.unread.hidden_events = services.history.hidden_events
    services.receiver.missing_events_limit = fed.missing_events_limit
    if config.federation_listener.enabled:  # rooms joined with a partial state: their member list afterwards
        partial_store = PartialStateStore(db)
        resync = services.partial_state = PartialStateResync(
            config.server_name, partial_store, events, services.receiver.fetcher, stream, persister,
            InstanceStore(db), instance_id, retry_ms=fed.partial_state_retry_ms,
        )
        remote_rooms.partial_state_joins = fed.partial_state_joins
        remote_rooms.partial_joined.append(resync.kick)
        services.sync.partial_rooms = PartialRoomsView(partial_store, notifier).sync_view
    if sender is not None:  # typing, receipts and presence across servers
        EphemeralFederation(
            config.server_name, EduOutboxStore(db), sender.wake, queue.allowed_servers_in_room, rooms,
            conversation.presence.store, notifier, presence_enabled=config.presence.enabled,
        ).connect(conversation.typing, conversation.receipts, conversation.presence, services.receiver)
    services.resident.acls = services.receiver.acls = services.invites.acls = ServerAcls(rooms)
    if federating:  # /messages past the oldest event we have: backfill from the room's servers
        services.history.backfill = Backfiller(
            config.server_name, events, BackfillStore(db), persister, services.receiver.fetcher, key_store,
            federation_client, queue,
        ).backfill
    if federating:  # E2EE EDUs from other servers: to-device messages, device lists, cross-signing keys
        e2e_fed = e2e.federation
        handlers = {"m.direct_to_device": e2e_fed.on_direct_to_device,
                    "m.device_list_update": e2e_fed.on_device_list_update,
                    "m.signing_key_update": e2e_fed.on_signing_key_update}
        for edu_type, handler in handlers.items():
            services.receiver.edu_handlers[edu_type] = _ignoring_result(handler)
    return services


def _ignoring_result(handler: Callable[[str, Any], Awaitable[object]]) -> Callable[[str, Any], Awaitable[None]]:
    async def run(origin: str, content: Any) -> None:
        await handler(origin, content)

    return run


def build_client_app(config: Config, services: Services, metrics: Metrics | None = None) -> web.Application:
    observe = metrics.observe if metrics is not None else None
    app = web.Application(
        middlewares=[make_matrix_middleware(config.slow_request_ms, observe)],
        client_max_size=config.limits.max_request_body_bytes,
        handler_args=HTTP_HANDLER_ARGS,
    )
    HealthRoutes(HealthService(services.db)).register_routes(app.router)
    if metrics is not None and not config.metrics.separate_listener:
        app.router.add_get(config.metrics.path, metrics.scrape)
    discovery = DiscoveryRoutes(config.server_name, config.client_base_url, delegated_server_name(config))
    discovery.register_routes(app.router)
    AccountRoutes(
        services.accounts,
        services.auth,
        login_limiter=RateLimiter(config.limits.login_per_second, config.limits.login_burst),
        register_limiter=RateLimiter(config.limits.register_per_second, config.limits.register_burst),
        well_known=discovery.client_well_known,
    ).register_routes(app.router)
    SyncRoutes(
        services.auth,
        services.sync,
        services.conversation.filters.get_filter,
        services.conversation.presence.set_presence_from_sync,
        timing=config.metrics.sync_timing,
    ).register_routes(app.router)
    room_routes = RoomRoutes(
        services.auth, services.room_service, services.membership, services.history, services.rooms
    )
    if services.partial_state is not None:  # /members of a room joined with a partial state
        room_routes.wait_for_members = services.partial_state.wait_until_complete
    room_routes.register_routes(app.router)
    DirectoryRoutes(
        services.auth,
        services.directory,
        RelationsService(services.events, services.history),
        UpgradeService(services.room_service, services.rooms),
    ).register_routes(app.router)
    HierarchyRoutes(services.auth, services.hierarchy).register_routes(app.router)
    # conversation features
    register_conversation_routes(app.router, services.conversation, services.auth)
    # uploads stream to disk with their own limit (media.max_upload_bytes):
    # client_max_size above bounds only bodies read whole
    MediaRoutes(services.media, services.auth).register_routes(app.router)
    MediaAdminRoutes(services.media, services.auth).register_routes(app.router)
    # end-to-end encryption
    register_e2e_routes(app.router, services.e2e, services.accounts, services.auth)
    # server administration
    UserAdminRoutes(services.user_admin, services.auth).register_routes(app.router)
    TokenAdminRoutes(services.token_admin, services.auth).register_routes(app.router)
    RoomAdminRoutes(services.room_admin, services.auth).register_routes(app.router)
    RoomDagAdminRoutes(services.room_dag, services.auth).register_routes(app.router)
    # the built-in web chat page and DAG viewer
    if config.web.enabled:
        WebRoutes().register_routes(app.router)
    return app


def build_federation_app(config: Config, services: Services, metrics: Metrics | None = None) -> web.Application:
    """The federation listener: key routes, server-server routes, and the
    .well-known delegation; anything else answers 404 M_UNRECOGNIZED."""
    observe = metrics.observe if metrics is not None else None
    app = web.Application(
        middlewares=[make_matrix_middleware(config.slow_request_ms, observe)],
        client_max_size=config.limits.max_request_body_bytes,
        handler_args=HTTP_HANDLER_ARGS,
    )
    KeyRoutes(services.local_keys, services.key_store).register_routes(app.router)
    sender = services.federation_sender
    # bodies read whole by the routes below: this limit, PUT /send its own
    auth = FederationAuth(
        services.key_store, config.server_name, sender.destination_talked if sender is not None else None,
        max_body_bytes=config.limits.max_request_body_bytes,
    )
    FederationRoutes(auth, services.conversation.profiles, services.rooms, config.server_name,
                     services.directory).register_routes(app.router)
    FederationMediaRoutes(auth, services.media).register_routes(app.router)
    HierarchyFederationRoutes(auth, services.hierarchy).register_routes(app.router)
    MediaRoutes(services.media, services.auth).register_legacy_downloads(app.router)
    TransactionRoutes(auth, services.receiver).register_routes(app.router)
    InviteRoutes(auth, services.invites).register_routes(app.router)
    E2EFederationRoutes(auth, services.e2e.federation).register_routes(app.router)
    ResidentRoutes(auth, services.resident).register_routes(app.router)
    discovery = DiscoveryRoutes(config.server_name, config.client_base_url, delegated_server_name(config))
    app.router.add_get("/.well-known/matrix/server", discovery.well_known_server)
    return app


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
