"""Federation routes served so far: version, the profile and room alias
queries answered from local data, and our public room directory."""

from __future__ import annotations

from aiohttp import web

from ... import __version__
from ...errors import MatrixError, invalid_param, missing_param, not_found
from ...protocol.identifiers import InvalidIdentifier, parse_room_alias, parse_user_id
from ...services.profiles import MEMBER_FIELDS, ProfileService
from ...storage.rooms import RoomStore
from ...services.directory import DirectoryService
from ..http import json_response, query_int
from .auth import FEDERATION_BODY, FederationAuth


class FederationRoutes:
    def __init__(self, auth: FederationAuth, profiles: ProfileService, rooms: RoomStore, server_name: str,
                 directory: DirectoryService | None = None) -> None:
        self.auth = auth
        self.profiles = profiles
        self.rooms = rooms
        self.server_name = server_name
        self.directory = directory

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_matrix/federation/v1/version", self.version)
        router.add_get("/_matrix/federation/v1/query/profile", self.auth(self.query_profile))
        router.add_get("/_matrix/federation/v1/query/directory", self.auth(self.query_directory))
        if self.directory is not None:
            router.add_get("/_matrix/federation/v1/publicRooms", self.auth(self.get_public_rooms))
            router.add_post("/_matrix/federation/v1/publicRooms", self.auth(self.post_public_rooms))

    async def version(self, request: web.Request) -> web.StreamResponse:
        return json_response({"server": {"name": "coffeechat-home", "version": __version__}})

    async def query_profile(self, request: web.Request, origin: str) -> web.StreamResponse:
        user_id = request.query.get("user_id")
        if not user_id:
            raise missing_param("user_id is required")
        try:
            if parse_user_id(user_id).server_name != self.server_name:
                raise invalid_param("The user is not on this server")
        except InvalidIdentifier as e:
            raise invalid_param(str(e)) from None
        field = request.query.get("field")
        if field is not None and field not in MEMBER_FIELDS:
            raise invalid_param(f"field must be one of {', '.join(MEMBER_FIELDS)}")
        profile = await self.profiles.get_profile(user_id)
        if profile is None:
            raise not_found("Profile not found")
        if field is not None:
            if field not in profile:
                raise not_found(f"The user has no {field}")
            return json_response({field: profile[field]})
        return json_response(profile)

    async def query_directory(self, request: web.Request, origin: str) -> web.StreamResponse:
        alias = request.query.get("room_alias")
        if not alias:
            raise missing_param("room_alias is required")
        try:
            if parse_room_alias(alias).server_name != self.server_name:
                raise MatrixError(400, "M_INVALID_PARAM", "The alias is not on this server")
        except InvalidIdentifier as e:
            raise invalid_param(str(e)) from None
        room_id = await self.rooms.alias_room(alias)
        if room_id is None:
            raise not_found(f"Room alias {alias} not found")
        return json_response({"room_id": room_id, "servers": [self.server_name]})

    async def get_public_rooms(self, request: web.Request, origin: str) -> web.StreamResponse:
        assert self.directory is not None
        return json_response(await self.directory.public_rooms(
            limit=query_int(request, "limit"), since=request.query.get("since"), search=None, server=None))

    async def post_public_rooms(self, request: web.Request, origin: str) -> web.StreamResponse:
        assert self.directory is not None
        body = request[FEDERATION_BODY]
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise MatrixError(400, "M_NOT_JSON", "A JSON object is required")
        limit, since, flt = body.get("limit"), body.get("since"), body.get("filter") or {}
        search = flt.get("generic_search_term") if isinstance(flt, dict) else None
        if (limit is not None and (not isinstance(limit, int) or isinstance(limit, bool))) \
                or (since is not None and not isinstance(since, str)) \
                or (search is not None and not isinstance(search, str)) or not isinstance(flt, dict):
            raise MatrixError(400, "M_BAD_JSON", "limit must be an integer, since and filter.generic_search_term strings")
        return json_response(await self.directory.public_rooms(limit=limit, since=since, search=search, server=None))
