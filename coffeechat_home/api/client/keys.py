"""/keys/upload, /keys/query, /keys/claim, /keys/changes and cross-signing
(/keys/device_signing/upload, /keys/signatures/upload)."""

from __future__ import annotations

from aiohttp import web

from ...errors import MatrixError
from ...services.accounts import AccountService, Requester
from ...services.e2e.cross_signing import CrossSigningService
from ...services.e2e.remote_keys import request_timeout_s
from ...services.e2e.keys import KeyService
from ...services.history_tokens import parse_token
from ..auth import TokenAuth, authed
from ..http import json_response, read_json_object
from ..routing import add_client_route


class KeyRoutes:
    def __init__(
        self, keys: KeyService, cross_signing: CrossSigningService, accounts: AccountService, auth: TokenAuth
    ) -> None:
        self.keys = keys
        self.cross_signing = cross_signing
        self.accounts = accounts
        self.auth = auth

    def register_routes(self, router: web.UrlDispatcher) -> None:
        a = self.auth
        add_client_route(router, "POST", "/keys/upload", authed(a, self.upload))
        add_client_route(router, "POST", "/keys/upload/{device_id}", authed(a, self.upload))  # legacy r0 form
        add_client_route(router, "POST", "/keys/query", authed(a, self.query))
        add_client_route(router, "POST", "/keys/claim", authed(a, self.claim))
        add_client_route(router, "GET", "/keys/changes", authed(a, self.changes))
        add_client_route(router, "POST", "/keys/device_signing/upload", authed(a, self.device_signing_upload))
        add_client_route(router, "POST", "/keys/signatures/upload", authed(a, self.signatures_upload))

    async def upload(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        device_id = request.match_info.get("device_id")
        if device_id is not None and device_id != requester.device_id:
            raise MatrixError(400, "M_INVALID_PARAM", "Keys can only be uploaded for the requesting device")
        body = await read_json_object(request, "keys_upload", allow_empty=True)
        counts = await self.keys.upload(requester, body)
        return json_response({"one_time_key_counts": counts})

    async def query(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "keys_query")
        return json_response(await self.keys.query(requester, body["device_keys"], request_timeout_s(body)))

    async def claim(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "keys_claim")
        return json_response(await self.keys.claim(body["one_time_keys"], request_timeout_s(body)))

    async def changes(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        since = parse_token(request.query.get("from"), "from")
        upto = parse_token(request.query.get("to"), "to")
        if since is None or upto is None:
            raise MatrixError(400, "M_MISSING_PARAM", "from and to are required")
        return json_response(await self.keys.changes(requester, since, upto))

    async def device_signing_upload(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "device_signing_upload")
        user_id = requester.user_id
        keys = self.cross_signing.parse_upload(user_id, body)
        if await self.cross_signing.needs_auth(user_id, keys):
            # Replacing cross-signing keys needs the password, as for a
            # password change or a device deletion.
            await self.accounts.require_uia(
                body, [["m.login.password"]], user_id=user_id,
                check_stage=self.accounts.password_stage_checker(user_id),
            )
        await self.cross_signing.upload_keys(user_id, keys)
        return json_response({})

    async def signatures_upload(self, request: web.Request, requester: Requester) -> web.StreamResponse:
        body = await read_json_object(request, "signatures_upload")
        failures = await self.cross_signing.upload_signatures(requester, body)
        return json_response({"failures": failures})
