"""Profiles. Reads need no access token (the spec gives them no security)."""

from __future__ import annotations

from aiohttp import web

from ...errors import missing_param
from ...services.accounts import Requester
from ...services.profiles import ProfileService, check_key
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import require_self


class ProfileRoutes:
    def __init__(self, profiles: ProfileService, auth: TokenAuth) -> None:
        self.profiles = profiles
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "GET", "/profile/{user_id}", self.get_profile)
        add_client_route(router, "GET", "/profile/{user_id}/{key}", self.get_field)
        add_client_route(router, "PUT", "/profile/{user_id}/{key}", authed(a, self.put_field))
        add_client_route(router, "DELETE", "/profile/{user_id}/{key}", authed(a, self.delete_field))

    async def get_profile(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.profiles.require_profile(request.match_info["user_id"]))

    async def get_field(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        value = await self.profiles.get_field(request.match_info["user_id"], key)
        return json_response({key: value})

    async def put_field(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "change the profile")
        key = request.match_info["key"]
        check_key(key)
        body = await read_json_object(request, "profile_field")
        if key not in body:
            raise missing_param(f"The body must hold the property {key!r}")
        await self.profiles.set_field(user_id, key, body[key])
        return json_response({})

    async def delete_field(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "change the profile")
        await self.profiles.delete_field(user_id, request.match_info["key"])
        return json_response({})
