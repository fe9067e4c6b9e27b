"""Access-token checks for client routes."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from ..errors import MatrixError
from ..services.accounts import AccountService, Requester
from .http import USER_ID


def access_token_of(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise MatrixError(401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <token>'")
    return request.query.get("access_token") or None


class TokenAuth:
    def __init__(self, accounts: AccountService) -> None:
        self.accounts = accounts

    async def requester(self, request: web.Request) -> Requester:
        token = access_token_of(request)
        if token is None:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        requester = await self.accounts.requester_for_token(token)
        if requester is None:
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown or revoked access token", soft_logout=False)
        request[USER_ID] = requester.user_id
        return requester


AuthedHandler = Callable[[web.Request, Requester], Awaitable[web.StreamResponse]]


def authed(auth: TokenAuth, handler: AuthedHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a handler so it runs only with a valid access token."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        return await handler(request, await auth.requester(request))

    wrapper.__name__ = getattr(handler, "__name__", "handler")
    return wrapper
