"""Admin routes for registration tokens (Synapse's
``/_synapse/admin/v1/registration_tokens``)."""

from __future__ import annotations

from typing import Sequence

from aiohttp import web

from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.admin.tokens import RegistrationTokenService
from ..auth import TokenAuth
from ..http import json_response, read_json_object
from . import V1, AdminRoutes, Route, optional

PATH = V1 + "/registration_tokens"


class TokenAdminRoutes(AdminRoutes):
    def __init__(self, tokens: RegistrationTokenService, auth: TokenAuth) -> None:
        super().__init__(auth)
        self.tokens = tokens

    def routes(self) -> Sequence[Route]:
        return [
            ("GET", PATH, self.list),
            ("POST", PATH + "/new", self.create),
            ("GET", PATH + "/{token}", self.get),
            ("PUT", PATH + "/{token}", self.update),
            ("DELETE", PATH + "/{token}", self.delete),
        ]

    async def list(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        raw = request.query.get("valid")
        if raw not in (None, "true", "false"):
            raise invalid_param("valid must be true or false")
        tokens = await self.tokens.list(None if raw is None else raw == "true")
        return json_response({"registration_tokens": [t.to_json() for t in tokens]})

    async def create(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, allow_empty=True)
        length = optional(body, "length", int, "an integer")
        token = await self.tokens.create(
            optional(body, "token", str, "a string"),
            16 if length is None else length,
            optional(body, "uses_allowed", int, "an integer or null"),
            optional(body, "expiry_time", int, "an integer or null"),
        )
        return json_response(token.to_json())

    async def get(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response((await self.tokens.get(request.match_info["token"])).to_json())

    async def update(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, allow_empty=True)
        token = await self.tokens.update(
            request.match_info["token"],
            uses_allowed=optional(body, "uses_allowed", int, "an integer or null"),
            set_uses="uses_allowed" in body,
            expiry_time=optional(body, "expiry_time", int, "an integer or null"),
            set_expiry="expiry_time" in body,
        )
        return json_response(token.to_json())

    async def delete(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await self.tokens.delete(request.match_info["token"])
        return json_response({})
