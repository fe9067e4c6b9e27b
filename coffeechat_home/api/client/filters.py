"""Filters: upload and download. /sync reads them with FilterStore.get_filter."""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from ...errors import bad_json, not_found
from ...services.accounts import Requester
from ...storage.filters import FilterStore
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import require_self


class FilterRoutes:
    def __init__(self, filters: FilterStore, auth: TokenAuth) -> None:
        self.filters = filters
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "POST", "/user/{user_id}/filter", authed(a, self.post_filter))
        add_client_route(router, "GET", "/user/{user_id}/filter/{filter_id}", authed(a, self.get_filter))

    async def post_filter(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "create filters")
        body = await read_json_object(request, "filter")
        try:
            filter_id = await self.filters.add(user_id, body, int(time.time() * 1000))
        except orjson.JSONEncodeError:
            raise bad_json("The filter is not valid Matrix JSON (integers must fit 64 bits)") from None
        return json_response({"filter_id": filter_id})

    async def get_filter(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = require_self(request, requester, "get filters")
        found = await self.filters.get_filter(user_id, request.match_info["filter_id"])
        if found is None:
            raise not_found("No such filter")
        return json_response(found)
