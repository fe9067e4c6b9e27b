"""GET /capabilities."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...protocol.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from ...services.accounts import Requester
from ..auth import TokenAuth, authed
from ..http import json_response
from ..routing import add_client_route


def capabilities() -> dict[str, Any]:
    return {
        "m.change_password": {"enabled": True},
        "m.room_versions": {
            "default": DEFAULT_ROOM_VERSION.identifier,
            "available": {v: "stable" for v in KNOWN_ROOM_VERSIONS},
        },
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.profile_fields": {"enabled": True},
        "m.3pid_changes": {"enabled": False},
        "m.get_login_token": {"enabled": False},
    }


class CapabilitiesRoutes:
    def __init__(self, auth: TokenAuth) -> None:
        self.auth = auth
        self.body = {"capabilities": capabilities()}

    def register_routes(self, router: web.UrlDispatcher) -> None:
        add_client_route(router, "GET", "/capabilities", authed(self.auth, self.get_capabilities))

    async def get_capabilities(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response(self.body)
