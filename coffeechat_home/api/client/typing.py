"""Typing notifications."""

from __future__ import annotations

from aiohttp import web

from ...services.accounts import Requester
from ...services.typing import TypingService
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import require_self, room_id_param


class TypingRoutes:
    def __init__(self, typing: TypingService, auth: TokenAuth) -> None:
        self.typing = typing
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "PUT", "/rooms/{room_id}/typing/{user_id}", authed(self.auth, self.put_typing))

    async def put_typing(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "set typing state")
        room_id = room_id_param(request)
        body = await read_json_object(request, "typing")
        await self.typing.set_typing(user_id, room_id, body["typing"], body.get("timeout"))
        return json_response({})
