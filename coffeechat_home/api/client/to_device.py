"""PUT /sendToDevice/{eventType}/{txnId}."""

from __future__ import annotations

from aiohttp import web

from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.e2e.to_device import ToDeviceService
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route

MAX_ID_LENGTH = 255


class ToDeviceRoutes:
    def __init__(self, to_device: ToDeviceService, auth: TokenAuth) -> None:
        self.to_device = to_device
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "PUT", "/sendToDevice/{event_type}/{txn_id}", authed(self.auth, self.send))

    async def send(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        event_type = request.match_info["event_type"]
        txn_id = request.match_info["txn_id"]
        if not event_type or len(event_type) > MAX_ID_LENGTH:
            raise invalid_param("event type must be 1 to 255 characters")
        if not txn_id or len(txn_id) > MAX_ID_LENGTH:
            raise invalid_param("txnId must be 1 to 255 characters")
        body = await read_json_object(request, "send_to_device")
        await self.to_device.send(requester, event_type, txn_id, body["messages"])
        return json_response({})
