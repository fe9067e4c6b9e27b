"""Route registration: the client listener's app and the federation
listener's app, built from the services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .api.client.account import AccountRoutes
from .api.client.discovery import DiscoveryRoutes
from .api.middleware import make_matrix_middleware
from .api.ratelimit import RateLimiter
from .config import Config
from .api.health import HealthRoutes
from .services.health import HealthService
from .api.admin.tokens import TokenAdminRoutes
from .api.admin.users import UserAdminRoutes
from .api.admin.rooms import RoomAdminRoutes
from .api.admin.room_dag import RoomDagAdminRoutes
from .api.web import WebRoutes
from .api.client.rooms import RoomRoutes
from .api.client.sync import SyncRoutes
from .api.client.directory import DirectoryRoutes
from .api.client.hierarchy import HierarchyRoutes
from .api.federation.hierarchy import HierarchyFederationRoutes
from .services.relations import RelationsService
from .services.upgrade import UpgradeService
# conversation features
from .api.client.conversation import register_conversation_routes
# media repository
from .api.admin.media import MediaAdminRoutes
from .api.client.media import MediaRoutes
# end-to-end encryption
from .api.client.e2e import register_e2e_routes
# federation: keys, outbound client, inbound authentication
from .api.federation.auth import FederationAuth
from .api.federation.e2e import E2EFederationRoutes
from .api.federation.keys import KeyRoutes
from .api.federation.media import FederationMediaRoutes
from .api.federation.rooms import ResidentRoutes
from .api.federation.routes import FederationRoutes
from .api.federation.invites import InviteRoutes
from .api.federation.transactions import TransactionRoutes
from .tls import delegated_server_name
from .wiring import Services

if TYPE_CHECKING:  # imported when metrics are on (prometheus_client: about 1.5 MB resident)
    from .api.metrics import Metrics

# Long access tokens and query strings must not hit aiohttp's 8 KiB limits.
HTTP_HANDLER_ARGS = {"max_line_size": 65536, "max_field_size": 65536}


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
