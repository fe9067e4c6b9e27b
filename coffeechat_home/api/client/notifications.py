"""GET /notifications: the events the user was (or would have been)
notified of."""

from __future__ import annotations

from aiohttp import web

from ...services.accounts import Requester
from ...services.unread import UnreadService
from ..auth import TokenAuth, authed
from ..http import json_response, query_int
from ..routing import add_client_route

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class NotificationRoutes:
    def __init__(self, unread: UnreadService, auth: TokenAuth) -> None:
        self.unread = unread
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "GET", "/notifications", authed(self.auth, self.get_notifications))

    async def get_notifications(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT) or DEFAULT_LIMIT
        body = await self.unread.list_notifications(
            requester.user_id, request.query.get("from"), limit, request.query.get("only")
        )
        return json_response(body)
