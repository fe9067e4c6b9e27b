"""Admin routes for users: list, query, create/modify, deactivate, reset a
password, whois and devices; and the server version."""

from __future__ import annotations

from typing import Any, Sequence

from aiohttp import web

from ... import __version__
from ...errors import invalid_param
from ...services.accounts import Requester
from ...services.admin.users import UserAdminService, UserChange, user_json
from ...storage.accounts import Device
from ..auth import TokenAuth
from ..http import json_response, query_bool, read_json_object
from . import V1, V2, AdminRoutes, Route, optional, paging


def _device_json(d: Device) -> dict[str, Any]:
    return {"device_id": d.device_id, "display_name": d.display_name, "last_seen_ip": d.last_seen_ip,
            "last_seen_ts": d.last_seen_ts, "last_seen_user_agent": None, "user_id": d.user_id}


class UserAdminRoutes(AdminRoutes):
    def __init__(self, users: UserAdminService, auth: TokenAuth) -> None:
        super().__init__(auth)
        self.users = users

    def register_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get(V1 + "/server_version", self.server_version)
        super().register_routes(router)

    def routes(self) -> Sequence[Route]:
        return [
            ("GET", V2 + "/users", self.list_users),
            ("GET", V2 + "/users/{user_id}", self.get_user),
            ("PUT", V2 + "/users/{user_id}", self.put_user),
            ("GET", V2 + "/users/{user_id}/devices", self.devices),
            ("DELETE", V2 + "/users/{user_id}/devices/{device_id}", self.delete_device),
            ("POST", V1 + "/deactivate/{user_id}", self.deactivate),
            ("POST", V1 + "/reset_password/{user_id}", self.reset_password),
            ("GET", V1 + "/whois/{user_id}", self.whois),
            ("GET", V1 + "/users/{user_id}/admin", self.get_admin),
        ]

    async def server_version(self, request: web.Request) -> web.StreamResponse:
        # no token needed, as in Synapse
        return json_response({"server_version": f"coffeechat-home {__version__}"})

    async def list_users(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        offset, limit = paging(request)
        name = request.query.get("name") or request.query.get("user_id") or None
        users, total = await self.users.list_users(offset, limit, name, query_bool(request, "deactivated", False))
        body: dict[str, Any] = {"users": [user_json(u) for u in users], "total": total}
        if offset + len(users) < total:
            body["next_token"] = str(offset + len(users))
        return json_response(body)

    async def get_user(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user = await self.users.get_user(self.users.local_user_id(request.match_info["user_id"]))
        return json_response(user_json(user))

    async def get_admin(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user = await self.users.get_user(self.users.local_user_id(request.match_info["user_id"]))
        return json_response({"admin": user.is_admin})

    async def put_user(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request)
        logout = optional(body, "logout_devices", bool, "a boolean")
        change = UserChange(
            password=optional(body, "password", str, "a string"),
            logout_devices=True if logout is None else logout,
            displayname=optional(body, "displayname", str, "a string"),
            avatar_url=optional(body, "avatar_url", str, "a string"),
            admin=optional(body, "admin", bool, "a boolean"),
            deactivated=optional(body, "deactivated", bool, "a boolean"),
            erase=bool(optional(body, "erase", bool, "a boolean")),
        )
        user, created = await self.users.put_user(request.match_info["user_id"], change)
        return json_response(user_json(user), status=201 if created else 200)

    async def deactivate(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, allow_empty=True)
        erase = bool(optional(body, "erase", bool, "a boolean"))
        await self.users.deactivate(self.users.local_user_id(request.match_info["user_id"]), erase=erase)
        return json_response({"id_server_unbind_result": "success"})

    async def reset_password(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request)
        password = optional(body, "new_password", str, "a string")
        if not password:
            raise invalid_param("new_password is required")
        logout = optional(body, "logout_devices", bool, "a boolean")
        user_id = self.users.local_user_id(request.match_info["user_id"])
        await self.users.set_password(user_id, password, True if logout is None else logout)
        return json_response({})

    async def whois(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = self.users.local_user_id(request.match_info["user_id"])
        devices = await self.users.devices(user_id)
        sessions = [{"connections": [{"ip": d.last_seen_ip, "last_seen": d.last_seen_ts, "user_agent": None}]}
                    for d in devices]
        return json_response({"user_id": user_id, "devices": {"": {"sessions": sessions}}})

    async def devices(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        devices = await self.users.devices(self.users.local_user_id(request.match_info["user_id"]))
        return json_response({"devices": [_device_json(d) for d in devices], "total": len(devices)})

    async def delete_device(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        user_id = self.users.local_user_id(request.match_info["user_id"])
        await self.users.delete_device(user_id, request.match_info["device_id"])
        return json_response({})
