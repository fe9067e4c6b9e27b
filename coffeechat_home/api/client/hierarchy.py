"""``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` (spaces)."""

from __future__ import annotations

from aiohttp import web

from ...services.accounts import Requester
from ...services.hierarchy import HierarchyService
from ..auth import TokenAuth, authed
from ..http import json_response, query_bool, query_int
from ..routing import CLIENT_V1, add_client_route


class HierarchyRoutes:
    def __init__(self, auth: TokenAuth, hierarchy: HierarchyService) -> None:
        self.auth = auth
        self.hierarchy = hierarchy

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "GET", "/rooms/{room_id}/hierarchy", authed(self.auth, self.get_hierarchy),
                         prefixes=CLIENT_V1)

    async def get_hierarchy(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.hierarchy.client_hierarchy(
            requester.user_id, request.match_info["room_id"],
            suggested_only=query_bool(request, "suggested_only"),
            max_depth=query_int(request, "max_depth", minimum=0),
            limit=query_int(request, "limit", minimum=1),
            from_token=request.query.get("from"),
        ))
