"""Account data (global and per room) and room tags."""

from __future__ import annotations

from aiohttp import web

from ...services.account_data import AccountDataService
from ...services.accounts import Requester
from ...storage.account_data import GLOBAL
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import require_self, room_id_param


class AccountDataRoutes:
    def __init__(self, account_data: AccountDataService, auth: TokenAuth) -> None:
        self.account_data = account_data
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        user = "/user/{user_id}"
        room = user + "/rooms/{room_id}"
        add_client_route(router, "GET", user + "/account_data/{type}", authed(a, self.get_global))
        add_client_route(router, "PUT", user + "/account_data/{type}", authed(a, self.put_global))
        add_client_route(router, "GET", room + "/account_data/{type}", authed(a, self.get_room))
        add_client_route(router, "PUT", room + "/account_data/{type}", authed(a, self.put_room))
        add_client_route(router, "GET", room + "/tags", authed(a, self.get_tags))
        add_client_route(router, "PUT", room + "/tags/{tag}", authed(a, self.put_tag))
        add_client_route(router, "DELETE", room + "/tags/{tag}", authed(a, self.delete_tag))

    async def get_global(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "get account data")
        return json_response(await self.account_data.get(user_id, GLOBAL, request.match_info["type"]))

    async def put_global(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "add account data")
        body = await read_json_object(request)
        await self.account_data.put_from_client(user_id, GLOBAL, request.match_info["type"], body)
        return json_response({})

    async def get_room(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "get account data")
        room_id = room_id_param(request)
        return json_response(await self.account_data.get(user_id, room_id, request.match_info["type"]))

    async def put_room(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "add account data")
        room_id = room_id_param(request)
        body = await read_json_object(request)
        await self.account_data.put_from_client(user_id, room_id, request.match_info["type"], body)
        return json_response({})

    async def get_tags(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "get tags")
        room_id = room_id_param(request)
        return json_response({"tags": await self.account_data.get_tags(user_id, room_id)})

    async def put_tag(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "add tags")
        room_id = room_id_param(request)
        body = await read_json_object(request, "tag")
        await self.account_data.set_tag(user_id, room_id, request.match_info["tag"], body)
        return json_response({})

    async def delete_tag(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "remove tags")
        room_id = room_id_param(request)
        await self.account_data.remove_tag(user_id, room_id, request.match_info["tag"])
        return json_response({})
