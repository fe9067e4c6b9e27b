"""Registration, login, logout, whoami, password, deactivation, devices."""

from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from ...errors import MatrixError, forbidden, invalid_param, not_found
from ...services.accounts import AccountService, LoginResult, Requester
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..ratelimit import RateLimiter
from ..routing import add_client_route


def _client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


class AccountRoutes:
    def __init__(
        self,
        accounts: AccountService,
        auth: TokenAuth,
        *,
        login_limiter: RateLimiter,
        register_limiter: RateLimiter,
        well_known: Callable[[web.Request], dict[str, Any]],
    ) -> None:
        self.accounts = accounts
        self.auth = auth
        self.login_limiter = login_limiter
        self.register_limiter = register_limiter
        self.well_known = well_known

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "GET", "/register", self.get_register)
        add_client_route(router, "POST", "/register", self.post_register)
        add_client_route(router, "GET", "/register/available", self.register_available)
        add_client_route(router, "GET", "/login", self.get_login)
        add_client_route(router, "POST", "/login", self.post_login)
        add_client_route(router, "POST", "/logout", authed(a, self.logout))
        add_client_route(router, "POST", "/logout/all", authed(a, self.logout_all))
        add_client_route(router, "GET", "/account/whoami", authed(a, self.whoami))
        add_client_route(router, "POST", "/account/password", authed(a, self.change_password))
        add_client_route(router, "POST", "/account/deactivate", authed(a, self.deactivate))
        add_client_route(router, "GET", "/devices", authed(a, self.list_devices))
        add_client_route(router, "GET", "/devices/{device_id}", authed(a, self.get_device))
        add_client_route(router, "PUT", "/devices/{device_id}", authed(a, self.put_device))
        add_client_route(router, "DELETE", "/devices/{device_id}", authed(a, self.delete_device))
        add_client_route(router, "POST", "/delete_devices", authed(a, self.delete_devices))

    # -- registration --------------------------------------------------------
    def _check_registration_open(self) -> None:
        if self.accounts.registration_mode == "closed":
            raise forbidden("Registration is disabled on this server")

    async def get_register(self, request: web.Request) -> web.StreamResponse:
        # Some clients probe GET /register; the spec defines only POST.
        raise MatrixError(405, "M_UNRECOGNIZED", "Use POST /register")

    async def post_register(self, request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request, "register", allow_empty=True)
        kind = request.query.get("kind", "user")
        if kind == "guest":
            raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is not enabled")
        if kind != "user":
            raise invalid_param("kind must be 'user' or 'guest'")
        self._check_registration_open()
        self.register_limiter.check(_client_ip(request))
        username = body.get("username")
        if username is not None:
            # Validate before UIA so clients learn early that a name is bad.
            await self.accounts.check_available(username)
        await self.accounts.require_uia(
            body,
            [f["stages"] for f in self.accounts.registration_flows()],
            user_id=None,
            check_stage=self.accounts.check_registration_stage,
        )
        password = body.get("password")
        if not password:
            raise MatrixError(400, "M_MISSING_PARAM", "A password is required")
        result = await self.accounts.register(
            username=username,
            password=password,
            device_id=body.get("device_id"),
            device_display_name=body.get("initial_device_display_name"),
            inhibit_login=bool(body.get("inhibit_login", False)),
            ip=_client_ip(request),
        )
        if isinstance(result, str):
            return json_response({"user_id": result, "home_server": self.accounts.server_name})
        return json_response(self._login_body(request, result))

    async def register_available(self, request: web.Request) -> web.StreamResponse:
        username = request.query.get("username")
        if not username:
            raise MatrixError(400, "M_MISSING_PARAM", "username is required")
        self.register_limiter.check(_client_ip(request))
        await self.accounts.check_available(username)
        return json_response({"available": True})

    # -- login ---------------------------------------------------------------
    async def get_login(self, request: web.Request) -> web.StreamResponse:
        return json_response({"flows": [{"type": "m.login.password"}]})

    async def post_login(self, request: web.Request) -> web.StreamResponse:
        body = await read_json_object(request, "login")
        if body["type"] != "m.login.password":
            raise MatrixError(400, "M_UNKNOWN", f"Login type {body['type']!r} is not supported")
        self.login_limiter.check(_client_ip(request))
        identifier = body.get("identifier")
        if identifier is not None:
            if identifier.get("type") != "m.id.user":
                raise MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported")
            user = identifier.get("user")
        else:
            user = body.get("user")
        password = body.get("password")
        if not isinstance(user, str) or not user:
            raise MatrixError(400, "M_MISSING_PARAM", "identifier.user is required")
        if not isinstance(password, str):
            raise MatrixError(400, "M_MISSING_PARAM", "password is required")
        user_id = await self.accounts.check_credentials(user, password)
        result = await self.accounts.login(
            user_id, body.get("device_id"), body.get("initial_device_display_name"), _client_ip(request)
        )
        return json_response(self._login_body(request, result))

    def _login_body(self, request: web.Request, result: LoginResult) -> dict[str, Any]:
        return {
            "user_id": result.user_id,
            "access_token": result.access_token,
            "device_id": result.device_id,
            "home_server": self.accounts.server_name,
            "well_known": self.well_known(request),
        }

    async def logout(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await self.accounts.logout(requester)
        return json_response({})

    async def logout_all(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        await self.accounts.logout_all(requester)
        return json_response({})

    async def whoami(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        return json_response({"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False})

    # -- password & deactivation --------------------------------------------
    async def _require_password(self, body: dict[str, Any], requester: Requester) -> None:
        await self.accounts.require_uia(
            body,
            [["m.login.password"]],
            user_id=requester.user_id,
            check_stage=self.accounts.password_stage_checker(requester.user_id),
        )

    async def change_password(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "password_change")
        await self._require_password(body, requester)
        await self.accounts.change_password(requester, body["new_password"], body.get("logout_devices", True))
        return json_response({})

    async def deactivate(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "deactivate", allow_empty=True)
        await self._require_password(body, requester)
        await self.accounts.deactivate(requester.user_id)
        return json_response({"id_server_unbind_result": "no-support"})

    # -- devices ---------------------------------------------------------------
    @staticmethod
    def _device_json(d: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"device_id": d.device_id}
        if d.display_name is not None:
            out["display_name"] = d.display_name
        if d.last_seen_ip is not None:
            out["last_seen_ip"] = d.last_seen_ip
        if d.last_seen_ts is not None:
            out["last_seen_ts"] = d.last_seen_ts
        return out

    async def list_devices(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        devices = await self.accounts.store.list_devices(requester.user_id)
        return json_response({"devices": [self._device_json(d) for d in devices]})

    async def get_device(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        device = await self.accounts.store.get_device(requester.user_id, request.match_info["device_id"])
        if device is None:
            raise not_found("Device not found")
        return json_response(self._device_json(device))

    async def put_device(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "device_update", allow_empty=True)
        device_id = request.match_info["device_id"]
        if "display_name" in body:
            found = await self.accounts.store.rename_device(requester.user_id, device_id, body["display_name"])
        else:
            found = await self.accounts.store.get_device(requester.user_id, device_id) is not None
        if not found:
            raise not_found("Device not found")
        return json_response({})

    async def delete_device(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "device_delete", allow_empty=True)
        device_id = request.match_info["device_id"]
        if await self.accounts.store.get_device(requester.user_id, device_id) is None:
            raise not_found("Device not found")
        await self._require_password(body, requester)
        await self.accounts.delete_devices(requester.user_id, [device_id])
        return json_response({})

    async def delete_devices(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "delete_devices")
        await self._require_password(body, requester)
        await self.accounts.delete_devices(requester.user_id, list(body["devices"]))
        return json_response({})
