"""Receipts and read markers."""

from __future__ import annotations

from aiohttp import web

from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.receipts import ReceiptService
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import room_id_param


class ReceiptRoutes:
    def __init__(self, receipts: ReceiptService, auth: TokenAuth) -> None:
        self.receipts = receipts
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(
            router, "POST", "/rooms/{room_id}/receipt/{receipt_type}/{event_id}", authed(a, self.post_receipt)
        )
        add_client_route(router, "POST", "/rooms/{room_id}/read_markers", authed(a, self.post_read_markers))

    async def post_receipt(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        room_id = room_id_param(request)
        # Older clients send no body; the spec's body is optional content.
        body = await read_json_object(request, "receipt", allow_empty=True)
        thread_id = body.get("thread_id")
        if thread_id is not None and (not isinstance(thread_id, str) or not thread_id):
            raise invalid_param("thread_id field must be a non-empty string")
        await self.receipts.send_receipt(
            requester.user_id, room_id, request.match_info["receipt_type"], request.match_info["event_id"], thread_id
        )
        return json_response({})

    async def post_read_markers(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        room_id = room_id_param(request)
        body = await read_json_object(request, "read_markers")
        markers = {k: v for k, v in body.items() if k in ("m.fully_read", "m.read", "m.read.private")}
        await self.receipts.set_read_markers(requester.user_id, room_id, markers)
        return json_response({})
