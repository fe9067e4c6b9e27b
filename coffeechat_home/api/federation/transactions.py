"""``PUT /_matrix/federation/v1/send/{txnId}``: transactions of PDUs and
EDUs pushed to us (services/federation/receiver.py does the work)."""

from __future__ import annotations

from aiohttp import web

from ...errors import MatrixError
from ...services.federation.receiver import MAX_EDUS, MAX_PDUS, BadTransaction, FederationReceiver
from ..http import json_response
from .auth import FEDERATION_BODY, FederationAuth


# PDUs are at most 64 KiB (spec: size limits); a transaction of the most
# PDUs and EDUs it may hold, with EDUs as large, and room for the envelope
MAX_PDU_BYTES = 65_536
MAX_TRANSACTION_BYTES = (MAX_PDUS + MAX_EDUS) * MAX_PDU_BYTES + MAX_PDU_BYTES


class TransactionRoutes:
    def __init__(self, auth: FederationAuth, receiver: FederationReceiver) -> None:
        self.auth = auth
        self.receiver = receiver

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_put("/_matrix/federation/v1/send/{txn_id}",
                       self.auth(self.send, max_body_bytes=MAX_TRANSACTION_BYTES))

    async def send(self, request: web.Request, origin: str) -> web.StreamResponse:
        txn_id = request.match_info["txn_id"]
        if "\x00" in txn_id:  # no text column holds it
            raise MatrixError(400, "M_INVALID_PARAM", "The transaction id holds a NUL character")
        try:
            answer = await self.receiver.on_transaction(origin, txn_id, request[FEDERATION_BODY])
        except BadTransaction as e:
            raise MatrixError(400, "M_BAD_JSON", str(e)) from None
        return json_response(answer)
