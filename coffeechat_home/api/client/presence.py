"""Presence status."""

from __future__ import annotations

from aiohttp import web

from ...services.accounts import Requester
from ...services.presence import PresenceService
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import require_self


class PresenceRoutes:
    def __init__(self, presence: PresenceService, auth: TokenAuth) -> None:
        self.presence = presence
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "GET", "/presence/{user_id}/status", authed(self.auth, self.get_status))
        add_client_route(router, "PUT", "/presence/{user_id}/status", authed(self.auth, self.put_status))

    async def get_status(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.presence.get_presence(requester.user_id, request.match_info["user_id"]))

    async def put_status(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "set presence state")
        body = await read_json_object(request, "presence")
        await self.presence.set_presence(user_id, body["presence"], body.get("status_msg"))
        return json_response({})
