"""``PUT /_matrix/federation/v1/send/{txnId}``: transactions of PDUs and
EDUs pushed to us (services/federation/receiver.py does the work)."""

from __future__ import annotations

from aiohttp import web

from ...errors import MatrixError
from ...services.federation.receiver import BadTransaction, FederationReceiver
from ..http import json_response
from .auth import FEDERATION_BODY, FederationAuth


class TransactionRoutes:
    def __init__(self, auth: FederationAuth, receiver: FederationReceiver) -> None:
        self.auth = auth
        self.receiver = receiver

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_put("/_matrix/federation/v1/send/{txn_id}", self.auth(self.send))

    async def send(self, request: web.Request, origin: str) -> web.StreamResponse:
        txn_id = request.match_info["txn_id"]
        try:
            answer = await self.receiver.on_transaction(origin, txn_id, request[FEDERATION_BODY])
        except BadTransaction as e:
            raise MatrixError(400, "M_BAD_JSON", str(e)) from None
        return json_response(answer)
