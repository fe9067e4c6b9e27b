"""Federation routes of end-to-end encryption: other servers asking for
our users' device and cross-signing keys, claiming their one-time keys,
and reading a user's device list (a device-list resync)."""

from __future__ import annotations

from aiohttp import web

from ...services.e2e.federation import E2EFederation
from ..http import json_response
from .auth import FEDERATION_BODY, FederationAuth


class E2EFederationRoutes:
    def __init__(self, auth: FederationAuth, e2e: E2EFederation) -> None:
        self.auth = auth
        self.e2e = e2e

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/_matrix/federation/v1/user/keys/query", self.auth(self.keys_query))
        router.add_post("/_matrix/federation/v1/user/keys/claim", self.auth(self.keys_claim))
        router.add_get("/_matrix/federation/v1/user/devices/{user_id}", self.auth(self.user_devices))

    async def keys_query(self, request: web.Request, origin: str) -> web.StreamResponse:
        return json_response(await self.e2e.serve_query(origin, request[FEDERATION_BODY]))

    async def keys_claim(self, request: web.Request, origin: str) -> web.StreamResponse:
        return json_response(await self.e2e.serve_claim(origin, request[FEDERATION_BODY]))

    async def user_devices(self, request: web.Request, origin: str) -> web.StreamResponse:
        return json_response(await self.e2e.serve_user_devices(origin, request.match_info["user_id"]))
