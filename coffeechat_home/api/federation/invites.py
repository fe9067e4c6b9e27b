"""``PUT /_matrix/federation/v2/invite/{roomId}/{eventId}``: another
server invites one of our users (services/federation/invites.py)."""

from __future__ import annotations

from aiohttp import web

from ...services.federation.invites import InviteReceiver
from ..http import json_response
from .auth import FEDERATION_BODY, FederationAuth


class InviteRoutes:
    def __init__(self, auth: FederationAuth, invites: InviteReceiver) -> None:
        self.auth = auth
        self.invites = invites

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_put("/_matrix/federation/v2/invite/{room_id}/{event_id}", self.auth(self.invite))

    async def invite(self, request: web.Request, origin: str) -> web.StreamResponse:
        answer = await self.invites.on_invite(
            origin, request.match_info["room_id"], request.match_info["event_id"], request[FEDERATION_BODY]
        )
        return json_response(answer)
