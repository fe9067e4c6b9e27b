"""Aliases, the public room directory, relations and room upgrades."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.directory import DirectoryService
from ...services.relations import RelationsService, check_limit
from ...services.upgrade import UpgradeService
from ..auth import TokenAuth, authed
from ..http import json_response, query_int, read_json_object
from ..routing import CLIENT_V1, add_client_route


class DirectoryRoutes:
    def __init__(self, auth: TokenAuth, directory: DirectoryService, relations: RelationsService,
                 upgrades: UpgradeService) -> None:
        self.auth = auth
        self.directory = directory
        self.relations_service = relations
        self.upgrades = upgrades

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "PUT", "/directory/room/{alias}", authed(a, self.put_alias))
        add_client_route(router, "GET", "/directory/room/{alias}", self.get_alias)
        add_client_route(router, "DELETE", "/directory/room/{alias}", authed(a, self.delete_alias))
        add_client_route(router, "GET", "/rooms/{room_id}/aliases", authed(a, self.room_aliases))
        add_client_route(router, "GET", "/directory/list/room/{room_id}", self.get_visibility)
        add_client_route(router, "PUT", "/directory/list/room/{room_id}", authed(a, self.put_visibility))
        add_client_route(router, "GET", "/publicRooms", self.get_public_rooms)
        add_client_route(router, "POST", "/publicRooms", authed(a, self.post_public_rooms))
        add_client_route(router, "POST", "/rooms/{room_id}/upgrade", authed(a, self.upgrade))
        add_client_route(router, "GET", "/rooms/{room_id}/threads", authed(a, self.threads), prefixes=CLIENT_V1)
        for suffix in ("", "/{rel_type}", "/{rel_type}/{event_type}"):
            add_client_route(router, "GET", "/rooms/{room_id}/relations/{event_id}" + suffix,
                             authed(a, self.relations), prefixes=CLIENT_V1)

    async def put_alias(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "alias")
        await self.directory.create_alias(requester, request.match_info["alias"], body["room_id"])
        return json_response({})

    async def get_alias(self, request: web.Request) -> web.StreamResponse:
        return json_response(await self.directory.resolve_alias(request.match_info["alias"]))

    async def delete_alias(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await self.directory.delete_alias(requester, request.match_info["alias"])
        return json_response({})

    async def room_aliases(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response({"aliases": await self.directory.room_aliases(requester, request.match_info["room_id"])})

    async def get_visibility(self, request: web.Request) -> web.StreamResponse:
        return json_response({"visibility": await self.directory.visibility(request.match_info["room_id"])})

    async def put_visibility(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "directory_visibility", allow_empty=True)
        await self.directory.set_visibility(requester, request.match_info["room_id"], body.get("visibility", "public"))
        return json_response({})

    async def get_public_rooms(self, request: web.Request) -> web.StreamResponse:
        server = request.query.get("server")
        if server and server != self.directory.server_name:
            await self.auth.requester(request)  # asking another server: users only (as Synapse)
        return json_response(await self.directory.public_rooms(
            limit=query_int(request, "limit"), since=request.query.get("since"), search=None, server=server,
        ))

    async def post_public_rooms(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "public_rooms", allow_empty=True)
        search = (body.get("filter") or {}).get("generic_search_term")
        return json_response(await self.directory.public_rooms(
            limit=body.get("limit"), since=body.get("since"), search=search,
            server=request.query.get("server") or body.get("server"),
        ))

    async def upgrade(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "upgrade")
        new_room = await self.upgrades.upgrade(
            requester, request.match_info["room_id"], body["new_version"], body.get("additional_creators")
        )
        return json_response({"replacement_room": new_room})

    async def threads(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        include = request.query.get("include", "all")
        if include not in ("all", "participated"):
            raise invalid_param("include must be 'all' or 'participated'")
        body = await self.relations_service.threads(
            requester, request.match_info["room_id"], participated=include == "participated",
            from_token=request.query.get("from"), limit=check_limit(query_int(request, "limit", minimum=1)),
        )
        return json_response(body)

    async def relations(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        m = request.match_info
        direction = request.query.get("dir", "b")
        if direction not in ("b", "f"):
            raise invalid_param("dir must be 'b' or 'f'")
        body: dict[str, Any] = await self.relations_service.relations(
            requester, m["room_id"], m["event_id"], m.get("rel_type"), m.get("event_type"),
            from_token=request.query.get("from"), to_token=request.query.get("to"),
            limit=check_limit(query_int(request, "limit", minimum=1)), backwards=direction == "b",
        )
        return json_response(body)
