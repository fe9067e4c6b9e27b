"""``GET /_matrix/federation/v1/hierarchy/{roomId}`` (spaces)."""

from __future__ import annotations

from aiohttp import web

from ...services.hierarchy import HierarchyService
from ..http import json_response, query_bool
from .auth import FederationAuth


class HierarchyFederationRoutes:
    def __init__(self, auth: FederationAuth, hierarchy: HierarchyService) -> None:
        self.auth = auth
        self.hierarchy = hierarchy

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_matrix/federation/v1/hierarchy/{room_id}", self.auth(self.get_hierarchy))

    async def get_hierarchy(self, request: web.Request, origin: str) -> web.StreamResponse:
        return json_response(await self.hierarchy.federation_hierarchy(
            origin, request.match_info["room_id"], query_bool(request, "suggested_only")))
