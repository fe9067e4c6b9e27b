"""Server-side key backup: /room_keys/version[/{version}] and
/room_keys/keys[/{roomId}[/{sessionId}]]."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import bad_json
from ...protocol.canonical import check_canonical_json_values
from ...protocol.errors import CanonicalJSONError
from ...services.accounts import Requester
from ...services.e2e.key_backup import KeyBackupService, room_key
from ...storage.key_backup import RoomKey
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route
from .paths import room_id_param


def _checked(body: dict[str, Any]) -> dict[str, Any]:
    try:
        check_canonical_json_values(body)
    except CanonicalJSONError as e:
        raise bad_json(str(e)) from None
    return body


class KeyBackupRoutes:
    def __init__(self, backup: KeyBackupService, auth: TokenAuth) -> None:
        self.backup = backup
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "POST", "/room_keys/version", authed(a, self.create_version))
        add_client_route(router, "GET", "/room_keys/version", authed(a, self.get_version))
        add_client_route(router, "GET", "/room_keys/version/{version}", authed(a, self.get_version))
        add_client_route(router, "PUT", "/room_keys/version/{version}", authed(a, self.update_version))
        add_client_route(router, "DELETE", "/room_keys/version/{version}", authed(a, self.delete_version))
        for suffix in ("", "/{room_id}", "/{room_id}/{session_id}"):
            add_client_route(router, "PUT", "/room_keys/keys" + suffix, authed(a, self.put_keys))
            add_client_route(router, "GET", "/room_keys/keys" + suffix, authed(a, self.get_keys))
            add_client_route(router, "DELETE", "/room_keys/keys" + suffix, authed(a, self.delete_keys))

    # -- versions ------------------------------------------------------------
    async def create_version(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = _checked(await read_json_object(request, "room_keys_version"))
        version = await self.backup.create(requester.user_id, body["algorithm"], body["auth_data"])
        return json_response({"version": version})

    async def get_version(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(await self.backup.get(requester.user_id, request.match_info.get("version")))

    async def update_version(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = _checked(await read_json_object(request, "room_keys_version"))
        await self.backup.update(requester.user_id, request.match_info["version"], body)
        return json_response({})

    async def delete_version(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await self.backup.delete(requester.user_id, request.match_info["version"])
        return json_response({})

    # -- keys -------------------------------------------------------------------
    @staticmethod
    def _where(request: web.Request) -> tuple[str | None, str | None]:
        room_id = room_id_param(request) if "room_id" in request.match_info else None
        return room_id, request.match_info.get("session_id")

    async def put_keys(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        room_id, session_id = self._where(request)
        keys: list[RoomKey] = []
        if session_id is not None and room_id is not None:
            data = _checked(await read_json_object(request, "room_keys_session"))
            keys.append(room_key(room_id, session_id, data))
        elif room_id is not None:
            body = _checked(await read_json_object(request, "room_keys_room"))
            keys.extend(room_key(room_id, s, d) for s, d in body["sessions"].items())
        else:
            body = _checked(await read_json_object(request, "room_keys_all"))
            keys.extend(
                room_key(r, s, d) for r, room in body["rooms"].items() for s, d in room["sessions"].items()
            )
        result = await self.backup.put_keys(requester.user_id, request.query.get("version"), keys)
        return json_response(result)

    async def get_keys(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        room_id, session_id = self._where(request)
        result = await self.backup.get_keys(requester.user_id, request.query.get("version"), room_id, session_id)
        return json_response(result)

    async def delete_keys(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        room_id, session_id = self._where(request)
        result = await self.backup.delete_keys(requester.user_id, request.query.get("version"), room_id, session_id)
        return json_response(result)
